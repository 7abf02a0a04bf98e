"""Figures for the study reports (matplotlib, 'Agg' backend, PNG files).

- `bar_chart`: one bar per group with error bars (Fig 3.2, EHR AUC).
- `image_grid`: rows x columns of images, each optionally overlaid with a
  heatmap and outlined with a mask contour (Fig 3.1 heatmaps per model, the
  CAM-method comparison, Study B's Fig 4.2 qualitative grid).

Pixel sizes are deterministic (no tight bounding box): `image_grid` writes
`n_cols * cell_inches * dpi` x `(n_rows * cell_inches + header) * dpi`
pixels (`grid_size_px`), `bar_chart` writes `figsize * dpi`.
"""
from __future__ import annotations

import os
import textwrap
from typing import Any, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

LABEL_INCHES = 0.35  # header strip of column labels (and title)
TITLE_INCHES = 0.35


def _save(fig, path: str, dpi: int) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=dpi)
  plt.close(fig)
  return path


def bar_chart(labels: Sequence[str], values: Sequence[float], *, path: str,
              errors: Any = None, title: str = '', ylabel: str = '',
              colors: Sequence[str] | None = None,
              figsize: tuple[float, float] = (8.0, 4.5), dpi: int = 100,
              ylim: tuple[float, float] | None = None,
              annotate: bool = True) -> str:
  """A bar per label with optional error bars; returns `path`.

  `errors` is None, (N,) symmetric half-widths or (2, N) (below, above)
  distances from the value, as `matplotlib.bar(yerr=...)`. NaN values are
  drawn as missing bars. `annotate` writes each value above its bar.
  """
  vals = np.asarray(values, np.float64)
  x = np.arange(len(labels))
  fig, ax = plt.subplots(figsize=figsize)
  yerr = None if errors is None else np.asarray(errors, np.float64)
  ax.bar(x, np.nan_to_num(vals), yerr=yerr, capsize=4, color=colors,
         edgecolor='black', linewidth=0.5)
  ax.set_xticks(x)
  ax.set_xticklabels(labels, rotation=30 if len(labels) > 5 else 0,
                     ha='right' if len(labels) > 5 else 'center')
  if ylabel:
    ax.set_ylabel(ylabel)
  if title:  # wrapped to the figure's width
    ax.set_title('\n'.join(textwrap.wrap(title, int(figsize[0] * 11))),
                 fontsize=9)
  if ylim is not None:
    ax.set_ylim(*ylim)
  if annotate:
    for xi, v in zip(x, vals):
      if np.isfinite(v):
        ax.annotate(f'{v:.3f}', (xi, v), textcoords='offset points',
                    xytext=(0, 2), ha='center', va='bottom', fontsize=7)
  ax.grid(axis='y', alpha=0.3)
  fig.tight_layout()
  return _save(fig, path, dpi)


def grid_size_px(n_rows: int, n_cols: int, *, cell_inches: float = 2.0,
                 dpi: int = 100, title: str = '') -> tuple[int, int]:
  """(width, height) in pixels of the PNG `image_grid` writes."""
  w = n_cols * cell_inches
  h = n_rows * cell_inches + LABEL_INCHES + (TITLE_INCHES if title else 0.0)
  return int(round(w * dpi)), int(round(h * dpi))


def _per_col(value: Any, n_cols: int) -> list[Any]:
  if isinstance(value, (list, tuple)):
    if len(value) != n_cols:
      raise ValueError(f'Expected {n_cols} per-column values, got {value!r}.')
    return list(value)
  return [value] * n_cols


def _nested(name: str, cells: Any, n_rows: int, n_cols: int) -> list[list]:
  if len(cells) != n_rows or any(
      not isinstance(r, (list, tuple)) or len(r) != n_cols for r in cells):
    raise ValueError(f'`{name}` must be {n_rows} rows x {n_cols} columns '
                     '(None for an empty cell), like `rows`.')
  return [list(r) for r in cells]


def _layout(rows: list[list], overlays: Any, contours: Any
            ) -> tuple[list[list], list[list], list[list]]:
  """(base, overlay, contour) cell layouts from the flexible arguments."""
  n_rows, n_cols = len(rows), len(rows[0])
  base = _nested('rows', rows, n_rows, n_cols)
  over = [[None] * n_cols for _ in range(n_rows)]
  if overlays is not None:
    if len(overlays) == n_cols and all(
        isinstance(o, (bool, np.bool_)) for o in overlays):
      for j, flag in enumerate(overlays):  # column j: heat over column 0
        if flag:
          if j == 0:
            raise ValueError('overlays[0] = True: column 0 holds the base '
                             'image the other columns are drawn over.')
          for i in range(n_rows):
            over[i][j], base[i][j] = base[i][j], base[i][0]
    else:
      over = _nested('overlays', overlays, n_rows, n_cols)
  if contours is None:
    cont = [[None] * n_cols for _ in range(n_rows)]
  elif len(contours) == n_rows and all(
      c is None or not isinstance(c, (list, tuple)) for c in contours):
    cont = [[c] * n_cols for c in contours]  # one mask per row, every cell
  else:
    cont = _nested('contours', contours, n_rows, n_cols)
  return base, over, cont


