"""Image files for the HTML pages and the prediction overlays (PNG, pillow).

Maps are drawn the way `figures.image_grid` draws them: the 'jet' colormap
at alpha 0.45 over the grey image, values in [0, 1], mask outlines in lime.
Two forms:

- `overlay`: one RGB image, the map blended over the radiograph (the
  prediction command's per-image overlay PNGs, viewable on their own).
- `layer`: an RGBA image of the map alone (and an optional mask outline),
  transparent where nothing is drawn, which a page stacks over the
  radiograph's own PNG (`grey`), so a study with nine models stores each
  radiograph once and each map as a small, smooth PNG.

Every function takes (H, W) arrays; `max_side` > 0 shrinks the written image
so that its longer side is at most that many pixels.
"""
from __future__ import annotations

import os

import numpy as np
from matplotlib import colormaps
from PIL import Image

ALPHA = 0.45
CMAP = 'jet'
OUTLINE_RGB = (0, 255, 0)


def to_unit(img_HW: np.ndarray) -> np.ndarray:
  """Per-image min-max scaling to [0, 1] for display (0 for a constant
  image), whatever the preprocessing (z-scored or [0, 1])."""
  x = np.asarray(img_HW, np.float64)
  lo, hi = float(x.min()), float(x.max())
  return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def peak_scaled(map_HW: np.ndarray) -> np.ndarray:
  """A map divided by its maximum (a predicted distribution, which sums to
  1, shown on the [0, 1] scale of the CAMs and gaze maps)."""
  x = np.asarray(map_HW, np.float64)
  return x / max(float(x.max()), 1e-12)


def outline(mask_HW: np.ndarray) -> np.ndarray:
  """(H, W) bool: the mask's pixels that touch a pixel outside it (4-way)."""
  m = np.asarray(mask_HW) > 0.5
  inner = m.copy()
  inner[1:] &= m[:-1]
  inner[:-1] &= m[1:]
  inner[:, 1:] &= m[:, :-1]
  inner[:, :-1] &= m[:, 1:]
  return m & ~inner


def _colors(map_HW: np.ndarray) -> np.ndarray:
  """(H, W, 3) float RGB of a [0, 1] map under `CMAP`."""
  v = np.clip(np.nan_to_num(np.asarray(map_HW, np.float64)), 0.0, 1.0)
  return colormaps[CMAP](v)[..., :3]


def _u8(x: np.ndarray) -> np.ndarray:
  return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def _save(path: str, arr: np.ndarray, max_side: int) -> str:
  im = Image.fromarray(arr)
  if max_side > 0 and max(im.size) > max_side:
    scale = max_side / max(im.size)
    im = im.resize((max(1, round(im.size[0] * scale)),
                    max(1, round(im.size[1] * scale))), Image.LANCZOS)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  im.save(path, optimize=False)
  return path


def grey(path: str, img_HW: np.ndarray, *, max_side: int = 0) -> str:
  """The radiograph (display-scaled, `to_unit`) as a grey PNG."""
  return _save(path, _u8(to_unit(img_HW)), max_side)


def overlay(path: str, img_HW: np.ndarray, map_HW: np.ndarray | None, *,
            mask_HW: np.ndarray | None = None, max_side: int = 0) -> str:
  """The radiograph with a [0, 1] map blended over it (alpha `ALPHA`) and the
  mask's outline, as an RGB PNG; the map is resized to the image if needed."""
  base = np.repeat(to_unit(img_HW)[..., None], 3, axis=-1)
  if map_HW is not None:
    heat = _fit(map_HW, base.shape[:2])
    base = (1.0 - ALPHA) * base + ALPHA * _colors(heat)
  rgb = _u8(base)
  if mask_HW is not None:
    rgb[outline(mask_HW)] = OUTLINE_RGB
  return _save(path, rgb, max_side)


def layer(path: str, map_HW: np.ndarray | None, *,
          mask_HW: np.ndarray | None = None, max_side: int = 0) -> str:
  """A [0, 1] map as RGBA (alpha `ALPHA`) with the mask's outline opaque;
  transparent elsewhere. Stacked over `grey`'s PNG it looks like `overlay`."""
  hw = np.shape(map_HW if map_HW is not None else mask_HW)[:2]
  rgba = np.zeros(hw + (4,), np.uint8)
  if map_HW is not None:
    rgba[..., :3] = _u8(_colors(map_HW))
    rgba[..., 3] = round(ALPHA * 255)
  if mask_HW is not None:
    edge = outline(mask_HW)
    rgba[edge, :3] = OUTLINE_RGB
    rgba[edge, 3] = 255
  return _save(path, rgba, max_side)


def _fit(map_HW: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """`map_HW` resized (bilinear) to `hw` when its shape differs."""
  m = np.asarray(map_HW, np.float32)
  if m.shape[:2] == tuple(hw):
    return m
  im = Image.fromarray(m).resize((hw[1], hw[0]), Image.BILINEAR)
  return np.asarray(im, np.float32)


class CaseImages:
  """Writes a page's case images into `out_dir/sub/` and returns each file's
  path relative to the page (`out_dir`), for `report.browser` cells."""

  def __init__(self, out_dir: str, sub: str = 'cases', max_side: int = 0):
    self.out_dir, self.sub, self.max_side = out_dir, sub, max_side

  def _paths(self, name: str) -> tuple[str, str]:
    rel = f'{self.sub}/{name}.png'
    return os.path.join(self.out_dir, *rel.split('/')), rel

  def grey(self, name: str, img_HW: np.ndarray) -> str:
    """`grey(...)` as `sub/name.png`; returns the relative path."""
    path, rel = self._paths(name)
    grey(path, img_HW, max_side=self.max_side)
    return rel

  def layer(self, name: str, map_HW: np.ndarray | None,
            mask_HW: np.ndarray | None = None) -> str:
    """`layer(...)` as `sub/name.png`; returns the relative path."""
    path, rel = self._paths(name)
    layer(path, map_HW, mask_HW=mask_HW, max_side=self.max_side)
    return rel
