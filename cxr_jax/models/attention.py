"""Multi-head self-attention for the ViT family, and its cores.

* `Attention`: timm's parameterisation (separate `query`/`key`/`value`
  kernels), run as one fused q/k/v GEMM, then one of two cores:
* `fused_attention`: `jax.nn.dot_product_attention` (cuDNN's fused kernel on
  GPUs in bf16/fp16), the sequence padded and masked to the length cuDNN
  takes;
* `attend` / `attention_probs`: the attention written out in a heads-major
  layout, the fastest form on XLA's CPU backend, where it is normalised
  after the `P V` product (a custom VJP; the plain form elsewhere).

`resolve_attn_implementation` and `required_seq_multiple` are the one place
that decides which core runs and how long its sequence must be; the ViT
(`vit.py`) asks them before padding its token sequence once.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxr_jax.models import layers
from cxr_jax.models import ops

Dtype = Any


def fused_attention(q_BNHK: jax.Array, k_BNHK: jax.Array, v_BNHK: jax.Array,
                    *, scale: float, implementation: str | None,
                    pad_to: int = 1, length: int | None = None) -> jax.Array:
  """`jax.nn.dot_product_attention` with the sequence padded to `pad_to`.

  cuDNN's fused attention rejects odd sequence lengths when training (a
  ViT-B/16 at 224 px has 197 tokens), so for it the tokens are zero-padded
  to a multiple of `pad_to` and the padding is masked out as keys
  (`key_value_seq_lengths`) and sliced off as queries: the result and its
  gradients are those of the unpadded attention. `length`: the inputs are
  already padded and only their first `length` tokens are real (masked
  likewise; the output keeps every row, those past `length` are padding).
  """
  b, n = q_BNHK.shape[:2]
  pad = -n % pad_to
  if not pad and (length is None or length == n):
    return jax.nn.dot_product_attention(q_BNHK, k_BNHK, v_BNHK, scale=scale,
                                        implementation=implementation)
  widths = ((0, 0), (0, pad), (0, 0), (0, 0))
  if pad:
    q_BNHK, k_BNHK, v_BNHK = (jnp.pad(t, widths)
                              for t in (q_BNHK, k_BNHK, v_BNHK))
  lengths = jnp.full((b,), n if length is None else length, jnp.int32)
  y_BNHK = jax.nn.dot_product_attention(
      q_BNHK, k_BNHK, v_BNHK, scale=scale, query_seq_lengths=lengths,
      key_value_seq_lengths=lengths, implementation=implementation)
  return y_BNHK[:, :n]


def required_seq_multiple(implementation: str | None) -> int:
  """Token count a fused attention's sequence must be a multiple of when
  training: 8 for cuDNN (it rejects odd lengths), else 1."""
  return 8 if implementation == 'cudnn' else 1


def resolve_attn_implementation(implementation: str | None, dtype: Dtype
                                ) -> str | None:
  """None, 'xla' or 'cudnn' for an `attn_implementation` field ('auto' =
  'cudnn' on a GPU with a bf16/fp16 compute dtype, else None)."""
  if implementation not in (None, 'auto', 'xla', 'cudnn'):
    raise ValueError(
        f'attn_implementation {implementation!r}: expected None, '
        "'auto', 'xla' or 'cudnn'")
  if implementation != 'auto':
    return implementation
  if (jax.default_backend() == 'gpu' and
      jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)):
    return 'cudnn'
  return None


class _Params(nn.Module):
  """A `kernel` and a zero-initialised `bias` under this module's name,
  returned instead of applied (see `Attention`)."""

  @nn.compact
  def __call__(self, kernel_init, kernel_shape, bias_shape):
    return (self.param('kernel', kernel_init, kernel_shape, jnp.float32),
            self.param('bias', nn.initializers.zeros, bias_shape,
                       jnp.float32))


class Attention(nn.Module):
  """Multi-head self-attention with timm's parameterisation, split q/k/v.

  `query`, `key` and `value` hold an `nn.DenseGeneral((heads, head_dim))`'s
  kernel (D, heads, head_dim) and bias (heads, head_dim), with its names and
  initialisation (lecun-normal on the flattened (D, heads * head_dim) kernel,
  zero bias), so checkpoints, `convert_torch` and the Megatron sharding rules
  (`cxr_jax/runtime/sharding.py`) see the layout they always did; the three
  projections run as one (D, 3 * D) matmul (one larger GEMM and no layout
  copies of three small kernels).

  Returns the output and, with `return_weights` (rollout), the attention
  probabilities (B, heads, N, N), else None. `implementation` ('xla',
  'cudnn') routes the attention through `jax.nn.dot_product_attention` (e.g.
  cuDNN's fused kernel on GPUs) when no probabilities are needed; None
  writes the softmax out in a heads-major layout, the fastest on CPU; 'auto'
  (the default) is 'cudnn' on a GPU with a bf16/fp16 compute dtype (cuDNN's
  fused attention takes no float32), else None.
  """
  heads: int
  attn_dropout_rate: float = 0.
  dropout_rate: float = 0.
  dtype: Dtype = jnp.float32
  return_weights: bool = False
  implementation: str | None = 'auto'

  def resolved_implementation(self) -> str | None:
    return resolve_attn_implementation(self.implementation, self.dtype)

  def need_weights(self, train: bool) -> bool:
    """Whether the probabilities are built (rollout, attention dropout)."""
    return bool(self.return_weights or (train and self.attn_dropout_rate))

  def fused(self, train: bool, queries: int | None = None) -> bool:
    """Whether the attention goes through `fused_attention`."""
    return (self.resolved_implementation() is not None and
            not self.need_weights(train) and queries is None)

  @nn.compact
  def __call__(self, x_BND: jax.Array, *, train: bool,
               queries: int | None = None, length: int | None = None
               ) -> tuple[jax.Array, jax.Array | None]:
    """`queries`: attend from the first `queries` tokens only (all tokens
    are keys and values); the output then has `queries` rows. `length`
    (fused path only): the first `length` tokens are real, the rest is
    padding, masked as keys."""
    d = x_BND.shape[-1]
    w_D3HK, b_3HK = self._qkv_params(d)
    scale = (d // self.heads) ** -0.5
    implementation = self.resolved_implementation()
    fused = self.fused(train, queries)
    if length is not None and not fused:
      raise ValueError('Attention(length=...) needs the fused path')
    if fused:
      q_BNHK, k_BNHK, v_BNHK = (
          t[:, :, 0] for t in jnp.split(_project(x_BND, w_D3HK, b_3HK), 3, 2))
      y_BNHK = fused_attention(
          q_BNHK, k_BNHK, v_BNHK, scale=scale,
          implementation=implementation,
          pad_to=required_seq_multiple(implementation), length=length)
      attn_BHNN = None
    else:
      y_BNHK, attn_BHNN = self._heads_major_attention(
          x_BND, w_D3HK, b_3HK, scale, train=train, queries=queries)
    y_BND = y_BNHK.reshape(y_BNHK.shape[:2] + (d,))
    y_BND = nn.Dense(d, dtype=self.dtype, name='proj')(
        layers.rows(y_BND)).reshape(y_BND.shape)
    y_BND = nn.Dropout(self.dropout_rate)(y_BND, deterministic=not train)
    return y_BND, attn_BHNN

  def _qkv_params(self, d: int) -> tuple[jax.Array, jax.Array]:
    """The `query`/`key`/`value` kernels stacked (D, 3, heads, head_dim) and
    biases (3, heads, head_dim), in the compute dtype."""
    head_dim = d // self.heads
    flat_init = nn.initializers.lecun_normal()

    def kernel_init(rng, shape, dtype=jnp.float32):
      return flat_init(rng, (d, d), dtype).reshape(shape)

    ws, bs = zip(*(_Params(name=n)(kernel_init, (d, self.heads, head_dim),
                                   (self.heads, head_dim))
                   for n in ('query', 'key', 'value')))
    return (jnp.stack(ws, 1).astype(self.dtype),
            jnp.stack(bs, 0).astype(self.dtype))

  def _heads_major_attention(self, x_BND, w_D3HK, b_3HK, scale, *, train,
                             queries):
    """The unfused core: output (B, N, heads, head_dim) and, with
    `return_weights`, the probabilities (B, heads, N, N), else None.

    Heads-major (B, heads, N, head_dim): both attention matmuls are then
    plain batched GEMMs; in (B, N, heads, head_dim), the layout
    `dot_product_attention` takes, XLA's CPU batched dots run slower. The
    projections go there in one transpose each and are split (`split`'s
    gradient is one concatenation; indexing's is a zero-padded copy per
    slice, summed)."""
    if queries is None:
      q_BHNK, k_BHNK, v_BHNK = _heads_major(x_BND, w_D3HK, b_3HK)
    else:
      q_BHNK, = _heads_major(x_BND[:, :queries], w_D3HK[:, :1], b_3HK[:1])
      k_BHNK, v_BHNK = _heads_major(x_BND, w_D3HK[:, 1:], b_3HK[1:])
    q_BHNK = q_BHNK * jnp.asarray(scale, q_BHNK.dtype)
    attn_BHNN = None
    if self.need_weights(train):
      attn_BHNN = attention_probs(q_BHNK, k_BHNK).astype(self.dtype)
      probs = nn.Dropout(self.attn_dropout_rate)(attn_BHNN,
                                                 deterministic=not train)
      y_BHNK = jnp.einsum('bhqn,bhnk->bhqk', probs, v_BHNK)
    else:  # no probabilities to return: normalised after P V on CPU
      y_BHNK = attend(q_BHNK, k_BHNK, v_BHNK)
    return (y_BHNK.transpose(0, 2, 1, 3),
            attn_BHNN if self.return_weights else None)


def _project(x_BND: jax.Array, w_DTHK: jax.Array, b_THK: jax.Array
             ) -> jax.Array:
  """x @ W + b for T stacked projections, one GEMM over all tokens:
  (B, N, D) -> (B, N, T, heads, head_dim)."""
  d = w_DTHK.shape[0]
  y = layers.rows(x_BND) @ w_DTHK.reshape(d, -1) + b_THK.reshape(1, -1)
  return y.reshape(x_BND.shape[:2] + b_THK.shape)


def _heads_major(x_BND: jax.Array, w_DTHK: jax.Array, b_THK: jax.Array
                 ) -> list[jax.Array]:
  """The T projections of `_project`, each (B, heads, N, head_dim)."""
  y_TBHNK = _project(x_BND, w_DTHK, b_THK).transpose(2, 0, 3, 1, 4)
  return [t[0] for t in jnp.split(y_TBHNK, y_TBHNK.shape[0])]


def attend(q_BHQK: jax.Array, k_BHNK: jax.Array, v_BHNK: jax.Array
           ) -> jax.Array:
  """softmax(q k^T) v over the last two axes (q already scaled), float32
  softmax. On the CPU the normalisation comes after the `P V` product:
  `(exp(S - max) V) / rowsum`, whose custom VJP keeps the unnormalised
  `exp(S - max)` as its residual (dS = E * (dO/l V^T - rowsum(dO * O)/l)),
  so neither pass writes or reads the normalised (B, H, Q, N)
  probabilities: one pass over the largest tensor of the block less each
  way. Elsewhere, the plain form."""
  if not ops.on_cpu():
    p = attention_probs(q_BHQK, k_BHNK).astype(v_BHNK.dtype)
    return jnp.einsum('bhqn,bhnk->bhqk', p, v_BHNK)
  return _attention(q_BHQK, k_BHNK, v_BHNK)


def attention_probs(q_BHQK: jax.Array, k_BHNK: jax.Array) -> jax.Array:
  """softmax(q k^T) over the keys, in float32 (q already scaled)."""
  s = jnp.einsum('bhqk,bhnk->bhqn', q_BHQK, k_BHNK)
  return jax.nn.softmax(s.astype(jnp.float32), axis=-1)


@jax.custom_vjp
def _attention(q, k, v):
  return _attention_fwd(q, k, v)[0]


def _attention_fwd(q, k, v):
  s = jnp.einsum('bhqk,bhnk->bhqn', q, k).astype(jnp.float32)
  e = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
  inv = 1 / jnp.sum(e, axis=-1, keepdims=True)
  e = e.astype(v.dtype)
  o = (jnp.einsum('bhqn,bhnk->bhqk', e, v) * inv).astype(v.dtype)
  return o, (q, k, v, e, inv, o)


def _attention_bwd(res, g):
  q, k, v, e, inv, o = res
  g_scaled = (g * inv).astype(v.dtype)
  dv = jnp.einsum('bhqn,bhqk->bhnk', e, g_scaled)
  dp = jnp.einsum('bhqk,bhnk->bhqn', g_scaled, v)
  d = jnp.sum(g.astype(jnp.float32) * o, axis=-1, keepdims=True) * inv
  ds = (e * (dp - d)).astype(q.dtype)
  dq = jnp.einsum('bhqn,bhnk->bhqk', ds, k)
  dk = jnp.einsum('bhqn,bhqk->bhnk', ds, q)
  return dq, dk, dv


_attention.defvjp(_attention_fwd, _attention_bwd)
