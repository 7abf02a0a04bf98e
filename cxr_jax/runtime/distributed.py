"""Multi-host start-up: `jax.distributed.initialize` from flags or env vars.

One process (the default, `--distributed=off`) needs nothing. Several
processes (several hosts, or several processes on one host) each run the same
`python main.py ...` and call `initialize()` before touching JAX:

* `--distributed=auto`: `jax.distributed.initialize()` finds the coordinator,
  the process count and this process's index itself on Cloud TPU VMs, under
  SLURM (`srun`) and Open MPI. A flag or env var below that is given
  explicitly still wins over the detected value.
* `--distributed=explicit` (implied by a non-empty `--coordinator_address`):
  `--coordinator_address=HOST:PORT` (process 0's address), `--num_processes`,
  `--process_id`, or the env vars `CXR_COORDINATOR`, `CXR_NUM_PROCESSES`,
  `CXR_PROCESS_ID`.

`--local_device_ids` (env `CXR_LOCAL_DEVICE_IDS`, or JAX's own
`JAX_LOCAL_DEVICE_IDS`) restricts the accelerators a process uses. Note that
under SLURM on GPUs JAX defaults to ONE device per process (the one numbered
`SLURM_LOCALID`); with one task per node pass every GPU of the node, as
`launch/slurm.sbatch` does.

On CPU, cross-process collectives use gloo over TCP (JAX's default,
`jax_cpu_collectives_implementation`), which is what the two-process test
(`tests/test_multiprocess.py`) runs on localhost.
"""
from __future__ import annotations

import os

import jax
from absl import flags
from jax.experimental import multihost_utils
from absl import logging

_MODE = flags.DEFINE_enum(
    'distributed', os.environ.get('CXR_DISTRIBUTED', 'off'),
    ['off', 'auto', 'explicit'],
    "'off': one process; 'auto': Cloud TPU / SLURM / Open MPI detection; "
    "'explicit': the coordinator flags or env vars below (env "
    'CXR_DISTRIBUTED).')
_COORD = flags.DEFINE_string('coordinator_address',
                             os.environ.get('CXR_COORDINATOR', ''),
                             'host:port of process 0 (env CXR_COORDINATOR).')
_NUM = flags.DEFINE_integer('num_processes',
                            int(os.environ.get('CXR_NUM_PROCESSES', '1')),
                            'Number of processes (env CXR_NUM_PROCESSES).')
_ID = flags.DEFINE_integer('process_id',
                           int(os.environ.get('CXR_PROCESS_ID', '0')),
                           'This process index (env CXR_PROCESS_ID).')
_LOCAL_IDS = flags.DEFINE_string(
    'local_device_ids', os.environ.get('CXR_LOCAL_DEVICE_IDS', ''),
    "Comma-separated accelerator ids this process uses, e.g. '0,1,2,3' "
    "(env CXR_LOCAL_DEVICE_IDS); '' = JAX's default (all local devices, "
    'except one per process under SLURM / Open MPI on GPUs).')
_TIMEOUT = flags.DEFINE_integer(
    'distributed_timeout_s', 300,
    'Seconds to wait for every process to connect to the coordinator.')

_ENV = {'coordinator_address': 'CXR_COORDINATOR',
        'num_processes': 'CXR_NUM_PROCESSES',
        'process_id': 'CXR_PROCESS_ID'}


def parse_device_ids(text: str) -> list[int] | None:
  """'0,1,3' -> [0, 1, 3]; '' -> None (JAX's default)."""
  text = text.strip()
  if not text:
    return None
  try:
    ids = [int(t) for t in text.split(',') if t.strip()]
  except ValueError:
    raise ValueError(f'--local_device_ids={text!r}: expected comma-separated '
                     'integers such as 0,1,2,3.') from None
  if len(set(ids)) != len(ids) or min(ids) < 0:
    raise ValueError(f'--local_device_ids={text!r}: ids must be distinct and '
                     '>= 0.')
  return ids


def _given(name: str) -> bool:
  """Whether flag `name` was set on the command line or by its env var."""
  return flags.FLAGS[name].present or _ENV[name] in os.environ


def init_kwargs(mode: str | None = None) -> dict | None:
  """The keyword arguments `initialize` passes to `jax.distributed`.

  Returns None when there is nothing to initialise (one process). Raises
  ValueError naming the missing or inconsistent flag.
  """
  mode = mode or _MODE.value
  if mode == 'off' and _COORD.value:
    mode = 'explicit'
  if mode == 'off':
    return None
  kw: dict = dict(initialization_timeout=_TIMEOUT.value)
  ids = parse_device_ids(_LOCAL_IDS.value)
  if ids is not None:
    kw['local_device_ids'] = ids
  if mode == 'auto':
    # Only what the user gave; jax detects the rest (TPU, SLURM, Open MPI).
    if _COORD.value:
      kw['coordinator_address'] = _COORD.value
    if _given('num_processes'):
      kw['num_processes'] = _NUM.value
    if _given('process_id'):
      kw['process_id'] = _ID.value
    return kw
  if not _COORD.value:
    raise ValueError('--distributed=explicit needs --coordinator_address '
                     '(or CXR_COORDINATOR), e.g. 10.0.0.1:1234 = process 0.')
  if _NUM.value < 1 or not 0 <= _ID.value < _NUM.value:
    raise ValueError(f'--process_id={_ID.value} must be in [0, '
                     f'--num_processes={_NUM.value}).')
  kw.update(coordinator_address=_COORD.value, num_processes=_NUM.value,
            process_id=_ID.value)
  return kw


def initialize() -> None:
  """Initialises the JAX distributed runtime as the flags ask.

  Must run before any JAX computation (main.py calls it first thing).
  """
  kw = init_kwargs()
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
