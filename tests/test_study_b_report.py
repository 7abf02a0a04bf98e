"""Study B report steps without training: statistics and writer on
synthetic per-image arrays (the end-to-end demo is in test_configs)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from scipy import stats as sps

from configs import cooperative as coop_config
from cxr_jax import jobs
from cxr_jax.report import cooperative as writer
from cxr_jax.report import tables
from cxr_jax.studies import cooperative
from cxr_jax.studies import cooperative_evaluate as evaluate
from cxr_jax.studies import cooperative_statistics as statistics

N = 8


def _saliency(rng, no_gaze=(), no_fix=()):
  m = {k: rng.uniform(0.2, 1.0, N) for k in evaluate.SALIENCY_METRICS}
  for k in ('kl', 'cc', 'hs', 'kl_mit', 'sim_mit', 'kl_pred_gt_mit'):
    m[k][list(no_gaze)] = np.nan
  for k in ('nss', 'auc_judd'):
    m[k][list(no_fix)] = np.nan
  m['index'] = np.arange(N) + 100
  m['pred'] = rng.uniform(size=(N, 6, 5))
  return m


def _classified(rng):
  label = np.arange(N) % 3
  logits = rng.normal(size=(N, 3)) + 2.0 * np.eye(3)[label]
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  return dict(label=label, probs=probs, log_odds=np.log(probs / (1 - probs)),
              index=np.arange(N))


def _results(sequence, seed=0):
  rng = np.random.default_rng(seed)
  cls = {s[0] for s in statistics.classifier_stages(sequence).values()}
  sal = {s[0] for s in statistics.saliency_stages(sequence).values()}
  out = {}
  for name in sequence:
    r = evaluate.StageResult(network=f'{name}_net')
    if name in cls:
      r.classified = _classified(rng)
      r.cams = rng.uniform(size=(N, 6, 5))
      r.cam_scores = {k: rng.uniform(size=N) for k in evaluate.CAM_METRICS}
      r.cam_scores['kl'][0] = np.nan
    if name in sal:
      r.saliency = _saliency(rng, no_gaze=(1,) if name == 'unet_s' else (),
                             no_fix=(2, 3) if name == 'stage3' else ())
    out[name] = r
  return out


def test_kl_pred_gt_is_the_mit_kl_of_the_prediction_against_gaze():
  rng = np.random.default_rng(0)
  gaze = rng.uniform(size=(3, 4, 5))
  gaze[1, :2] = 0.0  # no gaze on some pixels: still finite
  gaze[2] = 0.0  # a study without gaze: undefined
  pred = rng.uniform(size=(3, 4, 5))
  got = evaluate.kl_pred_gt(gaze, pred)
  eps = 2.2204e-16
  for i in range(2):
    p, g = pred[i] / pred[i].sum(), gaze[i] / gaze[i].sum()
    want = np.sum(p * np.log(eps + p / (g + eps)))
    np.testing.assert_allclose(got[i], want, rtol=1e-12)
  assert np.isfinite(got[1]) and got[1] > 10  # mass where G = 0 is penalised
  assert np.isnan(got[2])


def test_tables_follow_the_thesis_order_with_each_metrics_own_n():
  sequence = ('unet_s', 'mtunet', 'stage1_finetune', 'stage2', 'stage3',
              'res_se_unet', 'densenet201')
  results = _results(sequence)
  tabs = statistics.compute(results, sequence, bootstrap=20)
  t41 = tabs['table_4_1'].rows
  assert [r['method'] for r in t41] == ['Ours', 'MT-UNet', 'DNet201-CL',
                                        'DNet201']
  t42 = tabs['table_4_2']
  assert [r['method'] for r in t42.rows] == ['Ours', 'MT-UNet',
                                             'Res_SE-UNet', 'UNet_S']
  ours, unet_s = t42.rows[0], t42.rows[3]
  assert ours['stage'] == 'stage3'  # preferred over stage2
  assert (ours['n'], ours['n_kl'], ours['n_nss'], ours['n_auc_judd']) == (
      N, N, N - 2, N - 2)
  assert ours['nss'].endswith(f'(n={N - 2})') and '(n=' not in ours['kl']
  assert unet_s['n_kl'] == unet_s['n_kl_pred_gt_mit'] == N - 1
  v = results['unet_s'].saliency['kl']
  assert unet_s['kl'] == (f'{np.nanmean(v):.3f} ± {np.nanstd(v, ddof=1):.3f}'
                          f' (n={N - 1})')
  # The Markdown rows carry the counts in their cells, not as columns.
  assert not any(k.startswith('n_') for k in t42.display_rows[0])
  assert list(t42.display_rows[0])[-5:] == [
      'kl_pred_gt_mit', 'n', 'thesis_kl', 'thesis_cc', 'thesis_hs']
  cam = tabs['cam_vs_gaze'].rows
  assert [r['n_kl'] for r in cam] == [N - 1] * 4
  assert len(tabs['per_image_saliency'].rows) == 4 * N
  assert tabs['per_image_saliency'].rows[0]['index'] == 100


def test_ttests_are_scipy_paired_tests_on_the_report_pairs():
  sequence = ('stage2', 'stage3', 'mtunet', 'unet_s', 'res_se_unet')
  results = _results(sequence, seed=1)
  rows = statistics.compute(results, sequence, bootstrap=10)['ttests'].rows
  assert [(r['a'], r['b']) for r in rows[::3]] == [
      ('Ours', 'MT-UNet'), ('Ours', 'Res_SE-UNet'), ('Ours', 'UNet_S'),
      ('Res_SE-UNet', 'UNet_S')]
  by = {'Ours': 'stage3', 'MT-UNet': 'mtunet', 'Res_SE-UNet': 'res_se_unet',
        'UNet_S': 'unet_s'}
  for r in rows:
    a = results[by[r['a']]].saliency[r['metric']]
    b = results[by[r['b']]].saliency[r['metric']]
    ok = np.isfinite(a) & np.isfinite(b)
    want = sps.ttest_rel(a[ok], b[ok])
    assert r['p'] == pytest.approx(want.pvalue, rel=1e-12)
    assert r['n'] == ok.sum()


def test_report_needs_the_bootstrap_key(tmp_path):
  c = coop_config.get_config('demo')
  if 'bootstrap' in c:
    with c.unlocked():
      del c['bootstrap']
  with pytest.raises(ValueError, match=r'config.bootstrap .* is missing'):
    cooperative.report(c, str(tmp_path), {})


def test_writer_settings_name_networks_gaze_recipe_and_machine(tmp_path):
  c = coop_config.get_config('demo')
  c.sequence = ('stage1_contrastive', 'stage1_finetune', 'stage2', 'stage3',
                'mtunet', 'gazegnn')
  with c.unlocked():
    c.bootstrap = 7
  stages = {n: jobs.stage_config(c, n, '/w') for n in c.sequence}
  results = _results(c.sequence)
  tabs = statistics.compute(results, c.sequence, bootstrap=7)
  rng = np.random.default_rng(2)
  test = dict(image=rng.uniform(size=(N, 6, 5, 1)), gaze=rng.uniform(
      size=(N, 6, 5)), label=np.arange(N) % 3)
  out = str(tmp_path / 'report')
  writer.write(out, c, stages, tabs=tabs, test=test,
               fig_columns=cooperative.figure_columns(results, c.sequence),
               t0=0.0)
  md = open(os.path.join(out, 'report.md')).read()
  assert 'stage3 = `cooperative_small`' in md and 'gazegnn = `gazegnn_tiny`' in md
  assert 'recipe `authors` for every model' in md
  assert 'GazeGNN took the `authors` map' in md and '`duration`' in md
  assert 'Bootstrap replicates (AUC 95% CI): 7.' in md
  assert 'KL(pred ‖ gt)' in md and '`kl_pred_gt_mit`' in md
  machine = json.load(open(os.path.join(out, 'machine.json')))
  assert machine['cpu']['model'] in md and machine['jax'] in md
  for stem in ('table_4_1', 'table_4_2', 'ttests', 'cam_vs_gaze',
               'per_image_saliency'):
    assert os.path.getsize(os.path.join(out, stem + '.csv')) > 0, stem
  assert os.path.getsize(os.path.join(out, 'fig_4_2_grid.png')) > 0
  back = tables.read_csv(os.path.join(out, 'table_4_2.csv'))
  assert back[0]['n_nss'] == str(N - 2)
  labels = [label for label, _ in cooperative.figure_columns(results,
                                                             c.sequence)]
  assert labels == ['Ours\n(stage3_net)', 'MT-UNet\n(mtunet_net)',
                    'Grad-CAM DenseNet-201\n(stage1_finetune_net)']
