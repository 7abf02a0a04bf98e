"""Bad input to the data layer: each case is an error of the expected type
whose message names the item (file, line, column, row or config key) and
says what is wrong; under `on_error='skip'` a bad item is dropped and
counted instead.

Small generated phantoms (`cxr_jax.data.phantom`) and hand-made broken
files; see `tests/test_data_egd.py` and `tests/test_data_siim.py` for the
readers' results on good input.
"""
import csv
import logging
import os
import re
import shutil

import ml_collections
import numpy as np
import pytest

from cxr_jax import data as data_lib
from cxr_jax.data import dicom
from cxr_jax.data import egd
from cxr_jax.data import egd_csv
from cxr_jax.data import rle
from cxr_jax.data import siim
from cxr_jax.data.phantom import gaze as phantom_gaze
from cxr_jax.data.phantom import siim as phantom_siim


def _raises(fn, exc_type, item: str, problem: str) -> str:
  """Runs fn; asserts the exception type, that the message names `item`
  (a regex) and says `problem` (a regex); returns the message."""
  with pytest.raises(exc_type) as e:
    fn()
  message = str(e.value)
  assert re.search(item, message), (item, message)
  assert re.search(problem, message), (problem, message)
  return message


# ------------------------------------------------------------- phantoms


@pytest.fixture(scope='module')
def siim_root(tmp_path_factory) -> str:
  root = str(tmp_path_factory.mktemp('siim'))
  phantom_siim.write_siim(root, num=8, seed=0, size=64)
  return root


@pytest.fixture(scope='module')
def egd_root(tmp_path_factory) -> str:
  root = str(tmp_path_factory.mktemp('egd'))
  phantom_gaze.write_gaze(root, num=9, seed=0, size=64)
  return root


def _copy(root: str, tmp_path) -> str:
  out = str(tmp_path / 'data')
  shutil.copytree(root, out)
  return out


def _siim_cfg(root: str, tmp_path, **kw):
  c = siim.default_config()
  c.root = root
  c.cache_dir = str(tmp_path / 'cache')
  c.image_size = (16, 16)
  c.split_sizes = (4, 2, 2)
  c.update(kw)
  return c


def _egd_cfg(root: str, tmp_path, **kw):
  c = egd.default_config()
  c.root = root
  c.cache_dir = str(tmp_path / 'cache')
  c.image_size = (16, 16)
  c.num_test = 3
  c.num_workers = 1
  c.update(kw)
  return c


def _rows(path: str) -> list[dict[str, str]]:
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def _write_rows(path: str, rows: list[dict[str, str]]) -> None:
  with open(path, 'w', newline='') as f:
    w = csv.DictWriter(f, list(rows[0]))
    w.writeheader()
    w.writerows(rows)


def _insert_byte(path: str, line: int, byte: bytes = b'\xe9') -> int:
  """Puts a non-UTF-8 byte at the start of `line`; returns its offset."""
  with open(path, 'rb') as f:
    data = f.read()
  offset = 0
  for _ in range(line - 1):
    offset = data.index(b'\n', offset) + 1
  with open(path, 'wb') as f:
    f.write(data[:offset] + byte + data[offset:])
  return offset


def _dicoms(root: str) -> list[str]:
  return sorted(os.path.join(d, f) for d, _, fs in os.walk(root)
                for f in fs if f.lower().endswith('.dcm'))


# ---------------------------------------------------------------- DICOM


def _pixels() -> np.ndarray:
  return np.arange(24 * 20, dtype=np.uint16).reshape(24, 20)


def test_dicom_nan_rescale_slope(tmp_path):
  path = str(tmp_path / 'nan.dcm')
  dicom.write_dicom(path, _pixels(), rescale=(float('nan'), 0.0))
  _raises(lambda: dicom.read_dicom(path), ValueError,
          re.escape(path) + '.*RescaleSlope', 'not a finite number')


def test_dicom_infinite_window(tmp_path):
  path = str(tmp_path / 'inf.dcm')
  dicom.write_dicom(path, _pixels(), extra=dict(WindowCenter='inf',
                                                WindowWidth='100'))
  _raises(lambda: dicom.read_dicom(path), ValueError,
          re.escape(path) + '.*WindowCenter', 'not a finite number')


def test_dicom_blank_image(tmp_path):
  path = str(tmp_path / 'blank.dcm')
  dicom.write_dicom(path, np.full((24, 20), 700, np.uint16))
  _raises(lambda: dicom.read_image(path), ValueError, re.escape(path),
          'blank image: every pixel is 0 .*stored values 700..700')


