"""GazeGNN: shapes, gaze dependence, k-NN graph, Grapher equivariance, convert.

No torch reference exists (the authors' model loads ImageNet ViG weights at
construction), so these tests pin the pieces by their definitions.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax.models import gazegnn, get_model

jax.config.update('jax_numpy_rank_promotion', 'raise')
_FAST = dict(compiler_options={'xla_backend_optimization_level': 0})


def _inputs(b: int, size: int, seed: int = 0):
  rs = np.random.RandomState(seed)
  x = jnp.asarray(rs.randn(b, size, size, 1), jnp.float32)
  yy, xx = np.mgrid[:size, :size] / size
  blob = np.exp(-((yy - 0.3) ** 2 + (xx - 0.7) ** 2) / 0.02)
  gaze = jnp.asarray(np.broadcast_to(blob, (b, size, size)), jnp.float32)
  return x, gaze


@pytest.fixture(scope='module')
def tiny():
  model = get_model('gazegnn_tiny', num_classes=3, in_chans=1)
  x, gaze = _inputs(2, 32)
  variables = jax.jit(lambda x, g: model.init(jax.random.PRNGKey(0), x,
                                              gaze=g), **_FAST)(x, gaze)
  apply = jax.jit(lambda v, x, g: model.apply(v, x, gaze=g), **_FAST)
  return model, variables, apply, x, gaze


def test_tiny_shapes_and_perturb(tiny):
  model, variables, apply, x, gaze = tiny
  logits, out = apply(variables, x, gaze)
  assert logits.shape == (2, 3)
  assert out['features'].shape == (2, 4, 4, 32)  # 32 px / patch 8
  assert out['pre_logits'].shape == (2, 32)

  def score(p):
    logits, _ = model.apply({**variables, 'perturbations': p}, x, gaze=gaze)
    return logits[:, 0].sum()

  grads = jax.jit(jax.grad(score), **_FAST)(variables['perturbations'])
  assert grads['features'].shape == out['features'].shape
  assert float(jnp.abs(grads['features']).sum()) > 0


def test_train_mode_updates_batch_stats(tiny):
  model, variables, _, x, gaze = tiny
  (logits, _), new = jax.jit(lambda v: model.apply(
      v, x, gaze=gaze, train=True, mutable=['batch_stats']), **_FAST)(
          variables)
  assert logits.shape == (2, 3)
  assert not np.allclose(new['batch_stats']['b1']['mean'],
                         variables['batch_stats']['b1']['mean'])


def test_gaze_changes_logits_and_is_required(tiny):
  model, variables, apply, x, gaze = tiny
  logits_a, out_a = apply(variables, x, gaze)
  logits_b, out_b = apply(variables, x, jnp.flip(gaze, axis=2))
  assert not np.allclose(out_a['gaze_embed'], out_b['gaze_embed'])
  assert float(jnp.abs(logits_a - logits_b).max()) > 1e-6
  with pytest.raises(ValueError, match='gaze map'):
    model.apply(variables, x)
  with pytest.raises(ValueError, match='gaze must be'):
    model.apply(variables, x, gaze=gaze[:, :16])


def test_full_variant_shapes():
  model = get_model('gazegnn', num_classes=3)
  x = jnp.zeros((1, 224, 224, 3))
  (logits, out), variables = jax.eval_shape(
      lambda: model.init_with_output(jax.random.PRNGKey(0), x, gaze=x[..., 0]))
  assert logits.shape == (1, 3)
  assert out['features'].shape == (1, 14, 14, 192)
  assert variables['params']['pos_embed'].shape == (1, 14, 14, 192)
  assert len([k for k in variables['params'] if k.startswith('backbone')]) == 12


def _brute_knn(x_BNC: np.ndarray, k: int, dilation: int) -> np.ndarray:
  x = x_BNC / np.linalg.norm(x_BNC, axis=-1, keepdims=True)
  d = ((x[:, :, None, :] - x[:, None, :, :]) ** 2).sum(-1)
  return np.argsort(d, axis=-1, kind='stable')[:, :, :k * dilation:dilation]


def test_knn_hand_case():
  # Unit directions at angles 0, 10, 30, 90, 100, 180 degrees: neighbours by
  # angle, each node first in its own list.
  ang = np.deg2rad([0., 10., 30., 90., 100., 180.])
  x = np.stack([np.cos(ang), np.sin(ang)], -1)[None].astype(np.float32)
  idx = np.asarray(gazegnn.knn_graph(jnp.asarray(x * 3.0), k=3))
  np.testing.assert_array_equal(idx[0], [[0, 1, 2], [1, 0, 2], [2, 1, 0],
                                         [3, 4, 2], [4, 3, 2], [5, 4, 3]])
  np.testing.assert_array_equal(idx, _brute_knn(x, 3, 1))
  rs = np.random.RandomState(0)
  y = rs.randn(2, 20, 5).astype(np.float32)
  for k, d in ((4, 1), (3, 2), (5, 4)):
    np.testing.assert_array_equal(
        np.asarray(gazegnn.knn_graph(jnp.asarray(y), k=k, dilation=d)),
        _brute_knn(y, k, d))
  with pytest.raises(ValueError, match='nodes'):
    gazegnn.knn_graph(jnp.asarray(y), k=7, dilation=3)


@pytest.mark.parametrize('train', [False, True])
def test_grapher_permutation_equivariant(train):
  grapher = gazegnn.Grapher(k=3, dilation=2)
  rs = np.random.RandomState(1)
  x = jnp.asarray(rs.randn(2, 4, 4, 8), jnp.float32)
  variables = grapher.init(jax.random.PRNGKey(0), x)
  perm = rs.permutation(16)

  @jax.jit
  def run(x):
    return grapher.apply(variables, x, train, mutable=['batch_stats'])[0]

  y = run(x).reshape(2, 16, 8)
  x_perm = x.reshape(2, 16, 8)[:, perm].reshape(2, 4, 4, 8)
  y_perm = run(x_perm).reshape(2, 16, 8)
  np.testing.assert_allclose(y_perm, y[:, perm], rtol=1e-5, atol=1e-5)


def _to_torch_layout(variables) -> dict[str, np.ndarray]:
  """Inverse of `convert_torch`'s mapping: Flax tree -> ViG torch keys."""
  sd = {}
  for col in ('params', 'batch_stats'):
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables[col])[0]:
      names = [p.key for p in path]
      *mods, name = names
      head = mods[0] if mods else ''
      if head.startswith(('backbone_', 'prediction_')):
        mods = head.split('_') + mods[1:]
      elif head == 'stem':
        mods = ['stem', 'convs'] + mods[1:]
      arr = np.asarray(leaf)
      if name == 'pos_embed':
        sd['pos_embed'] = arr.transpose(0, 3, 1, 2)
        continue
      leaf_name = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias',
                   'mean': 'running_mean', 'var': 'running_var'}[name]
      if name == 'kernel':
        arr = arr.transpose(3, 2, 0, 1)
      sd['.'.join(mods + [leaf_name])] = arr
  return sd


