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
`cxr_jax.data.phantom.gaze`) and reads it with the same code. The parts:
`egd_csv` (the CSV readers), `egd_example` (one study), `egd_splits` (the
split rules, `data.split`) and `egd_report` (what the build leaves out,
logged with counts and example ids).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
from typing import Any, Mapping, NamedTuple, Sequence

import ml_collections
import numpy as np

from cxr_jax.data import cache
from cxr_jax.data import egd_csv
from cxr_jax.data import egd_example
from cxr_jax.data import egd_report
from cxr_jax.data import egd_splits
from cxr_jax.data import gaze
from cxr_jax.data import preprocess
from cxr_jax.registry import check_choice

CLASS_NAMES = egd_csv.CLASS_NAMES
SPLITS = egd_splits.SPLITS
# The per-image preprocessing of `build`, for images outside the dataset
# (`cxr_jax.predict` applies a finished run's own).
preprocess_image = egd_example.preprocess_image
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
  # Listed images that are missing or cannot be used (unreadable, blank):
  # 'raise' or 'skip' (drop and log). Malformed CSV rows always raise.
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


# ------------------------------------------------------------------- build


def _any_case(path: str) -> str | None:
  """The file in `path`'s folder whose name equals its name up to letter
  case (e.g. `X.DCM` for `x.dcm`), if exactly one does."""
  folder, name = os.path.split(path)
  if not os.path.isdir(folder):
    return None
  found = [n for n in os.listdir(folder) if n.lower() == name.lower()
           and os.path.isfile(os.path.join(folder, n))]
  return os.path.join(folder, found[0]) if len(found) == 1 else None


def _resolve_image(root: str, rel: str) -> str | None:
  """The image file for `rel`; a `.dcm` may also be found as MIMIC-CXR-JPG,
  and either in another letter case (`.DCM`)."""
  path = os.path.join(root, rel)
  stem, ext = os.path.splitext(path)
  candidates = [path] + ([stem + '.jpg'] if ext.lower() == '.dcm' else [])
  for c in candidates:
    if os.path.isfile(c):
      return c
  for c in candidates:
    found = _any_case(c)
    if found:
      return found
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
  check_choice(cfg.gaze_recipe, sorted(gaze.RECIPES), 'data.gaze_recipe')
  recipe = gaze.get_recipe(cfg.gaze_recipe)
  check_choice(cfg.split, ('thesis', 'mtunet', 'patient'), 'data.split')
  if cfg.gaze_sigma < 0:
    raise ValueError(f'data.gaze_sigma must be >= 0, got {cfg.gaze_sigma}')
  for key in ('on_error', 'gaze_off_image'):
    check_choice(cfg[key], ('raise', 'skip'), f'data.{key}')
  preprocess.check_size(cfg.image_size, 'data.image_size')
  logging.info(
      'Gaze maps: recipe %r, sigma %s px at the reference resolution (%s), '
      'border %r.', cfg.gaze_recipe, egd_example.recipe_sigma(cfg),
      'the recipe default' if not cfg.gaze_sigma else
      f'data.gaze_sigma; the recipe default is {recipe.sigma}', recipe.mode)


class _Study(NamedTuple):
  """The master sheet and the studies whose image was found."""
  master: dict[str, Any]
  keep: np.ndarray  # (N,) int64 positions in the master sheet
  paths: list[str]  # (N,) image files


def _find_images(root: str, cfg: ml_collections.ConfigDict) -> _Study:
  """Reads the master sheet and finds each study's image; a missing one
  raises or, with `on_error='skip'`, is logged."""
  master = egd_csv.read_master(os.path.join(root, 'master_sheet.csv'))
  image_root = cfg.image_root or root
  keep, paths = [], []
  for i, (d, rel) in enumerate(zip(master['dicom_id'], master['path'])):
    path = _resolve_image(image_root, rel)
    if path is None:
      msg = (f'image {os.path.join(image_root, rel)} of dicom_id {d!r} '
             f'(master_sheet.csv line {master["line"][i]}) not found')
      if cfg.on_error == 'raise':
        raise FileNotFoundError(msg + " (data.on_error='skip' drops it)")
      logging.warning('%s; skipped.', msg)
      continue
    keep.append(i)
    paths.append(path)
  if not keep:
    raise FileNotFoundError(f'no image of {root}/master_sheet.csv was found '
                            f'under {image_root}')
  return _Study(master, np.asarray(keep, np.int64), paths)


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


