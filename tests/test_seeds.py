"""Study B pooled over training runs (`cxr_jax.studies.seeds`)."""
import csv
import os

import numpy as np
import pytest
from scipy import stats as sps

from cxr_jax.studies import seeds

METHODS = ('Ours', 'MT-UNet', 'Res_SE-UNet', 'UNet_S')


def _write(path, header, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)


def _runs(tmp_path, n_runs=3, n_images=5, seed=0):
  """Fake reports; returns the run dirs and the per-image values."""
  rng = np.random.default_rng(seed)
  dirs, values = [], {}
  for r in range(n_runs):
    d = str(tmp_path / f'seed{r}')
    rows = []
    for m in METHODS:
      v = rng.uniform(0.3, 1.0, size=(n_images, 3))
      if m == 'UNet_S' and r == 0:
        v[1, 0] = np.nan  # an image without gaze: left out of the mean
      values[(r, m)] = v
      rows += [[m, i, *v[i], 0.0] for i in range(n_images)]
    _write(os.path.join(d, 'report', 'per_image_saliency.csv'),
           ['method', 'index', 'kl', 'cc', 'hs', 'nss'], rows)
    _write(os.path.join(d, 'report', 'table_4_1.csv'),
           ['method', 'stage', 'auc_ovr_macro', 'accuracy'],
           [['Ours', 'stage3', 0.9 + 0.01 * r, 0.8],
            ['DNet201', 'densenet201', 0.85, 0.7 - 0.01 * r]])
    dirs.append(d)
  return dirs, values


def test_pooled_tables_and_run_level_ttests(tmp_path):
  dirs, values = _runs(tmp_path)
  res = seeds.write(dirs, str(tmp_path / 'pooled'))
  run_means = {(r, m): np.nanmean(values[(r, m)], axis=0)
               for r in range(3) for m in METHODS}
  t42 = {row['method']: row for row in res['table_4_2']}
  assert set(t42) == set(METHODS)  # DNet201 has no saliency rows
  for m in METHODS:
    kl = np.array([run_means[(r, m)][0] for r in range(3)])
    assert t42[m]['kl'] == f'{kl.mean():.3f} ± {kl.std(ddof=1):.3f}'
    np.testing.assert_allclose(t42[m]['kl[seed2]'], kl[2])
  t41 = {row['method']: row for row in res['table_4_1']}
  assert t41['Ours']['auc_ovr_macro'] == '0.910 ± 0.010'
  assert t41['DNet201']['accuracy'] == '0.690 ± 0.010'
  pairs = [(t['a'], t['b']) for t in res['ttests'] if t['metric'] == 'kl']
  assert pairs == [('Ours', 'MT-UNet'), ('Ours', 'Res_SE-UNet'),
                   ('Ours', 'UNet_S'), ('Res_SE-UNet', 'UNet_S')]
  for t in res['ttests']:
    k = ('kl', 'cc', 'hs').index(t['metric'])
    a = [run_means[(r, t['a'])][k] for r in range(3)]
    b = [run_means[(r, t['b'])][k] for r in range(3)]
    want = sps.ttest_rel(a, b)
    assert t['p'] == pytest.approx(want.pvalue) and t['runs'] == 3
    assert t['t'] == pytest.approx(want.statistic)
  for name in ('seeds.md', 'seeds_table_4_2.csv', 'seeds_table_4_1.md',
               'seeds_ttests.csv'):
    assert os.path.getsize(tmp_path / 'pooled' / name) > 0


