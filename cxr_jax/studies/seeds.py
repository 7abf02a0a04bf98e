r"""Either study across training seeds: one report from several runs' reports.

A single run's statistics pair (or pool) the test images, so they measure
how consistently one trained model beats another over images; they say
nothing of how a retrained model would fare. Small data (the demos; the
eye-gaze dataset's 983 training images too) makes that second source of
variance large. Train the study once per seed, then pool the reports:

  python launch/sweep.py --config=configs/cooperative.py:demo \
      --workdir=workdirs/coop_seeds --only=seed0,seed1,seed2
  python -m cxr_jax.studies.seeds workdirs/coop_seeds/seed0 \
      workdirs/coop_seeds/seed1 workdirs/coop_seeds/seed2 \
      --out=workdirs/coop_seeds/pooled

(`configs/gradcam_benchmark.py` has the same seed points, for Study A.) The
study is recognised by the per-image table in each run's `report/`:
  Study B  per_image_saliency.csv (KL, CC, HS by `method`) and
           table_4_1.csv (OvR macro AUC, accuracy)
  Study A  per_image.csv (Diff_GradCAM, EHR AUC by `model`) and
           table_3_1.csv (accuracy, AUC)
Outputs in `--out` (default: `pooled/` beside the first run):
  seeds_table_4_2 / seeds_table_3_2.{csv,md}  per method: each per-image
      metric as the mean ± sample std of the runs' test-set means, and each
      run's mean
  seeds_table_4_1 / seeds_table_3_1.{csv,md}  the classification metrics,
      the same way
  seeds_ttests.{csv,md}  two-sided paired t-tests over runs (a run's
      test-set mean is one observation, paired by run): Study B the
      report's pairs (Ours vs each saliency baseline, Res_SE-UNet vs
      UNet_S, unadjusted as in the thesis); Study A every pair of models,
      with Holm-adjusted p-values per metric (`p_holm`)
  seeds.md  all of it
"""
from __future__ import annotations

import csv
import dataclasses
import os
from typing import Callable, Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np

from cxr_jax.metrics import stats
from cxr_jax.report import tables
from cxr_jax.studies import comparisons


@dataclasses.dataclass(frozen=True)
class Study:
  """Where a study's report keeps what is pooled, and how it is compared."""
  title: str
  per_image: str  # file under report/
  key: str  # its method column
  metrics: tuple[str, ...]  # per-image columns, averaged per run
  table: str  # the classification table under report/
  table_metrics: tuple[str, ...]
  names: tuple[str, str]  # output stems of the two pooled tables
  titles: tuple[str, str]  # and their titles
  pairs: Callable[[list[str]], list[tuple[str, str]]]
  holm: bool  # adjust each metric's family of pairs


STUDIES = {
    'cooperative': Study(
        'Study B', 'per_image_saliency.csv', 'method', ('kl', 'cc', 'hs'),
        'table_4_1.csv', ('auc_ovr_macro', 'accuracy'),
        ('table_4_2', 'table_4_1'),
        ("Table 4.2 over runs: saliency (authors' KL, CC, HS)",
         'Table 4.1 over runs: classification'),
        comparisons.study_b_pairs, holm=False),
    'gradcam_benchmark': Study(
        'Study A', 'per_image.csv', 'model', ('diff_gradcam', 'ehr_auc'),
        'table_3_1.csv', ('accuracy', 'auc'), ('table_3_2', 'table_3_1'),
        ('Table 3.2 over runs: Diff_GradCAM and EHR AUC',
         'Table 3.1 over runs: classification'),
        comparisons.all_pairs, holm=True),
}


def detect(run_dir: str) -> Study:
  """The study whose per-image table `run_dir/report/` holds."""
  for study in STUDIES.values():
    if os.path.exists(os.path.join(run_dir, 'report', study.per_image)):
      return study
  raise FileNotFoundError(
      f'{run_dir}/report: no ' + ' or '.join(
          s.per_image for s in STUDIES.values()) + " (run the study's "
      'report first: the sequence job writes it at the end)')


def _read_csv(path: str, need: Sequence[str]) -> list[dict[str, str]]:
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path}: not found (run the study\'s report '
                            'first: the sequence job writes it at the end)')
  with open(path, newline='') as f:
    reader = csv.DictReader(f)
    missing = [c for c in need if c not in (reader.fieldnames or ())]
    if missing:
      raise ValueError(f'{path}: missing column(s) {", ".join(missing)}')
    return list(reader)


def _float(path: str, row_no: int, key: str, value: str) -> float:
  try:
    return float(value)
  except ValueError:
    raise ValueError(f'{path}, row {row_no}: {key} = {value!r} is not a '
                     'number') from None


