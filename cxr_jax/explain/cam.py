"""Class activation maps (Grad-CAM and relatives), batched and jitted.

Contract with the models (see DESIGN.md): `model.apply(variables, x_BHWC,
train=False, **model_kwargs)` returns `(logits_BK, out)` and the target
activation `A` (B, h, w, C) passes through `x = self.perturb('features', x)`
and is stored in `out` under the same name. The gradient of the selected
logits w.r.t. the zero-valued perturbation equals the gradient w.r.t. `A`, so
one `jax.vjp` over the perturbation gives activations and gradients from a
single forward pass, never differentiating the parameters. Variables are
applied with `train=False` and no mutable collections: explaining never
changes `params` or `batch_stats`.

The methods (`METHODS`) and their formulas are in `cam_methods.py`.

Post-processing order (the same for every method): `raw` = the ReLU'd map on
the feature grid (B, h, w); then bilinear `jax.image.resize` (half-pixel
centres, as cv2.resize) to the input size; then per-image scaling
(x - min) / max(x - min) (`normalize_maps`). pytorch-grad-cam scales first,
with 1e-7 added to the denominator, and resizes second; both orders give the
same map up to interpolation at the extremes; ours makes each upsampled map
span exactly [0, 1] (constant maps become all zeros).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import cxr_jax.explain.cam_methods as methods

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class CamMethod:
  """A CAM method: `fn(acts, grads) -> map` or, for `scorecam`, None."""
  fn: Callable[..., Array] | None
  uses_grads: bool
  class_specific: bool = True


METHODS: dict[str, CamMethod] = {
    'gradcam': CamMethod(methods.gradcam, True),
    'hirescam': CamMethod(methods.hirescam, True),
    'gradcam++': CamMethod(methods.gradcam_pp, True),
    'xgradcam': CamMethod(methods.xgradcam, True),
    'layercam': CamMethod(methods.layercam, True),
    'eigencam': CamMethod(methods.eigencam, False, class_specific=False),
    'scorecam': CamMethod(None, False),
}


def get_method(name: str) -> CamMethod:
  """Looks up a CAM method by name, with a clear error for unknown names."""
  if name not in METHODS:
    raise ValueError(f'Unknown CAM method {name!r}. Valid choices: '
                     f"{', '.join(sorted(METHODS))}.")
  return METHODS[name]


# ------------------------------------------------------------ primitives --
def normalize_maps(cam_BHW: Array) -> Array:
  """Per-map (x - min) / max(x - min) over the last two axes; 0 for a
  constant map.

  pytorch-grad-cam adds 1e-7 to the denominator. We divide exactly, so every
  non-constant map's maximum is exactly 1. With the 1e-7 the maximum falls
  short of 1 whenever the raw map's range is small (below a few units), so
  the thesis EHR's last threshold (t = 1) would depend on the raw scale of a
  network's activations and gradients rather than on where its heat lies.
  """
  lo = jnp.min(cam_BHW, axis=(-2, -1), keepdims=True)
  x = cam_BHW - lo
  hi = jnp.max(x, axis=(-2, -1), keepdims=True)
  return jnp.where(hi > 0, x / jnp.where(hi > 0, hi, 1), 0)


def upsample_maps(cam_Bhw: Array, hw: tuple[int, int]) -> Array:
  """Bilinear resize (half-pixel centres) of the last two axes to `hw`."""
  shape = cam_Bhw.shape[:-2] + tuple(hw)
  return jax.image.resize(cam_Bhw, shape, method='bilinear')


def _align_corners_matrix(n_out: int, n_in: int) -> np.ndarray:
  """(n_out, n_in) bilinear interpolation with align_corners=True."""
  if n_in == 1:
    return np.ones((n_out, 1), np.float32)
  pos = np.arange(n_out) * (n_in - 1) / max(n_out - 1, 1)
  lo = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
  frac = pos - lo
  m = np.zeros((n_out, n_in), np.float32)
  m[np.arange(n_out), lo] = 1 - frac
  m[np.arange(n_out), lo + 1] += frac
  return m


# ------------------------------------------------------- model plumbing --
class _ById:
  """Hashable-by-identity wrapper for static jit args that do not hash."""

  def __init__(self, value: Any):
    self.value = value

  def __hash__(self) -> int:
    return id(self.value)

  def __eq__(self, other: Any) -> bool:
    return isinstance(other, _ById) and other.value is self.value


def hashable_model(model: nn.Module) -> Any:
  try:
    hash(model)
    return model
  except TypeError:
    return _ById(model)


def unwrap_model(model: Any) -> nn.Module:
  return model.value if isinstance(model, _ById) else model


def _paths(tree: Mapping[str, Any], prefix: tuple = ()) -> list[tuple]:
  out = []
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out += _paths(v, prefix + (k,))
    else:
      out.append(prefix + (k,))
  return out


def _get(tree: Mapping[str, Any], path: tuple) -> Any:
  for k in path:
    tree = tree[k]
  return tree


def _set(tree: Mapping[str, Any], path: tuple, value: Any) -> dict:
  tree = dict(tree)
  if len(path) == 1:
    tree[path[0]] = value
  else:
    tree[path[0]] = _set(tree[path[0]], path[1:], value)
  return tree


def resolve_layer(available: list[tuple], target_layer: str | tuple) -> tuple:
  """Finds the perturbation path named by `target_layer`.

  `target_layer` is a path tuple (`('densenet', 'features')`), a '/'-joined
  string, or a suffix of exactly one registered path (`'features'` finds
  `('densenet', 'features')` when it is the only one).
  """
  want = (tuple(target_layer.split('/')) if isinstance(target_layer, str)
          else tuple(target_layer))
  if want in available:
    return want
  hits = [p for p in available if p[-len(want):] == want]
  if len(hits) == 1:
    return hits[0]
  raise ValueError(
      f'Target layer {target_layer!r} matches {len(hits)} perturbation paths; '
      f"registered with self.perturb(...): {['/'.join(p) for p in available]}.")


def _find_activation(out: Any, path: tuple, shape: tuple) -> Array:
  """Reads the activation that passed through `perturb` from `out`."""
  candidates = []
  try:
    candidates.append(_get(out, path))
  except (KeyError, TypeError):
    pass
  if isinstance(out, Mapping):
    candidates += [out.get('/'.join(path)), out.get(path[-1])]
  for c in candidates:
    if c is not None and hasattr(c, 'shape') and tuple(c.shape) == shape:
      return c
  raise ValueError(
      f"The model's `out` dict has no activation {'/'.join(path)!r} of shape "
      f'{shape}; store the perturbed array in `out` under the same path or '
      'its last name.')


def _split_kwargs(model_kwargs: Mapping[str, Any] | None):
  """Array-valued kwargs are traced; everything else is static."""
  arrays, static = {}, []
  for k, v in (model_kwargs or {}).items():
    if isinstance(v, (np.ndarray, jax.Array)):
      arrays[k] = v
    else:
      static.append((k, v))
  return arrays, tuple(sorted(static))


def _forward_with_grads(model, variables, images_BHWC, kwargs, path):
  """One forward; returns logits, activation and a vjp over the logits."""
  base = {k: v for k, v in variables.items() if k != 'perturbations'}
  pert_shapes = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False, mutable=['perturbations'],
                               **kwargs)[1], base, images_BHWC)
  if 'perturbations' not in pert_shapes:
    raise ValueError('The model registers no self.perturb(...) activation.')
  pert = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                      pert_shapes['perturbations'])
  path = resolve_layer(_paths(pert), path)

  def f(p_leaf):
    v = {**base, 'perturbations': _set(pert, path, p_leaf)}
    logits, out = model.apply(v, images_BHWC, train=False, **kwargs)
    act = _find_activation(out, path, p_leaf.shape)
    return logits.astype(jnp.float32), act

  logits_BK, vjp_fn, acts_BhwC = jax.vjp(f, _get(pert, path), has_aux=True)
  return logits_BK, acts_BhwC.astype(jnp.float32), vjp_fn


def _scorecam_logits(model, variables, images_BHWC, kwargs, acts_BhwC,
                     chunk_size):
  """Logits (B, C, K) of the input masked by each activation channel."""
  b, h, w, c = acts_BhwC.shape
  H, W = images_BHWC.shape[1:3]
  rh = jnp.asarray(_align_corners_matrix(H, h))
  rw = jnp.asarray(_align_corners_matrix(W, w))
  base = {k: v for k, v in variables.items() if k != 'perturbations'}
  n = b * c
  n_chunks = -(-n // chunk_size)
  per_example = {k: v for k, v in kwargs.items()
                 if hasattr(v, 'shape') and v.ndim and v.shape[0] == b}

  def chunk(i):
    idx = jnp.minimum(i * chunk_size + jnp.arange(chunk_size), n - 1)
    bi, ci = idx // c, idx % c
    a_Nhw = acts_BhwC[bi, :, :, ci]
    up_NHW = jnp.einsum('Hh,nhw,Ww->nHW', rh, a_Nhw, rw)
    lo = up_NHW.min((1, 2), keepdims=True)
    hi = up_NHW.max((1, 2), keepdims=True)
    up_NHW = (up_NHW - lo) / (hi - lo + 1e-8)
    x = images_BHWC[bi] * up_NHW[..., None]
    kw = {**kwargs, **{k: v[bi] for k, v in per_example.items()}}
    return model.apply(base, x, train=False, **kw)[0].astype(jnp.float32)

  logits = jax.lax.map(chunk, jnp.arange(n_chunks))
  logits = logits.reshape(n_chunks * chunk_size, -1)[:n]
  return logits.reshape(b, c, -1)


# Three jitted stages: the model's forward (+ backward), compiled once per
# model, layer, shapes and targets mode and shared by every gradient method
# (gradient-free methods skip the backward); Score-CAM's masked forwards; and
# a small method-specific post-processing.
@functools.partial(jax.jit, static_argnames=('model', 'path', 'all_classes',
                                             'need_grads', 'static_kwargs'))
def _acts_and_grads(model, variables, images_BHWC, targets_B, use_pred,
                    array_kwargs, *, path, all_classes, need_grads,
                    static_kwargs):
  """Activations (B,h,w,C), grads ((K,)B,h,w,C) or None, logits, targets."""
  kwargs = {**array_kwargs, **dict(static_kwargs)}
  logits_BK, acts_BhwC, vjp_fn = _forward_with_grads(
      unwrap_model(model), variables, images_BHWC, kwargs, path)
  b, k = logits_BK.shape
  targets_B = jnp.where(use_pred, jnp.argmax(logits_BK, axis=-1), targets_B)
  grad = lambda onehot_BK: vjp_fn(onehot_BK)[0].astype(jnp.float32)
  if not need_grads:  # vjp_fn is never called: no backward pass is traced.
    grads = None
  elif all_classes:
    onehots_KBK = jnp.broadcast_to(jnp.eye(k)[:, None, :], (k, b, k))
    grads = jax.vmap(grad)(onehots_KBK.astype(logits_BK.dtype))
  else:
    grads = grad(jax.nn.one_hot(targets_B, k, dtype=logits_BK.dtype))
  return acts_BhwC, grads, logits_BK, targets_B.astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('model', 'chunk_size',
                                             'static_kwargs'))
def _scorecam_scores(model, variables, images_BHWC, acts_BhwC, array_kwargs,
                     *, chunk_size, static_kwargs):
  kwargs = {**array_kwargs, **dict(static_kwargs)}
  return _scorecam_logits(unwrap_model(model), variables, images_BHWC, kwargs,
                          acts_BhwC, chunk_size)


@functools.partial(jax.jit, static_argnames=('method', 'all_classes', 'hw',
                                             'upsample', 'normalize'))
def _finish(acts_BhwC, grads, scores_BCK, targets_B, *, method, all_classes,
            hw, upsample, normalize):
  """Method formula, ReLU, upsampling and scaling."""
  spec = METHODS[method]
  if spec.uses_grads:
    if all_classes:
      raw = jnp.moveaxis(jax.vmap(lambda g: spec.fn(acts_BhwC, g))(grads), 0, 1)
    else:
      raw = spec.fn(acts_BhwC, grads)
  elif method == 'scorecam':
    raw = methods.scorecam(acts_BhwC, scores_BCK, targets_B,
                           all_classes=all_classes)
  else:
    raw = spec.fn(acts_BhwC, None)
    if all_classes:
      k = scores_BCK.shape[-1]
      raw = jnp.broadcast_to(raw[:, None], (raw.shape[0], k) + raw.shape[1:])
  raw = jax.nn.relu(raw)
  cam = upsample_maps(raw, hw) if upsample else raw
  if normalize:
    cam = normalize_maps(cam)
  return cam, raw


def _resolve_targets(targets: str | Any, labels: Any, b: int
                     ) -> tuple[Array, bool]:
  """The (B,) int32 classes to explain and whether the model's prediction
  replaces them (targets='pred'); zeros for 'all' (every class is taken)."""
  if not isinstance(targets, str):
    return jnp.asarray(targets, jnp.int32).reshape(b), False
  if targets == 'label':
    if labels is None:
      raise ValueError("targets='label' needs `labels`.")
    return jnp.asarray(labels, jnp.int32).reshape(b), False
  if targets in ('pred', 'all'):
    return jnp.zeros((b,), jnp.int32), targets == 'pred'
  raise ValueError(f"targets must be 'label', 'pred', 'all' or an int "
                   f'array (B,), got {targets!r}.')


def compute_cams(model: nn.Module, variables: Mapping[str, Any],
                 images_BHWC: Any, *, method: str = 'gradcam',
                 target_layer: str | tuple = 'features',
                 targets: str | Any = 'label', labels: Any = None,
                 upsample: bool = True, normalize: bool = True,
                 model_kwargs: Mapping[str, Any] | None = None,
                 chunk_size: int = 32) -> dict[str, jax.Array]:
  """Class activation maps for a batch.

  Args:
    model: flax module; `apply(v, x, train=False, **model_kwargs)` returns
      `(logits, out)` and registers the activation with `self.perturb`.
    variables: `{'params': ..., 'batch_stats': ...}`; never modified.
    images_BHWC: input batch.
    method: a key of `METHODS` ('gradcam', 'hirescam', 'gradcam++',
      'xgradcam', 'layercam', 'scorecam', 'eigencam').
    target_layer: perturbation name or path, e.g. ('densenet', 'features').
    targets: 'label' (use `labels`), 'pred' (argmax of the logits), 'all'
      (every class: maps (B, K, ...)) or an int array (B,) of classes.
    labels: (B,) int, required for targets='label'.
    upsample: resize to the input's (H, W) (bilinear, half-pixel centres).
    normalize: per-map (x - min) / max(x - min) after upsampling.
    model_kwargs: extra inputs for `apply` (e.g. `gaze=`); arrays are traced
      (for Score-CAM an array with leading dim B is taken per example),
      other values are static (hashable).
    chunk_size: Score-CAM masked forwards per `lax.map` step (bounds memory).

  Returns:
    dict with 'cam' (B, H, W) float32 in [0, 1] (or (B, K, H, W) for 'all'),
    'raw' (B, h, w) (or (B, K, h, w)) = ReLU'd map before upsampling and
    scaling, 'targets' (B,) int32 (or (B, K)) and 'logits' (B, K).
  """
  spec = get_method(method)
  images_BHWC = jnp.asarray(images_BHWC)
  t, use_pred = _resolve_targets(targets, labels, images_BHWC.shape[0])
  all_classes = isinstance(targets, str) and targets == 'all'
  path = (tuple(target_layer.split('/')) if isinstance(target_layer, str)
          else tuple(target_layer))
  array_kwargs, static_kwargs = _split_kwargs(model_kwargs)
  model = hashable_model(model)
  acts, grads, logits, t = _acts_and_grads(
      model, variables, images_BHWC, t, jnp.asarray(use_pred), array_kwargs,
      path=path, all_classes=all_classes and spec.uses_grads,
      need_grads=spec.uses_grads, static_kwargs=static_kwargs)
  scores = logits[:, None, :]
  if method == 'scorecam':
    scores = _scorecam_scores(model, variables, images_BHWC, acts,
                              array_kwargs, chunk_size=chunk_size,
                              static_kwargs=static_kwargs)
  cam, raw = _finish(acts, grads, scores, t, method=method,
                     all_classes=all_classes, hw=tuple(images_BHWC.shape[1:3]),
                     upsample=upsample, normalize=normalize)
  if all_classes:
    t = jnp.broadcast_to(jnp.arange(logits.shape[-1], dtype=jnp.int32),
                         logits.shape)
  return dict(cam=cam, raw=raw, targets=t, logits=logits)
