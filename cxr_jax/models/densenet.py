"""DenseNet-121/201 (torchvision layout) in Flax, with a torch weight converter.

The module tree mirrors torchvision's `features.*` names so that converted
checkpoints map one to one: `conv0`, `norm0`, `denseblockN/denselayerM/{norm1,
conv1,norm2,conv2}`, `transitionN/{norm,conv}`, `norm5`, `classifier`.

Grad-CAM target. The thesis (chapter 4) reads the DenseNet-201 feature at
`denseblock4`/`norm5`; pytorch-grad-cam users target `model.features[-1]`,
which is `norm5`, and torchvision then applies a ReLU before pooling. We store
`out['features']` = ReLU(norm5(x)), i.e. exactly the activation the pooled
head sees (the gradient of the logits w.r.t. the pre-ReLU `norm5` output is the
same on the positive part and zero elsewhere, so the CAMs agree up to the
ReLU mask). The pre-ReLU map is `out['norm5']`.

BatchNorm is `layers.BatchNorm` (eps 1e-5, momentum 0.9 == torch 0.1): unlike
`nn.BatchNorm` it stores the *unbiased* batch variance in the running average,
as torch does, so converted models keep evolving their statistics exactly as
in torch (`tests/test_models_densenet_irv2.py` checks train mode).
"""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.models import ops
from cxr_jax.models.layers import BatchNorm
from cxr_jax.models.layers import batch_moments

# variant -> (block_config, growth_rate, num_init_features, bn_size)
VARIANTS = {
    '121': ((6, 12, 24, 16), 32, 64, 4),
    '169': ((6, 12, 32, 32), 32, 64, 4),
    '201': ((6, 12, 48, 32), 32, 64, 4),
    'tiny': ((1, 1, 1, 1), 4, 8, 4),
    'small': ((2, 2, 2, 2), 12, 16, 4),  # the Study B demo's encoder
}


def _bn(train: bool, dtype: Any, name: str, epsilon: float = 1e-5) -> nn.Module:
  return BatchNorm(use_running_average=not train, momentum=0.9,
                   epsilon=epsilon, dtype=dtype, name=name)


class DenseLayer(nn.Module):
  """norm1-relu-conv1x1(bn_size*growth)-norm2-relu-conv3x3(growth)."""
  growth_rate: int
  bn_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, train: bool,
               moments: tuple[jax.Array, jax.Array] | None = None
               ) -> jax.Array:
    """`moments`: norm1's batch statistics of `x_BHWC`, if already known."""
    y = nn.relu(_bn(train, self.dtype, 'norm1')(x_BHWC, moments=moments))
    y = ops.Conv(self.bn_size * self.growth_rate, (1, 1), use_bias=False,
                 dtype=self.dtype, name='conv1')(y)
    y = nn.relu(_bn(train, self.dtype, 'norm2')(y))
    return ops.Conv(self.growth_rate, (3, 3), padding=((1, 1), (1, 1)),
                    use_bias=False, dtype=self.dtype, name='conv2')(y)


class DenseBlock(nn.Module):
  """`num_layers` dense layers, each fed the concatenation of all before
  (the block's input grows by one concatenation per layer).

  Each layer's output passes `ops.stored_gradient`: its gradient is a sum of
  slices of every later layer's input gradient, which XLA's CPU backend
  otherwise recomputed in both of its consumers, the 3x3 convolution's input
  gradient and the batch-minor copy for its weight gradient (DenseNet-201
  train step, 2 CPU cores: 3.93 -> 3.61 s).

  In training mode each layer's norm1 normalises that concatenation with its
  batch statistics, which are per channel: the statistics of a feature chunk
  are the same for every later layer. They are computed once per chunk
  (`layers.batch_moments`) and concatenated, rather than reduced again over
  the whole, growing input in every layer (same values; DenseNet-201's train
  step reads its block inputs two times fewer per layer).
  """
  num_layers: int
  growth_rate: int
  bn_size: int
  remat: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, train: bool) -> jax.Array:
    layer_cls = (nn.remat(DenseLayer, static_argnums=(2,)) if self.remat
                 else DenseLayer)
    x = x_BHWC
    moments = batch_moments(x) if train else None
    for i in range(self.num_layers):
      layer = layer_cls(self.growth_rate, self.bn_size, dtype=self.dtype,
                        name=f'denselayer{i + 1}')
      new = ops.stored_gradient(layer(x, train, moments))
      if train and i + 1 < self.num_layers:  # read by the next layers
        moments = tuple(jnp.concatenate(m) for m in zip(moments,
                                                         batch_moments(new)))
      x = jnp.concatenate([x, new], axis=-1)
    return x


