"""Study B composites: the dual-encoder cooperative model and MT-UNet."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax.models import cooperative
from cxr_jax.models import mtunet
from cxr_jax.training import freezing

jax.config.update('jax_numpy_rank_promotion', 'raise')


X64 = jax.random.normal(jax.random.key(0), (2, 64, 64, 1))


@pytest.fixture(scope='module')
def coop(np_init):
  model = cooperative.Model(variant='tiny')
  return model, np_init(model, X64)


def _changed(a, b) -> list[bool]:
  return jax.tree.leaves(jax.tree.map(lambda u, v: bool(jnp.any(u != v)), a, b))


def test_cooperative_outputs(coop):
  model, variables = coop
  assert set(variables['params']) == {'densenet', 'unet', 'fusion'}
  logits, out = model.apply(variables, X64)
  assert logits.shape == (2, 3) and out['densenet_logits'].shape == (2, 3)
  assert out['saliency_logp'].shape == (2, 64, 64)
  np.testing.assert_allclose(jnp.exp(out['saliency_logp']).sum((1, 2)), 1.,
                             rtol=1e-5)
  c = out['densenet']['norm5'].shape[-1]
  assert out['embedding'].shape == (2, c)
  np.testing.assert_allclose(out['embedding'], out['densenet']['pre_logits'],
                             rtol=1e-6)
  assert out['features'].shape == (2, 2, 2, c)  # DenseNet at 1/32
  # Fusion input = DenseNet channels + last decoder width (tiny: 8).
  hidden = variables['params']['fusion']['hidden']['kernel']
  assert hidden.shape == (c + 8, 64)
  assert out['pre_logits'].shape == (2, c + 8)

  # Grad-CAM of the fusion logits w.r.t. the DenseNet target is non-zero.
  def score(pert):
    lg, _ = model.apply({**variables, 'perturbations': pert}, X64)
    return lg[:, 0].sum()
  g = jax.jit(jax.grad(score))(variables['perturbations'])['densenet'][
      'features']
  assert g.shape == out['features'].shape and float(jnp.abs(g).max()) > 0


def test_full_size_fusion_width():
  model = cooperative.Model(variant='full')
  x = jax.ShapeDtypeStruct((1, 320, 256, 1), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  assert shapes['params']['fusion']['hidden']['kernel'].shape == (1920 + 64, 64)
  # denseblock4 (1920 ch, 10x8) -> up-conv to 512 at the 20x16 bottleneck.
  assert shapes['params']['unet']['inject']['conv']['kernel'].shape == (
      3, 3, 1920, 512)
  assert shapes['params']['unet']['decoder']['up4']['conv']['conv'][
      'kernel'].shape == (3, 3, 1024 + 512, 512)
  # The thesis text's encoder (everything before the last dense block):
  # the injection AND the fusion classifier read denseblock3 (1792 ch).
  b3 = cooperative.Model(variant='full', densenet_feature='denseblock3')
  shapes = jax.eval_shape(b3.init, jax.random.key(0), x)
  assert shapes['params']['fusion']['hidden']['kernel'].shape == (1792 + 64, 64)
  assert shapes['params']['unet']['inject']['conv']['kernel'].shape[2] == 1792


def test_frozen_densenet_runs_in_inference_mode(coop):
  """Frozen by the trainer's contract (stages 2 and 3), the DenseNet
  computes in a training apply exactly what it computes in inference and
  keeps its batch statistics, while the UNet's update."""
  model, variables = coop
  with freezing.inference_mode(('densenet',)):
    (_, out), state = model.apply(
        variables, X64, train=True, mutable=['batch_stats'],
        rngs={'dropout': jax.random.key(3)})
  _, out_eval = model.apply(variables, X64)
  for key in ('densenet_logits', 'embedding', 'features'):
    np.testing.assert_array_equal(out[key], out_eval[key])
  stats0, stats1 = variables['batch_stats'], state['batch_stats']
  assert not any(_changed(stats0['densenet'], stats1['densenet']))
  assert all(_changed(stats0['unet'], stats1['unet']))
  # Without freezing, both update.
  _, state = model.apply(variables, X64, train=True, mutable=['batch_stats'],
                         rngs={'dropout': jax.random.key(3)})
  assert all(_changed(stats0['densenet'], state['batch_stats']['densenet']))


