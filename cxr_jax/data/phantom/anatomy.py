"""Synthetic frontal (PA) chest radiograph anatomy, shared by all phantoms.

`draw_thorax` paints a plausible chest X-ray with patient-to-patient variation
and returns the masks that the dataset phantoms build their findings on.
Conventions: brighter = denser; radiological orientation (the patient's
right lung is on the image's left). The image is a *linear* sum of layers in
image units (`offset + gain * density + noise`, then clipped to [0, 1]), so a
finding can remove a layer exactly, e.g. `img - geom['lung_markings'] * m`
takes the vessel markings out of a pneumothorax region `m`.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.draw import line_aa


def _smoothstep(x: np.ndarray) -> np.ndarray:
  x = np.clip(x, 0.0, 1.0)
  return x * x * (3.0 - 2.0 * x)


def _band(dist: np.ndarray, half: float, soft: float) -> np.ndarray:
  """1 inside |dist| < half, fading to 0 over `soft` (antialiased edge)."""
  return np.clip((half - np.abs(dist)) / soft + 0.5, 0.0, 1.0)


def _sample_params(rng: np.random.Generator, heart_scale: float) -> dict:
  """Per-patient geometry in normalised image coordinates (x, y in [0, 1])."""
  top = 0.09 + rng.uniform(-0.02, 0.03)
  dome_r = 0.67 + rng.uniform(-0.05, 0.05)  # patient right = image left
  return dict(
      cx=0.5 + rng.normal(0.0, 0.012),
      top=top,
      dome={-1: dome_r, 1: dome_r + rng.uniform(0.0, 0.04)},
      lat={s: 0.37 + rng.uniform(-0.03, 0.025) for s in (-1, 1)},
      med=0.045 + rng.uniform(-0.01, 0.01),
      apex_u=0.17 + rng.uniform(-0.02, 0.02),
      dome_k=0.09 + rng.uniform(-0.02, 0.03),
      heart_c=(rng.uniform(-0.04, 0.0), 0.045 + rng.uniform(-0.015, 0.02)),
      heart_r=(0.125 * heart_scale * rng.uniform(0.9, 1.1),
               0.165 * heart_scale * rng.uniform(0.9, 1.1)),
      heart_angle=rng.uniform(-0.45, -0.15),
      body_w=0.45 + rng.uniform(-0.04, 0.04),
      rib_start=top - 0.02 + rng.uniform(-0.01, 0.01),
      rib_sp=0.052 + rng.uniform(-0.006, 0.006),
      gain=rng.uniform(0.9, 1.1),
      offset=rng.uniform(0.04, 0.1),
      tissue=rng.uniform(0.45, 0.6),
      air=rng.uniform(0.36, 0.44),
      bubble=rng.uniform() < 0.6,
  )


def _lung(u: np.ndarray, yy: np.ndarray, p: dict, s: int) -> np.ndarray:
  """Boolean lung field of side s (-1 = image left); heart not removed."""
  top, dome, lat = p['top'], p['dome'][s], p['lat'][s]
  med, apex = p['med'], p['apex_u']
  t = (yy - top) / (dome - top)
  rise_lat = 1.0 - (1.0 - np.clip(t / 0.55, 0.0, 1.0)) ** 2.2
  rise_med = 1.0 - (1.0 - np.clip(t / 0.25, 0.0, 1.0)) ** 2.0
  u_lat = apex + (lat - apex) * np.sqrt(rise_lat)
  u_med = apex - (apex - med) * np.sqrt(rise_med)
  dome_y = dome - p['dome_k'] * (1.0 - ((u - 0.2) / (lat - med)) ** 2 * 4.0)
  dome_y = np.minimum(dome_y, dome + 0.06)
  return (t >= 0.0) & (u > u_med) & (u < u_lat) & (yy < dome_y)


def _below_lungs(lung_any: np.ndarray, yy: np.ndarray) -> np.ndarray:
  """Region below the lung bases (abdomen, float weight), bridged medially."""
  h, w = lung_any.shape
  cols = np.nonzero(lung_any.any(axis=0))[0]
  if cols.size == 0:
    return np.zeros_like(lung_any)
  bottom = h - 1 - np.argmax(lung_any[::-1, cols], axis=0)
  line = np.interp(np.arange(w), cols, bottom.astype(np.float64))
  rows = np.arange(h)[:, None]
  c = np.arange(w)
  taper = 0.04 * w
  fade = _smoothstep(np.minimum(c - cols[0], cols[-1] - c) / taper + 1.0)
  return (rows > line[None, :]) * fade[None, :].astype(np.float32)


def _ribs(u: np.ndarray, yy: np.ndarray, p: dict, lat: np.ndarray, px: float
          ) -> np.ndarray:
  """Posterior (arched, bright) and anterior (descending, faint) rib shadows."""
  sp, start = p['rib_sp'], p['rib_start']
  w = yy - (-0.15 * u + 1.1 * u * u + 2.5 * np.maximum(u - 0.24, 0.0) ** 2)
  q = 0.06 * sp
  disc = np.maximum(sp * sp + 4.0 * q * (w - start), 0.0)
  k = (-sp + np.sqrt(disc)) / (2.0 * q)  # rib number (spacing grows)
  frac = k - np.floor(k)
  post = _band(frac - 0.5, 0.22, px / sp) * (k >= 0) * (k < 11)
  cortex = _band(np.abs(frac - 0.5) - 0.2, 0.03, px / sp)
  span = _smoothstep((u - 0.02) / 0.04) * _smoothstep((lat + 0.035 - u) / 0.03)
  post = (0.8 * post + 0.3 * cortex * post) * span
  wa = yy - 0.32 * (lat + 0.03 - u)
  ka = (wa - start - 0.04) / (1.6 * sp)
  fa = ka - np.floor(ka)
  ant = _band(fa - 0.5, 0.14, px / (1.6 * sp)) * (ka >= 0) * (ka < 6)
  ant = ant * _smoothstep((u - 0.1) / 0.08) * span
  return post + 0.45 * ant


def _vessels(rng: np.random.Generator, shape: tuple[int, int],
             hila: list[tuple[float, float, int]]) -> np.ndarray:
  """Branching vessel trees from each hilum, rasterised, blurred by calibre."""
  h, w = shape
  idx: list[list[np.ndarray]] = [[], [], []]
  wts: list[list[np.ndarray]] = [[], [], []]
  scale = float(min(h, w))
  for hy, hx, s in hila:
    stack = []
    for ang in np.linspace(-1.9, 1.7, 8) + rng.normal(0, 0.12, 8):
      # angle 0 = lateral, negative = towards the apex
      y0, x0 = hy + rng.normal(0, 0.015), hx + rng.normal(0, 0.008)
      stack.append((y0, x0, ang, 0.0065, 0.032))
    while stack:
      y, x, ang, width, length = stack.pop()
      ang += rng.normal(0.0, 0.22)
      y1 = y + np.sin(ang) * length
      x1 = x + s * np.cos(ang) * length
      r0, c0, r1, c1 = (int(y * h), int(x * w), int(y1 * h), int(x1 * w))
      if not (0 <= r1 < h and 0 <= c1 < w):
        continue
      rr, cc, val = line_aa(r0, c0, r1, c1)
      ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
      layer = 0 if width > 0.004 else (1 if width > 0.0022 else 2)
      idx[layer].append(rr[ok] * w + cc[ok])
      wts[layer].append(val[ok] * width * 150)
      if width < 0.0014:
        continue
      n_child = 2 if rng.uniform() < 0.7 else 1
      for j in range(n_child):
        da = 0.0 if n_child == 1 else rng.uniform(0.2, 0.5) * (1 - 2 * j)
        stack.append((y1, x1, ang + da, width * rng.uniform(0.72, 0.84),
                      length * rng.uniform(0.8, 0.97)))
  out = np.zeros(shape, np.float32)
  for i, sigma in enumerate((0.004, 0.0025, 0.0015)):
    if not idx[i]:
      continue
    layer = np.bincount(np.concatenate(idx[i]), np.concatenate(wts[i]),
                        minlength=h * w).reshape(h, w).astype(np.float32)
    out += ndimage.gaussian_filter(layer, max(sigma * scale, 0.5))
  return out


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
  """(H, W) float32 pixel-centre coordinates y, x in [0, 1]."""
  yy = ((np.arange(h, dtype=np.float32) + 0.5) / h)[:, None]
  xx = ((np.arange(w, dtype=np.float32) + 0.5) / w)[None, :]
  return np.broadcast_arrays(yy, xx)


def _body(xx: np.ndarray, yy: np.ndarray, dx: np.ndarray, p: dict
          ) -> tuple[np.ndarray, np.ndarray]:
  """Body outline (neck, shoulders, torso) and its density, which follows
  the path length through it, plus the humeral heads and upper arms."""
  half = 0.13 + (p['body_w'] + 0.03 - 0.13) * _smoothstep((yy + 0.02) / 0.14)
  body_prof = np.sqrt(np.clip(1.0 - (dx / half) ** 2, 0.0, 1.0))
  density = p['tissue'] * body_prof ** 0.6
  for s in (-1, 1):  # at the top corners
    arm = np.clip(1.0 - ((xx - p['cx'] - s * (p['body_w'] + 0.02)) / 0.06) ** 2
                  - ((yy - 0.13) / 0.08) ** 2, 0.0, 1.0)
    density += 0.15 * np.sqrt(arm)
  return body_prof > 0, density


def _heart(xx: np.ndarray, yy: np.ndarray, p: dict) -> np.ndarray:
  """Heart: a rotated ellipse on the patient's left (image right)."""
  hcx = p['cx'] + p['heart_c'][1]
  hcy = p['dome'][1] - 0.075 + p['heart_c'][0] * 0.5
  ca, sa = np.cos(p['heart_angle']), np.sin(p['heart_angle'])
  hu = ((xx - hcx) * ca + (yy - hcy) * sa) / p['heart_r'][1]
  hv = (-(xx - hcx) * sa + (yy - hcy) * ca) / p['heart_r'][0]
  heart_r2 = hu * hu + hv * hv
  return (heart_r2 < 1.0) & (yy < p['dome'][1] + 0.02)


