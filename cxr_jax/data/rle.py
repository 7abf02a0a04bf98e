"""SIIM-ACR run-length encoding of pneumothorax masks.

The competition's format (its `mask_functions.py`, `rle2mask`/`mask2rle`):
pixels are numbered in column-major order (decode to a flat width*height
vector, reshape to (width, height), transpose); the string is pairs
`start length` where every start is *relative*: the number of background
pixels since the end of the previous run (for the first run, since pixel 0,
so a run touching the top-left pixel starts with 0). `-1` means an empty
mask. One image may have several rows (one per region): unite them.

The CSV header of `train-rle.csv` is `ImageId, EncodedPixels` (leading space
in the second name). Other layouts (e.g. stage-2 files, `ImageId,
EncodedPixels`, which the community reports with a different convention) are
rejected with an error naming the file and the columns, never guessed.
"""
from __future__ import annotations

import collections
import os

import numpy as np

from cxr_jax.data import textfile

EXPECTED_HEADER = ('ImageId', ' EncodedPixels')


def parse_rle(rle: str) -> np.ndarray:
  """(start, length) pairs of an RLE string as (n, 2) int64; checks syntax."""
  tokens = rle.split()
  if not tokens:
    raise ValueError('empty RLE string (use -1 for an empty mask)')
  try:
    values = np.array([int(t) for t in tokens], dtype=np.int64)
  except ValueError:
    bad = next(t for t in tokens if not t.lstrip('-').isdigit())
    raise ValueError(f'RLE token {bad!r} is not an integer') from None
  if len(values) % 2:
    raise ValueError(f'RLE has an odd number of tokens ({len(values)}); '
                     'expected start/length pairs')
  pairs = values.reshape(-1, 2)
  if (pairs < 0).any():
    i = int(np.nonzero((pairs < 0).any(axis=1))[0][0])
    raise ValueError(f'RLE pair {i} ({pairs[i, 0]} {pairs[i, 1]}) is negative')
  if (pairs[:, 1] == 0).any():
    i = int(np.nonzero(pairs[:, 1] == 0)[0][0])
    raise ValueError(f'RLE pair {i} has a zero run length')
  return pairs


def rle_decode(rle: str, height: int, width: int) -> np.ndarray:
  """Decodes one SIIM RLE string to a (height, width) uint8 mask of 0/1."""
  rle = str(rle).strip()
  mask = np.zeros(height * width, np.uint8)
  if rle == '-1':
    return mask.reshape(height, width)
  pairs = parse_rle(rle)
  ends = np.cumsum(pairs[:, 0] + pairs[:, 1])
  starts = ends - pairs[:, 1]
  if ends[-1] > height * width:
    i = int(np.nonzero(ends > height * width)[0][0])
    raise ValueError(f'RLE run {i} ends at pixel {ends[i]}, past the end of a '
                     f'{height}x{width} image ({height * width} pixels)')
  # Runs never overlap (starts are relative), so a difference array works.
  delta = np.zeros(height * width + 1, np.int32)
  np.add.at(delta, starts, 1)
  np.add.at(delta, ends, -1)
  mask[:] = np.cumsum(delta[:-1]) > 0
  return mask.reshape(width, height).T.copy()


def rle_encode(mask: np.ndarray) -> str:
  """Encodes a (H, W) mask (nonzero = foreground); '-1' when empty."""
  mask = np.asarray(mask)
  if mask.ndim != 2:
    raise ValueError(f'rle_encode expects a 2-D mask, got shape {mask.shape}')
  flat = (mask.T.reshape(-1) != 0).astype(np.int8)
  if not flat.any():
    return '-1'
  edges = np.diff(np.concatenate([[0], flat, [0]]))
  starts = np.nonzero(edges == 1)[0]
  ends = np.nonzero(edges == -1)[0]
  prev_end = np.concatenate([[0], ends[:-1]])
  pairs = np.stack([starts - prev_end, ends - starts], axis=1)
  return ' '.join(str(int(v)) for v in pairs.reshape(-1))


def read_rle_rows(path: str | os.PathLike) -> list[tuple[int, str, str]]:
  """(row number, ImageId, RLE string) for each data row; row 1 = header.

  Raises `ValueError` naming the file and row for a layout other than
  train-rle.csv's, a row without two fields, an empty ImageId, or bytes that
  are not UTF-8 (with their line and byte offset).
  """
  records = textfile.csv_rows(path)
  _, header = next(records, (1, None))
  if header is None:
    raise ValueError(f'{path}: empty CSV file (expected header '
                     f'{",".join(EXPECTED_HEADER)!r})')
  if tuple(header) != EXPECTED_HEADER:
    hint = ''
    if [h.strip() for h in header] == ['ImageId', 'EncodedPixels']:
      hint = (' This looks like a stage-2 style file, whose RLE convention '
              'differs from train-rle.csv; convert it explicitly.')
    raise ValueError(
        f'{path}: unsupported RLE CSV layout; columns found {header!r}, '
        f'expected exactly {list(EXPECTED_HEADER)!r} (the SIIM-ACR '
        f'train-rle.csv header).{hint}')
  rows = []
  for line_no, row in records:
    if not row:
      continue
    if len(row) != 2:
      raise ValueError(f'{path}: row {line_no} has {len(row)} fields '
                       f'{row!r}; expected ImageId and EncodedPixels')
    image_id, rle = row[0].strip(), row[1].strip()
    if not image_id:
      raise ValueError(f'{path}: row {line_no} has an empty ImageId')
    rows.append((line_no, image_id, rle))
  return rows


def read_rle_csv(path: str | os.PathLike) -> dict[str, list[str]]:
  """ImageId -> list of its RLE strings (one per CSV row, in file order)."""
  out: dict[str, list[str]] = collections.defaultdict(list)
  for _, image_id, rle in read_rle_rows(path):
    out[image_id].append(rle)
  return dict(out)


def decode_union(rles: list[str], height: int, width: int) -> np.ndarray:
  """Union of several RLE rows of one image as a (height, width) uint8 mask."""
  mask = np.zeros((height, width), np.uint8)
  for rle in rles:
    mask |= rle_decode(rle, height, width)
  return mask
