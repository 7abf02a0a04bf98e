"""Saliency metrics against direct re-implementations of the formulas."""
from __future__ import annotations

import numpy as np
import pytest

from cxr_jax.metrics import saliency as S

EPS = 2.2204e-16


def _maps(seed=0, b=3, h=12, w=10):
  rng = np.random.default_rng(seed)
  gt = rng.random((b, h, w)) ** 3
  logits = rng.normal(size=(b, h, w))
  pred = np.exp(logits) / np.exp(logits).sum((1, 2), keepdims=True)
  fix = (rng.random((b, h, w)) < 0.08).astype(np.uint8)
  fix[:, 0, 0] = 1
  return gt, pred, np.log(pred), fix


def test_kl_variants():
  gt, pred, logp, _ = _maps()
  for i in range(3):
    g = gt[i].ravel() / gt[i].sum()
    s = pred[i].ravel() / pred[i].sum()
    mit = sum(gi * np.log(EPS + gi / (si + EPS)) for gi, si in zip(g, s))
    auth = sum(gi * np.log(gi / si) for gi, si in zip(g, s) if gi > 0)
    assert S.kl(gt[i], pred[i], variant='mit') == pytest.approx(mit)
    assert S.kl(gt[i], pred[i]) == pytest.approx(auth)
    assert S.kl(gt[i], pred_logp=logp[i]) == pytest.approx(auth)
  np.testing.assert_allclose(S.kl(gt, pred),
                             [S.kl(g, p) for g, p in zip(gt, pred)])
  assert S.kl(gt, pred).shape == (3,)
  assert S.kl(gt[0], gt[0]) == pytest.approx(0, abs=1e-12)
  # Zero mass where the target has mass: inf without epsilon, finite with.
  z = pred[0].copy()
  z.flat[np.argmax(gt[0])] = 0
  assert np.isinf(S.kl(gt[0], z))
  assert np.isfinite(S.kl(gt[0], z, variant='mit'))


def test_kl_direction_closed_form():
  """KL(G || S) and KL(S || G) of two-pixel maps, by hand: G = (1/2, 1/2),
  S = (1/4, 3/4) (given unnormalised, as 3G and 2S, to check the
  normalisation):
    KL(G || S) = 1/2 ln(2) + 1/2 ln(2/3) = 1/2 ln(4/3)
    KL(S || G) = 1/4 ln(1/2) + 3/4 ln(3/2) = 3/4 ln(3) - ln(2)."""
  g = 3 * np.array([[0.5, 0.5]])
  s = 2 * np.array([[0.25, 0.75]])
  gs, sg = 0.5 * np.log(4 / 3), 0.75 * np.log(3) - np.log(2)
  for variant in S.VARIANTS:  # eps = 2.2e-16 moves nothing at this scale
    assert S.kl(g, s, variant=variant) == pytest.approx(gs, rel=1e-12)
    assert S.kl(g, s, variant=variant, direction='pred||gt') == pytest.approx(
        sg, rel=1e-12)
    assert S.kl(g, pred_logp=np.log(s / 2), variant=variant,
                direction='pred||gt') == pytest.approx(sg, rel=1e-12)
  # A pixel without gaze under predicted mass: G = (1, 0), S = (1/2, 1/2).
  # KL(G || S) = ln 2 in both variants; KL(S || G) is inf without epsilon
  # and 1/2 ln(1/2 + eps) + 1/2 ln(eps + 1/2 / eps) the MIT way.
  g0, s0 = np.array([[1.0, 0.0]]), np.array([[0.5, 0.5]])
  assert S.kl(g0, s0) == pytest.approx(np.log(2), rel=1e-12)
  assert np.isinf(S.kl(g0, s0, direction='pred||gt'))
  mit = 0.5 * np.log(EPS + 0.5 / (1 + EPS)) + 0.5 * np.log(EPS + 0.5 / EPS)
  assert S.kl(g0, s0, variant='mit', direction='pred||gt') == pytest.approx(
      mit, rel=1e-12)
  # The swapped call is the same number; both are NaN without gaze.
  gt, pred, _, _ = _maps(2)
  gt[1] = 0
  want = S.kl(gt, pred, variant='mit', direction='pred||gt')
  np.testing.assert_array_equal(want, S.kl(pred, gt, variant='mit'))
  assert np.isnan(want[1]) and np.isfinite(want[[0, 2]]).all()
  with pytest.raises(ValueError, match='direction'):
    S.kl(g, s, direction='pred||pred')


