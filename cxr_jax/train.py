"""The one trainer: every stage, baseline and model of both studies.

A config picks the model, the data, the loss, the trainable parts (the
freezing `schedule`) and the evaluators; nothing here is study-specific. The
train step is a pure `(state, batch) -> (state, metrics)` function, jitted
once with the state donated and the batch sharded over the `'data'` axis of
the `config.mesh` mesh; the state is replicated, or laid out by
`config.sharding_rules` over the other mesh axes (`cxr_jax/runtime/sharding.py`), so
the same code runs on one CPU, 8 GPUs or a pod.

Each run's workdir holds `config.json`, `metrics.jsonl`, TensorBoard events
(`tb/`), the latest checkpoint (`ckpt/`, resumed after a kill), the best one
by `config.select_metric` (`best/`, what later stages initialise from) and
`final_metrics.json` (the `final=True` evaluators on the best checkpoint).
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cxr_jax import ckpt as ckpt_lib
from cxr_jax import evaluators as evaluators_lib
from cxr_jax import losses
from cxr_jax import metric_writer
from cxr_jax import models
from cxr_jax import optim
from cxr_jax.runtime import sharding as sharding_lib
from cxr_jax import weights
from cxr_jax.data import build_dataset
from cxr_jax.data import pipeline


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  lr_scale: jax.Array  # reduce-on-plateau multiplier of every update

  def variables(self) -> dict:
    v = {'params': self.params}
    if self.batch_stats:
      v['batch_stats'] = self.batch_stats
    return v


def build_model(model_cfg: Mapping[str, Any], frozen: tuple[str, ...] = ()):
  """`models.build(model_cfg)`, with the `frozen` submodules of a composite
  model run in inference mode."""
  model = models.build(model_cfg)
  if frozen and 'frozen' in {f.name for f in dataclasses.fields(model)}:
    model = model.clone(frozen=tuple(frozen))
  return model


def make_mesh(devices=None, axes=sharding_lib.DEFAULT_MESH) -> Mesh:
  """The `config.mesh` mesh (default: 1-D `('data',)`) over all devices."""
  return sharding_lib.make_mesh(axes, devices)


def _durations(config, n_train: int) -> dict[str, int]:
  steps_per_epoch = max(n_train // config.batch_size, 1)
  total = config.total_steps or int(config.total_epochs * steps_per_epoch)
  if total <= 0:
    raise ValueError('Set config.total_steps or config.total_epochs > 0.')
  eval_every = config.eval_every_steps or steps_per_epoch
  return dict(steps_per_epoch=steps_per_epoch, total=total,
              eval_every=eval_every,
              ckpt_every=config.checkpoint_every_steps or eval_every,
              log_every=config.log_every_steps)


def _is_better(value: float, best: float | None, mode: str, delta: float):
  if best is None:
    return True
  return value < best - delta if mode == 'min' else value > best + delta


def _model_inputs(config, batch) -> dict:
  return {k: batch[k] for k in config.model_inputs}


def _check_config(config, mesh: Mesh) -> None:
  models.family(config.model.name)  # raises with the valid names
  losses.get_loss(config.loss.name)
  if config.select_mode not in ('min', 'max'):
    raise ValueError(f"config.select_mode = {config.select_mode!r}: use 'min'"
                     " or 'max'.")
  sharding_lib.check_rules(config.sharding_rules, dict(mesh.shape))
  n_data = mesh.shape[sharding_lib.DATA]
  for key in ('batch_size', 'eval_batch_size'):
    if config[key] % n_data:
      raise ValueError(f'config.{key} = {config[key]} is not divisible by '
                       f"the {n_data} devices of the mesh's 'data' axis "
                       f'(config.mesh = {tuple(config.mesh)}).')
  for name, ev in config.evals.items():
    evaluators_lib.EVALUATORS.get(ev.get('type', ''), key=f'evals.{name}.type')
  if config.init.path and not os.path.exists(config.init.path):
    raise FileNotFoundError(
        f'config.init.path = {config.init.path!r} does not exist: point it at '
        "the previous stage's workdir (its best checkpoint is used) or at a "
        'folder written by python -m cxr_jax.convert.')


def init_state(config, model, example_batch, rng) -> tuple[TrainState, Any]:
  """Initialises parameters (from `config.init` if set) and the optimizer."""
  init_rng, state_rng = jax.random.split(rng)
  variables = models.init_variables(
      model, init_rng, example_batch['image'], train=False,
      **_model_inputs(config, example_batch))
  variables = flax.core.unfreeze(variables)
  variables.pop('perturbations', None)
  if config.init.path:
    variables = weights.init_from(config.init, variables)
  variables = jax.tree.map(jnp.asarray, variables)
  tx, labels = optim.make_optimizer(config.optim, config.schedule,
                                    variables['params'])
  state = TrainState(
      step=jnp.asarray(0, jnp.int32), params=variables['params'],
      batch_stats=variables.get('batch_stats', {}),
      opt_state=tx.init(variables['params']), rng=state_rng,
      lr_scale=jnp.asarray(1.0, jnp.float32))
  return state, (tx, labels)


def make_train_step(config, model, tx, labels=None):
  """The pure train step `(state, batch) -> (state, metrics)`.

  `labels` (from the freezing schedule) marks frozen parameters; they are
  wrapped in `stop_gradient` so that XLA skips their backward pass.
  """
  loss_fn = losses.get_loss(config.loss.name)
  loss_kw = {k: v for k, v in config.loss.items() if k != 'name'}

  def step(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    has_bs = bool(state.batch_stats)

    def compute_loss(params):
      if labels is not None:
        params = jax.tree.map(
            lambda p, l: jax.lax.stop_gradient(p) if l == optim.FROZEN else p,
            params, labels)
      variables = {'params': params}
      if has_bs:
        variables['batch_stats'] = state.batch_stats
      (logits, out), mutated = model.apply(
          variables, batch['image'], train=True,
          mutable=['batch_stats'] if has_bs else [], rngs={'dropout': rng},
          **_model_inputs(config, batch))
      loss, metrics = loss_fn(logits, out, batch, **loss_kw)
      return loss, (metrics, mutated.get('batch_stats', {}))

    (loss, (metrics, new_bs)), grads = jax.value_and_grad(
        compute_loss, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda u: u * state.lr_scale.astype(u.dtype),
                           updates)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, 'loss': loss, 'grad_norm': optax.tree.norm(grads),
               'lr_scale': state.lr_scale}
    return state.replace(step=state.step + 1, params=params,
                         batch_stats=new_bs, opt_state=opt_state), metrics

  return step


class _Batches:
  """Puts the process-local numpy batches on the mesh as global arrays."""

  def __init__(self, it, mesh):
    self.it = it
    self.sharding = NamedSharding(mesh, P('data'))

  def next(self):
    batch = next(self.it)
    return {k: jax.make_array_from_process_local_data(self.sharding, v)
            for k, v in batch.items()}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming if it holds a checkpoint).

  Returns a summary dict: final step, best metric and final evaluations.
  """
  mesh = make_mesh(axes=config.mesh)
  _check_config(config, mesh)
  os.makedirs(workdir, exist_ok=True)
  ckpt_lib.write_json(os.path.join(workdir, 'config.json'), config.to_dict())
  repl = NamedSharding(mesh, P())
  data_sharding = NamedSharding(mesh, P(sharding_lib.DATA))

  splits = build_dataset(config.data)
  train_arrays = splits['train']
  n_train = len(train_arrays['label'])
  dur = _durations(config, n_train)
  logging.info('%s: %d training examples, %d steps (%d per epoch), %d '
               'devices.', workdir, n_train, dur['total'],
               dur['steps_per_epoch'], jax.device_count())

  shard_index, shard_count = sharding_lib.process_data_shard(mesh)
  shard = dict(shard_index=shard_index, shard_count=shard_count)
  train_it = pipeline.train_iterator(
      train_arrays, batch_size=config.batch_size, seed=config.seed,
      augment_cfg=config.augment, num_workers=config.num_workers, **shard)
  example = {k: jnp.zeros((config.batch_size,) + v.shape[1:], v.dtype)
             for k, v in train_arrays.items()}

  model = build_model(config.model)
  rng = jax.random.key(config.seed)
  state, (tx, labels) = init_state(config, model, example, rng)
  frozen = optim.frozen_top_level(labels)
  if frozen:
    logging.info('Frozen (inference-mode) submodules: %s', frozen)
    model = build_model(config.model, frozen)

  state_sh = sharding_lib.state_shardings(state, state.params,
                                          config.sharding_rules, mesh)
  checkpointer = ckpt_lib.Checkpointer(workdir)
  meta = dict(best_value=None, best_step=None, bad_evals=0, plateau_bad=0,
              stopped_early=False)
  if checkpointer.latest_step() is not None:
    state, data_state, meta = checkpointer.restore_latest(
        sharding_lib.abstract(state, state_sh))
    train_it.set_state(data_state)
    logging.info('Resumed from %s at step %d.', workdir, int(state.step))
  state = sharding_lib.put(state, state_sh)

  step_fn = jax.jit(make_train_step(config, model, tx, labels),
                    in_shardings=(state_sh, data_sharding),
                    out_shardings=(state_sh, repl), donate_argnums=(0,))
  ctx = evaluators_lib.EvalContext(
      model=model, splits=splits, batch_size=config.eval_batch_size,
      mesh=mesh, model_inputs=config.model_inputs,
      loss=(config.loss.name,
            {k: v for k, v in config.loss.items() if k != 'name'}))
  evals = {name: evaluators_lib.build(name, ev, ctx)
           for name, ev in config.evals.items()}

  writer = metric_writer.MetricWriter(workdir)
  batches = _Batches(train_it, mesh)
  first = int(state.step)
  progress = metric_writer.Progress(dur['total'], config.batch_size,
                                    first_step=first,
                                    every_s=config.progress_every_s)
  pending = None  # metrics of the previous step, checked one step late
  history: list[dict] = []
  t_log = time.monotonic()

  def check(pending_metrics, step):
    m = jax.device_get(pending_metrics)
    if not np.isfinite(m['loss']):
      raise FloatingPointError(
          f'Non-finite loss {float(m["loss"])} at step {step} in {workdir}; '
          'the last checkpoint (written before this step) is intact. '
          'Lower the learning rate or check the inputs.')
    return m

  step = first
  while step < dur['total'] and not meta['stopped_early']:
    state, metrics = step_fn(state, batches.next())
    step += 1
    if pending is not None:
      history.append(check(*pending))
    pending = (metrics, step)
    if step % dur['log_every'] == 0 or step == dur['total']:
      history.append(check(*pending))
      pending = None
      now = time.monotonic()
      summary = {f'train/{k}': float(np.mean([h[k] for h in history]))
                 for k in history[-1]}
      summary['train/images_per_s'] = (len(history) * config.batch_size /
                                       max(now - t_log, 1e-9))
      writer.write_scalars(step, summary)
      history, t_log = [], now
      progress.update(step, summary['train/loss'])

    due = [n for n, ev in config.evals.items()
           if _due(ev.get('every_steps', 0), step, dur)]
    if due or step % dur['ckpt_every'] == 0 or step == dur['total']:
      if pending is not None:
        history.append(check(*pending))
        pending = None
    if due:
      results = {}
      for name in due:
        for k, v in evals[name].run(state.variables()).items():
          results[f'{name}/{k}'] = v
      writer.write_scalars(step, results)
      logging.info('step %d: %s', step, _fmt(results))
      state, meta = _after_eval(config, state, meta, results, step,
                                checkpointer)
      state = sharding_lib.put(state, state_sh)
    if step % dur['ckpt_every'] == 0 or step == dur['total'] or (
        meta['stopped_early']):
      checkpointer.save_latest(step, state, train_it.get_state(), meta)

  progress.update(step, force=True)
  if meta['best_step'] is None:  # no selection metric: keep the last state
    checkpointer.save_best(step, sharding_lib.to_host(state.variables()),
                           dict(step=step, metric=None, value=None))
  final = _final_evals(config, evals, workdir, state_sh.variables())
  checkpointer.close()
  writer.close()
  return dict(step=step, best_step=meta['best_step'],
              best_value=meta['best_value'], final=final)


