"""Study B, write: its tables, Fig 4.2 and `report.md`.

`write(out_dir, ...)` takes the tables `studies.cooperative_statistics`
computed and the predicted maps and Grad-CAMs of `studies.
cooperative_evaluate` (for the figure), writes every table as CSV +
Markdown, draws Fig 4.2 and composes `report.md` (settings, tables, tests,
figure), `machine.json` and `report.html`: the same report as a page, with a
browser of every test image (`cases`: its gaze map, each classifier's
probabilities, Grad-CAM and its scores against gaze, each saliency model's
predicted map and metrics). The figure names the network each column ran.
"""
from __future__ import annotations

import os
import time
from typing import Any, Mapping, Sequence

import numpy as np

from cxr_jax.report import browser
from cxr_jax.report import document
from cxr_jax.report import figures
from cxr_jax.report import images
from cxr_jax.report import tables
from cxr_jax.studies import cooperative_evaluate as evaluate

CLASS_NAMES = ('Normal', 'CHF', 'pneumonia')
CASE_SIDE = 320  # longest side in px of the case browser's images
CASE_NOTE = (
    'Grad-CAM: the true class. Predicted gaze: each saliency model\'s '
    'distribution, scaled to its maximum. p_true: the probability of the '
    'true class; sort by it (ascending) for the worst misclassifications, by '
    'kl (descending) for the predicted maps furthest from the gaze.')
INTRO = (
    'Every model is evaluated from its best checkpoint (validation loss). '
    "Saliency metrics: the authors' definitions (KL without epsilon, HS = "
    'sum of minima of the sum-normalised maps), plus the MIT benchmark\'s KL '
    'and SIM; NSS and AUC-Judd use the fixation maps. Thesis columns are the '
    'published numbers on the real eye-gaze data, for reference only.')
KL_NOTE = (
    'KL direction: `kl` (and `kl_mit`) is KL(gt ‖ pred) = Σ G log(G / P), '
    "G the gaze distribution and P the prediction, as in the authors' code "
    "and the MIT benchmark, so it is comparable with the thesis's Table 4.2. "
    "Chapter 2's formula read literally (P the predicted distribution, Q the "
    'ground truth) is KL(pred ‖ gt): `kl_pred_gt_mit` gives it with the MIT '
    'epsilon, Σ P log(ε + P / (G + ε)), ε = 2.2204e-16, so that predicted '
    'mass on a pixel without gaze (G = 0) stays finite. `n` counts the test '
    'images; a cell whose metric is undefined on some of them (no gaze: KL, '
    'CC, HS; no fixations: NSS, AUC-Judd) shows its own count (n=K), and '
    "the CSV has every metric's count as `n_<metric>`.")


def _gaze_lines(stages: Mapping[str, Any]) -> list[str]:
  """The gaze recipe each model trained and was scored with; GazeGNN's
  paper builds its gaze input from duration-weighted fixations."""
  by: dict[str, list[str]] = {}
  for name, s in stages.items():
    d = s.data
    key = (f'`{d.gaze_recipe}`' +
           (f' (sigma {d.gaze_sigma} px)' if d.gaze_sigma else ''))
    by.setdefault(key, []).append(name)
  which = (f'{next(iter(by))} for every model' if len(by) == 1 else
           '; '.join(f'{k} for {", ".join(v)}' for k, v in by.items()))
  lines = ["- Gaze maps (the saliency models' targets, GazeGNN's input): "
           f'recipe {which}.']
  if 'gazegnn' in stages:
    recipe = stages['gazegnn'].data.gaze_recipe
    lines.append(
        f'- GazeGNN took the `{recipe}` map as its gaze input; its paper '
        'uses duration-weighted fixations (recipe `duration`)' +
        (', as here.' if recipe == 'duration' else
         ', so its row is not that paper\'s recipe.'))
  return lines