def test_cc_hs_sim():
  gt, pred, _, _ = _maps(1)
  for i in range(3):
    a, b = gt[i].ravel(), pred[i].ravel()
    r = np.corrcoef(a, b)[0, 1]
    assert S.cc(gt[i], pred[i]) == pytest.approx(r)
    hs = sum(min(x / a.sum(), y / b.sum()) for x, y in zip(a, b))
    assert S.hs(gt[i], pred[i]) == pytest.approx(hs)
    am = (a - a.min()) / (a.max() - a.min())
    bm = (b - b.min()) / (b.max() - b.min())
    sim = sum(min(x / am.sum(), y / bm.sum()) for x, y in zip(am, bm))
    assert S.hs(gt[i], pred[i], variant='mit') == pytest.approx(sim)
    assert S.sim(gt[i], pred[i]) == pytest.approx(sim)
  assert S.cc(gt, gt) == pytest.approx(np.ones(3))
  assert S.hs(gt, gt * 5) == pytest.approx(np.ones(3))
  with pytest.raises(ValueError, match='variant'):
    S.hs(gt, pred, variant='x')


def test_nss():
  _, pred, _, fix = _maps(2)
  for i in range(3):
    s = pred[i]
    z = (s - s.mean()) / s.std()
    assert S.nss(s, fix[i]) == pytest.approx(z[fix[i] > 0].mean())
  assert S.nss(pred, fix).shape == (3,)


def _auc_judd_reference(s, fix):
  s = (s - s.min()) / (s.max() - s.min())
  s, fix = s.ravel(), fix.ravel() > 0
  th = sorted(s[fix], reverse=True)
  nf, npx = fix.sum(), s.size
  tp, fp = [0.0], [0.0]
  for i, t in enumerate(th):
    above = (s >= t).sum()
    tp.append((i + 1) / nf)
    fp.append((above - i - 1) / (npx - nf))
  tp.append(1.0)
  fp.append(1.0)
  return sum((tp[j] + tp[j + 1]) / 2 * (fp[j + 1] - fp[j])
             for j in range(len(tp) - 1))


def test_auc_judd():
  gt, pred, _, fix = _maps(3)
  for i in range(3):
    assert S.auc_judd(pred[i], fix[i]) == pytest.approx(
        _auc_judd_reference(pred[i], fix[i]))
  # A map that is highest exactly at the fixations is near perfect.
  perfect = fix[0] + 0.01 * gt[0]
  assert S.auc_judd(perfect, fix[0]) > 0.99
  assert S.auc_judd(pred, fix).shape == (3,)
  j = S.auc_judd(pred, fix, jitter=True)
  np.testing.assert_allclose(j, S.auc_judd(pred, fix), atol=1e-3)


def _with_empty_gt(seed=4):
  gt, pred, logp, fix = _maps(seed)
  gt[1] = 0.0  # a study without gaze: all-zero target map
  return gt, pred, logp, fix


@pytest.mark.parametrize('name,fn', [
    ('kl authors', lambda g, p, lp: S.kl(g, p)),
    ('kl authors logp', lambda g, p, lp: S.kl(g, pred_logp=lp)),
    ('kl mit', lambda g, p, lp: S.kl(g, p, variant='mit')),
    ('kl mit logp', lambda g, p, lp: S.kl(g, pred_logp=lp, variant='mit')),
    ('cc', lambda g, p, lp: S.cc(g, p)),
    ('hs authors', lambda g, p, lp: S.hs(g, p)),
    ('hs mit', lambda g, p, lp: S.hs(g, p, variant='mit')),
    ('sim', lambda g, p, lp: S.sim(g, p)),
])
def test_empty_ground_truth_is_nan(name, fn):
  """An all-zero target has no distribution: NaN, never a score (KL 0 would
  be the best possible); the other images of the batch are unaffected."""
  gt, pred, logp, _ = _with_empty_gt()
  with np.errstate(all='raise'):  # no warnings on the way
    v = fn(gt, pred, logp)
    one = fn(gt[1], pred[1], logp[1])
  assert np.isnan(one) and isinstance(one, float), name
  assert np.isnan(v[1]) and np.isfinite(v[[0, 2]]).all(), name
  for i in (0, 2):
    assert v[i] == pytest.approx(fn(gt[i], pred[i], logp[i])), name


