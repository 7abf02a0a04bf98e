"""The eye-gaze chest X-ray dataset (egd-cxr, Karargyris et al. 2021).

1,083 MIMIC-CXR frontal radiographs, each read by a radiologist whose gaze
was recorded at 60 Hz; classes Normal / CHF / pneumonia. Files read here:

- `master_sheet.csv`: `dicom_id`, `path` (relative to the MIMIC-CXR root,
  e.g. `files/p10/p10000032/s50414267/<dicom_id>.dcm`), `patient_id`,
  one-hot `Normal`, `CHF`, `pneumonia` (and paddings, reports, ... unused).
- `eye_gaze.csv` (raw samples) and `fixations.csv`: `DICOM_ID`,
  `Time (in secs)`, `X_ORIGINAL`, `Y_ORIGINAL` (pixels of the original
  DICOM) are used, and `FPOGD` (fixation duration, s) of `fixations.csv` when
  present (the 'duration' recipe; without it the duration falls back to the
  gap between fixation starts); `SESSION_ID`, `FPOGX`, ... are not needed.
  Gaze that left the image has negative or too large `X_ORIGINAL` /
  `Y_ORIGINAL` in the real files: such points are dropped by default
  (`gaze_off_image`), their number logged per study.

`build(cfg)` reads each image, pads it (zeros, centred) to the target aspect,
resizes and min-max scales it per image; the gaze map is computed at native
resolution by a recipe of `cxr_jax.data.gaze` and goes through the same
pad/resize; fixations are mapped through the same geometry into a binary
`fixmap`. `root == ''` generates the phantom once (real on-disk formats,
`cxr_jax.data.phantom.gaze`) and reads it with the same code. The CSV
readers are in `cxr_jax.data.egd_csv`, the split rules (`data.split`) in
`cxr_jax.data.egd_splits`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np

from cxr_jax.data import cache
from cxr_jax.data import dicom
from cxr_jax.data import egd_csv
from cxr_jax.data import egd_splits
from cxr_jax.data import gaze
from cxr_jax.data import preprocess

CLASS_NAMES = egd_csv.CLASS_NAMES
SPLITS = egd_splits.SPLITS
_CACHE_VERSION = 2  # bump when the arrays' recipe changes


def default_config() -> ml_collections.ConfigDict:
  """Data config of the eye-gaze dataset (every knob a key)."""
  c = ml_collections.ConfigDict()
  c.name = 'egd'
  # Folder with master_sheet.csv, eye_gaze.csv, fixations.csv (and optional
  # bounding_boxes.csv); '' = generate and use the phantom.
  c.root = ''
  c.image_root = ''  # MIMIC-CXR root for the `path` column; '' = root.
  c.cache_dir = ''  # '' = cache.default_cache_dir()
  c.image_size = (640, 512)  # (H, W); the authors' code used (320, 256).
  c.gaze_recipe = 'authors'  # 'authors' | 'fixations' | 'duration'
  # Blur sigma in px of the ~3000-px DICOMs; 0 = the recipe's own sigma
  # (75.5 for 'authors', their 501-px OpenCV kernel; 150 for 'fixations' and
  # 'duration'). The sigma used is logged.
  c.gaze_sigma = 0.0
  # Long side (px) at which gaze_sigma is defined: the sigma used is
  # gaze_sigma * long_side / gaze_reference_px. 0 = use gaze_sigma as is
  # (the authors); -1 = auto: 0 for real data, 3000 for the phantom (whose
  # small images stand in for ~3000-px radiographs).
  c.gaze_reference_px = -1.0
  c.split = 'thesis'  # 'thesis' | 'mtunet' | 'patient'
  # Test images, a count (the thesis: 100 of the real 1,083). Taken
  # literally for the phantom too: set it to fit phantom_num (e.g. 20 of 100).
  c.num_test = 100
  # Fraction of the non-test images for validation ('thesis', 'patient'):
  # best checkpoints are picked on validation, never on test.
  c.num_val = 0.1
  c.split_seed = 0
  # Listed images that are missing: 'raise' or 'skip' (drop and log).
  # Malformed CSV rows always raise.
  c.on_error = 'raise'
  # Gaze samples / fixations outside the image (gaze that left it: the real
  # CSVs have them): 'skip' (drop; the count is logged per study, as MT-UNet
  # drops them) or 'raise'.
  c.gaze_off_image = 'skip'
  c.phantom_num = 120
  c.phantom_size = 512
  c.phantom_seed = 0
  c.num_workers = 0  # threads for reading images; 0 = os.cpu_count()
  return c


# ------------------------------------------------------------ one image


def map_points(points_xy: np.ndarray, native_hw: Sequence[int],
               pads: Sequence[int], size_hw: Sequence[int]) -> np.ndarray:
  """Maps native pixel coordinates through pad_to_aspect + resize.

  Uses skimage's resize convention (pixel centres): x' = (x + 0.5) * s - 0.5.
  """
  top, bottom, left, right = pads
  ph, pw = native_hw[0] + top + bottom, native_hw[1] + left + right
  sx, sy = size_hw[1] / pw, size_hw[0] / ph
  p = np.asarray(points_xy, np.float64).reshape(-1, 2)
  return np.stack([(p[:, 0] + left + 0.5) * sx - 0.5,
                   (p[:, 1] + top + 0.5) * sy - 0.5], axis=1)


def recipe_sigma(cfg: ml_collections.ConfigDict) -> float:
  """The blur sigma at the reference resolution: `gaze_sigma`, or the
  recipe's own sigma when `gaze_sigma` is 0."""
  return float(cfg.gaze_sigma or gaze.get_recipe(cfg.gaze_recipe).sigma)


