"""UNet and Res_SE-UNet saliency predictors (Study B).

Both follow the MT-UNet / authors' PyTorch layout (widths 64/128/256/512/1024,
five encoder levels with 2x2 max-pooling between them, bottleneck at 1/16):

* encoder block: 'unet' variants use the plain block (conv3x3-BN-ReLU) x 2;
  'res_se' variants use a residual block (conv3x3-BN-ReLU-conv3x3-BN, plus a
  3x3 conv shortcut *without* BN, add, ReLU) followed by squeeze-and-
  excitation (GAP, FC C->C/16 no bias, ReLU, FC C/16->C no bias, sigmoid,
  channel scaling);
* decoder level: up-conv (nearest upsample x2 + conv3x3-BN-ReLU, halving the
  width) -> concat [skip, up] -> plain block;
* head: conv3x3-BN-ReLU (the MT-UNet image head; `head_conv=False` drops it)
  -> 1x1 conv to one channel -> log-softmax over all H*W pixels, i.e. the
  saliency map is a probability distribution over pixels.

Injection (the dual-encoder model): an external feature map (the DenseNet
feature) is brought to the bottleneck grid (nearest x2 upsampling when it sits
at 1/32 as DenseNet's `denseblock4` does, `jax.image.resize` otherwise, as the
authors' up-conv), passed through conv3x3-BN-ReLU to `inject_features`
(default widths[-2] = 512) and concatenated with the bottleneck before the
first decoder level.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxr_jax.models import layers
from cxr_jax.models import ops

Dtype = Any

# variant -> (encoder widths, encoder block)
VARIANTS = {
    'full': ((64, 128, 256, 512, 1024), 'plain'),
    'tiny': ((8, 16, 32, 64, 128), 'plain'),
    'res_se': ((64, 128, 256, 512, 1024), 'res_se'),
    'res_se_tiny': ((8, 16, 32, 64, 128), 'res_se'),
}


def variant_cfg(variant: str) -> tuple[tuple[int, ...], str]:
  if variant not in VARIANTS:
    raise ValueError(f'Unknown UNet variant {variant!r}; valid: '
                     f'{sorted(VARIANTS)}')
  return VARIANTS[variant]


def _conv(features: int, dtype: Dtype, name: str, k: int = 3) -> nn.Module:
  return ops.Conv(features, (k, k), padding='SAME', use_bias=True, dtype=dtype,
                  kernel_init=layers.conv_kernel_init, name=name)


def _bn(train: bool, dtype: Dtype, name: str) -> nn.Module:
  return layers.BatchNorm(use_running_average=not train, momentum=0.9,
                          epsilon=1e-5, dtype=dtype, name=name)


def upsample2x(x_BHWC: jax.Array) -> jax.Array:
  """Nearest-neighbour x2 upsampling (torch `nn.Upsample(scale_factor=2)`)."""
  return jnp.repeat(jnp.repeat(x_BHWC, 2, axis=1), 2, axis=2)


def max_pool2x(x_BHWC: jax.Array) -> jax.Array:
  return ops.max_pool(x_BHWC, (2, 2), strides=(2, 2))


class ConvBNReLU(nn.Module):
  """conv3x3 (bias) -> BatchNorm -> ReLU."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = _conv(self.features, self.dtype, 'conv')(x)
    return nn.relu(_bn(train, self.dtype, 'bn')(x))


