"""Gaze-map recipes for the eye-gaze dataset (egd-cxr, Karargyris et al.).

A gaze map ("static visual attention map") accumulates where radiologists
looked into one heatmap. Public projects build it differently, so each way is
a named recipe in `RECIPES`:

- `authors` (default): +1 at every raw 60 Hz gaze sample of `eye_gaze.csv`
  (`X_ORIGINAL`, `Y_ORIGINAL` rounded to pixels), Gaussian blur, divide by the
  max. The authors (and MT-UNet, whose code they forked) blur with an OpenCV
  `GaussianBlur` of a 501-px kernel and sigma 0, for which OpenCV picks
  sigma = 0.3 * ((501 - 1) / 2 - 1) + 0.8 = 75.5 px at DICOM resolution, and
  OpenCV's default border BORDER_REFLECT_101 (= scipy's mode 'mirror').
- `fixations`: +1 at every fixation of `fixations.csv`, sigma 150 px (the
  dataset's own scripts: `scipy.ndimage.gaussian_filter`, default border
  mode 'reflect').
- `duration`: fixations weighted by their duration (GazeGNN-style), sigma
  150 px, border 'reflect'. The duration is the `FPOGD` column of
  `fixations.csv` (seconds) when the file has it; otherwise it falls back to
  the gap to the next fixation's start (see `fixation_durations`).

All maps are computed at the image's native resolution. Sigmas are in native
pixels of the real data (~3000 px on the long side); pass `sigma_px` to use
another value (e.g. scaled for a smaller image, see `scaled_sigma`).

The blur is `scipy.ndimage.gaussian_filter(mode=recipe.mode)` of the
impulse image: the border mode matters, since gaze near an edge would lose
mass to zero padding ('constant'). Because the input is a sum of impulses,
the same numbers are computed exactly (same truncated, normalised kernel,
same border reflection) as a separable outer-product sum, whose cost grows
with the number of distinct points rather than with the image area;
`blur_points` picks that path and `tests/test_data_egd.py`
checks it equals `gaussian_filter` in every mode.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np
import scipy.ndimage

# Long side (px) of a typical MIMIC-CXR DICOM, the resolution at which the
# recipes' sigmas are defined.
REFERENCE_PX = 3000.0
TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's default.
MODES = ('constant', 'reflect', 'mirror')  # blur borders (scipy's names)


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How to turn gaze data into a map.

  Attributes:
    source: 'eye_gaze' (raw samples, `X_ORIGINAL`/`Y_ORIGINAL`) or
      'fixations' (`fixations.csv`).
    sigma: Gaussian sigma in native pixels (~3000-px images).
    weighting: 'count' (+1 per point) or 'duration' (fixation duration).
    mode: border of the blur, a `scipy.ndimage` mode: 'mirror' (OpenCV's
      default BORDER_REFLECT_101, the authors' `cv.GaussianBlur`), 'reflect'
      (`scipy.ndimage.gaussian_filter`'s default, the dataset's scripts) or
      'constant' (zeros outside the image).
  """
  source: str
  sigma: float
  weighting: str
  mode: str


RECIPES: dict[str, Recipe] = {
    'authors': Recipe(source='eye_gaze', sigma=75.5, weighting='count',
                      mode='mirror'),
    'fixations': Recipe(source='fixations', sigma=150.0, weighting='count',
                        mode='reflect'),
    'duration': Recipe(source='fixations', sigma=150.0, weighting='duration',
                       mode='reflect'),
}


def get_recipe(name: str) -> Recipe:
  """Returns the recipe called `name`, or raises naming the known ones."""
  if name not in RECIPES:
    raise KeyError(
        f'Unknown gaze recipe {name!r}; known: {sorted(RECIPES)}.')
  return RECIPES[name]


def scaled_sigma(sigma: float, size_hw: Sequence[int],
                 reference_px: float = REFERENCE_PX) -> float:
  """`sigma` (defined at `reference_px` long side) for an image of `size_hw`."""
  return float(sigma) * max(size_hw) / float(reference_px)


