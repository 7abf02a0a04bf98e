"""A few columns of a large CSV, read with numpy in chunks.

The real `eye_gaze.csv` has about 4 million rows of 34 columns (1.4 GB), of
which a reader needs four. Parsing every value in Python takes tens of
seconds and several GB, so `read_columns` works on bytes:

- The file is read in chunks of whole lines into one reused buffer. Per
  chunk, numpy finds the newlines and commas, and from them each needed
  field's bytes.
- Numbers of the usual form are parsed by `decimal_text.parse`, exactly as
  Python's `float()` would; any other field (exponents, `nan`, spaces,
  non-ASCII digits, a bad value) goes through `float()`.
- A chunk that the csv module could split differently (a quote, a carriage
  return that does not end a line, a line over the csv module's
  field size limit) switches the rest of the file to the csv module.

Results and errors (file, line, column, value, and their precedence: a
non-UTF-8 byte anywhere, then the first short row, then the first bad value
of the first bad column) are those of `egd_csv.read_csv_columns` followed by
`float()` of each value; `tests/test_bad_input_data.py` checks both.
"""
from __future__ import annotations

import csv
import dataclasses
import os
from typing import BinaryIO, Iterator, Sequence

import numpy as np

from cxr_jax.data import decimal_text
from cxr_jax.data import textfile

CHUNK_BYTES = 64 << 20
_PAD = 128  # spare bytes after a chunk, so a field's window stays inside
_SHORT = 24  # longer number fields are parsed one by one
_NL, _CR, _QUOTE, _COMMA = 10, 13, 34, 44


@dataclasses.dataclass
class Columns:
  """Rows of a CSV: a text key column as codes, and numeric columns.

  Attributes:
    keys: the distinct key values (stripped, trailing NULs dropped as a
      numpy str array does), sorted.
    code: (N,) int64 index into `keys` of each row.
    values: column -> (N,) float64.
    line: (N,) int64 line of each row in the file (the header is line 1).
  """
  keys: list[str]
  code: np.ndarray
  values: dict[str, np.ndarray]
  line: np.ndarray


class _Rows:
  """The columns to take, and the rows taken so far, chunk by chunk."""

  def __init__(self, path: str, header: list[str], key: str,
               numeric: list[str]):
    self.path, self.header, self.key, self.numeric = path, header, key, numeric
    self.index = {c: header.index(c) for c in [key, *numeric]}
    self.min_fields = max(self.index.values()) + 1
    self.key_code: dict[str, int] = {}
    self.parts: list[tuple[np.ndarray, np.ndarray, dict]] = []
    self.bad: dict[str, str] = {}  # column -> its first bad value's error

  def code_of(self, text: str) -> int:
    return self.key_code.setdefault(text.strip().rstrip('\0'),
                                    len(self.key_code))

  def short(self, line: int, fields: int) -> ValueError:
    return ValueError(f'{self.path}: line {line} has {fields} fields, '
                      f'expected {len(self.header)}')

  def number(self, column: str, line: int, text: str) -> float:
    """float() of a field's text; a bad value is recorded (first only) and
    read as NaN, since a short row later in the file takes precedence."""
    text = text.strip()
    try:
      return float(text)
    except ValueError:
      self.bad.setdefault(column, f'{self.path}: line {line}, column '
                          f'{column!r}: {text!r} is not a number')
      return float('nan')

  def result(self) -> Columns:
    for c in self.numeric:  # the csv reader checks column after column
      if c in self.bad:
        raise ValueError(self.bad[c])
    keys = sorted(self.key_code)
    rank = np.zeros(len(keys), np.int64)
    rank[[self.key_code[k] for k in keys]] = np.arange(len(keys))
    cat = lambda xs, dtype: np.concatenate([np.zeros(0, dtype), *xs])
    return Columns(
        keys=keys, code=rank[cat([p[0] for p in self.parts], np.int64)],
        values={c: cat([p[2][c] for p in self.parts], np.float64)
                for c in self.numeric},
        line=cat([p[1] for p in self.parts], np.int64))


# ------------------------------------------------------------ fields


