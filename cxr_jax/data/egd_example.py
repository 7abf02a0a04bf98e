"""One study of the eye-gaze dataset: its image, gaze map and fixation map.

The image is padded (zeros, centred) to the target aspect, resized and
min-max scaled; the gaze map is computed at native resolution by a recipe of
`cxr_jax.data.gaze` and goes through the same pad/resize; fixations are
mapped through the same geometry (`map_points`) into a binary `fixmap`.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import ml_collections
import numpy as np

from cxr_jax.data import dicom
from cxr_jax.data import gaze
from cxr_jax.data import preprocess


def map_points(points_xy: np.ndarray, native_hw: Sequence[int],
               pads: Sequence[int], size_hw: Sequence[int]) -> np.ndarray:
  """Maps native pixel coordinates through pad_to_aspect + resize.

  Uses skimage's resize convention (pixel centres): x' = (x + 0.5) * s - 0.5.
  """
  top, bottom, left, right = pads
  ph, pw = native_hw[0] + top + bottom, native_hw[1] + left + right
  sx, sy = size_hw[1] / pw, size_hw[0] / ph
  p = np.asarray(points_xy, np.float64).reshape(-1, 2)
  return np.stack([(p[:, 0] + left + 0.5) * sx - 0.5,
                   (p[:, 1] + top + 0.5) * sy - 0.5], axis=1)


def recipe_sigma(cfg: ml_collections.ConfigDict) -> float:
  """The blur sigma at the reference resolution: `gaze_sigma`, or the
  recipe's own sigma when `gaze_sigma` is 0."""
  return float(cfg.gaze_sigma or gaze.get_recipe(cfg.gaze_recipe).sigma)


def native_sigma(cfg: ml_collections.ConfigDict, native_hw: Sequence[int],
           phantom: bool) -> float:
  """The blur sigma in native pixels for one image (`data.gaze_sigma` and
  `data.gaze_reference_px`, see `egd.default_config`)."""
  sigma = recipe_sigma(cfg)
  ref = cfg.gaze_reference_px
  if ref < 0:
    ref = gaze.REFERENCE_PX if phantom else 0
  return gaze.scaled_sigma(sigma, native_hw, ref) if ref > 0 else float(sigma)


def _pad_resize_scale(img_HW: np.ndarray, size: tuple[int, int]
                      ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
  """The image padded to the aspect of `size`, resized and min-max scaled
  (float32), and the padding (top, bottom, left, right)."""
  img, pads = preprocess.pad_to_aspect(img_HW, size[0] / size[1])
  img = preprocess.minmax01(preprocess.resize(img, size, order=1))
  return img.astype(np.float32), pads


def preprocess_image(img_HW: np.ndarray, cfg: ml_collections.ConfigDict
                     ) -> np.ndarray:
  """Zero-padded (centred) to the aspect of `data.image_size`, an
  anti-aliased bilinear resize to it, then min-max scaled to [0, 1] over the
  image: (H, W) (`dicom.read_image`) -> (H, W, 1) float32."""
  size = tuple(int(s) for s in cfg.image_size)
  return _pad_resize_scale(img_HW, size)[0][..., None]


def load_example(image_path: str, dicom_id: str, samples: Mapping | None,
                 fixations: Mapping | None, cfg: ml_collections.ConfigDict,
                 phantom: bool = False) -> dict[str, np.ndarray]:
  """Reads and preprocesses one study: image, gaze map and fixation map.

  Args:
    image_path: the image file.
    dicom_id: for messages.
    samples: this image's raw gaze ({'xy', 'time', 'line'}) or None.
    fixations: this image's fixations, or None.
    cfg: the data config.
    phantom: whether the sigma auto-scaling of the phantom applies.
  Returns:
    {'image': (H, W, 1), 'gaze': (H, W) float32, 'fixmap': (H, W) uint8,
    'dropped': int, the gaze samples and fixations that fell outside the
    image and were dropped (`cfg.gaze_off_image='skip'`)}.
  """
  size = tuple(int(s) for s in cfg.image_size)
  img = dicom.read_image(image_path)
  native = img.shape[:2]
  img, pads = _pad_resize_scale(img, size)

  recipe = gaze.get_recipe(cfg.gaze_recipe)
  empty = dict(xy=np.zeros((0, 2)), time=np.zeros(0), line=np.zeros(0, int))
  dropped = [0]

  def on_image(points: Mapping | None, what: str) -> dict[str, np.ndarray]:
    """The points inside the image; off-image ones raise, or are dropped
    (`gaze.inside` logs their number with the DICOM_ID)."""
    points = points if points is not None else empty
    ok = gaze.inside(points['xy'], native, dicom_id=dicom_id,
                     rows=points['line'], on_error=cfg.gaze_off_image,
                     what=what)
    dropped[0] += int((~ok).sum())
    return {k: v[ok] for k, v in points.items()}

  fix = on_image(fixations, 'fixation')
  src = (on_image(samples, 'gaze sample') if recipe.source == 'eye_gaze'
         else fix)
  weights = None
  if recipe.weighting == 'duration':
    weights = gaze.fixation_durations(src['time'], src.get('duration'))
  gmap = gaze.gaze_map(cfg.gaze_recipe, src['xy'], weights, native,
                       sigma_px=native_sigma(cfg, native, phantom),
                       on_error='raise', dicom_id=dicom_id,
                       rows=src['line'])
  gmap, _ = preprocess.pad_to_aspect(gmap, size[0] / size[1])
  gmap = np.clip(preprocess.resize(gmap, size, order=1), 0, None)
  peak = float(gmap.max())
  gmap = (gmap / peak if peak > 0 else gmap).astype(np.float32)

  fixmap = gaze.fixation_map(map_points(fix['xy'], native, pads, size), size)
  return dict(image=img[..., None], gaze=gmap,
              fixmap=fixmap, dropped=dropped[0])