class ConvBlock(nn.Module):
  """(conv3x3-BN-ReLU) x 2, the plain UNet block (`conv_block`)."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = ConvBNReLU(self.features, self.dtype, name='conv1')(x, train=train)
    return ConvBNReLU(self.features, self.dtype, name='conv2')(x, train=train)


class SqueezeExcite(nn.Module):
  """x * sigmoid(FC(ReLU(FC(GAP(x))))), FCs without bias, C -> C/r -> C."""
  reduction: int = 16
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    c = x_BHWC.shape[-1]
    s_BC = jnp.mean(x_BHWC, axis=(1, 2))
    s_BC = nn.relu(nn.Dense(max(1, c // self.reduction), use_bias=False,
                            dtype=self.dtype, name='fc1')(s_BC))
    gate_BC = nn.sigmoid(nn.Dense(c, use_bias=False, dtype=self.dtype,
                                  name='fc2')(s_BC))
    self.sow('intermediates', 'gate', gate_BC)
    return x_BHWC * gate_BC[:, None, None, :]


class ResSEBlock(nn.Module):
  """Residual block (3x3 conv shortcut without BN) followed by SE."""
  features: int
  se_reduction: int = 16
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = _conv(self.features, self.dtype, 'conv1')(x)
    y = nn.relu(_bn(train, self.dtype, 'bn1')(y))
    y = _conv(self.features, self.dtype, 'conv2')(y)
    y = _bn(train, self.dtype, 'bn2')(y)
    shortcut = _conv(self.features, self.dtype, 'shortcut')(x)
    y = nn.relu(y + shortcut)
    return SqueezeExcite(self.se_reduction, self.dtype, name='se')(y)


class UpConv(nn.Module):
  """Nearest upsample x2 -> conv3x3-BN-ReLU (the reference `up_conv`)."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return ConvBNReLU(self.features, self.dtype, name='conv')(
        upsample2x(x), train=train)


class Encoder(nn.Module):
  """Five levels; returns (skips [e1..e4], bottleneck e5)."""
  widths: tuple[int, ...]
  block: str = 'plain'
  se_reduction: int = 16
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool
               ) -> tuple[list[jax.Array], jax.Array]:
    skips = []
    for i, w in enumerate(self.widths):
      if i:
        x = max_pool2x(x)
      if self.block == 'plain':
        x = ConvBlock(w, self.dtype, name=f'level{i + 1}')(x, train=train)
      elif self.block == 'res_se':
        x = ResSEBlock(w, self.se_reduction, self.dtype,
                       name=f'level{i + 1}')(x, train=train)
      else:
        raise ValueError(f'Unknown encoder block {self.block!r}')
      skips.append(x)
    return skips[:-1], skips[-1]


class Decoder(nn.Module):
  """Up-conv, concat skip, plain block per level; returns every level."""
  widths: tuple[int, ...]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, skips: list[jax.Array], *, train: bool
               ) -> list[jax.Array]:
    outs = []
    for i in reversed(range(len(self.widths) - 1)):
      w = self.widths[i]
      x = UpConv(w, self.dtype, name=f'up{i + 1}')(x, train=train)
      x = jnp.concatenate([skips[i], x], axis=-1)
      x = ConvBlock(w, self.dtype, name=f'level{i + 1}')(x, train=train)
      outs.append(x)
    return outs


class SaliencyHead(nn.Module):
  """[conv3x3-BN-ReLU] -> 1x1 conv -> log-softmax over all pixels (B,H,W)."""
  conv: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, *, train: bool) -> jax.Array:
    if self.conv:
      x_BHWC = ConvBNReLU(x_BHWC.shape[-1], self.dtype, name='conv')(
          x_BHWC, train=train)
    # PyTorch's default Conv2d init (U(+-1/sqrt(fan_in))), as in the
    # authors' and MT-UNet's code: logits start small, so the first
    # prediction is close to uniform. A fan-out Kaiming init on this
    # 1-channel output gives logits with std ~3-5, a near one-hot first
    # prediction and a first KL of tens of nats.
    s_BHW = ops.Conv(1, (1, 1), use_bias=True, dtype=self.dtype,
                     kernel_init=nn.initializers.variance_scaling(
                         1 / 3, 'fan_in', 'uniform'), name='out')(
                             x_BHWC)[..., 0]
    return saliency_log_softmax(s_BHW)


def saliency_log_softmax(s_BHW: jax.Array) -> jax.Array:
  """Log-softmax over all H*W pixels of each image, in float32."""
  b, h, w = s_BHW.shape
  return jax.nn.log_softmax(
      s_BHW.astype(jnp.float32).reshape(b, h * w), axis=-1).reshape(b, h, w)


def resize_to(x_BHWC: jax.Array, hw: tuple[int, int]) -> jax.Array:
  """Brings a map to grid `hw`: exact nearest x2 when possible, else resize."""
  src = x_BHWC.shape[1:3]
  if tuple(src) == tuple(hw):
    return x_BHWC
  if (2 * src[0], 2 * src[1]) == tuple(hw):
    return upsample2x(x_BHWC)
  return jax.image.resize(x_BHWC, (x_BHWC.shape[0], *hw, x_BHWC.shape[-1]),
                          method='nearest')


