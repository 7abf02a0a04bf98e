r"""Study B across training seeds: one report from several runs' reports.

A single run's paired t-tests pair the test images, so they measure how
consistently one trained model beats another over images; they say nothing
of how a retrained model would fare. Small data (the demo; the eye-gaze
dataset's 983 training images too) makes that second source of variance
large. Train the study once per seed, then pool the reports:

  python launch/sweep.py --config=configs/cooperative.py:demo \
      --workdir=workdirs/coop_seeds --only=seed0,seed1,seed2
  python -m cxr_jax.studies.seeds workdirs/coop_seeds/seed0 \
      workdirs/coop_seeds/seed1 workdirs/coop_seeds/seed2 \
      --out=workdirs/coop_seeds/pooled

Each run directory holds `report/per_image_saliency.csv` and
`report/table_4_1.csv` (written by `cxr_jax.studies.cooperative`). Outputs
in `--out`:
  seeds_table_4_2.{csv,md}  per method: KL, CC, HS as the mean ± sample std
                            of the runs' test-set means, and each run's mean
  seeds_table_4_1.{csv,md}  per classifier: OvR macro AUC and accuracy, the
                            same way
  seeds_ttests.{csv,md}     two-sided paired t-tests over runs (a run's
                            test-set mean is one observation, paired by
                            run) for the report's pairs: Ours vs each
                            saliency baseline, Res_SE-UNet vs UNet_S
  seeds.md                  all of it
"""
from __future__ import annotations

import csv
import os
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np

from cxr_jax.metrics import stats
from cxr_jax.report import tables
from cxr_jax.studies import cooperative

SALIENCY_METRICS = ('kl', 'cc', 'hs')
CLASSIFICATION_METRICS = ('auc_ovr_macro', 'accuracy')


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


def run_means(run_dir: str) -> dict[str, dict[str, float]]:
  """{method: {metric: test-set mean}} of one run: the saliency metrics
  averaged over its defined per-image values (as Table 4.2), the
  classification metrics as Table 4.1 has them."""
  out: dict[str, dict[str, list[float]]] = {}
  path = os.path.join(run_dir, 'report', 'per_image_saliency.csv')
  for i, row in enumerate(_read_csv(path, ('method',) + SALIENCY_METRICS), 2):
    m = out.setdefault(row['method'], {k: [] for k in SALIENCY_METRICS})
    for k in SALIENCY_METRICS:
      m[k].append(_float(path, i, k, row[k]))
  means = {method: {k: float(np.nanmean(v)) if np.isfinite(v).any()
                    else float('nan') for k, v in m.items()}
           for method, m in out.items()}
  path = os.path.join(run_dir, 'report', 'table_4_1.csv')
  if os.path.exists(path):
    for i, row in enumerate(
        _read_csv(path, ('method',) + CLASSIFICATION_METRICS), 2):
      means.setdefault(row['method'], {}).update(
          {k: _float(path, i, k, row[k]) for k in CLASSIFICATION_METRICS})
  return means


def pool(run_dirs: Sequence[str]) -> dict[str, list[dict]]:
  """Rows of the three pooled tables from the runs' reports."""
  if len(run_dirs) < 2:
    raise ValueError(f'need at least 2 runs to pool, got {len(run_dirs)}')
  runs = [run_means(d) for d in run_dirs]
  names = [os.path.basename(os.path.normpath(d)) for d in run_dirs]
  methods = [m for m in runs[0] if all(m in r for r in runs)]
  for d, r in zip(run_dirs, runs):
    dropped = sorted(set(r) - set(methods))
    if dropped:
      logging.warning('%s: method(s) %s are not in every run; left out', d,
                      ', '.join(dropped))

  def table(metrics):
    rows = []
    for m in methods:
      if not all(k in runs[0][m] for k in metrics):
        continue
      row = {'method': m, 'runs': len(runs)}
      for k in metrics:
        v = np.array([r[m][k] for r in runs], np.float64)
        row[k] = tables.mean_std(np.mean(v), np.std(v, ddof=1))
        row.update({f'{k}[{n}]': float(x) for n, x in zip(names, v)})
      rows.append(row)
    return rows

  ttests = []
  saliency_rows = [m for m in methods
                   if all(k in runs[0][m] for k in SALIENCY_METRICS)]
  for a, b in cooperative.ttest_pairs(saliency_rows):
    for k in SALIENCY_METRICS:
      t = stats.paired_ttest([r[a][k] for r in runs], [r[b][k] for r in runs])
      ttests.append({'a': a, 'b': b, 'metric': k,
                     'mean_diff': t['mean_diff'], 't': t['t'], 'p': t['p'],
                     'significant': bool(t['p'] < 0.05), 'runs': t['n']})
  return {'table_4_2': table(SALIENCY_METRICS),
          'table_4_1': table(CLASSIFICATION_METRICS), 'ttests': ttests}


def write(run_dirs: Sequence[str], out_dir: str) -> dict[str, list[dict]]:
  """Pools the runs and writes the tables and `seeds.md` to `out_dir`."""
  res = pool(run_dirs)
  os.makedirs(out_dir, exist_ok=True)
  md = ['# Study B across training runs', '',
        f'{len(run_dirs)} runs: ' + ', '.join(f'`{d}`' for d in run_dirs) +
        '. Each cell: mean ± sample std (ddof = 1) of the runs\' test-set '
        'means, then each run\'s mean. The t-tests pair the runs (one '
        'observation per run), so they ask whether a retrained model keeps '
        'its advantage; a single run\'s report pairs its test images.', '']
  titles = {'table_4_2': 'Table 4.2 over runs: saliency (authors\' KL, CC, '
                         'HS)',
            'table_4_1': 'Table 4.1 over runs: classification',
            'ttests': 'Paired t-tests over runs (two-sided, p < 0.05)'}
  for key, rows in res.items():
    if rows:
      md += [tables.write_table(rows, os.path.join(out_dir, f'seeds_{key}'),
                                title=titles[key], floatfmt='.4g'), '']
  with open(os.path.join(out_dir, 'seeds.md'), 'w') as f:
    f.write('\n'.join(md))
  logging.info('Pooled report of %d runs written to %s', len(run_dirs),
               out_dir)
  return res


_OUT = flags.DEFINE_string('out', '', 'Output folder; default: '
                           '<parent of the first run>/pooled.')


def main(argv: Sequence[str]) -> None:
  run_dirs = argv[1:]
  if not run_dirs:
    raise app.UsageError('Give the run directories (each with a report/).')
  out = _OUT.value or os.path.join(
      os.path.dirname(os.path.normpath(run_dirs[0])), 'pooled')
  write(run_dirs, out)
  with open(os.path.join(out, 'seeds.md')) as f:
    print(f.read())


if __name__ == '__main__':
  app.run(main)
