"""Study A, write: its tables, figures and `report.md`.

`write(out_dir, ...)` takes what `studies.gradcam_statistics` computed (the
`Table`s keyed by file stem) and the per-model results of
`studies.gradcam_evaluate` (for the figures' maps), titles and writes every
table as CSV + Markdown, draws Fig 3.1, Fig 3.2 and the CAM-method grid, and
composes `report.md` (summary, settings, tables, statistics, figures, wall
times), `machine.json` and `report.html`: the same report as a page, with
a browser of every test image (`cases`: its mask, each model's
probabilities, and for the images the CAM metrics score, each model's map
and per-image metrics). Figures and tables name both the thesis model of
each stage and the network that was trained (`vgg16 (vgg_tiny)`).
"""
from __future__ import annotations

import os
import time
from typing import Any, Mapping, Sequence

import numpy as np

from cxr_jax.data import siim
from cxr_jax.evaluators import cam_localization as cam_loc
from cxr_jax.report import browser
from cxr_jax.report import document
from cxr_jax.report import figures
from cxr_jax.report import images
from cxr_jax.report import tables

FAMILY_COLORS = {'vgg': '#4C72B0', 'resnet': '#55A868', 'vit': '#C44E52'}
STATISTICS = ('anova_diff', 'tukey_diff', 'anova_ehr', 'tukey_ehr')
REPEATED = ('friedman_diff', 'wilcoxon_diff', 'friedman_ehr', 'wilcoxon_ehr')
REPEATED_TEXT = (
    'Repeated measures: the same images under every model. The one-way '
    "ANOVA and Tukey HSD above (the thesis's analysis, the primary one) treat "
    "the models' per-image values as independent samples; these "
    'non-parametric tests pair them by image instead: a Friedman test across '
    'all models (images finite under every model; needs 3 models) and a '
    'Wilcoxon signed-rank test per pair (images finite under both), p-values '
    "adjusted with Holm's step-down method.")
CASE_SIDE = 256  # longest side in px of the case browser's images
CASE_VALUES = ('p_pneumothorax', 'p_true', 'pred') + cam_loc.METRICS


def network_label(stage: str, network: str) -> str:
  """'vgg16 (vgg_tiny)': the stage and the network trained, or the one name
  when they agree."""
  return stage if stage == network else f'{stage} ({network})'


def _family_color(network: str) -> str:
  return next((c for f, c in FAMILY_COLORS.items()
               if network.startswith(f)), 'gray')


def titles(cam) -> dict[str, tuple[str, str]]:
  """stem -> (Markdown title, float format) of every table but per_image."""
  tag = (f'{cam.method}, targets={cam.targets}, EHR variant '
         f'{cam.ehr_variant!r}')
  ehr = cam.ehr_variant
  wx = 'median_diff = median(a - b); p_holm: Holm'
  return {
      'table_3_1': ('Table 3.1: test-set classification (95% CI: '
                    f'class-stratified bootstrap, {cam.bootstrap} '
                    'replicates)', '.4g'),
      'table_3_2': (f'Table 3.2: Diff_GradCAM ({tag}; std = sample std, '
                    'ddof = 1)', '.3f'),
      'localisation': ('Localisation metrics (mean ± sample std; '
                       f'{tag})', '.4g'),
      'anova_diff': ('One-way ANOVA, Diff_GradCAM', '.4g'),
      'tukey_diff': ('Tukey HSD, Diff_GradCAM (meandiff = mean(b) - '
                     'mean(a))', '.4g'),
      'anova_ehr': (f'One-way ANOVA, EHR AUC ({ehr})', '.4g'),
      'tukey_ehr': (f'Tukey HSD, EHR AUC ({ehr})', '.4g'),
      'friedman_diff': ('Supplementary: Friedman test, Diff_GradCAM '
                        '(repeated measures)', '.4g'),
      'wilcoxon_diff': ('Supplementary: pairwise Wilcoxon signed-rank, '
                        f'Diff_GradCAM ({wx})', '.4g'),
      'friedman_ehr': ('Supplementary: Friedman test, EHR AUC '
                       f'({ehr}; repeated measures)', '.4g'),
      'wilcoxon_ehr': ('Supplementary: pairwise Wilcoxon signed-rank, EHR '
                       f'AUC ({ehr}; {wx})', '.4g'),
  }


