"""Every evaluator type declares the keys its `run` returns.

The trainer checks `config.select_metric` against `metric_names` before it
trains, so a declaration that differs from what `run` returns would either
reject a valid selection metric or let a typo through to a silent skip.
"""
from __future__ import annotations

import jax
import numpy as np
import pytest

from cxr_jax import config_base
from cxr_jax import evaluators
from cxr_jax import models
from cxr_jax.runtime import sharding

N, H, W = 6, 32, 32


def _split(num_classes: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  gaze = rng.random((N, H, W)).astype(np.float32)
  fixmap = (rng.random((N, H, W)) > 0.95).astype(np.uint8)
  mask = np.zeros((N, H, W), np.float32)
  mask[:, 4:12, 4:12] = 1.0
  return {'image': rng.normal(size=(N, H, W, 1)).astype(np.float32),
          'label': np.arange(N, dtype=np.int32) % num_classes,
          'index': np.arange(N, dtype=np.int32), 'gaze': gaze,
          'fixmap': fixmap, 'mask': mask}


def _context(model_name: str, num_classes):
  model = models.get_model(model_name, num_classes=num_classes, in_chans=1)
  split = _split(num_classes or 3)
  variables = models.init_variables(model, jax.random.key(0),
                                    split['image'][:2])
  variables = {k: v for k, v in variables.items() if k != 'perturbations'}
  ctx = evaluators.EvalContext(model=model, splits={'test': split},
                               batch_size=N, mesh=sharding.make_mesh())
  return ctx, variables


@pytest.mark.parametrize('model_name,num_classes,cfg', [
    ('resnet_tiny', 2, dict(type='classification', task='binary')),
    ('resnet_tiny', 3, dict(type='classification', task='multiclass')),
    ('resnet_tiny', 2, dict(type='cam_localization')),
    ('unet_tiny', None, dict(type='saliency')),
])
def test_metric_names_are_the_keys_run_returns(model_name, num_classes, cfg):
  ctx, variables = _context(model_name, num_classes)
  ev = evaluators.build('test', config_base.evaluator(split='test', **cfg),
                        ctx)
  declared = evaluators.metric_names(ev, variables)
  assert len(set(declared)) == len(declared)
  assert set(declared) == set(ev.run(variables))
