"""Study A end to end in demo size: config, training sequence, report."""
from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from scipy import stats as sp_stats

from configs import cooperative
from configs import gradcam_benchmark
from cxr_jax import config_base
from cxr_jax import evaluators
from cxr_jax import jobs
from cxr_jax import runs
from cxr_jax.data import build_dataset
from cxr_jax.evaluators import cam_localization
from cxr_jax.report import gradcam as writer
from cxr_jax.report import tables
from cxr_jax.runtime import sharding
from cxr_jax.studies import gradcam_benchmark as study_a
from cxr_jax.studies import gradcam_statistics

OUTPUTS = ['table_3_1.csv', 'table_3_1.md', 'table_3_2.csv', 'table_3_2.md',
           'localisation.csv', 'localisation.md', 'anova_diff.csv',
           'anova_diff.md', 'tukey_diff.csv', 'tukey_diff.md',
           'anova_ehr.csv', 'anova_ehr.md', 'tukey_ehr.csv', 'tukey_ehr.md',
           'friedman_diff.md', 'wilcoxon_diff.csv', 'wilcoxon_diff.md',
           'friedman_ehr.md', 'wilcoxon_ehr.csv', 'wilcoxon_ehr.md',
           'per_image.csv', 'fig_3_1_heatmaps.png', 'fig_3_2_ehr_auc.png',
           'fig_cam_methods.png', 'report.md', 'machine.json']


def test_config_stages_follow_the_thesis():
  c = gradcam_benchmark.get_config()
  assert c.job == 'sequence' and c.report == 'gradcam_benchmark'
  assert tuple(c.sequence) == gradcam_benchmark.MODELS
  for name in c.sequence:
    s = jobs.stage_config(c, name, '/w')
    assert s.model.name == name and s.data == c.data and s.init.path == ''
    if name.startswith('vit'):
      assert (s.optim.name, s.optim.lr, s.total_epochs) == ('sgd', 1e-4, 300)
    else:
      assert (s.optim.name, s.optim.lr, s.total_epochs) == ('adam', 1e-4, 50)
    # A fixed-length run at a constant learning rate, as the thesis says.
    assert s.early_stopping_patience == 0 and s.plateau_patience == 0
  demo = gradcam_benchmark.get_config('demo')
  for name in demo.sequence:
    s = demo.stages[name]
    assert s.early_stopping_patience == 0 and s.plateau_patience == 0
  c.lock()
  c.init_dir = '/weights'  # what --config.init_dir=/weights does
  for name in c.sequence:
    assert jobs.stage_config(c, name, '/w').init.path == f'/weights/{name}'
  d = gradcam_benchmark.get_config('demo')
  # One stage per family (three distinct networks); all nine stay defined.
  assert tuple(d.sequence) == ('vgg16', 'resnet50', 'vit_b16')
  assert set(d.stages) == set(gradcam_benchmark.MODELS)
  assert [d.stages[n].model.name for n in d.sequence] == [
      'vgg_tiny', 'resnet_tiny', 'vit_tiny']
  assert tuple(d.data.image_size) == (128, 128)
  assert d.stages.vit_b16.model.img_size == 128
  assert d.cam.compare_model in d.sequence
  assert d.cam.targets == 'label' and d.cam.ehr_variant == 'thesis'


def test_init_dir_reaches_every_stage_without_from_stage():
  c = gradcam_benchmark.get_config()
  c.sequence = ('vgg16', 'resnet18')
  with c.unlocked():
    c.stages.resnet18.init.from_stage = 'vgg16'
  c.init_dir = '/weights'
  assert jobs.stage_config(c, 'vgg16', '/w').init.path == '/weights/vgg16'
  # An earlier stage's run wins over init_dir.
  assert jobs.stage_config(c, 'resnet18', '/w').init.path == '/w/vgg16'
  c.init_dir = ''
  assert jobs.stage_config(c, 'vgg16', '/w').init.path == ''
  # A stage's own path and init_dir disagreeing is an error naming both.
  c.init_dir = '/weights'
  c.stages.vgg16.init.path = '/elsewhere/vgg'
  with pytest.raises(ValueError, match=r"init_dir = '/weights' gives stage "
                     r"'vgg16'.*/weights/vgg16.*init.path = '/elsewhere/vgg'"):
    jobs.stage_config(c, 'vgg16', '/w')
  # Study B: the folder is the network's, and only networks with published
  # ImageNet weights read init_dir (the UNets and GazeGNN train from scratch).
  b = cooperative.get_config()
  b.init_dir = '/weights'
  path = lambda n: jobs.stage_config(b, n, '/w').init.path
  assert path('stage1_contrastive') == '/weights/densenet201'
  assert path('densenet201') == '/weights/densenet201'
  assert path('inception_resnet_v2') == '/weights/inception_resnet_v2'
  assert path('stage2') == '/w/stage1_finetune'
  assert path('mtunet') == path('unet_s') == path('gazegnn') == ''


