"""Tests of the eye-gaze dataset: gaze recipes, splits, reader and phantom."""

from __future__ import annotations

import collections
import csv
import logging
import os
import re
import shutil

import numpy as np
import pytest
import scipy.ndimage

from cxr_jax.data import csv_columns
from cxr_jax.data import dicom
from cxr_jax.data import egd
from cxr_jax.data import egd_csv
from cxr_jax.data import egd_example
from cxr_jax.data import egd_splits
from cxr_jax.data import gaze
from cxr_jax.data import preprocess
from cxr_jax.data.phantom import gaze as phantom_gaze
from cxr_jax.data.phantom import reading as phantom_reading

SIZE_HW = (50, 60)


def _argmax_yx(m: np.ndarray) -> tuple[int, int]:
  return tuple(int(v) for v in np.unravel_index(np.argmax(m), m.shape))


# ------------------------------------------------------------ gaze recipes


@pytest.mark.parametrize('recipe', ['authors', 'fixations', 'duration'])
def test_recipe_peak_at_point(recipe):
  pts = np.array([[30.2, 20.4]])  # x, y -> pixel (row 20, col 30)
  m = gaze.gaze_map(recipe, pts, np.array([0.4]), SIZE_HW, sigma_px=3.0)
  assert m.shape == SIZE_HW and m.dtype == np.float32
  assert m.max() == pytest.approx(1.0)
  assert _argmax_yx(m) == (20, 30)


def test_recipe_defaults_and_registry():
  assert gaze.RECIPES['authors'].sigma == 75.5
  assert gaze.RECIPES['authors'].source == 'eye_gaze'
  assert gaze.RECIPES['fixations'].sigma == 150.0
  assert gaze.RECIPES['duration'].weighting == 'duration'
  with pytest.raises(KeyError, match='known'):
    gaze.get_recipe('nope')
  assert gaze.scaled_sigma(75.5, (600, 500), 3000) == pytest.approx(15.1)


@pytest.mark.parametrize('recipe', ['authors', 'fixations', 'duration'])
def test_no_points_gives_zero_map(recipe):
  m = gaze.gaze_map(recipe, np.zeros((0, 2)), np.zeros(0), SIZE_HW)
  assert m.shape == SIZE_HW and m.dtype == np.float32 and not m.any()


def test_fixation_durations_from_fpogd():
  times = np.array([0.0, 2.0, 2.85])
  fpogd = np.array([0.2, 0.8, 0.2])
  np.testing.assert_array_equal(gaze.fixation_durations(times, fpogd), fpogd)
  with pytest.raises(ValueError, match='FPOGD'):
    gaze.fixation_durations(times, np.array([0.2, -0.1, 0.2]))
  with pytest.raises(ValueError, match='FPOGD'):
    gaze.fixation_durations(times, fpogd[:2])


def test_fixation_durations_last_is_median():
  d = gaze.fixation_durations(np.array([0.0, 0.8, 0.9]))
  np.testing.assert_allclose(d, [0.8, 0.1, 0.45])
  d = gaze.fixation_durations(np.array([0.9, 0.0, 0.8]))  # unsorted input
  np.testing.assert_allclose(d, [0.45, 0.8, 0.1])
  np.testing.assert_allclose(gaze.fixation_durations(np.array([3.0])), [1.0])


def test_duration_weighting_moves_peak_to_long_fixation():
  # A long fixation at x=10, two short ones at x=40: counting favours x=40,
  # duration weighting x=10.
  pts = np.array([[10.0, 25.0], [40.0, 25.0], [40.0, 25.0]])
  w = gaze.fixation_durations(np.array([0.0, 0.8, 0.9]))  # 0.8, 0.1, 0.45
  by_count = gaze.gaze_map('fixations', pts, None, SIZE_HW, sigma_px=3.0)
  by_dur = gaze.gaze_map('duration', pts, w, SIZE_HW, sigma_px=3.0)
  assert _argmax_yx(by_count) == (25, 40)
  assert _argmax_yx(by_dur) == (25, 10)
  # With overlapping blobs the peak shifts towards the long fixation.
  wide_c = gaze.gaze_map('fixations', pts, None, SIZE_HW, sigma_px=12.0)
  wide_d = gaze.gaze_map('duration', pts, w, SIZE_HW, sigma_px=12.0)
  assert _argmax_yx(wide_d)[1] < _argmax_yx(wide_c)[1]
  with pytest.raises(ValueError, match='durations'):
    gaze.gaze_map('duration', pts, None, SIZE_HW)


def _impulses(pix, w, size_hw=SIZE_HW):
  img = np.zeros(size_hw)
  np.add.at(img, (pix[:, 1], pix[:, 0]), w)
  return img


def _border_points(seed=0):
  """Weighted pixels, many on or next to the border (corners included)."""
  rng = np.random.default_rng(seed)
  pix = np.stack([rng.integers(0, 60, 40), rng.integers(0, 50, 40)], 1)
  pix[:5] = pix[0]  # repeated pixels are merged
  pix[5:13] = [[0, 0], [59, 49], [0, 49], [59, 0], [1, 25], [58, 30],
               [30, 1], [2, 48]]
  return pix, rng.uniform(0.1, 1.0, 40)


