"""Tests for cxr_jax.explain: closed forms, known evidence, batching, parity."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax import explain
from cxr_jax.explain import cam as cam_lib
from cxr_jax.metrics import heatmap

jax.config.update('jax_numpy_rank_promotion', 'raise')


# ------------------------------------------------------------ test models --
class LinearCam(nn.Module):
  """features = fixed conv of the input; logits = W^T mean_hw(A)."""
  num_classes: int = 3

  @nn.compact
  def __call__(self, x_BHWC, *, train: bool = False):
    a = nn.Conv(5, (3, 3), strides=(2, 2), padding='SAME')(x_BHWC)
    a = self.perturb('features', a)
    return nn.Dense(self.num_classes, use_bias=False)(a.mean((1, 2))), {
        'features': a}


class TinyCnn(nn.Module):
  """conv-BN-ReLU-conv-ReLU-maxpool, GAP, dense (mirrors `_torch_cnn`)."""
  num_classes: int = 3

  @nn.compact
  def __call__(self, x_BHWC, *, train: bool = False):
    x = nn.Conv(8, (3, 3), padding='SAME', name='conv1')(x_BHWC)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                     epsilon=1e-5, name='bn1')(x)
    x = nn.relu(x)
    x = nn.relu(nn.Conv(6, (3, 3), padding='SAME', name='conv2')(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = self.perturb('features', x)
    out = {'features': x}
    return nn.Dense(self.num_classes, name='head')(x.mean((1, 2))), out


class Composite(nn.Module):
  """Nests TinyCnn under 'enc' and takes an extra array input."""

  @nn.compact
  def __call__(self, x_BHWC, *, gaze, train: bool = False):
    logits, out = TinyCnn(name='enc')(x_BHWC * gaze[..., None], train=train)
    return logits, {'enc': out}


class EvidenceCnn(nn.Module):
  """Channel 0 sees bright blobs, channel 1 dark blobs; class k reads chan k.

  Class 1 is driven only by the region with a bright blob, class 0 only by
  the dark blob.
  """

  @nn.compact
  def __call__(self, x_BHWC, *, train: bool = False):
    k = jnp.ones((3, 3, 1, 1)) / 9.0
    conv = lambda x: jax.lax.conv_general_dilated(
        x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    s = conv(x_BHWC)
    a = jnp.concatenate([nn.relu(-s), nn.relu(s)], axis=-1)
    a = self.perturb('features', a)
    scale = self.param('scale', nn.initializers.ones, ())
    return scale * a.mean((1, 2)), {'features': a}


class EvidenceVit(nn.Module):
  """Patch tokens, perturbed on the grid, pooled by attention on channel 1."""
  patch: int = 4

  @nn.compact
  def __call__(self, x_BHWC, *, train: bool = False):
    b, h, w, _ = x_BHWC.shape
    p = self.patch
    tok = x_BHWC.reshape(b, h // p, p, w // p, p).mean((2, 4))[..., None]
    embed = self.param('embed', nn.initializers.ones, (2,))
    a = jnp.concatenate([nn.relu(-tok), nn.relu(tok)], axis=-1)
    a = a * embed.reshape(1, 1, 1, 2)
    a = self.perturb('features', a)
    t_BNC = a.reshape(b, -1, 2)
    att_BN = jax.nn.softmax(4.0 * t_BNC[..., 1], axis=-1)
    pooled_BC = jnp.einsum('bn,bnc->bc', att_BN, t_BNC)
    return pooled_BC, {'features': a}


def _blob_images():
  x = np.zeros((2, 16, 16, 1), np.float32)
  x[:, 4:8, 8:12] = 1.0   # bright blob (class-1 evidence)
  x[:, 12:16, 0:4] = -1.0  # dark blob (class-0 evidence)
  x[1] = x[1, ::-1]        # second image: flipped layout
  m1 = (x[..., 0] > 0).astype(np.float32)
  m0 = (x[..., 0] < 0).astype(np.float32)
  return jnp.asarray(x), m1, m0


def _init(model, x, **kw):
  return model.init(jax.random.PRNGKey(0), x, **kw)


# ------------------------------------------------------------------ tests --
def test_gradcam_closed_form_linear_model():
  model = LinearCam()
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 12, 12, 1))
  v = _init(model, x)
  res = explain.compute_cams(model, v, x, targets=jnp.array([0, 2]),
                             upsample=False, normalize=False)
  _, out = model.apply(v, x)
  a = np.asarray(out['features'])
  w = np.asarray(v['params']['Dense_0']['kernel'])  # (C, K)
  h, wd = a.shape[1:3]
  want = np.stack([np.maximum(np.einsum('hwc,c->hw', a[i], w[:, k] / (h * wd)),
                              0) for i, k in enumerate([0, 2])])
  np.testing.assert_allclose(res['raw'], want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(res['targets'], [0, 2])
  # HiResCAM equals Grad-CAM here (the gradient is spatially constant).
  hr = explain.compute_cams(model, v, x, method='hirescam',
                            targets=jnp.array([0, 2]), upsample=False,
                            normalize=False)
  np.testing.assert_allclose(hr['raw'], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('model', [EvidenceCnn(), EvidenceVit()])
def test_known_evidence_region_lights_up(model):
  x, m1, m0 = _blob_images()
  v = _init(model, x)
  for cls, mask in ((1, m1), (0, m0)):
    res = explain.compute_cams(model, v, x, targets=jnp.array([cls, cls]))
    cam = np.asarray(res['cam'])
    assert cam.shape == (2, 16, 16)
    assert cam.min() >= 0 and cam.max() <= 1
    for i in range(2):
      assert heatmap.pointing_game(cam[i], mask[i], tolerance=1)
      assert heatmap.diff_gradcam(cam[i], mask[i]) > 0.3


def test_pred_targets_and_unknown_method():
  x, _, _ = _blob_images()
  model = EvidenceCnn()
  v = _init(model, x)
  res = explain.compute_cams(model, v, x, targets='pred')
  logits, _ = model.apply(v, x)
  np.testing.assert_array_equal(res['targets'], np.argmax(logits, -1))
  with pytest.raises(ValueError, match='Unknown CAM method'):
    explain.compute_cams(model, v, x, method='nope')
  with pytest.raises(ValueError, match='labels'):
    explain.compute_cams(model, v, x, targets='label')


@pytest.mark.parametrize('method', sorted(explain.METHODS))
def test_batch_equals_single_and_all_equals_stack(method):
  model = TinyCnn()
  x = jax.random.normal(jax.random.PRNGKey(2), (3, 12, 12, 3))
  v = _init(model, x)
  t = jnp.array([2, 0, 1])
  kw = dict(method=method, chunk_size=5)
  batch = explain.compute_cams(model, v, x, targets='label', labels=t, **kw)
  for i in range(3):
    # Image i alone (repeated to reuse the compiled batch shape).
    one = explain.compute_cams(model, v, x[jnp.array([i, i, i])],
                               targets=jnp.full((3,), t[i]), **kw)
    np.testing.assert_allclose(one['cam'][0], batch['cam'][i], atol=1e-5)
  if method in ('gradcam', 'scorecam'):
    one = explain.compute_cams(model, v, x[1:2], targets=t[1:2], **kw)
    np.testing.assert_allclose(one['cam'][0], batch['cam'][1], atol=1e-5)
  allc = explain.compute_cams(model, v, x, targets='all', **kw)
  assert allc['cam'].shape == (3, 3, 12, 12)
  for k in range(3):
    per = explain.compute_cams(model, v, x, targets=jnp.full((3,), k), **kw)
    np.testing.assert_allclose(allc['cam'][:, k], per['cam'], atol=1e-5)
    np.testing.assert_allclose(allc['raw'][:, k], per['raw'], atol=1e-5,
                               rtol=1e-5)


def test_variables_unchanged_and_nested_layer_with_kwargs():
  model = Composite()
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 12, 12, 3))
  gaze = jax.random.uniform(jax.random.PRNGKey(4), (2, 12, 12))
  v = _init(model, x, gaze=gaze)
  v = jax.tree.map(np.asarray, v)
  bs = v['batch_stats']['enc']['bn1']
  v['batch_stats']['enc']['bn1'] = {'mean': bs['mean'] + 0.3,
                                    'var': bs['var'] * 2.0}
  before = jax.tree.map(np.copy, v)
  res = explain.compute_cams(model, v, x, target_layer=('enc', 'features'),
                             targets='pred', model_kwargs={'gaze': gaze})
  assert res['cam'].shape == (2, 12, 12)
  # The suffix 'features' resolves to the one nested path as well.
  res2 = explain.compute_cams(model, v, x, targets='pred',
                              model_kwargs={'gaze': gaze})
  np.testing.assert_allclose(res['cam'], res2['cam'])
  sc = explain.compute_cams(model, v, x, method='scorecam', targets='pred',
                            model_kwargs={'gaze': gaze}, chunk_size=4)
  assert sc['cam'].shape == (2, 12, 12) and np.isfinite(sc['cam']).all()
  jax.tree.map(np.testing.assert_array_equal, before, v)
  with pytest.raises(ValueError, match='perturbation paths'):
    explain.compute_cams(model, v, x, target_layer='nope', targets='pred',
                         model_kwargs={'gaze': gaze})


def test_upsample_and_normalize_order():
  x, _, _ = _blob_images()
  model = EvidenceVit()
  v = _init(model, x)
  res = explain.compute_cams(model, v, x, targets=jnp.array([1, 1]))
  want = cam_lib.normalize_maps(
      jax.image.resize(res['raw'], (2, 16, 16), 'bilinear'))
  np.testing.assert_allclose(res['cam'], want, atol=1e-6)
  np.testing.assert_allclose(np.asarray(res['cam']).max((1, 2)), 1, atol=1e-5)
  np.testing.assert_allclose(np.asarray(res['cam']).min((1, 2)), 0, atol=1e-6)


# ---------------------------------------------------------------- rollout --
class AttnToy(nn.Module):
  """Returns fixed attention so that the class token attends to one patch."""
  target: int = 5

  @nn.compact
  def __call__(self, x_BHWC, *, train: bool = False):
    b = x_BHWC.shape[0]
    n = 17
    logits = nn.Dense(2)(x_BHWC.mean((1, 2)))
    base = jnp.full((n, n), 1.0 / n)
    peak = jnp.zeros((n, n)).at[0, 1 + self.target].set(1.0)
    a = 0.5 * base + 0.5 * peak
    attn = [jnp.broadcast_to(a, (b, 2, n, n))] * 3
    return logits, {'attn': attn}


def _rollout_reference(attn, fusion, discard):
  n = attn[0].shape[-1]
  res = np.eye(n)
  for a in attn:
    f = getattr(np, fusion)(np.asarray(a[0], np.float64), axis=0)
    flat = f.reshape(-1).copy()
    k = int(flat.size * discard)
    if k:
      idx = np.argsort(flat, kind='stable')[:k]
      idx = idx[idx != 0]
      flat[idx] = 0
    f = flat.reshape(n, n)
    m = (f + np.eye(n)) / 2
    m = m / m.sum(-1, keepdims=True)
    res = m @ res
  return res[0, 1:]


@pytest.mark.parametrize('fusion,discard', [('mean', 0.0), ('max', 0.5),
                                            ('min', 0.2)])
def test_rollout_matches_reference(fusion, discard):
  rng = np.random.default_rng(0)
  attn = []
  for _ in range(3):
    a = rng.random((1, 3, 10, 10)).astype(np.float32)
    attn.append(jnp.asarray(a / a.sum(-1, keepdims=True)))
  got = explain.rollout_from_attn(attn, head_fusion=fusion,
                                  discard_ratio=discard, grid_hw=(3, 3))
  np.testing.assert_allclose(np.asarray(got).reshape(-1),
                             _rollout_reference(attn, fusion, discard),
                             rtol=1e-5)


def test_rollout_peak_and_errors():
  model = AttnToy(target=5)
  x = jnp.ones((2, 16, 16, 1))
  v = _init(model, x)
  res = explain.attention_rollout(model, v, x)
  assert res['raw'].shape == (2, 4, 4) and res['cam'].shape == (2, 16, 16)
  assert np.argmax(res['raw'][0]) == 5
  mask = np.zeros((16, 16))
  mask[4:8, 4:8] = 1  # patch 5 = row 1, col 1 of the 4x4 grid
  assert heatmap.pointing_game(np.asarray(res['cam'][0]), mask)
  with pytest.raises(ValueError, match='head_fusion'):
    explain.attention_rollout(model, v, x, head_fusion='median')


# ------------------------------------------------- pytorch-grad-cam parity --
def _torch_cnn(v):
  torch = pytest.importorskip('torch')
  tnn = torch.nn

  class T(tnn.Module):

    def __init__(self):
      super().__init__()
      self.features = tnn.Sequential(
          tnn.Conv2d(3, 8, 3, padding=1), tnn.BatchNorm2d(8), tnn.ReLU(),
          tnn.Conv2d(8, 6, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2))
      self.head = tnn.Linear(6, 3)

    def forward(self, x):
      return self.head(self.features(x).mean((2, 3)))

  m = T().eval()
  p, s = v['params'], v['batch_stats']
  t = lambda a: torch.tensor(np.asarray(a))
  with torch.no_grad():
    for i, name in ((0, 'conv1'), (3, 'conv2')):
      m.features[i].weight.copy_(t(p[name]['kernel']).permute(3, 2, 0, 1))
      m.features[i].bias.copy_(t(p[name]['bias']))
    bn = m.features[1]
    bn.weight.copy_(t(p['bn1']['scale']))
    bn.bias.copy_(t(p['bn1']['bias']))
    bn.running_mean.copy_(t(s['bn1']['mean']))
    bn.running_var.copy_(t(s['bn1']['var']))
    m.head.weight.copy_(t(p['head']['kernel']).T)
    m.head.bias.copy_(t(p['head']['bias']))
  return m


def test_parity_with_pytorch_grad_cam():
  torch = pytest.importorskip('torch')
  pgc = pytest.importorskip('pytorch_grad_cam')
  from pytorch_grad_cam.utils import svd_on_activations
  from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

  model = TinyCnn()
  x = jax.random.normal(jax.random.PRNGKey(5), (3, 16, 16, 3))
  v = jax.tree.map(np.asarray, _init(model, x))
  rng = np.random.default_rng(0)
  v['batch_stats']['bn1'] = {'mean': rng.normal(size=8).astype(np.float32),
                             'var': rng.uniform(0.5, 2, 8).astype(np.float32)}
  tm = _torch_cnn(v)
  xt = torch.tensor(np.asarray(x)).permute(0, 3, 1, 2).contiguous()
  with torch.no_grad():
    np.testing.assert_allclose(tm(xt).numpy(), model.apply(v, x)[0],
                               atol=1e-4)
  t = [2, 0, 1]
  classes = {'gradcam': pgc.GradCAM, 'hirescam': pgc.HiResCAM,
             'gradcam++': pgc.GradCAMPlusPlus, 'xgradcam': pgc.XGradCAM,
             'layercam': pgc.LayerCAM, 'scorecam': pgc.ScoreCAM}
  for method, cls in classes.items():
    c = cls(model=tm, target_layers=[tm.features])
    c.get_target_width_height = lambda _: (8, 8)  # maps before upsampling
    if method == 'scorecam':
      c.batch_size = 7
    want = c(input_tensor=xt, targets=[ClassifierOutputTarget(k) for k in t])
    got = explain.compute_cams(model, v, x, method=method, targets='label',
                               labels=np.array(t), upsample=False)
    np.testing.assert_allclose(got['cam'], want, atol=2e-4, err_msg=method)
  # Eigen-CAM: the signed projection of pytorch-grad-cam's helper.
  acts = tm.features(xt).detach().numpy()
  want = np.maximum(
      svd_on_activations.get_2d_projection_with_sign_correction(acts), 0)
  got = explain.compute_cams(model, v, x, method='eigencam', targets='pred',
                             upsample=False, normalize=False)
  np.testing.assert_allclose(got['raw'], want, atol=1e-4, rtol=1e-3)


def test_normalized_maps_reach_one_exactly_at_any_scale():
  """Every non-constant map spans exactly [0, 1] whatever its raw scale
  (pytorch-grad-cam's + 1e-7 left the maximum short of 1 for raw ranges
  below a few units), so the thesis EHR does not depend on the scale of a
  network's activations; a constant map becomes zeros."""
  raw = np.random.default_rng(0).random((1, 7, 7)).astype(np.float32)
  mask = np.zeros((32, 32), bool)
  mask[4:14, 6:20] = True
  ehrs = []
  for scale in (1e-4, 0.5, 1.0, 30.0):
    cam = np.asarray(cam_lib.normalize_maps(
        cam_lib.upsample_maps(jnp.asarray(raw * scale), (32, 32))))
    assert cam.max() == 1.0 and cam.min() == 0.0
    ehrs.append(heatmap.ehr_auc(cam[0], mask))
  np.testing.assert_allclose(ehrs, ehrs[0], atol=1e-6)
  assert not np.asarray(cam_lib.normalize_maps(jnp.full((2, 5, 5), 3.))).any()
