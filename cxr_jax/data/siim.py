"""SIIM-ACR Pneumothorax dataset (Study A): DICOMs + RLE CSV -> cached arrays.

`build(cfg)` returns `{'train'|'val'|'test': {'image', 'label', 'mask',
'index'}}` with a class-balanced subset split into class-balanced splits.

Per image, in this order (the thesis's order, CLAHE on the native image):
  read_dicom (brighter = denser, [0, 1])
  -> CLAHE at the DICOM's own resolution (clip limit `clahe_clip`)
  -> resize to `image_size` (anti-aliased)
  -> z-score per image (last, so every stored image has mean 0, std 1; the
     thesis lists z-score before resizing, which differs only by the
     interpolation's small change of the statistics).
Masks: union of all RLE rows of the ImageId, decoded at the DICOM's own
Rows x Columns, then resized by `mask_rule` and thresholded at
`mask_threshold`:
  'bilinear' (default; the thesis does not say): anti-aliased bilinear
     resize, a pixel is in the mask where the value is >= mask_threshold
     (0.5). A region thinner than about one output pixel (1024 / 224 = 4.6
     native pixels at 224 px) vanishes; the build logs how many masks did.
  'area': the exact fraction of each output pixel the native mask covers
     (`preprocess.area_coverage`) >= mask_threshold. With a small threshold
     (e.g. 0.01: 'touched at all') no mask vanishes, at the price of a
     border up to one output pixel wide around each region.

`index` is the row of each image in `study_list(cfg)` (sorted ImageIds that
have both a DICOM and a CSV row), so results can be traced back to files.
`root == ''` generates the phantom (`cxr_jax.data.phantom.siim`) once into
`<cache_dir>/phantom/siim-<num>-<size>-<seed>/` and reads it the same way.
"""
from __future__ import annotations

import collections
import glob
import os

from absl import logging
import ml_collections
import numpy as np

from cxr_jax.data import cache, dicom, preprocess, rle
from cxr_jax.registry import check_choice

CLASS_NAMES = ('healthy', 'pneumothorax')
SPLITS = ('train', 'val', 'test')
_VERSION = 1  # bump when the preprocessing below changes the arrays


def default_config() -> ml_collections.ConfigDict:
  """Data config for SIIM-ACR; every knob that changes the arrays is a key."""
  c = ml_collections.ConfigDict()
  c.name = 'siim'
  c.root = ''  # folder with DICOMs at any depth; '' = phantom
  c.csv = ''  # '' = <root>/train-rle.csv
  c.cache_dir = ''  # '' = $CXR_JAX_CACHE or ~/.cache/cxr_jax
  c.image_size = (224, 224)
  c.clahe_clip = 0.01
  c.mask_rule = 'bilinear'  # 'bilinear' | 'area' (see the module docstring)
  c.mask_threshold = 0.5  # in (0, 1]: a pixel is in the mask from here on
  c.num_per_class = 3600  # balanced subset: this many of each class at most
  c.split_sizes = (5200, 1000, 1000)  # train/val/test, class-balanced each
  c.split_seed = 0
  c.on_error = 'raise'  # 'raise' | 'skip' (logged with reasons)
  c.phantom_num = 400
  c.phantom_size = 256
  c.phantom_seed = 0
  return c


def phantom_root(cfg: ml_collections.ConfigDict) -> str:
  """Writes the SIIM phantom once (atomic, `done` marker); returns its path."""
  cache_dir = cfg.cache_dir or cache.default_cache_dir()
  name = f'siim-v2-{cfg.phantom_num}-{cfg.phantom_size}-{cfg.phantom_seed}'
  out = os.path.join(cache_dir, 'phantom', name)
  if os.path.exists(os.path.join(out, 'done')):
    return out
  # Imported here: the phantom (and its anatomy) is only needed without data.
  from cxr_jax.data.phantom import siim as phantom_siim  # pylint: disable=g-import-not-at-top
  logging.info('Writing SIIM phantom (%d cases, %d px) to %s',
               cfg.phantom_num, cfg.phantom_size, out)
  cache.build_dir_atomically(
      out, lambda tmp: phantom_siim.write_siim(
          tmp, cfg.phantom_num, cfg.phantom_seed, cfg.phantom_size),
      done_file='done')
  return out


