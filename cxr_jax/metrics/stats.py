"""Statistics for the studies: one-way ANOVA, Tukey HSD, paired t-test.

Thin, documented wrappers over scipy.stats that return plain dicts/rows, so
reports can print them as tables (`format_table`).
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