@pytest.mark.parametrize('mode', gaze.MODES)
def test_separable_blur_equals_gaussian_filter(mode):
  pix, w = _border_points()
  ref_img = _impulses(pix, w)
  # 20 and 70 px reach past the far border (folded more than once).
  for sigma in (0.8, 4.0, 20.0, 70.0):
    ref = scipy.ndimage.gaussian_filter(ref_img, sigma, mode=mode,
                                        truncate=4.0)
    fast = gaze.blur_points(pix, w, SIZE_HW, sigma, mode=mode)
    np.testing.assert_allclose(fast, ref, atol=1e-12)
    slow = gaze.blur_points(pix, w, SIZE_HW, sigma, method='filter',
                            mode=mode)
    np.testing.assert_allclose(slow, ref, atol=1e-12)
  with pytest.raises(ValueError, match='mode'):
    gaze.blur_points(pix, w, SIZE_HW, 2.0, mode='wrap')


def test_recipe_border_modes():
  """Each recipe blurs with its source's border: near an edge the map equals
  gaussian_filter in that mode (the zero-padded blur loses mass there)."""
  assert gaze.RECIPES['authors'].mode == 'mirror'  # cv.GaussianBlur default
  assert gaze.RECIPES['fixations'].mode == 'reflect'  # gaussian_filter's
  assert gaze.RECIPES['duration'].mode == 'reflect'
  pix, w = _border_points(1)
  for recipe, mode in (('authors', 'mirror'), ('fixations', 'reflect'),
                       ('duration', 'reflect')):
    m = gaze.gaze_map(recipe, pix.astype(float), w, SIZE_HW, sigma_px=6.0)
    ref = scipy.ndimage.gaussian_filter(
        _impulses(pix, w if recipe == 'duration' else np.ones(len(w))), 6.0,
        mode=mode, truncate=gaze.TRUNCATE)
    np.testing.assert_allclose(m, ref / ref.max(), atol=1e-6)


def test_authors_recipe_matches_opencv_reflect_101():
  """The authors' blur is cv.GaussianBlur, border BORDER_REFLECT_101: check
  against numpy's 'reflect' padding (= REFLECT_101) + a plain convolution,
  and against OpenCV itself when it is installed."""
  pix = np.array([[0, 0], [1, 1], [59, 20], [30, 49], [58, 48], [10, 2]])
  sigma = 5.0
  m = gaze.gaze_map('authors', pix.astype(float), None, SIZE_HW,
                    sigma_px=sigma)
  r = int(gaze.TRUNCATE * sigma + 0.5)
  k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
  k /= k.sum()
  padded = np.pad(_impulses(pix, np.ones(len(pix))), r, mode='reflect')
  rows = np.apply_along_axis(np.convolve, 1, padded, k, 'valid')
  ref = np.apply_along_axis(np.convolve, 0, rows, k, 'valid')
  assert ref.shape == SIZE_HW
  np.testing.assert_allclose(m, ref / ref.max(), atol=1e-6)
  try:
    import cv2  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  cv = cv2.GaussianBlur(_impulses(pix, np.ones(len(pix))),
                        (2 * r + 1, 2 * r + 1), sigma)
  np.testing.assert_allclose(m, cv / cv.max(), atol=1e-6)


def test_points_outside_skipped_by_default_or_raise():
  pts = np.array([[10.0, 10.0], [59.4, 49.4], [60.0, 5.0], [5.0, -0.6]])
  rows = np.array([2, 3, 4, 5])
  with pytest.raises(ValueError, match=r"abc-123.*row 4"):
    gaze.gaze_map('authors', pts, None, SIZE_HW, sigma_px=2.0,
                  dicom_id='abc-123', rows=rows, on_error='raise')
  ok = gaze.inside(pts, SIZE_HW, on_error='skip')
  np.testing.assert_array_equal(ok, [True, True, False, False])
  skipped = gaze.gaze_map('authors', pts, None, SIZE_HW, sigma_px=2.0)
  clean = gaze.gaze_map('authors', pts[:2], None, SIZE_HW, sigma_px=2.0)
  np.testing.assert_array_equal(skipped, clean)


def test_fixation_map_binary():
  pts = np.array([[3.4, 7.6], [3.2, 7.9], [59.0, 49.0], [70.0, 1.0]])
  f = gaze.fixation_map(pts, SIZE_HW)
  assert f.dtype == np.uint8 and f.shape == SIZE_HW
  assert f[8, 3] == 1 and f[49, 59] == 1 and f.sum() == 2


# ------------------------------------------------------------------ splits


def _split_cfg(split: str, **kw):
  cfg = egd.default_config()
  cfg.split = split
  cfg.update(kw)
  return cfg


def _check_partition(parts: dict, n: int) -> None:
  allidx = np.concatenate([parts[s] for s in egd.SPLITS])
  assert allidx.size == n and np.unique(allidx).size == n  # disjoint, cover


