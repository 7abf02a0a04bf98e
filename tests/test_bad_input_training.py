"""Bad training configs and unlucky runs: each is a clear error, raised
before training where it can be, that names the key (or metric, step,
workdir) and says what is wrong; a failing run leaves the workdir's earlier
checkpoints and config.json as they were."""
import errno
import hashlib
import json
import os
import shutil

import ml_collections
import numpy as np
import pytest

from cxr_jax import ckpt as ckpt_lib
from cxr_jax import config_base
from cxr_jax import jobs
from cxr_jax import metric_writer
from cxr_jax import train
from cxr_jax.evaluators import loss as loss_eval
from cxr_jax.training import resume
from cxr_jax.training import selection
from configs import siim_classifier


def _tiny(total_steps=4, **over):
  c = siim_classifier.get_config('demo')
  c.total_steps = total_steps
  c.eval_every_steps = 2
  c.checkpoint_every_steps = 2
  c.log_every_steps = 1
  c.evals.test.final = False
  for k, v in over.items():
    c[k] = v
  return c


def _snapshot(workdir: str) -> dict[str, str]:
  """Relative path -> sha256 of every file under `workdir`."""
  out = {}
  for root, _, files in os.walk(workdir):
    for f in files:
      path = os.path.join(root, f)
      with open(path, 'rb') as fh:
        out[os.path.relpath(path, workdir)] = hashlib.sha256(
            fh.read()).hexdigest()
  return out


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  """A finished 4-step run (checkpoints at steps 2 and 4)."""
  wd = str(tmp_path_factory.mktemp('finished') / 'run')
  train.run(_tiny(4), wd)
  return wd


@pytest.fixture
def copy_of(finished, tmp_path):
  """A fresh copy of the finished run, and its snapshot."""
  wd = str(tmp_path / 'run')
  shutil.copytree(finished, wd)
  return wd, _snapshot(wd)


# --- config errors raised before anything is written ----------------------

@pytest.mark.parametrize('key,value,problem', [
    ('batch_size', 0, 'must be an integer >= 1'),
    ('seed', -1, 'must be an integer >= 0'),
    ('log_every_steps', 0, 'must be an integer >= 1'),
    ('select_nonfinite', 'ignore', "Valid choices: error, worst"),
    ('select_mode', 'lowest', "Valid choices: min, max"),
])
def test_bad_numbers_and_choices(tmp_path, key, value, problem):
  wd = tmp_path / 'run'
  with pytest.raises(ValueError) as e:
    train.run(_tiny(2, **{key: value}), str(wd))
  assert key in str(e.value) and problem in str(e.value), e.value
  assert not wd.exists()


