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
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

# name -> (module under cxr_jax.models, variant)
_MODELS = {
    'vgg16': ('vgg', '16'), 'vgg19': ('vgg', '19'), 'vgg_tiny': ('vgg', 'tiny'),
    'resnet18': ('resnet', '18'), 'resnet34': ('resnet', '34'),
    'resnet50': ('resnet', '50'), 'resnet101': ('resnet', '101'),
    'resnet_tiny': ('resnet', 'tiny'),
    'vit_s16': ('vit', 's16'), 'vit_b16': ('vit', 'b16'),
    'vit_l16': ('vit', 'l16'), 'vit_tiny': ('vit', 'tiny'),
    'densenet121': ('densenet', '121'), 'densenet201': ('densenet', '201'),
    'densenet_tiny': ('densenet', 'tiny'), 'densenet_small': ('densenet', 'small'),
    'inception_resnet_v2': ('inception_resnet_v2', 'full'),
    'inception_resnet_v2_tiny': ('inception_resnet_v2', 'tiny'),
    'unet': ('unet', 'full'), 'unet_tiny': ('unet', 'tiny'),
    'res_se_unet': ('unet', 'res_se'), 'res_se_unet_tiny': ('unet', 'res_se_tiny'),
    'cooperative': ('cooperative', 'full'),
    'cooperative_tiny': ('cooperative', 'tiny'),
    'cooperative_small': ('cooperative', 'small'),
    'mtunet': ('mtunet', 'full'), 'mtunet_tiny': ('mtunet', 'tiny'),
    'gazegnn': ('gazegnn', 'full'), 'gazegnn_tiny': ('gazegnn', 'tiny'),
}


# Registered models with published ImageNet weights (torchvision or timm)
# that `python -m cxr_jax.convert` converts: what `init_dir` can hold.
IMAGENET_PRETRAINED = ('vgg16', 'vgg19', 'resnet18', 'resnet34', 'resnet50',
                       'resnet101', 'vit_s16', 'vit_b16', 'vit_l16',
                       'densenet121', 'densenet201', 'inception_resnet_v2')


def names() -> list[str]:
  """Every registered model name, sorted."""
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


def build(model_cfg: Mapping[str, Any]) -> nn.Module:
  """Builds `config.model`: its `name` plus the family's keyword arguments
  (a `dtype` string such as 'bfloat16' is resolved to the numpy dtype)."""
  kw = dict(model_cfg)
  name = kw.pop('name')
  if 'dtype' in kw:
    kw['dtype'] = jnp.dtype(kw['dtype'])
  return get_model(name, **kw)


def _host_cpu() -> jax.Device | None:
  try:  # this process's own CPU (jax.devices() lists every process's)
    return jax.local_devices(backend='cpu')[0]
  except RuntimeError:  # JAX_PLATFORMS without 'cpu'
    return None


def init_variables(model: nn.Module, rng: jax.Array, *args, **kwargs
                   ) -> dict[str, Any]:
  """`model.init({'params': rng, 'dropout': rng}, *args, **kwargs)`, jitted.

  The init program (thousands of threefry draws) always runs on the host CPU,
  compiled with XLA's backend optimisations off: it runs once, so its speed
  does not matter, and it compiles several times faster. On a GPU this also
  skips the accelerator compile of the init program and makes the initial
  parameters the same bits on every platform. Values are deterministic and
  differ from an optimised compile's by at most one float32 ulp (the
  initialisers' erf_inv). The result is put on the default device (the
  trainer then moves it onto its shardings).
  """
  arrays = {k: v for k, v in kwargs.items() if hasattr(v, 'shape')}
  static = {k: v for k, v in kwargs.items() if k not in arrays}
  init = jax.jit(lambda r, a, k: model.init({'params': r, 'dropout': r}, *a,
                                            **k, **static))
  cpu = _host_cpu()
  if cpu is None:  # no host platform: init where the arrays are
    return init(rng, args, arrays)
  host = jax.device_put((rng, args, arrays), cpu)
  out = init.lower(*host).compile(
      compiler_options={'xla_backend_optimization_level': 0})(*host)
  default = jax.local_devices()[0]
  return out if default == cpu else jax.device_put(out, default)
