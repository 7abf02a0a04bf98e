r"""Times one side (JAX or torch) of a benchmark alone in a fresh process.

Why: on the 2-core CPU VM these benchmarks run on, a JAX train step and a
torch train step interleaved in one process slow each other down, unevenly
(VGG16, batch 16, fp32, 2026-11-26: JAX 7.8 s a step alone and 10.1 s with
torch's step interleaved in its process; torch 7.4 s alone, 8.0 s
interleaved; with glibc told to keep freed memory, torch 5.9 s and JAX
unchanged alone, but JAX 11.6 s interleaved). So the CPU ratios come from
separate processes, one side each, alternating JAX, torch, torch, JAX...
(`run_alternating`), every process warmed up before it is timed.

  python -m benchmarks.isolated --task=train --side=jax --model=vgg16 \
      --batch=16 --steps=3 --warmup=1

prints one line `RESULT {json}`: the side's step times in seconds and, for
JAX, init/compile seconds and FLOPs per step.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any, Callable

from absl import app
from absl import flags

_PREFIX = 'RESULT '
# Which sides' processes start with cxr_jax.runtime.hostmem's malloc tunables in
# $GLIBC_TUNABLES (what `main.py` does for its own process; the JAX side then
# also runs its CPU executions on the calling thread, `hostmem.configure_
# jax`); benchmarks/run.py sets it from --tune_host_malloc and
# --torch_tune_host_malloc. torch runs as users run it unless asked.
TUNE_HOST_MALLOC = {'jax': True, 'torch': False}
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def side_env(side: str) -> dict[str, str]:
  """The environment of one side's timing process."""
  from cxr_jax.runtime import hostmem  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, PYTHONUNBUFFERED='1',
             PYTHONPATH=os.pathsep.join(filter(None, (
                 _ROOT, os.environ.get('PYTHONPATH')))))
  return hostmem.with_tunables(env) if TUNE_HOST_MALLOC.get(side) else env


def run_alternating(task: str, *, rounds: int, steps: int, warmup: int,
                    timeout: float = 3600, **kw) -> tuple[
                        dict[str, list[float]], dict[str, Any]]:
  """Runs `rounds` processes per side, alternating (jax, torch, torch, jax,
  ...), each timing `steps` steps after `warmup`. Returns every step time
  per side and the JAX side's info from its first process."""
  times: dict[str, list[float]] = {'jax': [], 'torch': []}
  info: dict[str, Any] = {}
  for r in range(rounds):
    for side in (('jax', 'torch') if r % 2 == 0 else ('torch', 'jax')):
      args = [sys.executable, '-m', 'benchmarks.isolated', f'--task={task}',
              f'--side={side}', f'--steps={steps}', f'--warmup={warmup}'] + [
                  f'--{k}={v}' for k, v in kw.items()]
      proc = subprocess.run(args, capture_output=True, text=True,
                            timeout=timeout, check=False, cwd=_ROOT,
                            env=side_env(side))
      lines = [l for l in proc.stdout.splitlines() if l.startswith(_PREFIX)]
      if proc.returncode or not lines:
        raise RuntimeError(
            f'{task} {side} {kw} failed (exit {proc.returncode}):\n'
            f'{proc.stderr[-3000:]}')
      out = json.loads(lines[-1][len(_PREFIX):])
      times[side] += out.pop('times')
      if side == 'jax' and not info:
        info = out
  return times, info


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
  print(_PREFIX + json.dumps(dict(info, times=times), default=float),
        flush=True)


if __name__ == '__main__':
  from benchmarks import stub_missing_grain  # pylint: disable=g-import-not-at-top
  stub_missing_grain()
  _define_flags()
  app.run(main)
