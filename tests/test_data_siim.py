"""Tests for the SIIM-ACR readers: RLE, CSV, DICOM, preprocessing, cache, build."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image
import pydicom
import pytest

from cxr_jax.data import cache, dicom, preprocess, rle, siim
from cxr_jax import data as data_lib


# ----------------------------------------------------------------------- RLE


def _kaggle_rle2mask(enc: str, width: int, height: int) -> np.ndarray:
  """The competition's reference decoder, loop for loop, then transposed."""
  mask = np.zeros(width * height, np.uint8)
  array = [int(x) for x in enc.split()]
  pos = 0
  for start, length in zip(array[0::2], array[1::2]):
    pos += start
    mask[pos:pos + length] = 1
    pos += length
  return mask.reshape(width, height).T


def test_rle_hand_made_column_major():
  # Column-major flat order of this mask: 0 1 1 | 1 0 0 | 0 0 0 | 0 0 1, so
  # run 1 starts at pixel 1 (length 3), run 2 at pixel 11: gap 11 - 4 = 7.
  mask = np.array([[0, 1, 0, 0],
                   [1, 0, 0, 0],
                   [1, 0, 0, 1]], np.uint8)
  assert rle.rle_encode(mask) == '1 3 7 1'
  np.testing.assert_array_equal(rle.rle_decode('1 3 7 1', 3, 4), mask)
  np.testing.assert_array_equal(_kaggle_rle2mask('1 3 7 1', 4, 3), mask)
  # A run that starts at the top-left pixel has start 0.
  assert rle.rle_encode(np.ones((2, 2))) == '0 4'


@pytest.mark.parametrize('shape', [(1, 1), (3, 4), (4, 3), (7, 5), (33, 64),
                                   (64, 64)])
def test_rle_round_trip_random(shape):
  rng = np.random.default_rng(sum(shape))
  for p in (0.0, 0.05, 0.5, 1.0):
    mask = (rng.uniform(size=shape) < p).astype(np.uint8)
    enc = rle.rle_encode(mask)
    if not mask.any():
      assert enc == '-1'
    out = rle.rle_decode(enc, *shape)
    assert out.dtype == np.uint8 and out.shape == shape
    np.testing.assert_array_equal(out, mask)
    if mask.any():
      np.testing.assert_array_equal(_kaggle_rle2mask(enc, shape[1], shape[0]),
                                    mask)


def test_rle_empty_and_union():
  assert not rle.rle_decode('-1', 5, 6).any()
  assert not rle.rle_decode(' -1 ', 5, 6).any()
  a = np.zeros((6, 5), np.uint8)
  a[1:3, 1] = 1
  b = np.zeros((6, 5), np.uint8)
  b[4, 3:5] = 1
  union = rle.decode_union([rle.rle_encode(a), '-1', rle.rle_encode(b)], 6, 5)
  np.testing.assert_array_equal(union, a | b)


@pytest.mark.parametrize('enc, message', [
    ('1 2 3', 'odd number'),
    ('1 x', 'not an integer'),
    ('1.5 2', 'not an integer'),
    ('-3 2', 'negative'),
    ('3 -2', 'negative'),
    ('1 0', 'zero run length'),
    ('10 5', 'past the end'),
    ('1 3 7 2', 'past the end'),
    ('', 'empty'),
])
def test_rle_malformed(enc, message):
  with pytest.raises(ValueError, match=message):
    rle.rle_decode(enc, 3, 4)


def _write_csv(path, header, rows):
  with open(path, 'w') as f:
    f.write(header + '\n')
    for row in rows:
      f.write(row + '\n')
  return str(path)


def test_read_rle_csv_unites_rows(tmp_path):
  path = _write_csv(tmp_path / 'train-rle.csv', 'ImageId, EncodedPixels',
                    ['a, -1', 'b, 1 3 7 1', 'b, 0 1', 'c,-1'])
  assert rle.read_rle_csv(path) == {'a': ['-1'], 'b': ['1 3 7 1', '0 1'],
                                    'c': ['-1']}
  assert [r[0] for r in rle.read_rle_rows(path)] == [2, 3, 4, 5]


@pytest.mark.parametrize('header, match', [
    ('ImageId,EncodedPixels', 'stage-2'),
    ('ImageId', 'columns found'),
    ('ImageId, EncodedPixels, Extra', 'columns found'),
    ('Id, Pixels', 'columns found'),
])
def test_read_rle_csv_rejects_other_layouts(tmp_path, header, match):
  path = _write_csv(tmp_path / 'x.csv', header, ['a,-1'])
  with pytest.raises(ValueError, match=match) as e:
    rle.read_rle_csv(path)
  assert 'x.csv' in str(e.value)


