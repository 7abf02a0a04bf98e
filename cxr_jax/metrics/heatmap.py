"""Heatmap-vs-ground-truth-mask metrics (Study A) and Quantus localisation.

All per-image functions take a heatmap `cam_HW` (float, usually the [0, 1]
output of `cxr_jax.explain.compute_cams`) and a mask `mask_HW` (any dtype;
pixels with value > 0 are inside). `per_image` maps any of them over a batch.
Undefined values (an empty mask, no pixel outside the mask, a mask covering
the whole image for ROC AUC) are returned as NaN, never raised, so that a
test set can be scored in one pass; `summarize` then omits NaNs and reports
how many it dropped.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
from scipy import ndimage

from cxr_jax.metrics.classification import roc_auc_binary

EHR_VARIANTS = ('thesis', 'inputiba')


def _prep(cam_HW: Any, mask_HW: Any) -> tuple[np.ndarray, np.ndarray]:
  cam = np.asarray(cam_HW, np.float64)
  mask = np.asarray(mask_HW) > 0
  if cam.shape != mask.shape or cam.ndim != 2:
    raise ValueError(f'cam {cam.shape} and mask {mask.shape} must be the same '
                     '(H, W) shape.')
  return cam, mask


def diff_gradcam(cam_HW: Any, mask_HW: Any) -> float:
  """Mean heat inside the mask minus mean heat outside (thesis Diff_GradCAM).

  NaN when the mask is empty or covers every pixel.
  """
  cam, mask = _prep(cam_HW, mask_HW)
  if not mask.any() or mask.all():
    return float('nan')
  return float(cam[mask].mean() - cam[~mask].mean())


def ehr_curve(cam_HW: Any, mask_HW: Any, *, variant: str = 'thesis',
              num_thresholds: int = 101, base_threshold: float = 0.1,
              weight_by_heat: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Effective Heat Ratio curve (x, ratio); see `ehr_auc` for variants."""
  cam, mask = _prep(cam_HW, mask_HW)
  if cam.min() < -1e-6 or cam.max() > 1 + 1e-6:
    raise ValueError('EHR expects a heatmap scaled to [0, 1] (got range '
                     f'[{cam.min():.3g}, {cam.max():.3g}]).')
  if variant not in EHR_VARIANTS:
    raise ValueError(f'EHR variant must be one of {EHR_VARIANTS}, got '
                     f'{variant!r}.')
  # thesis: thresholds t; inputiba: quantiles q of the heat above the base.
  x = np.linspace(0.0, 1.0, num_thresholds if variant == 'thesis' else 11)
  if not mask.any():
    return x, np.full_like(x, np.nan)
  if variant == 'thesis':
    all_sorted = np.sort(cam.ravel())
    in_sorted = np.sort(cam[mask])
    n_all = all_sorted.size - np.searchsorted(all_sorted, x, side='left')
    n_in = in_sorted.size - np.searchsorted(in_sorted, x, side='left')
    return x, np.where(n_all > 0, n_in / np.maximum(n_all, 1), 0.0)
  heat = np.where(cam >= base_threshold, cam, 0.0)
  poi = cam[cam >= base_threshold]
  if poi.size == 0:
    return x, np.full_like(x, np.nan)
  ratio = np.zeros_like(x)
  for i, qi in enumerate(x):
    thr = min(np.quantile(poi, qi), 0.99 * heat.max())
    binm = heat >= thr
    inside = (heat[binm & mask].sum() if weight_by_heat
              else (binm & mask).sum())
    ratio[i] = inside / (binm.sum() + 1e-8)
  return x, ratio


def ehr_auc(cam_HW: Any, mask_HW: Any, *, variant: str = 'thesis',
            num_thresholds: int = 101, base_threshold: float = 0.1,
            weight_by_heat: bool = True) -> float:
  """Area under the Effective Heat Ratio curve (Wollek et al. 2023).

  variant='thesis' (default, the thesis wording): `num_thresholds`
    equidistant thresholds t in [0, 1]; EHR(t) = |{cam >= t} & mask| /
    |{cam >= t}|, defined as 0 where no pixel reaches t; trapezoid over t.
    A heatmap equal to a binary mask scores 1 - (1 - |mask|/N) / (2 (n-1)).
  variant='inputiba' (`EffectiveHeatRatios.evaluate` of InputIBA,
    input_iba/evaluation/vision/effective_heat_ratios.py): pixels below
    `base_threshold` (0.1) are zeroed; thresholds are the quantiles 0, 0.1,
    ..., 1 of the remaining heat values, capped at 0.99 * max; ratio =
    (heat inside the mask and >= t) / (number of pixels >= t + 1e-8), i.e.
    the numerator is heat-weighted but, as in their code, the denominator is
    a pixel count (`weight_by_heat=False` counts pixels in both); trapezoid
    over the quantile axis. NaN when no pixel reaches `base_threshold`
    (a blank CAM; `summarize` counts it in `n_nan`).
  Both are NaN for an empty mask.
  The heatmap must lie in [0, 1] (InputIBA instead divides a map whose
  maximum exceeds 1 by 255).
  """
  x, r = ehr_curve(cam_HW, mask_HW, variant=variant,
                   num_thresholds=num_thresholds, base_threshold=base_threshold,
                   weight_by_heat=weight_by_heat)
  return float(np.trapezoid(r, x))