def _sigma(cfg: ml_collections.ConfigDict, native_hw: Sequence[int],
           phantom: bool) -> float:
  """The blur sigma in native pixels for one image (see default_config)."""
  sigma = recipe_sigma(cfg)
  ref = cfg.gaze_reference_px
  if ref < 0:
    ref = gaze.REFERENCE_PX if phantom else 0
  return gaze.scaled_sigma(sigma, native_hw, ref) if ref > 0 else float(sigma)


def load_example(image_path: str, dicom_id: str, samples: Mapping | None,
                 fixations: Mapping | None, cfg: ml_collections.ConfigDict,
                 phantom: bool = False) -> dict[str, np.ndarray]:
  """Reads and preprocesses one study: image, gaze map and fixation map.

  Args:
    image_path: the image file.
    dicom_id: for messages.
    samples: this image's raw gaze ({'xy', 'time', 'line'}) or None.
    fixations: this image's fixations, or None.
    cfg: the data config.
    phantom: whether the sigma auto-scaling of the phantom applies.
  Returns:
    {'image': (H, W, 1), 'gaze': (H, W) float32, 'fixmap': (H, W) uint8,
    'dropped': int, the gaze samples and fixations that fell outside the
    image and were dropped (`cfg.gaze_off_image='skip'`)}.
  """
  size = tuple(int(s) for s in cfg.image_size)
  img = dicom.read_image(image_path)
  native = img.shape[:2]
  img, pads = preprocess.pad_to_aspect(img, size[0] / size[1])
  img = preprocess.minmax01(preprocess.resize(img, size, order=1))

  recipe = gaze.get_recipe(cfg.gaze_recipe)
  empty = dict(xy=np.zeros((0, 2)), time=np.zeros(0), line=np.zeros(0, int))
  dropped = [0]

  def on_image(points: Mapping | None, what: str) -> dict[str, np.ndarray]:
    """The points inside the image; off-image ones raise, or are dropped
    (`gaze.inside` logs their number with the DICOM_ID)."""
    points = points if points is not None else empty
    ok = gaze.inside(points['xy'], native, dicom_id=dicom_id,
                     rows=points['line'], on_error=cfg.gaze_off_image,
                     what=what)
    dropped[0] += int((~ok).sum())
    return {k: v[ok] for k, v in points.items()}

  fix = on_image(fixations, 'fixation')
  src = (on_image(samples, 'gaze sample') if recipe.source == 'eye_gaze'
         else fix)
  weights = None
  if recipe.weighting == 'duration':
    weights = gaze.fixation_durations(src['time'], src.get('duration'))
  gmap = gaze.gaze_map(cfg.gaze_recipe, src['xy'], weights, native,
                       sigma_px=_sigma(cfg, native, phantom),
                       on_error='raise', dicom_id=dicom_id,
                       rows=src['line'])
  gmap, _ = preprocess.pad_to_aspect(gmap, size[0] / size[1])
  gmap = np.clip(preprocess.resize(gmap, size, order=1), 0, None)
  peak = float(gmap.max())
  gmap = (gmap / peak if peak > 0 else gmap).astype(np.float32)

  fixmap = gaze.fixation_map(map_points(fix['xy'], native, pads, size), size)
  return dict(image=img[..., None].astype(np.float32), gaze=gmap,
              fixmap=fixmap, dropped=dropped[0])