def test_png_blank_image(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / 'blank.png')
  Image.fromarray(np.full((20, 20), 128, np.uint8)).save(path)
  _raises(lambda: dicom.read_image(path), ValueError, re.escape(path),
          'blank image')


def test_dicom_colour(tmp_path):
  path = str(tmp_path / 'rgb.dcm')
  dicom.write_dicom(path, _pixels(), extra=dict(
      PhotometricInterpretation='RGB'))
  _raises(lambda: dicom.read_dicom(path), ValueError, re.escape(path),
          "unsupported PhotometricInterpretation 'RGB'")


def test_dicom_truncated(tmp_path):
  path = str(tmp_path / 'cut.dcm')
  dicom.write_dicom(path, _pixels())
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) // 2])
  _raises(lambda: dicom.read_dicom(path), ValueError, re.escape(path),
          'no PixelData|cannot decode pixel data|not a readable DICOM')


# ----------------------------------------------------------------- SIIM


def test_siim_blank_dicom_raises_or_is_skipped(siim_root, tmp_path, caplog):
  root = _copy(siim_root, tmp_path)
  cfg = _siim_cfg(root, tmp_path, on_error='skip', split_sizes=(2, 2, 2))
  used = siim.build(cfg)['test']['index'][0]  # 3 of each class's 4 are used
  image_id = siim.study_list(cfg)[used]
  path = [p for p in _dicoms(root) if image_id in p][0]
  dicom.write_dicom(path, np.full((64, 64), 9, np.uint16), sop_uid=image_id)
  _raises(lambda: siim.build(_siim_cfg(root, tmp_path)), ValueError,
          re.escape(path), "blank image.*data.on_error='skip'")
  with caplog.at_level(logging.WARNING):
    out = siim.build(cfg)
  assert sum(v['label'].size for v in out.values()) == 6
  assert used not in np.concatenate([v['index'] for v in out.values()])
  assert re.search(r'skipped 1 item.*' + re.escape(path) + '.*blank image',
                   caplog.text)


def test_siim_upper_case_extension_is_found(siim_root, tmp_path):
  root = _copy(siim_root, tmp_path)
  for path in _dicoms(root):
    os.rename(path, path[:-4] + '.DCM')
  out = siim.build(_siim_cfg(root, tmp_path))
  assert sum(v['label'].size for v in out.values()) == 8


def test_siim_no_dicom_at_all(siim_root, tmp_path):
  root = _copy(siim_root, tmp_path)
  shutil.rmtree(os.path.join(root, 'dicom-images-train'))
  _raises(lambda: siim.build(_siim_cfg(root, tmp_path)), FileNotFoundError,
          'data.root', r'no DICOM file \(\*\.dcm, any letter case\)')


def test_siim_rle_csv_not_utf8(siim_root, tmp_path):
  root = _copy(siim_root, tmp_path)
  csv_path = os.path.join(root, 'train-rle.csv')
  offset = _insert_byte(csv_path, 3)
  _raises(lambda: siim.build(_siim_cfg(root, tmp_path)), ValueError,
          re.escape(csv_path) + f': line 3, byte offset {offset}',
          'byte.*e9.*not valid UTF-8')