def test_bad_input_names_the_file(tmp_path):
  dirs, _ = _runs(tmp_path, n_runs=2)
  with pytest.raises(ValueError, match='at least 2 runs'):
    seeds.pool(dirs[:1])
  with pytest.raises(FileNotFoundError, match='nowhere.*per_image_saliency'):
    seeds.pool([dirs[0], str(tmp_path / 'nowhere')])
  path = os.path.join(dirs[1], 'report', 'per_image_saliency.csv')
  _write(path, ['method', 'index', 'kl', 'cc'], [['Ours', 0, 1.0, 0.5]])
  with pytest.raises(ValueError, match=r'per_image_saliency.csv: missing '
                     r'column\(s\) hs'):
    seeds.pool(dirs)
  _write(path, ['method', 'index', 'kl', 'cc', 'hs'],
         [['Ours', 0, 1.0, 0.5, 0.4], ['Ours', 1, 'oops', 0.5, 0.4]])
  with pytest.raises(ValueError, match=r"row 3: kl = 'oops'"):
    seeds.pool(dirs)


def test_study_a_runs_compare_every_pair_with_holm(tmp_path):
  rng = np.random.default_rng(1)
  models = ('vgg16', 'resnet50', 'vit_b16')
  dirs, means = [], {}
  for r in range(4):
    d = str(tmp_path / f'seed{r}')
    rows = []
    for j, m in enumerate(models):
      v = rng.normal(0.2 - 0.1 * j, 0.1, size=(6, 2))
      means[(r, m)] = v.mean(axis=0)
      rows += [[m, 'net', i, *v[i]] for i in range(6)]
    _write(os.path.join(d, 'report', 'per_image.csv'),
           ['model', 'network', 'index', 'diff_gradcam', 'ehr_auc'], rows)
    _write(os.path.join(d, 'report', 'table_3_1.csv'),
           ['model', 'network', 'accuracy', 'auc'],
           [[m, 'net', 0.8, 0.9] for m in models])
    dirs.append(d)
  res = seeds.write(dirs, str(tmp_path / 'pooled'))
  assert res['study'].title == 'Study A'
  assert [row['method'] for row in res['table_3_2']] == list(models)
  assert res['table_3_1'][0]['auc'] == '0.900 ± 0.000'
  diff = [t for t in res['ttests'] if t['metric'] == 'diff_gradcam']
  assert [(t['a'], t['b']) for t in diff] == [
      ('vgg16', 'resnet50'), ('vgg16', 'vit_b16'), ('resnet50', 'vit_b16')]
  raw = [sps.ttest_rel([means[(r, t['a'])][0] for r in range(4)],
                       [means[(r, t['b'])][0] for r in range(4)]).pvalue
         for t in diff]
  order = np.argsort(raw)
  holm = np.empty(3)
  holm[order] = np.minimum(1, np.maximum.accumulate(
      (3 - np.arange(3)) * np.asarray(raw)[order]))
  np.testing.assert_allclose([t['p'] for t in diff], raw)
  np.testing.assert_allclose([t['p_holm'] for t in diff], holm)
  assert all(t['significant'] == (t['p_holm'] < 0.05) for t in diff)
  assert os.path.exists(tmp_path / 'pooled' / 'seeds_table_3_2.md')


def test_unknown_run_folder_is_named(tmp_path):
  (tmp_path / 'a' / 'report').mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match=r'a/report: no '
                     r'per_image_saliency.csv or per_image.csv'):
    seeds.pool([str(tmp_path / 'a'), str(tmp_path / 'b')])


def test_command_line_writes_the_pooled_report(tmp_path):
  """`python -m cxr_jax.studies.seeds RUN...` (its flags are defined only
  when run as a program, so importing the module beside others that define
  --out, such as benchmarks.loader, is fine)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import benchmarks.loader  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  dirs, _ = _runs(tmp_path, n_runs=2)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run(
      [sys.executable, '-m', 'cxr_jax.studies.seeds', *dirs,
       f'--out={tmp_path}/p'], cwd=root, capture_output=True, text=True,
      timeout=120, env=dict(os.environ, PYTHONPATH=root), check=False)
  assert out.returncode == 0, out.stderr
  assert '# Study B across training runs' in out.stdout
  assert os.path.exists(tmp_path / 'p' / 'seeds_ttests.csv')
