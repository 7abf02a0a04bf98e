"""Study B report: Tables 4.1 and 4.2, paired t-tests, Fig 4.2, CAM vs gaze.

`report(config, workdir)` runs after the `sequence` job trained the stages
and baselines of `configs/cooperative.py`; every model is evaluated on the
test split from its best checkpoint (chosen on validation). Rows whose stage
is not in `config.sequence` are left out. Outputs in `workdir/report/`:
  table_4_1.{csv,md}      classification: OvR macro AUC (bootstrap 95% CI),
                          micro and Hand-Till AUC, per-class AUC, accuracy
  table_4_2.{csv,md}      saliency: KL, CC, HS (authors' definitions,
                          comparable with the thesis) mean +- std, the MIT
                          benchmark's KL/SIM, NSS and AUC-Judd
  ttests.{csv,md}         two-sided paired t-tests (paired by test image):
                          ours vs each saliency baseline, and the ablation
                          Res_SE-UNet vs UNet_S
  cam_vs_gaze.{csv,md}    beyond the thesis: each classifier's Grad-CAM
                          scored against the gaze maps with KL/CC/HS
  fig_4_2_grid.png        CXR, gaze map, ours, MT-UNet, Grad-CAM DenseNet-201
  per_image_saliency.csv  every per-image value behind the tables
  report.md               all of it, with the thesis's numbers beside ours
                          and the settings behind them (data, gaze recipe,
                          split, injection, stage-3 schedule, init)
"""
from __future__ import annotations

import os
import time

import jax
import numpy as np
from absl import logging

from cxr_jax import weights
from cxr_jax import jobs
from cxr_jax import train
from cxr_jax.data import build_dataset
from cxr_jax.evaluators import EvalContext
from cxr_jax.evaluators import classification as cls_eval
from cxr_jax.evaluators import saliency as sal_eval
from cxr_jax.explain import compute_cams
from cxr_jax.metrics import classification as cls_metrics
from cxr_jax.metrics import saliency as sal_metrics
from cxr_jax.metrics import stats
from cxr_jax.report import figures
from cxr_jax.report import tables
from cxr_jax.studies import comparisons

# (row name, stage, thesis AUC, thesis accuracy) -- Table 4.1.
CLASSIFIERS = (
    ('Ours', 'stage3', 0.925, 0.800),
    ('MT-UNet', 'mtunet', 0.847, 0.640),
    ('DNet201-CL', 'stage1_finetune', 0.889, 0.750),
    ('DNet201', 'densenet201', 0.880, 0.690),
    ('IRNetv2', 'inception_resnet_v2', 0.794, 0.600),
    ('GazeGNN', 'gazegnn', 0.868, 0.730),
)
# (row name, stages in order of preference, thesis KL, CC, HS) -- Table 4.2.
SALIENCY = (
    ('Ours', ('stage3', 'stage2'), 0.706, 0.576, 0.552),
    ('MT-UNet', ('mtunet',), 0.747, 0.545, 0.535),
    ('Res_SE-UNet', ('res_se_unet',), 0.747, 0.560, 0.539),
    ('UNet_S', ('unet_s',), 0.781, 0.531, 0.527),
)


class _Stage:
  """A trained stage: its config, model, best variables and eval context."""

  def __init__(self, config, workdir: str, name: str, splits, mesh):
    self.name = name
    self.cfg = jobs.stage_config(config, name, workdir)
    self.model = train.build_model(self.cfg.model)
    self.variables = weights.restore(os.path.join(workdir, name))
    self.ctx = EvalContext(model=self.model, splits=splits,
                           batch_size=self.cfg.eval_batch_size, mesh=mesh,
                           model_inputs=self.cfg.model_inputs)


def _classification(stage: _Stage, boot: int) -> tuple[dict, dict]:
  p = cls_eval.Evaluator(stage.ctx, split='test',
                         task='multiclass').predict(stage.variables)
  rep = cls_metrics.multiclass_report(p['label'], p['probs'],
                                      scores=p['log_odds'])
  ci = cls_metrics.bootstrap_ci(
      lambda y, q: cls_metrics.roc_auc_ovr(q, y, average='macro'),
      p['label'], p['log_odds'], n=boot, stratify=p['label'])
  rep['auc_ci_low'], rep['auc_ci_high'] = ci['low'], ci['high']
  return rep, p


def _saliency(stage: _Stage) -> dict[str, np.ndarray]:
  p = sal_eval.Evaluator(stage.ctx, split='test').predict(stage.variables)
  m = sal_eval.per_image_metrics(p['gaze'], p['pred'], p['fixmap'], 'authors',
                                 pred_logp=p['logp'])
  m['kl_mit'] = sal_metrics.kl(p['gaze'], p['pred'], variant='mit')
  m['sim_mit'] = sal_metrics.hs(p['gaze'], p['pred'], variant='mit')
  m['pred'] = p['pred']
  m['index'] = p['index']
  return m