# ------------------------------------------------------------------- build


def _resolve_image(root: str, rel: str) -> str | None:
  """The image file for `rel`; a `.dcm` may also be found as MIMIC-CXR-JPG."""
  path = os.path.join(root, rel)
  if os.path.isfile(path):
    return path
  stem, ext = os.path.splitext(path)
  if ext.lower() == '.dcm' and os.path.isfile(stem + '.jpg'):
    return stem + '.jpg'
  return None


def _phantom_root(cfg: ml_collections.ConfigDict, cache_dir: str) -> str:
  """Generates the phantom once under cache_dir; returns its folder."""
  from cxr_jax.data.phantom import gaze as phantom_gaze  # pylint: disable=g-import-not-at-top
  name = (f'phantom-egd-n{cfg.phantom_num}-s{cfg.phantom_size}'
          f'-seed{cfg.phantom_seed}-p{phantom_gaze.VERSION}-v{_CACHE_VERSION}')
  root = os.path.join(cache_dir, name)
  if os.path.isfile(os.path.join(root, 'master_sheet.csv')):
    return root
  cache.build_dir_atomically(
      root, lambda tmp: phantom_gaze.write_gaze(
          tmp, int(cfg.phantom_num), int(cfg.phantom_seed),
          int(cfg.phantom_size)),
      done_file='master_sheet.csv')
  return root


def _file_stamp(path: str) -> list[Any]:
  """(size, mtime) of a file for the cache key; [] if absent."""
  if not os.path.isfile(path):
    return []
  st = os.stat(path)
  return [st.st_size, int(st.st_mtime)]


def _check_config(cfg: ml_collections.ConfigDict) -> None:
  """Fails early, naming the config key, on values build cannot use."""
  gaze.get_recipe(cfg.gaze_recipe)
  if cfg.split not in ('thesis', 'mtunet', 'patient'):
    raise ValueError(f"split must be 'thesis', 'mtunet' or 'patient', got "
                     f'{cfg.split!r}')
  if cfg.gaze_sigma < 0:
    raise ValueError(f'gaze_sigma must be >= 0, got {cfg.gaze_sigma}')
  recipe = gaze.get_recipe(cfg.gaze_recipe)
  logging.info(
      'Gaze maps: recipe %r, sigma %s px at the reference resolution (%s), '
      'border %r.', cfg.gaze_recipe, recipe_sigma(cfg),
      'the recipe default' if not cfg.gaze_sigma else
      f'data.gaze_sigma; the recipe default is {recipe.sigma}', recipe.mode)
  for key in ('on_error', 'gaze_off_image'):
    if cfg[key] not in ('raise', 'skip'):
      raise ValueError(f"data.{key} must be 'raise' or 'skip', got "
                       f'{cfg[key]!r}')
  if len(cfg.image_size) != 2 or min(cfg.image_size) < 1:
    raise ValueError(f'image_size must be (H, W), got {cfg.image_size}')


def _find_images(master: Mapping[str, Any], root: str,
                 cfg: ml_collections.ConfigDict
                 ) -> tuple[np.ndarray, list[str]]:
  """(positions in the master sheet, image files) of the studies whose image
  exists; a missing one raises or, with `on_error='skip'`, is logged."""
  image_root = cfg.image_root or root
  keep, paths = [], []
  for i, (d, rel) in enumerate(zip(master['dicom_id'], master['path'])):
    path = _resolve_image(image_root, rel)
    if path is None:
      msg = (f'image {os.path.join(image_root, rel)} of dicom_id {d!r} '
             f'(master_sheet.csv line {master["line"][i]}) not found')
      if cfg.on_error == 'raise':
        raise FileNotFoundError(msg + " (on_error='skip' drops it)")
      logging.warning('%s; skipped.', msg)
      continue
    keep.append(i)
    paths.append(path)
  if not keep:
    raise FileNotFoundError(f'no image of {root}/master_sheet.csv was found '
                            f'under {image_root}')
  return np.asarray(keep, np.int64), paths


