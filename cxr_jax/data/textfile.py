"""Reading the datasets' text files (CSVs) as UTF-8, with errors that say
where a file is broken.

A stray byte from another encoding (e.g. Latin-1 in a hand-edited sheet)
makes Python's decoder raise an error without the file name; here it is a
`ValueError` naming the file, the line and the byte offset, so the user can
open the file at that place.
"""
from __future__ import annotations

import csv
import io
import os
from typing import BinaryIO, Iterator

BOM = b'\xef\xbb\xbf'  # UTF-8 byte order mark, which Excel writes


def utf8_error(path: str | os.PathLike, data: bytes,
               err: UnicodeDecodeError, *, offset: int = 0,
               line: int = 1) -> ValueError:
  """The error for a failed decode of `data`, which starts at byte `offset`
  (and line `line`) of the file."""
  pos = err.start
  line_no = line + data.count(b'\n', 0, pos)
  bad = data[pos:max(err.end, pos + 1)]
  return ValueError(
      f'{path}: line {line_no}, byte offset {offset + pos}: byte(s) '
      f'{bad.hex(" ")} are not valid UTF-8 ({err.reason}); save the file as '
      'UTF-8')


def decode(path: str | os.PathLike, data: bytes, *, offset: int = 0,
           line: int = 1) -> str:
  """`data` (bytes of the file from `offset`, line `line`) as text."""
  try:
    return data.decode('utf-8')
  except UnicodeDecodeError as e:
    raise utf8_error(path, data, e, offset=offset, line=line) from None


def read_text(path: str | os.PathLike) -> str:
  """The whole file as text (UTF-8, a leading byte order mark dropped)."""
  with open(path, 'rb') as f:
    data = f.read()
  skip = len(BOM) if data.startswith(BOM) else 0
  return decode(path, data[skip:], offset=skip)


def line_chunks(f: BinaryIO, size: int, pad: int = 0,
                spare: list[bytearray] | None = None
                ) -> Iterator[tuple[bytearray, int]]:
  """Chunks of whole lines of binary file `f`, from its position on:
  (buf, n), buf[:n] being about `size` bytes of lines (more where a line is
  longer; the file's last line may lack its newline), followed by at least
  `pad` spare bytes of buf. Each chunk is in a buffer of its own: a new one,
  or one that the caller has put in `spare` when it no longer needed it."""
  tail = b''  # an unfinished line, carried to the next buffer
  while True:
    need = max(size, 2 * len(tail)) + pad  # leaves >= size / 2 to read
    buf = spare.pop() if spare else b''
    if len(buf) < need:
      buf = bytearray(need)
    buf[:len(tail)] = tail
    with memoryview(buf) as view:
      got = f.readinto(view[len(tail):len(buf) - pad])
    end = len(tail) + got
    cut = buf.rfind(b'\n', 0, end) + 1 if got else end
    tail = bytes(buf[cut:end])
    if cut:
      yield buf, cut
    if not got:
      return


def check_utf8(path: str | os.PathLike, f: BinaryIO, offset: int = 0,
               line: int = 1, chunk_bytes: int = 1 << 24) -> None:
  """Raises `decode`'s error for the first byte of file `f` (opened as
  `path`) from byte `offset` (line `line`) on that is not UTF-8, reading
  `chunk_bytes` at a time."""
  f.seek(offset)
  for buf, n in line_chunks(f, chunk_bytes):
    data = bytes(buf[:n])
    if not data.isascii():
      decode(path, data, offset=offset, line=line)
    offset, line = offset + n, line + data.count(b'\n')


def csv_records(path: str | os.PathLike, text: str, first_line: int = 1
                ) -> Iterator[tuple[int, list[str]]]:
  """(line number, fields) of each record of CSV `text`, which starts at
  line `first_line` of file `path` (blank lines included, as empty lists).
  The line number is that of the record's last physical line. A record the
  csv module rejects (e.g. a field over its size limit) is a `ValueError`
  naming the file and line."""
  reader = csv.reader(io.StringIO(text, newline=''))
  while True:
    try:
      row = next(reader)
    except StopIteration:
      return
    except csv.Error as e:
      raise ValueError(f'{path}: line {first_line - 1 + reader.line_num}: '
                       f'malformed CSV ({e})') from None
    yield first_line - 1 + reader.line_num, row


def csv_rows(path: str | os.PathLike) -> Iterator[tuple[int, list[str]]]:
  """`csv_records` of the whole file (UTF-8, see `read_text`)."""
  return csv_records(path, read_text(path))
