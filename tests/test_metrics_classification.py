"""Classification metrics against scikit-learn (a test-only reference)."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

from cxr_jax.metrics import classification as C


def _binary(seed=0, n=200, ties=False):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 2, n)
  s = rng.normal(size=n) + y
  if ties:
    s = np.round(s, 1)
  return y, s


def _multi(seed=0, n=300, k=4):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, k, n)
  logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
  p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  return y, np.round(p, 2)  # rounding creates ties


@pytest.mark.parametrize('ties', [False, True])
def test_binary_auc_and_rates_match_sklearn(ties):
  y, s = _binary(ties=ties)
  assert C.roc_auc_binary(y, s) == pytest.approx(skm.roc_auc_score(y, s),
                                                 abs=1e-12)
  pred = (s > 0.5).astype(int)
  assert C.accuracy(y, pred) == pytest.approx(skm.accuracy_score(y, pred))
  assert C.precision(y, pred) == pytest.approx(skm.precision_score(y, pred))
  assert C.recall(y, pred) == pytest.approx(skm.recall_score(y, pred))
  assert C.precision(y, np.zeros_like(y)) == 0.0
  assert np.isnan(C.roc_auc_binary(np.ones(5), np.arange(5)))


def test_binary_report():
  y, s = _binary(seed=1)
  p1 = 1 / (1 + np.exp(-s))
  probs = np.stack([1 - p1, p1], 1)
  r = C.binary_report(y, probs)
  pred = (p1 >= 0.5).astype(int)
  assert r['auc'] == pytest.approx(skm.roc_auc_score(y, p1))
  assert r['accuracy'] == pytest.approx(skm.accuracy_score(y, pred))
  assert r['precision'] == pytest.approx(skm.precision_score(y, pred))
  assert r['recall'] == pytest.approx(skm.recall_score(y, pred))
  assert C.binary_report(y, p1) == r


@pytest.mark.parametrize('average', ['macro', 'weighted'])
def test_ovr_matches_sklearn(average):
  y, p = _multi()
  p = p / p.sum(1, keepdims=True)  # sklearn requires rows summing to 1
  want = skm.roc_auc_score(y, p, multi_class='ovr', average=average)
  assert C.roc_auc_ovr(p, y, average=average) == pytest.approx(want, abs=1e-12)


def test_micro_per_class_and_hand_till_match_sklearn():
  y, p = _multi(seed=3)
  onehot = label_binarize(y, classes=range(4))
  assert C.roc_auc_ovr(p, y, average='micro') == pytest.approx(
      skm.roc_auc_score(onehot, p, average='micro'), abs=1e-12)
  np.testing.assert_allclose(C.per_class_auc(p, y),
                             skm.roc_auc_score(onehot, p, average=None))
  pn = p / p.sum(1, keepdims=True)
  assert C.roc_auc_hand_till(pn, y) == pytest.approx(
      skm.roc_auc_score(y, pn, multi_class='ovo', average='macro'), abs=1e-12)
  with pytest.raises(ValueError, match='average'):
    C.roc_auc_ovr(p, y, average='samples')
  r = C.multiclass_report(y, p)
  assert r['accuracy'] == pytest.approx(skm.accuracy_score(y, p.argmax(1)))
  assert r['auc_class2'] == pytest.approx(C.per_class_auc(p, y)[2])


def test_bootstrap_ci_contains_estimate_and_narrows():
  widths = []
  for n in (60, 600):
    y, s = _binary(seed=4, n=n)
    ci = C.bootstrap_ci(C.roc_auc_binary, y, s, n=300, seed=0)
    assert ci['low'] <= ci['estimate'] <= ci['high']
    assert ci['estimate'] == pytest.approx(skm.roc_auc_score(y, s))
    widths.append(ci['high'] - ci['low'])
  assert widths[1] < 0.6 * widths[0]
  y, s = _binary(seed=5, n=20)
  strat = C.bootstrap_ci(C.roc_auc_binary, y, s, n=200, stratify=y)
  assert strat['n_valid'] == 200
  # Same seed -> same interval.
  assert C.bootstrap_ci(C.roc_auc_binary, y, s, n=200, stratify=y) == strat