def test_read_rle_csv_bad_row(tmp_path):
  path = _write_csv(tmp_path / 'x.csv', 'ImageId, EncodedPixels',
                    ['a,-1', 'b,1 2,3'])
  with pytest.raises(ValueError, match='row 3 has 3 fields'):
    rle.read_rle_csv(path)


# --------------------------------------------------------------------- DICOM

_PX = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 50)  # 0..950


def test_dicom_round_trip_tags(tmp_path):
  path = tmp_path / 'a.dcm'
  dicom.write_dicom(path, _PX, patient_id='p1', sop_uid='1.2.3.4')
  ds = pydicom.dcmread(path)
  assert ds.SOPInstanceUID == '1.2.3.4' == ds.file_meta.MediaStorageSOPInstanceUID
  assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
  assert (ds.Rows, ds.Columns, ds.BitsStored, ds.Modality) == (4, 5, 12, 'CR')
  img = dicom.read_dicom(path)
  assert img.dtype == np.float32 and img.shape == (4, 5)
  np.testing.assert_allclose(img, _PX / 950.0, atol=1e-6)
  dicom.write_dicom(tmp_path / 'dx.dcm', _PX, extra={'Modality': 'DX'})
  assert pydicom.dcmread(tmp_path / 'dx.dcm').SOPClassUID == dicom.DX_SOP_CLASS


def test_dicom_monochrome1_is_inverted(tmp_path):
  dicom.write_dicom(tmp_path / 'm1.dcm', _PX, photometric='MONOCHROME1')
  dicom.write_dicom(tmp_path / 'm2.dcm', _PX, photometric='MONOCHROME2')
  m1 = dicom.read_dicom(tmp_path / 'm1.dcm')
  m2 = dicom.read_dicom(tmp_path / 'm2.dcm')
  np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)
  assert m2[0, 0] == 0.0 and m1[0, 0] == 1.0


def test_dicom_rescale_and_window(tmp_path):
  # Modality values x = 2 * stored - 1000 span -1000..900; a window centred
  # at 0 with width 401 maps x <= -200 to 0, x >= 200 to 1 (DICOM LINEAR).
  path = tmp_path / 'w.dcm'
  dicom.write_dicom(path, _PX, rescale=(2.0, -1000.0),
                    extra={'WindowCenter': '0', 'WindowWidth': '401'})
  x = 2.0 * _PX - 1000.0
  expected = np.clip((x - (0 - 0.5)) / 400.0 + 0.5, 0, 1)
  np.testing.assert_allclose(dicom.read_dicom(path), expected, atol=1e-6)
  # The same window without the rescale sees other values.
  dicom.write_dicom(path, _PX, extra={'WindowCenter': '0', 'WindowWidth': '401'})
  assert not np.allclose(dicom.read_dicom(path), expected)


def test_dicom_bits_stored_ignores_high_bits(tmp_path):
  path = tmp_path / 'b.dcm'
  dicom.write_dicom(path, _PX, bits_stored=10)
  clean = dicom.read_dicom(path)
  ds = pydicom.dcmread(path)
  garbage = np.frombuffer(ds.PixelData, '<u2') | np.uint16(0xA800)  # bits 11..15
  ds.PixelData = garbage.tobytes()
  ds.save_as(path)
  np.testing.assert_array_equal(dicom.read_dicom(path), clean)
  with pytest.raises(ValueError, match='do not fit in 10 stored bits'):
    dicom.write_dicom(tmp_path / 'c.dcm', _PX + 1000, bits_stored=10)


def test_dicom_signed_bits_stored_sign_extends(tmp_path):
  path = tmp_path / 's.dcm'
  dicom.write_dicom(path, _PX, bits_stored=12)
  ds = pydicom.dcmread(path)
  values = np.array([[-2048, -1, 0, 1, 2047]], np.int16)
  stored = (values.view(np.uint16) & np.uint16(0x0FFF)) | np.uint16(0x5000)
  ds.PixelRepresentation = 1
  ds.Rows, ds.Columns = values.shape
  ds.PixelData = stored.astype('<u2').tobytes()
  ds.save_as(path)
  np.testing.assert_allclose(dicom.read_dicom(path),
                             (values + 2048.0) / 4095.0, atol=1e-6)


