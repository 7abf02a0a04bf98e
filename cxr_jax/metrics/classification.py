"""Classification metrics: accuracy, precision, recall, ROC AUCs, bootstrap.

AUCs use the Mann-Whitney rank formula with tied scores given their average
rank, which equals the trapezoidal ROC area (scikit-learn's value); there is
no scikit-learn dependency at run time. An AUC that is undefined (only one
class present) is NaN rather than an exception, so bootstrap replicates and
per-class tables never abort; callers see it in `n_valid` / as NaN.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from scipy import stats

AVERAGES = ('macro', 'micro', 'weighted')


def _labels(labels: Any) -> np.ndarray:
  return np.asarray(labels).astype(np.int64).ravel()


def accuracy(labels: Any, preds: Any) -> float:
  """Fraction of predictions equal to the labels."""
  y, p = _labels(labels), _labels(preds)
  return float(np.mean(y == p))


def precision(labels: Any, preds: Any, *, positive: int = 1) -> float:
  """TP / (TP + FP) for class `positive`; 0 when nothing is predicted
  positive (scikit-learn's zero_division default)."""
  y, p = _labels(labels), _labels(preds)
  pred_pos = p == positive
  return float(np.sum(pred_pos & (y == positive)) / max(pred_pos.sum(), 1))


def recall(labels: Any, preds: Any, *, positive: int = 1) -> float:
  """TP / (TP + FN) for class `positive`; 0 when the class is absent."""
  y, p = _labels(labels), _labels(preds)
  pos = y == positive
  return float(np.sum(pos & (p == positive)) / max(pos.sum(), 1))


def roc_auc_binary(labels: Any, scores: Any) -> float:
  """ROC AUC of `scores` for labels in {0, 1} (Mann-Whitney U / n1 n0)."""
  y = _labels(labels).astype(bool)
  s = np.asarray(scores, np.float64).ravel()
  if y.shape != s.shape:
    raise ValueError(f'labels {y.shape} and scores {s.shape} differ.')
  n1 = int(y.sum())
  n0 = y.size - n1
  if n1 == 0 or n0 == 0:
    return float('nan')
  ranks = stats.rankdata(s)  # ties get the average rank
  return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _probs(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
  p = np.asarray(probs, np.float64)
  y = _labels(labels)
  if p.ndim != 2 or p.shape[0] != y.size:
    raise ValueError(f'probs must be (N, K) with N = {y.size}, got {p.shape}.')
  return p, y


def per_class_auc(probs: Any, labels: Any) -> np.ndarray:
  """One-vs-rest AUC of each class column, (K,) (NaN for absent classes)."""
  p, y = _probs(probs, labels)
  return np.array([roc_auc_binary(y == k, p[:, k]) for k in range(p.shape[1])])


def roc_auc_ovr(probs: Any, labels: Any, *, average: str = 'macro') -> float:
  """Multi-class one-vs-rest AUC.

  'macro': unweighted mean of the per-class AUCs; 'weighted': weighted by
  class prevalence; 'micro': one binary AUC over all (sample, class) cells
  of the one-hot labels against the score matrix.
  """
  p, y = _probs(probs, labels)
  if average == 'micro':
    onehot = y[:, None] == np.arange(p.shape[1])[None, :]
    return roc_auc_binary(onehot.ravel(), p.ravel())
  aucs = per_class_auc(p, y)
  if average == 'macro':
    return float(np.mean(aucs))
  if average == 'weighted':
    w = np.bincount(y, minlength=p.shape[1]).astype(np.float64)
    return float(np.sum(np.nan_to_num(aucs) * w) / w.sum())
  raise ValueError(f'average must be one of {AVERAGES}, got {average!r}.')


def roc_auc_hand_till(probs: Any, labels: Any) -> float:
  """Hand & Till (2001) M: mean over class pairs of (A(i|j) + A(j|i)) / 2.

  A(i|j) is the AUC of column i separating class i from class j on the
  samples of those two classes (scikit-learn's multi_class='ovo', macro).
  """
  p, y = _probs(probs, labels)
  k = p.shape[1]
  pair_aucs = []
  for i in range(k):
    for j in range(i + 1, k):
      sel = (y == i) | (y == j)
      a_ij = roc_auc_binary(y[sel] == i, p[sel, i])
      a_ji = roc_auc_binary(y[sel] == j, p[sel, j])
      pair_aucs.append((a_ij + a_ji) / 2)
  return float(np.mean(pair_aucs))


def bootstrap_ci(metric_fn: Callable[..., float], *arrays: Any, n: int = 1000,
                 alpha: float = 0.05, seed: int = 0,
                 stratify: Any = None) -> dict[str, float]:
  """Percentile bootstrap confidence interval of `metric_fn(*arrays)`.

  All arrays are resampled with the same row indices (with replacement).
  `stratify=None` (default) resamples the whole set; passing a label array
  resamples within each of its classes, keeping the class counts fixed (so
  AUC replicates are always defined). Replicates that return NaN are dropped
  (`n_valid` counts the rest). Returns estimate (on the full data), low,
  high (the alpha/2 and 1 - alpha/2 percentiles), n_valid.
  """
  arrs = [np.asarray(a) for a in arrays]
  m = arrs[0].shape[0]
  if any(a.shape[0] != m for a in arrs):
    raise ValueError('All arrays must have the same first dimension.')
  rng = np.random.default_rng(seed)
  if stratify is None:
    groups = [np.arange(m)]
  else:
    s = np.asarray(stratify).ravel()
    groups = [np.flatnonzero(s == v) for v in np.unique(s)]
  reps = np.empty(n)
  for r in range(n):
    idx = np.concatenate([g[rng.integers(0, g.size, g.size)] for g in groups])
    reps[r] = metric_fn(*[a[idx] for a in arrs])
  reps = reps[np.isfinite(reps)]
  lo, hi = (np.percentile(reps, [100 * alpha / 2, 100 * (1 - alpha / 2)])
            if reps.size else (float('nan'), float('nan')))
  return dict(estimate=float(metric_fn(*arrs)), low=float(lo), high=float(hi),
              n_valid=int(reps.size))


def _positive_scores(probs: Any) -> np.ndarray:
  p = np.asarray(probs, np.float64)
  if p.ndim == 2:
    if p.shape[1] != 2:
      raise ValueError(f'Binary probs must be (N,) or (N, 2), got {p.shape}.')
    p = p[:, 1]
  return p.ravel()


def binary_report(labels: Any, probs: Any, *, threshold: float = 0.5,
                  scores: Any = None) -> dict[str, float]:
  """accuracy, precision, recall (positive class 1) and AUC.

  `probs` is (N,) P(class 1) or (N, 2) class probabilities; predictions are
  P(class 1) >= threshold (for (N, 2) softmax and 0.5 this is the argmax,
  ties going to class 1). `scores` (same shapes), if given, ranks the
  examples for the AUC instead: any increasing function of P(class 1), such
  as the log-odds (`cxr_jax.evaluators.classification.log_odds`). float32
  softmax probabilities round to exactly 1.0 for logit margins above ~17,
  which ties a confident model's positives; the log-odds keep them apart.
  """
  y = _labels(labels)
  s = _positive_scores(probs)
  pred = (s >= threshold).astype(np.int64)
  rank = s if scores is None else _positive_scores(scores)
  return dict(accuracy=accuracy(y, pred), precision=precision(y, pred),
              recall=recall(y, pred), auc=roc_auc_binary(y, rank), n=int(y.size))


def multiclass_report(labels: Any, probs: Any, *,
                      scores: Any = None) -> dict[str, float]:
  """accuracy (argmax), OvR AUC (macro / weighted / micro), Hand-Till AUC and
  per-class OvR AUCs as `auc_class<k>`. `scores` (N, K), if given, ranks for
  the AUCs instead of `probs`: the same increasing function of each cell's
  probability, such as the log-odds, which keep apart what float32
  probabilities round to 1.0 (every AUC here depends only on the order of
  the scores, within a column or, for 'micro', over all cells)."""
  p, y = _probs(probs, labels)
  s = p if scores is None else _probs(scores, labels)[0]
  out = dict(accuracy=accuracy(y, p.argmax(-1)),
             auc_ovr_macro=roc_auc_ovr(s, y, average='macro'),
             auc_ovr_weighted=roc_auc_ovr(s, y, average='weighted'),
             auc_ovr_micro=roc_auc_ovr(s, y, average='micro'),
             auc_hand_till=roc_auc_hand_till(s, y), n=int(y.size))
  for k, a in enumerate(per_class_auc(s, y)):
    out[f'auc_class{k}'] = float(a)
  return out
