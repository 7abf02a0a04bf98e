"""The prediction loop: read, preprocess, predict and write, batch by batch.

`open_run(workdir, cams, cam_target)` loads a finished run and decides what
it predicts (errors name the folder and what is missing or wrong);
`predict(run, heads, paths, out_dir, ...)` predicts every input. Files are
read and preprocessed by a thread pool one batch ahead of the device; each
batch is padded to the batch size (one compiled program) and its outputs
written as soon as they are back. A file that cannot be read is logged with
its reason and listed in errors.csv while the others are predicted, or,
with `strict`, ends the run (`inputs.BadInputError`). A progress line with
the images per second and the time left is logged every `progress_every_s`.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import time
from typing import Iterator, Sequence

import numpy as np

from cxr_jax import runs
from cxr_jax.data import dataset_module
from cxr_jax.metric_writer import Progress
import cxr_jax.predict.inputs as inputs_lib
import cxr_jax.predict.model as model_lib
import cxr_jax.predict.outputs as outputs


@dataclasses.dataclass
class Summary:
  """What a prediction run did.

  Attributes:
    predicted: the number of files predicted.
    errors: the inputs that could not be predicted, with their reasons.
    files: the output files by name ('predictions.csv', 'errors.csv',
      'index.html').
    seconds: wall time of the loop.
  """
  predicted: int
  errors: list[inputs_lib.BadInputError]
  files: dict[str, str]
  seconds: float

  @property
  def ok(self) -> bool:
    """Whether every input was predicted."""
    return not self.errors


def open_run(workdir: str, cams: Sequence[str], cam_target: str = 'pred'
             ) -> tuple[runs.Run, model_lib.Heads]:
  """The finished run in `workdir` and what it predicts."""
  run = runs.load(workdir)
  return run, model_lib.heads(run, cams, cam_target)


def _batches(pool: concurrent.futures.Executor,
             items: Sequence[inputs_lib.Input], size: int, data_cfg
             ) -> Iterator[list[tuple[inputs_lib.Input, object]]]:
  """Batches of (input, image or BadInputError), the next batch's files
  read while the caller predicts the current one."""
  def read(item):
    try:
      return inputs_lib.read(item.path, data_cfg)
    except inputs_lib.BadInputError as e:
      return e

  chunks = [items[i:i + size] for i in range(0, len(items), size)]
  ahead = [pool.submit(read, it) for it in chunks[0]] if chunks else []
  for k, chunk in enumerate(chunks):
    current = ahead
    ahead = ([pool.submit(read, it) for it in chunks[k + 1]]
             if k + 1 < len(chunks) else [])
    yield [(it, f.result()) for it, f in zip(chunk, current)]


def _settings(run: runs.Run, heads: model_lib.Heads, writer, *,
              paths: Sequence[str], total: int, seconds: float,
              passed_over: int, stopped: bool) -> list[str]:
  """index.html's text before the errors: counts, settings, files."""
  d = run.config.data
  doc = dataset_module(d.name).preprocess_image.__doc__ or ''
  maps = ', '.join(heads.maps) or 'none'
  target = ('the predicted class' if heads.cam_target < 0
            else heads.classes[heads.cam_target])
  rate = writer.count / max(seconds, 1e-9)
  return [
      f'{writer.count} of {total} input files predicted in {seconds:.1f} s '
      f'({rate:.1f} images/s)' +
      (', stopped at the first file that could not be read (--strict).'
       if stopped else '.'), '', '## Settings', '',
      f'- Run: `{run.workdir}` (network `{run.network}`), config hash '
      f'`{writer.hash}`.',
      f'- Preprocessing: the run\'s own (`data.name = {d.name}`, '
      f'`data.image_size = {tuple(d.image_size)}`): '
      f'{" ".join(doc.split())}',
      f'- Classes: {", ".join(heads.classes) or "none (no class head)"}; '
      f'maps: {maps} (CAMs explain {target}).',
      *[f'- {n}' for n in heads.notes],
      f'- Inputs: {", ".join(f"`{p}`" for p in paths)}' +
      (f'; {passed_over} non-image file(s) in the folders passed over.'
       if passed_over else '.'), '',
      f'Files: [{outputs.PREDICTIONS}]({outputs.PREDICTIONS}), '
      f'[{outputs.ERRORS}]({outputs.ERRORS}), overlays in '
      f'`{outputs.OVERLAYS}/`' +
      (f', raw maps in `{outputs.MAPS}/`.' if writer.save_maps else '.'), '']


