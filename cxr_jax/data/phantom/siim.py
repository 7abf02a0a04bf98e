"""SIIM-ACR pneumothorax phantom in the real on-disk format.

`write_siim(out_dir, num, seed, size)` writes

  out_dir/dicom-images-train/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm
  out_dir/train-rle.csv          (header `ImageId, EncodedPixels`)

like the Kaggle download, so the real reader (`cxr_jax.data.siim`) serves it.
Half the cases (exactly num // 2, shuffled) have a pneumothorax: a peripheral
air crescent at the apex / lateral chest wall of either lung, darker than the
lung, without vessel markings, bounded by a thin bright visceral pleural line
with the retracted (slightly denser) lung behind it. Sizes run from subtle
slivers to large collapses; 1 in 5 has a second region (a second CSV row).
The mask is exactly the air region. Distractors appear in both classes with
the same probability (skin folds that mimic a pleural line but keep the
markings, tubes, ECG electrodes), so the task is learnable but not trivial.
Storage varies on purpose: MONOCHROME1/2, 10/12/16 stored bits, rescale
slope/intercept and sometimes a VOI window, all undone by `read_dicom`.
"""
from __future__ import annotations

import os

import numpy as np
from scipy import ndimage
from skimage.draw import line_aa

from cxr_jax.data import dicom, rle
from cxr_jax.data.phantom import anatomy

_UID = '1.2.826.0.1.3680043.8.498.'  # pydicom's UID root


def _sector_weight(phi: np.ndarray, phi0: float, half_width: float
                   ) -> np.ndarray:
  """Smooth 0..1 bump of the wrapped angular distance |phi - phi0|."""
  d = np.angle(np.exp(1j * (phi - phi0)))
  return np.sqrt(np.clip(1.0 - (d / half_width) ** 2, 0.0, 1.0))


def _ptx_region(rng: np.random.Generator, lung: np.ndarray, side: int,
                depth_frac: float) -> np.ndarray:
  """A peripheral crescent of `lung` along the apex / lateral wall.

  side: -1 for the image-left lung (patient right), +1 for image-right.
  depth_frac: maximal crescent depth as a fraction of the image size.
  """
  h, w = lung.shape
  ys, xs = np.nonzero(lung)
  cy, cx = ys.mean(), xs.mean()
  # Distance to the apical / lateral wall only: fill the lung downwards and
  # medially so the diaphragm and mediastinal borders are far away.
  filled = np.logical_or.accumulate(lung, axis=0)
  filled = np.logical_or.accumulate(filled[:, ::-side], axis=1)[:, ::-side]
  dist = ndimage.distance_transform_edt(filled)
  yy, xx = np.mgrid[0:h, 0:w]
  # Angle in a side-independent frame: 0 = lateral, -pi/2 = apex.
  phi = np.arctan2(yy - cy, (xx - cx) * side)
  phi0 = rng.uniform(-np.pi / 2 - 0.2, 0.35)
  half_width = rng.uniform(0.5, 1.4)
  depth = depth_frac * max(h, w) * _sector_weight(phi, phi0, half_width)
  # Small undulation so the pleural line is not a perfect offset curve.
  depth *= 1.0 + 0.12 * np.sin(phi * rng.uniform(2, 5) + rng.uniform(0, 6))
  return lung & (dist <= depth) & (depth > 0.5)


def _add_pneumothorax(img: np.ndarray, geom: dict, region: np.ndarray,
                      rng: np.random.Generator, lung: np.ndarray) -> np.ndarray:
  """Applies the radiographic signs of a pneumothorax in `region`."""
  h, w = img.shape
  px = max(h, w) / 1024.0
  gain = geom['gain']
  soft = ndimage.gaussian_filter(region.astype(np.float32), 0.6 * px)
  img = img - geom['lung_markings'] * region  # no vessels in the air
  # Air through the full depth (as in the deeper lung nearby, not the thin
  # lung edge), and then darker than lung: no parenchyma, no blood.
  deep = ndimage.maximum_filter(geom['lung_air'],
                                size=int(0.08 * max(h, w)) + 1)
  img = img - 0.5 * np.maximum(deep - geom['lung_air'], 0.0) * soft
  img = img - gain * rng.uniform(0.03, 0.08) * soft
  d_out = ndimage.distance_transform_edt(~region)
  line_w = max(1.0, rng.uniform(1.5, 3.0) * px)
  pleura = lung & ~region & (d_out <= line_w)
  img = img + gain * rng.uniform(0.06, 0.12) * ndimage.gaussian_filter(
      pleura.astype(np.float32), 0.4 * px)
  retracted = lung & ~region & (d_out > line_w)
  rim = np.exp(-d_out / (25.0 * px)) * retracted
  return img + gain * rng.uniform(0.01, 0.04) * rim


