"""DenseNet and Inception-ResNet-v2: parity with torchvision/timm, shapes.

Torch references use random init (no downloads) with randomised BatchNorm
statistics and affine parameters, so that a wrong eps, a mis-mapped BN or a
transposed kernel shows up in the logits.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from cxr_jax.models import densenet, get_model, layers
from cxr_jax.models import inception_resnet_v2 as irv2

jax.config.update('jax_numpy_rank_promotion', 'raise')
torch.set_num_threads(2)
# XLA's CPU backend optimisations cost more compile time than these one-off
# forwards save (DenseNet-121: 21 s -> 8 s on 2 busy cores); numerics agree.
_FAST = dict(compiler_options={'xla_backend_optimization_level': 0})


def _randomise_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        n = m.num_features
        m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
        m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
        m.weight.copy_(torch.rand(n, generator=g) + 0.5)
        m.bias.copy_(torch.rand(n, generator=g) * 0.6 - 0.3)
  return model


def _tol(ref: np.ndarray) -> float:
  return 1e-4 * max(1.0, float(np.abs(ref).max()))


def _torch_forward(model, layer, x_BCHW, post=lambda t: t):
  """Logits and the output of `layer` (NHWC), eval mode, no grad."""
  got = {}
  hook = layer.register_forward_hook(lambda m, i, o: got.update(f=post(o)))
  with torch.no_grad():
    logits = model(torch.from_numpy(x_BCHW)).numpy()
  hook.remove()
  return logits, got['f'].numpy().transpose(0, 2, 3, 1)


def _check_parity(model_name, torch_model, layer, x_BCHW, convert, variant,
                  post=lambda t: t):
  ref_logits, ref_feat = _torch_forward(torch_model, layer, x_BCHW, post)
  variables = convert(torch_model.state_dict(), variant=variant)
  model = get_model(model_name, num_classes=ref_logits.shape[-1])
  logits, out = jax.jit(lambda v, x: model.apply(v, x), **_FAST)(
      variables, jnp.asarray(x_BCHW.transpose(0, 2, 3, 1)))
  err_l = float(np.abs(np.asarray(logits) - ref_logits).max())
  err_f = float(np.abs(np.asarray(out['features']) - ref_feat).max())
  print(f'{model_name}: max|dlogits| {err_l:.2e} (max|logits| '
        f'{np.abs(ref_logits).max():.2f}), max|dfeatures| {err_f:.2e}')
  assert err_l <= _tol(ref_logits)
  assert out['features'].shape == ref_feat.shape
  assert err_f <= _tol(ref_feat)
  return variables, model


def _tiny_torch_densenet() -> torch.nn.Module:
  return torchvision.models.DenseNet(
      growth_rate=4, block_config=(1, 1, 1, 1), num_init_features=8,
      bn_size=4, num_classes=3).eval()


@pytest.mark.parametrize('name,variant,ctor,size,batch', [
    ('densenet121', '121', torchvision.models.densenet121, 64, 2),
    pytest.param('densenet201', '201', torchvision.models.densenet201, 224, 1,
                 marks=pytest.mark.slow),
])
def test_densenet_parity(name, variant, ctor, size, batch):
  torch.manual_seed(0)
  tm = _randomise_bn(ctor(weights=None).eval())
  x = np.random.RandomState(0).randn(batch, 3, size, size).astype(np.float32)
  _check_parity(name, tm, tm.features.norm5, x, densenet.convert_torch,
                variant, post=torch.relu)


@pytest.mark.slow
def test_irv2_parity_299():
  import timm  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  tm = _randomise_bn(timm.create_model('inception_resnet_v2',
                                       pretrained=False).eval())
  x = np.random.RandomState(0).randn(1, 3, 299, 299).astype(np.float32)
  _check_parity('inception_resnet_v2', tm, tm.conv2d_7b, x,
                irv2.convert_torch, 'full')


def _check_train_bn(torch_model, variables, model, x_BCHW, pairs):
  """Train-mode outputs and updated running statistics equal torch's.

  torch normalises with the biased batch variance but stores the unbiased one
  (x n/(n-1), n = B*H*W) in running_var; `layers.BatchNorm` does the same
  (`nn.BatchNorm` would store the biased one: the last assert rules that out).
  """
  old = {k: v.detach().clone() for k, v in torch_model.state_dict().items()}
  torch_model.train()
  with torch.no_grad():
    ref = torch_model(torch.from_numpy(x_BCHW)).numpy()
  torch_model.eval()
  sd = torch_model.state_dict()
  (logits, _), new = jax.jit(lambda v, x: model.apply(
      v, x, train=True, mutable=['batch_stats']), **_FAST)(
          variables, jnp.asarray(x_BCHW.transpose(0, 2, 3, 1)))
  assert np.abs(np.asarray(logits) - ref).max() <= _tol(ref)
  for torch_name, flax_path, n in pairs:
    node = new['batch_stats']
    for p in flax_path.split('/'):
      node = node[p]
    np.testing.assert_allclose(node['mean'], sd[f'{torch_name}.running_mean'],
                               rtol=1e-4, atol=1e-5)
    tvar = sd[f'{torch_name}.running_var'].numpy()
    np.testing.assert_allclose(node['var'], tvar, rtol=1e-4, atol=1e-5)
    o = old[f'{torch_name}.running_var'].numpy()
    biased = 0.9 * o + (tvar - 0.9 * o) * (n - 1) / n
    assert not np.allclose(biased, tvar, rtol=1e-4, atol=1e-5)


def test_densenet_tiny_parity_train_bn_and_legacy_keys():
  torch.manual_seed(1)
  tm = _randomise_bn(_tiny_torch_densenet(), seed=1)
  x = np.random.RandomState(1).randn(2, 3, 32, 32).astype(np.float32)
  variables, model = _check_parity('densenet_tiny', tm, tm.features.norm5, x,
                                    densenet.convert_torch, 'tiny',
                                    post=torch.relu)
  # Legacy torchvision keys ('norm.1') convert to the same tree.
  legacy = {k.replace('.norm1.', '.norm.1.').replace('.conv2.', '.conv.2.'): v
            for k, v in tm.state_dict().items()}
  assert any('.norm.1.' in k for k in legacy)
  conv_legacy = densenet.convert_torch(legacy, variant='tiny')
  jax.tree_util.tree_map(np.testing.assert_array_equal, conv_legacy, variables)
  # 32 px: norm0 sees 2x16x16, norm5 2x1x1 (n = 2: var ratio 2).
  _check_train_bn(tm, variables, model, x, [
      ('features.norm0', 'norm0', 2 * 16 * 16),
      ('features.norm5', 'norm5', 2 * 1 * 1)])


def test_densenet_train_bn_with_shared_chunk_moments():
  """Several layers per block: each norm1 normalises a concatenation whose
  batch statistics `DenseBlock` assembles from per-chunk moments; outputs
  and the running statistics they update equal torch's (train mode)."""
  torch.manual_seed(3)
  tm = _randomise_bn(torchvision.models.DenseNet(
      growth_rate=12, block_config=(2, 2, 2, 2), num_init_features=16,
      bn_size=4, num_classes=3).eval(), seed=3)
  x = np.random.RandomState(3).randn(2, 3, 64, 64).astype(np.float32)
  variables, model = _check_parity('densenet_small', tm, tm.features.norm5, x,
                                    densenet.convert_torch, 'small',
                                    post=torch.relu)
  # 64 px: block 1 runs at 16x16, block 2 at 8x8 (batch 2).
  _check_train_bn(tm, variables, model, x, [
      ('features.denseblock1.denselayer2.norm1',
       'denseblock1/denselayer2/norm1', 2 * 16 * 16),
      ('features.denseblock2.denselayer2.norm1',
       'denseblock2/denselayer2/norm1', 2 * 8 * 8),
      ('features.transition2.norm', 'transition2/norm', 2 * 8 * 8)])


