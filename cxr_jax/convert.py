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
import re
from typing import Any

from absl import app
from absl import flags
import numpy as np
import safetensors.numpy

from cxr_jax import ckpt
from cxr_jax import models
from cxr_jax import weights
from cxr_jax.models import layers

_TORCH_EXTS = ('.pth', '.pt', '.bin')
_WRAPPERS = ('state_dict', 'model', 'model_state_dict', 'module')
_ZIP, _PICKLE = b'PK\x03\x04', b'\x80'  # torch.save's zip; a bare pickle
_SAFE_SAVE = ('save the weights alone, where the file came from: '
              "torch.save(model.state_dict(), 'weights.pth'), or "
              'safetensors.torch.save_file(model.state_dict(), '
              "'weights.safetensors')")


class WeightFileError(ValueError):
  """A weight file that cannot or will not be read; names the file."""


def _unwrap(obj: Any, path: str) -> Mapping[str, Any]:
  """Finds the tensor dict inside common checkpoint wrappers."""
  while isinstance(obj, Mapping):
    wrapped = [k for k in _WRAPPERS if isinstance(obj.get(k), Mapping)]
    if not wrapped:
      return obj
    obj = obj[wrapped[0]]
  raise WeightFileError(f'{path}: no state dict found (got '
                        f'{type(obj).__name__})')


def _safetensors_problem(path: str) -> str:
  """What is wrong with a file safetensors cannot read, from its bytes."""
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    head = f.read(8)
    n = int.from_bytes(head, 'little') if len(head) == 8 else 0
    header = f.read(n) if 0 < n <= size - 8 else b''
  if size == 0:
    return 'the file is empty'
  if head.startswith((_ZIP, _PICKLE)):
    return ('it is a torch.save file (a pickle), not safetensors; name it '
            '.pth to read it as one')
  if len(head) < 8 or (n > size - 8 and n < 100 << 20):
    return (f'it is truncated ({size} bytes, shorter than its header); '
            'download or copy it again')
  if not header:
    return 'it does not start with a safetensors header'
  try:
    ends = [t['data_offsets'][1] for k, t in json.loads(header).items()
            if k != '__metadata__']
  except (ValueError, KeyError, TypeError, AttributeError):
    return 'its safetensors header is not valid JSON with data_offsets'
  need = 8 + n + max(ends, default=0)
  if need > size:
    return (f'it is truncated ({size} bytes, its tensors need {need}); '
            'download or copy it again')
  return 'it is not a valid safetensors file'


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  try:
    return safetensors.numpy.load_file(path)
  except Exception as e:  # pylint: disable=broad-except
    raise WeightFileError(f'{path}: cannot read the weights: '
                          f'{_safetensors_problem(path)} (safetensors: '
                          f'{str(e).strip()}).') from None


def _torch_load_error(path: str, e: Exception) -> WeightFileError:
  """A WeightFileError saying why torch.load(weights_only=True) failed."""
  text = str(e)
  if 'Weights only load failed' in text and 'Unsupported global' in text:
    found = re.search(r'GLOBAL ([\w.]+)', text)
    what = f' ({found.group(1)})' if found else ''
    return WeightFileError(
        f'{path}: the file contains pickled Python code or objects{what} '
        'and will not be loaded: unpickling it could run arbitrary code. To '
        f'get a safe file, {_SAFE_SAVE}.')
  with open(path, 'rb') as f:
    head = f.read(4)
  if not head.startswith((_ZIP, _PICKLE)):
    return WeightFileError(
        f'{path}: not a torch.save file (neither a zip archive nor a '
        'pickle); a .safetensors file needs that extension.')
  return WeightFileError(
      f'{path}: cannot read the weights: the file is truncated or corrupt '
      f'({ckpt.short_error(e, 120)}); download or copy it again.')


def _read_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'{path}: install torch to read .pth, or convert it to '
                      '.safetensors') from e
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise _torch_load_error(path, e) from None
  sd = {}
  for k, v in _unwrap(obj, path).items():
    if not isinstance(v, torch.Tensor):
      raise WeightFileError(f'{path}: entry {k!r} is a {type(v).__name__}, '
                            'not a tensor')
    v = v.detach()
    if v.dtype == torch.bfloat16:
      v = v.float()
    sd[k] = v.numpy()
  return sd


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a torch state dict as {name: numpy array}.

  `.safetensors` files are read with `safetensors.numpy` (no torch needed);
  `.pth/.pt/.bin` need torch and are read with `weights_only=True`, so no
  arbitrary object is ever unpickled. Unwraps {'state_dict': ...} /
  {'model': ...} checkpoints and strips a DataParallel 'module.' prefix. A
  file that cannot or will not be read is a `WeightFileError` naming it and
  saying why.
  """
  path = os.fspath(path)
  if not path.endswith(('.safetensors',) + _TORCH_EXTS):
    raise WeightFileError(f'{path}: unknown weight format; expected '
                          f'.safetensors, {", ".join(_TORCH_EXTS)}')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such weight file')
  if path.endswith('.safetensors'):
    sd = _read_safetensors(path)
  else:
    sd = _read_torch(path)
  if sd and all(k.startswith('module.') for k in sd):
    sd = {k[len('module.'):]: v for k, v in sd.items()}
  return dict(sd)


def convert(model_name: str, src: str) -> dict[str, Any]:
  """Converts the weights in `src` for the registered model `model_name`;
  a tensor that does not fit raises KeyError/ValueError naming `src`."""
  module = models.family(model_name)
  sd = load_state_dict(src)
  try:
    return module.convert_torch(sd, variant=models.variant(model_name))
  except (KeyError, ValueError) as e:
    msg = e.args[0] if e.args else str(e)
    raise type(e)(f'{src} as {model_name}: {msg}') from None


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
