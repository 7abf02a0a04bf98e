"""The images a prediction run reads: finding them, and reading one.

`find(paths)` expands the command line's inputs: a folder is searched
recursively (hidden files and folders skipped) for DICOM (`.dcm`, `.dicom`,
or no extension and the DICOM preamble's 'DICM' magic), PNG and JPEG files
(extensions in any letter case); other files in a folder are not images and
are counted, not read. A file named on the command line is always read, so
an unsupported one is reported with its reason. Each input gets a `name`:
its path relative to the folder it was found in (the folder's own name
first when several inputs are given), or its file name; outputs are named
after it.

`read(path, data_cfg)` reads one file with the DICOM/PNG/JPEG reader of the
training data (`data.dicom.read_image`: MONOCHROME1, rescale, VOI,
BitsStored) and preprocesses it with the run's dataset's own
`preprocess_image(img, data_cfg)`, the function its dataset builder applies
to every training image, so the model sees exactly what it was trained on.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import ml_collections
import numpy as np

from cxr_jax.data import dataset_module
from cxr_jax.data import dicom

IMAGE_EXTENSIONS = ('.dcm', '.dicom', '.png', '.jpg', '.jpeg')
_DICOM_MAGIC_OFFSET = 128


@dataclasses.dataclass(frozen=True)
class Input:
  """One file to predict: its path and its output name ('/'-separated)."""
  path: str
  name: str


class BadInputError(ValueError):
  """A file that cannot be predicted, with its path and the reason."""

  def __init__(self, path: str, reason: str):
    super().__init__(f'{path}: {reason}')
    self.path, self.reason = path, reason


class NoInputsError(FileNotFoundError):
  """The inputs hold no image file at all."""


def is_dicom(path: str) -> bool:
  """Whether the file starts with the DICOM preamble and 'DICM' magic."""
  try:
    with open(path, 'rb') as f:
      head = f.read(_DICOM_MAGIC_OFFSET + 4)
  except OSError:
    return False
  return head[_DICOM_MAGIC_OFFSET:] == b'DICM'


def _is_image(path: str) -> bool:
  ext = os.path.splitext(path)[1].lower()
  return ext in IMAGE_EXTENSIONS or (ext == '' and is_dicom(path))


def _walk(folder: str) -> tuple[list[str], int]:
  """Image files under `folder` (sorted, relative) and how many other
  files were passed over."""
  found, other = [], 0
  for root, dirs, files in os.walk(folder):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    for f in sorted(files):
      if f.startswith('.'):
        continue
      path = os.path.join(root, f)
      if _is_image(path):
        found.append(os.path.relpath(path, folder))
      else:
        other += 1
  return found, other


def find(paths: Sequence[str]) -> tuple[list[Input], list[BadInputError],
                                        int]:
  """The inputs named by `paths` (files and folders), in order.

  Returns:
    (inputs, missing, passed_over): the files to predict (each once, names
    made unique with a '~k' suffix), an error for each path that does not
    exist, and the number of non-image files in the folders.
  """
  out, missing, other = [], [], 0
  seen_paths, names = set(), set()
  prefix = len(paths) > 1

  def add(path: str, name: str) -> None:
    real = os.path.realpath(path)
    if real in seen_paths:
      return
    seen_paths.add(real)
    unique, k = name, 1
    while unique in names:
      k += 1
      unique = f'{name}~{k}'
    names.add(unique)
    out.append(Input(path=path, name=unique))

  for p in paths:
    if os.path.isdir(p):
      files, n = _walk(p)
      other += n
      top = os.path.basename(os.path.normpath(p))
      for rel in files:
        name = rel.replace(os.sep, '/')
        add(os.path.join(p, rel), f'{top}/{name}' if prefix else name)
    elif os.path.exists(p):
      add(p, os.path.basename(p))
    else:
      missing.append(BadInputError(p, 'no such file or folder'))
  return out, missing, other


def read(path: str, data_cfg: ml_collections.ConfigDict) -> np.ndarray:
  """One file as the model's input, (H, W, 1) float32, preprocessed by the
  run's dataset (`data_cfg.name`); a file that cannot be read is a
  `BadInputError` with the reason."""
  if os.path.isdir(path):
    raise BadInputError(path, 'is a folder')
  try:
    img = dicom.read_image(path)
    x = dataset_module(data_cfg.name).preprocess_image(img, data_cfg)
  except (ValueError, OSError) as e:
    reason, prefix = str(e), f'{path}: '
    reason = reason[len(prefix):] if reason.startswith(prefix) else reason
    raise BadInputError(path, reason) from e
  return np.asarray(x, np.float32)