def _model_lines(stages: Mapping[str, Any]) -> list[str]:
  """The full model's injection, stage 3's schedule, initial weights."""
  lines = []
  if 'stage2' in stages:
    m = stages['stage2'].model
    lines.append(
        f'- Full model: DenseNet feature `{m.densenet_feature}` injected '
        'into the decoder by ' + ('a zero-initialised learned gate (ours)'
                                  if m.inject_gate else
                                  "plain concatenation (the authors' code)")
        + '.')
  if 'stage3' in stages:
    s3 = stages['stage3']
    trained = [f'`{p}`' for p, o in s3.schedule if o is not None]
    lines.append(f'- Stage 3: loss `{s3.loss.name}`, parameters trained: '
                 f'{", ".join(trained)} (the thesis: the classifier, '
                 '`fusion/.*`, only).')
  if stages:
    first, s = next(iter(stages.items()))
    lines.append(f'- Initial weights of `{first}`: '
                 f'{s.init.path or "none (trained from scratch)"}.')
  return lines


def settings(config, stages: Mapping[str, Any], machine_line: str
             ) -> list[str]:
  """The Settings section's bullets: data, networks, gaze recipes, the full
  model's settings where it was trained, the machine."""
  d = config.data
  nets = ', '.join(f'{n} = `{s.model.name}`' for n, s in stages.items())
  return [f'- Data: {d.root or "phantom (synthetic eye-gaze dataset)"}, '
          f'{tuple(d.image_size)} px (H, W); gaze recipe `{d.gaze_recipe}`'
          f'{f" (sigma {d.gaze_sigma} px)" if d.gaze_sigma else ""}; split '
          f'`{d.split}` (seed {d.split_seed}).',
          f'- Networks: {nets}.', *_gaze_lines(stages), *_model_lines(stages),
          f'- Bootstrap replicates (AUC 95% CI): {config.bootstrap}.',
          machine_line]


def fig_4_2(path: str, test, columns: Sequence[tuple[str, np.ndarray]],
            num: int = 4) -> str | None:
  """CXR, gaze map, then each (label, (N, H, W) map) column per patient:
  one patient per class first, then the next ones."""
  if not columns:
    return None
  labels = np.asarray(test['label'])
  order = [int(np.flatnonzero(labels == k)[0]) for k in np.unique(labels)]
  order += [i for i in range(len(labels)) if i not in order]
  rows = []
  for i in order[:num]:
    row = [np.asarray(test['image'][i])[..., 0], np.asarray(test['gaze'][i])]
    # Predicted distributions sum to 1 over pixels: scale each map to a max
    # of 1 for display, as the gaze map is.
    row += [np.asarray(m[i]) / max(float(np.max(m[i])), 1e-12)
            for _, m in columns]
    rows.append(row)
  return figures.image_grid(
      rows, row_labels=[CLASS_NAMES[int(labels[i])] for i in order[:num]],
      col_labels=['CXR', 'Gaze map'] + [c for c, _ in columns],
      overlays=[False] + [True] * (len(columns) + 1), path=path)


def _stage_column(name: str, r: evaluate.StageResult) -> browser.Column:
  imgs, vals = (), ()
  if r.classified is not None:
    imgs += ('Grad-CAM',)
    vals += ('p_true', 'pred') + tuple(f'cam_{k}' for k in
                                       evaluate.CAM_METRICS)
  if r.saliency is not None:
    imgs += ('predicted gaze',)
    vals += evaluate.SALIENCY_METRICS
  label = name if name == r.network else f'{name} ({r.network})'
  return browser.Column(label, imgs, vals)


