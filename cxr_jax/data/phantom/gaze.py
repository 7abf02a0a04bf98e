"""Phantom of the eye-gaze dataset (egd-cxr) in its real on-disk formats.

`write_gaze(out_dir, num, seed, size)` writes a MIMIC-CXR style tree
`files/p1X/p1XXXXXXX/sNNNNNNNN/<dicom_id>.dcm` and the dataset's CSVs
(`master_sheet.csv`, `eye_gaze.csv`, `fixations.csv`, `bounding_boxes.csv`),
so `cxr_jax.data.egd` reads it with the same code as the real data.

Classes (balanced, shuffled): Normal; CHF (enlarged heart, prominent hila,
hazy congestion growing towards the lung bases); pneumonia (one irregular
focal opacity in a lung, of variable size and contrast, some subtle). Normal
hearts and hila vary enough to overlap mild CHF, so the task is learnable but
not trivial.

Gaze (`phantom.reading`): a simulated reading at 60 Hz, whose fixations
dwell longer on findings: the opacity in pneumonia; in CHF the heart border
and both costophrenic regions, so where the reader dwells depends on the
diagnosis, not only on what is locally visible. All samples lie inside the
image (pixel coordinates of the native image, `X_ORIGINAL`, `Y_ORIGINAL`).
"""

from __future__ import annotations

import csv
import os
import pickle
import subprocess
import sys
from typing import Any

import numpy as np
from scipy import ndimage

from cxr_jax.data import dicom
from cxr_jax.data.phantom import anatomy
from cxr_jax.data.phantom import reading

CLASSES = ('Normal', 'CHF', 'pneumonia')
# Bump when the drawing changes (part of the generated folder's name).
VERSION = 3
SCREEN_WH = (1920, 1080)  # display the image is fitted into (for FPOGX/Y)

MASTER_HEADER = (
    'dicom_id', 'path', 'study_id', 'patient_id', 'gender', 'anchor_age',
    'image_top_pad', 'image_bottom_pad', 'image_left_pad', 'image_right_pad',
    'Normal', 'CHF', 'pneumonia', 'enlarged_cardiac_silhouette',
    'pulmonary_edema__hazy_opacity', 'consolidation', 'cxr_exam_indication')
GAZE_HEADER = (
    'DICOM_ID', 'CNT', 'Time (in secs)', 'TIMETICK(f=10000000)', 'FPOGX',
    'FPOGY', 'FPOGS', 'FPOGD', 'FPOGID', 'FPOGV', 'BPOGX', 'BPOGY', 'BPOGV',
    'LPD', 'RPD', 'X_ORIGINAL', 'Y_ORIGINAL', 'SESSION_ID')
BBOX_HEADER = ('dicom_id', 'bbox_name', 'x1', 'x2', 'y1', 'y2')


# ----------------------------------------------------------------- images


def _haze(geom: dict, rng: np.random.Generator, strength: float
          ) -> np.ndarray:
  """Congestion: soft density in both lungs, growing towards the bases."""
  lungs = (geom['left_lung'] | geom['right_lung']).astype(np.float32)
  h = lungs.shape[0]
  rows = np.nonzero(lungs.any(1))[0]
  y0, y1 = (rows.min(), rows.max()) if rows.size else (0, h - 1)
  t = np.clip((np.arange(h) - y0) / max(y1 - y0, 1), 0, 1)[:, None]
  blot = ndimage.gaussian_filter(rng.standard_normal(lungs.shape),
                                 0.03 * h).astype(np.float32)
  blot = 1.0 + 0.6 * blot / max(float(np.abs(blot).max()), 1e-6)
  soft = ndimage.gaussian_filter(lungs, 0.01 * h + 0.5)
  return strength * soft * t ** 1.5 * blot


