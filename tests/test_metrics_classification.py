"""Classification metrics against scikit-learn (a test-only reference)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import special
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


def test_auc_ranks_log_odds_where_float32_softmax_saturates():
  """With logit margins of 17-40 (a confident model), float32 softmax
  probabilities round to exactly 1.0 and tie; the reports' `scores`, the
  evaluator's log-odds, keep the order of the margins, so the AUC is
  scikit-learn's on the float64 margins, binary and multi-class."""
  import jax  # pylint: disable=g-import-not-at-top
  from cxr_jax.evaluators.classification import log_odds  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(5)
  n = 200
  y = rng.integers(0, 2, n)
  margin = np.where(y == 1, rng.uniform(17, 40, n), rng.uniform(10, 35, n))
  logits = np.stack([np.zeros(n), margin], 1).astype(np.float32)
  probs = np.asarray(jax.nn.softmax(logits, -1))
  assert (probs[:, 1] == 1.0).sum() > 20  # saturated: ties
  want = skm.roc_auc_score(y, margin)
  assert C.binary_report(y, probs)['auc'] != pytest.approx(want, abs=1e-4)
  odds = np.asarray(log_odds(logits))
  np.testing.assert_allclose(odds[:, 1], margin, rtol=1e-6)
  assert C.binary_report(y, probs, scores=odds)['auc'] == pytest.approx(
      want, abs=1e-12)
  y3 = rng.integers(0, 3, n)
  logits3 = (rng.normal(size=(n, 3)) * 2 + 25 * np.eye(3)[y3] *
             rng.uniform(0.5, 1.5, (n, 1))).astype(np.float32)
  probs3 = np.asarray(jax.nn.softmax(logits3, -1))
  assert (probs3.max(1) == 1.0).sum() > 20
  rep = C.multiclass_report(y3, probs3, scores=np.asarray(log_odds(logits3)))
  l64 = logits3.astype(np.float64)
  for k in range(3):  # log-odds in float64: l_k - logsumexp(others)
    ref = l64[:, k] - special.logsumexp(np.delete(l64, k, 1), axis=1)
    assert rep[f'auc_class{k}'] == pytest.approx(
        skm.roc_auc_score(y3 == k, ref), abs=1e-12)
