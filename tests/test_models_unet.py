"""UNet / Res_SE-UNet: shapes, pixel distribution, SE gate, shortcut, inject."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax.models import unet

jax.config.update('jax_numpy_rank_promotion', 'raise')


@pytest.fixture(scope='module', params=['tiny', 'res_se_tiny'])
def tiny(request, np_init):
  """(model, variables, x) for a tiny variant, initialised once."""
  model = unet.Model(variant=request.param)
  x = jax.random.normal(jax.random.key(0), (2, 64, 48, 1))
  return model, np_init(model, x), x


def test_tiny_shapes_and_distribution(tiny):
  model, variables, x = tiny
  logp, out = model.apply(variables, x)
  h, w = x.shape[1:3]
  assert logp.shape == (2, h, w)
  assert out['bottleneck'].shape == (2, h // 16, w // 16, 128)
  assert [d.shape[1:] for d in out['decoder']] == [
      (h // 8, w // 8, 64), (h // 4, w // 4, 32), (h // 2, w // 2, 16),
      (h, w, 8)]
  np.testing.assert_allclose(jnp.exp(logp).sum((1, 2)), 1., rtol=1e-5)
  np.testing.assert_array_equal(out['saliency_logp'], logp)
  # Train mode updates the batch statistics.
  _, state = model.apply(variables, x, train=True, mutable=['batch_stats'])
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                         variables['batch_stats'], state['batch_stats'])
  assert all(jax.tree.leaves(changed))


@pytest.mark.parametrize('variant', ['full', 'res_se'])
@pytest.mark.parametrize('hw', [(320, 256), (640, 512)])
def test_full_size_shapes(variant: str, hw: tuple[int, int]):
  model = unet.Model(variant=variant)
  x = jax.ShapeDtypeStruct((1, *hw, 1), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  logp, out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
  h, w = hw
  assert logp.shape == (1, h, w)
  assert out['bottleneck'].shape == (1, h // 16, w // 16, 1024)
  assert out['decoder'][-1].shape == (1, h, w, 64)
  assert [d.shape[-1] for d in out['decoder']] == [512, 256, 128, 64]


def test_squeeze_excite_closed_form(np_init):
  se = unet.SqueezeExcite(reduction=2)
  x = jax.random.normal(jax.random.key(0), (2, 3, 3, 4))
  variables = np_init(se, x, seed=1)
  y, state = se.apply(variables, x, mutable=['intermediates'])
  w1 = np.asarray(variables['params']['fc1']['kernel'])  # (4, 2)
  w2 = np.asarray(variables['params']['fc2']['kernel'])  # (2, 4)
  assert 'bias' not in variables['params']['fc1']
  s = np.asarray(x).mean((1, 2))
  gate = 1. / (1. + np.exp(-(np.maximum(s @ w1, 0.) @ w2)))
  assert np.all((gate > 0.) & (gate < 1.))
  np.testing.assert_allclose(state['intermediates']['gate'][0], gate,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(y, np.asarray(x) * gate[:, None, None, :],
                             rtol=1e-5, atol=1e-6)


def test_residual_block_tree_shortcut_without_bn():
  block = unet.ResSEBlock(32)
  variables = jax.eval_shape(functools.partial(block.init, train=False),
                             jax.random.key(0), jnp.ones((1, 8, 8, 5)))
  params, stats = variables['params'], variables['batch_stats']
  assert set(params) == {'conv1', 'bn1', 'conv2', 'bn2', 'shortcut', 'se'}
  assert params['shortcut']['kernel'].shape == (3, 3, 5, 32)
  assert set(stats) == {'bn1', 'bn2'}  # no BN on the shortcut
  assert params['se']['fc1']['kernel'].shape == (32, 2)  # C -> C/16
  # The Res_SE model uses it in every encoder level, the plain UNet nowhere.
  x = jnp.ones((1, 32, 32, 1))
  res = jax.eval_shape(unet.Model(variant='res_se_tiny').init,
                       jax.random.key(0), x)
  plain = jax.eval_shape(unet.Model(variant='tiny').init, jax.random.key(0), x)
  for i in range(1, 6):
    assert 'shortcut' in res['params']['encoder'][f'level{i}']
    assert 'shortcut' not in plain['params']['encoder'][f'level{i}']


def test_injection(np_init):
  model = unet.Model(variant='res_se_tiny', inject_channels=6,
                     inject_gate=True)
  x = jax.random.normal(jax.random.key(0), (2, 64, 64, 1))
  inj = jax.random.normal(jax.random.key(1), (2, 2, 2, 6))  # at 1/32
  variables = np_init(model, x, inject=inj)
  assert variables['params']['inject']['conv']['kernel'].shape == (3, 3, 6, 64)
  # First up-conv sees bottleneck (128) + injected (64) channels.
  assert variables['params']['decoder']['up4']['conv']['conv'][
      'kernel'].shape == (3, 3, 192, 64)
  logp, out = model.apply(variables, x, inject=inj)
  assert out['inject'].shape == (2, 4, 4, 64) and logp.shape == (2, 64, 64)
  # The gate starts closed: at init the injected map has no effect...
  assert float(variables['params']['inject_gate']) == 0.0
  logp2, _ = model.apply(variables, x, inject=inj + 1.)
  np.testing.assert_array_equal(logp2, logp)
  # ...and once it opens, the injected map changes the prediction.
  variables['params']['inject_gate'] = np.float32(1.0)
  logp, _ = model.apply(variables, x, inject=inj)
  logp2, _ = model.apply(variables, x, inject=inj + 1.)
  assert float(jnp.abs(logp2 - logp).max()) > 0
  # The authors' plain concatenation (the default): no gate parameter, and
  # the injected map changes the prediction from the start.
  plain = unet.Model(variant='res_se_tiny', inject_channels=6)
  pv = np_init(plain, x, inject=inj)
  assert 'inject_gate' not in pv['params']
  logp, _ = plain.apply(pv, x, inject=inj)
  logp2, _ = plain.apply(pv, x, inject=inj + 1.)
  assert float(jnp.abs(logp2 - logp).max()) > 0
  # Any grid is resized to the bottleneck grid (4x4 here).
  for hw in [(4, 4), (3, 5)]:
    _, o = jax.eval_shape(lambda v, i: model.apply(v, x, inject=i), variables,
                          jnp.zeros((2, *hw, 6)))
    assert o['inject'].shape == (2, 4, 4, 64)
  with pytest.raises(ValueError, match='inject'):
    model.apply(variables, x)
  with pytest.raises(ValueError, match='channels'):
    model.apply(variables, x, inject=inj[..., :3])


def test_upsample_and_bad_input():
  x = jnp.arange(4.).reshape(1, 2, 2, 1)
  np.testing.assert_array_equal(
      unet.upsample2x(x)[0, ..., 0],
      [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
  np.testing.assert_array_equal(unet.resize_to(x, (4, 4)), unet.upsample2x(x))
  with pytest.raises(ValueError, match='divisible'):
    jax.eval_shape(unet.Model(variant='tiny').init, jax.random.key(0),
                   jnp.ones((1, 40, 32, 1)))
  with pytest.raises(ValueError, match='in_chans'):
    jax.eval_shape(unet.Model(variant='tiny').init, jax.random.key(0),
                   jnp.ones((1, 32, 32, 3)))
  with pytest.raises(ValueError, match='variant'):
    jax.eval_shape(unet.Model(variant='nope').init, jax.random.key(0),
                   jnp.ones((1, 32, 32, 1)))