def fixation_durations(times: np.ndarray,
                       fpogd: np.ndarray | None = None) -> np.ndarray:
  """Duration (seconds) of each fixation.

  With `fpogd` (the `FPOGD` column of `fixations.csv`: the tracker's own
  fixation duration) that is returned as is, after checking it is finite and
  non-negative. Without it (a file lacking the column) the fallback is the
  gap to the next fixation: duration[i] = times[i+1] - times[i] in time
  order, which also counts the saccade after the fixation; the last
  fixation gets the median of the others (1.0 if it is the only one).
  Returned in the input order. Negative gaps (unsorted input) cannot occur
  since the times are sorted first; equal times give 0.
  """
  times = np.asarray(times, np.float64).reshape(-1)
  if fpogd is not None:
    fpogd = np.asarray(fpogd, np.float64).reshape(-1)
    if fpogd.shape != times.shape:
      raise ValueError(f'{fpogd.shape[0]} FPOGD values for {times.shape[0]} '
                       'fixations')
    if not (np.isfinite(fpogd).all() and (fpogd >= 0).all()):
      raise ValueError('FPOGD (fixation duration) must be finite and >= 0, '
                       f'got {fpogd[~(np.isfinite(fpogd) & (fpogd >= 0))][:5]}')
    return fpogd
  n = times.shape[0]
  if n == 0:
    return np.zeros((0,), np.float64)
  if n == 1:
    return np.ones((1,), np.float64)
  order = np.argsort(times, kind='stable')
  t = times[order]
  dur = np.empty(n, np.float64)
  dur[:-1] = np.diff(t)
  dur[-1] = np.median(dur[:-1])
  out = np.empty(n, np.float64)
  out[order] = dur
  return out


def pixel_coords(points_xy: np.ndarray) -> np.ndarray:
  """Rounds (N, 2) float x, y to integer pixel (column, row)."""
  points_xy = np.asarray(points_xy, np.float64).reshape(-1, 2)
  return np.rint(points_xy).astype(np.int64)


def inside(points_xy: np.ndarray, size_hw: Sequence[int],
           *, dicom_id: str = '', rows: np.ndarray | None = None,
           on_error: str = 'raise', what: str = 'gaze point') -> np.ndarray:
  """Boolean mask of points whose rounded pixel lies inside the image.

  Args:
    points_xy: (N, 2) x (column), y (row) in pixels.
    size_hw: image (H, W).
    dicom_id: for the error message.
    rows: (N,) CSV row numbers of the points, for the error message.
    on_error: 'raise' raises `ValueError` naming the DICOM_ID and the first
      bad row; 'skip' returns a mask that drops them (and logs the count).
    what: noun for messages.
  """
  if on_error not in ('raise', 'skip'):
    raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
  h, w = int(size_hw[0]), int(size_hw[1])
  pix = pixel_coords(points_xy)
  ok = (pix[:, 0] >= 0) & (pix[:, 0] < w) & (pix[:, 1] >= 0) & (pix[:, 1] < h)
  ok &= np.isfinite(np.asarray(points_xy, np.float64).reshape(-1, 2)).all(1)
  n_bad = int((~ok).sum())
  if n_bad:
    first = int(np.flatnonzero(~ok)[0])
    row = int(rows[first]) if rows is not None else first
    x, y = np.asarray(points_xy, np.float64).reshape(-1, 2)[first]
    msg = (f'{n_bad} {what}(s) of DICOM_ID {dicom_id!r} fall outside the '
           f'{h}x{w} image; first at row {row}: x={x:.1f}, y={y:.1f}')
    if on_error == 'raise':
      raise ValueError(msg + " ('skip' drops them: on_error here, "
                       'data.gaze_off_image in the eye-gaze config).')
    logging.info('%s; dropped.', msg)
  return ok


def _taps(sigma: float) -> tuple[int, np.ndarray]:
  """Radius and scipy's normalised truncated 1-D Gaussian taps."""
  radius = int(TRUNCATE * float(sigma) + 0.5)
  taps = np.arange(-radius, radius + 1, dtype=np.float64)
  phi = np.exp(-0.5 / float(sigma) ** 2 * taps ** 2)
  return radius, phi / phi.sum()