def _lungs(dx: np.ndarray, yy: np.ndarray, p: dict, heart: np.ndarray,
           sigma: float, px: float
           ) -> tuple[dict[int, np.ndarray], np.ndarray, np.ndarray]:
  """Lung fields by side, their soft (blurred) union, and the darkening by
  lung air (thinner at the lung edges and behind the breasts)."""
  lungs = {}
  for s in (-1, 1):
    lungs[s] = _lung(dx * s, yy, p, s) & ~heart
  lung_any = lungs[-1] | lungs[1]
  lung_soft = ndimage.gaussian_filter(lung_any.astype(np.float32), sigma)
  depth = ndimage.distance_transform_edt(lung_any) * px
  air = p['air'] * lung_soft * (0.72 + 0.28 * _smoothstep(depth / 0.08))
  air *= 1.0 - 0.25 * _smoothstep((yy - p['dome'][-1] + 0.2) / 0.2)  # breasts
  return lungs, lung_soft, air


def _mediastinum(dx: np.ndarray, yy: np.ndarray, p: dict, heart: np.ndarray,
                 lung_any: np.ndarray, sigma: float
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Mediastinum mask (between the lungs above the diaphragm, outside heart
  and lungs), the density of the heart/mediastinum/abdomen silhouette, and
  that of the aortic knob."""
  t = (yy - p['top']) / (p['dome'][1] - p['top'])
  knob = 0.035 * np.exp(-((yy - p['top'] - 0.17) / 0.035) ** 2) * (dx > 0)
  med_half = 0.05 + 0.03 * np.clip(t, 0, 1) + knob
  mediastinum = ((np.abs(dx) < med_half) & (t > -0.15) & (yy < p['dome'][1])
                 & ~heart & ~lung_any)
  abdomen = _below_lungs(lung_any, yy)
  silhouette = np.maximum((heart | mediastinum) * (1.0 - abdomen), abdomen)
  return (mediastinum,
          0.1 * ndimage.gaussian_filter(silhouette.astype(np.float32),
                                        2 * sigma),
          0.05 * knob / 0.035)


def _airways_and_spine(dx: np.ndarray, yy: np.ndarray, p: dict, px: float
                       ) -> tuple[np.ndarray, np.ndarray]:
  """Densities removed by the trachea and main bronchi (air) and added by
  the spine with its vertebrae."""
  carina = p['top'] + 0.2
  trach = _band(dx, 0.017, px) * (yy < carina) * _smoothstep((yy) / 0.05)
  for s in (-1, 1):
    bu = dx * s - (yy - carina) * 0.9
    trach = np.maximum(trach, _band(bu, 0.011, px) * (yy > carina)
                       * (yy < carina + 0.06))
  vert = 0.5 + 0.5 * np.cos(2 * np.pi * (yy - p['top']) / 0.045)
  spine = _band(dx, 0.04, px) * (0.7 + 0.3 * _smoothstep((vert - 0.2) / 0.2))
  return (0.12 * trach,
          0.06 * spine + 0.03 * _band(np.abs(dx) - 0.04, 0.004, px))


def _add_chest_wall(density: np.ndarray, dx: np.ndarray, yy: np.ndarray,
                    p: dict, px: float) -> None:
  """Adds ribs and clavicles (over the lungs and everything else) to
  `density` in place."""
  for s in (-1, 1):
    u = dx * s
    side = (u > 0).astype(np.float32)
    lat = p['lat'][s]
    ribs = _ribs(u, yy, p, lat, px) * side
    ribs *= _smoothstep((p['dome'][s] + 0.12 - yy) / 0.06)
    density += 0.075 * ribs
    y_st, y_ac = p['top'] + 0.1, p['top'] + 0.03
    tt = (u - 0.05) / 0.36
    yc = y_st + (y_ac - y_st) * tt + 0.015 * np.sin(2 * np.pi * tt)
    clav = _band(yy - yc, 0.012, px) * (tt > 0) * (tt < 1) * side
    density += 0.14 * clav


def _add_hila(density: np.ndarray, rng: np.random.Generator, xx: np.ndarray,
              yy: np.ndarray, p: dict, hila_scale: float
              ) -> list[tuple[float, float, int]]:
  """Adds both hila to `density` in place; returns their (y, x, side) in
  normalised coordinates."""
  hila_pts = []
  for s in (-1, 1):  # patient right, then left
    hy = p['top'] + 0.3 * (p['dome'][s] - p['top']) + rng.uniform(-0.02, 0.02)
    hx = p['cx'] + s * (0.1 + rng.uniform(-0.01, 0.01)
                        + (0.02 if s > 0 else 0.0))
    hila_pts.append((hy, hx, s))
    blob = np.exp(-(((yy - hy) / 0.05) ** 2 + ((xx - hx) / 0.03) ** 2))
    density += 0.09 * hila_scale * blob
  return hila_pts


def _markings(rng: np.random.Generator, shape: tuple[int, int],
              hila_pts: list[tuple[float, float, int]],
              lung_soft: np.ndarray, lung_any: np.ndarray) -> np.ndarray:
  """Vessel trees from the hila plus fine texture, inside the lungs only."""
  h, w = shape
  vessels = _vessels(rng, (h, w), hila_pts)
  fine = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32),
                                 max(0.7, 0.0025 * min(h, w)))
  fine *= 0.5 / max(float(fine.std()), 1e-6)
  return (0.09 * vessels / max(float(np.percentile(vessels, 99.5)), 1e-6)
          + 0.012 * fine) * lung_soft * lung_any


def _bubble(xx: np.ndarray, yy: np.ndarray, p: dict) -> np.ndarray:
  """Density removed by the gastric bubble under the left dome."""
  gy, gx = p['dome'][1] + 0.06, p['cx'] + 0.17
  bubble = np.clip(1 - ((xx - gx) / 0.06) ** 2 - ((yy - gy) / 0.035) ** 2,
                   0, 1)
  return 0.15 * np.sqrt(bubble) * (yy > p['dome'][1] + 0.03)


def draw_thorax(rng: np.random.Generator, size_hw: tuple[int, int], *,
                heart_scale: float = 1.0, hila_scale: float = 1.0,
                noise_std: float | None = None) -> tuple[np.ndarray, dict]:
  """Draws one synthetic PA chest radiograph.

  Args:
    rng: source of all patient-to-patient variation.
    size_hw: output (H, W); plausible from 128 to 1024+ px.
    heart_scale: multiplies the heart radii (e.g. 1.3 for cardiomegaly).
    hila_scale: multiplies the hilar density (e.g. 1.6 for congestion).
    noise_std: quantum-noise std in image units; None = random 0.004..0.015.

  Returns:
    image: float32 (H, W) in [0, 1], brighter = denser.
    geom: dict with boolean (H, W) masks 'left_lung', 'right_lung' (the
      patient's sides; the right lung is on the image's left), 'heart',
      'mediastinum', 'body'; float32 layers in image units 'lung_markings'
      (vessel texture, only inside the lungs), 'noise' and 'lung_air' (the
      darkening by lung air, thinner at the lung edges); 'air_peak' (the
      darkening of a full-depth air column); 'heart_bbox'
      (y0, x0, y1, x1) px; 'hila' {'left': (y, x), 'right': (y, x)} px;
      'midline_x' px; 'diaphragm_y' {'left', 'right'} px at the dome top;
      'gain' (image units per density unit; a layer of density d adds gain*d).
  """
  h, w = int(size_hw[0]), int(size_hw[1])
  if h < 16 or w < 16:
    raise ValueError(f'size_hw must be at least 16x16, got {size_hw}')
  p = _sample_params(rng, heart_scale)
  px = 1.0 / min(h, w)
  yy, xx = _grid(h, w)
  dx = xx - p['cx']
  body, density = _body(xx, yy, dx, p)
  heart = _heart(xx, yy, p)
  sigma = max(1.0, 0.004 * min(h, w))
  lungs, lung_soft, air = _lungs(dx, yy, p, heart, sigma, px)
  lung_any = lungs[-1] | lungs[1]
  density -= air
  mediastinum, silhouette, knob = _mediastinum(dx, yy, p, heart, lung_any,
                                               sigma)
  density += silhouette
  density += knob
  airways, spine = _airways_and_spine(dx, yy, p, px)
  density -= airways
  density += spine
  _add_chest_wall(density, dx, yy, p, px)
  hila_pts = _add_hila(density, rng, xx, yy, p, hila_scale)
  markings = _markings(rng, (h, w), hila_pts, lung_soft, lung_any)
  if p['bubble']:
    density -= _bubble(xx, yy, p)
  gain = p['gain']
  markings_img = (gain * markings).astype(np.float32)
  std = rng.uniform(0.004, 0.015) if noise_std is None else float(noise_std)
  noise = (std * rng.standard_normal((h, w))).astype(np.float32)
  image = p['offset'] + gain * density + markings_img + noise
  image = np.clip(image, 0.0, 1.0).astype(np.float32)

  masks = dict(right_lung=lungs[-1], left_lung=lungs[1], heart=heart,
               mediastinum=mediastinum, body=body)
  return image, _geometry(masks, p, hila_pts, markings_img, noise,
                          (gain * air).astype(np.float32), (h, w))


def _geometry(masks: dict[str, np.ndarray], p: dict,
              hila_pts: list[tuple[float, float, int]],
              markings_img: np.ndarray, noise: np.ndarray,
              lung_air: np.ndarray, shape: tuple[int, int]) -> dict:
  """The `geom` dict of `draw_thorax` (its docstring lists the keys)."""
  h, w = shape
  ys, xs = np.nonzero(masks['heart'])
  bbox = ((int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1)
          if ys.size else (0, 0, 0, 0))
  hila = {name: (hy * h, hx * w) for (hy, hx, _), name in
          zip(hila_pts, ('right', 'left'))}
  return dict(
      masks, lung_markings=markings_img, noise=noise, lung_air=lung_air,
      air_peak=float(p['gain'] * p['air']), heart_bbox=bbox, hila=hila,
      midline_x=p['cx'] * w,
      diaphragm_y={'right': p['dome'][-1] * h, 'left': p['dome'][1] * h},
      gain=float(p['gain']))