def test_thesis_split():
  labels = np.arange(1083) % 3
  parts = egd_splits.split_indices(labels, [str(i) for i in range(1083)],
                            _split_cfg('thesis'))
  _check_partition(parts, 1083)
  assert parts['test'].size == 100
  assert parts['val'].size == round(0.1 * 983)
  for c in range(3):  # val stratified
    assert abs((labels[parts['val']] == c).sum() - parts['val'].size / 3) <= 1
  again = egd_splits.split_indices(labels, [''] * 1083, _split_cfg('thesis'))
  np.testing.assert_array_equal(parts['test'], again['test'])
  other = egd_splits.split_indices(labels, [''] * 1083,
                            _split_cfg('thesis', split_seed=1))
  assert not np.array_equal(parts['test'], other['test'])
  with pytest.raises(ValueError, match='num_test'):
    egd_splits.split_indices(labels[:50], [''] * 50, _split_cfg('thesis'))


def test_mtunet_split_is_70_10_20_per_class():
  rng = np.random.default_rng(0)
  labels = rng.choice(3, 1083, p=[0.4, 0.35, 0.25])
  parts = egd_splits.split_indices(labels, [''] * 1083, _split_cfg('mtunet'))
  _check_partition(parts, 1083)
  for c in range(3):
    n_c = int((labels == c).sum())
    tens, r = divmod(n_c, 10)
    # MT-UNet's counter: each full ten gives 2 test, 1 val, 7 train; the
    # remainder r fills test first (counter 0, 1), then val (2), then train.
    want = {'test': 2 * tens + min(r, 2), 'val': tens + (r > 2),
            'train': 7 * tens + max(r - 3, 0)}
    for s, frac in (('train', 0.7), ('val', 0.1), ('test', 0.2)):
      got = int((labels[parts[s]] == c).sum())
      assert got == want[s]
      # So each split is 70/10/20 up to that remainder: within +-1 for
      # test/val, within 2.1 (r = 3) for train.
      assert abs(got - frac * n_c) <= (1 if s != 'train' else 2.1)


def test_patient_split_groups_patients():
  rng = np.random.default_rng(0)
  pids = [f'p{v}' for v in rng.integers(0, 300, 1083)]
  labels = rng.integers(0, 3, 1083)
  parts = egd_splits.split_indices(labels, pids, _split_cfg('patient'))
  _check_partition(parts, 1083)
  sets = {s: {pids[i] for i in parts[s]} for s in egd.SPLITS}
  assert not sets['train'] & sets['val']
  assert not sets['train'] & sets['test']
  assert not sets['val'] & sets['test']
  assert parts['test'].size >= 100 and parts['val'].size > 0


# -------------------------------------------------------- phantom + build


@pytest.fixture(scope='module')
def phantom_root(tmp_path_factory) -> str:
  root = str(tmp_path_factory.mktemp('egd_phantom'))
  phantom_gaze.write_gaze(root, num=12, seed=0, size=64)
  return root


def test_phantom_same_for_any_number_of_workers(phantom_root, tmp_path):
  """Each study has its own seed: 2 worker processes write the same files."""
  other = str(tmp_path / 'two_workers')
  phantom_gaze.write_gaze(other, num=12, seed=0, size=64, workers=2)
  for name in ('master_sheet.csv', 'eye_gaze.csv', 'fixations.csv',
               'bounding_boxes.csv'):
    with open(os.path.join(phantom_root, name)) as a, open(
        os.path.join(other, name)) as b:
      assert a.read() == b.read(), name
  for row in _rows(os.path.join(phantom_root, 'master_sheet.csv')):
    a = dicom.read_dicom(os.path.join(phantom_root, row['path']))
    b = dicom.read_dicom(os.path.join(other, row['path']))
    np.testing.assert_array_equal(a, b)


def _cfg(root: str, cache_dir: str, **kw):
  cfg = egd.default_config()
  cfg.root = root
  cfg.cache_dir = cache_dir
  cfg.image_size = (32, 32)
  cfg.num_test = 3
  cfg.gaze_reference_px = 3000.0  # the phantom's 64 px stand for ~3000 px
  cfg.update(kw)
  return cfg


def _rows(path: str) -> list[dict[str, str]]:
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def _write_rows(path: str, rows: list[dict[str, str]], drop: str = '') -> None:
  header = [k for k in rows[0] if k != drop]
  with open(path, 'w', newline='') as f:
    wr = csv.DictWriter(f, header, extrasaction='ignore')
    wr.writeheader()
    wr.writerows(rows)


