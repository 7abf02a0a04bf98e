"""MT-UNet (Zhu et al. 2022): one UNet for gaze saliency and classification.

A plain UNet (widths 64..1024, 'tiny': 8..128; 1-channel input) whose
saliency head is the UNet head of `cxr_jax.models.unet`, plus a classifier on
concat[GAP(bottleneck e5), GAP(decoder level d2)] -> Dense 64 -> Dropout 0.25
-> ReLU -> Dense 3. "Decoder level 2" is `d2` in the reference code's naming
(`Up_conv2`), i.e. the last, full-resolution decoder map (64 channels).

The uncertainty weights are parameters of the model (as in the reference):
`log_sigma_cls` and `log_sigma_sal`, scalars initialised to 0, returned in
`out['log_sigmas']`. The trainer's `uncertainty_multitask` loss computes
L_cls / sigma_c^2 + log(sigma_c + 1) + L_sal / (2 sigma_s^2) + log(sigma_s + 1).

Grad-CAM target (`out['features']`): the bottleneck map, perturbed before the
decoder and the classifier read it.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxr_jax.models import unet
from cxr_jax.models.cooperative import FusionClassifier

Dtype = Any

VARIANTS = {'full': 'full', 'tiny': 'tiny'}  # -> UNet variant


class Model(nn.Module):
  """MT-UNet returning `(class_logits, out)`.

  Attributes:
    num_classes: classifier width (3).
    variant: 'full' or 'tiny'.
    in_chans: input channels (1).
    dtype: compute dtype.
    dropout_rate: classifier dropout (0.25).
    head_conv: keep the conv3x3-BN-ReLU of the saliency head.

  `out`: 'saliency_logp' (B, H, W), 'features' (perturbed bottleneck),
  'bottleneck', 'decoder', 'pre_logits', 'log_sigmas'.
  """
  num_classes: int = 3
  variant: str = 'full'
  in_chans: int = 1
  dtype: Dtype = jnp.float32
  dropout_rate: float = 0.25
  head_conv: bool = True

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, *, train: bool = False
               ) -> tuple[jax.Array, dict[str, Any]]:
    if self.variant not in VARIANTS:
      raise ValueError(f'Unknown MT-UNet variant {self.variant!r}; valid: '
                       f'{sorted(VARIANTS)}')
    widths, block = unet.variant_cfg(VARIANTS[self.variant])
    unet.check_input(x_BHWC, len(widths), self.in_chans)
    skips, bottleneck = unet.Encoder(widths, block, dtype=self.dtype,
                                     name='encoder')(
                                         x_BHWC.astype(self.dtype), train=train)
    bottleneck = self.perturb('features', bottleneck)
    decoder = unet.Decoder(widths, self.dtype, name='decoder')(
        bottleneck, skips, train=train)
    logp_BHW = unet.SaliencyHead(self.head_conv, self.dtype, name='head')(
        decoder[-1], train=train)
    pooled = [jnp.mean(bottleneck, axis=(1, 2)),
              jnp.mean(decoder[-1], axis=(1, 2))]
    logits = FusionClassifier(self.num_classes, dropout_rate=self.dropout_rate,
                              dtype=self.dtype, name='classifier')(
                                  *pooled, train=train)
    log_sigma_cls = self.param('log_sigma_cls', nn.initializers.zeros, (),
                               jnp.float32)
    log_sigma_sal = self.param('log_sigma_sal', nn.initializers.zeros, (),
                               jnp.float32)
    out = {
        'saliency_logp': logp_BHW,
        'features': bottleneck,
        'bottleneck': bottleneck,
        'decoder': decoder,
        'pre_logits': jnp.concatenate(pooled, axis=-1),
        'log_sigmas': (log_sigma_cls, log_sigma_sal),
    }
    return logits, out
