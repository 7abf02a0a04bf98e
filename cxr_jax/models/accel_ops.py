"""Memory-lean backward passes for accelerators (GPU, TPU), same math.

Autodiff of three ViT ops leaves XLA's GPU backend a layout or a residual
that costs memory traffic each step; the custom VJPs here give it a cheaper
one. `cxr_jax.models.ops` picks these forms off the CPU (`ops.LayerNorm`,
`ops.gelu`, `ops.add_over_batch`); each is tested against autodiff of the
plain formula, values and gradients.

* `layer_norm_stats`: LayerNorm whose residuals are the input and the per-row
  mean and 1/std, kept behind an optimisation barrier. From autodiff's form
  XLA recomputes the statistics in the backward pass, which puts row
  reductions in front of the scale gradient's column reduction, so a float32
  (rows, D) product is written to memory and read back for it; from stored
  statistics that product fuses into the column reduction.
* `gelu_recompute`: GELU whose only residual is the input; the derivative is
  recomputed in the backward pass. Autodiff's form makes XLA write the
  `tanh` (or `erf`) intermediate as a second full-size output of the forward
  fusion and read it back; the recomputation is elementwise work in a fusion
  that reads the same input anyway.
* `add_over_batch_matmul`: `x + v` for a `v` broadcast over the batch (a
  ViT's position embedding) whose gradient is a (1, B) @ (B, rest) product.
  Autodiff's batch sum is a reduction over the major axis, which XLA's GPU
  layout assignment turns into a row reduction by making the batch the minor
  axis of that gradient and of everything sharing its layout (a ViT's whole
  residual stream), so every LayerNorm then writes a transposed copy for the
  next GEMM. The product leaves the layouts row-major.

Measurements: `benchmarks/README.md`.
"""
from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp


def bcast(v: jax.Array, x: jax.Array) -> jax.Array:
  """(D,) -> (1, ..., 1, D), to broadcast against `x` explicitly."""
  return v.reshape((1,) * (x.ndim - 1) + v.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def layer_norm_stats(x: jax.Array, scale: jax.Array, bias: jax.Array,
                     epsilon: float, dtype: jnp.dtype) -> jax.Array:
  """LayerNorm over the last axis (float32 statistics, output in `dtype`)
  whose backward pass reads stored statistics, not recomputed ones."""
  return _layer_norm_stats_fwd(x, scale, bias, epsilon, dtype)[0]


def _layer_norm_stats_fwd(x, scale, bias, epsilon, dtype):
  xf = x.astype(jnp.float32)
  mean = jnp.mean(xf, -1, keepdims=True)
  xc = xf - mean
  r = lax.rsqrt(jnp.mean(xc * xc, -1, keepdims=True) + epsilon)
  y = (xc * r * bcast(scale, x) + bcast(bias, x)).astype(dtype)
  # Without the barrier XLA fuses the statistics' reductions into the
  # backward pass's consumers again, i.e. recomputes them.
  mean, r = lax.optimization_barrier((mean, r))
  return y, (x, mean, r, scale)


def _layer_norm_stats_bwd(epsilon, dtype, res, g):
  del epsilon, dtype
  x, mean, r, scale = res
  xh = (x.astype(jnp.float32) - mean) * r
  g = g.astype(jnp.float32)
  gs = g * bcast(scale, g)
  dx = r * (gs - jnp.mean(gs, -1, keepdims=True)
            - xh * jnp.mean(gs * xh, -1, keepdims=True))
  rows = tuple(range(g.ndim - 1))
  return dx.astype(x.dtype), jnp.sum(g * xh, rows), jnp.sum(g, rows)


layer_norm_stats.defvjp(_layer_norm_stats_fwd, _layer_norm_stats_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def gelu_recompute(x: jax.Array, approximate: bool) -> jax.Array:
  """`flax.linen.gelu` whose backward pass recomputes the derivative from
  the input (float32), so the forward pass stores nothing else."""
  return nn.gelu(x, approximate=approximate)


def _gelu_recompute_fwd(x, approximate):
  return nn.gelu(x, approximate=approximate), x


def _gelu_recompute_bwd(approximate, x, g):
  xf = x.astype(jnp.float32)
  if approximate:
    c = math.sqrt(2 / math.pi)
    t = jnp.tanh(c * (xf + 0.044715 * xf ** 3))
    d = 0.5 * (1 + t) + (0.5 * c) * xf * (1 - t * t) * (
        1 + (3 * 0.044715) * xf * xf)
  else:
    d = (0.5 * (1 + lax.erf(xf * math.sqrt(0.5)))
         + xf * jnp.exp(-0.5 * xf * xf) * (1 / math.sqrt(2 * math.pi)))
  return ((g.astype(jnp.float32) * d).astype(x.dtype),)


gelu_recompute.defvjp(_gelu_recompute_fwd, _gelu_recompute_bwd)


@jax.custom_vjp
def add_over_batch_matmul(x: jax.Array, v: jax.Array) -> jax.Array:
  """`x + v` (v of shape (1, *x.shape[1:]), cast to x's dtype); v's
  gradient is a (1, B) @ (B, rest) product with float32 accumulation,
  returned in v's dtype."""
  return x + v.astype(x.dtype)


def _add_over_batch_fwd(x, v):
  return add_over_batch_matmul(x, v), jnp.zeros((0,), v.dtype)  # v's dtype


def _add_over_batch_bwd(res, g):
  b = g.shape[0]
  dv = lax.dot_general(jnp.ones((1, b), g.dtype), g.reshape(b, -1),
                       (((1,), (0,)), ((), ())),
                       preferred_element_type=jnp.float32)
  return g, dv.reshape((1,) + g.shape[1:]).astype(res.dtype)


add_over_batch_matmul.defvjp(_add_over_batch_fwd, _add_over_batch_bwd)