def test_phantom_files(phantom_root):
  master = _rows(os.path.join(phantom_root, 'master_sheet.csv'))
  assert len(master) == 12
  assert sorted(sum(int(r[c]) for r in master) for c in egd.CLASS_NAMES) == [
      4, 4, 4]
  for r in master:
    parts = r['path'].split('/')
    assert parts[0] == 'files' and parts[1] == 'p' + r['patient_id'][:2]
    assert parts[2] == 'p' + r['patient_id'] and parts[3].startswith('s')
    assert parts[4] == r['dicom_id'] + '.dcm'
    img = dicom.read_image(os.path.join(phantom_root, r['path']))
    assert img.shape[0] == 64 and img.shape[1] < 60  # portrait, not square
  samples = _rows(os.path.join(phantom_root, 'eye_gaze.csv'))
  t = np.array([float(s['Time (in secs)']) for s in samples[:50]])
  np.testing.assert_allclose(np.diff(t), 1 / 60, atol=1e-4)  # 60 Hz
  for s in samples:  # inside the (64, ~53) image
    assert 0 <= float(s['X_ORIGINAL']) <= 63
    assert 0 <= float(s['Y_ORIGINAL']) <= 63
  fix = _rows(os.path.join(phantom_root, 'fixations.csv'))
  dur = np.array([float(f['FPOGD']) for f in fix])
  assert dur.min() >= 0.09 and dur.max() <= 1.25
  for d, f in egd_csv.read_gaze_csv(os.path.join(phantom_root, 'fixations.csv'),
                                durations=True).items():
    # FPOGD agrees with the times: each fixation ends before the next starts.
    o = np.argsort(f['time'])
    assert (f['time'][o][:-1] + f['duration'][o][:-1]
            <= f['time'][o][1:] + 1e-4).all(), d
  boxes = egd_csv.read_boxes(os.path.join(phantom_root, 'bounding_boxes.csv'))
  assert set(boxes) == {r['dicom_id'] for r in master}
  for r in master:
    names = [b[0] for b in boxes[r['dicom_id']]]
    assert 'heart' in names and ('opacity' in names) == (r['pneumonia'] == '1')


def _key_dwell_xy(fixations: list[dict[str, str]], radius: float
                  ) -> np.ndarray:
  """The fixation with the most dwell time within `radius` (native px)."""
  xy = np.array([[float(f['X_ORIGINAL']), float(f['Y_ORIGINAL'])]
                 for f in fixations])
  dur = np.array([float(f['FPOGD']) for f in fixations])
  near = np.linalg.norm(xy[:, None] - xy[None], axis=-1) < radius
  return xy[np.argmax(near @ dur)]


def test_build_shapes_and_alignment(phantom_root, tmp_path):
  cfg = _cfg(phantom_root, str(tmp_path))
  out = egd.build(cfg)
  assert set(out) == {'train', 'val', 'test'}
  assert out['test']['image'].shape[0] == 3
  idx = np.concatenate([out[s]['index'] for s in out])
  np.testing.assert_array_equal(np.sort(idx), np.arange(12))
  master = egd_csv.read_master(os.path.join(phantom_root, 'master_sheet.csv'))
  fix = _rows(os.path.join(phantom_root, 'fixations.csv'))
  for s, d in out.items():
    n = d['index'].shape[0]
    assert d['image'].shape == (n, 32, 32, 1) and d['image'].dtype == np.float32
    assert d['gaze'].shape == (n, 32, 32) and d['gaze'].dtype == np.float32
    assert d['fixmap'].shape == (n, 32, 32) and d['fixmap'].dtype == np.uint8
    assert d['label'].dtype == np.int32 and d['index'].dtype == np.int32
    assert d['image'].min() >= 0 and d['image'].max() <= 1
    np.testing.assert_array_equal(d['label'], master['label'][d['index']])
    for j, i in enumerate(d['index']):
      assert d['gaze'][j].max() == pytest.approx(1.0)
      assert d['fixmap'][j].sum() >= 5
      # The gaze peak lies where the phantom put its longest dwell, after
      # the pad/resize geometry.
      native = dicom.read_image(os.path.join(phantom_root, master['path'][i]))
      _, pads = preprocess.pad_to_aspect(native, 1.0)
      assert pads[2] > 0  # the padding path is exercised
      rows = [f for f in fix if f['DICOM_ID'] == master['dicom_id'][i]]
      key = _key_dwell_xy(rows, phantom_reading.KEY_RADIUS * 64)
      kx, ky = egd_example.map_points(key[None], native.shape, pads,
                                      (32, 32))[0]
      py, px = _argmax_yx(d['gaze'][j])
      assert np.hypot(px - kx, py - ky) <= 3.0, (s, j)
      # Padding columns hold no image and no gaze.
      left = int(pads[2] * 32 / 64)
      if left >= 2:
        assert d['gaze'][j][:, :left - 1].max() < 0.05
  again = egd.build(cfg)  # from the cache
  np.testing.assert_array_equal(again['train']['gaze'], out['train']['gaze'])


def test_build_phantom_from_empty_root(tmp_path):
  cfg = _cfg('', str(tmp_path), phantom_num=6, phantom_size=48,
             image_size=(24, 20), gaze_recipe='duration', gaze_sigma=150.0,
             gaze_reference_px=-1.0, split='mtunet', num_test=2)
  out = egd.build(cfg)
  n = sum(out[s]['index'].shape[0] for s in out)
  assert n == 6 and out['train']['image'].shape[1:] == (24, 20, 1)
  assert any(name.startswith('phantom-egd') for name in os.listdir(tmp_path))


def _copy(phantom_root: str, tmp_path) -> str:
  root = str(tmp_path / 'egd')
  shutil.copytree(phantom_root, root)
  return root