def write_tables(out_dir: str, tabs: Mapping[str, tables.Table], cam
                 ) -> dict[str, str]:
  """Writes every table's CSV + Markdown; returns stem -> Markdown (or, for
  a table that was not computed, the line that replaces it)."""
  md = {}
  for stem, (title, fmt) in titles(cam).items():
    md[stem] = tables.write(tabs[stem], os.path.join(out_dir, stem),
                            title=title, floatfmt=fmt)
    if tabs[stem].note:
      md[stem] = f'{stem}: {tabs[stem].note}'
  tables.write(tabs['per_image'], os.path.join(out_dir, 'per_image'))
  return md


def fig_3_2(path: str, results, ehr_ci: tuple[Sequence[float], Any],
            cam) -> str:
  """Mean EHR AUC per model with its bootstrap 95% CI."""
  means, errors = ehr_ci
  return figures.bar_chart(
      [network_label(n, r.network) for n, r in results.items()], means,
      errors=errors, path=path,
      colors=[_family_color(r.network) for r in results.values()],
      ylabel=f'EHR AUC ({cam.ehr_variant})',
      title=(f'Fig 3.2: mean EHR AUC per model ({cam.method}, '
             f'targets={cam.targets}, EHR variant {cam.ehr_variant!r}); '
             'error bars: 95% bootstrap CI of the mean'))


def _grid(path: str, rows, masked, grid: Sequence[int],
          col_labels: Sequence[str], title: str) -> str:
  return figures.image_grid(
      rows, path=path, col_labels=['CXR + mask'] + list(col_labels),
      row_labels=[f'index {int(masked["index"][p])}' for p in grid],
      overlays=[False] + [True] * len(col_labels),
      contours=[masked['mask'][p] for p in grid], title=title)


def fig_3_1(path: str, results, masked, grid: Sequence[int], cam
            ) -> str | None:
  """Each model's map of the grid patients, with the mask outlined."""
  if not grid or not results:
    return None
  rows = [[masked['image'][p][..., 0]] + [r.loc['cams'][p]
                                          for r in results.values()]
          for p in grid]
  return _grid(path, rows, masked, grid,
               [network_label(n, r.network) for n, r in results.items()],
               f'Fig 3.1: {cam.method} (targets={cam.targets}) per model; '
               'green = pneumothorax mask')


def fig_methods(path: str, cams: Mapping[str, np.ndarray], masked,
                grid: Sequence[int], label: str, cam) -> str | None:
  """The CAM methods of one model (`label`) on the grid patients."""
  if not grid or not cams:
    return None
  images = masked['image'][np.asarray(grid)]
  rows = [[images[i][..., 0]] + [cams[m][i] for m in cams]
          for i in range(len(grid))]
  return _grid(path, rows, masked, grid, list(cams),
               f'CAM methods on {label}, targets={cam.targets}')


def _case_cell(files: images.CaseImages, name: str, r, i: int,
               p: int | None, base: str, mask) -> browser.Cell:
  """One model's cell of test image i (masked row p, None if not scored)."""
  probs = np.asarray(r.pred['probs'][i])
  values = [probs[1], probs[int(r.pred['label'][i])],
            siim.CLASS_NAMES[int(np.argmax(probs))]]
  if p is None:
    return browser.Cell([None], values + [None] * len(cam_loc.METRICS))
  index = int(r.pred['index'][i])
  heat = files.layer(f'{index}_{name}', r.cams_u8[p] / 255.0, mask)
  return browser.Cell([[base, heat]],
                      values + [r.loc[m][p] for m in cam_loc.METRICS])


def cases(out_dir: str, results, test, masked, cam) -> browser.Browser:
  """Every test image (split order) with its mask outline and, per model,
  its probabilities and, where scored, its map (`cams_u8`) and metrics; the
  images go to `out_dir/cases/`."""
  files = images.CaseImages(out_dir, max_side=CASE_SIDE)
  where = {int(k): p for p, k in enumerate(masked['index'])}
  cols = [browser.Column('Case', ('CXR + mask',), ('index', 'label'))]
  cols += [browser.Column(network_label(n, r.network), (cam.method,),
                          CASE_VALUES) for n, r in results.items()]
  out = browser.Browser(cols, note=(
      f'Maps: {cam.method}, targets={cam.targets}, for the test images with '
      'a pneumothorax mask (the images the CAM metrics score; green: the '
      'mask); the other test images show the probabilities only. p_true: '
      'the probability of the true class; sort by it (ascending) for the '
      'worst misclassifications, by diff_gradcam for the maps furthest off '
      'the mask.'))
  for i, index in enumerate(np.asarray(test['index'])):
    p = where.get(int(index))
    mask = None if p is None else masked['mask'][p]
    base = files.grey(str(index), test['image'][i][..., 0])
    gt = [base] + ([] if p is None else [files.layer(f'{index}_mask', None,
                                                     mask)])
    cells = [browser.Cell([gt], [int(index),
                                 siim.CLASS_NAMES[int(test['label'][i])]])]
    cells += [_case_cell(files, n, r, i, p, base, mask)
              for n, r in results.items()]
    out.add(str(index), cells)
  return out


