"""Study A report: classification and Grad-CAM reliability across models.

`report(config, workdir)` runs after the `sequence` job of
`configs/gradcam_benchmark.py` trained one classifier per stage. Each model
is restored from its best checkpoint (chosen on validation) and run over the
test split: class probabilities for every image, and `config.cam.method`
maps (of the true class, or the predicted one: `config.cam.targets`) for
every image with a pneumothorax mask. Outputs in `workdir/report/`:

  table_3_1.{csv,md}     accuracy, precision, recall, ROC AUC with
                         class-stratified bootstrap 95% CIs; thesis values
  table_3_2.{csv,md}     Diff_GradCAM mean, std, min, max, n; thesis mean±std
  localisation.{csv,md}  EHR AUC, pointing game, relevance mass / rank,
                         top-k intersection, pixel AUC (mean ± std)
  anova_diff, tukey_diff one-way ANOVA + Tukey HSD across models on
  anova_ehr, tukey_ehr   Diff_GradCAM and on EHR AUC ({csv,md} each)
  friedman_diff,         supplementary, repeated measures (the same images
  wilcoxon_diff,         under every model): Friedman test and pairwise
  friedman_ehr,          Wilcoxon signed-rank with Holm's correction, on
  wilcoxon_ehr           Diff_GradCAM and on EHR AUC ({csv,md} each)
  per_image.csv          every per-image value behind the tables
  fig_3_1_heatmaps.png   patients x (image, each model's map + mask outline)
  fig_3_2_ehr_auc.png    mean EHR AUC per model, 95% bootstrap CI of the mean
  fig_cam_methods.png    `cam.compare_model`'s CAM methods, same patients
  report.md              all of the above, a summary, the settings, timings

Every output names the EHR variant and the CAM target policy. Only process 0
writes; every process computes (the CAM batches are sharded over the mesh).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from cxr_jax import weights
from cxr_jax import jobs
from cxr_jax import train
from cxr_jax.data import build_dataset
from cxr_jax.evaluators import EvalContext
from cxr_jax.evaluators import cam_localization as cam_loc
from cxr_jax.evaluators import classification as cls_eval
from cxr_jax.explain import compute_cams
from cxr_jax.metrics import classification as cls_metrics
from cxr_jax.metrics import heatmap
from cxr_jax.metrics import stats
from cxr_jax.report import figures
from cxr_jax.report import tables

# Thesis Table 3.1 (accuracy, precision, recall, AUC; test set of 1,000) and
# Table 3.2 (Diff_GradCAM mean, std), keyed by stage name.
THESIS_3_1 = {
    'vgg16': (0.837, 0.822, 0.880, 0.907), 'vgg19': (0.832, 0.775, 0.908, 0.910),
    'resnet18': (0.876, 0.882, 0.868, 0.942),
    'resnet34': (0.872, 0.876, 0.860, 0.942),
    'resnet50': (0.882, 0.880, 0.882, 0.945),
    'resnet101': (0.876, 0.880, 0.878, 0.943),
    'vit_s16': (0.858, 0.814, 0.882, 0.930),
    'vit_b16': (0.862, 0.860, 0.874, 0.936),
    'vit_l16': (0.844, 0.836, 0.864, 0.920)}
THESIS_3_2 = {
    'vgg16': (0.186, 0.212), 'vgg19': (0.166, 0.220), 'resnet18': (0.162, 0.262),
    'resnet34': (0.133, 0.273), 'resnet50': (0.142, 0.251),
    'resnet101': (0.183, 0.265), 'vit_s16': (0.052, 0.143),
    'vit_b16': (0.081, 0.166), 'vit_l16': (0.051, 0.164)}
CLS_METRICS = ('accuracy', 'precision', 'recall', 'auc')
LOC_METRICS = ('ehr_auc', 'pointing_game', 'relevance_mass', 'relevance_rank',
               'top_k', 'pixel_auc')
FAMILY_COLORS = {'vgg': '#4C72B0', 'resnet': '#55A868', 'vit': '#C44E52'}


def _family(network: str) -> str:
  return next((f for f in FAMILY_COLORS if network.startswith(f)), 'other')


def _grid_positions(n: int, k: int) -> list[int]:
  """k row positions spread evenly over n masked test images."""
  if n == 0 or k <= 0:
    return []
  return sorted(set(np.linspace(0, n - 1, min(k, n)).round().astype(int)))


def _train_summary(workdir: str, name: str) -> dict:
  path = os.path.join(workdir, name, 'done.json')
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _evaluate(config, name: str, workdir: str, test, masked, mesh,
              grid_pos) -> dict[str, Any]:
  """Probabilities on the test split and CAM metrics on its masked images."""
  t0 = time.time()
  stage = jobs.stage_config(config, name, workdir)
  model = train.build_model(stage.model)
  variables = weights.restore(os.path.join(workdir, name))
  ctx = EvalContext(model=model, splits={'test': test},
                    batch_size=config.cam.batch_size, mesh=mesh,
                    model_inputs=stage.model_inputs)
  pred = cls_eval.Evaluator(ctx, split='test').predict(variables)
  loc = cam_loc.cam_metrics(
      model, variables, masked, mesh=mesh, batch_size=config.cam.batch_size,
      method=config.cam.method, targets=config.cam.targets,
      ehr_variant=config.cam.ehr_variant,
      ehr_thresholds=config.cam.ehr_thresholds,
      top_k_fraction=config.cam.top_k_fraction,
      model_inputs=stage.model_inputs, keep_cams=grid_pos)
  return dict(network=stage.model.name, init=stage.init.path, pred=pred,
              loc=loc, eval_s=time.time() - t0,
              train=_train_summary(workdir, name))


def _table_3_1(config, res) -> tuple[list[dict], list[dict]]:
  rows, shown = [], []
  for name, r in res.items():
    y, p = r['pred']['label'], r['pred']['probs']
    lp = r['pred']['log_odds']
    row = dict(model=name, network=r['network'], n=int(len(y)))
    disp = dict(row)
    for m in CLS_METRICS:
      ci = cls_metrics.bootstrap_ci(
          lambda yy, pp, ll, m=m: cls_metrics.binary_report(
              yy, pp, scores=ll)[m], y, p, lp,
          n=config.cam.bootstrap, stratify=y, seed=config.seed)
      row.update({m: ci['estimate'], f'{m}_ci_low': ci['low'],
                  f'{m}_ci_high': ci['high']})
      disp[f'{m} [95% CI]'] = tables.with_ci(ci['estimate'], ci['low'],
                                             ci['high'])
    thesis = THESIS_3_1.get(name)
    for m, v in zip(CLS_METRICS, thesis or (float('nan'),) * 4):
      row[f'thesis_{m}'] = v
    disp['thesis acc / prec / rec / AUC'] = (
        ' / '.join(f'{v:.3f}' for v in thesis) if thesis else 'n/a')
    rows.append(row)
    shown.append(disp)
  return rows, shown


def _table_3_2(res) -> tuple[list[dict], list[dict]]:
  rows, shown = [], []
  for name, r in res.items():
    s = heatmap.summarize(r['loc']['diff_gradcam'])
    t = THESIS_3_2.get(name, (float('nan'), float('nan')))
    rows.append(dict(model=name, network=r['network'], **s,
                     thesis_mean=t[0], thesis_std=t[1]))
    shown.append({'model': name, 'network': r['network'],
                  'Diff_GradCAM (mean ± std)': tables.mean_std(s['mean'],
                                                               s['std']),
                  'min': s['min'], 'max': s['max'], 'n': s['n'],
                  'thesis (mean ± std)': tables.mean_std(*t)})
  return rows, shown


def _localisation(config, res) -> tuple[list[dict], list[dict]]:
  rows, shown = [], []
  for name, r in res.items():
    row = dict(model=name, network=r['network'],
               n=int(len(r['loc']['index'])), cam_method=config.cam.method,
               cam_targets=config.cam.targets,
               ehr_variant=config.cam.ehr_variant)
    disp = dict(model=name, network=r['network'], n=row['n'])
    for m in LOC_METRICS:
      s = heatmap.summarize(r['loc'][m])
      row[f'{m}_mean'], row[f'{m}_std'] = s['mean'], s['std']
      row[f'{m}_n'] = s['n']  # fewer than n: undefined for blank CAMs
      disp[m] = tables.mean_std(s['mean'], s['std']) + (
          f' (n={s["n"]})' if s['n'] != row['n'] else '')
    rows.append(row)
    shown.append(disp)
  return rows, shown


def _per_image(config, res) -> list[dict]:
  rows = []
  for name, r in res.items():
    loc = r['loc']
    for i in range(len(loc['index'])):
      rows.append(dict(
          model=name, network=r['network'], index=int(loc['index'][i]),
          label=int(loc['label'][i]), prob=float(loc['prob'][i, 1]),
          pred=int(np.argmax(loc['prob'][i])), target=int(loc['target'][i]),
          **{m: float(loc[m][i]) for m in cam_loc.METRICS},
          cam_method=config.cam.method, cam_targets=config.cam.targets,
          ehr_variant=config.cam.ehr_variant))
  return rows


def _statistics(res, metric: str) -> tuple[list[dict], list[dict], str]:
  """ANOVA row, Tukey rows and a note ('' when both could be computed)."""
  groups = {n: r['loc'][metric] for n, r in res.items()}
  try:
    a = stats.anova_oneway(groups)
    tk = stats.tukey_hsd(groups)
  except ValueError as e:
    return [], [], f'not computed: {e}'
  anova = [dict(metric=metric, **a, significant=bool(a['p'] < 0.05),
                groups=len(groups))]
  return anova, tk, ''


def _paired_statistics(res, metric: str
                       ) -> tuple[list[dict], list[dict], str, str]:
  """Friedman row, Wilcoxon rows and their notes ('' when computed).

  Supplementary to `_statistics`: every model scores the same masked test
  images in the same order, so the per-image values are repeated measures,
  which the one-way ANOVA (the thesis's analysis, kept as the primary one)
  treats as independent. Friedman needs 3 models, Wilcoxon 2; either is
  skipped with a note when the values are not paired (unequal lengths).
  """
  groups = {n: r['loc'][metric] for n, r in res.items()}
  fr, note_fr = [], ''
  try:
    f = stats.friedman(groups)
    fr = [dict(metric=metric, **f, significant=bool(f['p'] < 0.05))]
  except ValueError as e:
    note_fr = f'not computed: {e}'
  try:
    wx, note_wx = [dict(metric=metric, **r)
                   for r in stats.pairwise_wilcoxon(groups)], ''
  except ValueError as e:
    wx, note_wx = [], f'not computed: {e}'
  return fr, wx, note_fr, note_wx


def _ehr_figure(config, res, path: str) -> str:
  names = list(res)
  means, lo, hi = [], [], []
  for n in names:
    v = np.asarray(res[n]['loc']['ehr_auc'], np.float64)
    v = v[np.isfinite(v)]
    if v.size:
      ci = cls_metrics.bootstrap_ci(np.mean, v, n=config.cam.bootstrap,
                                    seed=config.seed)
      means.append(ci['estimate'])
      lo.append(ci['estimate'] - ci['low'])
      hi.append(ci['high'] - ci['estimate'])
    else:
      means.append(float('nan'))
      lo.append(0.0)
      hi.append(0.0)
  colors = [FAMILY_COLORS.get(_family(res[n]['network']), 'gray')
            for n in names]
  return figures.bar_chart(
      names, means, errors=np.array([lo, hi]), path=path, colors=colors,
      ylabel=f'EHR AUC ({config.cam.ehr_variant})',
      title=(f'Fig 3.2: mean EHR AUC per model ({config.cam.method}, '
             f'targets={config.cam.targets}, EHR variant '
             f'{config.cam.ehr_variant!r}); error bars: 95% bootstrap CI of '
             'the mean'))


def _heatmap_figure(config, res, masked, grid_pos, path: str) -> str | None:
  if not grid_pos or not res:
    return None
  rows = []
  for pos in grid_pos:
    rows.append([masked['image'][pos][..., 0]] +
                [res[n]['loc']['cams'][pos] for n in res])
  return figures.image_grid(
      rows, path=path, col_labels=['CXR + mask'] + list(res),
      row_labels=[f'index {int(masked["index"][p])}' for p in grid_pos],
      overlays=[False] + [True] * len(res),
      contours=[masked['mask'][p] for p in grid_pos],
      title=(f'Fig 3.1: {config.cam.method} (targets={config.cam.targets}) '
             'per model; green = pneumothorax mask'))


def _methods_figure(config, workdir, masked, grid_pos, path: str
                    ) -> tuple[str | None, str]:
  """The compare model's CAM methods on the grid patients."""
  name = config.cam.compare_model
  if name not in config.sequence:
    cnns = [n for n in config.sequence if not n.startswith('vit')]
    if not cnns and not config.sequence:
      return None, ''
    name = (cnns or list(config.sequence))[0]
    logging.info('cam.compare_model %r not in the sequence; using %r.',
                 config.cam.compare_model, name)
  if not grid_pos:
    return None, name
  stage = jobs.stage_config(config, name, workdir)
  model = train.build_model(stage.model)
  variables = weights.restore(os.path.join(workdir, name))
  idx = np.asarray(grid_pos)
  images, labels = masked['image'][idx], masked['label'][idx]
  cams = {}
  for method in config.cam.compare_methods:
    out = compute_cams(model, variables, images, method=method,
                       targets=config.cam.targets, labels=labels)
    cams[method] = np.asarray(out['cam'])
  rows = [[images[i][..., 0]] + [cams[m][i] for m in cams]
          for i in range(len(idx))]
  figures.image_grid(
      rows, path=path, col_labels=['CXR + mask'] + list(cams),
      row_labels=[f'index {int(masked["index"][p])}' for p in grid_pos],
      overlays=[False] + [True] * len(cams),
      contours=[masked['mask'][p] for p in grid_pos],
      title=(f'CAM methods on {name} ({stage.model.name}), '
             f'targets={config.cam.targets}'))
  return path, name


def _summary(config, res, t32, anova_diff, anova_ehr, tukey_diff,
             friedman_diff=(), wilcoxon_diff=()) -> str:
  """One paragraph in words of what the tables show."""
  by = {r['model']: r for r in t32}
  fam = {}
  for n, r in res.items():
    fam.setdefault('ViT' if _family(r['network']) == 'vit' else 'CNN',
                   []).extend(np.asarray(r['loc']['diff_gradcam']).tolist())
  fam_txt = '; '.join(f'{k} {np.nanmean(v):.3f} (n = {np.isfinite(v).sum()})'
                      for k, v in sorted(fam.items()) if len(v))
  finite = {n: r['mean'] for n, r in by.items() if np.isfinite(r['mean'])}
  parts = [f'{len(res)} model(s) were evaluated on {config.cam.method} maps '
           f'(targets = {config.cam.targets!r}, EHR variant '
           f'{config.cam.ehr_variant!r}).']
  if finite:
    hi = max(finite, key=finite.get)
    lo = min(finite, key=finite.get)
    parts.append(f'Mean Diff_GradCAM ranged from {finite[lo]:.3f} ({lo}) to '
                 f'{finite[hi]:.3f} ({hi}); pooled by family: {fam_txt} '
                 '(thesis: CNNs 0.13-0.19 above ViTs 0.05-0.08).')
  for label, a in (('Diff_GradCAM', anova_diff), ('EHR AUC', anova_ehr)):
    if a:
      a = a[0]
      parts.append(f'One-way ANOVA on {label}: F({a["df_between"]}, '
                   f'{a["df_within"]}) = {a["F"]:.3g}, p = {a["p"]:.3g} '
                   f'({"" if a["significant"] else "not "}significant at '
                   '0.05).')
  if tukey_diff:
    k = sum(r['reject'] for r in tukey_diff)
    parts.append(f'Tukey HSD (Diff_GradCAM): {k} of {len(tukey_diff)} pairs '
                 'differ at 0.05.')
  if friedman_diff or wilcoxon_diff:
    sup = []
    if friedman_diff:
      f = friedman_diff[0]
      sup.append(f'Friedman chi2({f["k"] - 1}) = {f["statistic"]:.3g}, '
                 f'p = {f["p"]:.3g} (n = {f["n"]} images)')
    if wilcoxon_diff:
      k = sum(r['reject'] for r in wilcoxon_diff)
      sup.append(f'Wilcoxon signed-rank, Holm-adjusted: {k} of '
                 f'{len(wilcoxon_diff)} pairs differ at 0.05')
    parts.append('Supplementary, repeated measures (the same images under '
                 'every model) on Diff_GradCAM: ' + '; '.join(sup) + '.')
  init = [r['init'] for r in res.values()]
  if not any(init):
    parts.append('All models were trained from scratch (no `init_dir`), '
                 'unlike the thesis (ImageNet-pretrained).')
  if not config.data.root:
    parts.append('Data: the synthetic SIIM phantom, not SIIM-ACR; the '
                 "thesis's numbers are shown for reference only.")
  if any(r['network'].endswith('tiny') for r in res.values()):
    parts.append('Demo size: the stages ran the tiny variants of each '
                 'family, so the thesis columns are not comparable.')
  shared: dict[str, list[str]] = {}
  for n, r in res.items():
    shared.setdefault(r['network'], []).append(n)
  for net, names in shared.items():
    if len(names) > 1:
      parts.append(f'Stages {", ".join(names)} trained the same network '
                   f'({net}) on the same data with the same seed, so their '
                   'rows are identical (the Tukey pairs among them differ by '
                   '0).')
  return ' '.join(parts)


def report(config, workdir: str) -> dict[str, Any]:
  """Evaluates every stage of `config.sequence`; writes `workdir/report/`."""
  t0 = time.time()
  out_dir = os.path.join(workdir, 'report')
  main = jax.process_index() == 0
  test = build_dataset(config.data)['test']
  masked = cam_loc.with_masks(test)
  grid_pos = _grid_positions(len(masked['label']), config.cam.grid_patients)
  mesh = train.make_mesh()
  res = {}
  for i, name in enumerate(config.sequence):
    logging.info('Report [%d/%d]: evaluating %s', i + 1, len(config.sequence),
                 name)
    res[name] = _evaluate(config, name, workdir, test, masked, mesh, grid_pos)
  t31, t31_md = _table_3_1(config, res)
  t32, t32_md = _table_3_2(res)
  loc, loc_md = _localisation(config, res)
  per_image = _per_image(config, res)
  anova_diff, tukey_diff, note_diff = _statistics(res, 'diff_gradcam')
  anova_ehr, tukey_ehr, note_ehr = _statistics(res, 'ehr_auc')
  # Supplementary: the same images under every model (repeated measures).
  paired = {m: _paired_statistics(res, m) for m in ('diff_gradcam',
                                                     'ehr_auc')}
  friedman_diff, wilcoxon_diff, note_fr_diff, note_wx_diff = paired[
      'diff_gradcam']
  friedman_ehr, wilcoxon_ehr, note_fr_ehr, note_wx_ehr = paired['ehr_auc']
  t_methods = time.time()
  methods_path = os.path.join(out_dir, 'fig_cam_methods.png')
  if main:
    os.makedirs(out_dir, exist_ok=True)
  methods_path, compare = _methods_figure(
      config, workdir, masked, grid_pos, methods_path) if main else (None, '')
  t_methods = time.time() - t_methods
  out = dict(table_3_1=t31, table_3_2=t32, localisation=loc,
             anova_diff=anova_diff, tukey_diff=tukey_diff,
             anova_ehr=anova_ehr, tukey_ehr=tukey_ehr,
             friedman_diff=friedman_diff, wilcoxon_diff=wilcoxon_diff,
             friedman_ehr=friedman_ehr, wilcoxon_ehr=wilcoxon_ehr,
             per_image=per_image)
  if not main:
    return out

  w = lambda rows, stem, title, **kw: tables.write_table(
      rows, os.path.join(out_dir, stem), title=title, **kw)
  tag = (f'{config.cam.method}, targets={config.cam.targets}, EHR variant '
         f'{config.cam.ehr_variant!r}')
  md = {
      't31': w(t31, 'table_3_1', 'Table 3.1: test-set classification (95% '
               'CI: class-stratified bootstrap, '
               f'{config.cam.bootstrap} replicates)', display_rows=t31_md),
      't32': w(t32, 'table_3_2', f'Table 3.2: Diff_GradCAM ({tag}; std = '
               'sample std, ddof = 1)',
               display_rows=t32_md, floatfmt='.3f'),
      'loc': w(loc, 'localisation', 'Localisation metrics (mean ± sample '
               f'std; {tag})', display_rows=loc_md),
      'anova_diff': w(anova_diff, 'anova_diff', 'One-way ANOVA, '
                      'Diff_GradCAM'),
      'tukey_diff': w(tukey_diff, 'tukey_diff', 'Tukey HSD, Diff_GradCAM '
                      '(meandiff = mean(b) - mean(a))'),
      'anova_ehr': w(anova_ehr, 'anova_ehr', f'One-way ANOVA, EHR AUC '
                     f'({config.cam.ehr_variant})'),
      'tukey_ehr': w(tukey_ehr, 'tukey_ehr', f'Tukey HSD, EHR AUC '
                     f'({config.cam.ehr_variant})'),
      'friedman_diff': w(friedman_diff, 'friedman_diff', 'Supplementary: '
                         'Friedman test, Diff_GradCAM (repeated measures)'),
      'wilcoxon_diff': w(wilcoxon_diff, 'wilcoxon_diff', 'Supplementary: '
                         'pairwise Wilcoxon signed-rank, Diff_GradCAM '
                         '(median_diff = median(a - b); p_holm: Holm)'),
      'friedman_ehr': w(friedman_ehr, 'friedman_ehr', 'Supplementary: '
                        'Friedman test, EHR AUC '
                        f'({config.cam.ehr_variant}; repeated measures)'),
      'wilcoxon_ehr': w(wilcoxon_ehr, 'wilcoxon_ehr', 'Supplementary: '
                        'pairwise Wilcoxon signed-rank, EHR AUC '
                        f'({config.cam.ehr_variant}; median_diff = '
                        'median(a - b); p_holm: Holm)'),
  }
  tables.write_table(per_image, os.path.join(out_dir, 'per_image'))
  for v in md.values():
    logging.info('\n%s', v)
  fig32 = _ehr_figure(config, res, os.path.join(out_dir,
                                                'fig_3_2_ehr_auc.png'))
  fig31 = _heatmap_figure(config, res, masked, grid_pos,
                          os.path.join(out_dir, 'fig_3_1_heatmaps.png'))
  times = [dict(model=n, network=r['network'],
                init=r['init'] or 'from scratch',
                train_steps=r['train'].get('step', ''),
                best_step=r['train'].get('best_step', ''),
                train_wall_s=r['train'].get('wall_s', float('nan')),
                report_eval_s=r['eval_s']) for n, r in res.items()]
  summary = _summary(config, res, t32, anova_diff, anova_ehr, tukey_diff,
                     friedman_diff, wilcoxon_diff)
  lines = ['# Study A: Grad-CAM reliability across architectures', '',
           summary, '', '## Settings', '',
           f'- Data: {config.data.root or "phantom (synthetic SIIM)"}, '
           f'{tuple(config.data.image_size)} px; test split {len(test["label"])}'
           f' images, {len(masked["label"])} with a pneumothorax mask (the '
           'images the CAM metrics score); '
           f'{int(np.sum(test["label"] == 1)) - len(masked["label"])} '
           'pneumothorax images whose mask has no pixel left at this size '
           f'(mask rule `{config.data.mask_rule}` at '
           f'{config.data.mask_threshold}: with `bilinear`, a region thinner '
           'than about one output pixel vanishes in the resize; `area` with a '
           'small threshold keeps every region) are not scored.',
           f'- CAM: `{config.cam.method}` on `out["features"]`, target class '
           f'policy `{config.cam.targets}` (`label` = the true class, the '
           "thesis's reading; `pred` = the predicted class).",
           f'- EHR variant: `{config.cam.ehr_variant}` '
           f'({config.cam.ehr_thresholds} thresholds for `thesis`).',
           f'- Initialisation: {config.init_dir or "none: trained from scratch"}'
           '.',
           f'- Bootstrap replicates: {config.cam.bootstrap}; top-k fraction '
           f'{config.cam.top_k_fraction}.', '',
           '## Tables', '', md['t31'], md['t32'], md['loc'], '',
           '## Statistics', '']
  for key, note in (('anova_diff', note_diff), ('tukey_diff', note_diff),
                    ('anova_ehr', note_ehr), ('tukey_ehr', note_ehr)):
    lines += [md[key] if not note else f'{key}: {note}', '']
  lines += ['## Supplementary: repeated measures', '',
            'Repeated measures: the same images under every model. The '
            'one-way ANOVA and Tukey HSD above (the thesis\'s analysis, the '
            'primary one) treat the models\' per-image values as '
            'independent samples; these non-parametric tests pair them by '
            'image instead: a Friedman test across all models (images '
            'finite under every model; needs 3 models) and a Wilcoxon '
            'signed-rank test per pair (images finite under both), '
            "p-values adjusted with Holm's step-down method.", '']
  for key, note in (('friedman_diff', note_fr_diff),
                    ('wilcoxon_diff', note_wx_diff),
                    ('friedman_ehr', note_fr_ehr),
                    ('wilcoxon_ehr', note_wx_ehr)):
    lines += [md[key] if not note else f'{key}: {note}', '']
  lines += ['## Figures', '']
  for title, p in (('Fig 3.1: heatmaps with mask outlines', fig31),
                   ('Fig 3.2: EHR AUC per model (error bars: 95% bootstrap '
                    'CI of the mean)', fig32),
                   (f'CAM methods on {compare}', methods_path)):
    if p:
      lines += [f'### {title}', '', f'![{title}]({os.path.basename(p)})', '']
  lines += ['Per-image values: [per_image.csv](per_image.csv).', '',
            '## Wall times', '',
            tables.markdown_table(times, floatfmt='.1f'),
            f'CAM-method figure: {t_methods:.1f} s; report total: '
            f'{time.time() - t0:.1f} s.']
  with open(os.path.join(out_dir, 'report.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  logging.info('Study A report written to %s (%.1f s).', out_dir,
               time.time() - t0)
  return out