def _predict_batch(predictor: model_lib.Predictor, writer: outputs.Writer,
                   good: list, size: int) -> None:
  """Predicts the readable images of a batch (padded to `size`)."""
  x = np.stack([img for _, img in good])
  pad = size - len(good)
  if pad:
    x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
  res = predictor(x)
  for j, (item, img) in enumerate(good):
    writer.add(item, img, {k: v[j] for k, v in res.items()})


def _loop(predictor: model_lib.Predictor, writer: outputs.Writer,
          items: Sequence[inputs_lib.Input], size: int, *, strict: bool,
          data_cfg, progress: Progress) -> inputs_lib.BadInputError | None:
  """Predicts `items` batch by batch; returns the input that stopped a
  `strict` run (None: all were tried)."""
  done = 0
  with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)
                                             ) as pool:
    for batch in _batches(pool, items, size, data_cfg):
      bad = [i for i, (_, got) in enumerate(batch)
             if isinstance(got, inputs_lib.BadInputError)]
      if strict and bad:  # the files before the first bad one only
        batch = batch[:bad[0] + 1]
        bad = bad[:1]
      for i in bad:
        writer.error(batch[i][1])
      good = [(it, got) for it, got in batch if isinstance(got, np.ndarray)]
      if good:
        _predict_batch(predictor, writer, good, size)
      done += len(batch)
      progress.update(done, force=done == len(items))
      if strict and bad:
        return batch[bad[0]][1]
  return None


def predict(run: runs.Run, heads: model_lib.Heads, paths: Sequence[str],
            out_dir: str, *, batch_size: int = 0, strict: bool = False,
            save_maps: bool = False, progress_every_s: float = 10.0
            ) -> Summary:
  """Predicts every image of `paths` (files and folders) into `out_dir`.

  Args:
    run, heads: `open_run`'s.
    paths: files and folders (searched recursively, `inputs.find`).
    out_dir: the output folder (module docstring of `outputs`).
    batch_size: images per batch; 0 = the run's `eval_batch_size`
      (rounded up to a multiple of the device count).
    strict: stop at the first input that cannot be predicted (raises its
      `BadInputError` after writing the outputs so far).
    save_maps: also write the raw maps as .npy.
    progress_every_s: seconds between progress lines.
  """
  t0 = time.time()
  items, missing, passed_over = inputs_lib.find(paths)
  if not items and not missing:
    raise inputs_lib.NoInputsError(
        f'No DICOM, PNG or JPEG file in {list(paths)} (extensions '
        f'{inputs_lib.IMAGE_EXTENSIONS}, any letter case).')
  writer = outputs.Writer(out_dir, run, heads, save_maps=save_maps)
  for e in missing[:1] if strict else missing:
    writer.error(e)
  predictor = model_lib.Predictor(run, heads)
  size = batch_size or int(run.config.eval_batch_size)
  size = -(-size // predictor.num_devices) * predictor.num_devices
  progress = Progress(len(items), 1, every_s=progress_every_s,
                      name='predict')
  stop = missing[0] if strict and missing else None
  if stop is None:
    stop = _loop(predictor, writer, items, size, strict=strict,
                 data_cfg=run.config.data, progress=progress)
  seconds = time.time() - t0
  files = writer.close(_settings(
      run, heads, writer, paths=paths, total=len(items) + len(missing),
      seconds=seconds, passed_over=passed_over, stopped=stop is not None))
  if stop is not None:
    raise stop
  return Summary(predicted=writer.count, errors=writer.errors, files=files,
                 seconds=seconds)
