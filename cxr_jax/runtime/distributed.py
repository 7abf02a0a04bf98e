"""Multi-process start-up: `jax.distributed.initialize` from plain settings.

One process (`mode='off'`, the default) needs nothing. Several processes
(several hosts, or several processes on one host) each run the same program
and call `initialize(Settings(...))` before touching JAX:

* `mode='auto'`: `jax.distributed.initialize()` finds the coordinator, the
  process count and this process's index itself on Cloud TPU VMs, under
  SLURM (`srun`) and Open MPI. A value given explicitly (not None / not
  empty) still wins over the detected one.
* `mode='explicit'` (implied by a non-empty `coordinator_address`):
  `coordinator_address='HOST:PORT'` (process 0's address), `num_processes`
  and `process_id`.

`local_device_ids` restricts the accelerators a process uses. Under SLURM on
GPUs JAX defaults to ONE device per process (the one numbered
`SLURM_LOCALID`); with one task per node pass every GPU of the node, as
`launch/slurm.sbatch` does.

The command-line flags and their environment-variable defaults
(`CXR_DISTRIBUTED`, `CXR_COORDINATOR`, `CXR_NUM_PROCESSES`,
`CXR_PROCESS_ID`, `CXR_LOCAL_DEVICE_IDS`) are defined in `main.py`, which
passes their values here.

On CPU, cross-process collectives use gloo over TCP (JAX's default,
`jax_cpu_collectives_implementation`), which is what the two-process test
(`tests/test_multiprocess.py`) runs on localhost.
"""
from __future__ import annotations

import dataclasses

import jax
from absl import logging
from jax.experimental import multihost_utils

MODES = ('off', 'auto', 'explicit')
DEFAULT_TIMEOUT_S = 300


def parse_device_ids(text: str) -> list[int] | None:
  """'0,1,3' -> [0, 1, 3]; '' -> None (JAX's default)."""
  text = text.strip()
  if not text:
    return None
  try:
    ids = [int(t) for t in text.split(',') if t.strip()]
  except ValueError:
    raise ValueError(f'local_device_ids={text!r}: expected comma-separated '
                     'integers such as 0,1,2,3.') from None
  if len(set(ids)) != len(ids) or min(ids) < 0:
    raise ValueError(f'local_device_ids={text!r}: ids must be distinct and '
                     '>= 0.')
  return ids


@dataclasses.dataclass(frozen=True)
class Settings:
  """How this process joins the others (see the module docstring).

  Attributes:
    mode: 'off', 'auto' or 'explicit'; 'off' with a `coordinator_address`
      means 'explicit'.
    coordinator_address: 'HOST:PORT' of process 0; '' = not given.
    num_processes: the number of processes; None = not given (1 in
      'explicit' mode, detected in 'auto').
    process_id: this process's index; None = not given (0 in 'explicit'
      mode, detected in 'auto').
    local_device_ids: comma-separated accelerator ids; '' = JAX's default.
    timeout_s: seconds to wait for every process to reach the coordinator.
  """
  mode: str = 'off'
  coordinator_address: str = ''
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: str = ''
  timeout_s: int = DEFAULT_TIMEOUT_S


def init_kwargs(settings: Settings) -> dict | None:
  """The keyword arguments `initialize` passes to `jax.distributed`.

  Returns None when there is nothing to initialise (one process). Raises
  ValueError naming the missing or inconsistent setting.
  """
  s = settings
  mode = s.mode
  if mode not in MODES:
    raise ValueError(f'distributed mode {mode!r}: expected one of {MODES}.')
  if mode == 'off' and s.coordinator_address:
    mode = 'explicit'
  if mode == 'off':
    return None
  kw: dict = dict(initialization_timeout=s.timeout_s)
  ids = parse_device_ids(s.local_device_ids)
  if ids is not None:
    kw['local_device_ids'] = ids
  if mode == 'auto':
    # Only what the user gave; jax detects the rest (TPU, SLURM, Open MPI).
    given = dict(coordinator_address=s.coordinator_address or None,
                 num_processes=s.num_processes, process_id=s.process_id)
    kw.update({k: v for k, v in given.items() if v is not None})
    return kw
  if not s.coordinator_address:
    raise ValueError('distributed mode explicit needs a coordinator address '
                     '(--coordinator_address or CXR_COORDINATOR), e.g. '
                     '10.0.0.1:1234 = process 0.')
  num = 1 if s.num_processes is None else s.num_processes
  pid = 0 if s.process_id is None else s.process_id
  if num < 1 or not 0 <= pid < num:
    raise ValueError(f'process_id={pid} must be in [0, num_processes={num}).')
  kw.update(coordinator_address=s.coordinator_address, num_processes=num,
            process_id=pid)
  return kw


def initialize(settings: Settings = Settings()) -> None:
  """Initialises the JAX distributed runtime as `settings` ask.

  Must run before any JAX computation; does nothing for one process.
  """
  kw = init_kwargs(settings)
  if kw is None:
    return
  logging.info('jax.distributed.initialize(%s)',
               ', '.join(f'{k}={v!r}' for k, v in sorted(kw.items())))
  jax.distributed.initialize(**kw)
  logging.info('Process %d of %d, %d local / %d global devices (%s).',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)


def is_main() -> bool:
  """True on the process that writes logs, reports and JSON files (0)."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """Blocks until every process reaches `sync(name)` (no-op on one)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