def _grid_axes(n_rows: int, n_cols: int, *, cell_inches: float, dpi: int,
               title: str):
  """A figure of `grid_size_px` pixels: header strip (and title), then
  n_rows x n_cols axes edge to edge."""
  w_px, h_px = grid_size_px(n_rows, n_cols, cell_inches=cell_inches, dpi=dpi,
                            title=title)
  fig = plt.figure(figsize=(w_px / dpi, h_px / dpi))
  top_in = LABEL_INCHES + (TITLE_INCHES if title else 0.0)
  fig.subplots_adjust(left=0.0, right=1.0, bottom=0.0,
                      top=1.0 - top_in * dpi / h_px, wspace=0.04, hspace=0.04)
  if title:
    fig.suptitle(title, fontsize=10, y=1.0 - 0.5 * TITLE_INCHES * dpi / h_px,
                 va='center')
  return fig, fig.subplots(n_rows, n_cols, squeeze=False)


def _draw_cell(ax, img, heat, mask, *, cmap: str, overlay: dict,
               contour_color: str) -> None:
  """One grid cell: the image, the heatmap over it, the mask's outline."""
  ax.set_xticks([])
  ax.set_yticks([])
  for s in ax.spines.values():
    s.set_visible(False)
  if img is None:
    return
  img = np.asarray(img, np.float32)
  img = img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img
  ax.imshow(img, cmap=cmap, interpolation='nearest')
  if heat is not None:
    ax.imshow(np.asarray(heat, np.float32), interpolation='bilinear',
              extent=(-0.5, img.shape[1] - 0.5, img.shape[0] - 0.5, -0.5),
              **overlay)
  if mask is not None:
    m = np.asarray(mask, np.float32)
    if m.max() > 0.5 > m.min():
      ax.contour(m, levels=[0.5], colors=contour_color, linewidths=1.0)


def image_grid(rows: Sequence[Sequence[np.ndarray | None]], *, path: str,
               row_labels: Sequence[str] = (), col_labels: Sequence[str] = (),
               overlays: Any = None, contours: Any = None,
               cmap: str | Sequence[str] = 'gray',
               overlay_cmap: str = 'jet', overlay_alpha: float = 0.45,
               overlay_range: tuple[float, float] | None = (0.0, 1.0),
               contour_color: str = 'lime', title: str = '',
               cell_inches: float = 2.0, dpi: int = 100) -> str:
  """A grid of 2-D images with optional heatmap overlays and mask outlines.

  Args:
    rows: `rows[i][j]` is the (H, W) (or (H, W, 1)) array of cell (i, j) or
      None for an empty cell; every row has the same number of columns.
    path: output PNG.
    row_labels, col_labels: text in each row's first cell / above each column.
    overlays: None; or one bool per column: True = the column's arrays are
      heatmaps drawn over the row's column-0 image (e.g.
      `[False] + [True] * k` for an image followed by k heatmaps); or a
      rows x columns layout of heatmaps (or None) drawn over `rows[i][j]`.
      Heatmaps use `overlay_cmap` at `overlay_alpha` and are stretched to the
      cell's image if their shape differs.
    contours: None; or one mask (or None) per row, outlined in every cell of
      the row; or a rows x columns layout of masks. Outlines are
      `ax.contour(mask, levels=[0.5])` in `contour_color`.
    cmap: colormap of the base images, one for all or one per column (e.g.
      'gray' for the CXR column, 'hot' for a gaze-map column).
    overlay_range: (vmin, vmax) of the overlays; None = each map's range.
    title: suptitle (adds a strip at the top).
    cell_inches, dpi: the PNG is `grid_size_px(...)` pixels.

  Returns:
    `path`.
  """
  rows = [list(r) for r in rows]
  if not rows or not rows[0]:
    raise ValueError('image_grid needs at least one row and one column.')
  n_rows, n_cols = len(rows), len(rows[0])
  base, over, cont = _layout(rows, overlays, contours)
  cmaps = _per_col(cmap, n_cols)
  fig, axes = _grid_axes(n_rows, n_cols, cell_inches=cell_inches, dpi=dpi,
                         title=title)
  overlay = dict(cmap=overlay_cmap, alpha=overlay_alpha,
                 vmin=overlay_range[0] if overlay_range else None,
                 vmax=overlay_range[1] if overlay_range else None)
  for i in range(n_rows):
    for j in range(n_cols):
      ax = axes[i][j]
      _draw_cell(ax, base[i][j], over[i][j], cont[i][j], cmap=cmaps[j],
                 overlay=overlay, contour_color=contour_color)
      if i == 0 and j < len(col_labels):
        ax.set_title(col_labels[j], fontsize=9)
      if j == 0 and i < len(row_labels):
        ax.text(0.02, 0.98, row_labels[i], transform=ax.transAxes,
                fontsize=7, color='white', va='top', ha='left',
                bbox=dict(facecolor='black', alpha=0.5, pad=1, lw=0))
  return _save(fig, path, dpi)