def test_dicom_corrupt_files_name_the_file(tmp_path):
  good = tmp_path / 'good.dcm'
  dicom.write_dicom(good, np.full((64, 64), 7, np.uint16))
  raw = good.read_bytes()
  truncated = tmp_path / 'truncated.dcm'
  truncated.write_bytes(raw[:len(raw) - 3000])
  text = tmp_path / 'text.dcm'
  text.write_text('not a dicom at all')
  no_pixels = tmp_path / 'nopixels.dcm'
  ds = pydicom.dcmread(good)
  del ds.PixelData
  ds.save_as(no_pixels)
  for path in (truncated, text, no_pixels):
    with pytest.raises(ValueError) as e:
      dicom.read_dicom(path)
    assert str(path) in str(e.value)


def test_read_image_png_and_dcm(tmp_path):
  Image.fromarray(np.array([[0, 255], [51, 102]], np.uint8)).save(tmp_path / 'a.png')
  np.testing.assert_allclose(dicom.read_image(tmp_path / 'a.png'),
                             [[0, 1], [0.2, 0.4]], atol=1e-6)
  Image.fromarray(np.array([[0, 65535]], np.uint16)).save(tmp_path / 'b.png')
  np.testing.assert_allclose(dicom.read_image(tmp_path / 'b.png'), [[0, 1]])
  dicom.write_dicom(tmp_path / 'c.dcm', _PX)
  assert dicom.read_image(tmp_path / 'c.dcm').shape == (4, 5)
  with pytest.raises(ValueError, match='unsupported image extension'):
    dicom.read_image(tmp_path / 'd.tif')


# ---------------------------------------------------------------- preprocess


def test_preprocess_functions():
  img = np.ones((4, 6), np.float32)
  padded, pads = preprocess.pad_to_aspect(img, 1.25)
  assert padded.shape == (8, 6) and pads == (2, 2, 0, 0)
  padded, pads = preprocess.pad_to_aspect(np.ones((10, 3)), 2.0)
  assert padded.shape == (10, 5) and pads == (0, 0, 1, 1)
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(50, 40)).astype(np.float32)
  assert preprocess.resize(x, (20, 16)).shape == (20, 16)
  assert preprocess.resize(x, (20, 16)).std() < x.std()  # anti-aliased
  z = preprocess.zscore(x)
  assert abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-4
  assert not preprocess.zscore(np.ones((3, 3))).any()
  m = preprocess.minmax01(x * 5 + 2)
  assert m.min() == 0 and abs(m.max() - 1) < 1e-6
  c = preprocess.clahe(x)
  assert c.shape == x.shape and c.min() >= 0 and c.max() <= 1


@pytest.mark.parametrize('shape,size', [((1024, 1024), (224, 224)),
                                        ((37, 23), (10, 7)), ((6, 9), (12, 18))])
def test_area_coverage_is_exact_box_resampling(shape, size):
  rng = np.random.default_rng(1)
  m = (rng.uniform(size=shape) < 0.3).astype(np.float32)
  cov = preprocess.area_coverage(m, size)
  assert cov.shape == size and cov.min() >= 0 and cov.max() <= 1 + 1e-6
  ratio = (shape[0] * shape[1]) / (size[0] * size[1])
  np.testing.assert_allclose(cov.sum() * ratio, m.sum(), rtol=1e-5)
  np.testing.assert_allclose(preprocess.area_coverage(np.ones(shape), size), 1,
                             atol=1e-6)
  if shape[0] % size[0] == 0 and shape[1] % size[1] == 0:  # integer factors
    fh, fw = shape[0] // size[0], shape[1] // size[1]
    ref = m.reshape(size[0], fh, size[1], fw).mean(axis=(1, 3))
    np.testing.assert_allclose(cov, ref, atol=1e-6)


def test_resize_mask_rules_keep_or_drop_thin_regions():
  m = np.zeros((1024, 1024), np.uint8)
  m[100:900, 500:502] = 1  # a 2-pixel-wide pleural strip: < 1 px at 224
  lost = siim.resize_mask(m, (224, 224), 'bilinear', 0.5)
  kept = siim.resize_mask(m, (224, 224), 'area', 0.01)
  assert not lost.any() and kept.any()
  assert set(np.unique(kept)) == {0.0, 1.0}
  # 'touched at all' keeps at most the covered columns (2 or 1 of 224).
  assert 1 <= kept.any(axis=0).sum() <= 2
  big = np.zeros((1024, 1024), np.uint8)
  big[200:600, 100:500] = 1
  a = siim.resize_mask(big, (224, 224), 'area', 0.5)
  b = siim.resize_mask(big, (224, 224), 'bilinear', 0.5)
  assert abs(a.sum() - big.sum() * (224 / 1024) ** 2) < 2 * 224 * 400 / 1024
  assert np.mean(a != b) < 0.002  # the rules agree away from thin regions
  with pytest.raises(ValueError, match='data.mask_rule'):
    siim.resize_mask(m, (224, 224), 'nearest', 0.5)
  with pytest.raises(ValueError, match='data.mask_threshold'):
    siim.resize_mask(m, (224, 224), 'area', 0.0)


