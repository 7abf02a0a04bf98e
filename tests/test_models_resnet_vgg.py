"""Parity of the Flax ResNet/VGG with torchvision (random weights converted)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax import models
from cxr_jax.models import layers
from cxr_jax.models import resnet
from cxr_jax.models import vgg

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')

jax.config.update('jax_numpy_rank_promotion', 'raise')
torch.set_num_threads(2)


def _torch_model(name: str, seed: int = 0):
  """torchvision model, random init, BN stats and affine params randomised.

  BN scales stay below 1 so that activations do not grow through 100 layers
  (which would turn a relative tolerance into a meaningless absolute one).
  """
  torch.manual_seed(seed)
  m = getattr(torchvision.models, name)(weights=None)
  with torch.no_grad():
    for mod in m.modules():
      if isinstance(mod, torch.nn.BatchNorm2d):
        mod.running_mean.uniform_(-0.5, 0.5)
        mod.running_var.uniform_(0.5, 2.0)
        mod.weight.uniform_(0.25, 0.75)
        mod.bias.uniform_(-0.25, 0.25)
  return m.eval()


def _state_dict(m) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in m.state_dict().items()}


def _feature_layer(name: str, m):
  return m.layer4 if name.startswith('resnet') else m.features[-2]


def _assert_close(got, want, what: str) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, (what, got.shape, want.shape)
  diff = float(np.abs(got - want).max())
  tol = 1e-4 * max(1.0, float(np.abs(want).max()))
  assert diff <= tol, f'{what}: max abs diff {diff} > {tol}'
  return diff


def _run_torch(name, m, x_BCHW, train=False):
  feats = {}
  hook = _feature_layer(name, m).register_forward_hook(
      lambda mod, inp, o: feats.__setitem__('f', o.detach().numpy()))
  m.train(train)
  with torch.no_grad():
    logits = m(torch.from_numpy(x_BCHW)).numpy()
  hook.remove()
  return logits, feats['f'].transpose(0, 2, 3, 1)


# (model, image size, batch): full size where it is cheap, 64 px otherwise
# (both families are valid at 64 px; VGG then exercises the adaptive pool).
_PARITY = [
    ('resnet18', 224, 2), ('resnet34', 128, 2), ('resnet50', 224, 1),
    ('resnet101', 64, 2), ('vgg16', 224, 1), ('vgg19', 64, 2),
]


@pytest.mark.parametrize('name,size,batch', _PARITY)
def test_eval_parity(name, size, batch):
  m = _torch_model(name)
  variables = models.family(name).convert_torch(
      _state_dict(m), variant=models.variant(name))
  x = np.random.RandomState(1).randn(batch, 3, size, size).astype(np.float32)
  logits_t, feats_t = _run_torch(name, m, x)
  model = models.get_model(name, num_classes=1000)
  logits, out = jax.jit(model.apply)(variables, x.transpose(0, 2, 3, 1))
  d_logits = _assert_close(logits, logits_t, f'{name} logits')
  d_feats = _assert_close(out['features'], feats_t, f'{name} features')
  print(f'{name}@{size}: logits {d_logits:.2e} features {d_feats:.2e}')


def test_resnet_train_mode_parity():
  """One train-mode forward: outputs and updated running stats match torch."""
  m = _torch_model('resnet18')
  variables = resnet.convert_torch(_state_dict(m), variant='18')
  x = np.random.RandomState(2).randn(4, 3, 64, 64).astype(np.float32)
  logits_t, feats_t = _run_torch('resnet18', m, x, train=True)
  model = models.get_model('resnet18', num_classes=1000)
  (logits, out), updates = jax.jit(
      lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(
          variables, x.transpose(0, 2, 3, 1))
  _assert_close(logits, logits_t, 'train logits')
  _assert_close(out['features'], feats_t, 'train features')
  after = resnet.convert_torch(_state_dict(m), variant='18')['batch_stats']
  got = layers.flatten(jax.device_get(updates['batch_stats']))
  want = layers.flatten(after)
  assert got.keys() == want.keys()
  for k in want:
    _assert_close(got[k], want[k], k)
  # The stats really moved (so the comparison is not vacuous).
  before = layers.flatten(variables['batch_stats'])
  assert not np.allclose(before['bn1/var'], want['bn1/var'])


def test_batchnorm_running_var_conventions():
  """torch stores the unbiased batch variance; nn.BatchNorm the biased one."""
  x = jax.random.normal(jax.random.key(0), (3, 5, 5, 4)) * 2 + 1
  n = 3 * 5 * 5
  ours = layers.BatchNorm(use_running_average=False)
  flax_bn = nn.BatchNorm(use_running_average=False, momentum=0.9,
                         epsilon=1e-5)
  v = ours.init(jax.random.key(1), x)
  y, upd = ours.apply(v, x, mutable=['batch_stats'])
  y_flax, upd_flax = flax_bn.apply(v, x, mutable=['batch_stats'])
  np.testing.assert_allclose(y, y_flax, atol=1e-5)  # same normalisation
  biased = np.var(np.asarray(x), axis=(0, 1, 2))
  np.testing.assert_allclose(upd['batch_stats']['var'],
                             0.9 + 0.1 * biased * n / (n - 1), rtol=1e-5)
  np.testing.assert_allclose(upd_flax['batch_stats']['var'],
                             0.9 + 0.1 * biased, rtol=1e-5)
  torch_bn = torch.nn.BatchNorm2d(4, eps=1e-5, momentum=0.1).train()
  with torch.no_grad():
    torch_bn(torch.from_numpy(np.array(x).transpose(0, 3, 1, 2)))
  np.testing.assert_allclose(upd['batch_stats']['var'],
                             torch_bn.running_var.numpy(), rtol=1e-5)
  same = layers.BatchNorm(use_running_average=False,
                          unbiased_running_var=False, use_fast_variance=False)
  _, upd2 = same.apply(v, x, mutable=['batch_stats'])
  np.testing.assert_allclose(upd2['batch_stats']['var'],
                             upd_flax['batch_stats']['var'], rtol=1e-5)


@pytest.mark.parametrize('n_in', [1, 2, 5, 7, 9, 13, 14, 20])
def test_adaptive_avg_pool_matches_torch(n_in):
  x = np.random.RandomState(n_in).randn(2, n_in, n_in + 3, 3).astype(np.float32)
  want = torch.nn.functional.adaptive_avg_pool2d(
      torch.from_numpy(x.transpose(0, 3, 1, 2)), (7, 7)).numpy()
  got = vgg.adaptive_avg_pool(jnp.asarray(x), 7)
  np.testing.assert_allclose(got, want.transpose(0, 2, 3, 1), atol=1e-6)


@pytest.fixture(scope='module', params=['resnet_tiny', 'vgg_tiny'])
def tiny(request):
  """(name, model, variables): 2 classes, 1-channel input, 32 px."""
  model = models.get_model(request.param, num_classes=2, in_chans=1)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.ones((2, 32, 32, 1)))
  return request.param, model, variables


def test_tiny_shapes(tiny):
  name, model, variables = tiny
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 1))
  logits, out = jax.jit(model.apply)(variables, x)
  assert logits.shape == (2, 2)
  assert out['features'].ndim == 4 and out['features'].shape[0] == 2
  assert out['pre_logits'].shape[0] == 2
  kernel = variables['params']['conv1' if name == 'resnet_tiny'
                               else 'conv1_1']['kernel']
  assert kernel.shape[2] == 1
  # Headless, 3 channels, 64 px, bf16 compute, train mode (shapes only).
  headless = models.get_model(name, num_classes=None, dtype=jnp.bfloat16)
  x3 = jnp.ones((2, 64, 64, 3))
  v2 = jax.eval_shape(headless.init, jax.random.key(0), x3)
  assert 'head' not in v2['params']
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(v2['params']))
  (feats, out2), _ = jax.eval_shape(
      lambda v, x: headless.apply(v, x, train=True,
                                  rngs={'dropout': jax.random.key(1)},
                                  mutable=['batch_stats']), v2, x3)
  assert feats.shape == out2['pre_logits'].shape
  assert feats.dtype == jnp.bfloat16


def test_train_mode_updates_stats_and_dropout(tiny):
  name, model, variables = tiny
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 1))
  apply = jax.jit(lambda v, x, r: model.apply(
      v, x, train=True, rngs={'dropout': r}, mutable=['batch_stats']))
  (logits, _), upd = apply(variables, x, jax.random.key(1))
  eval_logits, _ = jax.jit(model.apply)(variables, x)
  assert logits.shape == (2, 2)
  assert not np.allclose(logits, eval_logits)  # batch stats or dropout
  if name == 'resnet_tiny':
    assert not np.allclose(upd['batch_stats']['bn1']['mean'],
                           variables['batch_stats']['bn1']['mean'])
  else:
    (again, _), _ = apply(variables, x, jax.random.key(2))
    assert not np.allclose(logits, again)  # dropout is active in train


def test_perturb_features_gradient(tiny):
  """Grad-CAM: d logit / d features through the 'perturbations' collection."""
  _, model, variables = tiny
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 1))
  assert 'perturbations' in variables
  params = {k: v for k, v in variables.items() if k != 'perturbations'}

  @jax.jit
  def grad_and_out(perturbations):
    def score(p):
      logits, out = model.apply({**params, 'perturbations': p}, x)
      return logits[:, 1].sum(), out
    return jax.grad(score, has_aux=True)(perturbations)

  grads, out = grad_and_out(variables['perturbations'])
  g = grads['features']
  assert g.shape == out['features'].shape
  assert np.abs(np.asarray(g)).max() > 0


def test_vgg_cam_layer_conv_is_the_pre_relu_map():
  """cam_layer='conv' targets the last conv before its ReLU: the map is the
  default's up to the ReLU, and its Grad-CAM gradient is the default's times
  the ReLU's mask; the logits do not change."""
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 1))
  relu = models.get_model('vgg_tiny', num_classes=2, in_chans=1, dropout=0.)
  conv = models.get_model('vgg_tiny', num_classes=2, in_chans=1, dropout=0.,
                          cam_layer='conv')
  variables = jax.jit(relu.init)(jax.random.key(0), x)
  params = {k: v for k, v in variables.items() if k != 'perturbations'}

  def grad_and_out(model):
    def score(p):
      logits, out = model.apply({**params, 'perturbations': p}, x)
      return logits[:, 1].sum(), (logits, out)
    return jax.jit(jax.grad(score, has_aux=True))(variables['perturbations'])

  g_relu, (logits_relu, out_relu) = grad_and_out(relu)
  g_conv, (logits_conv, out_conv) = grad_and_out(conv)
  pre, post = np.asarray(out_conv['features']), np.asarray(out_relu['features'])
  assert (pre < 0).any()  # the two layers really differ
  np.testing.assert_array_equal(np.maximum(pre, 0), post)
  np.testing.assert_array_equal(logits_conv, logits_relu)
  np.testing.assert_allclose(g_conv['features'],
                             np.where(pre > 0, g_relu['features'], 0.),
                             rtol=1e-6, atol=1e-7)
  with pytest.raises(ValueError, match="cam_layer='pool'"):
    models.get_model('vgg_tiny', num_classes=2, in_chans=1,
                     cam_layer='pool').init(jax.random.key(0), x)
