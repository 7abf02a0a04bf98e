"""Test helper: model variables filled in numpy (no XLA compile of init)."""
import functools

import jax
import numpy as np


def np_init(model, *args, seed: int = 0, **kwargs):
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
