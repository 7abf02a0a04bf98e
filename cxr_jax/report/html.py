"""Self-contained HTML pages: a report's Markdown, its figures and a browser.

`write(path, title, markdown, browser)` turns the Markdown a report writes
(`report.md`: headings, paragraphs, bullet lists, GitHub tables, image and
link syntax, inline code) into HTML, adds the per-case browser
(`report.browser`) and writes one page whose style and script are inline.
Images stay files next to the page (relative paths), so the page opens
offline from the file system, with no network access and nothing to
install. Only the Markdown subset that `report.tables` and the report
writers produce is converted (`markdown_to_html`).
"""
from __future__ import annotations

import html
import os
import re
from typing import Sequence

from cxr_jax.report import browser as browser_lib

_HEADING = re.compile(r'^(#{1,6}) (.*)$')
_IMAGE_LINE = re.compile(r'^!\[([^\]]*)\]\(([^)\s]+)\)$')
_LINK = re.compile(r'!?\[([^\]]*)\]\(([^)\s]+)\)')


def _inline(text: str) -> str:
  """Escapes `text` and converts `code`, [text](href) and ![alt](src)."""
  parts = text.split('`')
  out = []
  for i, part in enumerate(parts):
    if i % 2 and i < len(parts) - 1:  # between a pair of backticks
      out.append(f'<code>{html.escape(part)}</code>')
      continue
    if i % 2:  # an unpaired backtick
      part = '`' + part
    pos, chunk = 0, []
    for m in _LINK.finditer(part):
      chunk.append(html.escape(part[pos:m.start()]))
      label, href = html.escape(m.group(1)), html.escape(m.group(2))
      chunk.append(f'<img src="{href}" alt="{label}">'
                   if m.group(0).startswith('!') else
                   f'<a href="{href}">{label}</a>')
      pos = m.end()
    chunk.append(html.escape(part[pos:]))
    out.append(''.join(chunk))
  return ''.join(out)


def _cells(line: str) -> list[str]:
  """The cells of a '| a | b |' row; '\\|' is a literal bar."""
  body = line.strip()
  body = body[1:] if body.startswith('|') else body
  body = body[:-1] if body.endswith('|') and not body.endswith('\\|') else body
  return [c.strip().replace('\\|', '|') for c in re.split(r'(?<!\\)\|', body)]


def _table(lines: Sequence[str]) -> str:
  """A Markdown table (header, separator, rows) as <table class="md">."""
  head = ''.join(f'<th>{_inline(c)}</th>' for c in _cells(lines[0]))
  rows = ''.join(
      '<tr>' + ''.join(f'<td>{_inline(c)}</td>' for c in _cells(r)) + '</tr>'
      for r in lines[2:])
  return (f'<table class="md"><thead><tr>{head}</tr></thead>'
          f'<tbody>{rows}</tbody></table>')


def _slug(text: str, used: set[str]) -> str:
  base = re.sub(r'[^a-z0-9]+', '-', text.lower()).strip('-') or 'section'
  slug, k = base, 1
  while slug in used:
    k += 1
    slug = f'{base}-{k}'
  used.add(slug)
  return slug


def _block(lines: list[str], i: int, used: set[str]) -> tuple[str, int]:
  """The HTML of the block starting at line i, and the next line's index."""
  line = lines[i]
  head = _HEADING.match(line)
  if head:
    n = len(head.group(1))
    return (f'<h{n} id="{_slug(head.group(2), used)}">'
            f'{_inline(head.group(2))}</h{n}>'), i + 1
  image = _IMAGE_LINE.match(line.strip())
  if image:
    alt, src = html.escape(image.group(1)), html.escape(image.group(2))
    return (f'<figure><img class="zoom" src="{src}" alt="{alt}">'
            f'<figcaption>{alt}</figcaption></figure>'), i + 1
  j = i
  while j < len(lines) and lines[j].startswith('|'):
    j += 1
  if j - i >= 2 and set(lines[i + 1].replace('|', '').strip()) <= set('-: '):
    return _table(lines[i:j]), j
  j = i
  if line.startswith('- '):
    items = []
    while j < len(lines) and lines[j].startswith('- '):
      items.append(f'<li>{_inline(lines[j][2:])}</li>')
      j += 1
    return f'<ul>{"".join(items)}</ul>', j
  para = []
  while j < len(lines) and lines[j].strip() and (j == i or not (
      _HEADING.match(lines[j]) or lines[j].startswith(('|', '- ', '!['))
  )):
    para.append(lines[j].strip())
    j += 1
  return f'<p>{_inline(" ".join(para))}</p>', j


def markdown_to_html(text: str) -> str:
  """The report Markdown subset as HTML (see the module docstring)."""
  lines = text.splitlines()
  out, used, i = [], set(), 0
  while i < len(lines):
    if not lines[i].strip():
      i += 1
      continue
    block, i = _block(lines, i, used)
    out.append(block)
  return '\n'.join(out)


def _cases_section(browser: browser_lib.Browser) -> str:
  return ('<h2 id="cases">Cases</h2>\n<p id="cases-note"></p>\n'
          '<p id="cases-status">The case browser needs JavaScript.</p>\n'
          '<table id="cases-table"></table>\n'
          '<script type="application/json" id="cases-data">'
          f'{browser.to_json()}</script>')


def page(title: str, markdown: str,
         browser: browser_lib.Browser | None = None) -> str:
  """A whole HTML document: the Markdown converted, then the case browser."""
  body = markdown_to_html(markdown)
  if browser is not None:
    body += '\n' + _cases_section(browser)
  return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
          '<meta name="viewport" content="width=device-width,'
          'initial-scale=1">\n'
          f'<title>{html.escape(title)}</title>\n'
          f'<style>{browser_lib.STYLE}</style></head>\n<body><main>\n'
          f'{body}\n</main>\n<div id="lightbox"></div>\n'
          f'<script>{browser_lib.SCRIPT}</script>\n</body></html>\n')


def write(path: str, title: str, markdown: str,
          browser: browser_lib.Browser | None = None) -> str:
  """Writes `page(...)` to `path` (UTF-8); returns `path`."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    f.write(page(title, markdown, browser))
  return path
