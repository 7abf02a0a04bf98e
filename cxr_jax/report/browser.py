"""The per-case browser of the HTML pages: data, and the script that shows it.

A `Browser` holds every case (a test image of a study, or an input image of
a prediction run) as one row of a table. Its `Column`s are the case itself
(the radiograph with its ground truth: mask or gaze map) and one per model
(its maps: CAM, predicted gaze; its per-image values: probabilities,
localisation or saliency metrics). A `Cell` gives, for each image of its
column, the image's layers (paths relative to the page, stacked bottom to
top: a radiograph, then a map drawn as a transparent layer over it), and for
each value a number, a string or None (undefined: shown 'n/a', sorted last).

The page embeds `to_json()` and `SCRIPT` renders the table: each value name
in the header sorts the cases by it (again: the other direction), so a
reader reaches the failures first; clicking any image (or figure) enlarges
it. Plain JavaScript and CSS, no network access: the page works offline from
the file system.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Sequence
from urllib import parse

import numpy as np


@dataclasses.dataclass
class Column:
  """A column of the table: its title, image labels and value names."""
  title: str
  images: tuple[str, ...] = ()
  values: tuple[str, ...] = ()


@dataclasses.dataclass
class Cell:
  """One column of one case: per image label its layers (relative paths,
  bottom first) or None (no such image), per value name its value."""
  images: list[list[str] | None]
  values: list[Any]


@dataclasses.dataclass
class Browser:
  """Cases x columns. `note` is a sentence shown above the table (what the
  maps explain, which images have none)."""
  columns: list[Column]
  cases: list[tuple[str, list[Cell]]] = dataclasses.field(default_factory=list)
  note: str = ''

  def add(self, case_id: str, cells: Sequence[Cell]) -> None:
    """Appends a case; a cell that does not fit its column is an error naming
    the case and the column."""
    if len(cells) != len(self.columns):
      raise ValueError(f'Case {case_id!r}: {len(cells)} cells for '
                       f'{len(self.columns)} columns.')
    for col, cell in zip(self.columns, cells):
      if (len(cell.images), len(cell.values)) != (len(col.images),
                                                  len(col.values)):
        raise ValueError(
            f'Case {case_id!r}, column {col.title!r}: {len(cell.images)} '
            f'images and {len(cell.values)} values for {col.images} and '
            f'{col.values}.')
    self.cases.append((case_id, list(cells)))

  def to_json(self) -> str:
    """The browser as JSON for the page (image paths as URLs, NaN and
    infinities as null), safe to embed in a <script> element."""
    data = dict(
        note=self.note,
        columns=[dataclasses.asdict(c) for c in self.columns],
        cases=[dict(id=i, cells=[dict(images=[_urls(x) for x in c.images],
                                      values=[_value(v) for v in c.values])
                                 for c in cells])
               for i, cells in self.cases])
    return json.dumps(data, separators=(',', ':')).replace('</', '<\\/')


def _urls(layers: list[str] | None) -> list[str] | None:
  """Relative file paths as relative URLs ('#', '?', '%' and spaces in file
  names escaped)."""
  return None if layers is None else [parse.quote(p) for p in layers]


def _value(v: Any) -> Any:
  """A JSON value: numbers as Python floats or ints (non-finite -> None)."""
  if v is None or isinstance(v, str):
    return v
  if isinstance(v, (bool, np.bool_)):
    return int(v)
  if isinstance(v, (int, np.integer)):
    return int(v)
  x = float(v)
  return x if math.isfinite(x) else None


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;
 color:#1d232a;background:#fff}
main{max-width:1400px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:1.6em}h2{border-bottom:1px solid #d0d7de;padding-bottom:4px;
 margin-top:1.8em}
code{background:#f2f4f6;padding:0 3px;border-radius:3px;font-size:.92em}
table.md{border-collapse:collapse;margin:8px 0 16px;font-size:13px}
table.md th,table.md td{border:1px solid #d0d7de;padding:3px 7px;
 text-align:left;vertical-align:top}
table.md th{background:#f6f8fa}
figure{margin:8px 0 20px}figure img.zoom{max-width:100%;cursor:zoom-in;
 border:1px solid #d0d7de}
figcaption{font-size:12px;color:#57606a}
#cases-table{border-collapse:collapse;font-size:12px}
#cases-table th,#cases-table td{border:1px solid #d0d7de;padding:4px;
 vertical-align:top}
#cases-table thead th{position:sticky;top:0;background:#f6f8fa;z-index:1}
.stack{position:relative;display:inline-block;width:128px;line-height:0;
 cursor:zoom-in;background:#000}
.stack img{width:100%;height:auto;display:block}
.stack img+img{position:absolute;left:0;top:0;height:100%}
.cid{max-width:280px;overflow-wrap:anywhere;font-weight:600}
.shot{display:inline-block;margin:0 4px 2px 0;vertical-align:top}
.shot span{display:block;font-size:11px;color:#57606a}
.vals{margin-top:2px;display:grid;grid-template-columns:auto auto;
 column-gap:6px;font-size:11px}.vals span:nth-child(odd){color:#57606a}
.keys{display:flex;flex-wrap:wrap;gap:0 8px;max-width:300px;
 font-weight:normal;font-size:11px}
.key{border:0;background:none;color:#0969da;cursor:pointer;padding:0;
 font:inherit;text-decoration:underline dotted}
.key.on{font-weight:bold;text-decoration:underline}
#lightbox{display:none;position:fixed;inset:0;background:rgba(0,0,0,.85);
 z-index:10;align-items:center;justify-content:center;flex-direction:column;
 cursor:zoom-out}
#lightbox.open{display:flex}
#lightbox .stack,#lightbox img.zoom{width:auto;max-width:92vw;
 height:min(86vh,92vw);max-height:86vh}
#lightbox .stack img{height:100%;width:auto}
#lightbox p{color:#fff;margin:8px}
"""

