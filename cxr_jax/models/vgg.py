"""torchvision VGG16 / VGG19 (configurations D and E, no BatchNorm) in Flax.

Layer for layer `torchvision.models.vgg16/vgg19`: 3x3 convs with pad 1 and
ReLU, 2x2/2 max-pools, `AdaptiveAvgPool2d((7, 7))` (exact torch bins; the
identity at 224 px), flatten in torch's channels-first order (so converted
first classifier weights line up), then Linear-ReLU-Dropout(0.5)-Linear-ReLU-
Dropout(0.5)-Linear. 'tiny' (widths 8/16/32/32/32, hidden 64, one conv per
stage but two in the last) is for tests.

Grad-CAM target (`out['features']`): the thesis says "last conv layer". By
default (`cam_layer='relu'`) we take the output of the last conv *after its
ReLU and before the final max-pool* (relu5_3 in VGG16), i.e. torchvision's
`model.features[-2]` (14x14 at 224 px): the layer of the original Grad-CAM
code, what `target_layers=[model.features[-1]]` users of pytorch-grad-cam
get up to the max-pool, at twice the resolution, and the activation
Grad-CAM's ReLU(weighted sum) was defined on. `cam_layer='conv'` takes the
same conv's output before the ReLU (the literal "convolution layer"): the
map differs by the ReLU, its gradient by the ReLU's mask.

Flax tree: conv{stage}_{k} (stage 1..5, k 1..), fc1, fc2 (torch classifier.0
and .3) and head (classifier.6; named 'head' as in every family here).
`out`: 'block1'..'block5' (after each max-pool), 'features', 'pooled' (after
the adaptive pool, BHWC), 'pre_logits' (input of the head, 4096-d).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.models import layers
from cxr_jax.models import ops

# variant -> (convs per stage, stage widths, hidden width of the classifier)
_VARIANTS = {
    '16': ((2, 2, 3, 3, 3), (64, 128, 256, 512, 512), 4096),
    '19': ((2, 2, 4, 4, 4), (64, 128, 256, 512, 512), 4096),
    'tiny': ((1, 1, 1, 1, 2), (8, 16, 32, 32, 32), 64),
}
_POOL = 7  # torchvision's AdaptiveAvgPool2d((7, 7))
_CAM_LAYERS = ('relu', 'conv')  # Grad-CAM target: last conv after / before ReLU


def _spec(variant: str):
  return layers.variant_spec('VGG', _VARIANTS, variant)


def _adaptive_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) averaging matrix of torch's adaptive_avg_pool along 1 axis.

  Bin i covers [floor(i * n_in / n_out), ceil((i + 1) * n_in / n_out)).
  """
  p = np.zeros((n_out, n_in), np.float32)
  for i in range(n_out):
    lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
    p[i, lo:hi] = 1. / (hi - lo)
  return p


def adaptive_avg_pool(x_BHWC: jax.Array, size: int) -> jax.Array:
  """torch `AdaptiveAvgPool2d((size, size))` on a BHWC array."""
  _, h, w, _ = x_BHWC.shape
  if (h, w) == (size, size):
    return x_BHWC
  ph = jnp.asarray(_adaptive_matrix(h, size), x_BHWC.dtype)
  pw = jnp.asarray(_adaptive_matrix(w, size), x_BHWC.dtype)
  return jnp.einsum('oh,bhwc,pw->bopc', ph, x_BHWC, pw,
                    precision=jax.lax.Precision.HIGHEST)


class Model(layers.Classifier):
  """torchvision VGG; see the module docstring.

  Attributes (beyond `layers.Classifier`'s):
    variant: '16', '19' or 'tiny'.
    dropout: dropout rate of the classifier (torchvision: 0.5), train only.
    cam_layer: the Grad-CAM target `out['features']`: 'relu' (default) =
      the last conv's ReLU output, 'conv' = that conv's output before it.
  """
  family: ClassVar[str] = 'VGG'
  variants: ClassVar[Mapping[str, Any]] = _VARIANTS
  variant: str = '16'
  dropout: float = 0.5
  cam_layer: str = 'relu'

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, *, train: bool = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    depths, widths, hidden = self.spec(x_BHWC)
    if self.cam_layer not in _CAM_LAYERS:
      raise ValueError(f'VGG cam_layer={self.cam_layer!r}; valid: '
                       f'{_CAM_LAYERS}.')
    out = {}

    def target(y: jax.Array, layer: str) -> jax.Array:
      """Registers `y` as the Grad-CAM target if it is the chosen layer."""
      if layer != self.cam_layer:
        return y
      out['features'] = y = self.perturb('features', y)
      return y

    x = x_BHWC.astype(self.dtype)
    for i, (depth, width) in enumerate(zip(depths, widths)):
      for k in range(depth):
        x = ops.Conv(width, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                     kernel_init=layers.conv_kernel_init,
                     name=f'conv{i + 1}_{k + 1}')(x)
        last = (i, k) == (len(depths) - 1, depth - 1)
        x = nn.relu(target(x, 'conv') if last else x)
      if i == len(depths) - 1:
        x = target(x, 'relu')
      x = ops.max_pool(x, (2, 2), (2, 2))
      out[f'block{i + 1}'] = x
    x = out['pooled'] = adaptive_avg_pool(x, _POOL)
    # torch flattens NCHW: channels first, so fc1's rows line up after
    # conversion.
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
    dense = lambda n, name: nn.Dense(
        n, dtype=self.dtype, kernel_init=nn.initializers.normal(0.01),
        name=name)
    for name in ('fc1', 'fc2'):
      x = nn.relu(dense(hidden, name)(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    out['pre_logits'] = x
    if self.num_classes is None:
      return x, out
    logits = out['logits'] = dense(self.num_classes, 'head')(x)
    return logits, out


def convert_torch(state_dict: Mapping[str, np.ndarray], *, variant: str
                  ) -> dict[str, Any]:
  """torchvision VGG state dict -> {'params': ...} (VGG has no batch stats).

  torch indices: `features.{n}` counts conv, ReLU and max-pool modules;
  `classifier.{0,3,6}` are the Linear layers. A state dict without
  `classifier.6.*` converts to a headless tree. Mismatches raise as
  `layers.torch_to_flax` says.
  """
  depths, _, _ = _spec(variant)
  names = {'classifier.0': 'fc1', 'classifier.3': 'fc2', 'classifier.6': 'head'}
  n = 0
  for i, depth in enumerate(depths):
    for k in range(depth):
      names[f'features.{n}'] = f'conv{i + 1}_{k + 1}'
      n += 2  # conv, ReLU
    n += 1  # max-pool
  num_classes, in_chans = layers.head_and_channels(
      state_dict, 'classifier.6.weight', 'features.0.weight')
  model = Model(num_classes, variant=variant, in_chans=in_chans)
  return layers.torch_to_flax(state_dict, lambda m: names.get(m, m), model,
                              jnp.zeros((1, 32, 32, in_chans)))
