"""Every registered model honours the `(logits, out)` contract.

Full-size networks are traced (`jax.eval_shape`: shapes only, no compile);
the test-sized ones ('_tiny', '_small') run for real on 64 px inputs.
Classifiers return `(B, num_classes)` logits, the pooled `out['pre_logits']`
and their Grad-CAM target `out['features']` (B, h, w, C), registered as a
'features' perturbation of the same shape; saliency models return
`out['saliency_logp']` (B, H, W), a log-distribution over the pixels.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax import models

NUM_CLASSES = 3
BATCH = 2
# Families without a class head; their logits are the saliency map.
SALIENCY_ONLY = ('unet',)
SALIENCY = SALIENCY_ONLY + ('cooperative', 'mtunet')
TEST_SIZED = ('_tiny', '_small')


def _family(name: str) -> str:
  return models.family(name).__name__.rsplit('.', 1)[-1]


def _build(name: str):
  fam = _family(name)
  num_classes = None if fam in SALIENCY_ONLY else NUM_CLASSES
  return fam, models.get_model(name, num_classes=num_classes, in_chans=1)


def _inputs(fam: str, size: int, rng: np.random.Generator):
  x = rng.normal(size=(BATCH, size, size, 1)).astype(np.float32)
  kw = {}
  if fam == 'gazegnn':
    kw['gaze'] = rng.uniform(size=(BATCH, size, size)).astype(np.float32)
  return x, kw


def _perturbation_shapes(variables) -> list[tuple[int, ...]]:
  leaves = jax.tree_util.tree_leaves_with_path(variables.get(
      'perturbations', {}))
  return [tuple(v.shape) for path, v in leaves
          if getattr(path[-1], 'key', None) == 'features']


def _check_contract(fam: str, size: int, variables, logits, out) -> None:
  assert isinstance(out, dict)
  if fam in SALIENCY_ONLY:
    assert logits.shape == (BATCH, size, size)
  else:
    assert logits.shape == (BATCH, NUM_CLASSES)
    features = out['features']
    assert features.ndim == 4 and features.shape[0] == BATCH
    assert all(d >= 1 for d in features.shape[1:])
    assert _perturbation_shapes(variables) == [tuple(features.shape)]
    assert out['pre_logits'].ndim == 2
    assert out['pre_logits'].shape[0] == BATCH
  if fam in SALIENCY:
    assert out['saliency_logp'].shape == (BATCH, size, size)


def test_every_family_is_covered():
  families = {_family(n) for n in models.names()}
  assert families == {'vgg', 'resnet', 'vit', 'densenet',
                      'inception_resnet_v2', 'unet', 'cooperative',
                      'mtunet', 'gazegnn'}
  with pytest.raises(ValueError, match="model.name.*resnet50"):
    models.family('resnet5O')


@pytest.mark.parametrize(
    'name', [n for n in models.names() if not n.endswith(TEST_SIZED)])
def test_full_size_models_trace(name):
  fam, model = _build(name)
  size = 224
  x, kw = _inputs(fam, size, np.random.default_rng(0))
  x = jax.ShapeDtypeStruct(x.shape, jnp.float32)
  kw = {k: jax.ShapeDtypeStruct(v.shape, jnp.float32) for k, v in kw.items()}

  def init_and_apply(x, kw):
    variables = model.init(jax.random.key(0), x, train=False, **kw)
    return variables, model.apply(variables, x, train=False, **kw)

  variables, (logits, out) = jax.eval_shape(init_and_apply, x, kw)
  _check_contract(fam, size, variables, logits, out)


@pytest.mark.parametrize(
    'name', [n for n in models.names() if n.endswith(TEST_SIZED)])
def test_test_sized_models_run(name, np_init):
  fam, model = _build(name)
  size = 64
  x, kw = _inputs(fam, size, np.random.default_rng(0))
  variables = np_init(model, x, train=False, **kw)
  logits, out = jax.jit(lambda v, x, kw: model.apply(v, x, **kw))(
      variables, x, kw)
  _check_contract(fam, size, variables, logits, out)
  assert np.isfinite(np.asarray(logits)).all()
  if fam not in SALIENCY_ONLY:
    assert np.isfinite(np.asarray(out['features'])).all()
  if fam in SALIENCY:
    np.testing.assert_allclose(
        np.exp(np.asarray(out['saliency_logp'], np.float64)).sum((1, 2)),
        1.0, rtol=1e-4)
