"""The checks a train config passes before anything is written or trained.

Each failure is a `ValueError` (`FileNotFoundError` for a missing
`init.path`) whose message names the config key and says what is wrong.
`check_config` needs only the config and the mesh; `check_select_metric`
needs the built evaluators, to learn the metrics they produce.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from jax.sharding import Mesh

from cxr_jax import config_base
from cxr_jax import evaluators as evaluators_lib
from cxr_jax import losses
from cxr_jax import models
from cxr_jax.registry import check_choice
from cxr_jax.runtime import sharding as sharding_lib
from cxr_jax.training import selection

# key -> (smallest valid value, what it means)
_INTEGERS = {
    'batch_size': (1, 'the global training batch'),
    'eval_batch_size': (1, 'the global evaluation batch'),
    'seed': (0, 'it seeds initialisation, data order and augmentation'),
    'total_steps': (0, '0 = use total_epochs'),
    'eval_every_steps': (0, '0 = once per epoch'),
    'checkpoint_every_steps': (0, '0 = at every evaluation'),
    'log_every_steps': (1, 'steps per logged training summary'),
    'num_workers': (0, '0 = load in this process'),
}


def _check_integers(config) -> None:
  for key, (low, meaning) in _INTEGERS.items():
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise ValueError(f'config.{key} = {value!r} is not valid: it must be '
                       f'an integer >= {low} ({meaning}).')
  if config.seed >= 2**32:
    raise ValueError(f'config.seed = {config.seed} is not valid: it must be '
                     'below 2**32 (the data pipeline seeds numpy with it).')
  if not config.total_steps and not config.total_epochs > 0:
    raise ValueError(f'config.total_epochs = {config.total_epochs!r} with '
                     'config.total_steps = 0: set either to a positive '
                     'number.')


def _check_evals(config) -> None:
  for name, ev in config.evals.items():
    missing = [k for k in config_base.EVALUATOR_KEYS if k not in ev]
    if missing:
      raise ValueError(
          f'config.evals.{name} lacks the key(s) {", ".join(missing)}: build '
          "entries with config_base.evaluator(type, split, every_steps=..., "
          'final=...).')
    evaluators_lib.EVALUATORS.get(ev['type'], key=f'evals.{name}.type')
    every = ev['every_steps']
    if isinstance(every, bool) or not isinstance(every, int) or every < -1:
      raise ValueError(f'config.evals.{name}.every_steps = {every!r} is not '
                       'valid: > 0 every that many steps, 0 once per epoch, '
                       '-1 never during training.')


def _check_select_evaluator(config) -> None:
  """The selection metric's evaluator exists and runs during training."""
  if not config.select_metric:
    return
  evaluator, slash, _ = config.select_metric.partition('/')
  if not slash or evaluator not in config.evals:
    raise ValueError(
        f'config.select_metric = {config.select_metric!r} is not '
        "'<evaluator>/<metric>' of a configured evaluator (config.evals: "
        f'{", ".join(config.evals) or "none"}).')
  if config.evals[evaluator]['every_steps'] < 0:
    raise ValueError(
        f'config.select_metric = {config.select_metric!r}, but '
        f'config.evals.{evaluator}.every_steps = -1 never runs it during '
        'training: no checkpoint could be selected.')


def check_config(config, mesh: Mesh) -> None:
  """Every check that needs only the config and the device mesh."""
  models.family(config.model.name)  # raises with the valid names
  losses.get_loss(config.loss.name)
  check_choice(config.select_mode, ('min', 'max'), 'select_mode')
  check_choice(config.select_nonfinite, selection.NONFINITE,
               'select_nonfinite')
  _check_integers(config)
  sharding_lib.check_rules(config.sharding_rules, dict(mesh.shape))
  n_data = mesh.shape[sharding_lib.DATA]
  for key in ('batch_size', 'eval_batch_size'):
    if config[key] % n_data:
      raise ValueError(f'config.{key} = {config[key]} is not divisible by '
                       f"the {n_data} devices of the mesh's 'data' axis "
                       f'(config.mesh = {tuple(config.mesh)}).')
  _check_evals(config)
  _check_select_evaluator(config)
  if config.init.path and not os.path.exists(config.init.path):
    raise FileNotFoundError(
        f'config.init.path = {config.init.path!r} does not exist: point it at '
        "the previous stage's workdir (its best checkpoint is used) or at a "
        'folder written by python -m cxr_jax.convert.')


def check_select_metric(config, evals: Mapping[str, Any], variables) -> None:
  """`config.select_metric` is a metric its evaluator produces.

  `variables`: the model's (abstract) variables, to trace the evaluators'
  outputs.
  """
  if not config.select_metric:
    return
  evaluator, _, metric = config.select_metric.partition('/')
  names = evaluators_lib.metric_names(evals[evaluator], variables)
  if metric in names:
    return
  produced = [f'{name}/{k}' for name, ev in evals.items()
              for k in evaluators_lib.metric_names(ev, variables)]
  raise ValueError(
      f'config.select_metric = {config.select_metric!r} is not produced by '
      f'any configured evaluator; they produce: {", ".join(produced)}.')
