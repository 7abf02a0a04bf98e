"""A few columns of a large CSV, read with numpy in chunks on threads.

The real `eye_gaze.csv` has about 4 million rows of 34 columns (1.4 GB), of
which a reader needs four. Parsing every value in Python takes tens of
seconds and several GB, so `read_columns` works on bytes:

- The file is read in chunks of whole lines, a few MB each, so that a
  chunk's arrays are small and their memory is reused from chunk to chunk.
- `csv_chunk.parse` splits a chunk with numpy: from its commas and
  newlines, each needed field's bytes, the keys, and the numbers (exactly
  as Python's `float()` would parse them).
- `THREADS` threads parse chunks (numpy releases the GIL) while the main
  thread reads the next ones and adds the parsed rows in file order to
  columns with room reserved for the whole file; line numbers come from
  the chunks' newline counts, key codes from the sorted keys at the end.
- From a chunk that the csv module could split differently (a quote, a
  carriage return that does not end a line, a line over the csv module's
  field size limit) on, the csv module reads the rest of the file.

Results and errors (file, line, column, value, and their precedence: a
non-UTF-8 byte anywhere, then the first short row, then the first bad value
of the first bad column) are those of `egd_csv.read_csv_columns` followed by
`float()` of each value, for any chunk size and number of threads;
`tests/test_data_egd.py` and `tests/test_bad_input_data.py` check both.
"""
from __future__ import annotations

import collections
from concurrent import futures
import dataclasses
import itertools
import os
from typing import BinaryIO, Iterator, NoReturn, Sequence

import numpy as np

from cxr_jax.data import csv_chunk
from cxr_jax.data import textfile

CHUNK_BYTES = 8 << 20
THREADS = 2  # parsing threads


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


@dataclasses.dataclass
class _Chunk:
  """Whole lines of the file, buf[lo:hi], from byte `offset` of the file
  on, followed by at least `csv_chunk.PAD` bytes of buf."""
  buf: bytearray
  lo: int
  hi: int
  offset: int


class _Column:
  """A (N,) array that rows are appended to, in room reserved ahead
  (doubled when short): the rows are neither kept twice nor copied at the
  end, and room never written to takes no memory."""

  def __init__(self, dtype: type, room: int):
    self.data, self.n = np.empty(room, dtype), 0

  def append(self, x: np.ndarray) -> None:
    end = self.n + x.size
    if end > self.data.size:
      grown = np.empty(max(end, 2 * self.data.size), self.data.dtype)
      grown[:self.n] = self.data[:self.n]
      self.data = grown
    self.data[self.n:end] = x
    self.n = end

  def array(self) -> np.ndarray:
    return self.data[:self.n]


class _Rows:
  """The columns to take, and the rows taken so far (added part by part,
  in file order; `room`: the rows expected)."""

  def __init__(self, path: str, header: list[str], key: str,
               numeric: list[str], room: int):
    self.path, self.header, self.key, self.numeric = path, header, key, numeric
    self.index = {c: header.index(c) for c in [key, *numeric]}
    self.min_fields = max(self.index.values()) + 1
    self.numbers = {c: self.index[c] for c in numeric}  # in check order
    self.key_code: dict[str, int] = {}
    self.code, self.line = _Column(np.int64, room), _Column(np.int64, room)
    self.values = {c: _Column(np.float64, room) for c in numeric}
    self.bad: dict[str, str] = {}  # column -> its first bad value's error

  def short(self, line: int, fields: int) -> ValueError:
    return ValueError(f'{self.path}: line {line} has {fields} fields, '
                      f'expected {len(self.header)}')

  def add(self, part: csv_chunk.Part, first_line: int) -> None:
    """Adds a part whose line numbers count from `first_line`."""
    codes = np.array([self.key_code.setdefault(k, len(self.key_code))
                      for k in part.keys], np.int64)
    self.code.append(codes[part.code])
    self.line.append(part.line + first_line)
    for c in self.numeric:
      self.values[c].append(part.values[c])
    for c, (line, text) in part.bad.items():
      self.bad.setdefault(c, f'{self.path}: line {first_line + line}, column '
                          f'{c!r}: {text!r} is not a number')

  def result(self) -> Columns:
    for c in self.numeric:  # the csv reader checks column after column
      if c in self.bad:
        raise ValueError(self.bad[c])
    keys = sorted(self.key_code)
    rank = np.zeros(len(keys), np.int64)
    rank[[self.key_code[k] for k in keys]] = np.arange(len(keys))
    code, block = self.code.array(), 1 << 20
    for i in range(0, code.size, block):  # in place, a block at a time
      code[i:i + block] = rank[code[i:i + block]]
    return Columns(keys=keys, code=code, line=self.line.array(),
                   values={c: v.array() for c, v in self.values.items()})