def test_nss_auc_judd_without_fixations_are_nan():
  _, pred, _, fix = _maps(5)
  fix[2] = 0
  assert np.isnan(S.nss(pred, fix)[2]) and np.isnan(S.auc_judd(pred, fix)[2])


def test_auc_judd_constant_map_is_chance():
  _, pred, _, fix = _maps(6)
  for i in range(3):
    for c in (0.0, 1.0, 1e-3):
      assert S.auc_judd(np.full_like(pred[i], c), fix[i]) == 0.5
  np.testing.assert_array_equal(S.auc_judd(np.ones_like(pred), fix),
                                [0.5, 0.5, 0.5])
  # The tie-aware ROC AUC (fixated pixels positive) of a constant score is
  # the same chance value.
  metrics = pytest.importorskip('sklearn.metrics')
  assert metrics.roc_auc_score(fix[0].ravel() > 0,
                               np.ones(fix[0].size)) == 0.5
  # A near-constant map is no longer a tie: AUC-Judd stays in [0, 1].
  rng = np.random.default_rng(0)
  for _ in range(20):
    s = 1.0 + 1e-9 * rng.random(pred[0].shape)
    assert 0 <= S.auc_judd(s, fix[0]) <= 1


def test_evaluator_leaves_out_and_counts_studies_without_gaze(monkeypatch):
  """The split's means skip a study without gaze (NaN, not KL = 0, the best
  value) and report how many were skipped."""
  from cxr_jax.evaluators import saliency as sal_eval  # pylint: disable=g-import-not-at-top
  gt, pred, _, fix = _maps(b=4)
  gt[2] = 0.0  # no gaze rows for this study
  fix[2] = 0
  ev = sal_eval.Evaluator(ctx=None, split='test')
  monkeypatch.setattr(ev, 'predict', lambda v: dict(
      gaze=gt, pred=pred, fixmap=fix, index=np.arange(4)))
  got = ev.run(None)
  keep = [0, 1, 3]
  assert got['n_undefined'] == 1
  assert got['kl'] == pytest.approx(np.mean(S.kl(gt[keep], pred[keep])))
  assert got['cc'] == pytest.approx(np.mean(S.cc(gt[keep], pred[keep])))


def test_evaluator_kl_from_log_probabilities_survives_underflow():
  """A pixel the target looks at with log p = -120 underflows to 0 in float32:
  KL from the probabilities is inf, from the log-softmax it is finite and
  equals the float64 value; the other metrics are unchanged."""
  from cxr_jax.evaluators import saliency as sal_eval  # pylint: disable=g-import-not-at-top
  gt, _, _, fix = _maps(b=2)
  rng = np.random.default_rng(3)
  logits = rng.normal(size=gt.shape)
  logits[0, 3, 4] = -130.0
  logp64 = logits - np.log(np.exp(logits).sum((1, 2), keepdims=True))
  logp = logp64.astype(np.float32)
  pred = np.exp(logp)
  assert pred[0, 3, 4] == 0 and gt[0, 3, 4] > 0
  plain = sal_eval.per_image_metrics(gt, pred, fix)
  safe = sal_eval.per_image_metrics(gt, pred, fix, pred_logp=logp)
  assert np.isinf(plain['kl'][0])
  g = gt / gt.sum((1, 2), keepdims=True)
  ref = np.sum(g * (np.log(g) - logp64), axis=(1, 2))
  np.testing.assert_allclose(safe['kl'], ref, rtol=1e-5)
  for k in ('cc', 'hs', 'nss', 'auc_judd'):
    np.testing.assert_array_equal(safe[k], plain[k])
  # The MIT variant keeps its epsilon formula on the probabilities.
  mit = sal_eval.per_image_metrics(gt, pred, fix, 'mit', pred_logp=logp)
  np.testing.assert_allclose(mit['kl'], S.kl(gt, pred, variant='mit'))