SCRIPT = r"""
(function () {
  'use strict';
  var box = document.getElementById('lightbox');
  function openBox(node, caption) {
    box.innerHTML = '';
    var copy = node.cloneNode(true);
    box.appendChild(copy);
    var p = document.createElement('p');
    p.textContent = caption;
    box.appendChild(p);
    box.classList.add('open');
  }
  box.addEventListener('click', function () { box.classList.remove('open'); });
  document.addEventListener('keydown', function (e) {
    if (e.key === 'Escape') { box.classList.remove('open'); }
  });
  document.querySelectorAll('figure img.zoom').forEach(function (img) {
    img.addEventListener('click', function () { openBox(img, img.alt); });
  });
  var holder = document.getElementById('cases-data');
  if (!holder) { return; }
  var data = JSON.parse(holder.textContent);
  var table = document.getElementById('cases-table');
  var status = document.getElementById('cases-status');
  var sortKey = null, sortDir = 1;
  function fmt(v) {
    if (v === null || v === undefined) { return 'n/a'; }
    if (typeof v !== 'number') { return String(v); }
    if (Number.isInteger(v)) { return String(v); }
    return Math.abs(v) >= 1000 ? v.toPrecision(4) : v.toFixed(3);
  }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  var head = el('thead'), hr = el('tr');
  data.columns.forEach(function (col, c) {
    var th = el('th');
    th.appendChild(el('div', '', col.title));
    var keys = th.appendChild(el('div', 'keys'));
    col.values.forEach(function (name, v) {
      var b = el('button', 'key', name);
      b.type = 'button';
      b.dataset.key = c + ':' + v;
      b.title = 'sort by ' + col.title + ' / ' + name;
      b.addEventListener('click', function () { sortBy(c, v, b); });
      keys.appendChild(b);
    });
    hr.appendChild(th);
  });
  head.appendChild(hr);
  table.appendChild(head);
  var body = el('tbody');
  var rows = data.cases.map(function (cs, i) {
    var tr = el('tr');
    tr.dataset.order = i;
    cs.cells.forEach(function (cell, c) {
      var col = data.columns[c], td = el('td');
      if (c === 0) { td.appendChild(el('div', 'cid', cs.id)); }
      cell.images.forEach(function (layers, k) {
        var shot = el('div', 'shot');
        if (layers) {
          var stack = el('span', 'stack zoom');
          layers.forEach(function (src) {
            var img = el('img');
            img.src = src;
            img.alt = col.images[k];
            img.loading = 'lazy';
            stack.appendChild(img);
          });
          stack.addEventListener('click', function () {
            openBox(stack, cs.id + ' \u00b7 ' + col.title + ' \u00b7 ' +
                    col.images[k]);
          });
          shot.appendChild(stack);
        } else {
          shot.appendChild(el('em', '', 'no map'));
        }
        shot.appendChild(el('span', '', col.images[k]));
        td.appendChild(shot);
      });
      var vals = el('div', 'vals');
      cell.values.forEach(function (v, k) {
        vals.appendChild(el('span', '', col.values[k]));
        vals.appendChild(el('span', '', fmt(v)));
      });
      td.appendChild(vals);
      tr.appendChild(td);
    });
    body.appendChild(tr);
    return {tr: tr, cs: cs, i: i};
  });
  table.appendChild(body);
  function value(r) { return r.cs.cells[sortKey[0]].values[sortKey[1]]; }
  function compare(a, b) {
    var x = value(a), y = value(b);
    if (x === null && y === null) { return a.i - b.i; }
    if (x === null) { return 1; }
    if (y === null) { return -1; }
    var d = (typeof x === 'number' && typeof y === 'number') ? x - y :
        String(x).localeCompare(String(y));
    return d !== 0 ? sortDir * d : a.i - b.i;
  }
  function show() {
    var order = rows.slice();
    if (sortKey) { order.sort(compare); }
    order.forEach(function (r) { body.appendChild(r.tr); });
    var what = sortKey ? ', sorted by ' + data.columns[sortKey[0]].title +
        ' / ' + data.columns[sortKey[0]].values[sortKey[1]] +
        (sortDir > 0 ? ' (ascending)' : ' (descending)') +
        ', n/a last' : ', in the order of the data';
    status.textContent = rows.length + ' cases' + what + '.';
    table.dataset.sort = sortKey ? sortKey.join(':') + ':' + sortDir : '';
  }
  function sortBy(c, v, button) {
    if (sortKey && sortKey[0] === c && sortKey[1] === v) {
      sortDir = -sortDir;
    } else {
      sortKey = [c, v];
      sortDir = 1;
    }
    document.querySelectorAll('.key.on').forEach(function (b) {
      b.classList.remove('on');
    });
    button.classList.add('on');
    show();
  }
  if (data.note) { document.getElementById('cases-note').textContent = data.note; }
  show();
})();
"""
