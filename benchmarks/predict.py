r"""Prediction throughput of `cxr_jax.predict` (images/s), end to end.

  .venv/bin/python -m benchmarks.predict [--models=demo,resnet50,cooperative] \
      [--images=32] [--batch=16] [--cam=gradcam] [--native=1024] \
      [--cooperative_size=640x512] [--cooperative_images=8] \
      [--cooperative_batch=4] [--out=results.json]

For each model: a run folder with freshly initialised variables (the rates
do not depend on trained weights), `--images` phantom DICOMs of its dataset
at `--native` px (written by `cxr_jax.data.phantom`: SIIM-ACR's DICOMs are
1024 px, the eye-gaze dataset's MIMIC-CXR ones larger), then two rates:

* `command`: `predict.predict` on every file (read, preprocess with the
  run's `preprocess_image`, forward, CAMs, overlays, CSV, index.html), after
  a warm-up call on one batch whose compiled programs a persistent XLA
  cache keeps; images / wall time of the second call;
* `model`: the jitted forward and CAMs alone (`predict.model.Predictor`) on
  the first batch of files, preprocessed: batch / median of `--repeats`
  calls.

Models: `demo` (Study A's demo stage resnet50: resnet_tiny at 128 px),
`resnet50` (224 px) and `cooperative` (Study B's full model, DenseNet-201 +
Res_SE-UNet + fusion classifier, at `--cooperative_size`; its Grad-CAM and
predicted gaze map). Runs on JAX's default backend (a GPU where there is
one); the device is in the output. Prints a Markdown table; `--out` writes
the rows as JSON.
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np

from configs import gradcam_benchmark
from configs import siim_classifier
from configs import study_b
from cxr_jax import ckpt
from cxr_jax import jobs
from cxr_jax import models
from cxr_jax import predict
from cxr_jax.data import phantom
from cxr_jax.predict import inputs
from cxr_jax.predict import model as model_lib
from cxr_jax.report import tables
from cxr_jax.runtime import startup



@dataclasses.dataclass
class Settings:
  """What to measure (the command's flags)."""
  images: int = 32
  batch: int = 16
  cooperative_images: int = 8
  cooperative_batch: int = 4
  cooperative_size: str = '640x512'
  cam: tuple[str, ...] = ('gradcam',)
  native: int = 1024
  repeats: int = 3


def define_flags() -> dict[str, flags.FlagHolder]:
  """The flags (defined only when this file runs as a program, so that
  importing it next to other benchmarks defines none)."""
  d = Settings()
  return dict(
      models=flags.DEFINE_list('models', ['demo', 'resnet50', 'cooperative'],
                               'Models to time (demo, resnet50, cooperative).'),
      images=flags.DEFINE_integer('images', d.images, 'Files per model.'),
      batch=flags.DEFINE_integer('batch', d.batch, 'Batch size.'),
      cooperative_images=flags.DEFINE_integer(
          'cooperative_images', d.cooperative_images,
          'Files for the cooperative model.'),
      cooperative_batch=flags.DEFINE_integer(
          'cooperative_batch', d.cooperative_batch,
          'Batch size of the cooperative model.'),
      cooperative_size=flags.DEFINE_string(
          'cooperative_size', d.cooperative_size,
          "The cooperative model's input, HxW."),
      cam=flags.DEFINE_list('cam', list(d.cam), 'CAM methods.'),
      native=flags.DEFINE_integer('native', d.native,
                                  'Side of the phantom DICOMs.'),
      repeats=flags.DEFINE_integer('repeats', d.repeats,
                                   'Timed model-only calls.'),
      out=flags.DEFINE_string('out', '', 'Write the rows here as JSON.'))


def model_config(name: str, cooperative_size: str):
  """The train config of a benchmarked model; its dataset's name."""
  if name == 'demo':
    c = gradcam_benchmark.get_config('demo')
    return jobs.stage_config(c, 'resnet50', ''), 'siim'
  if name == 'resnet50':
    return siim_classifier.get_config('model=resnet50'), 'siim'
  if name == 'cooperative':
    return study_b.stage3(study_b.args(f'res={cooperative_size}')), 'gaze'
  raise ValueError(f'--models: unknown model {name!r} (demo, resnet50, '
                       'cooperative).')


def fake_run(path: str, config) -> str:
  """A finished run folder of `config` with initialised variables."""
  model = models.build(config.model)
  h, w = config.data.image_size
  variables = models.init_variables(model, jax.random.PRNGKey(0),
                                    np.zeros((1, h, w, 1), np.float32),
                                    train=False)
  os.makedirs(path)
  ckpt.write_json(os.path.join(path, 'config.json'), config.to_dict())
  c = ckpt.Checkpointer(path)
  c.save_best(1, jax.tree.map(np.asarray, dict(variables)), dict(step=1))
  c.close()
  return path


def _model_rate(run, heads, files: list[str], repeats: int) -> float:
  """Images/s of the jitted forward and CAMs on the preprocessed `files`
  (one batch; median of `repeats` calls after one that compiles)."""
  predictor = model_lib.Predictor(run, heads)
  x = np.stack([inputs.read(f, run.config.data) for f in files])
  predictor(x)  # compile
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    predictor(x)  # returns numpy: the work is done
    times.append(time.perf_counter() - t)
  return len(files) / statistics.median(times)


def measure(name: str, tmp: str, s: Settings) -> dict:
  """One model's row (its files in `tmp/name/`)."""
  config, dataset = model_config(name, s.cooperative_size)
  coop = name == 'cooperative'
  batch = s.cooperative_batch if coop else s.batch
  n = s.cooperative_images if coop else s.images
  run_dir = fake_run(os.path.join(tmp, name, 'run'), config)
  scans = os.path.join(tmp, name, 'scans')
  phantom.write(dataset, scans, n, 0, s.native)
  run, heads = predict.open_run(run_dir, s.cam)
  first = sorted(os.path.join(r, f) for r, _, fs in os.walk(scans)
                 for f in fs if f.endswith('.dcm'))[:batch]
  model_rate = _model_rate(run, heads, first, s.repeats)
  t = time.perf_counter()
  predict.predict(run, heads, first, os.path.join(tmp, name, 'warm'),
                  batch_size=batch)
  warm_s = time.perf_counter() - t
  t = time.perf_counter()
  done = predict.predict(run, heads, [scans], os.path.join(tmp, name, 'out'),
                         batch_size=batch)
  seconds = time.perf_counter() - t
  h, w = config.data.image_size
  return dict(model=name, network=run.network, input=f'{h}x{w}',
              native=s.native, batch=batch, images=done.predicted,
              maps=','.join(heads.maps),
              command_img_s=done.predicted / seconds,
              model_img_s=model_rate, warmup_s=warm_s,
              device=jax.devices()[0].device_kind)


def main(argv, f: dict[str, flags.FlagHolder]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  s = Settings(**{k: (tuple(v.value) if k == 'cam' else v.value)
                  for k, v in f.items() if k not in ('models', 'out')})
  with tempfile.TemporaryDirectory(prefix='predict_bench_') as tmp:
    startup.start(compilation_cache=os.path.join(tmp, 'xla'))
    rows = []
    for name in f['models'].value:
      rows.append(measure(name, tmp, s))
      print(tables.markdown_table(rows, floatfmt='.3g'), flush=True)
  if f['out'].value:
    with open(f['out'].value, 'w') as fp:
      json.dump(rows, fp, indent=1)


if __name__ == '__main__':
  _FLAGS = define_flags()
  app.run(lambda argv: main(argv, _FLAGS))
