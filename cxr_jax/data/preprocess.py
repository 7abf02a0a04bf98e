"""Per-image preprocessing: padding, resizing, CLAHE and intensity scaling.

All functions are pure numpy, take (H, W) images (trailing channel axes are
carried along where noted) and return new arrays.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from skimage import exposure, transform


def check_size(size_hw: Any, key: str) -> tuple[int, int]:
  """`size_hw` as (H, W); anything but two integers >= 1 is a ValueError
  naming the config `key` (e.g. 'data.image_size')."""
  try:
    values = tuple(size_hw)
  except TypeError:
    values = ()
  ok = len(values) == 2 and all(
      isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1
      for v in values)
  if not ok:
    raise ValueError(f'{key} must be (H, W), two integers >= 1, got '
                     f'{size_hw!r}')
  return int(values[0]), int(values[1])


def pad_to_aspect(img_HW: np.ndarray, aspect_hw: float
                  ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
  """Zero-pads symmetrically until H / W == aspect_hw (to the nearest pixel).

  Returns the padded image and the padding (top, bottom, left, right); an odd
  excess goes to the bottom / right. Trailing axes (e.g. channels) are kept.
  """
  if aspect_hw <= 0:
    raise ValueError(f'aspect_hw must be > 0, got {aspect_hw}')
  h, w = img_HW.shape[:2]
  top = bottom = left = right = 0
  if h < w * aspect_hw:
    extra = int(round(w * aspect_hw)) - h
    top, bottom = extra // 2, extra - extra // 2
  else:
    extra = int(round(h / aspect_hw)) - w
    left, right = extra // 2, extra - extra // 2
  pads = [(top, bottom), (left, right)] + [(0, 0)] * (img_HW.ndim - 2)
  return np.pad(img_HW, pads), (top, bottom, left, right)


def resize(img_HW: np.ndarray, size_hw: tuple[int, int], order: int = 1
           ) -> np.ndarray:
  """Resizes the first two axes to size_hw as float32.

  Anti-aliased (Gaussian prefilter) when shrinking with order > 0; order=0 is
  plain nearest-neighbour, for masks and label maps.
  """
  size_hw = (int(size_hw[0]), int(size_hw[1]))
  if tuple(img_HW.shape[:2]) == size_hw:
    return np.asarray(img_HW, np.float32).copy()
  shrinking = size_hw[0] < img_HW.shape[0] or size_hw[1] < img_HW.shape[1]
  out = transform.resize(
      np.asarray(img_HW, np.float32), size_hw + tuple(img_HW.shape[2:]),
      order=order, mode='edge', preserve_range=True,
      anti_aliasing=bool(shrinking and order > 0))
  return out.astype(np.float32)


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) matrix: the fraction of output cell i that input cell j
  covers, with both axes spanning the same extent [0, n_in)."""
  scale = n_in / n_out
  lo = np.arange(n_out)[:, None] * scale
  j = np.arange(n_in)[None, :]
  overlap = np.clip(np.minimum(lo + scale, j + 1) - np.maximum(lo, j), 0, None)
  return (overlap / scale).astype(np.float64)


def area_coverage(mask_HW: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
  """Exact fraction of each output pixel that a {0, 1} mask covers.

  Each output pixel is the rectangle of input pixels it spans (box
  resampling, any size ratio, no interpolation): the result lies in [0, 1],
  and its sum times the area ratio equals the mask's pixel count. Thresholds
  on it give area rules for resizing masks ('half the pixel', 'touched at
  all') that do not depend on an interpolation kernel.
  """
  m = np.asarray(mask_HW, np.float64)
  if m.ndim != 2:
    raise ValueError(f'area_coverage expects a 2-D mask, got shape {m.shape}')
  a_h = _area_weights(m.shape[0], int(size_hw[0]))
  a_w = _area_weights(m.shape[1], int(size_hw[1]))
  return np.clip(a_h @ m @ a_w.T, 0.0, 1.0).astype(np.float32)


def clahe(img01_HW: np.ndarray, clip_limit: float = 0.01,
          kernel_size: int | tuple[int, int] | None = None) -> np.ndarray:
  """Contrast-limited adaptive histogram equalisation of a [0, 1] image.

  skimage's equalize_adapthist; kernel_size None = 1/8 of each side.
  Returns float32 in [0, 1].
  """
  img = np.clip(np.asarray(img01_HW, np.float64), 0.0, 1.0)
  if img.ndim != 2:
    raise ValueError(f'clahe expects a 2-D image, got shape {img.shape}')
  if float(img.max()) == float(img.min()):
    return img.astype(np.float32)
  out = exposure.equalize_adapthist(img, kernel_size=kernel_size,
                                    clip_limit=clip_limit)
  return out.astype(np.float32)


def zscore(img: np.ndarray, eps: float = 1e-6) -> np.ndarray:
  """(img - mean) / std over the whole image; constant images map to 0."""
  x = np.asarray(img, np.float32)
  return ((x - x.mean()) / max(float(x.std()), eps)).astype(np.float32)


def minmax01(img: np.ndarray, eps: float = 1e-6) -> np.ndarray:
  """Rescales the image to [0, 1]; constant images map to 0."""
  x = np.asarray(img, np.float32)
  lo, hi = float(x.min()), float(x.max())
  return ((x - lo) / max(hi - lo, eps)).astype(np.float32)