def test_batchnorm_given_moments_equal_computed_ones():
  x = jnp.asarray(np.random.RandomState(4).randn(3, 5, 5, 6), jnp.float32)
  bn = layers.BatchNorm(use_running_average=False)
  v = bn.init(jax.random.key(0), x)
  ref, ref_stats = bn.apply(v, x, mutable=['batch_stats'])
  got, got_stats = bn.apply(v, x, moments=layers.batch_moments(x),
                            mutable=['batch_stats'])
  np.testing.assert_array_equal(got, ref)
  jax.tree_util.tree_map(np.testing.assert_array_equal, got_stats, ref_stats)
  with pytest.raises(ValueError, match='for 6 channels'):
    bn.apply(v, x, moments=layers.batch_moments(x[..., :4]),
             mutable=['batch_stats'])


def test_irv2_basic_conv_train_bn():
  from timm.layers import ConvNormAct  # pylint: disable=g-import-not-at-top
  torch.manual_seed(2)
  tm = _randomise_bn(ConvNormAct(3, 8, 3, stride=2, padding=0,
                                 norm_kwargs=dict(eps=1e-3)).eval(), seed=2)
  sd = {k: v.numpy().copy() for k, v in tm.state_dict().items()}
  variables = {
      'params': {'conv': {'kernel': sd['conv.weight'].transpose(2, 3, 1, 0)},
                 'bn': {'scale': sd['bn.weight'], 'bias': sd['bn.bias']}},
      'batch_stats': {'bn': {'mean': sd['bn.running_mean'],
                             'var': sd['bn.running_var']}}}
  model = irv2.BasicConv2d(8, (3, 3), 2, 'VALID')
  x = np.random.RandomState(2).randn(2, 3, 9, 9).astype(np.float32)
  with torch.no_grad():
    ref = tm(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
  got = model.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)), False)
  np.testing.assert_allclose(got, ref, atol=1e-5)  # eps 1e-3 matters here.

  class Wrap(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.block = tm

    def forward(self, x):
      return self.block(x)

  class FlaxWrap:
    def apply(self, v, x, train, mutable):
      y, new = model.apply(v, x, train, mutable=mutable)
      return (y.transpose(0, 3, 1, 2), None), new

  _check_train_bn(Wrap(), variables, FlaxWrap(), x, [('block.bn', 'bn', 32)])


def test_convert_errors_name_the_key():
  sd = {k: v.numpy() for k, v in _tiny_torch_densenet().state_dict().items()}
  with pytest.raises(KeyError, match='features.extra.weight'):
    densenet.convert_torch({**sd, 'features.extra.weight': np.zeros(3)},
                           variant='tiny')
  bad = dict(sd)
  bad['features.norm5.running_var'] = np.zeros(7, np.float32)
  with pytest.raises(ValueError, match='features.norm5.running_var'):
    densenet.convert_torch(bad, variant='tiny')
  missing = dict(sd)
  del missing['features.norm0.running_mean']
  with pytest.raises(KeyError, match='norm0/mean'):
    densenet.convert_torch(missing, variant='tiny')
  with pytest.raises(KeyError, match='conv2d_1a'):
    irv2.convert_torch(sd, variant='tiny')


@pytest.mark.parametrize('name,size', [
    ('densenet_tiny', 32), ('inception_resnet_v2_tiny', 64)])
def test_registry_tiny_shapes_and_perturb(name, size):
  model = get_model(name, num_classes=2, in_chans=1)
  x = jnp.asarray(np.random.RandomState(0).randn(2, size, size, 1), jnp.float32)
  variables = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x),
                      **_FAST)(x)
  assert 'perturbations' in variables

  def score(perturbations):
    logits, out = model.apply({**variables, 'perturbations': perturbations}, x)
    return logits[:, 1].sum(), (logits, out)

  grads, (logits, out) = jax.jit(jax.grad(score, has_aux=True), **_FAST)(
      variables['perturbations'])
  assert logits.shape == (2, 2)
  feat = out['features']
  assert feat.ndim == 4 and feat.shape[0] == 2
  assert grads['features'].shape == feat.shape
  assert out['pre_logits'].shape == (2, feat.shape[-1])
  assert float(jnp.abs(grads['features']).sum()) > 0
  with pytest.raises(ValueError, match='input channels'):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))