# --------------------------------------------------------------------- cache


def test_cache_reuses_and_is_atomic(tmp_path):
  calls = []

  def build():
    calls.append(1)
    return {'train': {'x': np.arange(3, dtype=np.int32)},
            'val': {'x': np.zeros((0, 2), np.float32)}}

  out1 = cache.cached('t', {'a': (1, 2), 'b': 'c'}, build, str(tmp_path))
  out2 = cache.cached('t', {'b': 'c', 'a': [1, 2]}, build, str(tmp_path))
  assert len(calls) == 1
  np.testing.assert_array_equal(out2['train']['x'], [0, 1, 2])
  assert isinstance(out1['train']['x'], np.memmap)
  assert out2['val']['x'].shape == (0, 2)
  cache.cached('t', {'a': (1, 3), 'b': 'c'}, build, str(tmp_path))
  assert len(calls) == 2
  folder = cache.cache_path('t', {'a': (1, 2), 'b': 'c'}, str(tmp_path))
  assert os.path.isfile(os.path.join(folder, 'key.json'))

  def killed():
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    cache.cached('k', {}, killed, str(tmp_path))
  assert not [n for n in os.listdir(tmp_path) if n.startswith(('.k', 'k-'))]


def test_default_cache_dir(monkeypatch):
  monkeypatch.setenv('CXR_JAX_CACHE', '/some/where')
  assert cache.default_cache_dir() == '/some/where'
  monkeypatch.delenv('CXR_JAX_CACHE')
  assert cache.default_cache_dir().endswith(os.path.join('.cache', 'cxr_jax'))


# --------------------------------------------------------------------- build


def _toy_dataset(root, n_per_class=6, size=(24, 20)):
  """Writes a toy SIIM folder: nested DICOMs, one extra DICOM without CSV row."""
  rng = np.random.default_rng(0)
  rows = []
  for i in range(2 * n_per_class):
    image_id = f'1.2.3.{i}'
    px = rng.integers(0, 4096, size=size).astype(np.uint16)
    dicom.write_dicom(root / 'dicom-images-train' / f's{i}' / f'r{i}' /
                      f'{image_id}.dcm', px, sop_uid=image_id)
    if i % 2:
      m1 = np.zeros(size, np.uint8)
      m1[2:8, 3:9] = 1
      m2 = np.zeros(size, np.uint8)
      m2[14:20, 10:18] = 1
      rows += [f'{image_id}, {rle.rle_encode(m1)}', f'{image_id}, {rle.rle_encode(m2)}']
    else:
      rows.append(f'{image_id}, -1')
  dicom.write_dicom(root / 'extra' / '9.9.9.dcm', np.zeros(size, np.uint16))
  return _write_csv(root / 'train-rle.csv', 'ImageId, EncodedPixels', rows)


def _cfg(root, tmp_path, **kw):
  c = siim.default_config()
  c.root = str(root)
  c.cache_dir = str(tmp_path / 'cache')
  c.image_size = (12, 10)
  c.split_sizes = (6, 2, 2)
  c.update(kw)
  return c