class Model(nn.Module):
  """UNet / Res_SE-UNet saliency predictor returning `(logp_BHW, out)`.

  Attributes:
    num_classes: unused (no classifier); kept for the registry contract.
    variant: 'full', 'tiny' (plain UNet) or 'res_se', 'res_se_tiny'.
    in_chans: input channels (1 for CXRs).
    dtype: compute dtype.
    inject_channels: channels of the external map passed as `inject`; 0 means
      no injection. Checked against the map so configs fail loudly.
    inject_features: width of the injection conv; None = widths[-2] (512).
    inject_gate: multiply the injected features by a learned scalar that
      starts at 0 (an option of ours; False, the default, is the authors'
      plain concatenation).
    head_conv: keep the conv3x3-BN-ReLU before the 1x1 output conv.
    se_reduction: SE bottleneck ratio (16).

  `logits` is the log-softmax over all H*W pixels, shape (B, H, W); `out` has
  'bottleneck' (B, H/16, W/16, widths[-1]), 'decoder' (the decoder level
  outputs from coarse to fine; the last is the full-resolution 64-channel
  map) and 'saliency_logp' (= logits).
  """
  num_classes: int | None = None
  variant: str = 'full'
  in_chans: int = 1
  dtype: Dtype = jnp.float32
  inject_channels: int = 0
  inject_features: int | None = None
  head_conv: bool = True
  se_reduction: int = 16
  inject_gate: bool = False

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, *, train: bool = False,
               inject: jax.Array | None = None
               ) -> tuple[jax.Array, dict[str, Any]]:
    widths, block = variant_cfg(self.variant)
    check_input(x_BHWC, len(widths), self.in_chans)
    skips, bottleneck = Encoder(widths, block, self.se_reduction, self.dtype,
                                name='encoder')(
                                    x_BHWC.astype(self.dtype), train=train)
    out: dict[str, Any] = {'bottleneck': bottleneck}
    x = bottleneck
    if self.inject_channels:
      if inject is None:
        raise ValueError(f'UNet built with inject_channels='
                         f'{self.inject_channels} needs an `inject` map')
      if inject.shape[-1] != self.inject_channels:
        raise ValueError(f'inject has {inject.shape[-1]} channels, model '
                         f'expects inject_channels={self.inject_channels}')
      inj = resize_to(inject.astype(self.dtype), bottleneck.shape[1:3])
      inj = ConvBNReLU(self.inject_features or widths[-2], self.dtype,
                       name='inject')(inj, train=train)
      if self.inject_gate:
        # An option of ours, not the authors': a learned scalar gate, zero at
        # init, so the decoder starts as the plain Res_SE-UNet's.
        gate = self.param('inject_gate', nn.initializers.zeros, ())
        inj = inj * gate.astype(inj.dtype)
      out['inject'] = inj
      x = jnp.concatenate([x, inj], axis=-1)
    elif inject is not None:
      raise ValueError('`inject` given but the model has inject_channels=0')
    out['decoder'] = Decoder(widths, self.dtype, name='decoder')(
        x, skips, train=train)
    logp_BHW = SaliencyHead(self.head_conv, self.dtype, name='head')(
        out['decoder'][-1], train=train)
    out['saliency_logp'] = logp_BHW
    return logp_BHW, out


def check_input(x_BHWC: jax.Array, levels: int, in_chans: int) -> None:
  """Raises unless x is (B, H, W, in_chans), H and W divisible by 2^(L-1)."""
  f = 2 ** (levels - 1)
  if x_BHWC.ndim != 4 or x_BHWC.shape[1] % f or x_BHWC.shape[2] % f:
    raise ValueError(f'UNet input must be (B, H, W, C) with H, W divisible '
                     f'by {f}; got {x_BHWC.shape}')
  if x_BHWC.shape[-1] != in_chans:
    raise ValueError(f'UNet expects {in_chans} input channels (field '
                     f'in_chans), got input of shape {x_BHWC.shape}')
