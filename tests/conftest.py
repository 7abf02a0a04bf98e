"""Shared pytest setup: strict rank promotion, parsed absl flags, caches.

The tests train many tiny models with the same shapes; a persistent XLA
compilation cache (also inherited by the subprocesses some tests start) and
one phantom-data cache for the session keep the suite fast.
"""
import os
import tempfile

_TMP = tempfile.mkdtemp(prefix='cxr_jax_tests_')
os.environ.setdefault('CXR_JAX_CACHE', os.path.join(_TMP, 'data'))
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(_TMP, 'xla'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

from absl import flags  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

jax.config.update('jax_numpy_rank_promotion', 'raise')


@pytest.fixture(autouse=True, scope='session')
def _absl_flags_parsed():
  """Lets code that reads absl flags run under pytest without app.run()."""
  flags.FLAGS.mark_as_parsed()
  yield
