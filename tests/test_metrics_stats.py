"""Statistics wrappers against scipy on random groups."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from cxr_jax.metrics import stats as S


def _groups(seed=0):
  rng = np.random.default_rng(seed)
  return {'vgg16': rng.normal(0.2, 0.2, 40),
          'resnet50': rng.normal(0.1, 0.2, 35),
          'vit_b16': rng.normal(0.05, 0.2, 30)}


def test_anova_matches_scipy():
  g = _groups()
  r = S.anova_oneway(g)
  want = stats.f_oneway(*g.values())
  assert r['F'] == pytest.approx(want.statistic)
  assert r['p'] == pytest.approx(want.pvalue)
  assert (r['df_between'], r['df_within']) == (2, 102)
  # NaNs are dropped.
  g2 = dict(g, vgg16=np.append(g['vgg16'], np.nan))
  assert S.anova_oneway(g2)['F'] == pytest.approx(r['F'])


def test_tukey_matches_scipy_and_means():
  g = _groups(1)
  rows = S.tukey_hsd(g)
  assert [(r['a'], r['b']) for r in rows] == [
      ('vgg16', 'resnet50'), ('vgg16', 'vit_b16'), ('resnet50', 'vit_b16')]
  res = stats.tukey_hsd(*g.values())
  ci = res.confidence_interval(0.95)
  names = list(g)
  for r in rows:
    i, j = names.index(r['a']), names.index(r['b'])
    assert r['meandiff'] == pytest.approx(g[r['b']].mean() - g[r['a']].mean())
    assert r['p'] == pytest.approx(res.pvalue[i, j])
    assert r['ci_low'] < r['meandiff'] < r['ci_high']
    assert r['ci_high'] - r['ci_low'] == pytest.approx(
        ci.high[i, j] - ci.low[i, j])
    assert r['reject'] == (r['p'] < 0.05)


def test_paired_ttest_matches_scipy():
  rng = np.random.default_rng(2)
  a = rng.normal(size=50)
  b = a + rng.normal(0.3, 0.5, 50)
  r = S.paired_ttest(a, b)
  want = stats.ttest_rel(a, b)
  assert r['t'] == pytest.approx(want.statistic)
  assert r['p'] == pytest.approx(want.pvalue)
  assert r['mean_diff'] == pytest.approx(np.mean(a - b)) and r['n'] == 50
  a[0] = np.nan
  assert S.paired_ttest(a, b)['n'] == 49
  with pytest.raises(ValueError):
    S.paired_ttest(a, b[:-1])


def test_format_table():
  rows = [dict(model='vgg16', diff=0.18612, n=3),
          dict(model='a,b', diff=0.05, n=4)]
  md = S.format_table(rows)
  assert md.splitlines()[0] == '| model | diff | n |'
  assert '| vgg16 | 0.1861 | 3 |' in md
  csv = S.format_table(rows, fmt='csv')
  assert csv.splitlines() == ['model,diff,n', 'vgg16,0.1861,3', '"a,b",0.05,4']
