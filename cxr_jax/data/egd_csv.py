"""The CSV files of the eye-gaze dataset (egd-cxr): master sheet, gaze,
fixations and bounding boxes.

Every reader names the file, line and column of a bad value. Line numbers
are the file's physical lines (the header is line 1), so a user can open the
file at the reported line.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from cxr_jax.data import textfile

CLASS_NAMES = ('Normal', 'CHF', 'pneumonia')
MASTER_COLUMNS = ('dicom_id', 'path', 'patient_id') + CLASS_NAMES
GAZE_COLUMNS = ('DICOM_ID', 'Time (in secs)', 'X_ORIGINAL', 'Y_ORIGINAL')
DURATION_COLUMN = 'FPOGD'  # fixation duration (s), optional


def read_csv_columns(path: str, required: Sequence[str],
                     optional: Sequence[str] = ()
                     ) -> tuple[dict[str, list[str]], np.ndarray]:
  """Reads the `required` columns of a CSV (and the `optional` ones that the
  header has) as lists of strings.

  Returns (column -> values, (N,) line numbers of the rows in the file, the
  header being line 1). Raises `FileNotFoundError` naming the file, or
  `ValueError` naming the file and every missing required column.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: file not found')
  records = textfile.csv_rows(path)
  _, header = next(records, (1, None))
  if header is None:
    raise ValueError(f'{path}: empty file (no header)')
  header = [h.strip() for h in header]
  idx, wanted = _column_indices(path, header, required, optional)
  cols: dict[str, list[str]] = {c: [] for c in wanted}
  lines = []
  for line_no, row in records:
    if not row:
      continue
    if len(row) <= max(idx):
      raise ValueError(f'{path}: line {line_no} has {len(row)} fields, '
                       f'expected {len(header)}')
    for c, i in zip(wanted, idx):
      cols[c].append(row[i].strip())
    lines.append(line_no)
  return cols, np.asarray(lines, np.int64)


def _column_indices(path: str, header: Sequence[str],
                    required: Sequence[str], optional: Sequence[str]
                    ) -> tuple[list[int], list[str]]:
  """(positions, names) of the required columns and of the optional ones
  that the header has; raises naming the file and every missing column."""
  missing = [c for c in required if c not in header]
  if missing:
    raise ValueError(f'{path}: missing column(s) {missing}; found '
                     f'{list(header)}')
  wanted = list(required) + [c for c in optional if c in header]
  return [list(header).index(c) for c in wanted], wanted


def _floats(values: Sequence[str], path: str, column: str,
            lines: np.ndarray) -> np.ndarray:
  """Parses a column to float64, naming file/line/column on failure."""
  out = np.empty(len(values), np.float64)
  for i, v in enumerate(values):
    try:
      out[i] = float(v)
    except ValueError:
      raise ValueError(f'{path}: line {lines[i]}, column {column!r}: '
                       f'{v!r} is not a number') from None
  return out


def read_master(path: str) -> dict[str, Any]:
  """Reads master_sheet.csv.

  Returns dict with `dicom_id`, `path`, `patient_id` (lists of str), `label`
  (N,) int32 (0 Normal, 1 CHF, 2 pneumonia) and `line` (N,) line numbers.
  Raises `ValueError` naming the file when it has no rows, and the dicom_id
  and line when the one-hot label columns do not hold exactly one 1.
  """
  cols, lines = read_csv_columns(path, MASTER_COLUMNS)
  if not lines.size:
    raise ValueError(f'{path}: the sheet has no rows (only a header), so '
                     'there is no study to read')
  onehot = np.stack([_floats(cols[c], path, c, lines) for c in CLASS_NAMES],
                    axis=1)
  for i, row in enumerate(onehot):
    if not (np.isin(row, (0.0, 1.0)).all() and row.sum() == 1):
      raise ValueError(
          f'{path}: line {lines[i]} (dicom_id {cols["dicom_id"][i]!r}): '
          f'label columns {list(CLASS_NAMES)} = {row.tolist()}, need exactly '
          'one 1 and the rest 0')
  ids = cols['dicom_id']
  if len(set(ids)) != len(ids):
    dup = sorted({d for d in ids if ids.count(d) > 1})[:5]
    raise ValueError(f'{path}: duplicate dicom_id(s) {dup}')
  return dict(dicom_id=ids, path=cols['path'], patient_id=cols['patient_id'],
              label=onehot.argmax(1).astype(np.int32), line=lines)


def read_gaze_csv(path: str, durations: bool = False
                  ) -> dict[str, dict[str, np.ndarray]]:
  """Reads eye_gaze.csv or fixations.csv grouped by DICOM_ID.

  Returns DICOM_ID -> {'xy': (N, 2) X_ORIGINAL/Y_ORIGINAL, 'time': (N,),
  'line': (N,) line numbers}, rows in file order. With `durations` (for
  fixations.csv), also 'duration': (N,) the `FPOGD` column when the file has
  it (fixation durations in seconds, each checked to be finite and >= 0);
  absent otherwise.
  """
  cols, lines = read_csv_columns(
      path, GAZE_COLUMNS, (DURATION_COLUMN,) if durations else ())
  xy = np.stack([_floats(cols['X_ORIGINAL'], path, 'X_ORIGINAL', lines),
                 _floats(cols['Y_ORIGINAL'], path, 'Y_ORIGINAL', lines)], 1)
  t = _floats(cols['Time (in secs)'], path, 'Time (in secs)', lines)
  dur = (_floats(cols[DURATION_COLUMN], path, DURATION_COLUMN, lines)
         if DURATION_COLUMN in cols else None)
  ids = np.asarray(cols['DICOM_ID'])
  if dur is not None:
    _check_durations(path, dur, ids, lines)
  out = {}
  if ids.size == 0:
    return out
  order = np.argsort(ids, kind='stable')
  uniq, starts = np.unique(ids[order], return_index=True)
  ends = np.append(starts[1:], ids.size)
  for d, s, e in zip(uniq, starts, ends):
    sel = order[s:e]
    out[str(d)] = dict(xy=xy[sel], time=t[sel], line=lines[sel])
    if dur is not None:
      out[str(d)]['duration'] = dur[sel]
  return out


def _check_durations(path: str, dur: np.ndarray, ids: np.ndarray,
                     lines: np.ndarray) -> None:
  """Raises naming the file, line and DICOM_ID of the first FPOGD value that
  is not a duration (NaN, infinite or negative)."""
  bad = np.flatnonzero(~(np.isfinite(dur) & (dur >= 0)))
  if bad.size:
    i = bad[0]
    more = f' ({bad.size} such rows in the file)' if bad.size > 1 else ''
    raise ValueError(
        f'{path}: line {lines[i]} (DICOM_ID {str(ids[i])!r}), column '
        f'{DURATION_COLUMN!r}: a fixation duration must be finite and >= 0, '
        f'got {dur[i]}{more}')


def read_boxes(path: str) -> dict[str, list[tuple[str, float, float, float,
                                                  float]]]:
  """Reads the optional bounding_boxes.csv: dicom_id -> [(bbox_name, x1, x2,
  y1, y2)] in native pixels ({} when the file is absent)."""
  if not os.path.isfile(path):
    return {}
  names = ('dicom_id', 'bbox_name', 'x1', 'x2', 'y1', 'y2')
  cols, lines = read_csv_columns(path, names)
  coords = [_floats(cols[c], path, c, lines) for c in names[2:]]
  out: dict[str, list] = {}
  for i, d in enumerate(cols['dicom_id']):
    out.setdefault(d, []).append(
        (cols['bbox_name'][i], *(float(c[i]) for c in coords)))
  return out
