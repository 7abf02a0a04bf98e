"""One chunk of whole CSV lines, split and parsed with numpy.

`parse` finds a chunk's commas and newlines, the bytes of the fields a
reader needs, their keys and their numbers. Its results and errors are
those of the csv module and a `float()` per value; where the csv module
could split the bytes differently (a quote, a carriage return that does
not end a line, a field over its size limit) it raises `NotFast`, and the
caller hands the chunk to the csv module. It changes nothing outside its
result, so several threads can parse chunks at once (numpy releases the
GIL). `csv_columns` reads whole files with it.
"""
from __future__ import annotations

import csv
import dataclasses

import numpy as np

from cxr_jax.data import decimal_text

PAD = 128  # spare bytes a chunk's buffer needs after it (field windows)
_SHORT = 24  # longer number fields are parsed one by one
_NL, _CR, _QUOTE, _COMMA = 10, 13, 34, 44


@dataclasses.dataclass
class Part:
  """Rows of a CSV, with line numbers counted from a line the caller knows.

  Attributes:
    keys: the distinct key values (see `key_text`), in order of appearance.
    code: (N,) int64 index into `keys` of each row.
    values: column -> (N,) float64 (NaN for a value that is not a number).
    line: (N,) int64 line of each row.
    bad: column -> (line, text) of its first value that is not a number.
    newlines: the chunk's newline count.
  """
  keys: list[str]
  code: np.ndarray
  values: dict[str, np.ndarray]
  line: np.ndarray
  bad: dict[str, tuple[int, str]]
  newlines: int = 0


class NotFast(Exception):
  """Only the csv module splits this chunk exactly."""


class NotUtf8(Exception):
  """A chunk has a byte that is not UTF-8 (`error`, relative to its start)."""

  def __init__(self, error: UnicodeDecodeError):
    super().__init__()
    self.error = error


class ShortRow(Exception):
  """A chunk's first row with too few fields (`line` counted from 0)."""

  def __init__(self, line: int, fields: int):
    super().__init__()
    self.line, self.fields = line, fields


def key_text(text: str) -> str:
  """A key field's value: stripped, trailing NULs dropped (as a numpy str
  array drops them)."""
  return text.strip().rstrip('\0')


def number(text: str, column: str, line: int,
           bad: dict[str, tuple[int, str]]) -> float:
  """float() of a field's text; a bad value is recorded in `bad` (the
  column's first only) and read as NaN, since a short row later in the
  file takes precedence."""
  text = text.strip()
  try:
    return float(text)
  except ValueError:
    bad.setdefault(column, (line, text))
    return float('nan')


def _numbers(buf: bytearray, start: np.ndarray, end: np.ndarray,
             lines: np.ndarray, column: str,
             bad: dict[str, tuple[int, str]]) -> np.ndarray:
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
    out[i] = number(buf[start[i]:end[i]].decode('utf-8'), column,
                    int(lines[i]), bad)
  return out


def _keys(buf: bytearray, start: np.ndarray, end: np.ndarray
          ) -> tuple[list[str], np.ndarray]:
  """The distinct keys of the key column's fields and each field's index
  into them; a run of equal fields is decoded and looked up once."""
  length = end - start
  if not length.size:
    return [], np.zeros(0, np.int64)
  width = max(int(length.max()), 1)
  if width <= PAD:
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
  code: dict[str, int] = {}
  codes = [code.setdefault(key_text(buf[start[i]:end[i]].decode('utf-8')),
                           len(code)) for i in run]
  return list(code), np.repeat(np.asarray(codes, np.int64),
                               np.diff(np.r_[run, new.size]))


def _separators(full: np.ndarray, lo: int, hi: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Positions of the commas, CRs and newlines in full[lo:hi] (one pass over
  the bytes <= ','), the indices of the newlines among them, and per
  newline whether a CR precedes it.

  Raises `NotFast` for a quote or a CR that does not end a line (the csv
  module's cases; a NUL byte is an ordinary character to both).
  """
  sep = np.flatnonzero(full[lo:hi] <= _COMMA)
  sep += lo
  kind = full[sep]
  nl_idx = np.flatnonzero(kind != _COMMA)
  if (kind[nl_idx] == _NL).all():  # only commas and newlines: the usual case
    return sep, nl_idx, np.zeros(nl_idx.size, bool)
  if (kind == _QUOTE).any():
    raise NotFast
  sep = sep[(kind == _COMMA) | (kind == _NL) | (kind == _CR)]
  kind = full[sep]
  is_cr = kind == _CR
  cr = sep[is_cr]
  if cr.size and ((cr + 1 >= hi).any() or (full[cr + 1] != _NL).any()):
    raise NotFast
  nl_idx = np.flatnonzero(kind == _NL)
  return sep, nl_idx, np.r_[False, is_cr][nl_idx]


def _split(buf: bytearray, lo: int, hi: int, key: int,
           numbers: dict[str, int]) -> Part:
  """`parse` of a chunk that is valid UTF-8.

  A line's separators are consecutive in `sep`: its commas, then its CR and
  newline, so field k of a line ends at the separator after its k commas.
  """
  full = np.frombuffer(buf, np.uint8)
  sep, nl_idx, cr = _separators(full, lo, hi)
  partial = full[hi - 1] != _NL  # a last line without newline
  last = np.r_[nl_idx, sep.size] if partial else nl_idx  # index after fields
  first = np.r_[0, nl_idx[:last.size - 1] + 1]  # index of the first comma
  count = last - first - (np.r_[cr, False] if partial else cr)
  starts = np.r_[lo, sep[nl_idx[:last.size - 1]] + 1]
  ends = np.r_[sep[nl_idx], hi] if partial else sep[nl_idx]
  ends = ends - (np.r_[cr, False] if partial else cr)
  if ends.size and (ends - starts).max() > csv.field_size_limit():
    raise NotFast  # the csv module may reject a field this long
  keep = ends > starts  # the csv module skips blank lines
  lines = np.arange(ends.size)[keep]
  first, count = first[keep], count[keep]
  starts, ends = starts[keep], ends[keep]
  short = np.flatnonzero(count < max(key, *numbers.values()))
  if short.size:
    raise ShortRow(int(lines[short[0]]), int(count[short[0]]) + 1)
  fewest = int(count.min()) if count.size else 0

  def span(k: int) -> tuple[np.ndarray, np.ndarray]:
    lo_k = starts if k == 0 else sep[first + k - 1] + 1
    if fewest > k:  # every line has a comma after the field
      return lo_k, sep[first + k]
    return lo_k, np.where(count > k, sep[np.minimum(first + k, sep.size - 1)],
                          ends)

  bad = {}
  values = {c: _numbers(buf, *span(k), lines, c, bad)
            for c, k in numbers.items()}
  keys, code = _keys(buf, *span(key))
  return Part(keys, code, values, lines, bad, nl_idx.size)


def parse(buf: bytearray, lo: int, hi: int, key: int,
          numbers: dict[str, int]) -> Part:
  """The rows of buf[lo:hi] (whole lines, hi > lo, then `PAD` bytes of buf):
  the key of field `key` (a field index), and the numbers of the
  `numbers` columns (column -> field index); line numbers counted from the
  chunk's first line (0).

  Raises, in the csv reader's order: `NotUtf8` (it decodes the whole file
  first), `NotFast`, then `ShortRow` for the first row without all those
  fields.
  """
  if np.frombuffer(buf, np.uint8)[lo:hi].max() >= 128:
    try:
      buf[lo:hi].decode('utf-8')
    except UnicodeDecodeError as e:
      raise NotUtf8(e) from None
  return _split(buf, lo, hi, key, numbers)