def _due(every: int, step: int, dur) -> bool:
  if every < 0:
    return False
  every = every or dur['eval_every']
  return step % every == 0 or step == dur['total']


def _fmt(results: Mapping[str, float]) -> str:
  return ', '.join(f'{k}={v:.4g}' for k, v in sorted(results.items()))


def _after_eval(config, state, meta, results, step, checkpointer):
  """Best checkpoint, reduce-on-plateau and early stopping."""
  name = config.select_metric
  if not name:
    return state, meta
  if name not in results:
    return state, meta  # the selection metric's evaluator did not run now
  value = float(results[name])
  meta = dict(meta)
  if _is_better(value, meta['best_value'], config.select_mode,
                config.select_min_delta):
    meta.update(best_value=value, best_step=step, bad_evals=0, plateau_bad=0)
    checkpointer.save_best(step, sharding_lib.to_host(state.variables()),
                           dict(step=step, metric=name, value=value))
    logging.info('New best %s = %.5g at step %d.', name, value, step)
    return state, meta
  meta['bad_evals'] += 1
  meta['plateau_bad'] += 1
  if config.plateau_patience and meta['plateau_bad'] >= config.plateau_patience:
    old_scale = float(state.lr_scale)
    # Clamped to the floor, as Keras' min_lr (float32 0.01 * 0.1 falls just
    # below 1e-3, and skipping that step had made 0.01 the real floor).
    new_scale = max(old_scale * config.plateau_factor,
                    config.plateau_min_scale)
    if new_scale < old_scale * (1 - 1e-6):
      state = state.replace(lr_scale=jnp.full_like(state.lr_scale, new_scale))
      logging.info('Reduce on plateau: learning rate x%.3g at step %d.',
                   new_scale, step)
    meta['plateau_bad'] = 0
  if (config.early_stopping_patience and
      meta['bad_evals'] >= config.early_stopping_patience):
    meta['stopped_early'] = True
    logging.info('Early stopping at step %d (best %s = %.5g at step %d).',
                 step, name, meta['best_value'], meta['best_step'])
  return state, meta


def _final_evals(config, evals, workdir, var_sh) -> dict[str, float]:
  names = [n for n, ev in config.evals.items() if ev.get('final', False)]
  if not names:
    return {}
  variables = sharding_lib.put(weights.restore(workdir), var_sh)
  results = {}
  for name in names:
    for k, v in evals[name].run(variables).items():
      results[f'{name}/{k}'] = float(v)
  ckpt_lib.write_json(os.path.join(workdir, 'final_metrics.json'), results)
  logging.info('Final (best checkpoint): %s', _fmt(results))
  return results