def test_missing_column_names_column_and_file(phantom_root, tmp_path):
  root = _copy(phantom_root, tmp_path)
  path = os.path.join(root, 'master_sheet.csv')
  _write_rows(path, _rows(path), drop='CHF')
  with pytest.raises(ValueError, match=r"master_sheet\.csv.*'CHF'"):
    egd.build(_cfg(root, str(tmp_path / 'cache')))
  path = os.path.join(root, 'fixations.csv')
  with pytest.raises(ValueError, match=r"fixations\.csv.*'X_ORIGINAL'"):
    _write_rows(path, _rows(path), drop='X_ORIGINAL')
    egd_csv.read_gaze_csv(path)


def test_missing_image_names_path(phantom_root, tmp_path):
  root = _copy(phantom_root, tmp_path)
  master = _rows(os.path.join(root, 'master_sheet.csv'))
  gone = master[4]
  os.remove(os.path.join(root, gone['path']))
  with pytest.raises(FileNotFoundError) as e:
    egd.build(_cfg(root, str(tmp_path / 'cache')))
  assert gone['path'] in str(e.value) and gone['dicom_id'] in str(e.value)
  out = egd.build(_cfg(root, str(tmp_path / 'cache'), on_error='skip'))
  idx = np.concatenate([out[s]['index'] for s in out])
  assert idx.size == 11 and 4 not in idx


def test_bad_one_hot_label(phantom_root, tmp_path):
  root = _copy(phantom_root, tmp_path)
  path = os.path.join(root, 'master_sheet.csv')
  rows = _rows(path)
  rows[2]['Normal'], rows[2]['CHF'], rows[2]['pneumonia'] = '1', '1', '0'
  _write_rows(path, rows)
  with pytest.raises(ValueError, match=rf"line 4 .*{rows[2]['dicom_id']}"):
    egd.build(_cfg(root, str(tmp_path / 'cache')))


def test_off_image_points_dropped_by_default(phantom_root, tmp_path, caplog):
  """Gaze that left the image (negative / too large X_ORIGINAL, Y_ORIGINAL,
  as in the real CSVs) is dropped and counted per study: the arrays equal
  those built from the files without these rows."""
  root = _copy(phantom_root, tmp_path)
  clean = str(tmp_path / 'clean')
  shutil.copytree(phantom_root, clean)
  bad_ids = set()
  for name in ('eye_gaze.csv', 'fixations.csv'):
    rows = _rows(os.path.join(root, name))
    rows[7]['X_ORIGINAL'] = '-12.0'
    rows[8]['Y_ORIGINAL'] = '500.0'
    bad_ids |= {rows[7]['DICOM_ID'], rows[8]['DICOM_ID']}
    _write_rows(os.path.join(root, name), rows)
    _write_rows(os.path.join(clean, name),
                [r for i, r in enumerate(rows) if i not in (7, 8)])
  for recipe in ('authors', 'fixations'):
    caplog.clear()
    with caplog.at_level(logging.INFO):
      out = egd.build(_cfg(root, str(tmp_path / 'c1'), gaze_recipe=recipe))
    ref = egd.build(_cfg(clean, str(tmp_path / 'c2'), gaze_recipe=recipe))
    for s in egd.SPLITS:
      for k in ('gaze', 'fixmap', 'index'):
        np.testing.assert_array_equal(out[s][k], ref[s][k])
    for d in bad_ids:
      assert any(d in r.getMessage() and 'outside' in r.getMessage()
                 and 'dropped' in r.getMessage() for r in caplog.records), d
  with pytest.raises(ValueError, match=r'row 9'):
    egd.build(_cfg(root, str(tmp_path / 'c3'), gaze_off_image='raise'))
  with pytest.raises(ValueError, match='gaze_off_image'):
    egd.build(_cfg(root, str(tmp_path / 'c3'), gaze_off_image='drop'))


def test_study_without_gaze_warns_with_dicom_id(phantom_root, tmp_path,
                                                caplog):
  root = _copy(phantom_root, tmp_path)
  path = os.path.join(root, 'eye_gaze.csv')
  rows = _rows(path)
  gone = rows[0]['DICOM_ID']
  _write_rows(path, [r for r in rows if r['DICOM_ID'] != gone])
  with caplog.at_level(logging.WARNING):
    out = egd.build(_cfg(root, str(tmp_path / 'cache')))
  warned = [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and 'no gaze' in r.getMessage()]
  assert len(warned) == 1 and gone in warned[0]
  master = egd_csv.read_master(os.path.join(root, 'master_sheet.csv'))
  i = master['dicom_id'].index(gone)
  for s in egd.SPLITS:
    for j, idx in enumerate(out[s]['index']):
      assert out[s]['gaze'][j].any() == (idx != i)