def test_headless_and_small_input_error():
  model = get_model('densenet_tiny', num_classes=None)
  x = jnp.zeros((1, 32, 32, 3))
  (logits, out), _ = jax.eval_shape(
      lambda: model.init_with_output(jax.random.PRNGKey(0), x))
  assert logits.shape == out['pre_logits'].shape == (1, 8)
  with pytest.raises(ValueError, match='75'):
    jax.eval_shape(lambda: get_model('inception_resnet_v2').init(
        jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))))


@pytest.mark.parametrize('shape', [(2, 8, 6, 3), (1, 7, 9, 2)])
def test_avg_pool2_matches_flax_avg_pool(shape):
  """Values and gradients of the reshape form equal `nn.avg_pool`'s 2x2/2,
  odd sizes included (the last row/column is dropped)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=shape).astype(np.float32))
  y_ref, vjp_ref = jax.vjp(lambda v: nn.avg_pool(v, (2, 2), (2, 2)), x)
  y, vjp = jax.vjp(densenet.avg_pool2, x)
  np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
  g = jnp.asarray(rng.normal(size=y.shape).astype(np.float32))
  np.testing.assert_allclose(vjp(g)[0], vjp_ref(g)[0], rtol=1e-6, atol=1e-6)


def test_transition_pools_before_its_conv():
  """norm-relu-avgpool-conv equals the torchvision order norm-relu-conv-
  avgpool (both linear maps commute), in eval and train mode."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(2, 6, 10, 8)).astype(np.float32))
  t = densenet.Transition(4)
  v = t.init(jax.random.key(0), x, False)
  v = jax.tree.map(lambda a: a + 0.1 * jnp.asarray(
      rng.normal(size=a.shape).astype(np.float32)), v)
  for train in (False, True):
    y = t.apply(v, x, train, mutable=['batch_stats'])[0]
    z = nn.relu(layers.BatchNorm(use_running_average=not train, momentum=0.9,
                                 epsilon=1e-5).apply(
        {'params': v['params']['norm'],
         'batch_stats': v['batch_stats']['norm']}, x,
        mutable=['batch_stats'])[0])
    z = jnp.einsum('bhwc,cd->bhwd', z, v['params']['conv']['kernel'][0, 0])
    np.testing.assert_allclose(y, nn.avg_pool(z, (2, 2), (2, 2)),
                               rtol=1e-5, atol=1e-5)