def _polyline(img: np.ndarray, pts_yx: np.ndarray, value: float,
              sigma: float) -> np.ndarray:
  """Adds a blurred antialiased polyline through pixel points (N, 2)."""
  h, w = img.shape
  layer = np.zeros_like(img)
  for (y0, x0), (y1, x1) in zip(pts_yx[:-1], pts_yx[1:]):
    rr, cc, val = line_aa(int(y0), int(x0), int(y1), int(x1))
    ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
    np.maximum.at(layer, (rr[ok], cc[ok]), val[ok])
  if sigma > 0:
    layer = ndimage.gaussian_filter(layer, sigma)
    layer /= max(float(layer.max()), 1e-6)
  return img + value * layer


def _add_distractors(img: np.ndarray, geom: dict, rng: np.random.Generator
                     ) -> np.ndarray:
  """Skin fold, tube and ECG electrodes, each with its own probability."""
  h, w = img.shape
  px = max(h, w) / 1024.0
  gain = geom['gain']
  if rng.uniform() < 0.3:  # skin fold: a pleural-line look-alike, markings kept
    lung = geom['right_lung'] if rng.uniform() < 0.5 else geom['left_lung']
    ys, xs = np.nonzero(lung)
    y = np.linspace(np.percentile(ys, 20), np.percentile(ys, 90), 40)
    side = -1 if xs.mean() < w / 2 else 1
    x_edge = np.percentile(xs, 90 if side > 0 else 10)
    bow = rng.uniform(-0.04, 0.04) * w * ((y - y.mean()) / h * 4) ** 2
    x = x_edge - side * (rng.uniform(0.02, 0.08) * w + bow)
    img = _polyline(img, np.stack([y, x], 1), gain * rng.uniform(0.03, 0.06),
                    0.8 * px)
  if rng.uniform() < 0.3:  # a tube from the neck down the mediastinum
    mid = geom['midline_x']
    t = np.linspace(0.0, 1.0, 30)
    y = t * rng.uniform(0.5, 0.85) * h
    wiggle = np.sin(t * np.pi * rng.uniform(0.5, 1.5))
    x = mid + rng.uniform(-0.06, 0.06) * w * wiggle
    img = _polyline(img, np.stack([y, x], 1), gain * rng.uniform(0.12, 0.2),
                    1.5 * px)
  if rng.uniform() < 0.25:  # ECG electrodes with wires
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(rng.integers(2, 5)):
      ey, ex = rng.uniform(0.1, 0.8) * h, rng.uniform(0.1, 0.9) * w
      r = rng.uniform(0.008, 0.014) * max(h, w)
      disk = np.clip(r + 0.5 - np.hypot(yy - ey, xx - ex), 0.0, 1.0)
      img = img + gain * 0.25 * disk
      ey1 = ey + rng.uniform(-0.1, 0.1) * h
      ex1 = ex + rng.uniform(-0.15, 0.15) * w
      tail = np.stack([np.linspace(ey, ey1, 10), np.linspace(ex, ex1, 10)], 1)
      img = _polyline(img, tail, gain * 0.08, 0.6 * px)
  return img