def _test_sentences(tabs: Mapping[str, tables.Table]) -> list[str]:
  """The ANOVA, Tukey and repeated-measures results in words."""
  parts = []
  for label, stem in (('Diff_GradCAM', 'anova_diff'), ('EHR AUC',
                                                        'anova_ehr')):
    if tabs[stem].rows:
      a = tabs[stem].rows[0]
      parts.append(f'One-way ANOVA on {label}: F({a["df_between"]}, '
                   f'{a["df_within"]}) = {a["F"]:.3g}, p = {a["p"]:.3g} '
                   f'({"" if a["significant"] else "not "}significant at '
                   '0.05).')
  tukey = tabs['tukey_diff'].rows
  if tukey:
    k = sum(r['reject'] for r in tukey)
    parts.append(f'Tukey HSD (Diff_GradCAM): {k} of {len(tukey)} pairs '
                 'differ at 0.05.')
  sup = []
  if tabs['friedman_diff'].rows:
    f = tabs['friedman_diff'].rows[0]
    sup.append(f'Friedman chi2({f["k"] - 1}) = {f["statistic"]:.3g}, '
               f'p = {f["p"]:.3g} (n = {f["n"]} images)')
  wx = tabs['wilcoxon_diff'].rows
  if wx:
    k = sum(r['reject'] for r in wx)
    sup.append(f'Wilcoxon signed-rank, Holm-adjusted: {k} of {len(wx)} '
               'pairs differ at 0.05')
  if sup:
    parts.append('Supplementary, repeated measures (the same images under '
                 'every model) on Diff_GradCAM: ' + '; '.join(sup) + '.')
  return parts


def _caveats(config, results) -> list[str]:
  """What makes the numbers incomparable with the thesis's."""
  parts = []
  if not any(r.init for r in results.values()):
    parts.append('All models were trained from scratch (no `init_dir`), '
                 'unlike the thesis (ImageNet-pretrained).')
  if not config.data.root:
    parts.append('Data: the synthetic SIIM phantom, not SIIM-ACR; the '
                 "thesis's numbers are shown for reference only.")
  if any(r.network.endswith('tiny') for r in results.values()):
    parts.append('Demo size: the stages ran the tiny variants of each '
                 'family, so the thesis columns are not comparable.')
  shared: dict[str, list[str]] = {}
  for n, r in results.items():
    shared.setdefault(r.network, []).append(n)
  for net, names in shared.items():
    if len(names) > 1:
      parts.append(f'Stages {", ".join(names)} trained the same network '
                   f'({net}) on the same data with the same seed, so their '
                   'rows are identical (the Tukey pairs among them differ by '
                   '0).')
  return parts


def summary(config, results, tabs: Mapping[str, tables.Table],
            families: Mapping[str, tuple[float, int]]) -> str:
  """One paragraph in words of what the tables show."""
  cam = config.cam
  parts = [f'{len(results)} model(s) were evaluated on {cam.method} maps '
           f'(targets = {cam.targets!r}, EHR variant {cam.ehr_variant!r}).']
  finite = {r['model']: r['mean'] for r in tabs['table_3_2'].rows
            if np.isfinite(r['mean'])}
  if finite:
    hi = max(finite, key=finite.get)
    lo = min(finite, key=finite.get)
    fam = '; '.join(f'{k} {m:.3f} (n = {n})' for k, (m, n) in
                    families.items())
    parts.append(f'Mean Diff_GradCAM ranged from {finite[lo]:.3f} ({lo}) to '
                 f'{finite[hi]:.3f} ({hi}); pooled by family: {fam} '
                 '(thesis: CNNs 0.13-0.19 above ViTs 0.05-0.08).')
  return ' '.join(parts + _test_sentences(tabs) + _caveats(config, results))


