"""Initialising from converted weights or an earlier stage (cxr_jax.weights)."""
import numpy as np
import pytest

from cxr_jax import weights


def _vars():
  return {'params': {'conv': {'kernel': np.zeros((3, 3, 1, 4), np.float32)},
                     'head': {'kernel': np.zeros((4, 2), np.float32)}},
          'batch_stats': {'bn': {'mean': np.zeros(4, np.float32)}}}


def _loaded():
  rng = np.random.default_rng(0)
  return {'params': {'conv': {'kernel': rng.normal(size=(3, 3, 3, 4))},
                     'head': {'kernel': rng.normal(size=(4, 1000))}},
          'batch_stats': {'bn': {'mean': rng.normal(size=4)}}}


def test_first_conv_summed_and_head_kept_fresh():
  init, src = _vars(), _loaded()
  out = weights.merge(init, src, dont_load=('head/.*',))
  np.testing.assert_allclose(out['params']['conv']['kernel'],
                             src['params']['conv']['kernel'].sum(2,
                                                                 keepdims=True),
                             rtol=1e-6)
  np.testing.assert_array_equal(out['params']['head']['kernel'], 0)
  np.testing.assert_allclose(out['batch_stats']['bn']['mean'],
                             src['batch_stats']['bn']['mean'], rtol=1e-6)
  # Summing the RGB kernel equals the RGB kernel on a grey image repeated 3x.
  x = np.random.default_rng(1).normal(size=(3, 3))
  k = src['params']['conv']['kernel']
  rgb = np.einsum('hw,hwco->o', x, k)
  grey = np.einsum('hw,hwo->o', x, out['params']['conv']['kernel'][:, :, 0])
  np.testing.assert_allclose(rgb, grey, rtol=1e-5)


def test_missing_and_misshaped_are_listed_by_name():
  src = _loaded()
  del src['batch_stats']['bn']
  with pytest.raises(ValueError) as e:
    weights.merge(_vars(), src)
  msg = str(e.value)
  assert 'batch_stats/bn/mean' in msg and 'params/head/kernel' in msg
  assert '(4, 2)' in msg and '(4, 1000)' in msg


def test_rename_rules_load_a_submodule():
  init = {'params': {'densenet': {'conv': {'kernel': np.zeros((2,))}},
                     'unet': {'w': np.zeros((3,))}}}
  src = {'params': {'conv': {'kernel': np.ones((2,))}}}
  out = weights.merge(init, src, rules=(('densenet/(.*)', r'\1'),),
                      dont_load=('unet/.*',))
  np.testing.assert_array_equal(out['params']['densenet']['conv']['kernel'], 1)
  np.testing.assert_array_equal(out['params']['unet']['w'], 0)
  with pytest.raises(ValueError, match='unet/w'):
    weights.merge(init, src, rules=(('densenet/(.*)', r'\1'),))
