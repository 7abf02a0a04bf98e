"""Study A, statistics: per-image results -> tables and tests (pure).

Every function takes `results` (stage -> `gradcam_evaluate.ModelResult`, in
report order) or per-model arrays and returns table rows: plain dicts, the
CSV record at full precision, and where the Markdown shows something else
('mean ± std', a CI) a `display` row list beside them. Nothing here reads
models or writes files.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from cxr_jax.evaluators import cam_localization as cam_loc
from cxr_jax.metrics import classification as cls_metrics
from cxr_jax.metrics import heatmap
from cxr_jax.metrics import stats
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
FAMILIES = ('vgg', 'resnet', 'vit')
Rows = list[dict[str, Any]]


def family(network: str) -> str:
  """'vgg', 'resnet', 'vit' (the network name's prefix) or 'other'."""
  return next((f for f in FAMILIES if network.startswith(f)), 'other')


def _cam_tags(cam) -> dict[str, str]:
  return dict(cam_method=cam.method, cam_targets=cam.targets,
              ehr_variant=cam.ehr_variant)


def table_3_1(results, *, bootstrap: int, seed: int) -> tuple[Rows, Rows]:
  """Accuracy, precision, recall, AUC with class-stratified bootstrap CIs."""
  rows, shown = [], []
  for name, r in results.items():
    y, p, lp = r.pred['label'], r.pred['probs'], r.pred['log_odds']
    row = dict(model=name, network=r.network, n=int(len(y)))
    disp = dict(row)
    for m in CLS_METRICS:
      ci = cls_metrics.bootstrap_ci(
          lambda yy, pp, ll, m=m: cls_metrics.binary_report(
              yy, pp, scores=ll)[m], y, p, lp,
          n=bootstrap, stratify=y, seed=seed)
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


def table_3_2(results) -> tuple[Rows, Rows]:
  """Diff_GradCAM mean, sample std, min, max, n beside the thesis's."""
  rows, shown = [], []
  for name, r in results.items():
    s = heatmap.summarize(r.loc['diff_gradcam'])
    t = THESIS_3_2.get(name, (float('nan'), float('nan')))
    rows.append(dict(model=name, network=r.network, **s,
                     thesis_mean=t[0], thesis_std=t[1]))
    shown.append({'model': name, 'network': r.network,
                  'Diff_GradCAM (mean ± std)': tables.mean_std(s['mean'],
                                                               s['std']),
                  'min': s['min'], 'max': s['max'], 'n': s['n'],
                  'thesis (mean ± std)': tables.mean_std(*t)})
  return rows, shown


def localisation(results, cam) -> tuple[Rows, Rows]:
  """Each `LOC_METRICS` as mean ± sample std, with its own n where fewer
  images than scored define it (blank CAMs)."""
  rows, shown = [], []
  for name, r in results.items():
    row = dict(model=name, network=r.network, n=int(len(r.loc['index'])),
               **_cam_tags(cam))
    disp = dict(model=name, network=r.network, n=row['n'])
    for m in LOC_METRICS:
      s = heatmap.summarize(r.loc[m])
      row[f'{m}_mean'], row[f'{m}_std'] = s['mean'], s['std']
      row[f'{m}_n'] = s['n']
      disp[m] = tables.mean_std(s['mean'], s['std']) + (
          f' (n={s["n"]})' if s['n'] != row['n'] else '')
    rows.append(row)
    shown.append(disp)
  return rows, shown


def per_image(results, cam) -> Rows:
  """One row per model and masked test image: every value behind the
  tables."""
  rows = []
  for name, r in results.items():
    loc = r.loc
    for i in range(len(loc['index'])):
      rows.append(dict(
          model=name, network=r.network, index=int(loc['index'][i]),
          label=int(loc['label'][i]), prob=float(loc['prob'][i, 1]),
          pred=int(np.argmax(loc['prob'][i])), target=int(loc['target'][i]),
          **{m: float(loc[m][i]) for m in cam_loc.METRICS},
          **_cam_tags(cam)))
  return rows


def groups(results, metric: str) -> dict[str, np.ndarray]:
  """model -> its per-image values of `metric` (masked images, in order)."""
  return {n: r.loc[metric] for n, r in results.items()}


def anova_tukey(values: Mapping[str, Any], metric: str
                ) -> tuple[Rows, Rows, str]:
  """One-way ANOVA row, Tukey HSD rows and a note ('' when computed)."""
  try:
    a = stats.anova_oneway(values)
    tk = stats.tukey_hsd(values)
  except ValueError as e:
    return [], [], f'not computed: {e}'
  anova = [dict(metric=metric, **a, significant=bool(a['p'] < 0.05),
                groups=len(values))]
  return anova, tk, ''


def paired_tests(values: Mapping[str, Any], metric: str
                 ) -> tuple[Rows, Rows, str, str]:
  """Friedman row, Wilcoxon rows and their notes ('' when computed).

  Supplementary to `anova_tukey`: every model scores the same masked test
  images in the same order, so the per-image values are repeated measures,
  which the one-way ANOVA (the thesis's analysis, kept as the primary one)
  treats as independent. Friedman needs 3 models, Wilcoxon 2; either is
  skipped with a note when the values are not paired (unequal lengths).
  """
  fr, note_fr = [], ''
  try:
    f = stats.friedman(values)
    fr = [dict(metric=metric, **f, significant=bool(f['p'] < 0.05))]
  except ValueError as e:
    note_fr = f'not computed: {e}'
  try:
    wx, note_wx = [dict(metric=metric, **r)
                   for r in stats.pairwise_wilcoxon(values)], ''
  except ValueError as e:
    wx, note_wx = [], f'not computed: {e}'
  return fr, wx, note_fr, note_wx


def mean_ci(values: Mapping[str, Any], *, bootstrap: int, seed: int
            ) -> tuple[list[float], np.ndarray]:
  """Per model: the mean of the finite values and the (2, M) distances to
  the ends of its bootstrap 95% CI (NaN and 0 for a model without any)."""
  means, lo, hi = [], [], []
  for v in values.values():
    v = np.asarray(v, np.float64)
    v = v[np.isfinite(v)]
    if v.size:
      ci = cls_metrics.bootstrap_ci(np.mean, v, n=bootstrap, seed=seed)
      means.append(ci['estimate'])
      lo.append(ci['estimate'] - ci['low'])
      hi.append(ci['high'] - ci['estimate'])
    else:
      means.append(float('nan'))
      lo.append(0.0)
      hi.append(0.0)
  return means, np.array([lo, hi])


def family_means(results, metric: str = 'diff_gradcam'
                 ) -> dict[str, tuple[float, int]]:
  """'CNN' / 'ViT' -> (mean, n) of `metric` pooled over the family's
  models' finite per-image values."""
  fam: dict[str, list[float]] = {}
  for r in results.values():
    fam.setdefault('ViT' if family(r.network) == 'vit' else 'CNN',
                   []).extend(np.asarray(r.loc[metric]).tolist())
  return {k: (float(np.nanmean(v)), int(np.isfinite(v).sum()))
          for k, v in sorted(fam.items()) if len(v)}


def compute(results, cam, *, seed: int) -> dict[str, tables.Table]:
  """Every table of the report, keyed by its file stem."""
  out = {}
  for stem, (rows, shown) in (
      ('table_3_1', table_3_1(results, bootstrap=cam.bootstrap, seed=seed)),
      ('table_3_2', table_3_2(results)),
      ('localisation', localisation(results, cam))):
    out[stem] = tables.Table(rows, display_rows=shown)
  for metric, tag in (('diff_gradcam', 'diff'), ('ehr_auc', 'ehr')):
    values = groups(results, metric)
    anova, tukey, note = anova_tukey(values, metric)
    out[f'anova_{tag}'] = tables.Table(anova, note=note)
    out[f'tukey_{tag}'] = tables.Table(tukey, note=note)
    fr, wx, note_fr, note_wx = paired_tests(values, metric)
    out[f'friedman_{tag}'] = tables.Table(fr, note=note_fr)
    out[f'wilcoxon_{tag}'] = tables.Table(wx, note=note_wx)
  out['per_image'] = tables.Table(per_image(results, cam))
  return out