def _numbers(buf: bytearray, start: np.ndarray,
             end: np.ndarray, lines: np.ndarray, column: str,
             rows: _Rows) -> np.ndarray:
  """float64 values of one column's fields."""
  length = end - start
  out = np.empty(start.size)
  slow = length > _SHORT
  short = np.flatnonzero(~slow)
  if short.size:
    width = max(int(length[short].max()), 1)
    g = decimal_text.windows(buf, start[short], width)
    g = g.view(np.uint8).reshape(-1, width)
    value, simple = decimal_text.parse(g, length[short])
    out[short] = value
    slow[short[~simple]] = True
  for i in np.flatnonzero(slow):
    out[i] = rows.number(column, int(lines[i]),
                         buf[start[i]:end[i]].decode('utf-8'))
  return out


def _keys(buf: bytearray, start: np.ndarray,
          end: np.ndarray, rows: _Rows) -> np.ndarray:
  """Codes of the key column's fields; a run of equal fields is decoded and
  looked up once."""
  length = end - start
  if not length.size:
    return np.zeros(0, np.int64)
  width = max(int(length.max()), 1)
  if width <= _PAD:
    raw = decimal_text.windows(buf, start, width)
    if length.min() < width:
      g = raw.view(np.uint8).reshape(-1, width)
      raw = np.where(np.arange(width) < length[:, None], g, 0).astype(
          np.uint8).view(f'S{width}').reshape(-1)
    new = np.r_[True, (raw[1:] != raw[:-1]) | (length[1:] != length[:-1])]
  else:
    new = np.r_[True, [buf[a:b] != buf[c:d] for a, b, c, d in
                       zip(start[1:], end[1:], start[:-1], end[:-1])]]
  run = np.flatnonzero(new)
  codes = [rows.code_of(buf[start[i]:end[i]].decode('utf-8')) for i in run]
  return np.repeat(np.asarray(codes, np.int64), np.diff(np.r_[run, new.size]))


# ------------------------------------------------------------ chunks


class _NotFast(Exception):
  """Only the csv module splits this chunk exactly."""


def _fast_safe(buf: bytearray, lo: int, hi: int) -> bool:
  """Whether numpy can split buf[lo:hi] (a header) as the csv module does."""
  if buf.find(b'"', lo, hi) >= 0:
    return False
  return (buf.find(b'\r', lo, hi) < 0
          or buf.count(b'\r', lo, hi) == buf.count(b'\r\n', lo, hi))


