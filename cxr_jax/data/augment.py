"""Training-time augmentation of one example (numpy only, no jax).

The SPEC asks for additive Gaussian noise, rotation up to 10 degrees,
horizontal flips and brightness/contrast shifts, with masks following the
geometric transforms. `augment_example` applies them to one example dict:

* geometric (rotation, then horizontal flip) to every spatial field with the
  same parameters: `image` (H, W, C) and `gaze` (H, W) bilinearly, `mask`
  (H, W) with nearest neighbour, and `fixmap` (H, W) by moving each fixation
  pixel forward to its rotated position (resampling a map that is 1 at a few
  isolated pixels with nearest neighbour would drop or duplicate fixations,
  which NSS and AUC-Judd would see);
* photometric (brightness, contrast, noise) to `image` only, scaled by the
  image's own standard deviation so the same config serves z-scored and
  [0, 1] images.

Each example draws all its random numbers up front in a fixed order, so
switching one augmentation off does not change the draws of the others.
This module is imported inside grain worker processes: keep it numpy/scipy
only.
"""
from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np
from scipy import ndimage

SPATIAL_KEYS = ('mask', 'gaze', 'fixmap')


def default_config() -> ml_collections.ConfigDict:
  """Augmentation knobs; 0 (or False) switches each one off.

  Returns:
    noise_std: std of additive Gaussian noise, in units of the image std.
    rotate_deg: rotation angle drawn from U(-rotate_deg, rotate_deg).
    hflip: flip horizontally with probability 1/2.
    brightness: shift drawn from U(-b, b), in units of the image std.
    contrast: scale about the image mean drawn from U(1 - c, 1 + c).
  """
  return ml_collections.ConfigDict(dict(
      noise_std=0.05, rotate_deg=10.0, hflip=True, brightness=0.1,
      contrast=0.1))


