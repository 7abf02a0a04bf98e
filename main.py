r"""cxr_jax entry point.

  python main.py --config=configs/cooperative.py:demo --workdir=/tmp/coop
  python main.py --config=configs/stage2.py --config.optim.lr=3e-4 \
      --config.init.path=/tmp/coop/stage1_finetune --workdir=/tmp/s2

Every config key can be overridden with --config.<key>=<value>; the config is
locked, so an unknown key or a wrong type is an error naming it.
"""
import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from cxr_jax.runtime import distributed
from cxr_jax.runtime import hostmem
from cxr_jax import jobs
from cxr_jax.runtime import xla_flags
from cxr_jax.data import cache

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file (configs/NAME.py[:preset]).',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Output folder (default: workdirs/<config name>).')
_XLA_CACHE = flags.DEFINE_string(
    'xla_cache', None,
    'Persistent XLA compilation cache folder, so that a rerun (or a stage '
    'compiling what an earlier one did) skips compiling; default '
    '$JAX_COMPILATION_CACHE_DIR, else <data cache>/xla (~/.cache/cxr_jax/xla); '
    "'' = off.")
_CPU_XLA_FLAGS = flags.DEFINE_string(
    'cpu_xla_flags', xla_flags.CPU_XLA_FLAGS,
    'Added to $XLA_FLAGS before JAX starts (CPU kernel choices, see '
    "cxr_jax/runtime/xla_flags.py); a flag already in $XLA_FLAGS wins; '' = none.")
_TUNE_HOST_MALLOC = flags.DEFINE_bool(
    'tune_host_malloc', True,
    "Keep XLA's per-step host temporaries mapped from one CPU step to the "
    'next: restart once with glibc malloc tunables in $GLIBC_TUNABLES and run '
    'CPU executions on the calling thread (CPU train steps ~12-17% faster; '
    'cxr_jax/runtime/hostmem.py). No effect where glibc cannot do it.')
flags.mark_flags_as_required(['config'])


class _QuietLibraries:
  """Drops orbax's per-save INFO chatter; warnings and errors still show."""

  def filter(self, record) -> bool:
    return record.levelno >= 30 or 'orbax' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _TUNE_HOST_MALLOC.value:
    hostmem.ensure()  # before any work: restarts the process at most once
    hostmem.configure_jax()  # before the backend starts
  logging.get_absl_handler().addFilter(_QuietLibraries())
  xla_flags.apply(_CPU_XLA_FLAGS.value)  # before the backend starts
  xla_cache = _XLA_CACHE.value
  if xla_cache is None:
    xla_cache = os.environ.get('JAX_COMPILATION_CACHE_DIR') or os.path.join(
        cache.default_cache_dir(), 'xla')
  if xla_cache:
    jax.config.update('jax_compilation_cache_dir', xla_cache)
  distributed.initialize()
  workdir = _WORKDIR.value or os.path.join(
      'workdirs', os.path.splitext(os.path.basename(
          flags.FLAGS['config'].config_filename))[0])
  logging.info('Config:\n%s', _CONFIG.value)
  jobs.run(_CONFIG.value, workdir)


if __name__ == '__main__':
  app.run(main)