def test_evaluator_entry_without_its_keys(tmp_path):
  c = _tiny(2)
  c.evals.val = dict(type='loss', split='val')
  with pytest.raises(ValueError, match=r'config.evals.val lacks the key\(s\) '
                     'every_steps, final'):
    train.run(c, str(tmp_path / 'run'))
  c.evals.val = dict(type='loss', split='val', every_steps=-2, final=False)
  with pytest.raises(ValueError, match=r'evals.val.every_steps = -2 is not '
                     'valid'):
    train.run(c, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_select_metric_no_evaluator_produces(tmp_path):
  wd = tmp_path / 'run'
  with pytest.raises(ValueError) as e:
    train.run(_tiny(2, select_metric='val/los'), str(wd))
  msg = str(e.value)
  assert "config.select_metric = 'val/los' is not produced" in msg
  assert 'val/loss' in msg and 'val/accuracy' in msg  # what they produce
  assert not wd.exists()
  with pytest.raises(ValueError, match=r"'vall/loss' is not "
                     r"'<evaluator>/<metric>' of a configured evaluator "
                     r'\(config.evals: test, val\)'):
    train.run(_tiny(2, select_metric='vall/loss'), str(wd))
  with pytest.raises(ValueError, match=r'evals.test.every_steps = -1 never '
                     'runs it during training'):
    train.run(_tiny(2, select_metric='test/auc'), str(wd))
  c = _tiny(2, select_metric='test/auc_typo')
  c.evals.test.every_steps = 0  # the classification evaluator's metrics
  with pytest.raises(ValueError) as e:
    train.run(c, str(wd))
  assert "config.select_metric = 'test/auc_typo' is not produced" in str(
      e.value) and 'test/auc,' in str(e.value)
  assert not wd.exists()


# --- non-finite validation metrics -----------------------------------------

def _nan_at_eval(monkeypatch, which: int) -> None:
  """The loss evaluator returns a NaN loss at its `which`-th run."""
  real, calls = loss_eval.Evaluator.run, []

  def run(self, variables):
    calls.append(1)
    out = real(self, variables)
    return {**out, 'loss': float('nan')} if len(calls) == which else out

  monkeypatch.setattr(loss_eval.Evaluator, 'run', run)


def test_nan_validation_metric_is_an_error_naming_metric_and_step(
    tmp_path, monkeypatch):
  """val/loss NaN at the first evaluation: training stops there, before a
  NaN-ranked best checkpoint or the step's checkpoint is written."""
  _nan_at_eval(monkeypatch, 1)
  wd = str(tmp_path / 'run')
  with pytest.raises(FloatingPointError) as e:
    train.run(_tiny(4), wd)
  msg = str(e.value)
  assert 'config.select_metric val/loss = nan at step 2' in msg, msg
  assert 'cannot rank checkpoints' in msg and 'select_nonfinite' in msg
  assert not os.listdir(os.path.join(wd, 'best'))
  assert not os.listdir(os.path.join(wd, 'ckpt'))
  rows = metric_writer.read_jsonl(os.path.join(wd, 'metrics.jsonl'))
  assert any(np.isnan(r['val/loss']) for r in rows if 'val/loss' in r)


def test_nan_metric_never_best_with_select_nonfinite_worst(
    tmp_path, monkeypatch):
  _nan_at_eval(monkeypatch, 2)
  warnings = []
  monkeypatch.setattr(selection.logging, 'warning',
                      lambda msg, *a: warnings.append(msg % a))
  out = train.run(_tiny(4, select_nonfinite='worst'), str(tmp_path / 'run'))
  assert out['step'] == 4 and out['best_step'] == 2
  assert np.isfinite(out['best_value'])
  assert len(warnings) == 1 and 'val/loss = nan at step 4' in warnings[0]


# --- resuming with another config ------------------------------------------

@pytest.mark.parametrize('key,value,shown', [
    ('optim.lr', 0.5, 'optim.lr: 0.001 -> 0.5'),
    ('model.name', 'vgg_tiny', "model.name: 'resnet_tiny' -> 'vgg_tiny'"),
])
def test_resume_with_a_changed_config_is_an_error(copy_of, key, value, shown):
  wd, before = copy_of
  c = _tiny(4)
  section, _, leaf = key.rpartition('.')
  c[section][leaf] = value
  with pytest.raises(resume.ConfigChangedError) as e:
    train.run(c, wd)
  msg = str(e.value)
  assert wd in msg and '(step 4)' in msg and shown in msg, msg
  assert 'new --workdir' in msg and 'allow_config_change=True' in msg
  assert _snapshot(wd) == before


def test_allowed_config_change_is_recorded_in_the_history(copy_of):
  wd, _ = copy_of
  with open(os.path.join(wd, 'config.json')) as f:
    old = json.load(f)
  out = train.run(_tiny(6, allow_config_change=True), wd)
  assert out['step'] == 6
  with open(os.path.join(wd, 'config.json')) as f:
    new = json.load(f)
  assert new['total_steps'] == 6
  (entry,) = new['history']
  assert entry['step'] == 4
  assert entry['changed'] == {'total_steps': [4, 6],
                              'allow_config_change': [False, True]}
  del new['history']
  assert resume.differences(old, new).keys() == {'total_steps',
                                                 'allow_config_change'}


def test_operational_change_resumes(copy_of):
  wd, _ = copy_of
  out = train.run(_tiny(4, log_every_steps=2), wd)
  assert out['step'] == 4
  with open(os.path.join(wd, 'config.json')) as f:
    history = json.load(f)['history']
  assert history[0]['changed'] == {'log_every_steps': [1, 2]}


# --- a failed checkpoint write ----------------------------------------------

@pytest.mark.parametrize('close_fails', [False, True])
def test_disk_full_is_the_error_that_surfaces(tmp_path, monkeypatch,
                                              close_fails):
  """The checkpointer and the metric writer are closed, and the write's own
  error propagates (a failing close after it is logged, not raised)."""
  real_save = ckpt_lib.Checkpointer.save_latest
  real_close = ckpt_lib.Checkpointer.close
  closed = []

  def save(self, step, *a, **k):
    if step == 4:
      raise OSError(errno.ENOSPC, 'No space left on device')
    return real_save(self, step, *a, **k)

  def close(self):
    closed.append('checkpointer')
    real_close(self)
    if close_fails:
      raise RuntimeError('Event loop is closed')

  writer_close = metric_writer.MetricWriter.close
  monkeypatch.setattr(ckpt_lib.Checkpointer, 'save_latest', save)
  monkeypatch.setattr(ckpt_lib.Checkpointer, 'close', close)
  monkeypatch.setattr(metric_writer.MetricWriter, 'close',
                      lambda self: (closed.append('writer'),
                                    writer_close(self)))
  wd = str(tmp_path / 'run')
  with pytest.raises(OSError, match='No space left on device') as e:
    train.run(_tiny(4), wd)
  assert e.value.errno == errno.ENOSPC
  assert closed == ['writer', 'checkpointer']
  assert os.listdir(os.path.join(wd, 'ckpt')) == ['2']  # intact


def test_select_metric_missing_from_an_evaluation_is_an_error():
  """Beside the check before training, each evaluation's results are
  checked: a selection metric they lack is an error, never a silent skip."""
  c = _tiny(2, select_metric='test/auc_typo')
  meta = selection.initial_meta()
  with pytest.raises(ValueError, match=r"'test/auc_typo' is not a metric of "
                     r"evaluator 'test'; it produces: test/accuracy, "
                     'test/auc'):
    selection.after_eval(c, None, meta, {'test/auc': 0.5,
                                         'test/accuracy': 0.5}, 2,
                         checkpointer=None, workdir='run')
  assert selection.after_eval(c, None, meta, {'val/loss': 0.5}, 2,
                              checkpointer=None, workdir='run') == (None,
                                                                    meta)


def _sequence(lr: float):
  c = config_base.sequence_config()
  stage = _tiny(2)
  c.data = stage.data
  c.sequence = ('a',)
  c.stages = ml_collections.ConfigDict({'a': stage})
  c.stages.a.optim.lr = lr
  return c


def test_rerun_of_a_sequence_with_a_finished_stage_of_another_config(
    tmp_path):
  """A finished stage is skipped only when its stored config is still the
  one asked for; otherwise the report would describe it wrongly."""
  wd = str(tmp_path / 'seq')
  jobs.run_sequence(_sequence(1e-3), wd)
  before = _snapshot(os.path.join(wd, 'a'))
  jobs.run_sequence(_sequence(1e-3), wd)  # the same: skipped
  assert _snapshot(os.path.join(wd, 'a')) == before
  with pytest.raises(resume.ConfigChangedError) as e:
    jobs.run_sequence(_sequence(0.5), wd)
  msg = str(e.value)
  assert os.path.join(wd, 'a') in msg and 'finished stage' in msg
  assert 'optim.lr: 0.001 -> 0.5' in msg
  assert _snapshot(os.path.join(wd, 'a')) == before


def test_init_dir_without_a_networks_folder_names_it_before_training(
    tmp_path):
  from configs import gradcam_benchmark  # pylint: disable=g-import-not-at-top
  c = gradcam_benchmark.get_config()
  c.sequence = ('vgg16', 'resnet18', 'vit_b16')
  weights = tmp_path / 'weights'
  (weights / 'vgg16').mkdir(parents=True)
  c.init_dir = str(weights)
  wd = str(tmp_path / 'run')
  with pytest.raises(FileNotFoundError) as e:
    jobs.run_sequence(c, wd)
  msg = str(e.value)
  assert f"config.init_dir = '{weights}'" in msg
  assert 'no converted weights for resnet18, vit_b16' in msg
  assert 'vgg16' not in msg.split('(expected')[0]
  assert 'python -m cxr_jax.convert --all' in msg
  assert not os.path.exists(wd)  # nothing written
