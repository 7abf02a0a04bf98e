r"""Input-pipeline throughput (augmented train batches, images/s).

Measures `cxr_jax.data.pipeline.train_iterator` with the default augmentation
on synthetic memory-mapped arrays at each study's resolution:

* Study A: 224x224, 1 channel, with a segmentation mask;
* Study B: 512x640 (H x W), 1 channel, with a gaze map and a fixation map.

  python benchmarks/loader.py --out=/tmp/loader.json

Prints a Markdown table and writes the rows as JSON. The trainer benchmark
imports `measure_loader` to compare the loader with the train step's rate.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

from absl import app
from absl import flags
import numpy as np

from cxr_jax.data import augment
from cxr_jax.data import pipeline

_OUT = flags.DEFINE_string('out', '', 'Write the results here as JSON.')
_WORKERS = flags.DEFINE_list('workers', ['0', '2'], 'Worker counts to time.')
_NUM_A = flags.DEFINE_integer('num_a', 256, 'Study A examples.')
_NUM_B = flags.DEFINE_integer('num_b', 128, 'Study B examples.')
_BATCH_A = flags.DEFINE_integer('batch_a', 32, 'Study A batch size.')
_BATCH_B = flags.DEFINE_integer('batch_b', 8, 'Study B batch size.')
_BATCHES = flags.DEFINE_integer('batches', 16, 'Timed batches per setting.')


def synthetic_arrays(n: int, h: int, w: int, *, mask: bool = False,
                     gaze: bool = False,
                     seed: int = 0) -> dict[str, np.ndarray]:
  """Random arrays with the dataset builders' fields, shapes and dtypes."""
  rng = np.random.default_rng(seed)
  out = dict(image=rng.normal(size=(n, h, w, 1)).astype(np.float32),
             label=rng.integers(0, 3, n).astype(np.int32),
             index=np.arange(n, dtype=np.int32))
  if mask:
    out['mask'] = (rng.random((n, h, w)) > 0.8).astype(np.float32)
  if gaze:
    out['gaze'] = rng.random((n, h, w), dtype=np.float32)
    out['fixmap'] = (rng.random((n, h, w)) > 0.999).astype(np.uint8)
  return out


def memory_map(arrays: dict[str, np.ndarray], directory: str) -> dict:
  """Saves arrays as .npy and re-opens them read-only, like the data cache."""
  out = {}
  for k, v in arrays.items():
    path = os.path.join(directory, f'{k}.npy')
    np.save(path, v)
    out[k] = np.load(path, mmap_mode='r')
  return out


def measure_loader(arrays: dict[str, np.ndarray], batch_size: int,
                   num_workers: int, num_batches: int, *,
                   augment_cfg: Any = 'default', seed: int = 0) -> float:
  """Steady-state images/s of the augmented train iterator.

  Worker start-up and the first `max(2, num_workers)` batches are excluded.

  Args:
    arrays: a split's arrays (in memory or memory-mapped).
    batch_size: global batch size (one process).
    num_workers: grain worker processes.
    num_batches: batches to time.
    augment_cfg: augmentation config; 'default' = `augment.default_config()`.
    seed: pipeline seed.

  Returns:
    images per second.
  """
  return _measure(arrays, batch_size, num_workers, num_batches,
                  augment_cfg=augment_cfg, seed=seed)[0]


def _measure(arrays: dict[str, np.ndarray], batch_size: int, num_workers: int,
             num_batches: int, *, augment_cfg: Any = 'default',
             seed: int = 0) -> tuple[float, float]:
  """(images/s, this process's CPU ms per image) over the timed batches."""
  if isinstance(augment_cfg, str):
    augment_cfg = augment.default_config()
  it = pipeline.train_iterator(arrays, batch_size=batch_size, seed=seed,
                               augment_cfg=augment_cfg,
                               num_workers=num_workers)
  try:
    for _ in range(max(2, num_workers)):
      next(it)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(num_batches):
      next(it)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
  finally:
    it.close()
  images = num_batches * batch_size
  return images / elapsed, 1e3 * cpu / images


def main(argv: list[str]) -> None:
  del argv
  settings = [
      ('A', 'SIIM 224x224x1 + mask', _NUM_A.value, 224, 224, _BATCH_A.value,
       dict(mask=True)),
      ('B', 'eye-gaze 512x640x1 + gaze + fixmap', _NUM_B.value, 512, 640,
       _BATCH_B.value, dict(gaze=True)),
  ]
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for study, what, n, h, w, batch_size, fields in settings:
      directory = os.path.join(tmp, study)
      os.makedirs(directory)
      arrays = memory_map(synthetic_arrays(n, h, w, **fields), directory)
      for workers in map(int, _WORKERS.value):
        load = os.getloadavg()[0]  # other jobs on the host skew the rates
        rate, cpu_ms = _measure(arrays, batch_size, workers, _BATCHES.value)
        rows.append(dict(study=study, data=what, batch_size=batch_size,
                         num_workers=workers, images_per_s=rate,
                         main_cpu_ms_per_image=cpu_ms,
                         cpu_count=os.cpu_count(), load_avg_1min=load))
  # With 0 workers the main process's CPU time per image is the whole cost
  # of loading + augmenting (1000 / it = images/s one free core delivers,
  # whatever else runs on the host); with workers it is the main process's
  # share (receiving batches).
  print(f'{os.cpu_count()} CPUs')
  print('| study | data | batch | workers | images/s | main-process CPU '
        'ms/image | load avg (1 min) |')
  print('|---|---|---|---|---|---|---|')
  for r in rows:
    print(f"| {r['study']} | {r['data']} | {r['batch_size']} | "
          f"{r['num_workers']} | {r['images_per_s']:.1f} | "
          f"{r['main_cpu_ms_per_image']:.2f} | {r['load_avg_1min']:.1f} |")
  if _OUT.value:
    with open(_OUT.value, 'w') as f:
      json.dump(rows, f, indent=2)


if __name__ == '__main__':
  app.run(main)