def _allocate(parts: Mapping[str, np.ndarray], labels: np.ndarray,
              keep: np.ndarray, size_hw: Sequence[int]
              ) -> tuple[dict[str, dict[str, np.ndarray]],
                         dict[int, tuple[str, int]]]:
  """Zero split arrays to fill as images are read (the real study at 640x512
  is ~3 GB: no second copy), and position in `keep` -> (split, row)."""
  h, w = (int(v) for v in size_hw)
  out, where = {}, {}
  for s in SPLITS:
    n = parts[s].size
    out[s] = dict(image=np.zeros((n, h, w, 1), np.float32),
                  gaze=np.zeros((n, h, w), np.float32),
                  fixmap=np.zeros((n, h, w), np.uint8),
                  label=labels[parts[s]].astype(np.int32),
                  index=keep[parts[s]].astype(np.int32))
    where.update({int(j): (s, r) for r, j in enumerate(parts[s])})
  return out, where


def _log_gaze_summary(done: Sequence[tuple[str, int, bool]],
                      source: str) -> None:
  """Warns about dropped off-image points and studies without gaze."""
  n_dropped = [n for _, n, _ in done if n]
  if n_dropped:
    logging.warning('Dropped %d gaze points off the image in %d of %d '
                    'studies (per-study counts logged above).',
                    sum(n_dropped), len(n_dropped), len(done))
  no_gaze = [d for d, _, has in done if not has]
  if no_gaze:
    logging.warning(
        '%d studies have no gaze in %s inside the image, so an all-zero gaze '
        'map (saliency metrics are NaN for them): dicom_id %s', len(no_gaze),
        source, no_gaze)


def build_arrays(root: str, cfg: ml_collections.ConfigDict,
                 phantom: bool = False) -> dict[str, dict[str, np.ndarray]]:
  """Reads the study at `root` into split arrays (no caching)."""
  master = egd_csv.read_master(os.path.join(root, 'master_sheet.csv'))
  recipe = gaze.get_recipe(cfg.gaze_recipe)
  samples = (egd_csv.read_gaze_csv(os.path.join(root, 'eye_gaze.csv'))
             if recipe.source == 'eye_gaze' else {})
  fixations = egd_csv.read_gaze_csv(os.path.join(root, 'fixations.csv'),
                                    durations=recipe.weighting == 'duration')
  keep, paths = _find_images(master, root, cfg)
  labels = master['label'][keep]
  pids = [master['patient_id'][i] for i in keep]
  parts = egd_splits.split_indices(labels, pids, cfg)
  out, where = _allocate(parts, labels, keep, cfg.image_size)

  def one(j: int) -> tuple[str, int, bool]:
    d = master['dicom_id'][keep[j]]
    ex = load_example(paths[j], d, samples.get(d), fixations.get(d), cfg,
                      phantom)
    s, r = where[j]
    for k in ('image', 'gaze', 'fixmap'):
      out[s][k][r] = ex[k]
    return d, ex['dropped'], bool(ex['gaze'].any())

  workers = cfg.num_workers or os.cpu_count() or 1
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    done = list(pool.map(one, range(len(keep))))
  _log_gaze_summary(done, f'{recipe.source}.csv')
  return out


def build(cfg: ml_collections.ConfigDict) -> dict[str, dict[str, np.ndarray]]:
  """{'train', 'val', 'test'} -> {'image' (N,H,W,1) float32 [0,1], 'gaze'
  (N,H,W) float32 max 1, 'fixmap' (N,H,W) uint8, 'label' (N,) int32,
  'index' (N,) int32 = row of master_sheet.csv}, cached."""
  _check_config(cfg)
  cache_dir = cfg.cache_dir or cache.default_cache_dir()
  phantom = not cfg.root
  root = _phantom_root(cfg, cache_dir) if phantom else cfg.root
  key = dict(version=_CACHE_VERSION, config=cfg.to_dict(),
             root=os.path.abspath(root),
             stamps=[_file_stamp(os.path.join(root, f)) for f in
                     ('master_sheet.csv', 'eye_gaze.csv', 'fixations.csv')])
  key['config'].pop('cache_dir', None)
  key['config'].pop('num_workers', None)
  return cache.cached('egd', key, lambda: build_arrays(root, cfg, phantom),
                      cache_dir)
