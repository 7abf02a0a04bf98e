"""The parts every study's `report.md` shares: figure links, the machine
line of its Settings section, and writing the file."""
from __future__ import annotations

import os
from typing import Sequence

from absl import logging

from cxr_jax.report import machine

REPORT = 'report.md'


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
