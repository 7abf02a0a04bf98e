"""Convert torchvision/timm ImageNet weights to Flax variables (CLI + readers).

One model:

  python -m cxr_jax.convert --model=resnet50 --src=resnet50-0676ba61.pth \
      --out=/weights/resnet50

Every model the studies need (`STUDY_MODELS`: vgg16, vgg19, resnet18/34/50/
101, vit_s16/b16/l16, densenet201, inception_resnet_v2):

  python -m cxr_jax.convert --all --src_dir=/downloads --out_dir=/weights

writes `/weights/<model>/` for each, the folders Study A's `init_dir` and
`config.init.path` expect. `--src_dir` takes one or more folders
(comma-separated), searched in order; in each, a model's file is found by the
glob patterns of `source_patterns`. The standard downloads, in one folder:

  /downloads/
    vgg16-397923af.pth
    vgg19-dcbb9e9d.pth
    resnet18-f37072fd.pth
    resnet34-b627a593.pth
    resnet50-0676ba61.pth
    resnet101-63fe2227.pth
    densenet201-c1103571.pth
    vit_small_patch16_224.augreg_in21k_ft_in1k/model.safetensors
    vit_base_patch16_224.augreg2_in21k_ft_in1k/model.safetensors
    vit_large_patch16_224.augreg_in21k_ft_in1k/model.safetensors
    inception_resnet_v2.tf_in1k/model.safetensors

torchvision files keep their published names, `<arch>-<hash>.pth` (any hash,
e.g. the IMAGENET1K_V2 `resnet50-11ad3fa6.pth`; also `<arch>.pth` or
`<arch>.safetensors`): torch hub's cache, ~/.cache/torch/hub/checkpoints,
has this layout. timm files are the Hugging Face hub's `model.safetensors` in
a folder named after the timm model (any `.<tag>`, or none), a flat
`<timm name>[.<tag>].safetensors`, or the hub cache's
`models--timm--<name>[.<tag>]/snapshots/<hash>/model.safetensors`, so
`--src_dir=~/.cache/torch/hub/checkpoints,~/.cache/huggingface/hub` works.
Where several files match, the first in search order is used and named.

It first lists each model's patterns and the file found (or MISSING), then
converts what it found; a missing or unreadable file leaves the others
converted and makes the exit status 1.

Each output folder holds the registered model's full variables tree
(original 1000-class head and 3 input channels) in the converted-weights
format of `cxr_jax/weights.py` (variables/ plus meta.json with the model
name, source path and sha256), which also fits the tree to a model with
another head or channel count. `.safetensors` files are read with
`safetensors.numpy` (no torch needed); `.pth/.pt/.bin` need torch and are
read with `weights_only=True`, so no arbitrary object is ever unpickled. A
file that cannot or will not be read is a `WeightFileError` naming it and
saying why.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import glob
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


# --all: where each model's ImageNet weights come from. torchvision files keep
# their published names, `<arch>-<hash>.pth` (any hash); timm files are the
# Hugging Face hub's `model.safetensors` in a folder named after the timm
# model (with or without its `.<tag>`, or inside the hub cache's
# `models--timm--<name>/snapshots/<hash>/`), or a flat `<name>[.<tag>]`
# `.safetensors`.
TORCHVISION = {'vgg16': 'vgg16-397923af.pth', 'vgg19': 'vgg19-dcbb9e9d.pth',
               'resnet18': 'resnet18-f37072fd.pth',
               'resnet34': 'resnet34-b627a593.pth',
               'resnet50': 'resnet50-0676ba61.pth',
               'resnet101': 'resnet101-63fe2227.pth',
               'densenet121': 'densenet121-a639ec97.pth',
               'densenet201': 'densenet201-c1103571.pth'}
TIMM = {'vit_s16': 'vit_small_patch16_224.augreg_in21k_ft_in1k',
        'vit_b16': 'vit_base_patch16_224.augreg2_in21k_ft_in1k',
        'vit_l16': 'vit_large_patch16_224.augreg_in21k_ft_in1k',
        'inception_resnet_v2': 'inception_resnet_v2.tf_in1k'}
# The models the studies initialise from ImageNet (Study A: `init_dir/<model>`;
# Study B: DenseNet-201 and Inception-ResNet-v2).
STUDY_MODELS = ('vgg16', 'vgg19', 'resnet18', 'resnet34', 'resnet50',
                'resnet101', 'vit_s16', 'vit_b16', 'vit_l16', 'densenet201',
                'inception_resnet_v2')


def source_patterns(name: str) -> tuple[str, ...]:
  """Glob patterns (relative to a source folder) of `name`'s weight file."""
  if name in TORCHVISION:
    arch = TORCHVISION[name].split('-')[0]
    return (f'{arch}-*.pth', f'{arch}.pth', f'{arch}.safetensors')
  if name in TIMM:
    t = TIMM[name].split('.')[0]
    return tuple(f'{d}/model.safetensors' for d in (
        t, f'{t}.*', f'models--timm--{t}/snapshots/*',
        f'models--timm--{t}.*/snapshots/*')) + (
            f'{t}.safetensors', f'{t}.*.safetensors')
  raise ValueError(f'{name!r} has no published ImageNet weights to convert; '
                   f'--all knows {", ".join(sorted({**TORCHVISION, **TIMM}))}')