def test_default_sigma_is_the_recipes_own(phantom_root, tmp_path, caplog):
  cfg = egd.default_config()
  assert cfg.gaze_sigma == 0
  cfg.gaze_reference_px = 0.0  # real data: sigmas in native px as given
  for name, recipe in gaze.RECIPES.items():
    cfg.gaze_recipe = name
    assert egd_example.native_sigma(cfg, (3000, 2500),
                                    phantom=False) == recipe.sigma
  cfg.gaze_recipe = 'fixations'
  assert egd_example.native_sigma(cfg, (3000, 2500), phantom=False) == 150.0
  with caplog.at_level(logging.INFO):
    egd._check_config(cfg)
  assert "'fixations', sigma 150.0 px" in caplog.text
  cfg.gaze_sigma = 100.0
  assert egd_example.native_sigma(cfg, (3000, 2500), phantom=False) == 100.0
  # End to end: the default blurs the fixations recipe with 150 (scaled for
  # the phantom's 64-px images), not the authors' 75.5.
  master = egd_csv.read_master(os.path.join(phantom_root, 'master_sheet.csv'))
  fix = egd_csv.read_gaze_csv(os.path.join(phantom_root, 'fixations.csv'))
  d = master['dicom_id'][0]
  path = os.path.join(phantom_root, master['path'][0])
  maps = {}
  for sigma in (0.0, 150.0, 75.5):
    c = _cfg(phantom_root, str(tmp_path), gaze_recipe='fixations',
             gaze_sigma=sigma)
    maps[sigma] = egd_example.load_example(path, d, None, fix[d], c)['gaze']
  np.testing.assert_array_equal(maps[0.0], maps[150.0])
  assert np.abs(maps[0.0] - maps[75.5]).max() > 0.05


def test_duration_recipe_weights_by_fpogd(phantom_root, tmp_path):
  master = egd_csv.read_master(os.path.join(phantom_root, 'master_sheet.csv'))
  # read_gaze_csv returns the FPOGD column as the durations.
  path = os.path.join(phantom_root, 'fixations.csv')
  got = egd_csv.read_gaze_csv(path, durations=True)
  for d, rows in got.items():
    want = [float(r['FPOGD']) for r in _rows(path) if r['DICOM_ID'] == d]
    np.testing.assert_array_equal(rows['duration'], want)
  assert 'duration' not in egd_csv.read_gaze_csv(path)[master['dicom_id'][0]]
  # Fixation at A, a tracking gap, then B (long) and A again: the gaps
  # between starts favour A (2.0 + median 1.425 s vs 0.85 s), FPOGD favours
  # B (0.8 s vs 0.2 + 0.2 s).
  d = master['dicom_id'][0]
  image = os.path.join(phantom_root, master['path'][0])
  native = dicom.read_image(image).shape[:2]
  a = (0.3 * native[1], 0.5 * native[0])
  b = (0.7 * native[1], 0.5 * native[0])
  fix = dict(xy=np.array([a, b, a]), time=np.array([0.0, 2.0, 2.85]),
             line=np.array([2, 3, 4]), duration=np.array([0.2, 0.8, 0.2]))
  cfg = _cfg(phantom_root, str(tmp_path), gaze_recipe='duration',
             gaze_sigma=2.0, gaze_reference_px=0.0, image_size=(64, 64))
  _, pads = preprocess.pad_to_aspect(np.zeros(native), 1.0)
  where = egd_example.map_points(np.array([a, b]), native, pads, (64, 64))
  for durations, peak in ((fix['duration'], 1), (None, 0)):
    f = dict(fix) if durations is not None else {
        k: v for k, v in fix.items() if k != 'duration'}  # fallback: gaps
    m = egd_example.load_example(image, d, None, f, cfg)['gaze']
    py, px = _argmax_yx(m)
    assert np.hypot(px - where[peak, 0], py - where[peak, 1]) <= 1.5


def test_restored_image_rebuilds_the_cache(phantom_root, tmp_path):
  """The cache key fingerprints the images: an image missing at the first
  build (skipped) and restored later is in the second build's arrays."""
  root = _copy(phantom_root, tmp_path)
  cache_dir = str(tmp_path / 'cache')
  gone = _rows(os.path.join(root, 'master_sheet.csv'))[4]['path']
  kept = str(tmp_path / 'kept.dcm')
  shutil.move(os.path.join(root, gone), kept)
  out = egd.build(_cfg(root, cache_dir, on_error='skip'))
  assert sum(out[s]['index'].size for s in out) == 11
  shutil.move(kept, os.path.join(root, gone))
  out = egd.build(_cfg(root, cache_dir, on_error='skip'))
  idx = np.concatenate([out[s]['index'] for s in out])
  assert idx.size == 12 and 4 in idx