def test_siim_malformed_rle(siim_root, tmp_path):
  root = _copy(siim_root, tmp_path)
  csv_path = os.path.join(root, 'train-rle.csv')
  with open(csv_path) as f:
    lines = f.read().splitlines()
  image_id = lines[2].split(',')[0]
  lines[2] = f'{image_id}, 5 x 3'
  with open(csv_path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  _raises(lambda: siim.build(_siim_cfg(root, tmp_path)), ValueError,
          f'ImageId {re.escape(image_id)}, row 3',
          "token 'x' is not an integer")


@pytest.mark.parametrize('text, item, problem', [
    ('ImageId,EncodedPixels\n1.2,-1\n', 'columns found', 'unsupported RLE CSV '
     'layout.*stage-2'),
    ('ImageId, EncodedPixels\n1.2, -1, 7\n', 'row 2', 'has 3 fields'),
    ('ImageId, EncodedPixels\n , -1\n', 'row 2', 'empty ImageId'),
    ('', 'empty CSV', 'expected header'),
])
def test_rle_csv_layout(tmp_path, text, item, problem):
  path = str(tmp_path / 'train-rle.csv')
  with open(path, 'w') as f:
    f.write(text)
  _raises(lambda: rle.read_rle_rows(path), ValueError,
          re.escape(path) + '.*' + item, problem)


@pytest.mark.parametrize('key, value, problem', [
    ('image_size', 64, r'must be \(H, W\), two integers >= 1, got 64'),
    ('image_size', (64,), r'must be \(H, W\), two integers >= 1, got \(64,\)'),
    ('num_per_class', 0, 'must be >= 1'),
    ('mask_threshold', 0.0, r'must be in \(0, 1\]'),
    ('split_sizes', (5, 2, 2), 'must be even'),
    ('on_error', 'ignore', 'is not valid'),
    ('mask_rule', 'nearest', 'is not valid'),
])
def test_siim_config(siim_root, tmp_path, key, value, problem):
  cfg = ml_collections.ConfigDict(
      dict(_siim_cfg(siim_root, tmp_path).to_dict(), **{key: value}))
  _raises(lambda: siim.build(cfg), ValueError, f'data.{key}', problem)


def test_unknown_dataset_name():
  cfg = siim.default_config()
  cfg.name = 'siim2'
  _raises(lambda: data_lib.build_dataset(cfg), ValueError, 'data.name',
          "'siim2' is not valid. Valid choices: egd, siim")


# ------------------------------------------------------------ eye gaze


def test_master_sheet_not_utf8(egd_root, tmp_path):
  root = _copy(egd_root, tmp_path)
  path = os.path.join(root, 'master_sheet.csv')
  offset = _insert_byte(path, 4, b'\xff')
  _raises(lambda: egd.build(_egd_cfg(root, tmp_path)), ValueError,
          re.escape(path) + f': line 4, byte offset {offset}',
          'ff are not valid UTF-8')


def test_master_sheet_header_only(egd_root, tmp_path):
  root = _copy(egd_root, tmp_path)
  path = os.path.join(root, 'master_sheet.csv')
  with open(path) as f:
    header = f.readline()
  with open(path, 'w') as f:
    f.write(header)
  _raises(lambda: egd.build(_egd_cfg(root, tmp_path)), ValueError,
          re.escape(path), 'the sheet has no rows')


def test_master_sheet_duplicate_and_label(egd_root, tmp_path):
  root = _copy(egd_root, tmp_path)
  path = os.path.join(root, 'master_sheet.csv')
  rows = _rows(path)
  _write_rows(path, rows + [rows[1]])
  _raises(lambda: egd_csv.read_master(path), ValueError, re.escape(path),
          f"duplicate dicom_id.*{rows[1]['dicom_id']}")
  rows[3]['Normal'], rows[3]['CHF'], rows[3]['pneumonia'] = '0', '0', '0'
  _write_rows(path, rows)
  _raises(lambda: egd_csv.read_master(path), ValueError,
          f"line 5 \\(dicom_id '{rows[3]['dicom_id']}'\\)",
          'need exactly one 1')


def test_negative_fixation_duration(egd_root, tmp_path):
  root = _copy(egd_root, tmp_path)
  path = os.path.join(root, 'fixations.csv')
  rows = _rows(path)
  rows[6]['FPOGD'] = '-0.5'
  _write_rows(path, rows)
  _raises(lambda: egd.build(_egd_cfg(root, tmp_path, gaze_recipe='duration')),
          ValueError,
          re.escape(path) + f": line 8 \\(DICOM_ID '{rows[6]['DICOM_ID']}'\\), "
          "column 'FPOGD'", 'must be finite and >= 0, got -0.5')


@pytest.mark.parametrize('method', ['numpy', 'csv'])
def test_gaze_value_not_a_number(egd_root, tmp_path, method):
  root = _copy(egd_root, tmp_path)
  path = os.path.join(root, 'eye_gaze.csv')
  rows = _rows(path)
  rows[40]['Y_ORIGINAL'] = '12,5'.replace(',', ';')
  _write_rows(path, rows)
  _raises(lambda: egd_csv.read_gaze_csv(path, method=method), ValueError,
          re.escape(path) + ": line 42, column 'Y_ORIGINAL'",
          "'12;5' is not a number")


@pytest.mark.parametrize('method', ['numpy', 'csv'])
def test_gaze_short_row(egd_root, tmp_path, method):
  root = _copy(egd_root, tmp_path)
  path = os.path.join(root, 'eye_gaze.csv')
  with open(path) as f:
    lines = f.read().splitlines()
  lines[9] = ','.join(lines[9].split(',')[:5])
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  _raises(lambda: egd_csv.read_gaze_csv(path, method=method), ValueError,
          re.escape(path) + ': line 10', 'has 5 fields, expected 18')


def test_gaze_csv_not_utf8(egd_root, tmp_path):
  root = _copy(egd_root, tmp_path)
  path = os.path.join(root, 'eye_gaze.csv')
  offset = _insert_byte(path, 30)
  _raises(lambda: egd.build(_egd_cfg(root, tmp_path)), ValueError,
          re.escape(path) + f': line 30, byte offset {offset}',
          'not valid UTF-8')


@pytest.mark.parametrize('text, item, problem', [
    ('', '', r'empty file \(no header\)'),
    ('DICOM_ID,X_ORIGINAL,Y_ORIGINAL\n', r"\['Time \(in secs\)'\]",
     'missing column'),
])
def test_gaze_csv_header(tmp_path, text, item, problem):
  path = str(tmp_path / 'eye_gaze.csv')
  with open(path, 'w') as f:
    f.write(text)
  _raises(lambda: egd_csv.read_gaze_csv(path), ValueError,
          re.escape(path) + '.*' + item, problem)


def test_egd_missing_image(egd_root, tmp_path):
  root = _copy(egd_root, tmp_path)
  row = _rows(os.path.join(root, 'master_sheet.csv'))[2]
  os.remove(os.path.join(root, row['path']))
  _raises(lambda: egd.build(_egd_cfg(root, tmp_path)), FileNotFoundError,
          re.escape(row['path']) + f".*{row['dicom_id']}.*line 4",
          "not found.*data.on_error='skip'")


@pytest.mark.parametrize('broken, problem', [
    ('blank', 'blank image'),
    ('truncated', 'not a readable DICOM|no PixelData|cannot decode')])
def test_egd_unusable_image_raises_or_is_skipped(egd_root, tmp_path, caplog,
                                                 broken, problem):
  root = _copy(egd_root, tmp_path)
  row = _rows(os.path.join(root, 'master_sheet.csv'))[5]
  path = os.path.join(root, row['path'])
  if broken == 'blank':
    dicom.write_dicom(path, np.zeros((64, 52), np.uint16))
  else:
    with open(path, 'r+b') as f:
      f.truncate(100)
  _raises(lambda: egd.build(_egd_cfg(root, tmp_path)), ValueError,
          re.escape(path) + f".*dicom_id '{row['dicom_id']}', master_sheet"
          r'\.csv line 7', problem + ".*data.on_error='skip'")
  with caplog.at_level(logging.WARNING):
    out = egd.build(_egd_cfg(root, tmp_path, on_error='skip'))
  index = np.concatenate([v['index'] for v in out.values()])
  assert index.size == 8 and 5 not in index
  assert re.search('Skipped 1 image', caplog.text)


def test_egd_upper_case_extension_is_found(egd_root, tmp_path):
  root = _copy(egd_root, tmp_path)
  for path in _dicoms(root):
    os.rename(path, path[:-4] + '.DCM')
  out = egd.build(_egd_cfg(root, tmp_path))
  assert sum(v['index'].size for v in out.values()) == 9


@pytest.mark.parametrize('key, value, problem', [
    ('image_size', 64, 'two integers >= 1, got 64'),
    ('image_size', (64,), r'two integers >= 1, got \(64,\)'),
    ('image_size', (0, 16), r'two integers >= 1, got \(0, 16\)'),
    ('split', 'random', 'is not valid'),
    ('gaze_recipe', 'heatmap', 'is not valid'),
    ('gaze_sigma', -1.0, 'must be >= 0'),
    ('gaze_off_image', 'drop', 'is not valid'),
    ('on_error', 'warn', 'is not valid'),
])
def test_egd_config(egd_root, tmp_path, key, value, problem):
  cfg = ml_collections.ConfigDict(
      dict(_egd_cfg(egd_root, tmp_path).to_dict(), **{key: value}))
  _raises(lambda: egd.build(cfg), ValueError, f'data.{key}', problem)


def test_egd_num_test(egd_root, tmp_path):
  _raises(lambda: egd.build(_egd_cfg(egd_root, tmp_path, num_test=9)),
          ValueError, 'num_test=9', r'need 0 < num_test < number of images')
