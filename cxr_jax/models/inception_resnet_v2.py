"""Inception-ResNet-v2 (timm `inception_resnet_v2` layout) in Flax.

The module tree mirrors timm's names one to one (`conv2d_1a/conv`,
`conv2d_1a/bn`, `mixed_5b/branch1/0/conv`, `repeat/3/conv2d`, `repeat_1/...`,
`repeat_2/...`, `block8`, `conv2d_7b`, `classif`), so the converter is a
rename of '.' to '/'. Like timm (a port of the TF-slim model) the stem and
the reduction blocks use unpadded ('VALID') convolutions and pools; the full
model needs inputs of at least 75 px and is meant for 299 px (8x8 final grid).
BatchNorm: `layers.BatchNorm` (torch-exact running variance in train mode),
epsilon 1e-3 (timm's `norm_eps`), momentum 0.9 (= torch 0.1).

The 'tiny' variant keeps the topology (every block type, one repeat each) with
1/8 of the widths and 'SAME' padding instead of 'VALID' in the stem and the
reduction blocks, so that it runs on the 32-64 px inputs of the registry
tests (a VALID stem needs >= 75 px). The residual blocks size their
projection (`conv2d`) from their input, so any width multiplier is consistent.

`out['features']` (the Grad-CAM target) is the `conv2d_7b` output, the last
conv activation before global pooling (what pytorch-grad-cam users target).
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxr_jax.models import layers
from cxr_jax.models import ops

# variant -> (width multiplier, (repeats of Block35, Block17, Block8), same pad)
VARIANTS = {
    'full': (1.0, (10, 20, 9), False),
    'tiny': (0.125, (1, 1, 1), True),
}
BN_EPS = 1e-3

Pad = str | Sequence[tuple[int, int]]


class BasicConv2d(nn.Module):
  """conv (no bias) + BatchNorm(eps 1e-3) + ReLU (timm ConvNormAct)."""
  features: int
  kernel: tuple[int, int]
  strides: int = 1
  padding: Pad = 'VALID'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, train: bool) -> jax.Array:
    x = ops.Conv(self.features, self.kernel, strides=self.strides,
                 padding=self.padding, use_bias=False, dtype=self.dtype,
                 name='conv')(x_BHWC)
    x = layers.BatchNorm(use_running_average=not train, momentum=0.9,
                         epsilon=BN_EPS, dtype=self.dtype, name='bn')(x)
    return nn.relu(x)


class ConvSeq(nn.Module):
  """A torch `nn.Sequential` of BasicConv2d, children named '0', '1', ...

  `specs` rows are (features, kernel, strides, padding). With `avg_pool_first`
  a 3x3/1 average pool (count_include_pad=False) sits at index 0.
  """
  specs: Sequence[tuple[int, tuple[int, int], int, Pad]]
  avg_pool_first: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, train: bool) -> jax.Array:
    x, offset = x_BHWC, 0
    if self.avg_pool_first:
      x = nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                      count_include_pad=False)
      offset = 1
    for i, (f, k, s, p) in enumerate(self.specs):
      x = BasicConv2d(f, k, s, p, dtype=self.dtype, name=str(i + offset))(
          x, train)
    return x


def _pad(k: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
  """Torch 'same' padding of an odd stride-1 kernel."""
  return ((k[0] // 2, k[0] // 2), (k[1] // 2, k[1] // 2))


class _Block(nn.Module):
  """Shared fields of the Inception blocks."""
  width: float = 1.0
  same: bool = False
  dtype: Any = jnp.float32

  def w(self, c: int) -> int:
    """A timm width scaled by the variant's multiplier."""
    return max(1, int(round(c * self.width)))

  def vpad(self) -> Pad:
    """Padding of the layers timm leaves unpadded."""
    return 'SAME' if self.same else 'VALID'

  def seq(self, specs: Sequence[tuple[int, tuple[int, int], int, Pad | None]],
          name: str, avg_pool_first: bool = False) -> ConvSeq:
    """A ConvSeq from timm widths; padding None = torch 'same' (stride 1)."""
    specs = tuple((self.w(f), k, s, _pad(k) if p is None else p)
                  for f, k, s, p in specs)
    return ConvSeq(specs, avg_pool_first, dtype=self.dtype, name=name)

  def conv(self, f: int, k: tuple[int, int], s: int, p: Pad | None,
           name: str) -> BasicConv2d:
    """One BasicConv2d from a timm width; padding None = torch 'same'."""
    return BasicConv2d(self.w(f), k, s, _pad(k) if p is None else p,
                       dtype=self.dtype, name=name)


