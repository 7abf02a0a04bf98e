"""Checkpoint selection: the best checkpoint, reduce-on-plateau, early stop.

After each evaluation the metric `config.select_metric` ('<evaluator>/<key>')
is compared with the best so far (`config.select_mode`, at least
`config.select_min_delta` better); a better value writes `best/`, and
evaluations without improvement count towards reduce-on-plateau and early
stopping. A NaN or infinite value is never "better": by default
(`config.select_nonfinite = 'error'`) it stops training with an error that
names the metric and the step; with 'worst' it counts as an evaluation
without improvement, with a warning.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import jax.numpy as jnp
from absl import logging

from cxr_jax.runtime import sharding as sharding_lib

NONFINITE = ('error', 'worst')


def initial_meta() -> dict[str, Any]:
  """The selection counters of a run that has not evaluated yet."""
  return dict(best_value=None, best_step=None, bad_evals=0, plateau_bad=0,
              stopped_early=False)


def is_better(value: float, best: float | None, mode: str,
              delta: float) -> bool:
  """Whether finite `value` improves on `best` (None: nothing yet)."""
  if best is None:
    return True
  return value < best - delta if mode == 'min' else value > best + delta


def _selection_value(config, results, step: int, workdir: str
                     ) -> float | None:
  """The selection metric's value in `results`; None when it is not
  finite and `config.select_nonfinite` is 'worst'."""
  name = config.select_metric
  value = float(results[name])
  if math.isfinite(value):
    return value
  if config.select_nonfinite == 'worst':
    logging.warning('%s = %s at step %d in %s: counted as no improvement '
                    '(config.select_nonfinite = worst).', name, value, step,
                    workdir)
    return None
  raise FloatingPointError(
      f'config.select_metric {name} = {value} at step {step} in {workdir}: '
      'a non-finite value cannot rank checkpoints. The checkpoints written '
      'before this evaluation are intact. Check the validation data and '
      'the model, or set config.select_nonfinite=worst to rank it below '
      'every finite value.')


def _reduce_on_plateau(config, state, step: int):
  old_scale = float(state.lr_scale)
  # Clamped to the floor, as Keras' min_lr (float32 0.01 * 0.1 lies just
  # below 1e-3, and must still reach it).
  new_scale = max(old_scale * config.plateau_factor, config.plateau_min_scale)
  if new_scale < old_scale * (1 - 1e-6):
    state = state.replace(lr_scale=jnp.full_like(state.lr_scale, new_scale))
    logging.info('Reduce on plateau: learning rate x%.3g at step %d.',
                 new_scale, step)
  return state


def after_eval(config, state, meta: Mapping[str, Any],
               results: Mapping[str, float], step: int, checkpointer, *,
               workdir: str):
  """Updates the best checkpoint and the plateau / early-stopping counters
  after an evaluation; returns `(state, meta)` (`state.lr_scale` lowered on
  a plateau)."""
  name = config.select_metric
  if not name:
    return state, meta
  if name not in results:
    evaluator = name.partition('/')[0]
    ran = sorted(k for k in results if k.startswith(evaluator + '/'))
    if ran:  # (an evaluator type that does not declare its metrics)
      raise ValueError(f'config.select_metric = {name!r} is not a metric of '
                       f'evaluator {evaluator!r}; it produces: '
                       f'{", ".join(ran)}.')
    return state, meta  # its evaluator did not run now
  value = _selection_value(config, results, step, workdir)
  meta = dict(meta)
  if value is not None and is_better(value, meta['best_value'],
                                     config.select_mode,
                                     config.select_min_delta):
    meta.update(best_value=value, best_step=step, bad_evals=0, plateau_bad=0)
    checkpointer.save_best(step, sharding_lib.to_host(state.variables()),
                           dict(step=step, metric=name, value=value))
    logging.info('New best %s = %.5g at step %d.', name, value, step)
    return state, meta
  meta['bad_evals'] += 1
  meta['plateau_bad'] += 1
  if config.plateau_patience and meta['plateau_bad'] >= config.plateau_patience:
    state = _reduce_on_plateau(config, state, step)
    meta['plateau_bad'] = 0
  if (config.early_stopping_patience and
      meta['bad_evals'] >= config.early_stopping_patience):
    meta['stopped_early'] = True
    logging.info('Early stopping at step %d (best %s = %s at step %s).',
                 step, name, meta['best_value'], meta['best_step'])
  return state, meta
