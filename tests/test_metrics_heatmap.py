"""Heatmap-vs-mask metrics and deletion/insertion curves: known answers."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxr_jax.metrics import faithfulness as F
from cxr_jax.metrics import heatmap as H


def _mask(h=20, w=20, box=(5, 10, 4, 12)):
  m = np.zeros((h, w), np.float32)
  m[box[0]:box[1], box[2]:box[3]] = 1
  return m


def test_diff_gradcam_known_values():
  m = _mask()
  assert H.diff_gradcam(m, m) == 1.0
  assert H.diff_gradcam(np.full_like(m, 0.3), m) == pytest.approx(0.0)
  assert H.diff_gradcam(1 - m, m) == -1.0
  cam = np.random.default_rng(0).random(m.shape)
  want = cam[m > 0].mean() - cam[m == 0].mean()
  assert H.diff_gradcam(cam, m) == pytest.approx(want)
  assert np.isnan(H.diff_gradcam(cam, np.zeros_like(m)))
  assert np.isnan(H.diff_gradcam(cam, np.ones_like(m)))


def _ehr_thesis_reference(cam, mask, n=101):
  t = np.linspace(0, 1, n)
  r = []
  for ti in t:
    sel = cam >= ti
    r.append((sel & (mask > 0)).sum() / sel.sum() if sel.sum() else 0.0)
  return sum((r[i] + r[i + 1]) / 2 * (t[i + 1] - t[i]) for i in range(n - 1))


def _ehr_inputiba_reference(cam, mask, weight_by_heat=True):
  """InputIBA's published EHR procedure, written out independently of ours:
  `EffectiveHeatRatios.evaluate` in CAMP-eXplain-AI/InputIBA,
  input_iba/evaluation/vision/effective_heat_ratios.py. It zeroes the heat
  below base_threshold = 0.1 (`heatmap[~(heatmap >= 0.1)] = 0`); for each
  q in linspace(0, 1, 11) takes t = min(quantile(heat >= 0.1, q),
  0.99 * max heat); ratio = (heat inside the ROI at pixels >= t, or their
  count without `weight_by_heat`) / (count of pixels >= t + 1e-8): the
  numerator is heat-weighted, the denominator a pixel count in their code;
  then `scipy.integrate.trapezoid(ratios, quantiles)`."""
  heat = [float(v) if v >= 0.1 else 0.0 for v in np.ravel(cam)]
  inside = [bool(v > 0) for v in np.ravel(mask)]
  poi = sorted(v for v in np.ravel(cam) if v >= 0.1)
  ratios = []
  for k in range(11):
    pos = k / 10 * (len(poi) - 1)  # quantile: linear between order stats
    lo = int(pos)
    hi = min(lo + 1, len(poi) - 1)
    t = min(poi[lo] + (pos - lo) * (poi[hi] - poi[lo]), 0.99 * max(heat))
    num = sum((v if weight_by_heat else 1.0)
              for v, m in zip(heat, inside) if v >= t and m)
    ratios.append(num / (sum(v >= t for v in heat) + 1e-8))
  return sum(0.1 * (ratios[k] + ratios[k + 1]) / 2 for k in range(10))


def _cam_with_heat_pixels(rng, shape, n):
  """A [0, 1] map with exactly n pixels >= 0.1 (max 1). With n - 1 prime to
  10 no quantile position k (n - 1) / 10, 0 < k < 10, is an integer, so no
  threshold falls on a pixel value and rounding cannot move a pixel across
  a threshold."""
  cam = rng.uniform(0, 0.09, shape)
  idx = rng.choice(cam.size, n, replace=False)
  cam.flat[idx] = rng.uniform(0.1, 1.0, n)
  cam.flat[idx[0]] = 1.0
  return cam


def test_ehr_inputiba_by_hand_and_against_the_published_procedure():
  # By hand: heat (.05, .2, .4 / .6, 1, 0), ROI = the .4 and the 1.
  # Heat >= .1: (.2, .4, .6, 1), n = 4, quantile position 3q; thresholds
  # q = 0: .2; q = .1, .2, .3: .26, .32, .38; q = .4, .5, .6: .44, .5, .56;
  # q = .7, .8, .9: .64, .76, .88; q = 1: min(1, .99) = .99.
  # Pixels >= t: 4 (heat in ROI 1.4) -> 1.4/4 = .35; then 3 -> 1.4/3;
  # then 2 (.6, 1) -> 1/2; then 1 (the 1) -> 1, also at q = 1.
  # Trapezoid, step .1: .1 (.35/2 + 3 (1.4/3) + 3 (.5) + 3 (1) + 1/2)
  # = .1 * 6.575 = .6575.
  # Pixel counts instead of heat: .1 (.5/2 + 3 (2/3) + 3 (.5) + 3 + 1/2)
  # = .725. (Heat over heat, which InputIBA does not do, would differ:
  # its first ratio is 1.4/2.2.)
  cam = np.array([[0.05, 0.2, 0.4], [0.6, 1.0, 0.0]])
  roi = np.array([[1, 0, 1], [0, 1, 0]])
  assert H.ehr_auc(cam, roi, variant='inputiba') == pytest.approx(0.6575,
                                                                  rel=1e-7)
  assert H.ehr_auc(cam, roi, variant='inputiba',
                   weight_by_heat=False) == pytest.approx(0.725, rel=1e-7)
  assert _ehr_inputiba_reference(cam, roi) == pytest.approx(0.6575, rel=1e-7)
  m = _mask()
  rng = np.random.default_rng(1)
  for n in (38, 122, 300):  # n - 1 = 37, 121, 299
    cam = _cam_with_heat_pixels(rng, m.shape, n)
    for by_heat in (True, False):
      assert H.ehr_auc(cam, m, variant='inputiba',
                       weight_by_heat=by_heat) == pytest.approx(
                           _ehr_inputiba_reference(cam, m, by_heat), rel=1e-9)


def test_ehr_known_values_and_thesis_reference():
  m = _mask()
  frac = m.mean()
  # cam == mask: EHR = 1 for every t > 0, |mask|/N at t = 0.
  assert H.ehr_auc(m, m) == pytest.approx(1 - (1 - frac) / 200)
  assert H.ehr_auc(m, m) > 0.99
  assert H.ehr_auc(1 - m, m) == pytest.approx(frac / 200)
  # A constant map: EHR = |mask|/N up to t = c, then 0 (linear in between
  # the grid points 0.50 and 0.51).
  assert H.ehr_auc(np.full_like(m, 0.5), m) == pytest.approx(frac * 0.505,
                                                             abs=1e-9)
  rng = np.random.default_rng(1)
  for _ in range(3):
    cam = rng.random(m.shape) * (0.5 + m)
    cam /= cam.max()
    assert H.ehr_auc(cam, m) == pytest.approx(_ehr_thesis_reference(cam, m))
  x, r = H.ehr_curve(m, m)
  assert x.shape == r.shape == (101,) and r[0] == pytest.approx(frac)
  assert np.isnan(H.ehr_auc(np.full_like(m, 0.05), m, variant='inputiba'))
  with pytest.raises(ValueError, match='variant'):
    H.ehr_auc(m, m, variant='x')
  with pytest.raises(ValueError, match=r'\[0, 1\]'):
    H.ehr_auc(m * 255, m)


def test_localisation_metrics():
  m = _mask()
  rng = np.random.default_rng(2)
  cam = rng.random(m.shape) * 0.5
  cam[7, 6] = 1.0
  assert H.pointing_game(cam, m)
  cam2 = cam.copy()
  cam2[7, 12] = 2.0  # one pixel right of the mask
  assert not H.pointing_game(cam2, m)
  assert H.pointing_game(cam2, m, tolerance=1)
  assert H.relevance_mass_accuracy(m, m) == 1.0
  assert H.relevance_mass_accuracy(cam, m) == pytest.approx(
      cam[m > 0].sum() / cam.sum())
  pos = np.clip(cam - 0.25, 0, None)
  assert H.attribution_localisation(cam - 0.25, m) == pytest.approx(
      pos[m > 0].sum() / pos.sum())
  assert H.relevance_rank_accuracy(m + 0.01 * cam, m) == 1.0
  assert H.relevance_rank_accuracy(1 - m, m) == 0.0
  k = int(m.sum())
  top = np.argsort(-cam.ravel(), kind='stable')[:10]
  assert H.top_k_intersection(cam, m, k=10) == pytest.approx(
      m.ravel()[top].mean())
  assert H.top_k_intersection(m, m, k=k) == 1.0
  assert H.pixel_auc(cam, m) == pytest.approx(
      roc_auc_score(m.ravel(), cam.ravel()))
  assert H.pixel_auc(m, m) == 1.0
  assert np.isnan(H.pixel_auc(cam, np.zeros_like(m)))


def test_per_image_and_summarize():
  m = np.stack([_mask(), _mask(box=(0, 4, 0, 4)), np.zeros((20, 20))])
  cams = np.stack([_mask(), np.full((20, 20), 0.3), np.ones((20, 20))])
  d = H.per_image(H.diff_gradcam, cams, m)
  np.testing.assert_allclose(d[:2], [1.0, 0.0], atol=1e-12)
  assert np.isnan(d[2])
  s = H.summarize(d)
  assert s['n'] == 2 and s['n_nan'] == 1
  assert s['mean'] == pytest.approx(0.5) and s['max'] == 1.0
  assert s['std'] == pytest.approx(np.std([1.0, 0.0], ddof=1))
  ehr = H.per_image(H.ehr_auc, cams[:1], m[:1], variant='inputiba')
  assert ehr.shape == (1,)


def _region_classifier(images):
  """P(class 1) rises with the mean intensity of the top-left quadrant."""
  z = 8.0 * (images[:, :8, :8, 0].mean((1, 2)) - 0.25)
  p1 = 1 / (1 + np.exp(-z))
  return np.stack([1 - p1, p1], 1)


def test_deletion_insertion_rank_good_over_bad_maps():
  rng = np.random.default_rng(3)
  x = rng.random((2, 16, 16, 1)).astype(np.float32) * 0.2
  x[:, :8, :8] += 0.8
  good = np.zeros((2, 16, 16))
  good[:, :8, :8] = 1
  bad = 1 - good
  kw = dict(steps=8, baseline='zero')
  dg = F.deletion(_region_classifier, x, good, [1, 1], **kw)
  db = F.deletion(_region_classifier, x, bad, [1, 1], **kw)
  assert dg['probs'].shape == (2, 9) and dg['fractions'][-1] == 1.0
  np.testing.assert_allclose(dg['probs'][:, 0], _region_classifier(x)[:, 1])
  assert (dg['auc'] < db['auc']).all()
  ig = F.insertion(_region_classifier, x, good, [1, 1], **kw)
  ib = F.insertion(_region_classifier, x, bad, [1, 1], **kw)
  assert (ig['auc'] > ib['auc']).all()
  # Deletion ends at the baseline's prediction; insertion ends at the image.
  base = F.make_baseline(x, 'zero')
  np.testing.assert_allclose(dg['probs'][:, -1], _region_classifier(base)[:, 1])
  np.testing.assert_allclose(ig['probs'][:, -1], _region_classifier(x)[:, 1])
  for kind in ('blur', 'mean'):
    assert F.make_baseline(x, kind).shape == x.shape
  with pytest.raises(ValueError, match='mode'):
    F.perturbation_curve(_region_classifier, x, good, [1, 1], mode='x')


def test_ties_at_the_cut_off_count_fractionally():
  """A blank map (all ties) scores the mask's area fraction for relevance
  rank and top-k wherever the mask lies, and a blob far from an apical mask
  scores the same as its vertical mirror image; index-order tie breaking
  had rewarded both for masks in the top rows."""
  m = _mask(box=(0, 4, 2, 18))  # apical: the top rows
  frac = m.mean()
  blank = np.zeros_like(m)
  assert H.relevance_rank_accuracy(blank, m) == pytest.approx(frac)
  assert H.top_k_intersection(blank, m, k=50) == pytest.approx(frac)
  blob = np.zeros_like(m)
  blob[15:18, 8:11] = 1.0  # nine hot pixels at the bottom, none in the mask
  k = int(m.sum())  # 9 blob pixels, then k - 9 of the N - 9 tied zeros
  want = (k - 9) * (k / (m.size - 9)) / k
  assert H.relevance_rank_accuracy(blob, m) == pytest.approx(want)
  assert H.relevance_rank_accuracy(blob[::-1], m[::-1]) == pytest.approx(want)
  # Without ties the top-k set is unique and the count exact.
  cam = np.random.default_rng(3).random(m.shape)
  top = np.argsort(-cam.ravel())[:37]
  assert H.top_k_intersection(cam, m, k=37) == pytest.approx(
      m.ravel()[top].mean())


def test_pointing_game_ties_and_blank_maps():
  m = _mask()
  cam = np.zeros_like(m)
  cam[0, 0] = cam[7, 6] = 1.0  # two tied maxima, one inside the mask
  assert H.pointing_game(cam, m)
  assert not H.pointing_game(np.zeros_like(m), m)  # points nowhere
  assert not H.pointing_game(np.full_like(m, 0.7), m)


def test_empty_mask_and_blank_map_are_undefined():
  m, cam = _mask(), np.random.default_rng(4).random((20, 20))
  empty = np.zeros_like(m)
  for variant in H.EHR_VARIANTS:
    assert np.isnan(H.ehr_auc(cam, empty, variant=variant))
  assert np.isnan(H.relevance_mass_accuracy(cam, empty))
  assert np.isnan(H.relevance_mass_accuracy(np.zeros_like(m), m))
  # The thesis EHR is defined for a blank map: EHR(0) = |mask| / N, then 0.
  assert H.ehr_auc(np.zeros_like(m), m) == pytest.approx(
      m.mean() * 0.005, abs=1e-12)
