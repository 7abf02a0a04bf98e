"""Saliency-map metrics (Study B): KL, CC, HS/SIM, NSS, AUC-Judd.

Every function takes single maps (H, W) and returns a float, or batches
(B, H, W) and returns (B,). Two conventions exist: the eye-gaze authors'
code (`variant='authors'`, the default, comparable with thesis Table 4.2)
and the MIT saliency benchmark's metrics (`variant='mit'`):

  KL  authors: sum_{G > 0} G (log G - log S), G = gt / sum(gt), S the
      predicted distribution (a probability map is renormalised to sum 1; or
      give `pred_logp`, the log-softmax output, used as is), no epsilon:
      zero S where G > 0 gives inf, as in the authors' torch KL.
      mit: sum G log(eps + G / (S + eps)), eps = 2.2204e-16, both maps
      normalised to sum 1 first.
      Both are KL(G || S); `kl(..., direction='pred||gt')` gives KL(S || G).
  CC  Pearson correlation of the two maps (mean of the product of the
      z-scored maps, population std); no variants.
  HS  authors: sum min(G, S) of the sum-normalised maps.
      mit (SIM): min-max scale each map to [0, 1], normalise to sum 1, then
      sum of minima.
  NSS mean of the z-scored prediction at fixated pixels (`fixmap > 0`);
      std with `ddof=0` as in the MIT Python metrics (MATLAB uses ddof=1).
  AUC-Judd  MIT's AUC_Judd: thresholds = prediction values at fixations;
      TP rate = fixations above, FP rate = other pixels above; trapezoid with
      (0, 0) and (1, 1) appended. `jitter=True` adds MIT's tiny random noise
      (uniform * 1e-7, seeded) to break ties; default off (deterministic).
      A constant prediction (no jitter) ranks nothing: 0.5, chance (the
      formula above would give a meaningless, even negative, value there).

An empty ground truth (a study without gaze: the map sums to 0, or is not
positive) has no distribution to compare with: KL, CC and HS/SIM return NaN
for it in every variant (never 0, the best KL). NSS and AUC-Judd are NaN
without fixations. Average per-image values with `np.nanmean` and report how
many were NaN.
"""
from __future__ import annotations

from typing import Any

import numpy as np

EPS_MIT = 2.2204e-16
VARIANTS = ('authors', 'mit')
KL_DIRECTIONS = ('gt||pred', 'pred||gt')


def _maps(*arrays: Any) -> tuple[list[np.ndarray], bool]:
  out = [np.asarray(a, np.float64) for a in arrays]
  shape = out[0].shape
  if any(a.shape != shape for a in out) or out[0].ndim not in (2, 3):
    raise ValueError('Maps must share one (H, W) or (B, H, W) shape, got '
                     f'{[a.shape for a in out]}.')
  single = out[0].ndim == 2
  return [a[None] if single else a for a in out], single


def _ret(v_B: np.ndarray, single: bool) -> float | np.ndarray:
  return float(v_B[0]) if single else v_B


def _empty_gt(gt_BHW: np.ndarray) -> np.ndarray:
  """(B,) True where the ground-truth map has no mass (sum not > 0)."""
  return ~(np.sum(gt_BHW, axis=(1, 2)) > 0)


def _nan_where(v_B: np.ndarray, bad_B: np.ndarray) -> np.ndarray:
  return np.where(bad_B, np.nan, v_B)


def _sum1(x_BHW: np.ndarray) -> np.ndarray:
  return x_BHW / np.sum(x_BHW, axis=(1, 2), keepdims=True)


def _minmax(x_BHW: np.ndarray) -> np.ndarray:
  lo = x_BHW.min(axis=(1, 2), keepdims=True)
  return (x_BHW - lo) / (x_BHW.max(axis=(1, 2), keepdims=True) - lo)


def _check(variant: str) -> None:
  if variant not in VARIANTS:
    raise ValueError(f'variant must be one of {VARIANTS}, got {variant!r}.')


def kl(gt: Any, pred: Any = None, *, variant: str = 'authors',
       pred_logp: Any = None, direction: str = 'gt||pred'
       ) -> float | np.ndarray:
  """KL divergence between the ground-truth (G) and predicted (S) saliency
  distributions (lower is better); NaN for an empty ground truth.

  `direction='gt||pred'` (default): KL(G || S), the form of the authors'
  code and of thesis Table 4.2 (formulas in the module docstring).
  `direction='pred||gt'`: KL(S || G), chapter 2's formula read literally
  (P the prediction, Q the ground truth), with the roles of the two maps
  swapped in the same formulas: mit sum S log(eps + S / (G + eps)); authors
  sum_{S > 0} S (log S - log G), which is inf wherever the prediction puts
  mass on a pixel without gaze (G = 0, most gaze maps), so report this
  direction with `variant='mit'`. `kl(pred, gt, variant='mit')` (arguments
  swapped) gives the same value as `direction='pred||gt'`, but this
  argument says what is meant and keeps the NaN rule on the ground truth.
  `pred_logp` (log-probabilities) may replace `pred` in either direction.
  """
  _check(variant)
  if direction not in KL_DIRECTIONS:
    raise ValueError(f'KL direction must be one of {KL_DIRECTIONS}, got '
                     f'{direction!r}.')
  if pred is None and pred_logp is None:
    raise ValueError('Give pred (probabilities) or pred_logp.')
  if direction == 'pred||gt':
    if pred is None:
      pred = np.exp(np.asarray(pred_logp, np.float64))
    (g, s), single = _maps(gt, pred)
    if variant == 'mit':
      v = _kl_mit(s, g)
    else:
      with np.errstate(divide='ignore'):
        v = _kl_exact(s, np.log(_sum1(g)))
    return _ret(_nan_where(v, _empty_gt(g)), single)
  if variant == 'mit':
    if pred is None:
      pred = np.exp(np.asarray(pred_logp, np.float64))
    (g, s), single = _maps(gt, pred)
    return _ret(_nan_where(_kl_mit(g, s), _empty_gt(g)), single)
  if pred_logp is not None:
    (g, logs), single = _maps(gt, pred_logp)
  else:
    (g, s), single = _maps(gt, pred)
    with np.errstate(divide='ignore'):
      logs = np.log(_sum1(s))
  return _ret(_nan_where(_kl_exact(g, logs), _empty_gt(g)), single)


