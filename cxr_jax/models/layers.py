"""Building blocks shared by the model families.

* `BatchNorm`: a drop-in for `nn.BatchNorm` (same `scale`/`bias` params and
  `mean`/`var` batch stats) whose training-mode running-variance update
  matches PyTorch exactly. `flax.linen.BatchNorm` stores the *biased* batch
  variance in its running average; torch stores the *unbiased* one
  (x n/(n-1)) while normalising with the biased one. With
  `unbiased_running_var=True` (default) converted models keep evolving their
  statistics exactly as they would in torch.
* Initialisers that reproduce torchvision's (kaiming-normal fan-out convs,
  torch's default `nn.Linear`).
* `Classifier`: the fields and input checks every image classifier shares.
* torch -> Flax conversion: each family's `convert_torch` names the Flax
  module of every torch module (`rename`) and `torch_to_flax` transposes,
  places and checks the tensors (conv OIHW -> HWIO, linear weights
  transposed, norm weight/bias -> scale/bias, running_mean/var -> batch_stats
  mean/var), naming every tensor that does not fit.
* `flatten` / `unflatten`: nested dicts <-> {'a/b/c': leaf}.
* `rows`: (B, N, D) tokens as the (B*N, D) rows a dense layer takes.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

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
# The fields and input checks every image classifier shares.


def variant_spec(family: str, variants: Mapping[str, Any], variant: str):
  """`variants[variant]`, or a ValueError naming the family and the choices."""
  if variant not in variants:
    raise ValueError(f'Unknown {family} variant {variant!r}; valid: '
                     f'{sorted(variants)}.')
  return variants[variant]


class Classifier(nn.Module):
  """Base of the image classifiers: the registry's `Model` fields.

  Subclasses set the class attributes `family` (a name for messages) and
  `variants` (variant -> spec), override `variant`'s default and add their
  own fields; `spec(x_BHWC)` checks the variant and the input channels.

  Attributes:
    num_classes: head size; None = no head (logits are the pooled vector).
    variant: key of the family's `variants`.
    in_chans: input channels (1 for grey CXRs), checked at call time.
    dtype: compute dtype (parameters stay float32).
  """
  num_classes: int | None = 1000
  variant: str = ''
  in_chans: int = 3
  dtype: Dtype = jnp.float32

  family: ClassVar[str] = 'model'
  variants: ClassVar[Mapping[str, Any]] = {}

  def spec(self, x_BHWC: jax.Array) -> Any:
    """The variant's spec; raises on an unknown variant or channel count."""
    spec = variant_spec(self.family, self.variants, self.variant)
    if x_BHWC.shape[-1] != self.in_chans:
      raise ValueError(f'{self.family} expects {self.in_chans} input channels '
                       f'(field in_chans), got input of shape {x_BHWC.shape}.')
    return spec


# ----------------------------------------------------------------------------
# torch -> Flax conversion: every family's `convert_torch` renames torch
# modules to Flax paths and lets `torch_to_flax` do the rest.

# Flax leaf -> the torch parameter or buffer it comes from.
_TORCH_LEAF = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias',
               'mean': 'running_mean', 'var': 'running_var'}


def torch_conv(w_OIHW: np.ndarray) -> np.ndarray:
  """torch conv weight (O, I, H, W) -> Flax kernel (H, W, I, O)."""
  return np.ascontiguousarray(np.transpose(np.asarray(w_OIHW), (2, 3, 1, 0)))


def torch_dense(w_OI: np.ndarray) -> np.ndarray:
  """torch linear weight (out, in) -> Flax kernel (in, out)."""
  return np.ascontiguousarray(np.asarray(w_OI).T)


def to_numpy(value: Any) -> np.ndarray:
  """A torch tensor or array as a float32 numpy copy (never a view: a later
  torch forward in train mode updates its buffers in place)."""
  if hasattr(value, 'detach'):  # torch.Tensor, without importing torch
    value = value.detach().cpu().float().numpy()
  return np.array(value, dtype=np.float32, copy=True)


def flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """Nested dict -> {'a/b/c': leaf} (empty dicts vanish)."""
  flat = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      flat.update(flatten(v, f'{prefix}{k}/'))
    else:
      flat[f'{prefix}{k}'] = v
  return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{'a/b/c': leaf} -> nested dict; the inverse of `flatten`."""
  tree: dict[str, Any] = {}
  for path, leaf in flat.items():
    node = tree
    *parents, name = path.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[name] = leaf
  return tree


def variable_shapes(model: nn.Module, *args: jax.Array, **kwargs: jax.Array
                    ) -> dict[str, tuple[int, ...]]:
  """{'params/a/b': shape} of every parameter and batch statistic that
  `model.init(key, *args, **kwargs)` creates (traced abstractly: no compute).
  """
  tree = jax.eval_shape(
      lambda a, kw: model.init(jax.random.key(0), *a, **kw), args, kwargs)
  return {f'{col}/{path}': tuple(leaf.shape)
          for col in ('params', 'batch_stats') if col in tree
          for path, leaf in flatten(tree[col]).items()}


def head_and_channels(state_dict: Mapping[str, Any], head: str, stem: str
                      ) -> tuple[int | None, int]:
  """(num_classes, in_chans) read from the head's and the first conv's
  weights in a torch state dict; no head weight: num_classes None."""
  if stem not in state_dict:
    raise KeyError(f'torch state dict has no {stem!r} (the first '
                   'convolution of this model family); is it for another '
                   'model?')
  num_classes = (int(state_dict[head].shape[0]) if head in state_dict
                 else None)
  return num_classes, int(state_dict[stem].shape[1])


def _torch_leaf(leaf: str, arr: np.ndarray) -> tuple[str, str, np.ndarray]:
  """torch parameter name and value -> (collection, Flax name, Flax value).

  Conv weights OIHW -> HWIO, linear weights transposed, norm weights ->
  `scale`, running statistics -> `batch_stats`; a bias or any other bare
  parameter (`pos_embed`, or a `kernel` a family split out itself) keeps its
  name and layout.
  """
  if leaf == 'weight' and arr.ndim == 4:
    return 'params', 'kernel', torch_conv(arr)
  if leaf == 'weight' and arr.ndim == 2:
    return 'params', 'kernel', torch_dense(arr)
  if leaf == 'weight' and arr.ndim == 1:
    return 'params', 'scale', arr
  if leaf in ('running_mean', 'running_var'):
    return 'batch_stats', leaf.removeprefix('running_'), arr
  return 'params', leaf, arr


def torch_to_flax(state_dict: Mapping[str, Any],
                  rename: Callable[[str], str], model: nn.Module,
                  *args: jax.Array, **kwargs: jax.Array
                  ) -> dict[str, dict[str, Any]]:
  """Maps a torch state dict onto `model`'s variables.

  Args:
    state_dict: torch names -> arrays (numpy or torch tensors).
    rename: torch module path (a key without its last component) -> the
      '/'-joined Flax module path.
    model: the Flax model the tensors are for; `model.init(key, *args,
      **kwargs)` gives the slots and shapes to fill.

  Returns:
    {'params': ..., 'batch_stats': ...} (collections the model has): nested
    dicts of float32 numpy arrays, every slot filled.

  Raises:
    ValueError: a tensor whose converted shape differs from its slot.
    KeyError: otherwise, a torch tensor with no slot (or one already filled)
      or a slot no tensor filled. The message lists every such tensor and
      slot, a missing slot with the torch key it expects where known.
  """
  want = variable_shapes(model, *args, **kwargs)
  got, source, modules = {}, {}, {}
  unknown, misshaped = [], []
  for key, value in state_dict.items():
    if key.endswith('num_batches_tracked'):
      continue
    module, _, leaf = key.rpartition('.')
    col, name, arr = _torch_leaf(leaf, to_numpy(value))
    flax_module = rename(module) if module else ''
    path = '/'.join(p for p in (col, flax_module, name) if p)
    modules[flax_module] = module
    if path not in want or path in source:
      unknown.append(f'{key} (-> {path}' + (
          f', already filled from {source[path]})' if path in source else ')'))
    elif arr.shape != want[path]:
      misshaped.append(f'{key}: {arr.shape} as {path}, the model has '
                       f'{want[path]}')
    else:
      got[path] = arr
    source.setdefault(path, key)
  missing = [_expected_key(p, modules) for p in want if p not in source]
  _raise_mismatch(model, unknown, misshaped, missing)
  return unflatten(got)


def _expected_key(path: str, modules: Mapping[str, str]) -> str:
  """A missing Flax slot, with the torch key that would fill it if known."""
  _, _, rest = path.partition('/')
  flax_module, _, name = rest.rpartition('/')
  if flax_module in modules and name in _TORCH_LEAF:
    module = modules[flax_module]
    return f"{path} (torch '{module}.{_TORCH_LEAF[name]}')"
  return path


def _raise_mismatch(model: nn.Module, unknown: list[str],
                    misshaped: list[str], missing: list[str]) -> None:
  """One error listing every problem (ValueError if shapes differ)."""
  if not (unknown or misshaped or missing):
    return
  parts = []
  for what, items in (('mis-shaped', misshaped),
                      ('torch tensors with no place in the model', unknown),
                      ('model variables no tensor filled', missing)):
    if items:
      more = f'; ... ({len(items) - 5} more)' if len(items) > 5 else ''
      parts.append(f'{len(items)} {what}: {"; ".join(items[:5])}{more}')
  family = getattr(model, 'family', type(model).__name__)
  msg = (f'torch state dict does not fit {family} variant '
         f'{getattr(model, "variant", "?")!r}: ' + '. '.join(parts))
  raise (ValueError if misshaped else KeyError)(msg)


def rows(x_BND: jax.Array) -> jax.Array:
  """(B, N, D) tokens -> (B*N, D) rows for a dense layer.

  On the 2-D view each weight gradient is one GEMM that contracts the rows of
  two row-major buffers; on (B, N, D), XLA's CPU backend first copied the
  output gradient into a feature-major layout.
  """
  return x_BND.reshape(-1, x_BND.shape[-1])
