"""What a prediction run writes into its output folder.

  predictions.csv   one row per predicted file: `file` (its path), `p_<class>`
                    for each class, `predicted_class`, `run` (the run
                    folder) and `config_hash` (the run's config, as the data
                    cache keys its arrays: 12 hex digits of sha256 over the
                    sorted-key JSON); a run without classes has no class
                    columns
  errors.csv        `file`, `reason` of every input that could not be
                    predicted (the header only when all were)
  overlays/NAME_input.png   the image as the model saw it (display-scaled)
  overlays/NAME_MAP.png     each map over it: every CAM method (in [0, 1])
                            and `gaze`, the predicted gaze map (a
                            distribution over the pixels, shown scaled to
                            its maximum)
  maps/NAME_MAP.npy         the raw (H, W) float32 maps (`save_maps`)
  index.html        the settings, the errors and a browser of every input:
                    its overlays and probabilities, sortable

NAME is the input's name (`inputs.Input.name`) without its extension.
"""
from __future__ import annotations

import csv
import os
from typing import Mapping, Sequence

import numpy as np
from absl import logging

from cxr_jax.data import cache
import cxr_jax.predict.inputs as inputs_lib
import cxr_jax.predict.model as model_lib
from cxr_jax.report import browser
from cxr_jax.report import html
from cxr_jax.report import images
from cxr_jax.report import tables

PREDICTIONS = 'predictions.csv'
ERRORS = 'errors.csv'
INDEX = 'index.html'
OVERLAYS = 'overlays'
MAPS = 'maps'


def config_hash(config) -> str:
  """12 hex digits of sha256 over the config's sorted-key JSON."""
  return cache.key_hash(config.to_dict())


class Writer:
  """Writes a prediction run's outputs as the images are predicted."""

  def __init__(self, out_dir: str, run, heads: model_lib.Heads, *,
               save_maps: bool):
    self.out_dir, self.run, self.heads = out_dir, run, heads
    self.save_maps = save_maps
    self.hash = config_hash(run.config)
    self.errors: list[inputs_lib.BadInputError] = []
    self.count = 0
    os.makedirs(out_dir, exist_ok=True)
    self._file = open(os.path.join(out_dir, PREDICTIONS), 'w', newline='')
    self._csv = csv.writer(self._file)
    probs = [f'p_{c}' for c in heads.classes]
    self._csv.writerow(['file'] + probs + ['predicted_class'] * bool(probs) +
                       ['run', 'config_hash'])
    self.browser = browser.Browser([
        browser.Column('Input', ('input',), ()),
        browser.Column(
            f'{os.path.basename(run.workdir)} ({run.network})',
            tuple('predicted gaze' if m == model_lib.GAZE else m
                  for m in heads.maps),
            tuple(probs) + ('predicted',) * bool(probs))])

  def _path(self, folder: str, name: str, suffix: str) -> tuple[str, str]:
    """(absolute path, path relative to the output folder)."""
    stem = os.path.splitext(name)[0]
    rel = f'{folder}/{stem}_{suffix}'
    return os.path.join(self.out_dir, *rel.split('/')), rel

  def add(self, item: inputs_lib.Input, image_HW1: np.ndarray,
          res: Mapping[str, np.ndarray]) -> None:
    """One predicted image: its overlays (and maps), CSV row, case."""
    img = image_HW1[..., 0]
    path, input_rel = self._path(OVERLAYS, item.name, 'input.png')
    images.grey(path, img)
    shots = []
    for m in self.heads.maps:
      raw = np.asarray(res[m], np.float32)
      path, rel = self._path(OVERLAYS, item.name, f'{m}.png')
      shown = images.peak_scaled(raw) if m == model_lib.GAZE else raw
      images.overlay(path, img, shown)
      shots.append([rel])
      if self.save_maps:
        path, _ = self._path(MAPS, item.name, f'{m}.npy')
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.save(path, raw)
    values = []
    if self.heads.classes:
      probs = np.asarray(res['probs'], np.float64)
      values = list(probs) + [self.heads.classes[int(np.argmax(probs))]]
    self._csv.writerow([item.path] + [repr(float(v)) for v in values[:-1]] +
                       values[-1:] + [self.run.workdir, self.hash])
    self.browser.add(item.name, [browser.Cell([[input_rel]], []),
                                 browser.Cell(shots, values)])
    self.count += 1

  def error(self, err: inputs_lib.BadInputError) -> None:
    """An input that could not be predicted: logged at once, listed in
    errors.csv and index.html."""
    logging.warning('Cannot predict %s: %s', err.path, err.reason)
    self.errors.append(err)

  def close(self, lines: Sequence[str]) -> dict[str, str]:
    """Writes errors.csv and index.html (`lines`: its Markdown before the
    errors); returns the output paths by name."""
    self._file.close()
    rows = [dict(file=e.path, reason=e.reason) for e in self.errors]
    with open(os.path.join(self.out_dir, ERRORS), 'w', newline='') as f:
      w = csv.writer(f)
      w.writerow(['file', 'reason'])
      w.writerows([r['file'], r['reason']] for r in rows)
    md = list(lines)
    if rows:
      md += ['## Inputs that could not be predicted', '',
             tables.markdown_table(rows)]
    title = f'Predictions of {self.run.network}'
    index = html.write(os.path.join(self.out_dir, INDEX), title,
                       '\n'.join([f'# {title}', ''] + md), self.browser)
    return {PREDICTIONS: os.path.join(self.out_dir, PREDICTIONS),
            ERRORS: os.path.join(self.out_dir, ERRORS), INDEX: index}