# ------------------------------------------------- the csv module's rows


def _slow_part(records: Iterator[tuple[int, list[str]]], rows: _Rows
               ) -> csv_chunk.Part:
  """The rows that the csv module split (line numbers of the file)."""
  code: dict[str, int] = {}
  codes, lines, values = [], [], {c: [] for c in rows.numeric}
  for line, row in records:
    if not row:
      continue
    if len(row) < rows.min_fields:
      raise rows.short(line, len(row))
    codes.append(code.setdefault(
        csv_chunk.key_text(row[rows.index[rows.key]]), len(code)))
    lines.append(line)
    for c in rows.numeric:
      values[c].append(row[rows.index[c]])
  bad = {}
  numbers = {c: np.array([csv_chunk.number(v, c, line, bad)
                          for line, v in zip(lines, vs)],
                         np.float64).reshape(-1) for c, vs in values.items()}
  return csv_chunk.Part(list(code), np.asarray(codes, np.int64), numbers,
                        np.asarray(lines, np.int64), bad)


# -------------------------------------------------------------- file


class _File:
  """A CSV file open for reading: its chunks of whole lines, and its bytes
  from an offset on."""

  def __init__(self, path: str, f: BinaryIO, chunk_bytes: int):
    self.path, self.f, self.size = path, f, chunk_bytes
    self.spare: list[bytearray] = []  # buffers of parsed chunks, to refill

  def chunks(self, offset: int) -> Iterator[_Chunk]:
    """The chunks of the file from byte `offset` (a line's start) on."""
    self.f.seek(offset)
    for buf, n in textfile.line_chunks(self.f, self.size, csv_chunk.PAD,
                                       self.spare):
      yield _Chunk(buf, 0, n, offset)
      offset += n

  def rest(self, offset: int) -> bytes:
    """The file's bytes from `offset` on."""
    self.f.seek(offset)
    return self.f.read()

  def fail(self, error: Exception, offset: int, line: int) -> NoReturn:
    """Raises `error`, unless a byte from `offset` (line `line`) on is not
    UTF-8: the csv reader decodes the whole file first, so that one wins."""
    textfile.check_utf8(self.path, self.f, offset, line, self.size)
    raise error


# ------------------------------------------------------------ threads


def _in_order(pool: futures.Executor, chunks: Iterator[_Chunk], rows: _Rows
              ) -> Iterator[tuple[_Chunk, futures.Future]]:
  """The chunks with their parses, in file order: the next chunk is read
  while `THREADS` others are parsed."""
  pending = collections.deque()
  for chunk in chunks:
    if chunk.hi > chunk.lo:
      pending.append((chunk, pool.submit(
          csv_chunk.parse, chunk.buf, chunk.lo, chunk.hi,
          rows.index[rows.key], rows.numbers)))
    if len(pending) > THREADS:
      yield pending.popleft()
  yield from pending


