"""The dual-encoder multi-task UNet of Study B (thesis chapter 4).

Three top-level submodules, named so that freezing patterns read naturally
(`'densenet/.*'`, `'unet/.*'`, `'fusion/.*'`):

* `densenet`: DenseNet-201 ('tiny' for tests) with its own 3-class head,
  trained in stage 1 (triplet pretraining then cross-entropy);
* `unet`: a Res_SE-UNet whose first decoder level also receives a DenseNet
  feature map (`densenet_feature`, default `'denseblock4'`, 1/32 of the input,
  as in the authors' released code: nearest x2 up-conv to 512 channels, then
  concatenated with the 1/16 bottleneck); trained in stage 2 on gaze maps;
* `fusion`: the multi-scale feature-fusion classifier on
  concat[GAP(ReLU(DenseNet norm5)), GAP(last decoder map)] -> Dense 64 ->
  Dropout 0.25 -> ReLU -> Dense 3 (the authors' head); trained in stage 3.

`densenet_feature='denseblock3'` is the thesis's text reading ("all layers
before the last dense block"): the denseblock3 output, at 1/16 already, is
passed through the injection conv (no up-sampling) and, pooled, is the
fusion classifier's DenseNet input in place of GAP(ReLU(norm5)).

A submodule that a training stage freezes (the DenseNet in stages 2 and 3)
runs in inference mode by the trainer's freezing contract
(`cxr_jax.training.freezing`), so its BatchNorm statistics stay those of
stage 1 while the other submodules train.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.models import densenet
from cxr_jax.models import unet

Dtype = Any

# variant -> (DenseNet variant, UNet variant)
VARIANTS = {'full': ('201', 'res_se'), 'tiny': ('tiny', 'res_se_tiny'),
            'small': ('small', 'res_se_tiny')}  # small: the demo's
DENSENET_FEATURES = ('denseblock3', 'denseblock4')


class FusionClassifier(nn.Module):
  """concat of pooled vectors -> Dense -> Dropout -> ReLU -> Dense.

  The layer order (dropout before the ReLU) follows the MT-UNet / authors'
  `classification_head`.
  """
  num_classes: int = 3
  hidden: int = 64
  dropout_rate: float = 0.25
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, *vectors_BC: jax.Array, train: bool = False) -> jax.Array:
    x = jnp.concatenate([v.astype(self.dtype) for v in vectors_BC], axis=-1)
    x = nn.Dense(self.hidden, dtype=self.dtype, name='hidden')(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    x = nn.relu(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x)


class Model(nn.Module):
  """DenseNet + Res_SE-UNet + fusion classifier returning `(logits, out)`.

  Attributes:
    num_classes: classes of both the fusion classifier and the DenseNet head.
    variant: 'full' (DenseNet-201 + Res_SE-UNet) or 'tiny'.
    in_chans: input channels, for both encoders (1 for CXRs).
    dtype: compute dtype.
    densenet_feature: the DenseNet feature the UNet decoder and the fusion
      classifier receive: 'denseblock4' (authors' code, default; the
      classifier pools ReLU(norm5)) or 'denseblock3' (thesis text: the
      encoder is every layer before the last dense block; the classifier
      pools the denseblock3 output).
    dropout_rate: dropout of the fusion classifier.
    inject_gate: zero-initialised learned gate on the injected DenseNet
      features (an option of ours; False, the default, is the authors' plain
      concatenation).

  `out`: 'saliency_logp' (B, H, W) log-softmax over pixels, 'densenet_logits'
  (B, num_classes), 'features' (the DenseNet's Grad-CAM target, perturbed
  inside the `densenet` submodule), 'embedding' (GAP of ReLU(norm5), for the
  triplet loss), 'pre_logits' (the fusion classifier input), plus 'densenet'
  and 'unet' (the submodules' own `out` dicts).
  """
  num_classes: int = 3
  variant: str = 'full'
  in_chans: int = 1
  dtype: Dtype = jnp.float32
  densenet_feature: str = 'denseblock4'
  dropout_rate: float = 0.25
  inject_gate: bool = False

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, *, train: bool = False
               ) -> tuple[jax.Array, dict[str, Any]]:
    if self.variant not in VARIANTS:
      raise ValueError(f'Unknown cooperative variant {self.variant!r}; '
                       f'valid: {sorted(VARIANTS)}')
    if self.densenet_feature not in DENSENET_FEATURES:
      raise ValueError(f'densenet_feature={self.densenet_feature!r}; valid: '
                       f'{DENSENET_FEATURES}')
    dn_variant, unet_variant = VARIANTS[self.variant]

    dn_logits, dn_out = densenet.Model(
        num_classes=self.num_classes, variant=dn_variant,
        in_chans=self.in_chans, dtype=self.dtype, name='densenet')(
            x_BHWC, train=train)
    inject = dn_out[self.densenet_feature]
    sal_logp, unet_out = unet.Model(
        variant=unet_variant, in_chans=self.in_chans, dtype=self.dtype,
        inject_channels=inject.shape[-1], inject_gate=self.inject_gate,
        name='unet')(
            x_BHWC, train=train, inject=inject)

    # GAP(ReLU(norm5)): the DenseNet's pooled vector, computed from its
    # (perturbed) Grad-CAM target so that CAMs of these logits see it.
    embedding_BC = dn_out['pre_logits']
    # The fusion classifier reads the same DenseNet feature as the decoder:
    # after the last dense block (its pooled, normalised vector), or the
    # thesis text's encoder, everything before that block (denseblock3).
    encoder_BC = (embedding_BC if self.densenet_feature == 'denseblock4'
                  else jnp.mean(inject, axis=(1, 2)))
    decoder_BC = jnp.mean(unet_out['decoder'][-1], axis=(1, 2))
    logits = FusionClassifier(self.num_classes, dropout_rate=self.dropout_rate,
                              dtype=self.dtype, name='fusion')(
                                  encoder_BC, decoder_BC,
                                  train=train)
    out = {
        'saliency_logp': sal_logp,
        'densenet_logits': dn_logits,
        'features': dn_out['features'],
        'embedding': embedding_BC,
        'pre_logits': jnp.concatenate([encoder_BC, decoder_BC], axis=-1),
        'densenet': dn_out,
        'unet': unet_out,
    }
    return logits, out


def convert_torch(state_dict: Mapping[str, np.ndarray], *,
                  variant: str) -> dict[str, Any]:
  """torchvision DenseNet state dict -> the `densenet` subtree of this model.

  Only the DenseNet encoder has public torch weights (ImageNet DenseNet-201);
  the Res_SE-UNet and the fusion classifier start from scratch. The result is
  `{'params': {'densenet': ...}, 'batch_stats': {'densenet': ...}}`, to be
  merged into an initialised tree (the other submodules keep their values).
  Unmatched or mis-shaped tensors raise as in `densenet.convert_torch`.
  """
  if variant not in VARIANTS:
    raise ValueError(f'Unknown cooperative variant {variant!r}; valid: '
                     f'{sorted(VARIANTS)}')
  tree = densenet.convert_torch(state_dict, variant=VARIANTS[variant][0])
  return {collection: {'densenet': sub} for collection, sub in tree.items()}