class Mixed5b(_Block):

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    return jnp.concatenate([
        self.conv(96, (1, 1), 1, None, 'branch0')(x, train),
        self.seq([(48, (1, 1), 1, None), (64, (5, 5), 1, None)],
                 'branch1')(x, train),
        self.seq([(64, (1, 1), 1, None), (96, (3, 3), 1, None),
                  (96, (3, 3), 1, None)], 'branch2')(x, train),
        self.seq([(64, (1, 1), 1, None)], 'branch3', True)(x, train),
    ], axis=-1)


class Reduction(_Block):
  """Mixed_6a / Mixed_7a: strided conv branches next to a 3x3/2 max-pool."""
  kind: str = '6a'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    v = self.vpad()
    if self.kind == '6a':
      branches = [
          self.conv(384, (3, 3), 2, v, 'branch0')(x, train),
          self.seq([(256, (1, 1), 1, None), (256, (3, 3), 1, None),
                    (384, (3, 3), 2, v)], 'branch1')(x, train)]
    elif self.kind == '7a':
      branches = [
          self.seq([(256, (1, 1), 1, None), (384, (3, 3), 2, v)],
                   'branch0')(x, train),
          self.seq([(256, (1, 1), 1, None), (288, (3, 3), 2, v)],
                   'branch1')(x, train),
          self.seq([(256, (1, 1), 1, None), (288, (3, 3), 1, None),
                    (320, (3, 3), 2, v)], 'branch2')(x, train)]
    else:
      raise ValueError(f'Unknown reduction block kind {self.kind!r}.')
    pool = ops.max_pool(x, (3, 3), strides=(2, 2), padding=v)
    return jnp.concatenate(branches + [pool], axis=-1)


class ResidualBlock(_Block):
  """Block35 / Block17 / Block8: branches, 1x1 projection, scaled residual."""
  kind: str = '35'
  scale: float = 1.0
  relu: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.kind == '35':
      branches = [
          self.conv(32, (1, 1), 1, None, 'branch0')(x, train),
          self.seq([(32, (1, 1), 1, None), (32, (3, 3), 1, None)],
                   'branch1')(x, train),
          self.seq([(32, (1, 1), 1, None), (48, (3, 3), 1, None),
                    (64, (3, 3), 1, None)], 'branch2')(x, train)]
    elif self.kind == '17':
      branches = [
          self.conv(192, (1, 1), 1, None, 'branch0')(x, train),
          self.seq([(128, (1, 1), 1, None), (160, (1, 7), 1, None),
                    (192, (7, 1), 1, None)], 'branch1')(x, train)]
    elif self.kind == '8':
      branches = [
          self.conv(192, (1, 1), 1, None, 'branch0')(x, train),
          self.seq([(192, (1, 1), 1, None), (224, (1, 3), 1, None),
                    (256, (3, 1), 1, None)], 'branch1')(x, train)]
    else:
      raise ValueError(f'Unknown residual block kind {self.kind!r}.')
    y = ops.Conv(x.shape[-1], (1, 1), dtype=self.dtype, name='conv2d')(
        jnp.concatenate(branches, axis=-1))
    y = y * self.scale + x
    return nn.relu(y) if self.relu else y


class Repeat(nn.Module):
  """A torch `nn.Sequential` of residual blocks named '0', '1', ..."""
  n: int
  kind: str
  scale: float
  width: float
  same: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for i in range(self.n):
      x = ResidualBlock(self.width, self.same, self.dtype, kind=self.kind,
                        scale=self.scale, name=str(i))(x, train)
    return x