def rotation_transform(
    shape_hw: tuple[int, int],
    angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
  """Output->input map of a rotation about the image centre.

  Args:
    shape_hw: spatial shape (H, W).
    angle_deg: rotation angle; positive turns the content counter-clockwise
      as displayed (row 0 at the top), like `scipy.ndimage.rotate`.

  Returns:
    (matrix_22, offset_2) such that input_yx = matrix @ output_yx + offset,
    the convention of `scipy.ndimage.affine_transform`.
  """
  theta = np.deg2rad(angle_deg)
  c, s = np.cos(theta), np.sin(theta)
  matrix = np.array([[c, s], [-s, c]])
  centre = (np.asarray(shape_hw, np.float64) - 1.0) / 2.0
  return matrix, centre - matrix @ centre


def _warp(x_HW: np.ndarray, matrix: np.ndarray, offset: np.ndarray, *,
          order: int, cval: float) -> np.ndarray:
  """Resamples one 2-D field (float32 result) with scipy's affine_transform."""
  # A contiguous input avoids scipy's strided access to a channel slice.
  return ndimage.affine_transform(
      np.ascontiguousarray(x_HW, np.float32), matrix, offset, order=order,
      mode='constant', cval=cval, output=np.float32)


def _warp_points(fix_HW: np.ndarray, matrix: np.ndarray,
                 offset: np.ndarray) -> np.ndarray:
  """Moves each non-zero pixel of a sparse map to its rotated position."""
  ys, xs = np.nonzero(fix_HW)
  out = np.zeros_like(fix_HW)
  if ys.size == 0:
    return out
  # input = M @ output + offset  =>  output = M^-1 @ (input - offset).
  src_2N = np.stack([ys, xs]).astype(np.float64) - offset[:, None]
  dst_2N = np.rint(np.linalg.solve(matrix, src_2N)).astype(np.int64)
  h, w = fix_HW.shape
  keep = ((dst_2N[0] >= 0) & (dst_2N[0] < h) &
          (dst_2N[1] >= 0) & (dst_2N[1] < w))
  np.maximum.at(out, (dst_2N[0, keep], dst_2N[1, keep]), fix_HW[ys, xs][keep])
  return out


def _renormalise_gaze(gaze_HW: np.ndarray, old_max: float) -> np.ndarray:
  """Clips interpolation undershoot and restores max 1 if the input had mass."""
  gaze_HW = np.maximum(gaze_HW, 0.0)
  new_max = float(gaze_HW.max()) if gaze_HW.size else 0.0
  if old_max > 0 and new_max > 0:
    gaze_HW = gaze_HW / np.float32(new_max)
  return gaze_HW.astype(np.float32, copy=False)


def _rotate(ex: dict[str, Any], image_HWC: np.ndarray, spatial: list[str],
            angle: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """Rotates the image and every spatial field of `ex` by `angle` degrees
  (each field by its own rule: see the module docstring)."""
  matrix, offset = rotation_transform(image_HWC.shape[:2], angle)
  fill = float(image_HWC.min())  # corners look like the dark border
  image_HWC = np.stack(
      [_warp(image_HWC[..., c], matrix, offset, order=1, cval=fill)
       for c in range(image_HWC.shape[-1])], axis=-1)
  fields = {}
  for k in spatial:
    if k == 'mask':
      fields[k] = _warp(ex[k], matrix, offset, order=0, cval=0.0)
    elif k == 'gaze':
      old_max = float(np.max(ex[k])) if np.size(ex[k]) else 0.0
      fields[k] = _renormalise_gaze(
          _warp(ex[k], matrix, offset, order=1, cval=0.0), old_max)
    else:
      fields[k] = _warp_points(np.asarray(ex[k]), matrix, offset)
  return image_HWC, fields


def _photometric(image_HWC: np.ndarray, shift: float, scale: float,
                 std: float, rng: np.random.Generator,
                 cfg: ml_collections.ConfigDict) -> np.ndarray:
  """Brightness shift, contrast scale and additive noise (the noise is
  drawn here, last, since its size varies with the image)."""
  if cfg.brightness:
    image_HWC = image_HWC + np.float32(shift * std)
  if cfg.contrast:
    mean = np.float32(image_HWC.mean())
    image_HWC = (image_HWC - mean) * np.float32(scale) + mean
  if cfg.noise_std:
    noise = rng.standard_normal(image_HWC.shape, dtype=np.float32)
    image_HWC = image_HWC + noise * np.float32(cfg.noise_std * std)
  return image_HWC


def augment_example(ex: dict[str, Any], rng: np.random.Generator,
                    cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """Randomly augments one example; inputs are never modified in place.

  Args:
    ex: `image` (H, W, C) float32, optional `mask`/`gaze` (H, W) float32 and
      `fixmap` (H, W) uint8; other keys (`label`, `index`) pass through.
    rng: the example's generator (grain hands each record its own).
    cfg: see `default_config`.

  Returns:
    A new dict with the same keys, shapes and dtypes.
  """
  out = dict(ex)
  image_HWC = np.asarray(ex['image'], np.float32)
  if image_HWC.ndim != 3:
    raise ValueError(f'image must be (H, W, C), got {image_HWC.shape}')
  shape_hw = image_HWC.shape[:2]
  spatial = [k for k in SPATIAL_KEYS if k in ex]
  for k in spatial:
    if np.shape(ex[k]) != shape_hw:
      raise ValueError(f'{k} has shape {np.shape(ex[k])}, image {shape_hw}')

  # All draws first, in a fixed order (noise last: its size varies).
  angle = rng.uniform(-1.0, 1.0) * float(cfg.rotate_deg)
  flip = bool(rng.integers(2))
  shift = rng.uniform(-1.0, 1.0) * float(cfg.brightness)
  scale = 1.0 + rng.uniform(-1.0, 1.0) * float(cfg.contrast)
  std = float(image_HWC.std())

  if cfg.rotate_deg:
    image_HWC, rotated = _rotate(ex, image_HWC, spatial, angle)
    out.update(rotated)
  if cfg.hflip and flip:
    image_HWC = image_HWC[:, ::-1]
    for k in spatial:
      out[k] = np.asarray(out[k])[:, ::-1]
  image_HWC = _photometric(image_HWC, shift, scale, std, rng, cfg)

  out['image'] = np.ascontiguousarray(image_HWC, np.float32)
  for k in spatial:
    out[k] = np.ascontiguousarray(out[k], np.asarray(ex[k]).dtype)
  return out