def _kernel_matrix(coords: np.ndarray, length: int, sigma: float,
                   mode: str = 'constant') -> np.ndarray:
  """(length, N): column n = the 1-D blur of an impulse at coords[n].

  Equals `scipy.ndimage.gaussian_filter1d(e_c, sigma, mode=mode)` for each
  unit impulse e_c. Output pixel j reads the extended line at j + k for each
  tap k; the border `mode` maps j + k back into the line, so pixel j gets
  phi[p - j] from every position p of the extended line that maps to c (the
  "images" of c). 'constant' has one image (c itself: taps outside the line
  read zeros); 'reflect' (scipy's default, d c b a | a b c d | d c b a) has
  c + 2Lm and 2L - 1 - c + 2Lm; 'mirror' (OpenCV's BORDER_REFLECT_101,
  d c b | a b c d | c b a) has c + 2(L-1)m and -c + 2(L-1)m, the two
  coinciding at c = 0 and c = L - 1.
  """
  coords = np.asarray(coords, np.int64).reshape(-1)
  radius, phi = _taps(sigma)
  j = np.arange(length)
  out = np.zeros((length, coords.size), np.float64)

  def add(p: np.ndarray, cols: np.ndarray) -> None:
    d = p[None, :] - j[:, None]  # tap offset from output pixel j to p
    near = np.abs(d) <= radius
    sub = np.zeros(d.shape, np.float64)
    sub[near] = phi[d[near] + radius]
    out[:, cols] += sub

  if coords.size == 0:
    return out
  if mode == 'constant':
    add(coords, np.arange(coords.size))
    return out
  if mode not in MODES:
    raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
  if length == 1:  # every tap reads the one pixel
    out[:] = 1.0
    return out
  if mode == 'reflect':
    period, families = 2 * length, (coords, 2 * length - 1 - coords)
    distinct = np.ones(coords.size, bool)
  else:
    period, families = 2 * (length - 1), (coords, -coords)
    distinct = (coords != 0) & (coords != length - 1)
  lo, hi = -radius, length - 1 + radius  # positions some output pixel reads
  for f, base in enumerate(families):
    keep = np.ones(coords.size, bool) if f == 0 else distinct
    m_lo = int(np.floor((lo - base.max()) / period))
    m_hi = int(np.ceil((hi - base.min()) / period))
    for m in range(m_lo, m_hi + 1):
      p = base + m * period
      cols = np.flatnonzero(keep & (p >= lo) & (p <= hi))
      if cols.size:
        add(p[cols], cols)
  return out


def blur_points(pix_xy: np.ndarray, weights: np.ndarray,
                size_hw: Sequence[int], sigma: float,
                method: str = 'separable', mode: str = 'constant'
                ) -> np.ndarray:
  """Gaussian-blurred sum of weighted impulses at integer pixels.

  Equals `gaussian_filter(impulses, sigma, mode=mode, truncate=TRUNCATE)`
  (float64 inside).

  Args:
    pix_xy: (N, 2) integer column, row, all inside the image.
    weights: (N,) impulse heights.
    size_hw: (H, W).
    sigma: Gaussian sigma in pixels; 0 leaves the impulses unblurred.
    method: 'separable' (sum of outer products, fast) or 'filter' (scipy).
    mode: border mode, 'constant', 'reflect' or 'mirror' (scipy's names).
  Returns:
    (H, W) float64 map.
  """
  if mode not in MODES:
    raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
  h, w = int(size_hw[0]), int(size_hw[1])
  pix_xy = np.asarray(pix_xy, np.int64).reshape(-1, 2)
  weights = np.asarray(weights, np.float64).reshape(-1)
  if method == 'filter' or sigma <= 0:
    img = np.zeros((h, w), np.float64)
    np.add.at(img, (pix_xy[:, 1], pix_xy[:, 0]), weights)
    if sigma <= 0:
      return img
    return scipy.ndimage.gaussian_filter(img, float(sigma), mode=mode,
                                         truncate=TRUNCATE)
  if method != 'separable':
    raise ValueError(f"method must be 'separable' or 'filter', got {method!r}")
  # Merge repeated pixels (raw 60 Hz samples repeat a lot) to shrink N.
  flat = pix_xy[:, 1] * w + pix_xy[:, 0]
  uniq, inv = np.unique(flat, return_inverse=True)
  wsum = np.bincount(inv.reshape(-1), weights=weights, minlength=uniq.size)
  ys, xs = uniq // w, uniq % w
  ky = _kernel_matrix(ys, h, sigma, mode) * wsum[None, :]  # (H, N)
  kx = _kernel_matrix(xs, w, sigma, mode)  # (W, N)
  return ky @ kx.T


