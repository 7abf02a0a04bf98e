r"""cxr_jax entry point.

  python main.py --config=configs/cooperative.py:demo --workdir=/tmp/coop
  python main.py --config=configs/stage2.py --config.optim.lr=3e-4 \
      --config.init.path=/tmp/coop/stage1_finetune --workdir=/tmp/s2

Every config key can be overridden with --config.<key>=<value>; the config is
locked, so an unknown key or a wrong type is an error naming it.

Several processes (hosts): `--distributed=auto` on Cloud TPU VMs, under SLURM
and Open MPI, or `--coordinator_address=HOST:PORT --num_processes=N
--process_id=I` (`cxr_jax/runtime/distributed.py`, `launch/`). Each of these
flags takes its default from an environment variable, named in its help.
"""
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from cxr_jax import config_cli
from cxr_jax import jobs
from cxr_jax.runtime import distributed
from cxr_jax.runtime import startup
from cxr_jax.runtime import xla_flags


def _env_int(name: str) -> int | None:
  text = os.environ.get(name, '').strip()
  try:
    return int(text) if text else None
  except ValueError:
    raise SystemExit(f'${name}={text!r} is not an integer.') from None


_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file (configs/NAME.py[:preset]).',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Output folder (default: workdirs/<config name>).')
_XLA_CACHE = flags.DEFINE_string(
    'xla_cache', None,
    'Persistent XLA compilation cache folder, so that a rerun (or a stage '
    'compiling the same program as another) skips compiling; default '
    '$JAX_COMPILATION_CACHE_DIR, else <data cache>/xla (~/.cache/cxr_jax/xla); '
    "'' = off.")
_CPU_XLA_FLAGS = flags.DEFINE_string(
    'cpu_xla_flags', xla_flags.CPU_XLA_FLAGS,
    'Added to $XLA_FLAGS before JAX starts (CPU kernel choices, see '
    "cxr_jax/runtime/xla_flags.py); a flag already in $XLA_FLAGS wins; '' = "
    'none.')
_TUNE_HOST_MALLOC = flags.DEFINE_bool(
    'tune_host_malloc', os.environ.get('CXR_JAX_TUNE_MALLOC', '') == '1',
    "CPU training: keep XLA's per-step host temporaries mapped from one step "
    'to the next, by restarting the process once with glibc malloc tunables '
    'in $GLIBC_TUNABLES and running CPU executions on the calling thread '
    '(cxr_jax/runtime/hostmem.py; benchmarks/README.md has the step times). '
    'No effect where glibc cannot do it. Default off; env '
    'CXR_JAX_TUNE_MALLOC=1 turns it on.')
_DISTRIBUTED = flags.DEFINE_enum(
    'distributed', os.environ.get('CXR_DISTRIBUTED', 'off'),
    list(distributed.MODES),
    "'off': one process; 'auto': Cloud TPU / SLURM / Open MPI detection; "
    "'explicit': the coordinator flags below (env CXR_DISTRIBUTED).")
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', os.environ.get('CXR_COORDINATOR', ''),
    'host:port of process 0; implies --distributed=explicit (env '
    'CXR_COORDINATOR).')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', _env_int('CXR_NUM_PROCESSES'),
    'Number of processes; unset: 1, or detected with --distributed=auto '
    '(env CXR_NUM_PROCESSES).')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', _env_int('CXR_PROCESS_ID'),
    'This process index; unset: 0, or detected with --distributed=auto '
    '(env CXR_PROCESS_ID).')
_LOCAL_DEVICE_IDS = flags.DEFINE_string(
    'local_device_ids', os.environ.get('CXR_LOCAL_DEVICE_IDS', ''),
    "Comma-separated accelerator ids this process uses, e.g. '0,1,2,3' "
    "(env CXR_LOCAL_DEVICE_IDS); '' = JAX's default (all local devices, "
    'except one per process under SLURM / Open MPI on GPUs).')
_DISTRIBUTED_TIMEOUT = flags.DEFINE_integer(
    'distributed_timeout_s', distributed.DEFAULT_TIMEOUT_S,
    'Seconds to wait for every process to connect to the coordinator.')
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  startup.start(
      tune_host_malloc=_TUNE_HOST_MALLOC.value,
      cpu_xla_flags=_CPU_XLA_FLAGS.value, compilation_cache=_XLA_CACHE.value,
      distributed_settings=distributed.Settings(
          mode=_DISTRIBUTED.value, coordinator_address=_COORDINATOR.value,
          num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value,
          local_device_ids=_LOCAL_DEVICE_IDS.value,
          timeout_s=_DISTRIBUTED_TIMEOUT.value))
  workdir = _WORKDIR.value or os.path.join('workdirs', os.path.splitext(
      os.path.basename(flags.FLAGS['config'].config_filename))[0])
  logging.info('Config:\n%s', _CONFIG.value)
  jobs.run(_CONFIG.value, workdir)


if __name__ == '__main__':
  app.run(main, flags_parser=config_cli.parse_flags_with_usage)