def _paths(cfg: ml_collections.ConfigDict) -> tuple[str, str]:
  root = cfg.root or phantom_root(cfg)
  if not os.path.isdir(root):
    raise FileNotFoundError(f'data.root {root!r} is not a folder')
  csv = cfg.csv or os.path.join(root, 'train-rle.csv')
  if not os.path.isfile(csv):
    raise FileNotFoundError(f'data.csv {csv!r} not found')
  return os.path.abspath(root), os.path.abspath(csv)


def _find_dicoms(root: str) -> dict[str, str]:
  """ImageId (file stem) -> path for every `**/*.dcm` under root, the
  extension in any letter case (`.DCM` too)."""
  out: dict[str, str] = {}
  pattern = os.path.join(root, '**', '*')
  for path in sorted(glob.glob(pattern, recursive=True)):
    stem, ext = os.path.splitext(os.path.basename(path))
    if ext.lower() != '.dcm' or not os.path.isfile(path):
      continue
    if stem in out:
      raise ValueError(f'ImageId {stem} has two DICOMs: {out[stem]} and {path}')
    out[stem] = path
  return out


class _Problems:
  """Raises or collects per-item errors according to `on_error`."""

  def __init__(self, on_error: str):
    self.on_error = check_choice(on_error, ('raise', 'skip'), 'data.on_error')
    self.items: list[str] = []

  def __call__(self, message: str) -> None:
    if self.on_error == 'raise':
      raise ValueError(message + " (set data.on_error='skip' to skip it)")
    self.items.append(message)

  def log(self) -> None:
    if self.items:
      logging.warning('SIIM: skipped %d item(s); first %d: %s', len(self.items),
                      min(5, len(self.items)), ' | '.join(self.items[:5]))


def _catalogue(csv: str, dicoms: dict[str, str], problems: _Problems
               ) -> dict[str, tuple[str, list[tuple[int, str]]]]:
  """ImageId -> (DICOM path, [(csv row, rle)]) for usable ids."""
  rows: dict[str, list[tuple[int, str]]] = collections.defaultdict(list)
  for row_no, image_id, enc in rle.read_rle_rows(csv):
    rows[image_id].append((row_no, enc))
  no_csv = sorted(set(dicoms) - set(rows))
  if no_csv:
    logging.info('SIIM: %d DICOM(s) have no CSV row and are not used (as in '
                 "Kaggle's train set), e.g. %s", len(no_csv), no_csv[0])
  out = {}
  for image_id in sorted(rows):
    entries = rows[image_id]
    if image_id not in dicoms:
      problems(f'{csv}: ImageId {image_id} (row {entries[0][0]}) has no DICOM '
               f'file {image_id}.dcm (any letter case) under data.root')
      continue
    empty = [r for r, e in entries if e == '-1']
    if empty and len(empty) != len(entries):
      problems(f'{csv}: ImageId {image_id} has both -1 (row {empty[0]}) and '
               'RLE rows')
      continue
    try:
      for row_no, enc in entries:
        if enc != '-1':
          try:
            rle.parse_rle(enc)
          except ValueError as e:
            raise ValueError(f'{csv}: ImageId {image_id}, row {row_no}: '
                             f'malformed RLE: {e}') from None
    except ValueError as e:
      problems(str(e))
      continue
    out[image_id] = (dicoms[image_id], entries)
  return out


def study_list(cfg: ml_collections.ConfigDict) -> list[str]:
  """Sorted ImageIds with a DICOM and CSV rows (what `index` points into)."""
  root, csv = _paths(cfg)
  return sorted(_catalogue(csv, _find_dicoms(root), _Problems('skip')))


