"""Study B, statistics: per-image results -> tables and tests (pure).

`compute(results, sequence, bootstrap=...)` turns the per-stage arrays of
`studies.cooperative_evaluate` (stage name -> `StageResult`) into every
table of the report (`report.tables.Table`), rows in the order of the
thesis's tables.
Per-image metrics are shown as mean ± sample std over the images where
they are defined (a study without gaze has no KL, CC or HS; one without
fixations no NSS or AUC-Judd), with that count beside the cell when it is
not every image; each metric's count is also its own CSV column
(`n_<metric>`), while `n` counts the test images.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from cxr_jax.metrics import classification as cls_metrics
from cxr_jax.metrics import stats
from cxr_jax.report import tables
from cxr_jax.studies import comparisons
from cxr_jax.studies import cooperative_evaluate as evaluate

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
TTEST_METRICS = ('kl', 'cc', 'hs')
Rows = list[dict[str, Any]]


def classifier_stages(sequence: Sequence[str]) -> dict[str, tuple]:
  """Table 4.1's rows whose stage ran: row name -> (stage, thesis AUC,
  thesis accuracy)."""
  return {row: (name, auc, acc) for row, name, auc, acc in CLASSIFIERS
          if name in sequence}


def saliency_stages(sequence: Sequence[str]) -> dict[str, tuple]:
  """Table 4.2's rows with a stage that ran: row name -> (its first such
  stage, thesis KL, CC, HS)."""
  out = {}
  for row, names, *thesis in SALIENCY:
    name = next((n for n in names if n in sequence), None)
    if name is not None:
      out[row] = (name, *thesis)
  return out


def mean_std(v: Any) -> str:
  """mean ± sample std over the defined values, with their count when some
  are undefined (NaN: a study without gaze)."""
  v = np.asarray(v, np.float64)
  n = int(np.isfinite(v).sum())
  if n == 0:
    return 'n/a'
  text = f'{np.nanmean(v):.3f} ± {np.nanstd(v, ddof=1):.3f}'
  return text if n == v.size else f'{text} (n={n})'


def _cells(m: Mapping[str, np.ndarray], metrics: Sequence[str]
           ) -> tuple[dict[str, str], dict[str, int]]:
  """('mean ± std' per metric, its own count of defined images)."""
  return ({k: mean_std(m[k]) for k in metrics},
          {f'n_{k}': int(np.isfinite(np.asarray(m[k], np.float64)).sum())
           for k in metrics})


def table_4_1(classified: Mapping[str, dict], stages: Mapping[str, tuple], *,
              bootstrap: int) -> Rows:
  """OvR macro AUC with a class-stratified bootstrap 95% CI, micro and
  Hand-Till AUC, per-class AUC and accuracy, beside the thesis's."""
  rows = []
  for row, p in classified.items():
    name, t_auc, t_acc = stages[row]
    rep = cls_metrics.multiclass_report(p['label'], p['probs'],
                                        scores=p['log_odds'])
    ci = cls_metrics.bootstrap_ci(
        lambda y, q: cls_metrics.roc_auc_ovr(q, y, average='macro'),
        p['label'], p['log_odds'], n=bootstrap, stratify=p['label'])
    rows.append({
        'method': row, 'stage': name, 'auc_ovr_macro': rep['auc_ovr_macro'],
        'auc_95ci': f"[{ci['low']:.3f}, {ci['high']:.3f}]",
        'auc_micro': rep['auc_ovr_micro'], 'auc_hand_till': rep['auc_hand_till'],
        'auc_normal': rep['auc_class0'], 'auc_chf': rep['auc_class1'],
        'auc_pneumonia': rep['auc_class2'], 'accuracy': rep['accuracy'],
        'n': rep['n'], 'thesis_auc': t_auc, 'thesis_accuracy': t_acc})
  return rows


def _metric_table(results: Mapping[str, dict], stages: Mapping[str, tuple],
                  metrics: Sequence[str], thesis: Sequence[str] = ()
                  ) -> tables.Table:
  """Per row: each metric's cell, `n` (test images) and the thesis's
  values; the CSV adds each metric's own count (`n_<metric>`), which the
  Markdown cells carry as '(n=K)'."""
  rows, shown = [], []
  for row, m in results.items():
    cells, counts = _cells(m, metrics)
    disp = {'method': row, 'stage': stages[row][0], **cells,
            'n': int(len(m['kl'])),
            **dict(zip(thesis, stages[row][1:]))}
    rows.append({**disp, **counts})
    shown.append(disp)
  return tables.Table(rows, display_rows=shown)


def per_image(salient: Mapping[str, dict]) -> Rows:
  """One row per saliency model and test image."""
  return [{'method': row, 'index': int(idx),
           **{k: float(m[k][i]) for k in evaluate.SALIENCY_METRICS}}
          for row, m in salient.items() for i, idx in enumerate(m['index'])]


def ttests(salient: Mapping[str, dict]) -> Rows:
  """Two-sided paired t-tests (paired by test image) of the thesis's pairs
  (`comparisons.study_b_pairs`) on KL, CC and HS."""
  rows = []
  for a, b in comparisons.study_b_pairs(salient):
    for metric in TTEST_METRICS:
      t = stats.paired_ttest(salient[a][metric], salient[b][metric])
      rows.append({'a': a, 'b': b, 'metric': metric,
                   'mean_diff': t['mean_diff'], 't': t['t'], 'p': t['p'],
                   'significant': t['p'] < 0.05, 'n': t['n']})
  return rows


def compute(results: Mapping[str, evaluate.StageResult],
            sequence: Sequence[str], *, bootstrap: int
            ) -> dict[str, tables.Table]:
  """Every table of the report, keyed by file stem: table_4_1, table_4_2,
  per_image_saliency, ttests and cam_vs_gaze (beyond the thesis: each
  classifier's Grad-CAM against the gaze maps)."""
  cls, sal = classifier_stages(sequence), saliency_stages(sequence)
  pick = lambda rows, field: {r: getattr(results[s[0]], field)
                              for r, s in rows.items()}
  salient = pick(sal, 'saliency')
  return {
      'table_4_1': tables.Table(table_4_1(pick(cls, 'classified'), cls,
                                          bootstrap=bootstrap)),
      'table_4_2': _metric_table(salient, sal, evaluate.SALIENCY_METRICS,
                                 ('thesis_kl', 'thesis_cc', 'thesis_hs')),
      'per_image_saliency': tables.Table(per_image(salient)),
      'ttests': tables.Table(ttests(salient)),
      'cam_vs_gaze': _metric_table(pick(cls, 'cam_scores'), cls,
                                   evaluate.CAM_METRICS)}