class Model(layers.Classifier):
  """Inception-ResNet-v2.

  Attributes (beyond `layers.Classifier`'s):
    variant: key of `VARIANTS` ('full' or 'tiny').
    drop_rate: dropout before the head in training (timm default 0).

  `out`: 'mixed_5b', 'repeat', 'mixed_6a', 'repeat_1', 'mixed_7a',
  'repeat_2', 'block8', 'features' = conv2d_7b output (perturbed; the
  Grad-CAM target), 'pre_logits' (B, 1536) = its global average.
  """
  family: ClassVar[str] = 'Inception-ResNet-v2'
  variants: ClassVar[Mapping[str, Any]] = VARIANTS
  variant: str = 'full'
  drop_rate: float = 0.0

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, *, train: bool = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    width, (n35, n17, n8), same = self.spec(x_BHWC)
    if not same and min(x_BHWC.shape[1:3]) < 75:
      raise ValueError('Inception-ResNet-v2 (VALID padding) needs inputs of '
                       f'at least 75x75 px, got {x_BHWC.shape[1:3]}.')
    kw = dict(width=width, same=same, dtype=self.dtype)
    v = 'SAME' if same else 'VALID'

    def conv(f: int, k: int, pad: Pad | None, name: str, s: int = 1):
      return BasicConv2d(max(1, int(round(f * width))), (k, k), s,
                         _pad((k, k)) if pad is None else pad,
                         dtype=self.dtype, name=name)

    out = {}
    x = jnp.asarray(x_BHWC, self.dtype)
    x = conv(32, 3, v, 'conv2d_1a', s=2)(x, train)
    x = conv(32, 3, v, 'conv2d_2a')(x, train)
    x = conv(64, 3, None, 'conv2d_2b')(x, train)
    x = ops.max_pool(x, (3, 3), strides=(2, 2), padding=v)
    x = conv(80, 1, None, 'conv2d_3b')(x, train)
    x = conv(192, 3, v, 'conv2d_4a')(x, train)
    x = ops.max_pool(x, (3, 3), strides=(2, 2), padding=v)
    x = out['mixed_5b'] = Mixed5b(**kw, name='mixed_5b')(x, train)
    x = out['repeat'] = Repeat(n35, '35', 0.17, **kw, name='repeat')(x, train)
    x = out['mixed_6a'] = Reduction(**kw, kind='6a', name='mixed_6a')(
        x, train)
    x = out['repeat_1'] = Repeat(n17, '17', 0.10, **kw, name='repeat_1')(
        x, train)
    x = out['mixed_7a'] = Reduction(**kw, kind='7a', name='mixed_7a')(
        x, train)
    x = out['repeat_2'] = Repeat(n8, '8', 0.20, **kw, name='repeat_2')(x, train)
    x = out['block8'] = ResidualBlock(**kw, kind='8', relu=False,
                                      name='block8')(x, train)
    x = conv(1536, 1, None, 'conv2d_7b')(x, train)
    x = self.perturb('features', x)
    out['features'] = x
    x = out['pre_logits'] = jnp.mean(x, axis=(1, 2))
    if self.num_classes is not None:
      if self.drop_rate:
        x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
      x = nn.Dense(self.num_classes, dtype=self.dtype, name='classif')(x)
    return x, out


def convert_torch(state_dict: Mapping[str, Any], *, variant: str = 'full'
                  ) -> dict[str, dict[str, Any]]:
  """timm `inception_resnet_v2` state dict -> {'params', 'batch_stats'}.

  The Flax names are timm's with '.' -> '/'. The head (`classif.*`) is
  converted when present, else the tree is headless. Mismatches raise as
  `layers.torch_to_flax` says.
  """
  num_classes, in_chans = layers.head_and_channels(
      state_dict, 'classif.weight', 'conv2d_1a.conv.weight')
  model = Model(num_classes, variant=variant, in_chans=in_chans)
  return layers.torch_to_flax(state_dict, lambda m: m.replace('.', '/'), model,
                              jnp.zeros((1, 75, 75, in_chans), jnp.float32))