def _add_parsed(file: _File, rows: _Rows, chunks: Iterator[_Chunk]
                ) -> tuple[_Chunk, int] | None:
  """Parses the chunks (the data, from line 2 on) on `THREADS` threads and
  adds their rows in file order. Returns the chunk and line from which on
  only the csv module splits the file (None at the end). Raises the error
  of the first chunk that has one: a non-UTF-8 byte, or a short row (unless
  a later byte is not UTF-8)."""
  line = 2
  pool = futures.ThreadPoolExecutor(THREADS)
  try:
    for chunk, parsed in _in_order(pool, chunks, rows):
      try:
        part = parsed.result()
      except csv_chunk.NotFast:
        return chunk, line
      except csv_chunk.NotUtf8 as e:
        raise textfile.utf8_error(
            file.path, bytes(chunk.buf[chunk.lo:chunk.hi]), e.error,
            offset=chunk.offset, line=line) from None
      except csv_chunk.ShortRow as e:
        file.fail(rows.short(line + e.line, e.fields), chunk.offset, line)
      rows.add(part, line)
      line += part.newlines
      file.spare.append(chunk.buf)
  finally:
    pool.shutdown(cancel_futures=True)
  return None


# ------------------------------------------------------------- reading


def _fast_safe(buf: bytearray, lo: int, hi: int) -> bool:
  """Whether numpy can split buf[lo:hi] (a header) as the csv module does."""
  if buf.find(b'"', lo, hi) >= 0:
    return False
  return (buf.find(b'\r', lo, hi) < 0
          or buf.count(b'\r', lo, hi) == buf.count(b'\r\n', lo, hi))


def _header(path: str, buf: bytearray, n: int
            ) -> tuple[list[str] | None, int]:
  """The header's fields from the first chunk buf[:n], and where the data
  starts; fields None for an empty file or a header with quotes."""
  lo = len(textfile.BOM) if buf.startswith(textfile.BOM, 0, n) else 0
  if lo == n:
    return None, n
  end = buf.find(b'\n', lo, n)
  end = n if end < 0 else end + 1
  text = textfile.decode(path, bytes(buf[lo:end]), offset=lo)
  if not _fast_safe(buf, lo, end):
    return None, lo
  text = text.rstrip('\n').removesuffix('\r')
  return ([h.strip() for h in text.split(',')] if text else []), end


def _room(buf: bytearray, lo: int, hi: int, size: int) -> int:
  """The rows that a file of `size` bytes whose data starts with buf[lo:hi]
  holds at that chunk's bytes per line, and 5% more."""
  lines = max(buf.count(b'\n', lo, hi), 1) if hi > lo else 0
  return lines * 21 * (size - lo) // (20 * max(hi - lo, 1))


def _columns(path: str, header: list[str], key: str, numeric: Sequence[str],
             optional: Sequence[str], required: Sequence[str],
             room: int) -> _Rows:
  """The columns to take; raises naming the file and the missing ones."""
  missing = [c for c in required if c not in header]
  if missing:
    raise ValueError(f'{path}: missing column(s) {missing}; found {header}')
  return _Rows(path, header, key,
               list(numeric) + [c for c in optional if c in header], room)


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
  file_bytes = os.path.getsize(path)
  with open(path, 'rb') as f:
    file = _File(path, f, min(chunk_bytes or CHUNK_BYTES, file_bytes + 1))
    chunks = file.chunks(0)
    first = next(chunks, _Chunk(bytearray(), 0, 0, 0))
    header, lo = _header(path, first.buf, first.hi)
    if header is None and lo == first.hi:
      raise ValueError(f'{path}: empty file (no header)')
    if header is None:  # quotes in the header: the csv module throughout
      text = textfile.decode(path, file.rest(lo), offset=lo)
      records = textfile.csv_records(path, text, 1)
      header = [h.strip() for h in next(records, (1, []))[1]]
      rows = _columns(path, header, key, numeric, optional, required, 0)
      rows.add(_slow_part(records, rows), 0)
      return rows.result()
    try:
      rows = _columns(path, header, key, numeric, optional, required,
                      _room(first.buf, lo, first.hi, file_bytes))
    except ValueError as e:
      file.fail(e, lo, 2)
    first = dataclasses.replace(first, lo=lo, offset=lo)
    slow = _add_parsed(file, rows, itertools.chain([first], chunks))
    if slow:
      chunk, line = slow
      text = textfile.decode(path, file.rest(chunk.offset),
                             offset=chunk.offset, line=line)
      rows.add(_slow_part(textfile.csv_records(path, text, line), rows), 0)
    return rows.result()
