"""CPU forms of four primitives, same math; the public ops the models use.

XLA's CPU backend runs four common ops slowly; each has a form here that it
runs faster (measurements: `benchmarks/README.md`, "Speed levers"):

* **1x1 convolutions.** The weight gradient of a convolution is lowered as
  a convolution over the batch axis, for which XLA transposes the activation
  and the output gradient to batch-minor layouts: copies (fused with
  whatever produced the activation) that take a large share of a ResNet-50
  step. A 1x1 convolution *is* a matrix product over the channel axis, so
  `conv_general_dilated` computes it as one (`jnp.dot` on the (N*H*W, C)
  view): forward, input gradient and weight gradient are then plain GEMMs on
  the NHWC buffers, with no copies.
* **Max-pooling.** JAX differentiates `reduce_window` max into
  `select_and_scatter_add`, which XLA's CPU backend expands into a
  reduce-window over index tuples (five full-size buffers of iotas) and a
  scatter. `max_pool`'s custom VJP instead routes each output gradient to
  the first maximum of its window (the element `select_and_scatter` with
  `>=` and torch's `max_pool2d` pick), whose window offset the forward
  pass stores (one byte per output, like torch's indices): scatter-added
  for overlapping windows (ResNet/DenseNet's 3x3/2 stem pool), shifted
  adds on the pooled grid interleaved back to the input grid for windows
  that tile it (VGG's 2x2/2, where the scatter is slower). Its forward is
  the elementwise maximum of the window's strided slices: as a
  `reduce_window`, the YNNPACK reduction fusion of XLA's CPU backend takes
  it together with every convolution before it (VGG16's whole feature
  stack), and YNNPACK's convolutions are slower than Eigen's.
* **LayerNorm gradients.** Autodiff of a LayerNorm reduces `g * scale` and
  `g * scale * x_hat` over the feature axis; XLA's CPU backend feeds those
  reductions a materialised (B, N, D) broadcast of `scale`. `LayerNorm`'s
  custom VJP writes them as matrix-vector products with `scale`, so nothing
  is broadcast.
* **Exact GELU.** `gelu` writes it with `erf` (torch's formula) instead of
  jax's `erfc` form, which XLA's CPU backend computes with an exponential
  and selects.

All four are used only when JAX's default backend is the CPU; elsewhere
(cuDNN on GPU, TPU) they are exactly `lax.conv_general_dilated`,
`flax.linen.max_pool`, the LayerNorm formula and `flax.linen.gelu`, or, for
`LayerNorm`, `gelu` and `add_over_batch` with their defaults, the
memory-lean accelerator forms of `cxr_jax.models.accel_ops`. Results are the
same up to float rounding (tests compare against the lax/Flax forms, values
and gradients). `stored_gradient`, an identity whose gradient XLA computes
once (DenseNet's feature chunks), is also CPU-only and documented where it
is defined.
"""
from __future__ import annotations

from collections.abc import Sequence
import functools
import math
from typing import Any

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from cxr_jax.models import accel_ops

_NHWC = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))  # lhs, rhs, out specs


def on_cpu() -> bool:
  """Whether JAX's default backend is the CPU (the CPU forms apply)."""
  return jax.default_backend() == 'cpu'


def _is_nhwc_hwio(dimension_numbers: Any, ndim: int) -> bool:
  if ndim != 4 or dimension_numbers is None:
    return False
  if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
    return tuple(map(tuple, dimension_numbers)) == _NHWC
  return tuple(dimension_numbers) == ('NHWC', 'HWIO', 'NHWC')


def _no_padding(padding: Any) -> bool:
  """True if a 1x1 window gets no padding ('SAME' pads a 1x1 window by 0)."""
  if isinstance(padding, str):
    return padding.upper() in ('VALID', 'SAME')
  return all(tuple(p) == (0, 0) for p in padding)