def run_means(run_dir: str, study: Study) -> dict[str, dict[str, float]]:
  """{method: {metric: test-set mean}} of one run: the per-image metrics
  averaged over their defined values (as the report's tables), the
  classification metrics as the classification table has them."""
  out: dict[str, dict[str, list[float]]] = {}
  path = os.path.join(run_dir, 'report', study.per_image)
  for i, row in enumerate(_read_csv(path, (study.key,) + study.metrics), 2):
    m = out.setdefault(row[study.key], {k: [] for k in study.metrics})
    for k in study.metrics:
      m[k].append(_float(path, i, k, row[k]))
  means = {method: {k: float(np.nanmean(v)) if np.isfinite(v).any()
                    else float('nan') for k, v in m.items()}
           for method, m in out.items()}
  path = os.path.join(run_dir, 'report', study.table)
  if os.path.exists(path):
    for i, row in enumerate(
        _read_csv(path, (study.key,) + study.table_metrics), 2):
      means.setdefault(row[study.key], {}).update(
          {k: _float(path, i, k, row[k]) for k in study.table_metrics})
  return means


def pool(run_dirs: Sequence[str]) -> dict:
  """Rows of the three pooled tables from the runs' reports (keyed by the
  study's table names and 'ttests'), and the `Study` under 'study'."""
  if len(run_dirs) < 2:
    raise ValueError(f'need at least 2 runs to pool, got {len(run_dirs)}')
  study = detect(run_dirs[0])
  runs = [run_means(d, study) for d in run_dirs]
  names = [os.path.basename(os.path.normpath(d)) for d in run_dirs]
  methods = [m for m in runs[0] if all(m in r for r in runs)]
  for d, r in zip(run_dirs, runs):
    dropped = sorted(set(r) - set(methods))
    if dropped:
      logging.warning('%s: method(s) %s are not in every run; left out', d,
                      ', '.join(dropped))

  def has(m, metrics):
    return all(k in r[m] for r in runs for k in metrics)

  def table(metrics):
    rows = []
    for m in methods:
      if not has(m, metrics):
        continue
      row = {'method': m, 'runs': len(runs)}
      for k in metrics:
        v = np.array([r[m][k] for r in runs], np.float64)
        row[k] = tables.mean_std(np.mean(v), np.std(v, ddof=1))
        row.update({f'{k}[{n}]': float(x) for n, x in zip(names, v)})
      rows.append(row)
    return rows

  ttests = []
  compared = study.pairs([m for m in methods if has(m, study.metrics)])
  for k in study.metrics:
    rows = []
    for a, b in compared:
      t = stats.paired_ttest([r[a][k] for r in runs], [r[b][k] for r in runs])
      rows.append({'a': a, 'b': b, 'metric': k, 'mean_diff': t['mean_diff'],
                   't': t['t'], 'p': t['p'], 'runs': t['n']})
    if study.holm and rows:
      for row, p in zip(rows, stats.holm([r['p'] for r in rows])):
        row['p_holm'] = float(p)
    for row in rows:
      row['significant'] = bool(row.get('p_holm', row['p']) < 0.05)
    ttests += rows
  return {'study': study, study.names[0]: table(study.metrics),
          study.names[1]: table(study.table_metrics), 'ttests': ttests}


def write(run_dirs: Sequence[str], out_dir: str) -> dict:
  """Pools the runs and writes the tables and `seeds.md` to `out_dir`."""
  res = pool(run_dirs)
  os.makedirs(out_dir, exist_ok=True)
  study = res['study']
  titles = dict(zip(study.names, study.titles),
                ttests='Paired t-tests over runs (two-sided, p < 0.05' +
                (', Holm-adjusted per metric)' if study.holm else ')'))
  md = [f'# {study.title} across training runs', '',
        f'{len(run_dirs)} runs: ' + ', '.join(f'`{d}`' for d in run_dirs) +
        '. Each cell: mean ± sample std (ddof = 1) of the runs\' test-set '
        'means, then each run\'s mean. The t-tests pair the runs (one '
        'observation per run), so they ask whether a retrained model keeps '
        'its advantage; a single run\'s report pairs its test images.', '']
  for key, rows in res.items():
    if key != 'study' and rows:
      md += [tables.write_table(rows, os.path.join(out_dir, f'seeds_{key}'),
                                title=titles[key], floatfmt='.4g'), '']
  with open(os.path.join(out_dir, 'seeds.md'), 'w') as f:
    f.write('\n'.join(md))
  logging.info('Pooled report of %d runs written to %s', len(run_dirs),
               out_dir)
  return res


def main(argv: Sequence[str]) -> None:
  run_dirs = argv[1:]
  if not run_dirs:
    raise app.UsageError('Give the run directories (each with a report/).')
  out = flags.FLAGS.out or os.path.join(
      os.path.dirname(os.path.normpath(run_dirs[0])), 'pooled')
  write(run_dirs, out)
  with open(os.path.join(out, 'seeds.md')) as f:
    print(f.read())


if __name__ == '__main__':
  # Defined here, not at import: the module is a library too, and absl flag
  # names are global (another module's --out would collide).
  flags.DEFINE_string('out', '', 'Output folder; default: <parent of the '
                      'first run>/pooled.')
  app.run(main)