def test_build_toy_splits_masks_and_cache(tmp_path, monkeypatch):
  root = tmp_path / 'data'
  _toy_dataset(root)
  cfg = _cfg(root, tmp_path)
  out = data_lib.build_dataset(cfg)
  assert set(out) == {'train', 'val', 'test'}
  ids = siim.study_list(cfg)
  assert len(ids) == 12 and '9.9.9' not in ids
  seen = []
  for split, n in (('train', 6), ('val', 2), ('test', 2)):
    d = out[split]
    assert d['image'].shape == (n, 12, 10, 1) and d['image'].dtype == np.float32
    assert d['mask'].shape == (n, 12, 10) and d['label'].dtype == np.int32
    assert np.sum(d['label'] == 1) == n // 2  # class-balanced
    assert set(np.unique(d['mask'])) <= {0.0, 1.0}
    assert not d['mask'][d['label'] == 0].any()
    np.testing.assert_allclose(d['image'].mean(axis=(1, 2, 3)), 0, atol=1e-5)
    seen += list(d['index'])
  assert len(seen) == len(set(seen))  # disjoint splits
  # Both regions (two CSV rows) are in every positive mask.
  pos = out['train']['mask'][out['train']['label'] == 1]
  assert pos[:, :4].any(axis=(1, 2)).all() and pos[:, 7:].any(axis=(1, 2)).all()
  # Second call: memory-mapped cache, nothing rebuilt.
  monkeypatch.setattr(siim, '_build_arrays', lambda *a: pytest.fail('rebuilt'))
  again = siim.build(cfg)
  np.testing.assert_array_equal(again['test']['index'], out['test']['index'])
  # The mask rule is part of the cache key: 'area' with a low threshold is a
  # new build whose masks contain the bilinear ones (same split order).
  monkeypatch.undo()
  wide = siim.build(_cfg(root, tmp_path, mask_rule='area',
                         mask_threshold=0.01))
  np.testing.assert_array_equal(wide['test']['index'], out['test']['index'])
  assert (wide['train']['mask'] >= out['train']['mask']).all()
  assert wide['train']['mask'].sum() > out['train']['mask'].sum()


def test_build_scales_split_sizes(tmp_path):
  root = tmp_path / 'data'
  _toy_dataset(root)
  out = siim.build(_cfg(root, tmp_path, split_sizes=(50, 10, 10)))
  sizes = [len(out[s]['label']) for s in siim.SPLITS]
  assert sum(sizes) <= 12 and sizes[0] > sizes[1] > 0
  assert siim.split_counts(6, (5200, 1000, 1000)) == [4, 1, 1]
  with pytest.raises(ValueError, match='even'):
    siim.split_counts(6, (5201, 1000, 1000))


def test_build_missing_dicom_raise_and_skip(tmp_path, monkeypatch):
  root = tmp_path / 'data'
  csv = _toy_dataset(root)
  with open(csv, 'a') as f:
    f.write('4.4.4, -1\n')
  with pytest.raises(ValueError, match=r'4\.4\.4 \(row 20\) has no DICOM'):
    siim.build(_cfg(root, tmp_path))
  out = siim.build(_cfg(root, tmp_path, on_error='skip'))
  assert sum(len(out[s]['label']) for s in siim.SPLITS) == 10
  # The missing DICOM arrives later: the cache key sees it and rebuilds.
  builds = []
  real = siim._build_arrays  # pylint: disable=protected-access

  def counting(*a):
    builds.append(1)
    return real(*a)

  monkeypatch.setattr(siim, '_build_arrays', counting)
  siim.build(_cfg(root, tmp_path, on_error='skip'))
  assert not builds  # unchanged folder: the cache
  dicom.write_dicom(root / 'late' / '4.4.4.dcm', np.zeros((24, 20), np.uint16),
                    sop_uid='4.4.4')
  siim.build(_cfg(root, tmp_path, on_error='skip'))
  assert builds == [1]


def test_build_malformed_rle_names_id_and_row(tmp_path):
  root = tmp_path / 'data'
  csv = _toy_dataset(root)
  text = open(csv).read().replace('1.2.3.1, ', '1.2.3.1, 5 x ', 1)
  open(csv, 'w').write(text)
  with pytest.raises(ValueError, match=r'ImageId 1\.2\.3\.1, row 3: malformed'):
    siim.build(_cfg(root, tmp_path))
  with pytest.raises(ValueError, match='on_error'):
    siim.build(_cfg(root, tmp_path, on_error='ignore'))


def test_build_corrupt_dicom_raise_and_skip(tmp_path):
  root = tmp_path / 'data'
  _toy_dataset(root, n_per_class=7)
  bad = next(root.glob('**/1.2.3.0.dcm'))
  bad.write_bytes(bad.read_bytes()[:300])
  cfg = _cfg(root, tmp_path, split_sizes=(12, 0, 0))
  with pytest.raises(ValueError, match='1.2.3.0.dcm'):
    siim.build(cfg)
  cfg.on_error = 'skip'
  out = siim.build(cfg)  # the next healthy image replaces the corrupt one
  assert len(out['train']['label']) == 12
  assert np.sum(out['train']['label']) == 6


def test_registry_unknown_dataset():
  with pytest.raises(ValueError, match='data.name'):
    data_lib.build_dataset(_named('nope'))
  assert data_lib.default_config('siim').name == 'siim'


def _named(name):
  c = siim.default_config()
  c.name = name
  return c