def _vgg_layer(stages: Mapping[str, Any]) -> list[str]:
  """The Grad-CAM layer of the VGG stages, if any."""
  vgg = [n for n, s in stages.items() if s.model.name.startswith('vgg')]
  if not vgg:
    return []
  model = stages[vgg[0]].model
  layer = (f'`model.cam_layer = {model.cam_layer!r}`' if 'cam_layer' in model
           else 'relu5_3')
  return [f'- Grad-CAM layer of VGG ({", ".join(vgg)}): {layer}. relu5_3 '
          '(the default) is the ReLU output of the last convolution, before '
          "the last max-pool: the original Grad-CAM code's layer. The thesis "
          'says "the last convolution layer", whose pre-ReLU output is the '
          'other choice.']


def settings(config, stages: Mapping[str, Any], test, masked,
             machine_line: str) -> list[str]:
  """The Settings section's bullets."""
  d, cam = config.data, config.cam
  n_pos = int(np.sum(test['label'] == 1))
  return [
      f'- Data: {d.root or "phantom (synthetic SIIM)"}, '
      f'{tuple(d.image_size)} px; test split {len(test["label"])} images, '
      f'{len(masked["label"])} with a pneumothorax mask (the images the CAM '
      f'metrics score); {n_pos - len(masked["label"])} pneumothorax images '
      'whose mask has no pixel left at this size (mask rule '
      f'`{d.mask_rule}` at {d.mask_threshold}: with `bilinear`, a region '
      'thinner than about one output pixel vanishes in the resize; `area` '
      'with a small threshold keeps every region) are not scored.',
      f'- CAM: `{cam.method}` on `out["features"]`, target class policy '
      f'`{cam.targets}` (`label` = the true class, the thesis\'s reading; '
      '`pred` = the predicted class).',
      *_vgg_layer(stages),
      f'- EHR variant: `{cam.ehr_variant}` ({cam.ehr_thresholds} thresholds '
      'for `thesis`).',
      f'- Initialisation: {config.init_dir or "none: trained from scratch"}.',
      f'- Bootstrap replicates: {cam.bootstrap}; top-k fraction '
      f'{cam.top_k_fraction}.',
      machine_line]


def _wall_times(results, methods_s: float, t0: float) -> list[str]:
  times = [dict(model=n, network=r.network, init=r.init or 'from scratch',
                train_steps=r.train.get('step', ''),
                best_step=r.train.get('best_step', ''),
                train_wall_s=r.train.get('wall_s', float('nan')),
                report_eval_s=r.eval_s) for n, r in results.items()]
  return ['## Wall times', '', tables.markdown_table(times, floatfmt='.1f'),
          f'CAM-method figure: {methods_s:.1f} s; report total: '
          f'{time.time() - t0:.1f} s.']


def write(out_dir: str, config, stages: Mapping[str, Any], *, results,
          tabs: Mapping[str, tables.Table], families, ehr_ci, test, masked,
          grid: Sequence[int], methods: Mapping[str, np.ndarray],
          compare: str, methods_s: float, t0: float) -> str:
  """Writes every table, figure, `machine.json` and `report.md`."""
  cam = config.cam
  md = write_tables(out_dir, tabs, cam)
  label = network_label(compare, results[compare].network) if compare else ''
  figs = (('Fig 3.1: heatmaps with mask outlines',
           fig_3_1(os.path.join(out_dir, 'fig_3_1_heatmaps.png'), results,
                   masked, grid, cam)),
          ('Fig 3.2: EHR AUC per model (error bars: 95% bootstrap CI of the '
           'mean)', fig_3_2(os.path.join(out_dir, 'fig_3_2_ehr_auc.png'),
                            results, ehr_ci, cam)),
          (f'CAM methods on {compare}',
           fig_methods(os.path.join(out_dir, 'fig_cam_methods.png'),
                       methods, masked, grid, label, cam)))
  lines = ['# Study A: Grad-CAM reliability across architectures', '',
           summary(config, results, tabs, families), '', '## Settings', '',
           *settings(config, stages, test, masked,
                     document.machine_line(out_dir)), '',
           '## Tables', '', md['table_3_1'], md['table_3_2'],
           md['localisation'], '', '## Statistics', '']
  for stem in STATISTICS:
    lines += [md[stem], '']
  lines += ['## Supplementary: repeated measures', '', REPEATED_TEXT, '']
  for stem in REPEATED:
    lines += [md[stem], '']
  lines += ['## Figures', '', *document.figure_lines(figs),
            'Per-image values: [per_image.csv](per_image.csv).', '',
            *_wall_times(results, methods_s, t0)]
  document.write_html(out_dir, lines,
                      cases(out_dir, results, test, masked, cam))
  return document.write_markdown(out_dir, lines)
