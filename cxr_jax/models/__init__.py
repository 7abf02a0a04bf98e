"""Model registry: every network the studies use, built by name.

`get_model('resnet50', num_classes=2, in_chans=1)` imports only the family it
needs. Names map to (family module, variant); each family module defines
`Model(num_classes, *, variant, in_chans=3, dtype=jnp.float32, ...)` whose
`__call__(x_BHWC, *, train=False)` returns `(logits, out)`; `out['features']`
is the family's Grad-CAM target activation (BHWC), registered with
`self.perturb('features', ...)` so that CAMs differentiate with respect to it
without back-propagating into the parameters.
"""
from __future__ import annotations

import importlib

import flax.linen as nn

# name -> (module under cxr_jax.models, variant)
_MODELS = {
    'vgg16': ('vgg', '16'), 'vgg19': ('vgg', '19'), 'vgg_tiny': ('vgg', 'tiny'),
    'resnet18': ('resnet', '18'), 'resnet34': ('resnet', '34'),
    'resnet50': ('resnet', '50'), 'resnet101': ('resnet', '101'),
    'resnet_tiny': ('resnet', 'tiny'),
    'vit_s16': ('vit', 's16'), 'vit_b16': ('vit', 'b16'),
    'vit_l16': ('vit', 'l16'), 'vit_tiny': ('vit', 'tiny'),
    'densenet121': ('densenet', '121'), 'densenet201': ('densenet', '201'),
    'densenet_tiny': ('densenet', 'tiny'),
    'inception_resnet_v2': ('inception_resnet_v2', 'full'),
    'inception_resnet_v2_tiny': ('inception_resnet_v2', 'tiny'),
    'unet': ('unet', 'full'), 'unet_tiny': ('unet', 'tiny'),
    'res_se_unet': ('unet', 'res_se'), 'res_se_unet_tiny': ('unet', 'res_se_tiny'),
    'cooperative': ('cooperative', 'full'),
    'cooperative_tiny': ('cooperative', 'tiny'),
    'mtunet': ('mtunet', 'full'), 'mtunet_tiny': ('mtunet', 'tiny'),
    'gazegnn': ('gazegnn', 'full'), 'gazegnn_tiny': ('gazegnn', 'tiny'),
}


def names() -> list[str]:
  return sorted(_MODELS)


def family(name: str):
  """Returns the family module of a registered model name."""
  if name not in _MODELS:
    raise ValueError(f'Unknown model name {name!r} (config key '
                     f"'model.name'). Valid choices: {', '.join(names())}.")
  return importlib.import_module(f'cxr_jax.models.{_MODELS[name][0]}')


def variant(name: str) -> str:
  family(name)
  return _MODELS[name][1]


def get_model(name: str, **kwargs) -> nn.Module:
  """Builds a registered model; kwargs go to the family's `Model`."""
  module = family(name)
  try:
    return module.Model(variant=_MODELS[name][1], **kwargs)
  except TypeError as e:
    raise TypeError(f'model {name!r}: {e}') from e