def _cams(stage: _Stage, test: dict, batch_size: int) -> np.ndarray:
  """Grad-CAM of the true class for every test image (N, H, W) in [0, 1]."""
  out = []
  for i in range(0, len(test['label']), batch_size):
    sl = slice(i, i + batch_size)
    kw = {k: np.asarray(test[k][sl]) for k in stage.cfg.model_inputs}
    r = compute_cams(stage.model, stage.variables, np.asarray(test['image'][sl]),
                     method='gradcam', targets='label',
                     labels=np.asarray(test['label'][sl]),
                     model_kwargs=kw or None)
    out.append(np.asarray(r['cam']))
  return np.concatenate(out)


def _mean_std(v) -> str:
  """mean ± sample std over the defined values, with their count when some
  are undefined (NaN: a study without gaze)."""
  v = np.asarray(v, np.float64)
  n = int(np.isfinite(v).sum())
  if n == 0:
    return 'n/a'
  text = f'{np.nanmean(v):.3f} ± {np.nanstd(v, ddof=1):.3f}'
  return text if n == v.size else f'{text} (n={n})'


def _settings(config, workdir: str) -> list[str]:
  """Markdown bullets: the choices behind the numbers (data, gaze recipe,
  split, and the full model's settings where it was trained)."""
  d = config.data
  lines = [f'- Data: {d.root or "phantom (synthetic eye-gaze dataset)"}, '
           f'{tuple(d.image_size)} px (H, W); gaze recipe `{d.gaze_recipe}`'
           f'{f" (sigma {d.gaze_sigma} px)" if d.gaze_sigma else ""}; split '
           f'`{d.split}` (seed {d.split_seed}).']
  present = set(config.sequence)
  if 'stage2' in present:
    m = jobs.stage_config(config, 'stage2', workdir).model
    lines.append(
        f'- Full model: DenseNet feature `{m.densenet_feature}` injected '
        'into the decoder by ' + ('a zero-initialised learned gate (ours)'
                                  if m.get('inject_gate') else
                                  "plain concatenation (the authors' code)")
        + '.')
  if 'stage3' in present:
    s3 = jobs.stage_config(config, 'stage3', workdir)
    trained = [f'`{p}`' for p, o in s3.schedule if o is not None]
    lines.append(f'- Stage 3: loss `{s3.loss.name}`, parameters trained: '
                 f'{", ".join(trained)} (the thesis: the classifier, '
                 '`fusion/.*`, only).')
  first = next((n for n in config.sequence if n in config.stages), None)
  if first:
    path = jobs.stage_config(config, first, workdir).init.path
    lines.append(f'- Initial weights of `{first}`: '
                 f'{path or "none (trained from scratch)"}.')
  return lines