def _ones(v: Sequence[int] | None) -> bool:
  return v is None or all(d == 1 for d in v)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated`, with 1x1 NHWC convolutions as one GEMM on
  the CPU (strided ones subsample first). Signature of the lax op, so that
  `nn.Conv(..., conv_general_dilated=conv_general_dilated)` takes it."""
  if (on_cpu() and rhs.shape[:2] == (1, 1)
      and _is_nhwc_hwio(dimension_numbers, lhs.ndim)
      and feature_group_count == 1 and batch_group_count == 1
      and _ones(lhs_dilation) and _ones(rhs_dilation) and _no_padding(padding)):
    sh, sw = window_strides
    x = lhs[:, ::sh, ::sw, :] if (sh, sw) != (1, 1) else lhs
    n, h, w, c = x.shape
    y = jnp.dot(x.reshape(n * h * w, c), rhs.reshape(c, rhs.shape[-1]),
                precision=precision,
                preferred_element_type=preferred_element_type)
    return y.reshape(n, h, w, rhs.shape[-1])
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type)


# nn.Conv with the GEMM form of 1x1 convolutions; same parameters and names.
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)


def max_pool(x: jax.Array, window_shape: Sequence[int],
             strides: Sequence[int] | None = None,
             padding: str | Sequence[tuple[int, int]] = 'VALID') -> jax.Array:
  """`flax.linen.max_pool` (NHWC, -inf padding) with a cheaper CPU gradient."""
  window = tuple(window_shape)
  strides = tuple(strides) if strides is not None else (1,) * len(window)
  if isinstance(padding, str):
    pads = ((0, 0), (0, 0)) if padding.upper() == 'VALID' else None
  else:
    pads = tuple(tuple(int(v) for v in p) for p in padding)
  if not on_cpu() or x.ndim != 4 or len(window) != 2 or pads is None:
    return nn.max_pool(x, window, strides=strides, padding=padding)
  return _max_pool2d(x, window, strides, pads)


def _window_slices(xp, window, strides, out_hw):
  """The (i, j) window element of every output, as strided slices of the
  padded input, in row-major window order."""
  (kh, kw), (sh, sw), (ho, wo) = window, strides, out_hw
  n, c = xp.shape[0], xp.shape[-1]
  for i in range(kh):
    for j in range(kw):
      yield i, j, lax.slice(xp, (0, i, j, 0), (n, i + sh * (ho - 1) + 1,
                                               j + sw * (wo - 1) + 1, c),
                            (1, sh, sw, 1))


def _pool_padded(x, window, strides, pads, with_index=False):
  """The max over each window (and, `with_index`, the row-major window
  offset of its first maximum, int8; int32 for windows over 127).

  The max is the elementwise maximum of the window's strided slices (one
  loop fusion, no `reduce_window`: see the module docstring)."""
  (kh, kw), (sh, sw), ((pt, pb), (pl, pr)) = window, strides, pads
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)),
               constant_values=-jnp.inf)
  out_hw = ((xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1)
  index_dtype = jnp.int8 if kh * kw <= 127 else jnp.int32
  y = k = None
  for i, j, xs in _window_slices(xp, window, strides, out_hw):
    if y is None:
      y = xs
      if with_index:
        k = jnp.zeros(xs.shape, index_dtype)
      continue
    if with_index:  # strictly greater: the first maximum keeps its offset
      k = jnp.where(xs > y, jnp.asarray(i * kw + j, index_dtype), k)
    y = jnp.maximum(y, xs)
  return (y, k) if with_index else y


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool2d(x, window, strides, pads):
  return _pool_padded(x, window, strides, pads)


def _max_pool2d_fwd(x, window, strides, pads):
  y, k = _pool_padded(x, window, strides, pads, with_index=True)
  return y, (k, x.shape)


def _max_pool2d_bwd(window, strides, pads, res, g):
  """Each output's gradient to the first maximum of its window, whose
  offset the forward pass stored (`k`, one byte per output)."""
  k, x_shape = res
  # Windows that tile the input, or an input too large for int32 flat
  # indices: the phase form.
  if tuple(window) == tuple(strides) or math.prod(x_shape) >= 2 ** 31 - 1:
    return (_route_by_phase(k, g, window, strides, pads, x_shape),)
  return (_route_by_scatter(k, g, window, strides, pads, x_shape),)


def _route_by_phase(k, g, window, strides, pads, x_shape):
  """Gather-free: window offset (i, j) of output (h, w) reads padded input
  row sh*h + i = sh*(h + i//sh) + i%sh, so the offsets of one residue class
  (i%sh, j%sw) land on one sub-grid of the padded input, shifted by
  (i//sh, j//sw) pooled cells. Each class is summed on the pooled grid, the
  classes are interleaved back, and the padding is cropped. Reads `g` once
  per window offset: used when the windows tile the input (VGG's 2x2/2),
  where that is once in all."""
  (kh, kw), (sh, sw), ((pt, pb), (pl, pr)) = window, strides, pads
  n, h, w, c = x_shape
  ho, wo = k.shape[1:3]
  hc, wc = ho + (kh - 1) // sh, wo + (kw - 1) // sw
  zero = jnp.zeros_like(g)
  plane = {}
  for i in range(kh):
    for j in range(kw):
      di, dj = i // sh, j // sw
      hit = k == jnp.asarray(i * kw + j, k.dtype)
      part = jnp.pad(jnp.where(hit, g, zero),
                     ((0, 0), (di, hc - ho - di), (dj, wc - wo - dj), (0, 0)))
      key = (i % sh, j % sw)
      plane[key] = plane[key] + part if key in plane else part
  empty = jnp.zeros((n, hc, wc, c), g.dtype)
  grid = jnp.stack([jnp.stack([plane.get((a, b), empty) for b in range(sw)],
                              axis=3) for a in range(sh)], axis=2)
  dxp = grid.reshape(n, hc * sh, wc * sw, c)  # padded-input coordinates
  dxp = jnp.pad(dxp, ((0, 0), (0, max(0, pt + h - hc * sh)),
                      (0, max(0, pl + w - wc * sw)), (0, 0)))
  return dxp[:, pt:pt + h, pl:pl + w, :]


def _route_by_scatter(k, g, window, strides, pads, x_shape):
  """Scatter-adds each output's gradient to its input element (overlapping
  windows may pick the same one), reading each element of `g` once. The
  phase form reads `g` once per window offset, and XLA fuses the whole
  chain that produced `g` (DenseNet's first-block gradient) into each of
  the nine reads of a 3x3/2 window, i.e. runs that chain nine times."""
  (_, kw), (sh, sw), ((pt, _), (pl, _)) = window, strides, pads
  n, h, w, c = x_shape
  ho, wo = k.shape[1:3]
  k = k.astype(jnp.int32)
  rows = (jnp.arange(ho) * sh)[None, :, None, None] + k // kw - pt
  cols = (jnp.arange(wo) * sw)[None, None, :, None] + k % kw - pl
  inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
  flat = ((jnp.arange(n)[:, None, None, None] * h + rows) * w + cols) * c
  flat = jnp.where(inside, flat + jnp.arange(c).reshape(1, 1, 1, c),
                   n * h * w * c)  # outside: dropped
  dx = jnp.zeros(n * h * w * c, g.dtype).at[flat.reshape(-1)].add(
      g.reshape(-1), mode='drop')
  return dx.reshape(x_shape)


_max_pool2d.defvjp(_max_pool2d_fwd, _max_pool2d_bwd)


class LayerNorm(nn.Module):
  """LayerNorm over the last axis, parameters as `nn.LayerNorm`'s (`scale`,
  `bias`, float32), statistics in float32 in two passes (torch's formula);
  output in `dtype` (default: the input's).

  The backward pass: on the CPU, a custom VJP whose residual is the
  normalised input (`_layer_norm`, see the module docstring). Elsewhere,
  with `lean` (default), `accel_ops.layer_norm_stats`, whose residuals are
  the input and the per-row statistics (no float32 (rows, D) round trip
  through memory); `lean=False`: autodiff's.
  """
  epsilon: float = 1e-6
  dtype: Any = None
  lean: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (d,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (d,), jnp.float32)
    dtype = jnp.dtype(self.dtype or x.dtype)
    if not on_cpu() and self.lean:
      return accel_ops.layer_norm_stats(x, scale, bias, self.epsilon, dtype)
    norm = _layer_norm if on_cpu() else _layer_norm_formula
    return norm(x.astype(jnp.float32), scale, bias, self.epsilon).astype(dtype)


def _normalise(x, epsilon):
  xc = x - jnp.mean(x, -1, keepdims=True)
  r = lax.rsqrt(jnp.mean(xc * xc, -1, keepdims=True) + epsilon)
  return xc * r, r


_bcast = accel_ops.bcast


def _layer_norm_formula(x, scale, bias, epsilon):
  return _normalise(x, epsilon)[0] * _bcast(scale, x) + _bcast(bias, x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm(x, scale, bias, epsilon):
  return _layer_norm_formula(x, scale, bias, epsilon)


def _layer_norm_fwd(x, scale, bias, epsilon):
  xh, r = _normalise(x, epsilon)
  return xh * _bcast(scale, x) + _bcast(bias, x), (xh, r, scale)


def _layer_norm_bwd(epsilon, res, g):
  del epsilon
  xh, r, scale = res
  d = xh.shape[-1]
  mean_gs = (g @ scale)[..., None] / d  # mean over features of g * scale
  mean_gsx = ((g * xh) @ scale)[..., None] / d  # ... of g * scale * xh
  dx = r * (g * _bcast(scale, g) - mean_gs - xh * mean_gsx)
  rows = tuple(range(g.ndim - 1))
  return dx, jnp.sum(g * xh, rows), jnp.sum(g, rows)


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


def gelu(x: jax.Array, approximate: bool = False, lean: bool = True
         ) -> jax.Array:
  """`flax.linen.gelu`; on the CPU the exact form is x/2 * (1 + erf(x/sqrt2))
  (torch's formula), not jax's x/2 * erfc(-x/sqrt2): XLA's CPU `erfc` runs an
  exponential and two selects per element where `erf` is one rational
  polynomial.

  Off the CPU, with `lean` (default), `accel_ops.gelu_recompute`, which
  keeps only the input and recomputes the derivative in the backward pass;
  `lean=False`: autodiff's.
  """
  if not on_cpu() and lean:
    return accel_ops.gelu_recompute(x, approximate)
  if approximate or not on_cpu():
    return nn.gelu(x, approximate=approximate)
  return x * (0.5 * (1 + lax.erf(x * jnp.asarray(0.5 ** 0.5, x.dtype))))


def stored_gradient(x: jax.Array) -> jax.Array:
  """Identity whose gradient XLA's CPU backend computes once and stores.

  A gradient built by a long elementwise chain (a DenseNet chunk's: slices
  of every later layer's input gradient, summed) is fused by XLA into each
  of its consumers, i.e. recomputed per consumer; `lax.optimization_barrier`
  does not stop that (XLA's CPU pipeline removes barriers before fusion).
  The backward pass here multiplies the gradient by an identity matrix: a
  matrix product's operand and result are buffers, so the chain runs once
  and every consumer reads the result. Exact for finite values (x * 1 plus
  zeros). Elsewhere than on the CPU, the plain identity.
  """
  return _stored_gradient(x) if on_cpu() else x


@jax.custom_vjp
def _stored_gradient(x):
  return x


def _stored_gradient_fwd(x):
  return x, None


def _stored_gradient_bwd(_, g):
  c = g.shape[-1]
  eye = jnp.eye(c, dtype=g.dtype)
  return (jnp.dot(g.reshape(-1, c), eye).reshape(g.shape),)


_stored_gradient.defvjp(_stored_gradient_fwd, _stored_gradient_bwd)


def add_over_batch(x: jax.Array, v: jax.Array, grad: str = 'auto'
                   ) -> jax.Array:
  """`x + v` for a `v` of shape (1, *x.shape[1:]) (a ViT's position
  embedding), in x's dtype; `v`'s gradient comes back in v's dtype.

  `grad`: 'auto' (off the CPU `accel_ops.add_over_batch_matmul`, whose
  gradient for `v` is a matrix product that keeps XLA's GPU layouts
  row-major; on the CPU the plain sum), 'matmul' (always the product) or
  'sum' (always autodiff's batch sum; both for A/B comparisons,
  `benchmarks/xla_ab.py`).
  """
  if grad not in ('auto', 'matmul', 'sum'):
    raise ValueError(f"add_over_batch grad {grad!r}: expected 'auto', "
                     "'matmul' or 'sum'")
  if grad == 'sum' or (grad == 'auto' and on_cpu()):
    return x + v.astype(x.dtype)
  return accel_ops.add_over_batch_matmul(x, v)
