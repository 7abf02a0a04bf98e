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

import functools  # pylint: disable=g-import-not-at-top,g-bad-import-order

from absl import flags  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

jax.config.update('jax_numpy_rank_promotion', 'raise')


@pytest.fixture(autouse=True, scope='session')
def _absl_flags_parsed():
  """Lets code that reads absl flags run under pytest without app.run()."""
  flags.FLAGS.mark_as_parsed()
  yield


def np_init_variables(model, *args, seed: int = 0, **kwargs):
  """Variables with `model.init`'s tree, filled in numpy (no XLA compile).

  Kernels ~ N(0, 2 / fan_in), BN scale/var 1, everything else 0. Keeps the
  tests fast on a busy 2-core machine; `model.init` itself is traced by
  `jax.eval_shape`, so its code path is still exercised.
  """
  shapes = jax.eval_shape(functools.partial(model.init, **kwargs),
                          jax.random.key(0), *args)
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = getattr(path[-1], 'key', '')
    if name == 'kernel':
      fan_in = int(np.prod(s.shape[:-1]))
      return rng.normal(0., np.sqrt(2. / fan_in), s.shape).astype(s.dtype)
    if name in ('scale', 'var'):
      return np.ones(s.shape, s.dtype)
    return np.zeros(s.shape, s.dtype)
  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope='session')
def np_init():
  """`np_init_variables`, for tests that build many models."""
  return np_init_variables
