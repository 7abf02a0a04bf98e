"""Tables for the study reports: one call writes CSV + Markdown.

`write_table(rows, 'out/table_3_1')` writes `out/table_3_1.csv` (every value
at full precision, so the CSV is the machine-readable record) and
`out/table_3_1.md` (floats formatted with `floatfmt`, an optional title),
and returns the Markdown string so that reports can log it and embed it.
A `Table` carries one table's rows between a study's statistics (which
compute it) and its report writer (which titles and writes it: `write`).
"""
from __future__ import annotations

import csv
import dataclasses
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np


@dataclasses.dataclass
class Table:
  """One table of a report.

  Attributes:
    rows: one dict per row, the CSV record (numbers at full precision).
    display_rows: rows for the Markdown instead of `rows` (e.g. 'mean ±
      std' strings), or None.
    note: '' or why the table could not be computed (the report shows the
      note in its place; the files are still written, without rows).
  """
  rows: list[dict[str, Any]]
  display_rows: list[dict[str, Any]] | None = None
  note: str = ''


def _is_float(v: Any) -> bool:
  return isinstance(v, (float, np.floating))


def mean_std(mean: float, std: float, fmt: str = '.3f') -> str:
  """'0.186 ± 0.212' ('n/a' for a NaN mean; a NaN std is left out)."""
  if mean is None or not math.isfinite(float(mean)):
    return 'n/a'
  if std is None or not math.isfinite(float(std)):
    return format(float(mean), fmt)
  return f'{format(float(mean), fmt)} ± {format(float(std), fmt)}'


def with_ci(estimate: float, low: float, high: float,
            fmt: str = '.3f') -> str:
  """'0.907 [0.889, 0.925]': an estimate and its confidence interval."""
  if estimate is None or not math.isfinite(float(estimate)):
    return 'n/a'
  if not (math.isfinite(float(low)) and math.isfinite(float(high))):
    return format(float(estimate), fmt)
  return (f'{format(float(estimate), fmt)} [{format(float(low), fmt)}, '
          f'{format(float(high), fmt)}]')


def _columns(rows: Sequence[Mapping[str, Any]],
             columns: Sequence[str] | None) -> list[str]:
  if columns is not None:
    return list(columns)
  keys: list[str] = []
  for r in rows:  # union of keys in first-seen order
    keys += [k for k in r if k not in keys]
  return keys


def _csv_cell(v: Any) -> str:
  if v is None:
    return ''
  if _is_float(v):
    return repr(float(v))
  if isinstance(v, (np.integer, np.bool_)):
    return str(v.item())
  return str(v)


def _md_cell(v: Any, floatfmt: str) -> str:
  if v is None:
    return ''
  if _is_float(v):
    return 'n/a' if math.isnan(float(v)) else format(float(v), floatfmt)
  if isinstance(v, (np.integer, np.bool_)):
    v = v.item()
  return str(v).replace('|', '\\|').replace('\n', ' ')


def markdown_table(rows: Sequence[Mapping[str, Any]], *,
                   columns: Sequence[str] | None = None,
                   floatfmt: str = '.4g', title: str | None = None) -> str:
  """Rows of dicts -> a GitHub Markdown table (missing cells left empty)."""
  keys = _columns(rows, columns)
  lines = [f'### {title}', ''] if title else []
  if not keys:
    return '\n'.join(lines + ['(no rows)']) + '\n'
  lines.append('| ' + ' | '.join(keys) + ' |')
  lines.append('|' + '|'.join('---' for _ in keys) + '|')
  for r in rows:
    lines.append('| ' + ' | '.join(_md_cell(r.get(k), floatfmt)
                                   for k in keys) + ' |')
  return '\n'.join(lines) + '\n'


def write_table(rows: Sequence[Mapping[str, Any]], path_stem: str,
                title: str | None = None, floatfmt: str = '.4g', *,
                columns: Sequence[str] | None = None,
                display_rows: Sequence[Mapping[str, Any]] | None = None
                ) -> str:
  """Writes `path_stem.csv` and `path_stem.md`; returns the Markdown.

  Args:
    rows: one dict per row; columns are the union of keys in first-seen
      order unless `columns` fixes them.
    path_stem: output path without extension (folders are created).
    title: a '### title' line above the Markdown table (not in the CSV).
    floatfmt: format spec of floats in the Markdown (the CSV keeps repr).
    columns: the columns and their order (of the CSV).
    display_rows: rows for the Markdown instead of `rows`, e.g. with
      'mean ± std' strings where the CSV keeps the numbers separately.
  """
  keys = _columns(rows, columns)
  os.makedirs(os.path.dirname(os.path.abspath(path_stem)), exist_ok=True)
  with open(path_stem + '.csv', 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(keys)
    for r in rows:
      w.writerow([_csv_cell(r.get(k)) for k in keys])
  if display_rows is None:
    md = markdown_table(rows, columns=keys, floatfmt=floatfmt, title=title)
  else:
    md = markdown_table(display_rows, floatfmt=floatfmt, title=title)
  with open(path_stem + '.md', 'w') as f:
    f.write(md)
  return md


def write(table: Table, path_stem: str, title: str | None = None,
          floatfmt: str = '.4g') -> str:
  """`write_table` of a `Table`; returns its Markdown."""
  return write_table(table.rows, path_stem, title=title, floatfmt=floatfmt,
                     display_rows=table.display_rows)


def read_csv(path: str) -> list[dict[str, str]]:
  """Reads a table written by `write_table` (values as strings)."""
  with open(path, newline='') as f:
    return list(csv.DictReader(f))