def test_settings_name_the_vgg_cam_layer_and_the_network():
  c = gradcam_benchmark.get_config('demo')
  stages = {n: jobs.stage_config(c, n, '/w') for n in c.sequence}
  assert writer.network_label('vgg16', 'vgg_tiny') == 'vgg16 (vgg_tiny)'
  assert writer.network_label('vgg16', 'vgg16') == 'vgg16'
  test = dict(label=np.array([0, 1, 1, 1]))
  masked = dict(label=np.array([1, 1]))
  lines = writer.settings(c, stages, test, masked, '- Machine: m')
  vgg = [line for line in lines if 'Grad-CAM layer of VGG' in line]
  assert len(vgg) == 1 and 'relu5_3' in vgg[0] and '(vgg16)' in vgg[0]
  assert 'last convolution layer' in vgg[0]
  assert lines[-1] == '- Machine: m'
  assert '1 pneumothorax images whose mask has no pixel' in lines[0]
  del stages['vgg16']
  assert not any('VGG' in line for line in writer.settings(
      c, stages, test, masked, ''))


def test_sweep_one_point_per_model_and_per_seed():
  points = []
  gradcam_benchmark.sweep(lambda **kw: points.append(kw))
  models = len(gradcam_benchmark.MODELS)
  assert [p['name'] for p in points[:models]] == list(gradcam_benchmark.MODELS)
  assert all(p['sequence'] == (p['name'],) for p in points[:models])
  assert points[models:] == [dict(name=f'seed{i}', seed=i) for i in range(3)]


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
  """Two demo models (a CNN and a ViT), 6 steps each, then the report."""
  c = gradcam_benchmark.get_config('demo')
  c.sequence = ('resnet18', 'vit_b16')
  # The small phantom of siim_classifier's demo (shared cache, quick).
  c.data.phantom_num, c.data.num_per_class = 160, 80
  c.data.split_sizes = (112, 24, 24)
  for name in c.sequence:
    s = c.stages[name]
    s.total_steps = 6
    s.eval_every_steps = 3
    s.log_every_steps = 3
    s.evals.test.final = False
  c.cam.bootstrap = 50
  c.lock()
  wd = str(tmp_path_factory.mktemp('study_a'))
  jobs.run(c, wd)
  return c, wd


def test_report_writes_every_output(demo):
  _, wd = demo
  out = os.path.join(wd, 'report')
  for name in OUTPUTS:
    path = os.path.join(out, name)
    assert os.path.getsize(path) > 0, name
  t31 = tables.read_csv(os.path.join(out, 'table_3_1.csv'))
  assert [r['model'] for r in t31] == ['resnet18', 'vit_b16']
  assert float(t31[0]['thesis_auc']) == 0.942
  for r in t31:
    assert float(r['auc_ci_low']) <= float(r['auc']) <= float(r['auc_ci_high'])
  md = open(os.path.join(out, 'report.md')).read()
  assert "EHR variant: `thesis`" in md and 'policy `label`' in md
  assert 'from scratch' in md and 'fig_3_1_heatmaps.png' in md
  assert 'resnet18' in md  # compare_model resnet50 absent: first CNN used


def test_composed_report_is_stable(demo, tmp_path):
  """The report of the same trained runs, composed again, writes the same
  bytes in every table (report.md differs only in its wall times)."""
  c, wd = demo
  again = tmp_path / 'again'
  again.mkdir()
  for name in c.sequence:
    os.symlink(os.path.join(wd, name), again / name)
  stages = {n: jobs.stage_config(c, n, wd) for n in c.sequence}
  rows = study_a.report(c, str(again), stages)
  assert set(rows) == {
      'table_3_1', 'table_3_2', 'localisation', 'anova_diff', 'tukey_diff',
      'anova_ehr', 'tukey_ehr', 'friedman_diff', 'wilcoxon_diff',
      'friedman_ehr', 'wilcoxon_ehr', 'per_image'}
  first, second = os.path.join(wd, 'report'), str(again / 'report')
  names = sorted(f for f in os.listdir(first) if f.endswith(('.csv', '.md')))
  assert names == sorted(f for f in os.listdir(second)
                         if f.endswith(('.csv', '.md')))
  for name in names:
    a = open(os.path.join(first, name)).read().splitlines()
    b = open(os.path.join(second, name)).read().splitlines()
    if name == 'report.md':  # the wall-time table and line differ
      cut = a.index('## Wall times')
      assert b.index('## Wall times') == cut
      a, b = a[:cut], b[:cut]
    assert a == b, name
  assert len(rows['per_image']) == 2 * len(cam_localization.with_masks(
      build_dataset(c.data)['test'])['label'])


