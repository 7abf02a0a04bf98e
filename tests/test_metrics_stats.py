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


def _paired_groups(seed=3, n=30):
  """Three models scored on the same n images (image effect + model shift)."""
  rng = np.random.default_rng(seed)
  image = rng.normal(0, 1, n)
  return {'vgg16': image + 0.5 + rng.normal(0, 0.3, n),
          'resnet50': image + 0.2 + rng.normal(0, 0.3, n),
          'vit_b16': image + rng.normal(0, 0.3, n)}


def test_friedman_matches_scipy():
  g = _paired_groups()
  r = S.friedman(g)
  want = stats.friedmanchisquare(*g.values())
  assert r['statistic'] == pytest.approx(want.statistic)
  assert r['p'] == pytest.approx(want.pvalue)
  assert (r['n'], r['k']) == (30, 3)
  # An image with a NaN under any model is dropped from every model.
  g2 = {k: v.copy() for k, v in g.items()}
  g2['resnet50'][4] = np.nan
  g2['vit_b16'][7] = np.inf
  r2 = S.friedman(g2)
  keep = np.ones(30, bool)
  keep[[4, 7]] = False
  want2 = stats.friedmanchisquare(*(v[keep] for v in g.values()))
  assert r2['n'] == 28
  assert r2['statistic'] == pytest.approx(want2.statistic)
  assert r2['p'] == pytest.approx(want2.pvalue)


def test_holm_by_hand():
  """Holm's step-down adjustment worked by hand for p = (.01, .04, .03, .005),
  m = 4. Sorted ascending with multipliers m - j + 1 = 4, 3, 2, 1:
    p_(1) = .005 (index 3) * 4 = .02
    p_(2) = .010 (index 0) * 3 = .03   running max .03
    p_(3) = .030 (index 2) * 2 = .06   running max .06
    p_(4) = .040 (index 1) * 1 = .04   running max .06
  so, in input order, (.03, .06, .06, .02). Holm's sequential rule at
  alpha = .05 agrees: .005 <= .05/4 and .01 <= .05/3 are rejected, then
  .03 > .05/2 stops, so exactly indices 0 and 3 are rejected, the two whose
  adjusted p is <= .05."""
  p = [0.01, 0.04, 0.03, 0.005]
  adj = S.holm(p)
  np.testing.assert_allclose(adj, [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
  np.testing.assert_array_equal(adj <= 0.05, [True, False, False, True])
  # Capped at 1: (.5, .2, .9) -> .2 * 3 = .6; .5 * 2 = 1.0; .9 * 1 = .9,
  # running max 1.0.
  np.testing.assert_allclose(S.holm([0.5, 0.2, 0.9]), [1.0, 0.6, 1.0])
  # Ties: (.02, .02, .5) -> .02 * 3 = .06; .02 * 2 = .04, running max .06;
  # .5 * 1 = .5.
  np.testing.assert_allclose(S.holm([0.02, 0.02, 0.5]), [0.06, 0.06, 0.5])
  # Monotone in the raw p-values and never below them.
  r = np.random.default_rng(4).uniform(0, 0.2, 10)
  adj = S.holm(r)
  assert np.all(np.diff(adj[np.argsort(r)]) >= 0) and np.all(adj >= r)


def test_pairwise_wilcoxon_matches_scipy_and_holm():
  g = _paired_groups()
  rows = S.pairwise_wilcoxon(g)
  assert [(r['a'], r['b']) for r in rows] == [
      ('vgg16', 'resnet50'), ('vgg16', 'vit_b16'), ('resnet50', 'vit_b16')]
  for r in rows:
    want = stats.wilcoxon(g[r['a']], g[r['b']])
    assert r['statistic'] == pytest.approx(want.statistic)
    assert r['p'] == pytest.approx(want.pvalue)
    assert r['median_diff'] == pytest.approx(np.median(g[r['a']] - g[r['b']]))
    assert r['n'] == 30
    assert r['reject'] == (r['p_holm'] <= 0.05)
  np.testing.assert_allclose([r['p_holm'] for r in rows],
                             S.holm([r['p'] for r in rows]))


def test_pairwise_wilcoxon_drops_nan_pairwise():
  g = _paired_groups()
  g['vgg16'] = g['vgg16'].copy()
  g['vgg16'][[0, 5]] = np.nan
  rows = {(r['a'], r['b']): r for r in S.pairwise_wilcoxon(g)}
  keep = np.isfinite(g['vgg16'])
  r = rows['vgg16', 'vit_b16']
  assert r['n'] == 28
  assert r['p'] == pytest.approx(
      stats.wilcoxon(g['vgg16'][keep], g['vit_b16'][keep]).pvalue)
  # The pair without the NaNs keeps every image.
  assert rows['resnet50', 'vit_b16']['n'] == 30
  # Identical models: all differences zero, no evidence of a difference.
  same = S.pairwise_wilcoxon({'a': g['vit_b16'], 'b': g['vit_b16']})
  assert (same[0]['statistic'], same[0]['p'], same[0]['p_holm']) == (0, 1, 1)


def test_paired_tests_reject_bad_input():
  g = _paired_groups()
  with pytest.raises(ValueError, match='same length.*vit_b16.: 29'):
    S.friedman(dict(g, vit_b16=g['vit_b16'][:-1]))
  with pytest.raises(ValueError, match='same length'):
    S.pairwise_wilcoxon(dict(g, vit_b16=g['vit_b16'][:-1]))
  with pytest.raises(ValueError, match='at least 3 groups'):
    S.friedman({'vgg16': g['vgg16'], 'vit_b16': g['vit_b16']})
  with pytest.raises(ValueError, match='at least 2 groups'):
    S.pairwise_wilcoxon({'vgg16': g['vgg16']})
  nan = np.full(30, np.nan)
  with pytest.raises(ValueError, match='No subject has a finite value'):
    S.friedman(dict(g, vit_b16=nan))
  with pytest.raises(ValueError, match="'vgg16' and 'vit_b16' share no"):
    S.pairwise_wilcoxon(dict(g, vit_b16=nan))


def test_format_table():
  rows = [dict(model='vgg16', diff=0.18612, n=3),
          dict(model='a,b', diff=0.05, n=4)]
  md = S.format_table(rows)
  assert md.splitlines()[0] == '| model | diff | n |'
  assert '| vgg16 | 0.1861 | 3 |' in md
  csv = S.format_table(rows, fmt='csv')
  assert csv.splitlines() == ['model,diff,n', 'vgg16,0.1861,3', '"a,b",0.05,4']
