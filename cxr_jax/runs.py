"""A finished training run, loaded for evaluation or prediction.

A training run's workdir (`train.run`, or one stage of a `sequence` job)
holds `config.json` (the resolved train config), `best/<step>/` (the
checkpoint chosen on validation) and, for a finished stage of a sequence,
`done.json` (the training summary). `load` turns that folder into a `Run`:

  run = runs.load('workdirs/coop/stage3')          # config from config.json
  run = runs.load(path, config=stage_config)       # or the caller's config
  ctx = run.eval_context(splits)                   # an EvalContext
  probs = classification.Evaluator(ctx, split='test').predict(run.variables)

The model is `models.build(config.model)` and runs in inference mode
(`train=False`) in every evaluator, so how the run froze parts of it during
training does not matter here. A folder that is not a finished run is an
error that names the folder and what is missing.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import ml_collections
import numpy as np
from flax import linen as nn

from cxr_jax import models
from cxr_jax import weights
from cxr_jax.evaluators import EvalContext
from cxr_jax.runtime import sharding

CONFIG = 'config.json'
BEST = 'best'
DONE = 'done.json'


@dataclasses.dataclass
class Run:
  """A trained model: its workdir, train config, module and best variables.

  Attributes:
    workdir: the run's folder.
    config: its train config (`config.model`, `config.model_inputs`,
      `config.eval_batch_size`, ...).
    model: `models.build(config.model)`.
    variables: `{'params': ..., 'batch_stats': ...}` (numpy) of the best
      checkpoint.
    summary: the training summary (`done.json`: steps, best step, wall
      time); empty for a run that was not part of a `sequence` job.
  """
  workdir: str
  config: ml_collections.ConfigDict
  model: nn.Module
  variables: dict[str, Any]
  summary: dict[str, Any]

  @property
  def network(self) -> str:
    """The registered model name that was trained (`config.model.name`)."""
    return str(self.config.model.name)

  def eval_context(self, splits: Mapping[str, Mapping[str, np.ndarray]], *,
                   batch_size: int | None = None, mesh=None) -> EvalContext:
    """An `EvalContext` of this run's model over `splits`.

    Args:
      splits: split name -> arrays (`build_dataset(config.data)`).
      batch_size: global batch size; None = `config.eval_batch_size`.
      mesh: the device mesh the batches are sharded over; None = every
        device on one `'data'` axis (the variables are replicated).
    """
    return EvalContext(
        model=self.model, splits=splits,
        batch_size=(self.config.eval_batch_size if batch_size is None
                    else batch_size),
        mesh=sharding.make_mesh() if mesh is None else mesh,
        model_inputs=tuple(self.config.model_inputs))


def _read_json(path: str) -> dict[str, Any]:
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: not valid JSON ({e}).') from e


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The train config a run stored in `workdir/config.json`."""
  path = os.path.join(workdir, CONFIG)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'{workdir} is not a training run: it has no {CONFIG} (the trainer '
        'writes one when a run starts). Give the folder of one run, e.g. '
        'WORKDIR/stage3 of a sequence job.')
  config = ml_collections.ConfigDict(_read_json(path))
  missing = [k for k in ('model', 'model_inputs', 'eval_batch_size')
             if k not in config]
  if missing or 'name' not in config.model:
    raise ValueError(f'{path}: not a train config: missing key(s) '
                     f'{", ".join(missing) or "model.name"}.')
  return config


def best_steps(workdir: str) -> list[int]:
  """The steps saved under `workdir/best/` (orbax step folders; an
  unfinished write's temporary folder is not one)."""
  best = os.path.join(workdir, BEST)
  if not os.path.isdir(best):
    return []
  return sorted(int(d) for d in os.listdir(best) if d.isdigit())


def load(workdir: str, config: ml_collections.ConfigDict | None = None
         ) -> Run:
  """Loads the finished training run in `workdir`.

  Args:
    workdir: a run's folder (`config.json`, `best/<step>/`).
    config: its train config; None reads `workdir/config.json`. A `sequence`
      job's report passes the resolved stage config it trained with.

  Returns:
    A `Run` with the model built from `config.model` and the variables of
    the best checkpoint.

  Raises:
    FileNotFoundError: `workdir`, its `config.json` (when `config` is None)
      or its best checkpoint is missing; the message names the folder.
  """
  workdir = os.path.abspath(workdir)
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f'Run folder {workdir} does not exist.')
  if config is None:
    config = read_config(workdir)
  if not best_steps(workdir):
    raise FileNotFoundError(
        f'{workdir} has no best checkpoint ({BEST}/<step>/): the run has not '
        'finished an evaluation yet, or the folder is not a training run.')
  done = os.path.join(workdir, DONE)
  return Run(workdir=workdir, config=config,
             model=models.build(config.model),
             variables=weights.restore(workdir),
             summary=_read_json(done) if os.path.exists(done) else {})
