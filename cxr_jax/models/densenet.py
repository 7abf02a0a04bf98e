"""DenseNet-121/201 (torchvision layout) in Flax, and its torch converter.

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
from typing import Any, ClassVar, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxr_jax.models import layers
from cxr_jax.models import ops

# variant -> (block_config, growth_rate, num_init_features, bn_size)
VARIANTS = {
    '121': ((6, 12, 24, 16), 32, 64, 4),
    '169': ((6, 12, 32, 32), 32, 64, 4),
    '201': ((6, 12, 48, 32), 32, 64, 4),
    'tiny': ((1, 1, 1, 1), 4, 8, 4),
    'small': ((2, 2, 2, 2), 12, 16, 4),  # the Study B demo's encoder
}


def _bn(train: bool, dtype: Any, name: str, epsilon: float = 1e-5) -> nn.Module:
  return layers.BatchNorm(use_running_average=not train, momentum=0.9,
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
  gradient and the batch-minor copy for its weight gradient.

  In training mode each layer's norm1 normalises that concatenation with its
  batch statistics, which are per channel: the statistics of a feature chunk
  are the same for every later layer. They are computed once per chunk
  (`layers.batch_moments`) and concatenated, rather than reduced again over
  the whole, growing input in every layer (same values).
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
    moments = layers.batch_moments(x) if train else None
    for i in range(self.num_layers):
      layer = layer_cls(self.growth_rate, self.bn_size, dtype=self.dtype,
                        name=f'denselayer{i + 1}')
      new = ops.stored_gradient(layer(x, train, moments))
      if train and i + 1 < self.num_layers:  # read by the next layers
        moments = tuple(jnp.concatenate(m) for m in zip(
            moments, layers.batch_moments(new)))
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
  quarter of the pixels (4x fewer transition FLOPs)."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, train: bool) -> jax.Array:
    x = nn.relu(_bn(train, self.dtype, 'norm')(x_BHWC))
    return ops.Conv(self.features, (1, 1), use_bias=False, dtype=self.dtype,
                    name='conv')(avg_pool2(x))


class Model(layers.Classifier):
  """torchvision DenseNet.

  Attributes (beyond `layers.Classifier`'s):
    variant: key of `VARIANTS`.
    remat: rematerialise each dense layer in the backward pass (saves
      activation memory, like torchvision's `memory_efficient=True`).

  `out`: 'denseblock1'..'denseblock4' (each block's output, before the
  transition), 'norm5', 'features' = ReLU(norm5) (perturbed; the Grad-CAM
  target), 'pre_logits' (B, C) = its global average.
  """
  family: ClassVar[str] = 'DenseNet'
  variants: ClassVar[Mapping[str, Any]] = VARIANTS
  variant: str = '121'
  remat: bool = False

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, *, train: bool = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    blocks, growth, init_features, bn_size = self.spec(x_BHWC)
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


_LEGACY = re.compile(r'(denselayer\d+)\.(norm|relu|conv)\.(\d)$')


def _rename(module: str) -> str:
  return module.removeprefix('features.').replace('.', '/')


def convert_torch(state_dict: Mapping[str, Any], *, variant: str
                  ) -> dict[str, dict[str, Any]]:
  """torchvision DenseNet state dict -> {'params', 'batch_stats'}.

  Accepts the legacy key style of old torchvision checkpoints
  (`denselayer1.norm.1.weight` -> `denselayer1.norm1.weight`) and keys
  without the `features.` prefix. The head is converted when present
  (`classifier.*`); a state dict without it converts to a headless tree
  (num_classes=None). Mismatches raise as `layers.torch_to_flax` says.
  """
  sd = {}
  for k, v in state_dict.items():
    module, dot, leaf = k.rpartition('.')
    sd[_LEGACY.sub(r'\1.\2\3', module) + dot + leaf] = v
  stem = ('conv0.weight' if 'conv0.weight' in sd else 'features.conv0.weight')
  num_classes, in_chans = layers.head_and_channels(sd, 'classifier.weight',
                                                   stem)
  model = Model(num_classes, variant=variant, in_chans=in_chans)
  return layers.torch_to_flax(sd, _rename, model,
                              jnp.zeros((1, 64, 64, in_chans), jnp.float32))