def gaze_map(recipe: str, points_xy: np.ndarray, weights: np.ndarray | None,
             size_hw: Sequence[int], *, sigma_px: float | None = None,
             on_error: str = 'skip', dicom_id: str = '',
             rows: np.ndarray | None = None) -> np.ndarray:
  """Gaze heatmap of one image by a named recipe, normalised to max 1.

  Args:
    recipe: a key of `RECIPES` ('authors', 'fixations', 'duration').
    points_xy: (N, 2) float x (column), y (row) in native pixels: raw gaze
      samples for 'authors', fixations otherwise.
    weights: (N,) per-point weights (fixation durations for 'duration'), or
      None for +1 each. 'duration' requires weights (see
      `fixation_durations`); the count recipes ignore any given.
    size_hw: native image (H, W).
    sigma_px: blur sigma in pixels; None = the recipe's default (defined at
      ~3000-px DICOM resolution; use `scaled_sigma` for smaller images).
    on_error: points outside the image (the real CSVs hold gaze that left
      the image, with negative or too large coordinates): 'skip' drops them
      (logged), 'raise' raises (see `inside`).
    dicom_id, rows: identify the image and CSV rows in errors.
  Returns:
    (H, W) float32 map with max 1, or all zeros if there are no points (or
    all weights are zero).
  """
  spec = get_recipe(recipe)
  h, w = int(size_hw[0]), int(size_hw[1])
  points_xy = np.asarray(points_xy, np.float64).reshape(-1, 2)
  n = points_xy.shape[0]
  if spec.weighting == 'duration':
    if weights is None:
      raise ValueError(f"Gaze recipe {recipe!r} needs fixation durations as "
                       f"weights (DICOM_ID {dicom_id!r}).")
    weights = np.asarray(weights, np.float64).reshape(-1)
  else:
    weights = np.ones((n,), np.float64)
  if weights.shape[0] != n:
    raise ValueError(f'{weights.shape[0]} weights for {n} points '
                     f'(DICOM_ID {dicom_id!r}).')
  ok = inside(points_xy, (h, w), dicom_id=dicom_id, rows=rows,
              on_error=on_error)
  if not ok.any():
    return np.zeros((h, w), np.float32)
  sigma = spec.sigma if sigma_px is None else float(sigma_px)
  m = blur_points(pixel_coords(points_xy[ok]), weights[ok], (h, w), sigma,
                  mode=spec.mode)
  peak = m.max()
  if peak <= 0:
    return np.zeros((h, w), np.float32)
  return (m / peak).astype(np.float32)


def fixation_map(points_xy: np.ndarray, size_hw: Sequence[int]) -> np.ndarray:
  """(H, W) uint8 map with 1 at each fixation's pixel (for NSS, AUC-Judd).

  Points are rounded to pixels; those outside the image are dropped (check
  them first with `inside` when that must be an error).
  """
  h, w = int(size_hw[0]), int(size_hw[1])
  out = np.zeros((h, w), np.uint8)
  points_xy = np.asarray(points_xy, np.float64).reshape(-1, 2)
  if points_xy.shape[0] == 0:
    return out
  ok = inside(points_xy, (h, w), on_error='skip', what='fixation')
  pix = pixel_coords(points_xy[ok])
  out[pix[:, 1], pix[:, 0]] = 1
  return out