def test_anova_matches_scipy_on_per_image_values(demo):
  _, wd = demo
  out = os.path.join(wd, 'report')
  rows = tables.read_csv(os.path.join(out, 'per_image.csv'))
  assert {r['ehr_variant'] for r in rows} == {'thesis'}
  assert {r['cam_targets'] for r in rows} == {'label'}
  for metric, stem in (('diff_gradcam', 'anova_diff'), ('ehr_auc', 'anova_ehr')):
    groups = {}
    for r in rows:
      groups.setdefault(r['model'], []).append(float(r[metric]))
    vals = [np.asarray(v)[np.isfinite(v)] for v in groups.values()]
    ref = sp_stats.f_oneway(*vals)
    got = tables.read_csv(os.path.join(out, stem + '.csv'))[0]
    np.testing.assert_allclose(float(got['F']), ref.statistic, rtol=1e-10)
    np.testing.assert_allclose(float(got['p']), ref.pvalue, rtol=1e-8)


def test_supplementary_repeated_measures_in_report(demo):
  _, wd = demo
  out = os.path.join(wd, 'report')
  rows = tables.read_csv(os.path.join(out, 'per_image.csv'))
  groups = {}
  for r in rows:
    groups.setdefault(r['model'], []).append(float(r['diff_gradcam']))
  # Same images, same order under both models: a paired Wilcoxon applies.
  got = tables.read_csv(os.path.join(out, 'wilcoxon_diff.csv'))
  assert [(r['a'], r['b']) for r in got] == [('resnet18', 'vit_b16')]
  a, b = (np.asarray(groups[n]) for n in ('resnet18', 'vit_b16'))
  ok = np.isfinite(a) & np.isfinite(b)
  if np.all(a[ok] == b[ok]):
    assert float(got[0]['p']) == 1.0
  else:
    np.testing.assert_allclose(float(got[0]['p']),
                               sp_stats.wilcoxon(a[ok], b[ok]).pvalue,
                               rtol=1e-8)
  assert float(got[0]['p_holm']) == float(got[0]['p'])  # one pair
  md = open(os.path.join(out, 'report.md')).read()
  assert '## Supplementary: repeated measures' in md
  assert 'the same images under every model' in md
  assert 'Supplementary: pairwise Wilcoxon signed-rank, Diff_GradCAM' in md
  # Two models: Friedman (3 or more) is reported as not computed, with why.
  assert 'friedman_diff: not computed: Need at least 3 groups' in md


def test_paired_statistics_keys_and_notes():
  rng = np.random.default_rng(0)
  base = rng.normal(size=12)
  res = {n: base + s + rng.normal(0, .1, 12)
         for n, s in (('vgg16', .3), ('resnet50', .1), ('vit_b16', 0.))}
  fr, wx, note_fr, note_wx = gradcam_statistics.paired_tests(
      res, 'diff_gradcam')
  assert (note_fr, note_wx) == ('', '')
  assert set(fr[0]) == {'metric', 'statistic', 'p', 'n', 'k', 'significant'}
  assert (fr[0]['n'], fr[0]['k']) == (12, 3)
  assert len(wx) == 3 and set(wx[0]) == {
      'metric', 'a', 'b', 'n', 'median_diff', 'statistic', 'p', 'p_holm',
      'reject'}
  # Not paired (unequal lengths): both skipped with a note naming lengths.
  res['vit_b16'] = base[:-1]
  fr, wx, note_fr, note_wx = gradcam_statistics.paired_tests(
      res, 'diff_gradcam')
  assert fr == [] and wx == []
  assert 'same length' in note_fr and "'vit_b16': 11" in note_wx


def test_cam_evaluator_on_trained_cnn_gives_finite_diff(demo):
  c, wd = demo
  splits = build_dataset(c.data)
  run = runs.load(os.path.join(wd, 'resnet18'))  # config from config.json
  assert run.network == 'resnet_tiny'
  assert run.config.model.to_dict() == jobs.stage_config(
      c, 'resnet18', wd).model.to_dict()
  variables = run.variables
  ctx = run.eval_context(splits, batch_size=8, mesh=sharding.make_mesh())
  ev = evaluators.build(
      'cam', config_base.evaluator('cam_localization', 'test'), ctx)
  per = ev.per_image(variables)
  n_masked = len(cam_localization.with_masks(splits['test'])['label'])
  assert n_masked > 2 and len(per['diff_gradcam']) == n_masked
  assert np.all(np.isfinite(per['diff_gradcam']))
  assert np.all((per['ehr_auc'] >= 0) & (per['ehr_auc'] <= 1))
  res = ev.run(variables)
  assert res['n'] == n_masked
  assert set(res) >= {'diff_gradcam', 'ehr_auc', 'pointing_game', 'n'}
  # The report scored the same images with the same maps.
  rows = [r for r in tables.read_csv(os.path.join(wd, 'report',
                                                  'per_image.csv'))
          if r['model'] == 'resnet18']
  np.testing.assert_allclose([float(r['diff_gradcam']) for r in rows],
                             per['diff_gradcam'], atol=1e-5)
  assert jax.process_index() == 0