def _torch_grapher(sd, x_BCHW, k: int, dilation: int):
  """ViG's Grapher (eval mode) in torch ops, as in Huawei's gcn_lib."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  sd = {n: torch.from_numpy(np.asarray(v)) for n, v in sd.items()}

  def conv_bn(x, pre, groups=1):
    x = F.conv2d(x, sd[pre + '0.weight'], sd[pre + '0.bias'], groups=groups)
    return F.batch_norm(x, sd[pre + '1.running_mean'],
                        sd[pre + '1.running_var'], sd[pre + '1.weight'],
                        sd[pre + '1.bias'], False, 0.0, 1e-5)

  x = torch.from_numpy(x_BCHW)
  b, c, h, w = x.shape
  y = conv_bn(x, 'fc1.').reshape(b, c, -1, 1)
  xn = F.normalize(y, p=2.0, dim=1).transpose(2, 1).squeeze(-1)
  sq = (xn * xn).sum(-1, keepdim=True)
  dist = sq - 2 * xn @ xn.transpose(2, 1) + sq.transpose(2, 1)
  nn_idx = torch.topk(-dist, k=k * dilation)[1][:, :, ::dilation]
  yf = y.squeeze(-1)
  x_j = torch.stack([yf[i][:, nn_idx[i]] for i in range(b)])  # B, C, N, K
  x_j = (x_j - yf[..., None]).max(-1, keepdim=True)[0]
  z = torch.cat([y.unsqueeze(2), x_j.unsqueeze(2)], dim=2).reshape(
      b, 2 * c, -1, 1)
  z = F.gelu(conv_bn(z, 'graph_conv.gconv.nn.', groups=4)).reshape(b, -1, h, w)
  return (conv_bn(z, 'fc2.') + x).numpy()


def test_grapher_matches_torch_vig():
  grapher = gazegnn.Grapher(k=3, dilation=2)
  rs = np.random.RandomState(4)
  x = rs.randn(2, 4, 4, 8).astype(np.float32)
  variables = grapher.init(jax.random.PRNGKey(0), jnp.asarray(x))
  variables = jax.tree_util.tree_map(
      lambda a: np.asarray(a) + rs.rand(*a.shape).astype(np.float32) * 0.5,
      variables)
  got = grapher.apply(variables, jnp.asarray(x))
  ref = _torch_grapher(_to_torch_layout(variables), x.transpose(0, 3, 1, 2),
                       k=3, dilation=2).transpose(0, 2, 3, 1)
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_convert_torch_roundtrip(tiny):
  model, variables, apply, x, gaze = tiny
  rs = np.random.RandomState(3)
  variables = jax.tree_util.tree_map(
      lambda a: np.asarray(a) + rs.rand(*a.shape).astype(np.float32),
      {'params': variables['params'], 'batch_stats': variables['batch_stats']})
  sd = _to_torch_layout(variables)
  assert 'backbone.1.0.graph_conv.gconv.nn.0.weight' in sd
  assert 'stem.convs.3.weight' in sd and 'prediction.4.bias' in sd
  sd['stem.convs.0.num_batches_tracked'] = np.zeros(())
  converted = gazegnn.convert_torch(sd, variant='tiny')
  jax.tree_util.tree_map(np.testing.assert_array_equal, converted, variables)
  with pytest.raises(KeyError, match='backbone.9.0.fc1.0.weight'):
    gazegnn.convert_torch({**sd, 'backbone.9.0.fc1.0.weight': np.zeros(1)},
                          variant='tiny')
  # Without GazeGNN's `b1` (a plain ViG checkpoint) the gaze BN stays at init.
  plain = {k: v for k, v in sd.items() if not k.startswith('b1.')}
  assert float(gazegnn.convert_torch(plain, variant='tiny')[
      'batch_stats']['b1']['var'][0]) == 1.0