@pytest.mark.parametrize('feature', ['denseblock4', 'denseblock3'])
def test_injection_features(feature: str, np_init):
  model = cooperative.Model(variant='tiny', densenet_feature=feature)
  variables = np_init(model, X64)
  logits, out = model.apply(variables, X64)
  inj = out['densenet'][feature]
  assert variables['params']['unet']['inject']['conv']['kernel'].shape[2] == (
      inj.shape[-1])
  assert inj.shape[1:3] == ((2, 2) if feature == 'denseblock4' else (4, 4))
  unet_out = out['unet']
  assert unet_out['inject'].shape[1:3] == unet_out['bottleneck'].shape[1:3]
  assert logits.shape == (2, 3) and out['saliency_logp'].shape == (2, 64, 64)


def test_mtunet_tiny_and_uncertainty_gradients(np_init):
  model = mtunet.Model(variant='tiny')
  x = X64[:, :32, :32]
  variables = np_init(model, x)
  params = variables['params']
  assert params['log_sigma_cls'].shape == ()
  assert params['log_sigma_sal'].shape == ()
  assert params['classifier']['hidden']['kernel'].shape == (128 + 8, 64)
  logits, out = model.apply(variables, x)
  assert logits.shape == (2, 3) and out['saliency_logp'].shape == (2, 32, 32)
  assert out['features'].shape == (2, 2, 2, 128)
  np.testing.assert_allclose(jnp.exp(out['saliency_logp']).sum((1, 2)), 1.,
                             rtol=1e-5)
  target = jnp.full((2, 32, 32), 1. / (32 * 32))
  labels = jnp.array([0, 2])

  def loss(p):
    lg, o = model.apply({**variables, 'params': p}, x, train=True,
                        rngs={'dropout': jax.random.key(0)},
                        mutable=['batch_stats'])[0]
    ls_c, ls_s = o['log_sigmas']
    ce = -jnp.mean(jax.nn.log_softmax(lg)[jnp.arange(2), labels])
    kl = jnp.mean(jnp.sum(target * (jnp.log(target) - o['saliency_logp']),
                          (1, 2)))
    s_c, s_s = jnp.exp(ls_c), jnp.exp(ls_s)
    return ce / s_c ** 2 + jnp.log(s_c + 1) + kl / (2 * s_s ** 2) + jnp.log(
        s_s + 1)
  g = jax.jit(jax.grad(loss))(params)
  assert float(jnp.abs(g['log_sigma_cls'])) > 0
  assert float(jnp.abs(g['log_sigma_sal'])) > 0

  # Grad-CAM target: the bottleneck, perturbed.
  def score(pert):
    lg, _ = model.apply({**variables, 'perturbations': pert}, x)
    return lg[:, 1].sum()
  gf = jax.jit(jax.grad(score))(variables['perturbations'])['features']
  assert gf.shape == (2, 2, 2, 128) and float(jnp.abs(gf).max()) > 0


def test_mtunet_full_size_shapes():
  model = mtunet.Model(variant='full')
  x = jax.ShapeDtypeStruct((1, 640, 512, 1), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  logits, out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
  assert logits.shape == (1, 3) and out['saliency_logp'].shape == (1, 640, 512)
  assert out['features'].shape == (1, 40, 32, 1024)
  assert variables['params']['classifier']['hidden']['kernel'].shape == (
      1024 + 64, 64)


def test_convert_torch_fills_the_densenet_subtree(np_init):
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  tm = torchvision.models.DenseNet(growth_rate=4, block_config=(1, 1, 1, 1),
                                   num_init_features=8, bn_size=4,
                                   num_classes=3).eval()
  converted = cooperative.convert_torch(
      {k: v.numpy() for k, v in tm.state_dict().items()}, variant='tiny')
  assert set(converted['params']) == {'densenet'}
  model = cooperative.Model(variant='tiny', in_chans=3)
  x = np.random.RandomState(0).randn(1, 64, 64, 3).astype(np.float32)
  variables = np_init(model, x)
  for col, tree in converted.items():
    assert jax.tree.structure(tree['densenet']) == jax.tree.structure(
        variables[col]['densenet'])
    variables[col] = {**variables[col], 'densenet': tree['densenet']}
  _, out = model.apply(variables, x)
  with torch.no_grad():
    t_logits = tm(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  np.testing.assert_allclose(out['densenet_logits'], t_logits, atol=1e-4)
  with pytest.raises(ValueError, match='variant'):
    cooperative.convert_torch({}, variant='nope')