def _opacity(geom: dict, rng: np.random.Generator, size: int
             ) -> tuple[np.ndarray, tuple[float, float], float]:
  """Irregular focal opacity in one lung: (density map, centre (y, x), r)."""
  side = 'left_lung' if rng.uniform() < 0.5 else 'right_lung'
  mask = geom[side]
  # Keep the centre away from the lung edge when the lung allows it.
  inner = ndimage.binary_erosion(mask, iterations=max(1, size // 40))
  ys, xs = np.nonzero(inner if inner.any() else mask)
  k = rng.integers(ys.size)
  cy, cx = float(ys[k]), float(xs[k])
  r = rng.uniform(0.035, 0.1) * size
  h, w = mask.shape
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  blob = np.zeros((h, w), np.float32)
  for _ in range(rng.integers(2, 5)):  # a few lobules -> irregular shape
    oy, ox = rng.normal(0, 0.4 * r, 2)
    rr = r * rng.uniform(0.5, 1.0)
    blob += np.exp(-((yy - cy - oy) ** 2 + (xx - cx - ox) ** 2) / (2 * rr ** 2))
  blob = np.clip(1.6 * blob, 0, 1)  # a plateau, like a consolidation
  lung_soft = ndimage.gaussian_filter(
      (geom['left_lung'] | geom['right_lung']).astype(np.float32),
      0.01 * size + 0.5)
  return blob * lung_soft, (cy, cx), r


def draw_study(rng: np.random.Generator, label: int, size_hw: tuple[int, int]
               ) -> tuple[np.ndarray, dict, dict]:
  """One radiograph of class `label`: (img01, geometry, finding info)."""
  size = max(size_hw)
  if label == 1:  # CHF
    heart_scale, hila_scale = rng.uniform(1.15, 1.45), rng.uniform(1.3, 2.2)
  else:
    heart_scale, hila_scale = rng.uniform(0.88, 1.15), rng.uniform(0.7, 1.3)
  img, geom = anatomy.draw_thorax(rng, size_hw, heart_scale=heart_scale,
                                  hila_scale=hila_scale)
  gain = geom['gain']
  info: dict[str, Any] = dict(heart_scale=heart_scale, hila_scale=hila_scale)
  if label == 1:
    img = img + gain * _haze(geom, rng, rng.uniform(0.05, 0.18))
  elif label == 2:
    blob, centre, r = _opacity(geom, rng, size)
    contrast = 0.07 + 0.33 * rng.uniform() ** 1.3  # subtle to obvious
    img = img + gain * contrast * blob
    info.update(centre=centre, radius=r, contrast=contrast)
  elif rng.uniform() < 0.3:  # mild, non-specific haze in some normals
    img = img + gain * _haze(geom, rng, rng.uniform(0.0, 0.05))
  return np.clip(img, 0, 1).astype(np.float32), geom, info


# ------------------------------------------------------------------ files


def _screen(x: float, y: float, size_hw: tuple[int, int]) -> tuple[float, float]:
  """Image pixel -> normalised screen coordinates (image fitted to height)."""
  s = SCREEN_WH[1] / size_hw[0]
  off = (SCREEN_WH[0] - size_hw[1] * s) / 2
  return (off + x * s) / SCREEN_WH[0], y * s / SCREEN_WH[1]


def _ids(rng: np.random.Generator, num: int) -> list[tuple[str, str, str]]:
  """(dicom_id, patient_id, study_id); some patients have two images."""
  n_pat = max(1, int(round(num * 0.8)))
  pats = rng.choice(np.arange(10_000_000, 19_999_999), n_pat, replace=False)
  owner = np.concatenate([np.arange(n_pat),
                          rng.integers(0, n_pat, num - n_pat)])
  rng.shuffle(owner)
  studies = rng.choice(np.arange(50_000_000, 59_999_999), num, replace=False)
  out = []
  for i in range(num):
    hexes = '-'.join(f'{v:08x}' for v in rng.integers(0, 2**32, 5))
    out.append((hexes, str(pats[owner[i]]), str(studies[i])))
  return out


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
  ys, xs = np.nonzero(mask)
  if ys.size == 0:
    return None
  return int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())


def _write_study(out_dir: str, i: int, label: int, ids: tuple[str, str, str],
                 seed_seq: np.random.SeedSequence, size: int
                 ) -> tuple[tuple, list, list, list]:
  """Draws study i, writes its DICOM; returns its CSV rows.

  (master row, eye_gaze rows, fixations rows, bounding_boxes rows). All its
  randomness comes from `seed_seq`, so the result does not depend on which
  worker process draws it.
  """
  rng = np.random.default_rng(seed_seq)
  dicom_id, pid, sid = ids
  hw = (int(size), int(round(size * rng.uniform(0.78, 0.88))))
  img, geom, info = draw_study(rng, label, hw)
  rel = f'files/p{pid[:2]}/p{pid}/s{sid}/{dicom_id}.dcm'
  px = np.round(img * 4095).astype(np.uint16)
  mono1 = rng.uniform() < 0.25
  dicom.write_dicom(os.path.join(out_dir, rel), 4095 - px if mono1 else px,
                    photometric='MONOCHROME1' if mono1 else 'MONOCHROME2',
                    bits_stored=12, patient_id=pid,
                    sop_uid=dicom.stable_uid(dicom_id))
  pad = (hw[0] - hw[1]) // 2
  onehot = [int(label == c) for c in range(3)]
  master = (dicom_id, rel, sid, pid, 'MF'[int(rng.integers(2))],
            int(rng.integers(25, 90)), 0, 0, pad, hw[0] - hw[1] - pad,
            *onehot, onehot[1], onehot[1], onehot[2],
            ['dyspnea', 'fever, cough', 'chest pain'][label])
  session_id = 100 + i  # the CSVs' SESSION_ID column
  fix = reading.plan_fixations(rng, geom, label, info)
  samples, fixes = reading.gaze_samples(rng, fix, hw,
                                        float(rng.uniform(0.2, 1.0)))
  gaze_rows, fix_rows, boxes = [], [], []
  for k, (t, x, y, fid, fdur, valid) in enumerate(samples):
    sx, sy = _screen(x, y, hw)
    gaze_rows.append((dicom_id, k, f'{t:.5f}', int(t * 1e7), f'{sx:.5f}',
                      f'{sy:.5f}', f'{t - fdur:.5f}', f'{fdur:.5f}',
                      int(fid), int(valid), f'{sx:.5f}', f'{sy:.5f}',
                      int(valid), f'{rng.uniform(3, 5):.3f}',
                      f'{rng.uniform(3, 5):.3f}', f'{x:.1f}', f'{y:.1f}',
                      session_id))
  for k, f in enumerate(fixes):
    sx, sy = _screen(f['x'], f['y'], hw)
    fix_rows.append((dicom_id, k, f'{f["start"]:.5f}',
                     int(f['start'] * 1e7), f'{sx:.5f}', f'{sy:.5f}',
                     f'{f["start"]:.5f}', f'{f["dwell"]:.5f}', f['id'], 1,
                     f'{sx:.5f}', f'{sy:.5f}', 1, f'{rng.uniform(3, 5):.3f}',
                     f'{rng.uniform(3, 5):.3f}', f'{f["x"]:.1f}',
                     f'{f["y"]:.1f}', session_id))
  named = dict(right_lung=geom['right_lung'], left_lung=geom['left_lung'],
               heart=geom['heart'], mediastinum=geom['mediastinum'])
  for name, mask in named.items():
    b = _bbox(mask)
    if b is not None:
      boxes.append((dicom_id, name.replace('_', ' '), *b))
  if label == 2:
    (cy, cx), r = info['centre'], info['radius']
    boxes.append((dicom_id, 'opacity', int(max(cx - r, 0)),
                  int(min(cx + r, hw[1] - 1)), int(max(cy - r, 0)),
                  int(min(cy + r, hw[0] - 1))))
  return master, gaze_rows, fix_rows, boxes


def _plan(num: int, seed: int) -> tuple[np.ndarray, list, list]:
  """Labels, ids and per-study seeds of a phantom: from `seed` alone."""
  rng = np.random.default_rng(seed)
  labels = rng.permutation(np.arange(num) % 3)
  return labels, _ids(rng, num), np.random.SeedSequence(seed).spawn(num)


def _write_shard(out_dir: str, num: int, seed: int, size: int, shard: int,
                 num_shards: int) -> list[tuple]:
  """Writes studies shard, shard + num_shards, ...; returns their rows."""
  labels, ids, seeds = _plan(num, seed)
  return [_write_study(out_dir, i, int(labels[i]), ids[i], seeds[i], size)
          for i in range(shard, num, num_shards)]


def _shard_main(out_dir: str, num: str, seed: str, size: str, shard: str,
                num_shards: str, result: str) -> None:
  """Entry point of a worker process (see `write_gaze`)."""
  rows = _write_shard(out_dir, int(num), int(seed), int(size), int(shard),
                      int(num_shards))
  with open(result, 'wb') as f:
    pickle.dump(rows, f, protocol=pickle.HIGHEST_PROTOCOL)


def write_gaze(out_dir: str, num: int, seed: int, size: int = 512,
               workers: int = 0) -> None:
  """Writes `num` phantom studies (images + the dataset CSVs) to out_dir.

  Images are `size` high and ~0.78-0.88 * size wide (like MIMIC's portrait
  DICOMs), 12-bit, some MONOCHROME1, so readers exercise padding and
  photometric handling. The drawing (pure numpy/scipy per study) is split
  over `workers` processes (0 = auto: one per CPU from 64 studies on, else
  this process alone). Workers are fresh interpreters running this module,
  so the caller's `__main__` is never re-imported; each study has its own
  seed, so the files are the same for any number of workers.
  """
  if num < 3:
    raise ValueError(f'num must be >= 3 (one per class), got {num}')
  if not workers:
    workers = (os.cpu_count() or 1) if num >= 64 else 1
  workers = max(1, min(workers, num))
  os.makedirs(out_dir, exist_ok=True)
  env = dict(os.environ)
  package_root = os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.dirname(os.path.abspath(__file__)))))
  env['PYTHONPATH'] = os.pathsep.join(
      p for p in (package_root, env.get('PYTHONPATH')) if p)
  procs = []
  for shard in range(1, workers):
    result = os.path.join(out_dir, f'.shard{shard}.pkl')
    code = ('import sys; from cxr_jax.data.phantom import gaze; '
            'gaze._shard_main(*sys.argv[1:])')
    procs.append((subprocess.Popen(
        [sys.executable, '-c', code, out_dir, str(num), str(seed), str(size),
         str(shard), str(workers), result], env=env), result))
  shards = [_write_shard(out_dir, num, seed, size, 0, workers)]
  for proc, result in procs:
    if proc.wait() != 0:
      raise RuntimeError(f'phantom worker {proc.args[-2:]} failed with exit '
                         f'status {proc.returncode} (its traceback is above)')
    with open(result, 'rb') as f:
      shards.append(pickle.load(f))
    os.remove(result)
  studies = [None] * num
  for shard, rows in enumerate(shards):
    studies[shard::workers] = rows
  tables = (('master_sheet.csv', MASTER_HEADER, [s[0] for s in studies]),
            ('eye_gaze.csv', GAZE_HEADER, [r for s in studies for r in s[1]]),
            ('fixations.csv', GAZE_HEADER, [r for s in studies for r in s[2]]),
            ('bounding_boxes.csv', BBOX_HEADER,
             [r for s in studies for r in s[3]]))
  for name, header, rows in tables:
    with open(os.path.join(out_dir, name), 'w', newline='') as f:
      wr = csv.writer(f)
      wr.writerow(header)
      wr.writerows(rows)
