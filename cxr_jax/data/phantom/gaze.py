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

Gaze (60 Hz, like the GP3 tracker of the dataset): a radiologist-like search
pattern (sweeps down the image-left lung, then the image-right lung, the
heart and hila), made of fixations of 100-600 ms with small jitter and drift,
joined by 2-3-sample saccades. Findings draw more and longer fixations: the
opacity in pneumonia; in CHF the heart border and both costophrenic regions
(where effusions and Kerley lines are looked for), so where the reader
dwells depends on the diagnosis, not only on what is locally visible. Each image has one "key" dwell (the longest fixation, 0.7-1.2 s, with
revisits so that the most dwell time lies around it): on the finding, or on
a spot that drew attention in normals (and in missed subtle pneumonias).
All samples lie inside the image (pixel coordinates of the native image,
`X_ORIGINAL`, `Y_ORIGINAL`).
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

CLASSES = ('Normal', 'CHF', 'pneumonia')
# Bump when the drawing changes (part of the generated folder's name).
VERSION = 3
HZ = 60.0
SCREEN_WH = (1920, 1080)
# Neighbourhood (fraction of the long side) in which the key dwell dominates.
KEY_RADIUS = 0.06  # display the image is fitted into (for FPOGX/Y)

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


# ------------------------------------------------------------------- gaze


def _lung_points(mask: np.ndarray, rng: np.random.Generator, n: int
                 ) -> list[tuple[float, float]]:
  """n (y, x) points sweeping a lung from apex to base."""
  rows = np.nonzero(mask.any(1))[0]
  if rows.size == 0:
    return []
  out = []
  for t in np.linspace(0.1, 0.9, n) + rng.uniform(-0.04, 0.04, n):
    y = int(rows[int(np.clip(t, 0, 1) * (rows.size - 1))])
    cols = np.nonzero(mask[y])[0]
    x = cols.min() + rng.uniform(0.25, 0.75) * (cols.max() - cols.min())
    out.append((float(y), float(x)))
  return out


def _base_point(mask: np.ndarray, lateral: str) -> tuple[float, float]:
  """The costophrenic region of a lung: near its base, towards its side."""
  ys, xs = np.nonzero(mask)
  if ys.size == 0:
    return (0.0, 0.0)
  y = ys.min() + 0.85 * (ys.max() - ys.min())
  cols = np.nonzero(mask[int(y)])[0]
  if cols.size == 0:
    cols = xs
  lo, hi = float(cols.min()), float(cols.max())
  return float(y), (lo + 0.25 * (hi - lo) if lateral == 'min'
                    else hi - 0.25 * (hi - lo))