def test_lost_fixations_are_named_and_counted(phantom_root, tmp_path, caplog):
  """Rows of DICOM_IDs the master sheet does not list, and a study without
  fixations, are named in the build log; the saliency evaluator's summary
  counts each metric's own n (the study drops out of NSS and AUC-Judd only)."""
  from cxr_jax.evaluators import saliency as sal_eval  # pylint: disable=g-import-not-at-top
  root = _copy(phantom_root, tmp_path)
  master = _rows(os.path.join(root, 'master_sheet.csv'))
  for name in ('eye_gaze.csv', 'fixations.csv'):
    rows = _rows(os.path.join(root, name))
    extra = [dict(r, DICOM_ID='not-in-the-sheet') for r in rows[:3]]
    if name == 'fixations.csv':
      rows = [r for r in rows if r['DICOM_ID'] != master[5]['dicom_id']]
    _write_rows(os.path.join(root, name), rows + extra)
  with caplog.at_level(logging.WARNING):
    out = egd.build(_cfg(root, str(tmp_path / 'cache')))
  text = caplog.text
  for name in ('eye_gaze.csv', 'fixations.csv'):
    assert re.search(rf"{name}: 3 row\(s\) of 1 DICOM_ID\(s\) that "
                     r"master_sheet\.csv does not list are ignored.*"
                     "'not-in-the-sheet'", text), name
  assert re.search(r"1 of 12 studies have no fixation .*\(1 of them no row "
                   rf"at all\).*'{master[5]['dicom_id']}'", text)
  test = {k: np.concatenate([out[s][k] for s in egd.SPLITS])
          for k in ('gaze', 'fixmap', 'index')}
  pred = np.full(test['gaze'].shape, 1.0 / test['gaze'][0].size, np.float32)
  pred[:, 0, 0] *= 2  # not constant: CC and AUC-Judd are defined
  pred /= pred.sum((1, 2), keepdims=True)
  m = sal_eval.per_image_metrics(test['gaze'], pred, test['fixmap'])
  got = sal_eval.summarise(m)
  n = test['index'].size
  for k in ('kl', 'cc', 'hs'):
    assert (got[f'n_{k}'], got[f'n_undefined_{k}']) == (n, 0)
  for k in ('nss', 'auc_judd'):
    assert (got[f'n_{k}'], got[f'n_undefined_{k}']) == (n - 1, 1)
    assert got[k] == pytest.approx(np.mean(m[k][test['index'] != 5]))
  assert got['n_undefined'] == 1 and got['n_images'] == n
  message = sal_eval.undefined_message(m, test['index'])
  assert 'nss/auc_judd' in message and '[5]' in message


# ------------------------------------------- numpy CSV reader vs csv module

_HEADER = ('SESSION_ID', 'DICOM_ID', 'Time (in secs)', 'FPOGD', 'X_ORIGINAL',
           'Y_ORIGINAL', 'EXTRA')
_GOOD = ('1.5', '-2', '0', '-0', '+3.25', '12345678901234', '0.1', '.5', '5.',
         '00012', '-.5')
_ODD = ('1234567890123456', '1e3', 'nan', 'inf', ' 7 ', '1_0', '\u0661\u0662',
        'abc', '', '-', '1.2.3', '0.33879000000000004', '9' * 30, '\t4\t',
        '+', '1\x00', '"2.5"', '"1,5"')
_IDS = ('a', 'b', 'c', ' a', 'a ', '\u00e9', 'x\x00', 'long' * 40, '',
        '"q,""r""\nz"')


def _random_gaze_csv(rng: np.random.Generator, bad: float) -> bytes:
  """A small CSV with the gaze columns and the csv module's edge cases:
  quoted fields (with commas, newlines, doubled quotes), blank and
  whitespace lines, CRLF and lone CR, extra and missing fields, a BOM,
  odd or bad numbers, non-ASCII text and bytes that are not UTF-8."""
  pick = lambda xs: xs[int(rng.integers(len(xs)))]
  lines = []
  for _ in range(int(rng.integers(0, 25))):
    row = [str(rng.integers(3)),
           pick(_IDS[:3]) if rng.random() > 0.2 else pick(_IDS)]
    row += [pick(_GOOD) if rng.random() > bad else pick(_ODD)
            for _ in range(4)] + ['z'] * int(rng.integers(0, 3))
    if rng.random() < bad / 2:
      row = row[:int(rng.integers(0, 6))]
    lines.append(','.join(row))
    if rng.random() < 0.05:
      lines.append(pick(('', '  ')))
  nl = '\r\n' if rng.random() < 0.2 else '\n'
  text = ','.join(_HEADER) + nl + nl.join(lines) + (
      nl if rng.random() < 0.8 else '')
  if rng.random() < 0.05:
    text = text.replace('\n', '\r', 1)
  if rng.random() < 0.05:
    text = '\ufeff' + text
  data = text.encode()
  if rng.random() < 0.05:
    i = int(rng.integers(len(data) + 1))
    data = data[:i] + b'\xff' + data[i:]
  return data


def _read_both(path: str, durations: bool, monkeypatch, chunk: int,
               threads: int = 2):
  """(csv module's, numpy's with `chunk`-byte chunks parsed on `threads`
  threads) result or error."""
  out = []
  for method in ('csv', 'numpy'):
    monkeypatch.setattr(csv_columns, 'CHUNK_BYTES', chunk)
    monkeypatch.setattr(csv_columns, 'THREADS', threads)
    try:
      out.append(egd_csv.read_gaze_csv(path, durations, method=method))
    except ValueError as e:
      out.append(f'ValueError: {e}')
  return out


def _assert_same_gaze(a, b) -> None:
  if isinstance(a, str) or isinstance(b, str):
    assert a == b
    return
  assert list(a) == list(b)
  for d in a:
    assert set(a[d]) == set(b[d])
    for k in a[d]:
      assert a[d][k].dtype == b[d][k].dtype, (d, k)
      np.testing.assert_array_equal(a[d][k], b[d][k])