def _separators(full: np.ndarray, lo: int, hi: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Positions of the commas, CRs and newlines in full[lo:hi] (one pass over
  the bytes <= ','), the indices of the newlines among them, and per
  newline whether a CR precedes it.

  Raises `_NotFast` for a quote or a CR that does not end a line (the csv
  module's cases; a NUL byte is an ordinary character to both).
  """
  sep = np.flatnonzero(full[lo:hi] <= _COMMA) + lo
  kind = full[sep]
  nl_idx = np.flatnonzero(kind != _COMMA)
  if (kind[nl_idx] == _NL).all():  # only commas and newlines: the usual case
    return sep, nl_idx, np.zeros(nl_idx.size, bool)
  if (kind == _QUOTE).any():
    raise _NotFast
  sep = sep[(kind == _COMMA) | (kind == _NL) | (kind == _CR)]
  kind = full[sep]
  is_cr = kind == _CR
  cr = sep[is_cr]
  if cr.size and ((cr + 1 >= hi).any() or (full[cr + 1] != _NL).any()):
    raise _NotFast
  nl_idx = np.flatnonzero(kind == _NL)
  return sep, nl_idx, np.r_[False, is_cr][nl_idx]


def _fast_chunk(buf: bytearray, lo: int, hi: int, first_line: int,
                rows: _Rows) -> int:
  """Adds the rows of buf[lo:hi] (whole lines); returns its newline count.
  Raises `_NotFast`, before adding anything, where numpy cannot split it.

  A line's separators are consecutive in `sep`: its commas, then its CR and
  newline, so field k of a line ends at the separator after its k commas.
  """
  if hi <= lo:
    return 0
  full = np.frombuffer(buf, np.uint8)
  sep, nl_idx, cr = _separators(full, lo, hi)
  partial = hi > lo and full[hi - 1] != _NL  # a last line without newline
  last = np.r_[nl_idx, sep.size] if partial else nl_idx  # index after fields
  first = np.r_[0, nl_idx[:last.size - 1] + 1]  # index of the first comma
  count = last - first - (np.r_[cr, False] if partial else cr)
  starts = np.r_[lo, sep[nl_idx[:last.size - 1]] + 1]
  ends = np.r_[sep[nl_idx], hi] if partial else sep[nl_idx]
  ends = ends - (np.r_[cr, False] if partial else cr)
  if ends.size and (ends - starts).max() > csv.field_size_limit():
    raise _NotFast  # the csv module may reject a field this long
  keep = ends > starts  # the csv module skips blank lines
  lines = (first_line + np.arange(ends.size))[keep]
  first, count = first[keep], count[keep]
  starts, ends = starts[keep], ends[keep]
  short = np.flatnonzero(count + 1 < rows.min_fields)
  if short.size:
    raise rows.short(lines[short[0]], count[short[0]] + 1)
  fewest = int(count.min()) if count.size else 0

  def span(column: str) -> tuple[np.ndarray, np.ndarray]:
    k = rows.index[column]
    lo_k = starts if k == 0 else sep[first + k - 1] + 1
    if fewest > k:  # every line has a comma after the field
      return lo_k, sep[first + k]
    return lo_k, np.where(count > k, sep[np.minimum(first + k, sep.size - 1)],
                          ends)

  values = {c: _numbers(buf, *span(c), lines, c, rows) for c in rows.numeric}
  rows.parts.append((_keys(buf, *span(rows.key), rows), lines, values))
  return nl_idx.size


def _slow_rows(records: Iterator[tuple[int, list[str]]], rows: _Rows
               ) -> None:
  """Adds the rows that the csv module split."""
  codes, lines, values = [], [], {c: [] for c in rows.numeric}
  for line, row in records:
    if not row:
      continue
    if len(row) < rows.min_fields:
      raise rows.short(line, len(row))
    codes.append(rows.code_of(row[rows.index[rows.key]]))
    lines.append(line)
    for c in rows.numeric:
      values[c].append(row[rows.index[c]])
  rows.parts.append((np.asarray(codes, np.int64), np.asarray(lines, np.int64),
                     {c: np.array([rows.number(c, line, v) for line, v in
                                   zip(lines, vs)], np.float64).reshape(-1)
                      for c, vs in values.items()}))


# -------------------------------------------------------------- file


class _File:
  """Chunks of whole lines of a file in one reused buffer, the position
  reached (bytes and lines), and the UTF-8 check."""

  def __init__(self, path: str, f: BinaryIO, size: int):
    self.path, self.f, self.size = path, f, size
    self.buf = bytearray(size + _PAD)
    self.have = 0  # bytes of an unfinished line at the start of buf
    self.offset, self.line = 0, 1

  def next(self) -> int:
    """Reads the next chunk into buf[:n]; returns n (0 at the end)."""
    while True:
      if self.have + self.size // 2 > len(self.buf) - _PAD:  # a long line
        self.buf = self.buf[:self.have] + bytearray(self.size + _PAD)
      with memoryview(self.buf) as view:
        got = self.f.readinto(view[self.have:len(self.buf) - _PAD])
      end = self.have + got
      cut = self.buf.rfind(b'\n', 0, end) + 1 if got else end
      self.have = end - cut
      if cut or not got:
        return cut

  def keep_tail(self, n: int) -> None:
    """Moves the unfinished line after buf[:n] to the front."""
    self.buf[:self.have] = self.buf[n:n + self.have]

  def check_utf8(self, lo: int, hi: int) -> None:
    """Raises naming the line and byte offset of a non-UTF-8 byte."""
    if hi > lo and np.frombuffer(self.buf, np.uint8)[lo:hi].max() >= 128:
      textfile.decode(self.path, bytes(self.buf[lo:hi]), offset=self.offset,
                      line=self.line)

  def rest(self, lo: int, n: int) -> bytes:
    """buf[lo:n] and every later byte of the file."""
    out = [bytes(self.buf[lo:n])]
    while n:
      self.keep_tail(n)
      n = self.next()
      out.append(bytes(self.buf[:n]))
    return b''.join(out)

  def fail(self, error: Exception, lo: int, n: int) -> None:
    """Raises `error`, unless a byte that is not UTF-8 comes later in the
    file: the csv reader decodes the whole file first, so that one wins."""
    data = self.rest(lo, n)
    if not data.isascii():
      textfile.decode(self.path, data, offset=self.offset, line=self.line)
    raise error


def _header(file: _File, n: int) -> tuple[list[str] | None, int]:
  """The header's fields from the first chunk buf[:n], and where the data
  starts; fields None for an empty file or a header with quotes."""
  lo = len(textfile.BOM) if file.buf.startswith(textfile.BOM, 0, n) else 0
  file.offset = lo
  if lo == n:
    return None, n
  end = file.buf.find(b'\n', lo, n)
  end = n if end < 0 else end + 1
  file.check_utf8(lo, end)
  if not _fast_safe(file.buf, lo, end):
    return None, lo
  text = file.buf[lo:end].decode('utf-8').rstrip('\n').removesuffix('\r')
  file.offset, file.line = end, 2
  return ([h.strip() for h in text.split(',')] if text else []), end


def _columns(path: str, header: list[str], key: str, numeric: Sequence[str],
             optional: Sequence[str], required: Sequence[str]) -> _Rows:
  """The columns to take; raises naming the file and the missing ones."""
  missing = [c for c in required if c not in header]
  if missing:
    raise ValueError(f'{path}: missing column(s) {missing}; found {header}')
  return _Rows(path, header, key,
               list(numeric) + [c for c in optional if c in header])


def read_columns(path: str, key: str, numeric: Sequence[str],
                 optional: Sequence[str] = (), *,
                 required: Sequence[str] | None = None,
                 chunk_bytes: int | None = None) -> Columns:
  """Reads column `key` (text) and the `numeric` columns (float64) of a CSV,
  and the `optional` numeric columns that its header has.

  The header must have the `required` columns (default: key and numeric;
  listed in this order when missing); values are checked in the order of
  `numeric`, then `optional`. Errors name the file, line and column like
  `egd_csv.read_csv_columns`. Raises `FileNotFoundError` or `ValueError`.
  `chunk_bytes`: bytes read at a time (default `CHUNK_BYTES`).
  """
  required = [key, *numeric] if required is None else list(required)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: file not found')
  with open(path, 'rb') as f:
    size = min(chunk_bytes or CHUNK_BYTES, os.path.getsize(path) + 1)
    file = _File(path, f, size)
    n = file.next()
    header, lo = _header(file, n)
    if header is None and lo == n:
      raise ValueError(f'{path}: empty file (no header)')
    if header is None:  # quotes in the header: the csv module throughout
      text = file.rest(lo, n)
      records = textfile.csv_records(
          path, textfile.decode(path, text, offset=lo), 1)
      header = [h.strip() for h in next(records, (1, []))[1]]
      rows = _columns(path, header, key, numeric, optional, required)
      _slow_rows(records, rows)
      return rows.result()
    try:
      rows = _columns(path, header, key, numeric, optional, required)
    except ValueError as e:
      file.fail(e, lo, n)
    while n:
      file.check_utf8(lo, n)
      try:
        newlines = _fast_chunk(file.buf, lo, n, file.line, rows)
      except _NotFast:
        text = textfile.decode(path, file.rest(lo, n), offset=file.offset,
                               line=file.line)
        _slow_rows(textfile.csv_records(path, text, file.line), rows)
        break
      except ValueError as e:
        file.offset += n - lo
        file.line += file.buf.count(b'\n', lo, n)
        file.fail(e, n, n)
      file.offset += n - lo
      file.line += newlines
      file.keep_tail(n)
      n, lo = file.next(), 0
    return rows.result()
