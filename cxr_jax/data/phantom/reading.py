"""A simulated radiologist's reading of a phantom radiograph: fixations and
their 60 Hz gaze samples, for the eye-gaze phantom (`phantom.gaze`).

A radiologist-like search pattern (sweeps down the image-left lung, then the
image-right lung, the heart and hila), made of fixations of 100-600 ms with
small jitter and drift, joined by 2-3-sample saccades. Findings draw more
and longer fixations: the opacity in pneumonia; in CHF the heart border and
both costophrenic regions (where effusions and Kerley lines are looked for).
Each reading has one "key" dwell (the longest fixation, 0.7-1.2 s, with
revisits so that most dwell time lies around it): on the finding, or on a
spot that drew attention in normals (and in missed subtle pneumonias).
"""
from __future__ import annotations

import numpy as np

HZ = 60.0  # sampling rate of the GP3 tracker of the dataset
# Neighbourhood (fraction of the long side) in which the key dwell dominates.
KEY_RADIUS = 0.06


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
  finding (heart, border, a hilum or any lung point). The key (longest)
  dwell is on one spot, so gaze tells where the reader looked hard, which
  helps but does not give the class away.
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
