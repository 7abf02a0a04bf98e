"""The one trainer: every stage, baseline and model of both studies.

A config picks the model, the data, the loss, the trainable parts (the
freezing `schedule`, `cxr_jax.training.freezing`) and the evaluators;
nothing here is study-specific. The train step is a pure
`(state, batch) -> (state, metrics)` function (`cxr_jax.training.step`),
jitted once with the state donated and the batch sharded over the `'data'`
axis of the `config.mesh` mesh; the state is replicated, or laid out by
`config.sharding_rules` over the other mesh axes
(`cxr_jax/runtime/sharding.py`), so the same code runs on one CPU, 8 GPUs or
a pod.

`run` goes through four phases: set-up (checks, data, model, state,
evaluators: everything that can fail on a bad config fails here, before
anything is written), the step loop, evaluation (with checkpoint selection,
`cxr_jax.training.selection`) and checkpointing.

Each run's workdir holds `config.json` (with the `history` of accepted
config changes, `cxr_jax.training.resume`), `metrics.jsonl`, TensorBoard
events (`tb/`), the latest checkpoint (`ckpt/`, resumed after a kill), the
best one by `config.select_metric` (`best/`, what later stages initialise
from) and `final_metrics.json` (the `final=True` evaluators on the best
checkpoint).
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cxr_jax import ckpt as ckpt_lib
from cxr_jax import evaluators as evaluators_lib
from cxr_jax import metric_writer
from cxr_jax import models
from cxr_jax import weights
from cxr_jax.data import build_dataset
from cxr_jax.data import pipeline
from cxr_jax.runtime import sharding as sharding_lib
from cxr_jax.training import checks
from cxr_jax.training import freezing
from cxr_jax.training import resume
from cxr_jax.training import selection
from cxr_jax.training.step import TrainState
from cxr_jax.training.step import init_state
from cxr_jax.training.step import loss_kwargs
from cxr_jax.training.step import make_train_step


def make_mesh(devices=None, axes=sharding_lib.DEFAULT_MESH) -> Mesh:
  """The `config.mesh` mesh (default: 1-D `('data',)`) over all devices."""
  return sharding_lib.make_mesh(axes, devices)


def _durations(config, n_train: int) -> dict[str, int]:
  steps_per_epoch = max(n_train // config.batch_size, 1)
  total = config.total_steps or int(config.total_epochs * steps_per_epoch)
  if total <= 0:
    raise ValueError(f'config.total_epochs = {config.total_epochs} gives no '
                     f'step ({steps_per_epoch} per epoch): set '
                     'config.total_steps or a larger config.total_epochs.')
  eval_every = config.eval_every_steps or steps_per_epoch
  return dict(steps_per_epoch=steps_per_epoch, total=total,
              eval_every=eval_every,
              ckpt_every=config.checkpoint_every_steps or eval_every,
              log_every=config.log_every_steps)


@dataclasses.dataclass
class _Trainer:
  """What the phases of one run share."""
  config: ml_collections.ConfigDict
  workdir: str
  dur: dict[str, int]
  train_it: Any
  state: TrainState
  state_sh: Any
  step_fn: Callable
  evals: dict[str, Any]
  batches: Callable[[], dict[str, jax.Array]]
  meta: dict[str, Any] = dataclasses.field(
      default_factory=selection.initial_meta)


def _batches(it, mesh: Mesh) -> Callable[[], dict[str, jax.Array]]:
  """The next process-local numpy batch as global arrays on the mesh."""
  sharding = NamedSharding(mesh, P(sharding_lib.DATA))
  return lambda: {k: jax.make_array_from_process_local_data(sharding, v)
                  for k, v in next(it).items()}


def _setup(config, workdir: str, mesh: Mesh) -> _Trainer:
  """Data, model, initial state, jitted step and evaluators; checks the
  selection metric against what the evaluators produce."""
  splits = build_dataset(config.data)
  train_arrays = splits['train']
  dur = _durations(config, len(train_arrays['label']))
  logging.info('%s: %d training examples, %d steps (%d per epoch), %d '
               'devices.', workdir, len(train_arrays['label']), dur['total'],
               dur['steps_per_epoch'], jax.device_count())
  shard_index, shard_count = sharding_lib.process_data_shard(mesh)
  train_it = pipeline.train_iterator(
      train_arrays, batch_size=config.batch_size, seed=config.seed,
      augment_cfg=config.augment, num_workers=config.num_workers,
      shard_index=shard_index, shard_count=shard_count)
  example = {k: jnp.zeros((config.batch_size,) + v.shape[1:], v.dtype)
             for k, v in train_arrays.items()}
  model = models.build(config.model)
  state, (tx, labels) = init_state(config, model, example,
                                   jax.random.key(config.seed))
  frozen = freezing.frozen_modules(labels)
  if frozen:
    logging.info('Frozen (inference-mode) modules: %s', ', '.join(frozen))
  state_sh = sharding_lib.state_shardings(state, state.params,
                                          config.sharding_rules, mesh)
  step_fn = jax.jit(make_train_step(config, model, tx, labels),
                    in_shardings=(state_sh, NamedSharding(
                        mesh, P(sharding_lib.DATA))),
                    out_shardings=(state_sh, NamedSharding(mesh, P())),
                    donate_argnums=(0,))
  ctx = evaluators_lib.EvalContext(
      model=model, splits=splits, batch_size=config.eval_batch_size,
      mesh=mesh, model_inputs=config.model_inputs,
      loss=(config.loss.name, loss_kwargs(config)))
  evals = {name: evaluators_lib.build(name, ev, ctx)
           for name, ev in config.evals.items()}
  checks.check_select_metric(config, evals, state.variables())
  return _Trainer(config=config, workdir=workdir, dur=dur, train_it=train_it,
                  state=state, state_sh=state_sh, step_fn=step_fn,
                  evals=evals, batches=_batches(train_it, mesh))


def _restore(t: _Trainer, checkpointer) -> None:
  """Continues from the latest checkpoint, if the workdir has one."""
  if checkpointer.latest_step() is not None:
    t.state, data_state, t.meta = checkpointer.restore_latest(
        sharding_lib.abstract(t.state, t.state_sh))
    t.train_it.set_state(data_state)
    logging.info('Resumed from %s at step %d.', t.workdir, int(t.state.step))
  t.state = sharding_lib.put(t.state, t.state_sh)


class _TrainMetrics:
  """The step metrics, fetched from the device one step late (so the host
  does not wait for each step) and checked for a finite loss."""

  def __init__(self, workdir: str, batch_size: int):
    self.workdir, self.batch_size = workdir, batch_size
    self.pending = None  # (metrics, step) of the last step, not fetched
    self.history: list[dict[str, Any]] = []
    self.t_log = time.monotonic()

  def add(self, metrics, step: int) -> None:
    self.flush()
    self.pending = (metrics, step)

  def flush(self) -> None:
    if self.pending is None:
      return
    metrics, step = self.pending
    self.pending = None
    m = jax.device_get(metrics)
    if not np.isfinite(m['loss']):
      raise FloatingPointError(
          f'Non-finite loss {float(m["loss"])} at step {step} in '
          f'{self.workdir}; the last checkpoint (written before this step) '
          'is intact. Lower the learning rate or check the inputs.')
    self.history.append(m)

  def summary(self) -> dict[str, float]:
    """Means since the last summary, and the training throughput."""
    self.flush()
    now = time.monotonic()
    out = {f'train/{k}': float(np.mean([h[k] for h in self.history]))
           for k in self.history[-1]}
    out['train/images_per_s'] = (len(self.history) * self.batch_size /
                                 max(now - self.t_log, 1e-9))
    self.history, self.t_log = [], now
    return out


def _due(every: int, step: int, dur) -> bool:
  if every < 0:
    return False
  every = every or dur['eval_every']
  return step % every == 0 or step == dur['total']


def _fmt(results: Mapping[str, float]) -> str:
  return ', '.join(f'{k}={v:.4g}' for k, v in sorted(results.items()))


def _evaluate(t: _Trainer, names, step: int, writer, checkpointer) -> None:
  """Runs the evaluators `names`, then checkpoint selection."""
  results = {}
  for name in names:
    for k, v in t.evals[name].run(t.state.variables()).items():
      results[f'{name}/{k}'] = v
  writer.write_scalars(step, results)
  logging.info('step %d: %s', step, _fmt(results))
  t.state, t.meta = selection.after_eval(t.config, t.state, t.meta, results,
                                         step, checkpointer,
                                         workdir=t.workdir)
  t.state = sharding_lib.put(t.state, t.state_sh)


def _train_loop(t: _Trainer, checkpointer, writer) -> int:
  """Steps until `total` (or early stopping); returns the last step."""
  config, dur = t.config, t.dur
  step = int(t.state.step)
  progress = metric_writer.Progress(dur['total'], config.batch_size,
                                    first_step=step,
                                    every_s=config.progress_every_s)
  train_metrics = _TrainMetrics(t.workdir, config.batch_size)
  while step < dur['total'] and not t.meta['stopped_early']:
    t.state, metrics = t.step_fn(t.state, t.batches())
    step += 1
    train_metrics.add(metrics, step)
    if step % dur['log_every'] == 0 or step == dur['total']:
      summary = train_metrics.summary()
      writer.write_scalars(step, summary)
      progress.update(step, summary['train/loss'])
    due = [n for n, ev in config.evals.items()
           if _due(ev['every_steps'], step, dur)]
    save = step % dur['ckpt_every'] == 0 or step == dur['total']
    if due or save:
      train_metrics.flush()
    if due:
      _evaluate(t, due, step, writer, checkpointer)
    if save or t.meta['stopped_early']:
      checkpointer.save_latest(step, t.state, t.train_it.get_state(), t.meta)
  progress.update(step, force=True)
  return step


def _final_evals(t: _Trainer) -> dict[str, float]:
  """The `final=True` evaluators on the best checkpoint."""
  names = [n for n, ev in t.config.evals.items() if ev['final']]
  if not names:
    return {}
  variables = sharding_lib.put(weights.restore(t.workdir),
                               t.state_sh.variables())
  results = {}
  for name in names:
    for k, v in t.evals[name].run(variables).items():
      results[f'{name}/{k}'] = float(v)
  ckpt_lib.write_json(os.path.join(t.workdir, 'final_metrics.json'), results)
  logging.info('Final (best checkpoint): %s', _fmt(results))
  return results


def _finish(t: _Trainer, step: int, checkpointer) -> dict[str, float]:
  """Keeps the last state as best when nothing was selected, then runs the
  final evaluations."""
  if t.meta['best_step'] is None:
    if t.config.select_metric:
      logging.warning('No finite %s in %s: best/ is the last step (%d).',
                      t.config.select_metric, t.workdir, step)
    checkpointer.save_best(step, sharding_lib.to_host(t.state.variables()),
                           dict(step=step, metric=None, value=None))
  return _final_evals(t)


def _close(resources, error: BaseException | None) -> None:
  """Closes `resources`; while `error` propagates, a failure to close is
  logged, so that `error` stays the last thing printed."""
  for resource in resources:
    try:
      resource.close()
    except Exception as e:  # pylint: disable=broad-except
      if error is None:
        raise
      logging.error('Closing %s after the error below also failed: %r',
                    type(resource).__name__, e)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming if it holds a checkpoint).

  Returns a summary dict: final step, best metric and final evaluations.
  """
  mesh = make_mesh(axes=config.mesh)
  checks.check_config(config, mesh)
  stored = resume.config_to_write(config, workdir)  # raises on a change
  t = _setup(config, workdir, mesh)
  os.makedirs(workdir, exist_ok=True)
  ckpt_lib.write_json(os.path.join(workdir, resume.CONFIG), stored)
  resources = [ckpt_lib.Checkpointer(workdir)]
  try:
    resources.append(metric_writer.MetricWriter(workdir))
    checkpointer, writer = resources
    _restore(t, checkpointer)
    step = _train_loop(t, checkpointer, writer)
    final = _finish(t, step, checkpointer)
  except BaseException as e:
    _close(reversed(resources), e)
    raise
  _close(reversed(resources), None)
  return dict(step=step, best_step=t.meta['best_step'],
              best_value=t.meta['best_value'], final=final)