def _drop_failed(out: dict[str, dict[str, np.ndarray]],
                 where: Mapping[int, tuple[str, int]],
                 failed: Mapping[int, str]) -> None:
  """Removes the rows of studies whose image could not be used
  (`on_error='skip'`) from the split arrays, and logs them."""
  if not failed:
    return
  for s in SPLITS:
    rows = [where[j][1] for j in failed if where[j][0] == s]
    if rows:
      out[s] = {k: np.delete(v, rows, axis=0) for k, v in out[s].items()}
  msgs = list(failed.values())
  logging.warning("Skipped %d image(s) that could not be used "
                  "(data.on_error='skip'); first %d: %s", len(msgs),
                  min(5, len(msgs)), ' | '.join(msgs[:5]))


def build_arrays(root: str, cfg: ml_collections.ConfigDict,
                 phantom: bool = False, study: _Study | None = None
                 ) -> dict[str, dict[str, np.ndarray]]:
  """Reads the study at `root` into split arrays (no caching); `study` is
  `_find_images(root, cfg)` when the caller has it already."""
  master, keep, paths = study or _find_images(root, cfg)
  recipe = gaze.get_recipe(cfg.gaze_recipe)
  samples = (egd_csv.read_gaze_csv(os.path.join(root, 'eye_gaze.csv'))
             if recipe.source == 'eye_gaze' else {})
  fixations = egd_csv.read_gaze_csv(os.path.join(root, 'fixations.csv'),
                                    durations=recipe.weighting == 'duration')
  egd_report.log_unknown_ids({'eye_gaze.csv': samples,
                              'fixations.csv': fixations}, master['dicom_id'])
  labels = master['label'][keep]
  pids = [master['patient_id'][i] for i in keep]
  parts = egd_splits.split_indices(labels, pids, cfg)
  out, where = _allocate(parts, labels, keep, cfg.image_size)

  def one(j: int) -> egd_report.Read | str:
    i = keep[j]
    d = master['dicom_id'][i]
    try:
      ex = egd_example.load_example(paths[j], d, samples.get(d),
                                    fixations.get(d), cfg, phantom)
    except ValueError as e:
      msg = f'{e} (dicom_id {d!r}, master_sheet.csv line {master["line"][i]})'
      if cfg.on_error == 'raise':
        raise ValueError(msg + " (data.on_error='skip' skips it)") from e
      return msg
    s, r = where[j]
    for k in ('image', 'gaze', 'fixmap'):
      out[s][k][r] = ex[k]
    return egd_report.Read(d, ex['dropped'], bool(ex['gaze'].any()),
                           bool(ex['fixmap'].any()), d in fixations)

  workers = cfg.num_workers or os.cpu_count() or 1
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    done = list(pool.map(one, range(len(keep))))
  _drop_failed(out, where, {j: r for j, r in enumerate(done)
                            if isinstance(r, str)})
  egd_report.log_reads([r for r in done if not isinstance(r, str)],
                       f'{recipe.source}.csv')
  return out


def build(cfg: ml_collections.ConfigDict) -> dict[str, dict[str, np.ndarray]]:
  """{'train', 'val', 'test'} -> {'image' (N,H,W,1) float32 [0,1], 'gaze'
  (N,H,W) float32 max 1, 'fixmap' (N,H,W) uint8, 'label' (N,) int32,
  'index' (N,) int32 = row of master_sheet.csv}, cached.

  The cache key holds the config, the CSVs' sizes and times, and a
  fingerprint of the images found (path, size, time), so an image restored,
  added or replaced after a build with `on_error='skip'` rebuilds the arrays.
  """
  _check_config(cfg)
  cache_dir = cfg.cache_dir or cache.default_cache_dir()
  phantom = not cfg.root
  root = _phantom_root(cfg, cache_dir) if phantom else cfg.root
  study = _find_images(root, cfg)
  key = dict(version=_CACHE_VERSION, config=cfg.to_dict(),
             root=os.path.abspath(root),
             stamps=[_file_stamp(os.path.join(root, f)) for f in
                     ('master_sheet.csv', 'eye_gaze.csv', 'fixations.csv')],
             images=cache.file_fingerprint(cfg.image_root or root,
                                           study.paths))
  key['config'].pop('cache_dir', None)
  key['config'].pop('num_workers', None)
  return cache.cached(
      'egd', key, lambda: build_arrays(root, cfg, phantom, study), cache_dir)