def _kl_mit(p_BHW: np.ndarray, q_BHW: np.ndarray) -> np.ndarray:
  """KL(P || Q) the MIT way: sum P log(eps + P / (Q + eps)) of the
  sum-normalised maps, finite where Q = 0 < P."""
  with np.errstate(divide='ignore', invalid='ignore'):
    p, q = _sum1(p_BHW), _sum1(q_BHW)
    return np.sum(p * np.log(EPS_MIT + p / (q + EPS_MIT)), axis=(1, 2))


def _kl_exact(p_BHW: np.ndarray, logq_BHW: np.ndarray) -> np.ndarray:
  """KL(P || Q) = sum_{P > 0} P (log P - log Q), P sum-normalised, log Q
  given; no epsilon, so inf where Q = 0 < P (as the authors' torch KL)."""
  with np.errstate(divide='ignore', invalid='ignore'):
    p = _sum1(p_BHW)
    terms = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - logq_BHW),
                     0.0)
  return np.sum(terms, axis=(1, 2))


def cc(gt: Any, pred: Any) -> float | np.ndarray:
  """Pearson's linear correlation coefficient of two maps."""
  (a, b), single = _maps(gt, pred)
  z = lambda x: ((x - x.mean(axis=(1, 2), keepdims=True))
                 / x.std(axis=(1, 2), keepdims=True))
  with np.errstate(divide='ignore', invalid='ignore'):
    v = np.mean(z(a) * z(b), axis=(1, 2))
  return _ret(_nan_where(v, _empty_gt(a)), single)


def hs(gt: Any, pred: Any, *, variant: str = 'authors') -> float | np.ndarray:
  """Histogram similarity / SIM: sum of minima of the normalised maps."""
  _check(variant)
  (a, b), single = _maps(gt, pred)
  bad = _empty_gt(a)
  with np.errstate(divide='ignore', invalid='ignore'):
    if variant == 'mit':
      a, b = _minmax(a), _minmax(b)
    v = np.sum(np.minimum(_sum1(a), _sum1(b)), axis=(1, 2))
  return _ret(_nan_where(v, bad), single)


def sim(gt: Any, pred: Any) -> float | np.ndarray:
  """MIT SIM (= `hs(..., variant='mit')`)."""
  return hs(gt, pred, variant='mit')


def nss(pred: Any, fixmap: Any, *, ddof: int = 0) -> float | np.ndarray:
  """Normalised scanpath saliency: mean z-scored prediction at fixations."""
  (s, f), single = _maps(pred, fixmap)
  z = ((s - s.mean(axis=(1, 2), keepdims=True))
       / s.std(axis=(1, 2), keepdims=True, ddof=ddof))
  fix = f > 0
  with np.errstate(invalid='ignore'):
    v = np.sum(z * fix, axis=(1, 2)) / np.sum(fix, axis=(1, 2))
  return _ret(v, single)


def _auc_judd_one(s: np.ndarray, fix: np.ndarray) -> float:
  s = s.ravel()
  fix = fix.ravel()
  n_fix, n_pix = int(fix.sum()), s.size
  if n_fix == 0 or n_fix == n_pix:
    return float('nan')
  if not s.max() > s.min():  # constant: no ranking at all, chance
    return 0.5
  s = (s - s.min()) / (s.max() - s.min())
  thresholds = np.sort(s[fix])[::-1]
  above_all = n_pix - np.searchsorted(np.sort(s), thresholds, side='left')
  tp = np.arange(1, n_fix + 1) / n_fix
  fp = (above_all - np.arange(1, n_fix + 1)) / (n_pix - n_fix)
  tp = np.concatenate([[0.0], tp, [1.0]])
  fp = np.concatenate([[0.0], fp, [1.0]])
  return float(np.trapezoid(tp, fp))


def auc_judd(pred: Any, fixmap: Any, *, jitter: bool = False,
             seed: int = 0) -> float | np.ndarray:
  """AUC-Judd of the prediction for the fixated pixels (MIT benchmark)."""
  (s, f), single = _maps(pred, fixmap)
  if jitter:
    s = s + np.random.default_rng(seed).random(s.shape) / 1e7
  return _ret(np.array([_auc_judd_one(si, fi > 0) for si, fi in zip(s, f)]),
              single)