def _published(name: str) -> str:
  if name in TORCHVISION:
    return TORCHVISION[name]
  return f'{TIMM[name]}/model.safetensors'


def find_sources(src_dirs: Sequence[str], name: str) -> list[str]:
  """The files in `src_dirs` matching `name`'s patterns, in search order."""
  found = []
  for d in src_dirs:
    for pattern in source_patterns(name):
      found += sorted(glob.glob(os.path.join(glob.escape(d), pattern)))
  return list(dict.fromkeys(found))


def convert_all(src_dirs: Sequence[str], out_dir: str,
                names: Sequence[str] = STUDY_MODELS,
                log: Callable[[str], None] = print) -> list[str]:
  """Converts every model of `names` found in `src_dirs` to
  `out_dir/<name>`; returns the names left unconverted (no file, or a file
  that failed), after saying why for each."""
  src_dirs = [os.path.expanduser(d) for d in src_dirs]
  for d in src_dirs:
    if not os.path.isdir(d):
      raise FileNotFoundError(f'--src_dir {d}: no such folder')
  sources = {name: find_sources(src_dirs, name) for name in names}
  log(f'Expected weight files (the published name, or any matching file) in '
      f'{", ".join(src_dirs)}:')
  for name in names:
    found = (f'found {sources[name][0]}' if sources[name] else
             f'MISSING (looked for {", ".join(source_patterns(name))})')
    log(f'  {name:20s} {_published(name):62s} {found}')
  failed = [n for n in names if not sources[n]]
  for name in names:
    if not sources[name]:
      continue
    src, *others = sources[name]
    if others:
      log(f'{name}: {len(others) + 1} files match; using {src}')
    try:
      variables = convert_to_dir(name, src, os.path.join(out_dir, name))
    except (KeyError, ValueError, OSError, ImportError) as e:
      log(f'{name}: FAILED: {e.args[0] if e.args else e}')
      failed.append(name)
      continue
    n = sum(np.size(v) for v in layers.flatten(variables).values())
    log(f'{name}: {n:,} values from {src} -> {os.path.join(out_dir, name)}')
  missing = [n for n in names if not sources[n]]
  if missing:
    log(f'Missing {len(missing)} of {len(names)}: {", ".join(missing)} '
        '(no file matching the patterns above).')
  log(f'Converted {len(names) - len(failed)} of {len(names)} to {out_dir}.')
  return failed


def _define_flags() -> None:
  """CLI flags, defined only when run as a script (no global-flag clashes)."""
  flags.DEFINE_string('model', None, 'registered model name, e.g. resnet50 '
                      '(cxr_jax.models.names()).')
  flags.DEFINE_string('src', None, 'torch weights: .safetensors, .pth, .pt '
                      'or .bin.')
  flags.DEFINE_string('out', None, 'output directory.')
  flags.DEFINE_bool('all', False, 'convert every model the studies need '
                    '(--models) from the files in --src_dir to '
                    '--out_dir/<model>.')
  flags.DEFINE_list('src_dir', [], '--all: folders searched for the weight '
                    'files, in order (see the module docstring).')
  flags.DEFINE_string('out_dir', None, '--all: output folder.')
  flags.DEFINE_list('models', list(STUDY_MODELS), '--all: models to convert.')


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  fl = flags.FLAGS
  if fl.all:
    if fl.model or fl.src or fl.out or not (fl.src_dir and fl.out_dir):
      raise app.UsageError('--all takes --src_dir and --out_dir (not '
                           '--model, --src, --out)')
    return 1 if convert_all(fl.src_dir, fl.out_dir, fl.models) else 0
  if not (fl.model and fl.src and fl.out):
    raise app.UsageError('give --model, --src and --out (or --all, '
                         '--src_dir, --out_dir)')
  variables = convert_to_dir(fl.model, fl.src, fl.out)
  n = sum(np.size(v) for v in layers.flatten(variables).values())
  print(f'{fl.model}: {n:,} values from {fl.src} -> '
        f'{os.path.abspath(fl.out)}')
  return 0


if __name__ == '__main__':
  _define_flags()
  app.run(main)
