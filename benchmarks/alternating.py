"""Runs the two sides (JAX, torch) of a benchmark in separate processes.

Why: on a small CPU machine, a JAX train step and a torch train step
interleaved in one process slow each other down, unevenly (benchmarks/
README.md, lever "process isolation"). So the CPU ratios come from separate
processes, one side each, alternating JAX, torch, torch, JAX...
(`run_alternating`); each process is `python -m benchmarks.isolated`, which
warms its side up before timing it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from cxr_jax.runtime import hostmem

PREFIX = 'RESULT '  # the line `benchmarks.isolated` prints its result on
# Which sides' processes start with cxr_jax.runtime.hostmem's malloc tunables
# in $GLIBC_TUNABLES (what `main.py --tune_host_malloc` does for its own
# process; the JAX side then also runs its CPU executions on the calling
# thread, `hostmem.configure_jax`). benchmarks/run.py sets it from
# --tune_host_malloc (on) and --torch_tune_host_malloc (off: torch runs as
# users run it unless asked).
TUNE_HOST_MALLOC = {'jax': True, 'torch': False}
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def side_env(side: str) -> dict[str, str]:
  """The environment of one side's timing process."""
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
      lines = [l for l in proc.stdout.splitlines() if l.startswith(PREFIX)]
      if proc.returncode or not lines:
        raise RuntimeError(
            f'{task} {side} {kw} failed (exit {proc.returncode}):\n'
            f'{proc.stderr[-3000:]}')
      out = json.loads(lines[-1][len(PREFIX):])
      times[side] += out.pop('times')
      if side == 'jax' and not info:
        info = out
  return times, info
