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
