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
from typing import Iterator

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