def report(config, workdir: str) -> dict:
  """Evaluates every trained stage on the test split and writes the report."""
  t0 = time.time()
  out_dir = os.path.join(workdir, 'report')
  main = jax.process_index() == 0
  if main:
    os.makedirs(out_dir, exist_ok=True)
  splits = build_dataset(config.data)
  test = splits['test']
  mesh = train.make_mesh()
  present = set(config.sequence)
  cache: dict[str, _Stage] = {}

  def stage(name):
    if name not in cache:
      cache[name] = _Stage(config, workdir, name, splits, mesh)
    return cache[name]

  boot = 1000
  # Table 4.1
  rows41, cam_rows, cams = [], [], {}
  for row, name, t_auc, t_acc in CLASSIFIERS:
    if name not in present:
      continue
    rep, _ = _classification(stage(name), boot)
    rows41.append({
        'method': row, 'stage': name, 'auc_ovr_macro': rep['auc_ovr_macro'],
        'auc_95ci': f"[{rep['auc_ci_low']:.3f}, {rep['auc_ci_high']:.3f}]",
        'auc_micro': rep['auc_ovr_micro'], 'auc_hand_till': rep['auc_hand_till'],
        'auc_normal': rep['auc_class0'], 'auc_chf': rep['auc_class1'],
        'auc_pneumonia': rep['auc_class2'], 'accuracy': rep['accuracy'],
        'n': rep['n'], 'thesis_auc': t_auc, 'thesis_accuracy': t_acc})
    # Beyond the thesis: does the classifier look where radiologists look?
    cams[name] = _cams(stage(name), test, stage(name).cfg.eval_batch_size)
    gaze = np.asarray(test['gaze'], np.float64)
    cam = cams[name].astype(np.float64) + 1e-12
    cam_rows.append({
        'method': row, 'stage': name,
        'kl': _mean_std(sal_metrics.kl(gaze, cam, variant='mit')),
        'cc': _mean_std(sal_metrics.cc(gaze, cam)),
        'hs': _mean_std(sal_metrics.hs(gaze, cam, variant='authors')),
        'n': int(len(gaze))})

  # Table 4.2 and the t-tests
  rows42, per_image, sal = [], [], {}
  for row, names, t_kl, t_cc, t_hs in SALIENCY:
    name = next((n for n in names if n in present), None)
    if name is None:
      continue
    m = _saliency(stage(name))
    sal[row] = m
    rows42.append({
        'method': row, 'stage': name, 'kl': _mean_std(m['kl']),
        'cc': _mean_std(m['cc']), 'hs': _mean_std(m['hs']),
        'kl_mit': _mean_std(m['kl_mit']), 'sim_mit': _mean_std(m['sim_mit']),
        'nss': _mean_std(m['nss']), 'auc_judd': _mean_std(m['auc_judd']),
        'n': int(len(m['kl'])), 'thesis_kl': t_kl, 'thesis_cc': t_cc,
        'thesis_hs': t_hs})
    for i, idx in enumerate(m['index']):
      per_image.append({'method': row, 'index': int(idx), **{
          k: float(m[k][i]) for k in ('kl', 'cc', 'hs', 'kl_mit', 'sim_mit',
                                      'nss', 'auc_judd')}})
  ttest_rows = []
  for a, b in comparisons.study_b_pairs(sal):
    for metric in ('kl', 'cc', 'hs'):
      t = stats.paired_ttest(sal[a][metric], sal[b][metric])
      ttest_rows.append({'a': a, 'b': b, 'metric': metric,
                         'mean_diff': t['mean_diff'], 't': t['t'],
                         'p': t['p'], 'significant': t['p'] < 0.05,
                         'n': t['n']})

  if not main:
    return {}
  md = ['# Study B report: cooperative multi-task UNet', '',
        f'Test split: {len(test["label"])} images (classes Normal, CHF, '
        'pneumonia). Every model is evaluated from its best checkpoint '
        '(validation loss). Saliency metrics: the authors\' definitions '
        '(KL without epsilon, HS = sum of minima of the sum-normalised maps), '
        'plus the MIT benchmark\'s KL and SIM; NSS and AUC-Judd use the '
        'fixation maps. Thesis columns are the published numbers on the real '
        'eye-gaze data, for reference only.', '', '## Settings', '',
        *_settings(config, workdir), '']
  if rows41:
    md += ['## Table 4.1: classification', '',
           tables.write_table(rows41, os.path.join(out_dir, 'table_4_1')), '']
  if rows42:
    md += ['## Table 4.2: saliency prediction (mean ± sample std, ddof = 1)',
           '',
           tables.write_table(rows42, os.path.join(out_dir, 'table_4_2')), '']
    tables.write_table(per_image, os.path.join(out_dir, 'per_image_saliency'))
  if ttest_rows:
    md += ['## Paired t-tests (two-sided, p < 0.05)', '',
           tables.write_table(ttest_rows, os.path.join(out_dir, 'ttests')), '']
  if cam_rows:
    md += ['## Beyond the thesis: Grad-CAM of each classifier vs gaze maps',
           '', 'KL (MIT, with epsilon), CC and HS of the true-class Grad-CAM '
           '(normalised to a distribution) against the radiologists\' gaze '
           'map; compare with the saliency models in Table 4.2.', '',
           tables.write_table(cam_rows, os.path.join(out_dir, 'cam_vs_gaze')),
           '']
  grid = _figure(test, sal, cams, out_dir)
  if grid:
    md += ['## Fig 4.2', '', f'![qualitative grid]({os.path.basename(grid)})',
           '']
  md += [f'Report written in {time.time() - t0:.1f} s.']
  with open(os.path.join(out_dir, 'report.md'), 'w') as f:
    f.write('\n'.join(md) + '\n')
  logging.info('Study B report in %s:\n%s', out_dir, '\n'.join(md))
  return dict(table_4_1=rows41, table_4_2=rows42, ttests=ttest_rows)


def _figure(test, sal, cams, out_dir, num: int = 4) -> str | None:
  """Fig 4.2: CXR, gaze, ours, MT-UNet, Grad-CAM DenseNet-201 per patient."""
  cols = [('CXR', None), ('Gaze map', None)]
  if 'Ours' in sal:
    cols.append(('Ours', sal['Ours']['pred']))
  if 'MT-UNet' in sal:
    cols.append(('MT-UNet', sal['MT-UNet']['pred']))
  cam_stage = next((s for s in ('stage1_finetune', 'densenet201') if s in cams),
                   None)
  if cam_stage:
    cols.append(('Grad-CAM DenseNet-201', cams[cam_stage]))
  if len(cols) <= 2:
    return None
  labels = np.asarray(test['label'])
  # One patient per class first, then the next ones.
  order = [int(np.flatnonzero(labels == k)[0]) for k in np.unique(labels)]
  order += [i for i in range(len(labels)) if i not in order]
  rows, names = [], ('Normal', 'CHF', 'pneumonia')
  for i in order[:num]:
    img = np.asarray(test['image'][i])[..., 0]
    row = [img, np.asarray(test['gaze'][i])]
    # Predicted distributions sum to 1 over pixels: scale each map to a max
    # of 1 for display, as the gaze map is.
    row += [np.asarray(m[i]) / max(float(np.max(m[i])), 1e-12)
            for _, m in cols[2:]]
    rows.append(row)
  path = os.path.join(out_dir, 'fig_4_2_grid.png')
  figures.image_grid(
      rows, row_labels=[names[int(labels[i])] for i in order[:num]],
      col_labels=[c for c, _ in cols], overlays=[False] + [True] * (
          len(cols) - 1), path=path)
  return path