def _store(img01: np.ndarray, rng: np.random.Generator) -> dict:
  """Picks a storage variant and the stored uint16 values for `img01`."""
  photometric = 'MONOCHROME1' if rng.uniform() < 0.5 else 'MONOCHROME2'
  bits = int(rng.choice([10, 12, 16]))
  slope, intercept = [(1.0, 0.0), (0.5, -1024.0), (2.0, 100.0), (1.5, -50.0)][
      rng.integers(4)]
  maxv = (1 << bits) - 1
  val = img01 if photometric == 'MONOCHROME2' else 1.0 - img01
  stored = np.round(np.clip(val, 0.0, 1.0) * maxv).astype(np.uint16)
  extra = {}
  if rng.uniform() < 0.35:  # a window that spans the stored range
    extra['WindowCenter'] = f'{intercept + slope * maxv / 2:.2f}'
    extra['WindowWidth'] = f'{slope * maxv + 1:.2f}'
  return dict(pixels=stored, photometric=photometric, bits_stored=bits,
              rescale=(slope, intercept), extra=extra)


def make_case(rng: np.random.Generator, size: int, positive: bool
              ) -> tuple[np.ndarray, list[np.ndarray]]:
  """One phantom radiograph in [0, 1] and its list of pneumothorax regions."""
  img, geom = anatomy.draw_thorax(rng, (size, size), noise_std=0.0)
  regions = []
  if positive:
    n_regions = 2 if rng.uniform() < 0.2 else 1
    sides = [int(rng.choice([-1, 1]))]
    if n_regions == 2:
      sides.append(sides[0] if rng.uniform() < 0.5 else -sides[0])
    for side in sides:
      lung = geom['right_lung'] if side < 0 else geom['left_lung']
      lung = lung & ~np.any(regions, axis=0) if regions else lung
      region = np.zeros_like(lung)
      # Maximal depth (fraction of the image): subtle slivers, moderate and
      # large collapses (SIIM has many of each).
      depth = rng.choice([rng.uniform(0.008, 0.03), rng.uniform(0.03, 0.12),
                          rng.uniform(0.12, 0.3)], p=[0.3, 0.35, 0.35])
      for _ in range(4):  # grow tiny regions until they cover a few pixels
        region = _ptx_region(rng, lung, side, depth)
        if region.sum() >= max(6, 2e-4 * size * size):
          break
        depth *= 1.6
      if region.any():
        img = _add_pneumothorax(img, geom, region, rng, lung)
        regions.append(region)
  img = _add_distractors(img, geom, rng)
  img = img + rng.uniform(0.004, 0.015) * rng.standard_normal(img.shape)
  return np.clip(img, 0.0, 1.0).astype(np.float32), regions


def write_siim(out_dir: str, num: int, seed: int, size: int = 1024) -> None:
  """Writes `num` phantom studies (about half pneumothorax) under out_dir."""
  if num < 1 or size < 32:
    raise ValueError(f'write_siim needs num >= 1 and size >= 32, got '
                     f'num={num}, size={size}')
  labels = np.zeros(num, bool)
  labels[:num // 2] = True
  labels = np.random.default_rng([seed, 1]).permutation(labels)
  rows = []
  for i in range(num):
    rng = np.random.default_rng([seed, 2, i])
    img, regions = make_case(rng, size, bool(labels[i]))
    if labels[i] and not regions:
      raise RuntimeError(f'phantom case {i}: no pneumothorax region fitted')
    tag = f'{seed}.{i}.{rng.integers(10**9)}'
    sop, study, series = (f'{_UID}4.{tag}', f'{_UID}2.{tag}', f'{_UID}3.{tag}')
    store = _store(img, rng)
    path = os.path.join(out_dir, 'dicom-images-train', study, series,
                        f'{sop}.dcm')
    dicom.write_dicom(
        path, store['pixels'], photometric=store['photometric'],
        bits_stored=store['bits_stored'], rescale=store['rescale'],
        patient_id=f'phantom-{seed}-{i}', sop_uid=sop,
        extra=dict(store['extra'], StudyInstanceUID=study,
                   SeriesInstanceUID=series))
    for region in regions or [None]:
      rows.append((sop, ' ' + (rle.rle_encode(region) if region is not None
                               else '-1')))
  with open(os.path.join(out_dir, 'train-rle.csv'), 'w', newline='') as f:
    f.write(','.join(rle.EXPECTED_HEADER) + '\n')
    for image_id, enc in rows:
      f.write(f'{image_id},{enc}\n')
