"""cxr_jax.runs: a finished run's folder -> config, model, variables."""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from configs import siim_classifier
from cxr_jax import ckpt
from cxr_jax import models
from cxr_jax import runs
from cxr_jax.evaluators import classification as cls_eval


def _fake_run(path, step=7):
  """A run folder as the trainer leaves it: config.json, best/<step>/ and
  done.json, with freshly initialised variables."""
  config = siim_classifier.get_config('demo,model=resnet18')
  model = models.build(config.model)
  h, w = config.data.image_size
  variables = models.init_variables(model, jax.random.PRNGKey(3),
                                    np.zeros((1, h, w, 1), np.float32),
                                    train=False)
  variables = jax.tree.map(np.asarray, dict(variables))
  os.makedirs(path)
  ckpt.write_json(os.path.join(path, 'config.json'), config.to_dict())
  ckpt.write_json(os.path.join(path, 'done.json'), dict(step=9,
                                                        best_step=step))
  c = ckpt.Checkpointer(str(path))
  c.save_best(step, variables, dict(step=step))
  c.close()
  return config, variables


def test_load_reads_config_model_and_best_variables(tmp_path):
  path = tmp_path / 'run'
  config, variables = _fake_run(path)
  run = runs.load(str(path))
  assert run.workdir == str(path)
  assert run.network == config.model.name == 'resnet_tiny'
  assert run.config.to_dict()['model'] == config.to_dict()['model']
  assert run.summary == dict(step=9, best_step=7)
  for a, b in zip(jax.tree.leaves(run.variables), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)
  # The evaluation context runs the restored model over a split.
  h, w = config.data.image_size
  rng = np.random.default_rng(0)
  split = dict(image=rng.normal(size=(5, h, w, 1)).astype(np.float32),
               label=np.array([0, 1, 0, 1, 1]), index=np.arange(5))
  ctx = run.eval_context({'test': split}, batch_size=4)
  assert ctx.batch_size == 4 and ctx.model_inputs == ()
  assert run.eval_context({'test': split}).batch_size == (
      config.eval_batch_size)
  p = cls_eval.Evaluator(ctx, split='test').predict(run.variables)
  logits, _ = run.model.apply(run.variables, split['image'], train=False)
  np.testing.assert_allclose(p['probs'], jax.nn.softmax(logits), atol=1e-6)
  np.testing.assert_array_equal(p['index'], np.arange(5))


def test_given_config_is_used_instead_of_config_json(tmp_path):
  path = tmp_path / 'run'
  _fake_run(path)
  other = siim_classifier.get_config('demo,model=resnet18')
  other.eval_batch_size = 3
  run = runs.load(str(path), config=other)
  assert run.config is other
  assert run.eval_context({'test': {}}).batch_size == 3


def test_not_a_run_names_the_folder_and_what_is_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match=r'nowhere does not exist'):
    runs.load(str(tmp_path / 'nowhere'))
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(FileNotFoundError,
                     match=rf'{empty} is not a training run: it has no '
                     r'config.json'):
    runs.load(str(empty))
  (empty / 'config.json').write_text('{"model": ')
  with pytest.raises(ValueError, match=r'empty/config.json: not valid JSON'):
    runs.load(str(empty))
  (empty / 'config.json').write_text(json.dumps({'model': {'name': 'x'}}))
  with pytest.raises(ValueError, match=r'config.json: not a train config: '
                     r'missing key\(s\) model_inputs, eval_batch_size'):
    runs.load(str(empty))
  config = siim_classifier.get_config('demo,model=resnet18')
  (empty / 'config.json').write_text(json.dumps(config.to_dict()))
  with pytest.raises(FileNotFoundError, match=rf'{empty} has no best '
                     r'checkpoint \(best/<step>/\)'):
    runs.load(str(empty))
  # An unfinished orbax write (a temporary folder) is not a checkpoint.
  (empty / 'best' / '5.orbax-checkpoint-tmp-1').mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match='has no best checkpoint'):
    runs.load(str(empty))
  assert runs.best_steps(str(empty)) == []
