"""The parts every study's report shares: figure links, the machine line of
its Settings section, and writing `report.md` and `report.html` (the same
text as a self-contained page, with the per-case browser)."""
from __future__ import annotations

import os
from typing import Sequence

from absl import logging

from cxr_jax.report import browser as browser_lib
from cxr_jax.report import html
from cxr_jax.report import machine

REPORT = 'report.md'
REPORT_HTML = 'report.html'


def figure_lines(figs: Sequence[tuple[str, str | None]]) -> list[str]:
  """'### title' and an image link per (title, path); None paths (figures
  that were not drawn) are left out."""
  lines = []
  for title, path in figs:
    if path:
      lines += [f'### {title}', '', f'![{title}]({os.path.basename(path)})',
                '']
  return lines


def machine_line(out_dir: str) -> str:
  """Writes `out_dir/machine.json`; returns the Settings bullet naming the
  machine."""
  return machine.markdown(machine.write(out_dir))


def write_markdown(out_dir: str, lines: Sequence[str]) -> str:
  """Writes `out_dir/report.md` (the lines joined, newline-terminated) and
  logs it; returns its path."""
  path = os.path.join(out_dir, REPORT)
  os.makedirs(out_dir, exist_ok=True)
  text = '\n'.join(lines) + '\n'
  with open(path, 'w') as f:
    f.write(text)
  logging.info('Report written to %s:\n%s', path, text)
  return path


def write_html(out_dir: str, lines: Sequence[str],
               cases: browser_lib.Browser | None) -> str:
  """Writes `out_dir/report.html`: the report's lines (`write_markdown`'s)
  as HTML, titled by their first heading, and the per-case browser `cases`
  (None: none); returns its path."""
  title = next((l.lstrip('# ') for l in lines if l.startswith('# ')),
               'Report')
  path = html.write(os.path.join(out_dir, REPORT_HTML), title,
                    '\n'.join(lines), cases)
  logging.info('HTML report written to %s', path)
  return path
