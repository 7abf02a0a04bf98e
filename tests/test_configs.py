"""Two-step demo runs of every config, and Study B's freezing guarantees."""
import json
import os

import flax
import jax
import numpy as np
import pytest

from cxr_jax import weights
from cxr_jax import jobs
from configs import cooperative
from configs import siim_classifier
from configs import stage1
from configs import stage2
from configs import stage3

STEPS = 2


def _short(c):
  """Two training steps per run, one evaluation at the end."""
  subs = [c.stages[n] for n in c.sequence] if c.job == 'sequence' else [c]
  for s in subs:
    s.total_steps = STEPS
    s.eval_every_steps = STEPS
    s.log_every_steps = 1
  return c


def _assert_run(workdir):
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert any('train/loss' in r for r in rows), rows
  assert all(np.isfinite(r['train/loss']) for r in rows if 'train/loss' in r)
  assert os.path.isdir(os.path.join(workdir, 'ckpt', str(STEPS)))
  assert os.listdir(os.path.join(workdir, 'best'))


@pytest.fixture(scope='module')
def coop_workdir(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp('coop'))
  jobs.run(_short(cooperative.get_config('demo')), wd)
  return wd


def test_siim_classifier_demo(tmp_path):
  wd = str(tmp_path / 'siim')
  jobs.run(_short(siim_classifier.get_config('demo')), wd)
  _assert_run(wd)
  assert 'test/auc' in json.load(open(os.path.join(wd, 'final_metrics.json')))


def test_stage1_config_is_the_cooperative_stage1():
  """configs/stage1.py runs the same two train configs as cooperative's."""
  s1, coop = stage1.get_config('demo'), cooperative.get_config('demo')
  assert s1.sequence == ('contrastive', 'finetune')
  for mine, theirs in (('contrastive', 'stage1_contrastive'),
                       ('finetune', 'stage1_finetune')):
    a, b = s1.stages[mine].to_dict(), coop.stages[theirs].to_dict()
    a['init'].pop('from_stage'), b['init'].pop('from_stage')
    assert a == b, mine
  assert s1.stages.finetune.init.from_stage == 'contrastive'


def test_study_b_schedules_follow_the_thesis():
  """Early stopping on validation and no learning-rate schedule (the thesis
  names none); the demo trains every run for the same number of epochs."""
  full, demo = cooperative.get_config(), cooperative.get_config('demo')
  for name in full.sequence:
    s = full.stages[name]
    assert (s.early_stopping_patience, s.plateau_patience) == (10, 0), name
    assert (s.optim.name, s.optim.lr, s.total_epochs) == ('adam', 1e-4, 50)
  assert {demo.stages[n].total_epochs for n in demo.sequence} == {8.0}
  assert {demo.stages[n].plateau_patience for n in demo.sequence} == {0}


def test_stage_configs_chain_by_init_path(coop_workdir, tmp_path):
  """stage2.py / stage3.py as a user runs them: init.path from the previous
  stage's workdir (its best checkpoint)."""
  s2, s3 = str(tmp_path / 'stage2'), str(tmp_path / 'stage3')
  c2 = _short(stage2.get_config('demo'))
  assert c2.init.path == 'workdirs/stage1/finetune'  # the documented default
  c2.init.path = os.path.join(coop_workdir, 'stage1_finetune')
  jobs.run(c2, s2)
  _assert_run(s2)
  c3 = _short(stage3.get_config('demo'))
  c3.init.path = s2
  jobs.run(c3, s3)
  _assert_run(s3)


def test_stage2_without_stage1_is_a_clear_error(tmp_path):
  c = _short(stage2.get_config('demo'))
  c.init.path = str(tmp_path / 'nowhere')
  with pytest.raises(FileNotFoundError, match='init.path'):
    jobs.run(c, str(tmp_path / 's2'))


def test_sequence_override_as_comma_separated_names(tmp_path):
  """`--config.sequence=a,b` reaches the config as ('a,b',): split into
  stage names, so an unknown one is named alone (before any training)."""
  assert jobs.stage_names(('stage2, stage3',)) == ('stage2', 'stage3')
  assert jobs.stage_names('stage2') == ('stage2',)
  assert jobs.stage_names(('a', 'b,', ' c')) == ('a', 'b', 'c')
  c = cooperative.get_config('demo')
  c.sequence = ('stage1_contrastive,no_such_stage',)
  with pytest.raises(ValueError, match="names stage 'no_such_stage'"):
    jobs.run(c, str(tmp_path / 'seq'))
  assert c.sequence == ('stage1_contrastive', 'no_such_stage')


def _flat(tree):
  return flax.traverse_util.flatten_dict(tree, sep='/')


def _sub(tree, prefix):
  flat = _flat(tree)
  return {k: v for k, v in flat.items() if k.startswith(prefix)}


def test_cooperative_demo_writes_the_report(coop_workdir):
  rep = os.path.join(coop_workdir, 'report')
  for f in ('table_4_1.csv', 'table_4_1.md', 'table_4_2.csv', 'table_4_2.md',
            'ttests.csv', 'cam_vs_gaze.csv', 'fig_4_2_grid.png', 'report.md'):
    assert os.path.getsize(os.path.join(rep, f)) > 0, f
  with open(os.path.join(rep, 'ttests.csv')) as f:
    pairs = {tuple(l.split(',')[:2]) for l in f.read().splitlines()[1:]}
  # Ours against the three other saliency rows, and the thesis's ablation.
  assert pairs == {('Ours', 'MT-UNet'), ('Ours', 'Res_SE-UNet'),
                   ('Ours', 'UNet_S'), ('Res_SE-UNet', 'UNet_S')}, pairs
  for name in cooperative.get_config('demo').sequence:
    _assert_run(os.path.join(coop_workdir, name))
  with open(os.path.join(rep, 'report.md')) as f:
    text = f.read()
  assert '## Settings' in text and 'plain concatenation' in text
  assert "parameters trained: `fusion/.*` (the thesis" in text


def test_stage2_leaves_the_densenet_bitwise_unchanged(coop_workdir):
  s1 = weights.restore(os.path.join(coop_workdir, 'stage1_finetune'))
  s2 = weights.restore(os.path.join(coop_workdir, 'stage2'))
  for coll in ('params', 'batch_stats'):
    before = _flat(s1[coll])
    after = _sub(s2[coll], 'densenet/')
    assert len(after) == len(before) > 0
    for k, v in after.items():
      np.testing.assert_array_equal(v, before[k[len('densenet/'):]], k)


def test_stage3_leaves_both_encoders_unchanged(coop_workdir):
  s2 = weights.restore(os.path.join(coop_workdir, 'stage2'))
  s3 = weights.restore(os.path.join(coop_workdir, 'stage3'))
  for coll in ('params', 'batch_stats'):
    for prefix in ('densenet/', 'unet/'):
      before, after = _sub(s2[coll], prefix), _sub(s3[coll], prefix)
      assert before.keys() == after.keys() and before
      for k in before:
        np.testing.assert_array_equal(before[k], after[k], k)
  changed = [k for k, v in _sub(s3['params'], 'fusion/').items()
             if not np.array_equal(v, _sub(s2['params'], 'fusion/')[k])]
  assert changed  # the classifier did train
