"""Small building blocks shared by the model families.

Kept deliberately small and stable (other families import it):

* `BatchNorm`: a drop-in for `nn.BatchNorm` (same `scale`/`bias` params and
  `mean`/`var` batch stats, same defaults as DESIGN.md) whose training-mode
  running-variance update matches PyTorch exactly. `flax.linen.BatchNorm`
  stores the *biased* batch variance in its running average; torch stores the
  *unbiased* one (x n/(n-1)) while normalising with the biased one. With
  `unbiased_running_var=True` (default) converted models keep evolving their
  statistics exactly as they would in torch.
* Initialisers that reproduce torchvision's (kaiming-normal fan-out convs,
  torch's default `nn.Linear`).
* `torch_conv` / `torch_dense` / `check_tree`: helpers for the per-family
  `convert_torch` functions (SPEC.md "Weight conversion conventions").
* `rows`: (B, N, D) tokens as the (B*N, D) rows a dense layer takes.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

# torchvision: kaiming_normal_(mode='fan_out', nonlinearity='relu').
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# torch nn.Linear default: kaiming_uniform_(a=sqrt(5)) == U(+-1/sqrt(fan_in)).
torch_dense_init = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')


def batch_moments(x: jax.Array, use_fast_variance: bool = True,
                  axis_name: str | None = None
                  ) -> tuple[jax.Array, jax.Array]:
  """Per-channel (mean, biased variance) over all but the last axis, in
  float32: `BatchNorm`'s training statistics. `use_fast_variance`: one pass,
  E[x^2] - E[x]^2 (clipped at 0); else two passes, E[(x - E[x])^2]."""
  axes = tuple(range(x.ndim - 1))
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axes)
  if use_fast_variance:
    mean2 = jnp.mean(jnp.square(x32), axes)
    if axis_name is not None:
      mean, mean2 = jax.lax.pmean((mean, mean2), axis_name)
    return mean, jnp.maximum(mean2 - jnp.square(mean), 0.)
  if axis_name is not None:
    mean = jax.lax.pmean(mean, axis_name)
  var = jnp.mean(jnp.square(x32 - jnp.expand_dims(mean, axes)), axes)
  if axis_name is not None:
    var = jax.lax.pmean(var, axis_name)
  return mean, var


class BatchNorm(nn.Module):
  """BatchNorm over all but the last axis, torch-exact in train and eval.

  Attributes:
    use_running_average: if True normalise with the running statistics (eval).
    momentum: Flax convention (0.9 == torch momentum 0.1).
    epsilon: added to the variance (torch default 1e-5).
    dtype: compute dtype of the output; statistics are computed in float32.
    unbiased_running_var: store var * n / (n - 1) in the running variance as
      torch does. False gives `nn.BatchNorm`'s (biased) behaviour.
    use_fast_variance: one pass E[x^2] - E[x]^2 (fast, what nn.BatchNorm does
      by default) instead of two passes E[(x - E[x])^2] (torch's accuracy).
    axis_name: axis to average statistics over under `shard_map`/`pmap`; not
      needed under `jit` with shardings (the mean is global already).
  """
  use_running_average: bool | None = None
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  unbiased_running_var: bool = True
  use_fast_variance: bool = True
  axis_name: str | None = None
  scale_init: Any = nn.initializers.ones
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array,
               use_running_average: bool | None = None,
               moments: tuple[jax.Array, jax.Array] | None = None
               ) -> jax.Array:
    """`moments`: this batch's per-channel (mean, biased variance) of `x`,
    computed by the caller (`batch_moments`); used in training mode instead
    of reducing `x` again (DenseNet reuses each feature chunk's moments in
    every later layer)."""
    use_ra = nn.merge_param('use_running_average', self.use_running_average,
                            use_running_average)
    features = x.shape[-1]
    axes = tuple(range(x.ndim - 1))
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,),
                            jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (features,),
                           jnp.float32)
    scale = self.param('scale', self.scale_init, (features,), self.param_dtype)
    bias = self.param('bias', self.bias_init, (features,), self.param_dtype)

    if use_ra:
      mean, var = ra_mean.value, ra_var.value
    else:
      if moments is None:
        moments = batch_moments(x, self.use_fast_variance, self.axis_name)
      mean, var = moments
      if mean.shape != (features,) or var.shape != (features,):
        raise ValueError(f'moments of shapes {mean.shape}, {var.shape} given '
                         f'for {features} channels')
      if not self.is_initializing():
        n = int(np.prod([x.shape[a] for a in axes]))
        if self.axis_name is not None:
          n *= jax.lax.psum(1, self.axis_name)
        run_var = var
        if self.unbiased_running_var:
          run_var = var * n / jnp.maximum(n - 1, 1)
        m = self.momentum
        ra_mean.value = m * ra_mean.value + (1 - m) * mean
        ra_var.value = m * ra_var.value + (1 - m) * run_var

    # y = (x - mean) * scale / sqrt(var + eps) + bias, folded into one FMA.
    mul = scale.astype(jnp.float32) * jax.lax.rsqrt(var + self.epsilon)
    add = bias.astype(jnp.float32) - mean * mul
    dtype = self.dtype or x.dtype
    shape = (1,) * (x.ndim - 1) + (features,)
    mul = mul.reshape(shape).astype(dtype)
    add = add.reshape(shape).astype(dtype)
    return x.astype(dtype) * mul + add


# ----------------------------------------------------------------------------
# torch -> Flax conversion helpers.


def torch_conv(w_OIHW: np.ndarray) -> np.ndarray:
  """torch conv weight (O, I, H, W) -> Flax kernel (H, W, I, O)."""
  return np.ascontiguousarray(np.transpose(np.asarray(w_OIHW), (2, 3, 1, 0)))


def torch_dense(w_OI: np.ndarray) -> np.ndarray:
  """torch linear weight (out, in) -> Flax kernel (in, out)."""
  return np.ascontiguousarray(np.asarray(w_OI).T)


def flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """Nested dict -> {'a/b/c': leaf}."""
  flat = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      flat.update(flatten(v, f'{prefix}{k}/'))
    else:
      flat[f'{prefix}{k}'] = v
  return flat


def check_tree(converted: Mapping[str, Any], expected: Mapping[str, Any],
               sources: Mapping[str, str] | None = None) -> None:
  """Raises unless `converted` has exactly the leaves and shapes of `expected`.

  Args:
    converted: nested dict of numpy arrays from a `convert_torch`.
    expected: nested dict of anything with `.shape` (e.g. `jax.eval_shape` of
      the model's `init`), same collections.
    sources: optional map '/'-joined Flax path -> torch key, to name the torch
      tensor in the error.
  """
  got, want = flatten(converted), flatten(expected)
  sources = sources or {}
  missing = sorted(set(want) - set(got))
  extra = sorted(set(got) - set(want))
  if missing or extra:
    raise KeyError(f'converted tree does not match the model: missing Flax '
                   f'leaves {missing}, unexpected {extra}')
  bad = [f'{sources.get(k, k)} -> {k}: {tuple(np.shape(got[k]))} != '
         f'{tuple(want[k].shape)}'
         for k in sorted(want)
         if tuple(np.shape(got[k])) != tuple(want[k].shape)]
  if bad:
    raise ValueError('mis-shaped tensors: ' + '; '.join(bad))


class StateDict:
  """Reads a torch state dict once per key and reports what was left over."""

  def __init__(self, state_dict: Mapping[str, np.ndarray]):
    self._sd = {k: v for k, v in state_dict.items()
                if not k.endswith('num_batches_tracked')}
    self._used: set[str] = set()
    self.sources: dict[str, str] = {}  # Flax path -> torch key

  def __call__(self, key: str, flax_path: str = '') -> np.ndarray:
    if key not in self._sd:
      raise KeyError(f'torch state dict has no key {key!r}')
    self._used.add(key)
    if flax_path:
      self.sources[flax_path] = key
    return np.asarray(self._sd[key])

  def has(self, key: str) -> bool:
    return key in self._sd

  def finish(self) -> None:
    """Raises a KeyError naming every torch key that was not consumed."""
    left = sorted(set(self._sd) - self._used)
    if left:
      raise KeyError(f'unused torch keys: {left}')


def rows(x_BND: jax.Array) -> jax.Array:
  """(B, N, D) tokens -> (B*N, D) rows for a dense layer.

  On the 2-D view, each weight gradient is one GEMM that contracts the rows
  of two row-major buffers; on (B, N, D), XLA's CPU backend first copied the
  output gradient into a feature-major layout (a ViT-B/16 block's forward +
  backward, batch 16, 2 cores: 738 -> 700 ms without those copies).
  """
  return x_BND.reshape(-1, x_BND.shape[-1])
