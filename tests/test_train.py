"""The trainer: demo runs, resume, config errors, non-finite loss, reduce on
plateau."""
import json
import os
import subprocess
import sys

import flax
import jax
import numpy as np
import pytest

from cxr_jax import ckpt as ckpt_lib
from cxr_jax import train
from cxr_jax.data import pipeline
from cxr_jax.training import selection
from configs import siim_classifier


def _tiny(total_steps=4, **over):
  c = siim_classifier.get_config('demo')
  c.total_steps = total_steps
  c.eval_every_steps = 2
  c.log_every_steps = 1
  c.evals.test.final = False
  for k, v in over.items():
    c[k] = v
  return c


def _params(workdir):
  c = ckpt_lib.Checkpointer(workdir)
  step = c.latest_step()
  import orbax.checkpoint as ocp
  r = c.latest.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))
  c.close()
  return jax.tree.map(np.asarray, r['state']['params']), step


def test_demo_run_writes_metrics_and_checkpoints(tmp_path):
  wd = str(tmp_path / 'run')
  out = train.run(_tiny(4), wd)
  assert out['step'] == 4
  rows = [json.loads(l) for l in open(os.path.join(wd, 'metrics.jsonl'))]
  assert any('train/loss' in r for r in rows)
  assert any('val/loss' in r for r in rows)
  assert all(np.isfinite(r['train/loss']) for r in rows if 'train/loss' in r)
  assert os.path.isdir(os.path.join(wd, 'ckpt', '4'))
  assert os.listdir(os.path.join(wd, 'best'))
  cfg = json.load(open(os.path.join(wd, 'config.json')))
  assert cfg['model']['name'] == 'resnet_tiny'
  assert os.listdir(os.path.join(wd, 'tb'))


class _Crash(RuntimeError):
  pass


def test_resume_after_crash_is_bitwise_identical(tmp_path, monkeypatch):
  ref_dir, crash_dir = str(tmp_path / 'ref'), str(tmp_path / 'crash')
  train.run(_tiny(6, checkpoint_every_steps=2), ref_dir)
  ref, _ = _params(ref_dir)

  real = pipeline.train_iterator

  def crashing(*a, **k):
    it = real(*a, **k)

    class It:
      n = 0

      def __next__(self):
        It.n += 1
        if It.n == 4:  # dies while fetching step 4's batch (after ckpt 2)
          raise _Crash()
        return next(it)

      def get_state(self):
        return it.get_state()

      def set_state(self, s):
        return it.set_state(s)
    return It()

  monkeypatch.setattr(pipeline, 'train_iterator', crashing)
  with pytest.raises(_Crash):
    train.run(_tiny(6, checkpoint_every_steps=2), crash_dir)
  monkeypatch.setattr(pipeline, 'train_iterator', real)
  _, step = _params(crash_dir)
  assert step == 2
  train.run(_tiny(6, checkpoint_every_steps=2), crash_dir)
  got, step = _params(crash_dir)
  assert step == 6
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)


def test_resume_after_a_kill_between_best_and_latest_save(tmp_path,
                                                          monkeypatch):
  """Killed after an evaluation wrote `best/2` but before `ckpt/2`: the
  rerun evaluates step 2 again and must overwrite `best/2` (orbax refuses
  an existing step), then finish with the uninterrupted run's parameters."""
  ref_dir, crash_dir = str(tmp_path / 'ref'), str(tmp_path / 'crash')
  train.run(_tiny(4, checkpoint_every_steps=2), ref_dir)
  ref, _ = _params(ref_dir)
  real = ckpt_lib.Checkpointer.save_latest

  def dies(self, step, *a, **k):
    raise _Crash(step)

  monkeypatch.setattr(ckpt_lib.Checkpointer, 'save_latest', dies)
  with pytest.raises(_Crash):
    train.run(_tiny(4, checkpoint_every_steps=2), crash_dir)
  assert os.listdir(os.path.join(crash_dir, 'best')) == ['2']
  monkeypatch.setattr(ckpt_lib.Checkpointer, 'save_latest', real)
  train.run(_tiny(4, checkpoint_every_steps=2), crash_dir)
  got, step = _params(crash_dir)
  assert step == 4
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)


def test_unknown_model_name_lists_choices(tmp_path):
  c = _tiny(2)
  c.model.name = 'resnet5O'
  with pytest.raises(ValueError, match="model.name.*resnet50"):
    train.run(c, str(tmp_path / 'x'))


def _main(*flags):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return subprocess.run(
      [sys.executable, 'main.py', '--config=configs/siim_classifier.py:demo',
       *flags], cwd=root, capture_output=True, text=True, timeout=300)


def test_bad_overrides_on_the_command_line_name_the_key(tmp_path):
  wd = f'--workdir={tmp_path}'
  out = _main('--config.no_such_key=1', wd)
  assert out.returncode != 0 and 'no_such_key' in out.stderr
  out = _main('--config.batch_size=abc', wd)
  assert out.returncode != 0 and 'config.batch_size' in out.stderr
  assert not os.listdir(tmp_path)  # nothing ran


def test_non_finite_loss_names_the_step(tmp_path):
  c = _tiny(6, checkpoint_every_steps=2)
  c.optim.lr = float('nan')  # the first update makes every parameter NaN
  wd = str(tmp_path / 'nan')
  with pytest.raises(FloatingPointError, match='at step'):
    train.run(c, wd)
  ckpt = ckpt_lib.Checkpointer(wd)
  step = ckpt.latest_step()
  ckpt.close()
  if step is not None:  # whatever was saved holds finite parameters
    params, _ = _params(wd)
    assert all(np.isfinite(l).all() for l in jax.tree.leaves(params))


def test_reduce_on_plateau_reaches_its_floor_and_stays():
  """Factor 0.1 down to a floor of 1e-3 with the scale held in float32:
  1 -> 0.1 -> 0.01 -> 0.001, then no further (float32 0.01 * 0.1 lies just
  below 1e-3; that reduction had been skipped, leaving 0.01 as the floor)."""
  import flax.struct  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  @flax.struct.dataclass
  class State:
    lr_scale: jax.Array

  c = _tiny(2, plateau_patience=1, plateau_factor=0.1, plateau_min_scale=1e-3,
            early_stopping_patience=0)
  state = State(lr_scale=jnp.ones((), jnp.float32))
  meta = dict(best_value=0.5, best_step=0, bad_evals=0, plateau_bad=0,
              stopped_early=False)
  scales = []
  for step in range(1, 6):  # never better than 0.5
    state, meta = selection.after_eval(c, state, meta,
                                       {c.select_metric: 1.0}, step,
                                       checkpointer=None, workdir='run')
    scales.append(float(state.lr_scale))
  np.testing.assert_allclose(scales, [0.1, 0.01, 1e-3, 1e-3, 1e-3], rtol=1e-6)
