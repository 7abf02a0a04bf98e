r"""Times one side (JAX or torch) of a benchmark alone in a fresh process.

`benchmarks.alternating.run_alternating` starts one such process per side
and round (it says why the sides are kept apart):

  python -m benchmarks.isolated --task=train --side=jax --model=vgg16 \
      --batch=16 --steps=3 --warmup=1

prints one line `RESULT {json}`: the side's step times in seconds and, for
JAX, init/compile seconds and FLOPs per step.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

from absl import app
from absl import flags

from benchmarks import alternating


def make_side(task: str, side: str, *, model: str, batch: int, size: int,
              num_classes: int, dtype: str, device: str
              ) -> tuple[Callable[[], Any], dict[str, Any]]:
  """The callable that runs one step of `task` for `side`, and its info."""
  if task == 'train':
    from benchmarks import train_step  # pylint: disable=g-import-not-at-top
    return train_step.make_side(side, model, batch=batch, size=size,
                                num_classes=num_classes, dtype=dtype,
                                device=device)
  if task == 'gradcam':
    from benchmarks import gradcam  # pylint: disable=g-import-not-at-top
    return gradcam.make_side(side, model, batch=batch, size=size,
                             num_classes=num_classes, device=device)
  raise ValueError(f'unknown task {task!r}')


def _define_flags() -> None:
  flags.DEFINE_enum('task', 'train', ['train', 'gradcam'], 'What to time.')
  flags.DEFINE_enum('side', 'jax', ['jax', 'torch'], 'Which side.')
  flags.DEFINE_string('model', 'resnet50', 'Registered classifier.')
  flags.DEFINE_integer('batch', 16, 'Batch size.')
  flags.DEFINE_integer('size', 224, 'Input size.')
  flags.DEFINE_integer('num_classes', 1000, 'Classifier heads.')
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute.')
  flags.DEFINE_enum('device', 'cpu', ['cpu', 'gpu'], 'Where to run.')
  flags.DEFINE_integer('steps', 3, 'Timed steps.')
  flags.DEFINE_integer('warmup', 1, 'Untimed steps first.')


def main(argv):
  del argv
  f = flags.FLAGS
  if f.device == 'cpu':
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update('jax_platforms', 'cpu')
    if f.side == 'jax':
      from cxr_jax.runtime import hostmem  # pylint: disable=g-import-not-at-top
      hostmem.configure_jax()  # as main.py: only with side_env's tunables
  if f.side == 'torch' and f.device == 'cpu':
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(os.cpu_count())
  fn, info = make_side(f.task, f.side, model=f.model, batch=f.batch,
                       size=f.size, num_classes=f.num_classes, dtype=f.dtype,
                       device=f.device)
  for _ in range(f.warmup):
    fn()
  times = []
  for _ in range(f.steps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  print(alternating.PREFIX + json.dumps(dict(info, times=times), default=float),
        flush=True)


if __name__ == '__main__':
  from benchmarks import stub_missing_grain  # pylint: disable=g-import-not-at-top
  stub_missing_grain()
  _define_flags()
  app.run(main)