def avg_pool2(x_BHWC: jax.Array) -> jax.Array:
  """2x2, stride-2 average pooling (a trailing odd row/column is dropped, as
  `nn.avg_pool` with 'VALID' padding does), as a mean over a reshape: its
  gradient is a broadcast, where `reduce_window`'s was a padded
  `reduce_window` (slow on XLA's CPU backend)."""
  b, h, w, c = x_BHWC.shape
  x = x_BHWC[:, :h - h % 2, :w - w % 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class Transition(nn.Module):
  """norm-relu-conv1x1-avgpool2 (halves channels and resolution).

  Computed as norm-relu-avgpool2-conv1x1: the 1x1 convolution and the
  average pooling are both linear and act on different axes, so they
  commute (same result up to rounding) and the convolution runs on a
  quarter of the pixels (DenseNet-201: 4x fewer transition FLOPs; train
  step, batch 16, 2 CPU cores: 4.35 -> 3.97 s)."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, train: bool) -> jax.Array:
    x = nn.relu(_bn(train, self.dtype, 'norm')(x_BHWC))
    return ops.Conv(self.features, (1, 1), use_bias=False, dtype=self.dtype,
                    name='conv')(avg_pool2(x))


class Model(nn.Module):
  """torchvision DenseNet. `variant` in {'121', '169', '201', 'tiny'}.

  Attributes:
    num_classes: head width; None = no head (logits are the pooled vector).
    variant: key of `VARIANTS`.
    in_chans: expected input channels (checked at call time).
    dtype: compute dtype (parameters stay float32).
    remat: rematerialise each dense layer in the backward pass (saves
      activation memory, like torchvision's `memory_efficient=True`).

  `out`: 'denseblock1'..'denseblock4' (each block's output, before the
  transition), 'norm5', 'features' = ReLU(norm5) (perturbed; the Grad-CAM
  target), 'pre_logits' (B, C) = its global average.
  """
  num_classes: int | None = 1000
  variant: str = '121'
  in_chans: int = 3
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, *, train: bool = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    if self.variant not in VARIANTS:
      raise ValueError(f'Unknown DenseNet variant {self.variant!r}; valid: '
                       f'{sorted(VARIANTS)}.')
    if x_BHWC.shape[-1] != self.in_chans:
      raise ValueError(f'DenseNet expects {self.in_chans} input channels, '
                       f'got input of shape {x_BHWC.shape}.')
    blocks, growth, init_features, bn_size = VARIANTS[self.variant]
    out = {}
    x = jnp.asarray(x_BHWC, self.dtype)
    x = ops.Conv(init_features, (7, 7), strides=(2, 2),
                 padding=((3, 3), (3, 3)), use_bias=False, dtype=self.dtype,
                 name='conv0')(x)
    x = nn.relu(_bn(train, self.dtype, 'norm0')(x))
    x = ops.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    ch = init_features
    for i, n in enumerate(blocks):
      x = DenseBlock(n, growth, bn_size, remat=self.remat, dtype=self.dtype,
                     name=f'denseblock{i + 1}')(x, train)
      out[f'denseblock{i + 1}'] = x
      ch += n * growth
      if i != len(blocks) - 1:
        ch //= 2
        x = Transition(ch, dtype=self.dtype, name=f'transition{i + 1}')(
            x, train)
    x = _bn(train, self.dtype, 'norm5')(x)
    out['norm5'] = x
    x = nn.relu(x)
    x = self.perturb('features', x)
    out['features'] = x
    x = out['pre_logits'] = jnp.mean(x, axis=(1, 2))
    if self.num_classes is not None:
      x = nn.Dense(self.num_classes, dtype=self.dtype, name='classifier')(x)
    return x, out


# --------------------------------------------------------------------------
# torch -> Flax conversion (shared by the other families of this author).

def expected_variables(model: nn.Module, x_BHWC: jax.Array,
                       **call_kw) -> dict[str, dict[str, Any]]:
  """Shapes of `model`'s 'params' and 'batch_stats' (no computation)."""
  variables = jax.eval_shape(
      lambda x: model.init(jax.random.PRNGKey(0), x, **call_kw), x_BHWC)
  return {c: jax.tree_util.tree_map(lambda s: tuple(s.shape), variables[c])
          for c in ('params', 'batch_stats') if c in variables}


def torch_to_flax(state_dict: Mapping[str, Any],
                  rename: Callable[[str], str],
                  expected: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """Maps torch tensors onto a Flax variable tree of known shapes.

  Args:
    state_dict: torch names -> arrays (numpy or torch tensors).
    rename: torch module path (key without its last component) -> the
      '/'-joined Flax module path.
    expected: `expected_variables(...)` of the target model.

  Returns:
    {'params': ..., 'batch_stats': ...} of numpy arrays mirroring `expected`.

  Raises:
    KeyError: a torch tensor that has no Flax slot, or a Flax leaf no torch
      tensor filled (named in the message).
    ValueError: a tensor whose converted shape differs from the Flax slot.
  """
  flat_expected = {}
  for col, tree in expected.items():
    for path, shape in jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda s: isinstance(s, tuple))[0]:
      flat_expected[(col, '/'.join(p.key for p in path))] = shape
  result = {}
  for key, value in state_dict.items():
    if key.endswith('num_batches_tracked'):
      continue
    # Always a copy: a view would alias the torch buffers, which a later
    # torch forward in train mode updates in place.
    arr = np.array(value.detach().cpu().numpy() if hasattr(value, 'detach')
                   else value, dtype=np.float32, copy=True)
    module, _, leaf = key.rpartition('.')
    path = rename(module) if module else ''
    if leaf == 'weight' and arr.ndim == 4:
      col, name, arr = 'params', 'kernel', arr.transpose(2, 3, 1, 0)
    elif leaf == 'weight' and arr.ndim == 2:
      col, name, arr = 'params', 'kernel', arr.T
    elif leaf == 'weight' and arr.ndim == 1:
      col, name = 'params', 'scale'
    elif leaf == 'bias':
      col, name = 'params', 'bias'
    elif leaf == 'running_mean':
      col, name = 'batch_stats', 'mean'
    elif leaf == 'running_var':
      col, name = 'batch_stats', 'var'
    else:  # a bare parameter such as `pos_embed`: keep its layout
      col, name = 'params', leaf
    slot = (col, f'{path}/{name}' if path else name)
    if slot not in flat_expected:
      raise KeyError(f'torch key {key!r} (-> {col}:{slot[1]}) has no '
                     'counterpart in the Flax model.')
    if tuple(arr.shape) != flat_expected[slot]:
      raise ValueError(f'torch key {key!r}: converted shape {arr.shape} != '
                       f'Flax {col}:{slot[1]} {flat_expected[slot]}.')
    if slot in result:
      raise KeyError(f'torch key {key!r} maps onto {col}:{slot[1]}, which '
                     'another key already filled.')
    result[slot] = arr
  missing = sorted(f'{c}:{p}' for c, p in flat_expected if (c, p) not in result)
  if missing:
    raise KeyError('Flax variables not filled by the state dict: '
                   f'{missing[:10]}{" ..." if len(missing) > 10 else ""}')
  tree: dict[str, dict[str, Any]] = {c: {} for c in expected}
  for (col, path), arr in result.items():
    node = tree[col]
    *parents, name = path.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[name] = arr
  return tree


_LEGACY = re.compile(r'(denselayer\d+)\.(norm|relu|conv)\.(\d)$')


def _rename(module: str) -> str:
  module = module.removeprefix('features.')
  module = _LEGACY.sub(r'\1.\2\3', module)
  return module.replace('.', '/')


def convert_torch(state_dict: Mapping[str, Any], *, variant: str
                  ) -> dict[str, dict[str, Any]]:
  """torchvision DenseNet state dict -> {'params', 'batch_stats'}.

  Accepts the legacy key style of old torchvision checkpoints
  (`denselayer1.norm.1.weight` -> `denselayer1.norm1.weight`). The head is
  converted when present (`classifier.*`); a state dict without it converts
  to a headless tree (num_classes=None).
  """
  sd = {}
  for k, v in state_dict.items():
    module, dot, leaf = k.rpartition('.')
    sd[_LEGACY.sub(r'\1.\2\3', module) + dot + leaf] = v
  conv0 = sd.get('features.conv0.weight', sd.get('conv0.weight'))
  if conv0 is None:
    raise KeyError("state dict has no 'features.conv0.weight'.")
  head = sd.get('classifier.weight')
  model = Model(num_classes=None if head is None else int(head.shape[0]),
                variant=variant, in_chans=int(conv0.shape[1]))
  expected = expected_variables(
      model, jnp.zeros((1, 64, 64, int(conv0.shape[1])), jnp.float32))
  return torch_to_flax(sd, _rename, expected)