def split_counts(n_per_class: int, split_sizes) -> list[int]:
  """Per-class count of each split; scaled down proportionally to fit."""
  if any(int(s) < 0 or int(s) % 2 for s in split_sizes):
    raise ValueError(
        f'data.split_sizes must be even and >= 0 (every split is '
        f'class-balanced: half pneumothorax, half healthy), got {split_sizes}')
  per_class = [int(s) // 2 for s in split_sizes]
  total = sum(per_class)
  if total > n_per_class:
    ideal = [c * n_per_class / total for c in per_class]
    # Floor, but keep every requested split non-empty while images last.
    scaled = [max(1, int(np.floor(x))) if c else 0
              for x, c in zip(ideal, per_class)]
    while sum(scaled) > n_per_class:
      scaled[int(np.argmax(scaled))] -= 1
    while sum(scaled) < n_per_class:
      scaled[int(np.argmax(np.subtract(ideal, scaled)))] += 1
    logging.warning('SIIM: split_sizes %s need %d images per class, only %d '
                    'available; using %s', tuple(split_sizes), total,
                    n_per_class, tuple(2 * s for s in scaled))
    per_class = scaled
  return per_class


def preprocess_image(img_HW: np.ndarray, cfg: ml_collections.ConfigDict
                     ) -> np.ndarray:
  """CLAHE at the image's own size (clip limit `data.clahe_clip`), an
  anti-aliased bilinear resize to `data.image_size`, then a z-score over the
  image: (H, W) in [0, 1] (`dicom.read_image`) -> (H, W, 1) float32."""
  img = preprocess.clahe(img_HW, clip_limit=cfg.clahe_clip)
  img = preprocess.zscore(preprocess.resize(img, tuple(cfg.image_size),
                                            order=1))
  return img[..., None]


def _process(path: str, entries: list[tuple[int, str]], csv: str, image_id: str,
             cfg: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray]:
  """One (H, W, 1) z-scored image and its (H, W) {0, 1} mask."""
  img = dicom.read_dicom(path)
  mask = np.zeros(img.shape, np.uint8)
  for row_no, enc in entries:
    try:
      mask |= rle.rle_decode(enc, img.shape[0], img.shape[1])
    except ValueError as e:
      raise ValueError(
          f'{csv}: ImageId {image_id}, row {row_no}: {e}') from None
  return preprocess_image(img, cfg), resize_mask(
      mask, tuple(cfg.image_size), cfg.mask_rule, cfg.mask_threshold)


def _check_mask_rule(rule: str, threshold: float) -> None:
  check_choice(rule, ('bilinear', 'area'), 'data.mask_rule')
  if not 0.0 < float(threshold) <= 1.0:
    raise ValueError(f'data.mask_threshold must be in (0, 1], got {threshold}')


def resize_mask(mask_HW: np.ndarray, size_hw: tuple[int, int], rule: str,
                threshold: float) -> np.ndarray:
  """A native-resolution {0, 1} mask at `size_hw` as float32 {0, 1}, by
  `rule` ('bilinear' or 'area') and `threshold` (module docstring)."""
  _check_mask_rule(rule, threshold)
  m = np.asarray(mask_HW, np.float32)
  if rule == 'bilinear':
    cover = preprocess.resize(m, size_hw, order=1)
  else:
    cover = preprocess.area_coverage(m, size_hw)
  return (cover >= float(threshold)).astype(np.float32)


def _build_arrays(cfg: ml_collections.ConfigDict, csv: str,
                  dicoms: dict[str, str]) -> dict[str, dict[str, np.ndarray]]:
  problems = _Problems(cfg.on_error)
  cat = _catalogue(csv, dicoms, problems)
  ids = sorted(cat)
  index_of = {k: i for i, k in enumerate(ids)}
  by_class = [[k for k in ids if (cat[k][1][0][1] != '-1') == bool(c)]
              for c in range(2)]
  rng = np.random.default_rng(cfg.split_seed)
  queues = [collections.deque([ks[i] for i in rng.permutation(len(ks))])
            for ks in by_class]
  n = min(cfg.num_per_class, *(len(q) for q in queues))
  if n < cfg.num_per_class:
    logging.warning('SIIM: %d healthy and %d pneumothorax images; using %d per '
                    'class (num_per_class=%d)', len(queues[0]), len(queues[1]),
                    n, cfg.num_per_class)
  if n == 0:
    raise ValueError(f'{csv}: need images of both classes, found '
                     f'{len(queues[0])} healthy, {len(queues[1])} pneumothorax')
  counts = split_counts(n, cfg.split_sizes)
  out = {}
  for split, k in zip(SPLITS, counts):
    items = {f: [] for f in ('image', 'mask', 'label', 'index')}
    for label in (0, 1):
      taken = 0
      while taken < k:
        if not queues[label]:
          raise ValueError(f'SIIM: ran out of {CLASS_NAMES[label]} images '
                           f'after skipping {len(problems.items)} items')
        image_id = queues[label].popleft()
        try:
          path, entries = cat[image_id]
          img, mask = _process(path, entries, csv, image_id, cfg)
        except ValueError as e:
          problems(str(e))
          continue
        items['image'].append(img)
        items['mask'].append(mask)
        items['label'].append(label)
        items['index'].append(index_of[image_id])
        taken += 1
    h, w = tuple(cfg.image_size)
    order = rng.permutation(len(items['label']))
    out[split] = dict(
        image=np.asarray(items['image'], np.float32).reshape(
            -1, h, w, 1)[order],
        label=np.asarray(items['label'], np.int32)[order],
        mask=np.asarray(items['mask'], np.float32).reshape(-1, h, w)[order],
        index=np.asarray(items['index'], np.int32)[order])
    empty = int(np.sum((out[split]['label'] == 1)
                       & (out[split]['mask'].sum(axis=(1, 2)) == 0)))
    logging.info('SIIM %s: %d images (%d per class); %d pneumothorax masks '
                 'empty at %s px', split, 2 * k, k, empty,
                 tuple(cfg.image_size))
  problems.log()
  return out


def build(cfg: ml_collections.ConfigDict) -> dict[str, dict[str, np.ndarray]]:
  """Cached, preprocessed SIIM-ACR splits (see the module docstring)."""
  check_choice(cfg.on_error, ('raise', 'skip'), 'data.on_error')
  _check_mask_rule(cfg.mask_rule, cfg.mask_threshold)
  preprocess.check_size(cfg.image_size, 'data.image_size')
  if int(cfg.num_per_class) < 1:
    raise ValueError(f'data.num_per_class must be >= 1 (the images of each '
                     f'class to use at most), got {cfg.num_per_class}')
  root, csv = _paths(cfg)
  dicoms = _find_dicoms(root)
  if not dicoms:
    raise FileNotFoundError(f'data.root {root!r}: no DICOM file (*.dcm, any '
                            'letter case) in it or its subfolders')
  st = os.stat(csv)
  key = dict(version=_VERSION, root=root, csv=csv, csv_size=st.st_size,
             csv_mtime_ns=st.st_mtime_ns,
             dicoms=cache.file_fingerprint(root, list(dicoms.values())),
             image_size=tuple(cfg.image_size), clahe_clip=cfg.clahe_clip,
             mask_rule=cfg.mask_rule, mask_threshold=float(cfg.mask_threshold),
             num_per_class=cfg.num_per_class,
             split_sizes=tuple(cfg.split_sizes), split_seed=cfg.split_seed,
             on_error=cfg.on_error)
  return cache.cached('siim', key, lambda: _build_arrays(cfg, csv, dicoms),
                      cfg.cache_dir or cache.default_cache_dir())