def plan_fixations(rng: np.random.Generator, geom: dict, label: int,
                   info: dict) -> list[tuple[float, float, float]]:
  """Ordered fixations (y, x, dwell seconds) of one reading.

  Every reading sweeps both lungs, checks the heart (centre and border) and
  often the hila. Then it returns to "spots": the opacity in pneumonia (a
  subtle one is missed half of the time and read like a normal); in CHF the
  heart border and both costophrenic regions (effusion, Kerley lines), less
  often the hila; in normals a spot that drew attention without being a
  finding (heart, border, a hilum or any lung point). The key (longest) dwell is on one spot, so gaze tells where
  the reader looked hard, which helps but does not give the class away.
  """
  dwell = lambda: float(np.clip(rng.lognormal(np.log(0.25), 0.45), 0.1, 0.6))
  long_dwell = lambda: float(rng.uniform(0.35, 0.6))
  y0, x0, y1, x1 = geom['heart_bbox']
  hy, hx = (y0 + y1) / 2, (x0 + x1) / 2
  hila = [geom['hila']['right'], geom['hila']['left']]
  border = (hy + rng.uniform(-0.1, 0.2) * (y1 - y0), float(x1 - 1))
  sweeps = {side: _lung_points(geom[side], rng, int(rng.integers(4, 7)))
            for side in ('right_lung', 'left_lung')}
  lung_pts = sweeps['right_lung'] + sweeps['left_lung']
  missed = label == 2 and info['contrast'] < 0.1 and rng.uniform() < 0.5
  if label == 2 and not missed:
    spots, pick, k_extra = [info['centre']], [1.0], int(rng.integers(1, 4))
  elif label == 1:  # heart size, then effusions / Kerley lines at the bases
    bases = [_base_point(geom[side], lateral) for side, lateral in
             (('right_lung', 'min'), ('left_lung', 'max'))]
    spots = [border, *bases, hila[0], hila[1]]
    pick, k_extra = [0.3, 0.25, 0.25, 0.1, 0.1], int(rng.integers(3, 6))
  else:
    spot = lung_pts[int(rng.integers(len(lung_pts)))] if lung_pts else border
    spots = [(hy, hx), border, hila[0], hila[1], spot]
    pick, k_extra = [0.2, 0.2, 0.15, 0.15, 0.3], int(rng.integers(1, 4))
  key = spots[rng.choice(len(spots), p=np.asarray(pick) / sum(pick))]
  jit = 0.3 * info.get('radius', 0.02 * max(geom['heart'].shape))
  fix: list[tuple[float, float, float]] = []

  def add_spots(k: int) -> None:
    for _ in range(k):  # revisits: the key spot or another one
      fy, fx = key if rng.uniform() < 0.6 else spots[rng.integers(len(spots))]
      fix.append((fy + rng.normal(0, jit), fx + rng.normal(0, jit),
                  long_dwell()))

  for side in ('right_lung', 'left_lung'):  # image left, then image right
    fix.extend((p[0], p[1], dwell()) for p in sweeps[side])
    if label == 2 and not missed and rng.uniform() < 0.7:
      add_spots(int(rng.integers(1, 3)))
  fix.append((hy, hx, dwell()))
  if rng.uniform() < 0.7:
    fix.append((border[0], border[1], dwell()))
  for h in hila:
    if rng.uniform() < 0.7:
      fix.append((h[0], h[1], dwell()))
  add_spots(k_extra)
  at = int(rng.integers(len(fix) // 2, len(fix) + 1))
  fix.insert(at, (key[0], key[1], float(rng.uniform(0.7, 1.2))))
  return _dominate(fix, at, KEY_RADIUS * max(geom['heart'].shape), rng)


def _dominate(fix: list, at: int, radius: float, rng: np.random.Generator,
              margin: float = 1.3) -> list:
  """Adds refixations of fix[at] until the dwell within `radius` of it is
  `margin` x that around any fixation outside its neighbourhood."""
  fix = list(fix)
  while True:
    yx = np.asarray([f[:2] for f in fix])
    dur = np.asarray([f[2] for f in fix])
    near = np.hypot(*(yx[:, None] - yx[None]).transpose(2, 0, 1)) < radius
    score = near @ dur
    others = score[~near[at]]
    need = margin * (others.max() if others.size else 0.0) - score[at]
    if need <= 0:
      return fix
    y, x = fix[at][:2]
    fix.insert(at + 1, (y + rng.normal(0, 0.1 * radius),
                        x + rng.normal(0, 0.1 * radius),
                        float(np.clip(need, 0.3, 0.6))))


def gaze_samples(rng: np.random.Generator, fix: list, size_hw: tuple[int, int],
                 t0: float) -> tuple[np.ndarray, list[dict]]:
  """60 Hz samples of a reading of the planned fixations `fix`.

  Returns samples (N, 6): time, x, y, fixation id, time in fixation, valid
  (0 during saccades), and the fixations as they came out: list of
  {start, dwell, x, y, id}. Samples are clipped into the image.
  """
  h, w = size_hw
  jit = 0.003 * max(h, w)
  clip = lambda x, y: (np.clip(x, 0, w - 1), np.clip(y, 0, h - 1))
  rows, fixes = [], []
  t, prev = t0, None
  for i, (fy, fx, d) in enumerate(fix):
    fx, fy = clip(fx, fy)
    if prev is not None:  # saccade: 2-3 samples on the way
      ns = int(rng.integers(2, 4))
      for a in np.arange(1, ns + 1) / (ns + 1):
        x, y = clip(prev[0] + a * (fx - prev[0]), prev[1] + a * (fy - prev[1]))
        rows.append((t, x, y, i, 0.0, 0))
        t += 1 / HZ
    n = max(6, int(round(d * HZ)))
    drift = np.cumsum(rng.normal(0, 0.3 * jit, (n, 2)), axis=0)
    xs, ys = clip(fx + drift[:, 0] + rng.normal(0, jit, n),
                  fy + drift[:, 1] + rng.normal(0, jit, n))
    start = t
    for k in range(n):
      rows.append((t, xs[k], ys[k], i + 1, k / HZ, 1))
      t += 1 / HZ
    fixes.append(dict(start=start, dwell=n / HZ, x=float(xs.mean()),
                      y=float(ys.mean()), id=i + 1))
    prev = (fx, fy)
  return np.asarray(rows, np.float64), fixes


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
  session = 100 + i
  fix = plan_fixations(rng, geom, label, info)
  samples, fixes = gaze_samples(rng, fix, hw, float(rng.uniform(0.2, 1.0)))
  gaze_rows, fix_rows, boxes = [], [], []
  for k, (t, x, y, fid, fdur, valid) in enumerate(samples):
    sx, sy = _screen(x, y, hw)
    gaze_rows.append((dicom_id, k, f'{t:.5f}', int(t * 1e7), f'{sx:.5f}',
                      f'{sy:.5f}', f'{t - fdur:.5f}', f'{fdur:.5f}',
                      int(fid), int(valid), f'{sx:.5f}', f'{sy:.5f}',
                      int(valid), f'{rng.uniform(3, 5):.3f}',
                      f'{rng.uniform(3, 5):.3f}', f'{x:.1f}', f'{y:.1f}',
                      session))
  for k, f in enumerate(fixes):
    sx, sy = _screen(f['x'], f['y'], hw)
    fix_rows.append((dicom_id, k, f'{f["start"]:.5f}',
                     int(f['start'] * 1e7), f'{sx:.5f}', f'{sy:.5f}',
                     f'{f["start"]:.5f}', f'{f["dwell"]:.5f}', f['id'], 1,
                     f'{sx:.5f}', f'{sy:.5f}', 1, f'{rng.uniform(3, 5):.3f}',
                     f'{rng.uniform(3, 5):.3f}', f'{f["x"]:.1f}',
                     f'{f["y"]:.1f}', session))
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
  photometric handling. The drawing (pure Python, ~0.1 s a study) is split
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