def pointing_game(cam_HW: Any, mask_HW: Any, *, tolerance: int = 0) -> bool:
  """Whether the heatmap's maximum lies in the mask.

  Any pixel that ties for the maximum counts (Quantus' `PointingGame`;
  bilinear upsampling makes such ties common). A constant (e.g. blank) map
  points nowhere and is a miss: Quantus would count it a hit wherever the
  mask is. `tolerance` > 0 dilates the mask by a disk of that radius in
  pixels (Quantus' `k`). False for an empty mask.
  """
  cam, mask = _prep(cam_HW, mask_HW)
  if tolerance > 0:
    r = int(tolerance)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    mask = ndimage.binary_dilation(mask, structure=yy**2 + xx**2 <= r * r)
  top = cam.max()
  if top == cam.min():
    return False
  return bool(mask[cam == top].any())


def relevance_mass_accuracy(cam_HW: Any, mask_HW: Any) -> float:
  """Sum of heat inside the mask / total heat (Quantus RMA).

  NaN for an empty mask or a map without heat (a blank CAM: 0 / 0, as in
  Quantus; `summarize` counts such maps in `n_nan`).
  """
  cam, mask = _prep(cam_HW, mask_HW)
  total = cam.sum()
  if not mask.any() or total == 0:
    return float('nan')
  return float(cam[mask].sum() / total)


def attribution_localisation(cam_HW: Any, mask_HW: Any) -> float:
  """Positive heat inside the mask / total positive heat (Kohlbrenner et al.).

  Equals `relevance_mass_accuracy` for non-negative maps such as CAMs.
  """
  cam, mask = _prep(cam_HW, mask_HW)
  return relevance_mass_accuracy(np.maximum(cam, 0), mask)


def _top_k_inside(cam: np.ndarray, mask: np.ndarray, k: int) -> float:
  """Fraction of the k highest-heat pixels inside the mask, pixels tied at
  the k-th value counted fractionally (the mean over every way of breaking
  the tie). A CAM after ReLU and upsampling has wide plateaus of exact
  zeros; taking tied pixels in index order (as an argsort does) would pick
  the top rows first and reward a blank map for an apical mask."""
  flat, inside = cam.ravel(), mask.ravel()
  kth = np.partition(flat, flat.size - k)[flat.size - k]
  above = flat > kth
  tied = flat == kth
  need = k - int(above.sum())
  hits = float((above & inside).sum()) + need * float(inside[tied].mean())
  return hits / k


def relevance_rank_accuracy(cam_HW: Any, mask_HW: Any) -> float:
  """Fraction of the |mask| highest-heat pixels that lie in the mask."""
  cam, mask = _prep(cam_HW, mask_HW)
  k = int(mask.sum())
  return _top_k_inside(cam, mask, k) if k else float('nan')


def top_k_intersection(cam_HW: Any, mask_HW: Any, *, k: int = 1000) -> float:
  """Fraction of the k highest-heat pixels that lie in the mask."""
  cam, mask = _prep(cam_HW, mask_HW)
  if not 0 < k <= cam.size:
    raise ValueError(f'k must be in [1, {cam.size}], got {k}.')
  return _top_k_inside(cam, mask, k)


def pixel_auc(cam_HW: Any, mask_HW: Any) -> float:
  """ROC AUC of the heat as a pixel score for the mask (ties averaged)."""
  cam, mask = _prep(cam_HW, mask_HW)
  if not mask.any() or mask.all():
    return float('nan')
  return roc_auc_binary(mask.ravel().astype(int), cam.ravel())


def per_image(metric: Callable[..., Any], cams_BHW: Any, masks_BHW: Any,
              **kwargs: Any) -> np.ndarray:
  """Applies a per-image metric over a batch: (B, H, W) x2 -> (B,) float."""
  cams, masks = np.asarray(cams_BHW), np.asarray(masks_BHW)
  if cams.shape != masks.shape or cams.ndim != 3:
    raise ValueError(f'Expected two (B, H, W) arrays, got {cams.shape} and '
                     f'{masks.shape}.')
  return np.array([float(metric(c, m, **kwargs)) for c, m in zip(cams, masks)])


def summarize(values: Iterable[float]) -> dict[str, float]:
  """mean, std (ddof=1, sample std; NaN for n < 2), min, max over finite
  values; `n` counts them and `n_nan` the dropped NaNs."""
  v = np.asarray(list(values), np.float64).ravel()
  finite = v[np.isfinite(v)]
  n = finite.size
  if n == 0:
    return dict(mean=float('nan'), std=float('nan'), min=float('nan'),
                max=float('nan'), n=0, n_nan=int(v.size))
  return dict(mean=float(finite.mean()),
              std=float(finite.std(ddof=1)) if n > 1 else float('nan'),
              min=float(finite.min()), max=float(finite.max()), n=int(n),
              n_nan=int(v.size - n))