def _stage_cell(files: images.CaseImages, name: str, r: evaluate.StageResult,
                i: int, index: int, base: str) -> browser.Cell:
  """One model's cell of test image i: maps over the CXR, values."""
  imgs, vals = [], []
  if r.classified is not None:
    probs = np.asarray(r.classified['probs'][i])
    imgs.append([base, files.layer(f'{index}_{name}_cam', r.cams[i])])
    vals += [probs[int(r.classified['label'][i])],
             CLASS_NAMES[int(np.argmax(probs))]]
    vals += [r.cam_scores[k][i] for k in evaluate.CAM_METRICS]
  if r.saliency is not None:
    pred = images.peak_scaled(r.saliency['pred'][i])
    imgs.append([base, files.layer(f'{index}_{name}_gaze', pred)])
    vals += [r.saliency[k][i] for k in evaluate.SALIENCY_METRICS]
  return browser.Cell(imgs, vals)


def cases(out_dir: str, results: Mapping[str, evaluate.StageResult], test
          ) -> browser.Browser:
  """Every test image (split order) with its gaze map and each model's
  maps and values; the images go to `out_dir/cases/`."""
  files = images.CaseImages(out_dir, max_side=CASE_SIDE)
  cols = [browser.Column('Case', ('CXR', 'gaze map'), ('index', 'label'))]
  cols += [_stage_column(n, r) for n, r in results.items()]
  out = browser.Browser(cols, note=CASE_NOTE)
  for i, index in enumerate(np.asarray(test['index'])):
    base = files.grey(str(index), np.asarray(test['image'][i])[..., 0])
    gaze = np.asarray(test['gaze'][i])
    gt = [base, files.layer(f'{index}_gaze', gaze)] if gaze.max() > 0 else None
    cells = [browser.Cell([[base], gt], [
        int(index), CLASS_NAMES[int(test['label'][i])]])]
    cells += [_stage_cell(files, n, r, i, int(index), base)
              for n, r in results.items()]
    out.add(str(index), cells)
  return out


def _section(title: str, md: str, *text: str) -> list[str]:
  return [f'## {title}', '', *sum(([t, ''] for t in text), []), md, '']


def write(out_dir: str, config, stages: Mapping[str, Any], *,
          tabs: Mapping[str, tables.Table], test,
          fig_columns: Sequence[tuple[str, np.ndarray]], t0: float,
          results: Mapping[str, evaluate.StageResult] | None = None) -> str:
  """Writes every table, Fig 4.2, `machine.json`, `report.md` and
  `report.html`, whose case browser shows `results` (None: no browser)."""
  w = lambda stem: tables.write(tabs[stem], os.path.join(out_dir, stem))
  md = ['# Study B report: cooperative multi-task UNet', '',
        f'Test split: {len(test["label"])} images (classes Normal, CHF, pneumonia). '
        + INTRO, '', '## Settings', '',
        *settings(config, stages, document.machine_line(out_dir)), '']
  if tabs['table_4_1'].rows:
    md += _section('Table 4.1: classification', w('table_4_1'))
  if tabs['table_4_2'].rows:
    md += _section('Table 4.2: saliency prediction (mean ± sample std, '
                   'ddof = 1)', w('table_4_2'), KL_NOTE)
    w('per_image_saliency')
  if tabs['ttests'].rows:
    md += _section('Paired t-tests (two-sided, p < 0.05)', w('ttests'))
  if tabs['cam_vs_gaze'].rows:
    md += _section(
        'Beyond the thesis: Grad-CAM of each classifier vs gaze maps',
        w('cam_vs_gaze'), 'KL (MIT, with epsilon), CC and HS of the '
        'true-class Grad-CAM (normalised to a distribution) against the '
        "radiologists' gaze map; compare with the saliency models in Table "
        '4.2.')
  grid = fig_4_2(os.path.join(out_dir, 'fig_4_2_grid.png'), test,
                 fig_columns)
  if grid:
    md += ['## Fig 4.2', '', f'![qualitative grid]({os.path.basename(grid)})',
           '']
  md += [f'Report written in {time.time() - t0:.1f} s.']
  document.write_html(out_dir, md, None if results is None else
                      cases(out_dir, results, test))
  return document.write_markdown(out_dir, md)
