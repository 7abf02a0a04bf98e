"""torchvision ResNet (v1.5: stride on the 3x3 conv of bottlenecks) in Flax.

Variants '18', '34', '50', '101' match `torchvision.models.resnet*` layer for
layer (padding included: 7x7/2 stem conv with pad 3, 3x3/2 max-pool with pad 1
and -inf padding, 3x3 convs with pad 1, strided 1x1 downsample conv), so
converted torchvision weights give the same logits. 'tiny' (basic blocks,
widths 8/16/32/64, one block per stage) is for tests.

Flax tree (names mirror torch's, '.' -> '_', the classifier is 'head' as in
big_vision so that `dont_load=('head/.*',)` works the same for every family):
  conv1, bn1, layer{1..4}_{j}/{conv1,bn1,conv2,bn2[,conv3,bn3]
  [,downsample_conv,downsample_bn]}, head.

`out`: 'stem' (after the max-pool), 'block1'..'block4' (stage outputs),
'features' (= 'block4', the Grad-CAM target: torch's `model.layer4`, i.e.
the output of the final block, registered with `self.perturb`), 'pre_logits'
(global average pool).
"""
from __future__ import annotations

from collections.abc import Mapping
import functools
import re
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.models import layers
from cxr_jax.models import ops

# variant -> (block type, blocks per stage, stage widths)
_VARIANTS = {
    '18': ('basic', (2, 2, 2, 2), (64, 128, 256, 512)),
    '34': ('basic', (3, 4, 6, 3), (64, 128, 256, 512)),
    '50': ('bottleneck', (3, 4, 6, 3), (64, 128, 256, 512)),
    '101': ('bottleneck', (3, 4, 23, 3), (64, 128, 256, 512)),
    'tiny': ('basic', (1, 1, 1, 1), (8, 16, 32, 64)),
}
_EXPANSION = {'basic': 1, 'bottleneck': 4}


def _spec(variant: str):
  return layers.variant_spec('ResNet', _VARIANTS, variant)


class Block(nn.Module):
  """torchvision BasicBlock / Bottleneck (v1.5)."""
  kind: str
  width: int
  stride: int
  downsample: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    conv = functools.partial(ops.Conv, use_bias=False, dtype=self.dtype,
                             kernel_init=layers.conv_kernel_init)
    norm = functools.partial(layers.BatchNorm, use_running_average=not train,
                             dtype=self.dtype)
    pad1 = ((1, 1), (1, 1))
    s = (self.stride, self.stride)
    if self.kind == 'basic':
      y = conv(self.width, (3, 3), s, padding=pad1, name='conv1')(x)
      y = nn.relu(norm(name='bn1')(y))
      y = conv(self.width, (3, 3), padding=pad1, name='conv2')(y)
      y = norm(name='bn2')(y)
      out_ch = self.width
    else:
      y = conv(self.width, (1, 1), padding='VALID', name='conv1')(x)
      y = nn.relu(norm(name='bn1')(y))
      y = conv(self.width, (3, 3), s, padding=pad1, name='conv2')(y)
      y = nn.relu(norm(name='bn2')(y))
      out_ch = self.width * 4
      y = conv(out_ch, (1, 1), padding='VALID', name='conv3')(y)
      y = norm(name='bn3')(y)
    if self.downsample:
      x = conv(out_ch, (1, 1), s, padding='VALID', name='downsample_conv')(x)
      x = norm(name='downsample_bn')(x)
    return nn.relu(y + x)


class Model(layers.Classifier):
  """torchvision ResNet; see the module docstring.

  Attributes (beyond `layers.Classifier`'s):
    variant: '18', '34', '50', '101' or 'tiny'.
  """
  family: ClassVar[str] = 'ResNet'
  variants: ClassVar[Mapping[str, Any]] = _VARIANTS
  variant: str = '50'

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, *, train: bool = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    kind, depths, widths = self.spec(x_BHWC)
    out = {}
    x = x_BHWC.astype(self.dtype)
    x = ops.Conv(widths[0], (7, 7), (2, 2), padding=((3, 3), (3, 3)),
                 use_bias=False, dtype=self.dtype,
                 kernel_init=layers.conv_kernel_init, name='conv1')(x)
    x = layers.BatchNorm(use_running_average=not train, dtype=self.dtype,
                         name='bn1')(x)
    x = nn.relu(x)
    x = ops.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    out['stem'] = x
    in_ch = widths[0]
    for i, (depth, width) in enumerate(zip(depths, widths)):
      for j in range(depth):
        stride = 2 if (i > 0 and j == 0) else 1
        out_ch = width * _EXPANSION[kind]
        x = Block(kind, width, stride,
                  downsample=(j == 0 and (stride != 1 or in_ch != out_ch)),
                  dtype=self.dtype, name=f'layer{i + 1}_{j}')(x, train=train)
        in_ch = out_ch
      if i == 3:
        x = self.perturb('features', x)
        out['features'] = x
      out[f'block{i + 1}'] = x
    x = out['pre_logits'] = jnp.mean(x, axis=(1, 2))
    if self.num_classes is None:
      return x, out
    logits = nn.Dense(self.num_classes, dtype=self.dtype,
                      kernel_init=layers.torch_dense_init, name='head')(x)
    out['logits'] = logits
    return logits, out


def _rename(module: str) -> str:
  """torch module path -> Flax path (`layer1.0.downsample.0` ->
  `layer1_0/downsample_conv`, `fc` -> `head`)."""
  module = re.sub(r'^layer(\d+)\.(\d+)', r'layer\1_\2', module)
  module = module.replace('downsample.0', 'downsample_conv').replace(
      'downsample.1', 'downsample_bn')
  return 'head' if module == 'fc' else module.replace('.', '/')


def convert_torch(state_dict: Mapping[str, np.ndarray], *, variant: str
                  ) -> dict[str, Any]:
  """torchvision ResNet state dict -> {'params': ..., 'batch_stats': ...}.

  Head size and input channels are read from the tensors (`fc.weight`,
  `conv1.weight`); a state dict without `fc.*` converts to a headless tree
  (`num_classes=None`). Mismatches raise as `layers.torch_to_flax` says.
  """
  _spec(variant)
  num_classes, in_chans = layers.head_and_channels(state_dict, 'fc.weight',
                                                   'conv1.weight')
  model = Model(num_classes, variant=variant, in_chans=in_chans)
  return layers.torch_to_flax(state_dict, _rename, model,
                              jnp.zeros((1, 64, 64, in_chans)))
