"""Convert torchvision/timm weights to Flax variables (library + CLI).

  python -m cxr_jax.convert --model=resnet50 --src=resnet50.pth --out=DIR

writes the registered model's full variables tree (original head and input
channels included) as a converted-weights folder (`cxr_jax/weights.py` owns
the format: DIR/variables plus DIR/meta.json with the model name, source path
and sha256 of the source). Fitting the tree to a model with another head or
channel count is also `cxr_jax/weights.py`'s job.

`.safetensors` files are read with `safetensors.numpy` (no torch needed);
`.pth/.pt/.bin` need torch and are read with `weights_only=True`, so no
arbitrary object is ever unpickled.
"""
from __future__ import annotations

from collections.abc import Mapping
import hashlib
import json
import os
from typing import Any

from absl import app
from absl import flags
import numpy as np
import safetensors.numpy

from cxr_jax import models
from cxr_jax import weights
from cxr_jax.models import layers

_TORCH_EXTS = ('.pth', '.pt', '.bin')
_WRAPPERS = ('state_dict', 'model', 'model_state_dict', 'module')


def _unwrap(obj: Any, path: str) -> Mapping[str, Any]:
  """Finds the tensor dict inside common checkpoint wrappers."""
  while isinstance(obj, Mapping):
    wrapped = [k for k in _WRAPPERS if isinstance(obj.get(k), Mapping)]
    if not wrapped:
      return obj
    obj = obj[wrapped[0]]
  raise ValueError(f'{path}: no state dict found (got {type(obj).__name__})')


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a torch state dict as {name: numpy array}.

  Unwraps {'state_dict': ...} / {'model': ...} checkpoints and strips a
  DataParallel 'module.' prefix.
  """
  path = os.fspath(path)
  if path.endswith('.safetensors'):
    sd = safetensors.numpy.load_file(path)
  elif path.endswith(_TORCH_EXTS):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f'{path}: install torch to read .pth, or convert it to '
                        '.safetensors') from e
    obj = torch.load(path, map_location='cpu', weights_only=True)
    sd = {}
    for k, v in _unwrap(obj, path).items():
      if not isinstance(v, torch.Tensor):
        raise ValueError(f'{path}: entry {k!r} is a {type(v).__name__}, '
                         'not a tensor')
      v = v.detach()
      if v.dtype == torch.bfloat16:
        v = v.float()
      sd[k] = v.numpy()
  else:
    raise ValueError(f'{path}: unknown weight format; expected .safetensors, '
                     f'{", ".join(_TORCH_EXTS)}')
  if sd and all(k.startswith('module.') for k in sd):
    sd = {k[len('module.'):]: v for k, v in sd.items()}
  return dict(sd)


def convert(model_name: str, src: str) -> dict[str, Any]:
  """Converts the weights in `src` for the registered model `model_name`."""
  module = models.family(model_name)
  return module.convert_torch(load_state_dict(src),
                              variant=models.variant(model_name))


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def convert_to_dir(model_name: str, src: str, out_dir: str) -> dict[str, Any]:
  """convert() + save() with a meta.json; returns the variables."""
  variables = convert(model_name, src)
  weights.save(variables, out_dir, meta={
      'model': model_name, 'source': os.path.abspath(src),
      'sha256': _sha256(src)})
  return variables


def _define_flags() -> None:
  """CLI flags, defined only when run as a script (no global-flag clashes)."""
  flags.DEFINE_string('model', None, 'registered model name, e.g. resnet50 '
                      '(cxr_jax.models.names()).')
  flags.DEFINE_string('src', None, 'torch weights: .safetensors, .pth, .pt '
                      'or .bin.')
  flags.DEFINE_string('out', None, 'output directory.')
  flags.mark_flags_as_required(['model', 'src', 'out'])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  fl = flags.FLAGS
  variables = convert_to_dir(fl.model, fl.src, fl.out)
  n = sum(np.size(v) for v in layers.flatten(variables).values())
  print(f'{fl.model}: {n:,} values from {fl.src} -> '
        f'{os.path.abspath(fl.out)}')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