@pytest.mark.parametrize('bad', [0.0, 0.01, 0.1])
def test_numpy_gaze_reader_equals_csv_module(tmp_path, monkeypatch, bad):
  """The numpy reader returns the csv-module reader's arrays (bitwise) or
  its exact error, for every chunk size and number of threads (small chunks
  make many, parsed concurrently and merged in file order), on random
  files full of the csv module's edge cases."""
  rng = np.random.default_rng(int(bad * 1000))
  path = str(tmp_path / 'g.csv')
  kinds = collections.Counter()
  for _ in range(40):
    with open(path, 'wb') as f:
      f.write(_random_gaze_csv(rng, bad))
    for chunk, threads in ((8, 2), (64, 3), (1 << 20, 1)):
      for durations in (False, True):
        a, b = _read_both(path, durations, monkeypatch, chunk, threads)
        _assert_same_gaze(a, b)
        kinds[isinstance(a, str)] += 1
  assert kinds[False] > 10  # both outcomes are exercised
  if bad:
    assert kinds[True] > 10


def test_numpy_gaze_reader_error_precedence_across_chunks(tmp_path,
                                                          monkeypatch):
  """Errors in several chunks parsed concurrently: a non-UTF-8 byte
  anywhere wins, then the first short row, then the first bad value of
  the first bad column (X, Y, time), each with the csv reader's message."""
  path = str(tmp_path / 'g.csv')
  rows = [[str(i % 3), f'id{i // 50}', f'{i / 10}', '0.2', str(i), str(2 * i)]
          for i in range(400)]  # rows[i] is line i + 2

  def check(message: str, tail: bytes = b'') -> None:
    with open(path, 'wb') as f:
      f.write('\n'.join(','.join(r) for r in [_HEADER[:6], *rows]).encode()
              + b'\n' + tail)
    for chunk, threads in ((64, 2), (500, 3)):
      a, b = _read_both(path, False, monkeypatch, chunk, threads)
      assert a == b and message in a, (chunk, threads, a)

  rows[300][5], rows[200][5] = 'late', 'first'  # Y_ORIGINAL
  rows[40][2] = 'early'  # Time (in secs), checked after Y_ORIGINAL
  check("line 202, column 'Y_ORIGINAL': 'first' is not a number")
  rows[350] = rows[350][:3]
  rows[120] = rows[120][:4]
  check('line 122 has 4 fields, expected 6')
  check('line 403, byte offset', tail=b'1,id9,0.1,0.2,3,4\n\xff\n')


@pytest.mark.parametrize('blocks', [True, False])
@pytest.mark.parametrize('method', ['numpy', 'csv'])
def test_gaze_rows_grouped_by_id_in_file_order(tmp_path, blocks, method):
  """Each DICOM_ID gets its rows in file order, IDs sorted, whether each
  ID's rows are one block of the file (in no sorted order) or the IDs are
  interleaved."""
  rng = np.random.default_rng(3)
  ids = (np.repeat(rng.permutation(7), rng.integers(1, 60, 7)) if blocks
         else rng.integers(0, 7, 300))
  path = str(tmp_path / 'g.csv')
  with open(path, 'w') as f:
    f.write(','.join(_HEADER[:6]) + '\n' + ''.join(
        f'1,id{d},{i / 8},0.1,{i},{-i}\n' for i, d in enumerate(ids)))
  got = egd_csv.read_gaze_csv(path, method=method)
  assert list(got) == [f'id{d}' for d in sorted(set(ids))]
  for d in set(ids):
    i = np.flatnonzero(ids == d)
    np.testing.assert_array_equal(got[f'id{d}']['xy'], np.stack([i, -i], 1))
    np.testing.assert_array_equal(got[f'id{d}']['time'], i / 8)
    np.testing.assert_array_equal(got[f'id{d}']['line'], i + 2)


def test_numpy_gaze_reader_equals_csv_module_on_phantom(phantom_root,
                                                        monkeypatch):
  for name in ('eye_gaze.csv', 'fixations.csv'):
    for chunk in (4096, 1 << 20):
      a, b = _read_both(os.path.join(phantom_root, name), True, monkeypatch,
                        chunk)
      assert not isinstance(a, str) and len(a) == 12
      _assert_same_gaze(a, b)


@pytest.mark.parametrize('text', [
    '0.1', '-0.0', '+7', '.25', '3.', '123456789012345', '0.00000000000001',
    '999999999999999', '-12.5'])
def test_decimal_fast_path_equals_float(text):
  from cxr_jax.data import decimal_text  # pylint: disable=g-import-not-at-top
  buf = bytearray(text.encode() + b',' + bytes(64))
  g = decimal_text.windows(buf, np.array([0]), len(text))
  value, simple = decimal_text.parse(g.view(np.uint8).reshape(1, -1),
                                     np.array([len(text)]))
  assert simple[0]
  assert value[0] == float(text) and np.signbit(value[0]) == np.signbit(
      float(text))
