"""The CSV files of the eye-gaze dataset (egd-cxr): master sheet, gaze,
fixations and bounding boxes.

Every reader names the file, line and column of a bad value. Line numbers
are the file's physical lines (the header is line 1), so a user can open the
file at the reported line. The small files go through the csv module; the
gaze files (the real eye_gaze.csv has about 4 million rows) through
`csv_columns`, whose results and errors are the csv module's.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from cxr_jax.data import csv_columns
from cxr_jax.data import textfile
from cxr_jax.registry import check_choice

CLASS_NAMES = ('Normal', 'CHF', 'pneumonia')
MASTER_COLUMNS = ('dicom_id', 'path', 'patient_id') + CLASS_NAMES
GAZE_COLUMNS = ('DICOM_ID', 'Time (in secs)', 'X_ORIGINAL', 'Y_ORIGINAL')
DURATION_COLUMN = 'FPOGD'  # fixation duration (s), optional
_GAZE_NUMBERS = ('X_ORIGINAL', 'Y_ORIGINAL', 'Time (in secs)')  # check order


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


def read_gaze_csv(path: str, durations: bool = False, *,
                  method: str = 'numpy') -> dict[str, dict[str, np.ndarray]]:
  """Reads eye_gaze.csv or fixations.csv grouped by DICOM_ID.

  Returns DICOM_ID -> {'xy': (N, 2) X_ORIGINAL/Y_ORIGINAL, 'time': (N,),
  'line': (N,) line numbers}, rows in file order. With `durations` (for
  fixations.csv), also 'duration': (N,) the `FPOGD` column when the file has
  it (fixation durations in seconds, each checked to be finite and >= 0);
  absent otherwise. `method`: 'numpy' (`csv_columns`, for the real
  ~4-million-row file) or 'csv' (the csv module and a float() per value,
  the reference that 'numpy' matches in results and errors).
  """
  optional = (DURATION_COLUMN,) if durations else ()
  check_choice(method, ('numpy', 'csv'), 'method')
  if method == 'csv':
    cols, lines = read_csv_columns(path, GAZE_COLUMNS, optional)
    ids = np.asarray(cols['DICOM_ID'])
    keys, code = np.unique(ids, return_inverse=True)
    values = {c: _floats(cols[c], path, c, lines) for c in _GAZE_NUMBERS
              + tuple(c for c in optional if c in cols)}
  else:
    got = csv_columns.read_columns(path, 'DICOM_ID', _GAZE_NUMBERS, optional,
                                   required=GAZE_COLUMNS)
    keys, code, values, lines = got.keys, got.code, got.values, got.line
  dur = values.get(DURATION_COLUMN)
  if dur is not None:
    _check_durations(path, dur, keys, code, lines)
  return _group([str(k) for k in keys], code.reshape(-1), lines, dict(
      xy=np.stack([values['X_ORIGINAL'], values['Y_ORIGINAL']], 1),
      time=values['Time (in secs)'], duration=dur))


def _group(keys: Sequence[str], code: np.ndarray, lines: np.ndarray,
           fields: dict[str, np.ndarray | None]
           ) -> dict[str, dict[str, np.ndarray]]:
  """key -> {field: its rows (file order), 'line': their lines}, each a
  slice of the field's rows: of the file's order where every key's rows
  are one block (as in the released files), else of the rows sorted by key
  (stably)."""
  if not code.size:
    return {}
  fields = {k: v for k, v in dict(fields, line=lines).items() if v is not None}
  starts = np.flatnonzero(np.r_[True, code[1:] != code[:-1]])
  if starts.size > len(keys):  # a key in more than one block
    order = np.argsort(code, kind='stable')
    fields = {k: v[order] for k, v in fields.items()}
    code = code[order]
    starts = np.flatnonzero(np.r_[True, code[1:] != code[:-1]])
  ends = np.r_[starts[1:], code.size]
  block = np.empty(len(keys), np.int64)
  block[code[starts]] = np.arange(starts.size)
  return {keys[i]: {k: v[starts[b]:ends[b]] for k, v in fields.items()}
          for i, b in enumerate(block)}


def _check_durations(path: str, dur: np.ndarray, keys: Sequence[str],
                     code: np.ndarray, lines: np.ndarray) -> None:
  """Raises naming the file, line and DICOM_ID of the first FPOGD value that
  is not a duration (NaN, infinite or negative)."""
  bad = np.flatnonzero(~(np.isfinite(dur) & (dur >= 0)))
  if bad.size:
    i = bad[0]
    more = f' ({bad.size} such rows in the file)' if bad.size > 1 else ''
    raise ValueError(
        f'{path}: line {lines[i]} (DICOM_ID {str(keys[code[i]])!r}), column '
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
