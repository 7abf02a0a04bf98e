"""Deletion and insertion curves (Petsiuk et al. 2018, RISE) for heatmaps.

Pixels are ranked by heat (descending; ties in row-major order). Deletion
starts from the image and replaces the top pixels with a baseline in `steps`
equal chunks; insertion starts from the baseline and restores the top pixels
of the image. At each of the `steps + 1` points the model's probability of
the target class is recorded; the score is the trapezoidal area under that
curve over the fraction of pixels changed in [0, 1] (deletion: lower is
better; insertion: higher is better). One `predict_fn` call per step covers
the whole batch.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from scipy import ndimage

MODES = ('deletion', 'insertion')


def make_baseline(images_BHWC: np.ndarray, kind: str | np.ndarray = 'blur', *,
                  blur_sigma: float = 5.0) -> np.ndarray:
  """Baseline images: 'blur' (Gaussian per channel, sigma in pixels),
  'mean' (per-image, per-channel mean), 'zero', or an array of the shape."""
  x = np.asarray(images_BHWC, np.float32)
  if not isinstance(kind, str):
    return np.broadcast_to(np.asarray(kind, np.float32), x.shape).copy()
  if kind == 'blur':
    return ndimage.gaussian_filter(x, sigma=(0, blur_sigma, blur_sigma, 0))
  if kind == 'mean':
    return np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape).copy()
  if kind == 'zero':
    return np.zeros_like(x)
  raise ValueError(f"baseline must be 'blur', 'mean', 'zero' or an array, "
                   f'got {kind!r}.')


def perturbation_curve(predict_fn: Callable[[np.ndarray], Any],
                       images_BHWC: Any, cams_BHW: Any, targets_B: Any, *,
                       mode: str = 'deletion', steps: int = 20,
                       baseline: str | np.ndarray = 'blur',
                       blur_sigma: float = 5.0) -> dict[str, np.ndarray]:
  """Deletion or insertion curve.

  Args:
    predict_fn: images (B, H, W, C) -> class probabilities (B, K).
    images_BHWC: inputs.
    cams_BHW: heatmaps at the input resolution.
    targets_B: class whose probability is tracked.
    mode: 'deletion' or 'insertion'.
    steps: number of chunks; the curve has steps + 1 points.
    baseline: see `make_baseline`.
    blur_sigma: for the 'blur' baseline.

  Returns:
    dict with 'fractions' (steps + 1,), 'probs' (B, steps + 1), 'auc' (B,).
  """
  if mode not in MODES:
    raise ValueError(f'mode must be one of {MODES}, got {mode!r}.')
  x = np.asarray(images_BHWC, np.float32)
  cams = np.asarray(cams_BHW, np.float32)
  b, h, w, _ = x.shape
  if cams.shape != (b, h, w):
    raise ValueError(f'cams {cams.shape} must be (B, H, W) = {(b, h, w)}.')
  t = np.asarray(targets_B, np.int64).reshape(b)
  base = make_baseline(x, baseline, blur_sigma=blur_sigma)
  n = h * w
  order_BN = np.argsort(-cams.reshape(b, n), axis=1, kind='stable')
  rank_BN = np.empty_like(order_BN)
  np.put_along_axis(rank_BN, order_BN, np.arange(n)[None].repeat(b, 0), axis=1)
  rank_BHW1 = rank_BN.reshape(b, h, w, 1)
  counts = np.round(np.linspace(0, n, steps + 1)).astype(int)
  src, dst = (x, base) if mode == 'deletion' else (base, x)
  probs = np.zeros((b, steps + 1))
  for i, c in enumerate(counts):
    changed = rank_BHW1 < c
    p = np.asarray(predict_fn(np.where(changed, dst, src)))
    probs[:, i] = p[np.arange(b), t]
  fractions = counts / n
  return dict(fractions=fractions, probs=probs,
              auc=np.trapezoid(probs, fractions, axis=1))


def deletion(predict_fn: Callable[[np.ndarray], Any], images_BHWC: Any,
             cams_BHW: Any, targets_B: Any, **kwargs: Any) -> dict:
  """Deletion curve; see `perturbation_curve`."""
  return perturbation_curve(predict_fn, images_BHWC, cams_BHW, targets_B,
                            mode='deletion', **kwargs)


def insertion(predict_fn: Callable[[np.ndarray], Any], images_BHWC: Any,
              cams_BHW: Any, targets_B: Any, **kwargs: Any) -> dict:
  """Insertion curve; see `perturbation_curve`."""
  return perturbation_curve(predict_fn, images_BHWC, cams_BHW, targets_B,
                            mode='insertion', **kwargs)
