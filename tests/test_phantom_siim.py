"""Tests for the phantom anatomy and the SIIM-ACR phantom in the real format."""
from __future__ import annotations

import collections
import os
import subprocess
import sys
import time

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from cxr_jax.data import dicom, rle, siim
from cxr_jax.data.phantom import anatomy
from cxr_jax.data.phantom import siim as phantom_siim


@pytest.mark.parametrize('size_hw', [(64, 64), (256, 256), (320, 256)])
def test_draw_thorax_masks_and_range(size_hw):
  img, geom = anatomy.draw_thorax(np.random.default_rng(1), size_hw)
  assert img.shape == size_hw and img.dtype == np.float32
  assert 0.0 <= img.min() and img.max() <= 1.0
  for name in ('left_lung', 'right_lung', 'heart', 'mediastinum', 'body'):
    assert geom[name].dtype == bool and geom[name].shape == size_hw
    assert geom[name].any(), name
  lungs = geom['left_lung'] | geom['right_lung']
  assert not (lungs & geom['heart']).any()
  assert not (geom['left_lung'] & geom['right_lung']).any()
  # Radiological orientation: the patient's right lung is on the image left.
  w = size_hw[1]
  assert np.nonzero(geom['right_lung'])[1].mean() < w / 2
  assert np.nonzero(geom['left_lung'])[1].mean() > w / 2
  # Lungs are dark, the heart and the abdomen below are bright.
  assert img[lungs].mean() + 0.15 < img[geom['heart']].mean()
  assert not geom['lung_markings'][~lungs].any()
  y0, x0, y1, x1 = geom['heart_bbox']
  assert geom['heart'][y0:y1, x0:x1].sum() == geom['heart'].sum()


def test_draw_thorax_varies_and_is_fast():
  a, ga = anatomy.draw_thorax(np.random.default_rng(0), (128, 128))
  b, gb = anatomy.draw_thorax(np.random.default_rng(1), (128, 128))
  assert not np.allclose(a, b)
  assert (ga['left_lung'] != gb['left_lung']).any()
  big, _ = anatomy.draw_thorax(np.random.default_rng(2), (128, 128), heart_scale=1.3)
  t = time.perf_counter()
  anatomy.draw_thorax(np.random.default_rng(3), (512, 512))
  assert time.perf_counter() - t < 3.0  # ~0.2 s idle; loose for busy machines
  assert big.shape == (128, 128)


def test_pneumothorax_signs():
  """Air region: darker than the rest of the lung, markings removed."""
  for seed in range(3):
    rng = np.random.default_rng(seed)
    img, regions = phantom_siim.make_case(rng, 256, True)
    assert regions and all(r.any() for r in regions)
    clean, geom = anatomy.draw_thorax(np.random.default_rng(seed), (256, 256),
                                      noise_std=0.0)
    region = regions[0]
    lung = geom['left_lung'] | geom['right_lung']
    assert (region <= lung).all()  # inside the lung field, at its edge
    ring = ndimage.binary_dilation(region, iterations=12) & lung & ~region
    ring &= ~ndimage.binary_dilation(region, iterations=4)
    assert img[region].mean() < img[ring].mean()
    assert img[region].mean() < clean[region].mean()


def test_write_siim_files(tmp_path):
  phantom_siim.write_siim(str(tmp_path), num=16, seed=0, size=64)
  with open(tmp_path / 'train-rle.csv') as f:
    assert f.readline() == 'ImageId, EncodedPixels\n'
  rows = rle.read_rle_csv(tmp_path / 'train-rle.csv')
  assert len(rows) == 16
  labels = [rles[0] != '-1' for rles in rows.values()]
  assert sum(labels) == 8
  paths = sorted(tmp_path.glob('dicom-images-train/*/*/*.dcm'))
  assert len(paths) == 16
  variants = collections.Counter()
  for path in paths:
    ds = pydicom.dcmread(path)
    assert ds.SOPInstanceUID == path.stem and path.stem in rows
    assert path.parent.name == ds.SeriesInstanceUID
    assert path.parent.parent.name == ds.StudyInstanceUID
    variants[(ds.PhotometricInterpretation, int(ds.BitsStored))] += 1
    img = dicom.read_dicom(path)
    assert img.shape == (64, 64)
    for enc in rows[path.stem]:
      if enc != '-1':
        assert rle.rle_decode(enc, 64, 64).any()
  assert len({v[0] for v in variants}) == 2 and len({v[1] for v in variants}) >= 2


def test_build_from_phantom_and_reuse(tmp_path, monkeypatch):
  cfg = siim.default_config()
  cfg.cache_dir = str(tmp_path)
  cfg.phantom_num, cfg.phantom_size, cfg.image_size = 16, 64, (32, 32)
  out = siim.build(cfg)
  assert os.path.isfile(tmp_path / 'phantom' / 'siim-v2-16-64-0' / 'done')
  total = 0
  indices = set()
  for split in siim.SPLITS:
    d = out[split]
    n = len(d['label'])
    total += n
    assert n > 0 and np.sum(d['label']) * 2 == n
    assert d['image'].shape == (n, 32, 32, 1)
    assert not d['mask'][d['label'] == 0].any()
    indices |= set(d['index'].tolist())
  assert total == 16 and len(indices) == 16
  pos = np.concatenate([out[s]['mask'][out[s]['label'] == 1] for s in siim.SPLITS])
  assert pos.any(axis=(1, 2)).sum() >= 6  # tiny regions may vanish at 32 px
  monkeypatch.setattr(phantom_siim, 'write_siim',
                      lambda *a, **k: pytest.fail('phantom regenerated'))
  cfg.image_size = (16, 16)  # new arrays, same phantom
  assert siim.build(cfg)['train']['image'].shape[1:] == (16, 16, 1)


def test_cli(tmp_path):
  cmd = [sys.executable, '-m', 'cxr_jax.data.phantom', '--dataset=siim',
         f'--out={tmp_path}', '--num=2', '--seed=3', '--size=48']
  subprocess.run(cmd, check=True, capture_output=True, timeout=60,
                 cwd=os.path.dirname(os.path.dirname(__file__)))
  assert len(list(tmp_path.glob('dicom-images-train/*/*/*.dcm'))) == 2
  bad = subprocess.run(cmd[:2] + ['--dataset=nope', f'--out={tmp_path}'],
                       capture_output=True, timeout=60, text=True,
                       cwd=os.path.dirname(os.path.dirname(__file__)))
  assert bad.returncode != 0 and 'dataset' in bad.stderr
