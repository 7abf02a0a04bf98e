"""Statistics for the studies: one-way ANOVA, Tukey HSD, paired tests.

Thin, documented wrappers over scipy.stats that return plain dicts/rows, so
reports can print them as tables (`format_table`). `anova_oneway` and
`tukey_hsd` treat the groups as independent samples (the thesis's analysis);
`friedman` and `pairwise_wilcoxon` treat them as repeated measures (the same
subjects, e.g. test images, under every group), aligned by position.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats


def _groups(groups: Mapping[str, Any]) -> tuple[list[str], list[np.ndarray]]:
  names = list(groups)
  vals = [np.asarray(groups[k], np.float64).ravel() for k in names]
  vals = [v[np.isfinite(v)] for v in vals]
  if len(names) < 2 or any(v.size < 2 for v in vals):
    raise ValueError('Need at least two groups with two finite values each.')
  return names, vals


def anova_oneway(groups: Mapping[str, Any]) -> dict[str, float]:
  """One-way ANOVA across groups (non-finite values dropped).

  Returns F, p, df_between = k - 1, df_within = N - k.
  """
  names, vals = _groups(groups)
  res = stats.f_oneway(*vals)
  n = sum(v.size for v in vals)
  return dict(F=float(res.statistic), p=float(res.pvalue),
              df_between=len(names) - 1, df_within=n - len(names))


def tukey_hsd(groups: Mapping[str, Any], *,
              alpha: float = 0.05) -> list[dict[str, Any]]:
  """Tukey's HSD for every pair (a, b) in the groups' order.

  Each row: a, b, meandiff = mean(b) - mean(a) (statsmodels' convention),
  p (adjusted), ci_low, ci_high (the 1 - alpha family-wise interval of
  meandiff) and reject = p < alpha.
  """
  names, vals = _groups(groups)
  res = stats.tukey_hsd(*vals)
  ci = res.confidence_interval(confidence_level=1 - alpha)
  rows = []
  for i in range(len(names)):
    for j in range(i + 1, len(names)):
      p = float(res.pvalue[j, i])
      rows.append(dict(a=names[i], b=names[j],
                       meandiff=float(res.statistic[j, i]), p=p,
                       ci_low=float(ci.low[j, i]), ci_high=float(ci.high[j, i]),
                       reject=bool(p < alpha)))
  return rows


def paired_ttest(a: Any, b: Any) -> dict[str, float]:
  """Two-sided paired t-test of a against b (pairs with a NaN dropped).

  Returns t, p, mean_diff = mean(a - b), n (pairs used).
  """
  x = np.asarray(a, np.float64).ravel()
  y = np.asarray(b, np.float64).ravel()
  if x.shape != y.shape:
    raise ValueError(f'Paired samples differ in size: {x.size} vs {y.size}.')
  ok = np.isfinite(x) & np.isfinite(y)
  x, y = x[ok], y[ok]
  res = stats.ttest_rel(x, y)
  return dict(t=float(res.statistic), p=float(res.pvalue),
              mean_diff=float(np.mean(x - y)), n=int(x.size))


def _paired(groups: Mapping[str, Any], min_groups: int
            ) -> tuple[list[str], np.ndarray]:
  """Names and an (n, k) float matrix of repeated measures, by position."""
  names = list(groups)
  if len(names) < min_groups:
    raise ValueError(f'Need at least {min_groups} groups for this paired '
                     f'test, got {len(names)}: {names}.')
  vals = [np.asarray(groups[k], np.float64).ravel() for k in names]
  sizes = {k: v.size for k, v in zip(names, vals)}
  if len(set(sizes.values())) != 1:
    raise ValueError('Paired (repeated-measures) groups must have the same '
                     f'length, one value per subject in the same order; got '
                     f'lengths {sizes}.')
  return names, np.stack(vals, axis=1)


def friedman(groups: Mapping[str, Any]) -> dict[str, float]:
  """Friedman test: do k >= 3 repeated-measures groups differ in location?

  The groups are paired by position (value i of every group is subject i);
  a subject is used only if every group has a finite value for it. The
  non-parametric counterpart of a repeated-measures ANOVA: it ranks within
  each subject, so differences between subjects drop out.

  Returns statistic (chi-square, k - 1 df), p, n (subjects used), k. When
  every subject ties across all groups the statistic is undefined (NaN).
  Raises ValueError for fewer than 3 groups (scipy's minimum), unequal
  lengths or no subject finite in every group.
  """
  names, x = _paired(groups, 3)
  x = x[np.all(np.isfinite(x), axis=1)]
  if x.shape[0] < 1:
    raise ValueError(f'No subject has a finite value in every group {names}.')
  with np.errstate(invalid='ignore', divide='ignore'):
    res = stats.friedmanchisquare(*x.T)
  return dict(statistic=float(res.statistic), p=float(res.pvalue),
              n=int(x.shape[0]), k=len(names))


def holm(pvalues: Any) -> np.ndarray:
  """Holm's step-down adjusted p-values (family-wise error), input order.

  Sorted ascending, p_(i) becomes max over j <= i of (m - j + 1) p_(j)
  (1-based j), capped at 1: monotone in the raw p, reject where <= alpha.
  """
  p = np.asarray(pvalues, np.float64).ravel()
  m = p.size
  order = np.argsort(p, kind='stable')
  adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
  out = np.empty(m)
  out[order] = adj
  return out


def pairwise_wilcoxon(groups: Mapping[str, Any], *,
                      alpha: float = 0.05) -> list[dict[str, Any]]:
  """Wilcoxon signed-rank test for every pair (a, b) of paired groups.

  The groups are paired by position (same length, value i of every group is
  subject i); each pair uses the subjects finite in both (pairwise
  deletion). Each row: a, b, n (pairs used), median_diff = median(a - b),
  statistic, p (scipy's two-sided test, default method), p_holm (Holm over
  all k(k-1)/2 pairs) and reject = p_holm <= alpha (Holm's rule). A pair
  whose differences are all zero (e.g. two identical models) gets statistic
  0 and p 1, where scipy's would be undefined. Raises ValueError for fewer
  than 2 groups, unequal lengths or a pair with no finite pair of values.
  """
  names, x = _paired(groups, 2)
  rows = []
  for i in range(len(names)):
    for j in range(i + 1, len(names)):
      ok = np.isfinite(x[:, i]) & np.isfinite(x[:, j])
      a, b = x[ok, i], x[ok, j]
      if not a.size:
        raise ValueError(f'Groups {names[i]!r} and {names[j]!r} share no '
                         'subject with finite values in both.')
      if np.all(a == b):
        stat, p = 0.0, 1.0
      else:
        res = stats.wilcoxon(a, b)
        stat, p = float(res.statistic), float(res.pvalue)
      rows.append(dict(a=names[i], b=names[j], n=int(a.size),
                       median_diff=float(np.median(a - b)), statistic=stat,
                       p=p))
  for r, q in zip(rows, holm([r['p'] for r in rows])):
    r.update(p_holm=float(q), reject=bool(q <= alpha))
  return rows


def format_table(rows: Sequence[Mapping[str, Any]], *, fmt: str = 'markdown',
                 floatfmt: str = '.4g') -> str:
  """Rows of dicts (same keys) -> a Markdown or CSV table string."""
  if fmt not in ('markdown', 'csv'):
    raise ValueError(f"fmt must be 'markdown' or 'csv', got {fmt!r}.")
  if not rows:
    return ''
  keys = list(rows[0])

  def cell(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
      return format(float(v), floatfmt)
    return str(v)

  body = [[cell(r[k]) for k in keys] for r in rows]
  if fmt == 'csv':
    esc = lambda s: ('"' + s.replace('"', '""') + '"'
                     if any(ch in s for ch in ',"\n') else s)
    return '\n'.join(','.join(esc(c) for c in line)
                     for line in [keys] + body) + '\n'
  lines = ['| ' + ' | '.join(keys) + ' |',
           '|' + '|'.join('---' for _ in keys) + '|']
  lines += ['| ' + ' | '.join(body_row) + ' |' for body_row in body]
  return '\n'.join(lines) + '\n'
