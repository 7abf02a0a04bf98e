"""Evaluators: what the trainer measures on a split, plugged in by config.

`config.evals.<name> = config_base.evaluator(type, split, every_steps=0,
final=False, **kwargs)`: `type` picks `cxr_jax.evaluators.<type>.Evaluator`;
`every_steps` > 0 evaluates every that many steps, 0 once per epoch, -1 never
during training; `final=True` also evaluates the best checkpoint at the end
of training (`final_metrics.json`). Results are logged as `<name>/<metric>`.

An evaluator is `Evaluator(ctx, split=..., **kwargs)` with
`run(variables) -> dict[str, float]`; `ctx` (an `EvalContext`) runs the
model in inference mode over a split, sharded over the mesh like training:
batches over its `'data'` axis, variables as they come (the trainer passes
them laid out by `config.sharding_rules`). An evaluator may also declare
`metric_names(variables) -> tuple[str, ...]`, the keys `run` returns, so
that the trainer checks `config.select_metric` before training.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from cxr_jax.runtime import sharding
from cxr_jax.registry import Registry

EVALUATORS = Registry('evaluator type', {
    'loss': 'cxr_jax.evaluators.loss:Evaluator',
    'classification': 'cxr_jax.evaluators.classification:Evaluator',
    'saliency': 'cxr_jax.evaluators.saliency:Evaluator',
    'cam_localization': 'cxr_jax.evaluators.cam_localization:Evaluator',
})

ApplyFn = Callable[[Any, Mapping[str, Any]], tuple[Any, dict]]


class EvalContext:
  """Runs `fn(logits, out, batch)` of the model over a split's batches."""

  def __init__(self, *, model, splits: Mapping[str, Mapping[str, np.ndarray]],
               batch_size: int, mesh, model_inputs=(), loss=None):
    from cxr_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    self._pipeline = pipeline
    self.model = model
    self.splits = splits
    self.batch_size = batch_size
    self.mesh = mesh
    self.model_inputs = tuple(model_inputs)
    self.loss = loss  # (fn, kwargs) of the training loss
    self._data_sharding = NamedSharding(mesh, P(sharding.DATA))
    # This process's block of each global batch, and how many processes
    # read the same block (> 1 when a model axis spans processes).
    self._shard = sharding.process_data_shard(mesh)
    self._replicas = jax.process_count() // self._shard[1]
    self._compiled: dict[Any, Callable] = {}

  def apply(self, variables, batch):
    """The model in inference mode on a batch: `(logits, out)`."""
    kw = {k: batch[k] for k in self.model_inputs}
    return self.model.apply(variables, batch['image'], train=False, **kw)

  def batches(self, split: str) -> Iterator[dict[str, np.ndarray]]:
    """This process's share of the split's ordered, padded global batches."""
    if split not in self.splits:
      raise ValueError(f'Evaluator split {split!r} not in the dataset '
                       f'(splits: {sorted(self.splits)}).')
    return self._pipeline.eval_batches(
        self.splits[split], batch_size=self.batch_size,
        shard_index=self._shard[0], shard_count=self._shard[1])

  def abstract_batch(self, split: str) -> dict[str, jax.ShapeDtypeStruct]:
    """The shapes and dtypes of one global batch of `split` (with
    `'valid'`), to trace what an evaluator computes (`jax.eval_shape`)."""
    if split not in self.splits:
      raise ValueError(f'Evaluator split {split!r} not in the dataset '
                       f'(splits: {sorted(self.splits)}).')
    out = {k: jax.ShapeDtypeStruct((self.batch_size,) + v.shape[1:], v.dtype)
           for k, v in self.splits[split].items()}
    out['valid'] = jax.ShapeDtypeStruct((self.batch_size,), np.bool_)
    return out

  def _put(self, batch):
    return {k: jax.make_array_from_process_local_data(self._data_sharding, v)
            for k, v in batch.items()}

  def map(self, variables, split: str, fn, key: Any) -> dict[str, np.ndarray]:
    """Concatenates `fn(logits, out, batch)`'s per-example outputs.

    `fn` returns a dict of (B, ...) arrays; padding rows are dropped and the
    result is in split order on every process. `key` caches the compiled
    function (one per evaluator).
    """
    if key not in self._compiled:
      self._compiled[key] = jax.jit(
          lambda v, b: fn(*self.apply(v, b), b))
    f = self._compiled[key]
    parts: dict[str, list[np.ndarray]] = {}
    for batch in self.batches(split):
      res = f(variables, self._put(batch))
      valid = np.asarray(multihost_utils.process_allgather(
          self._put({'v': batch['valid']})['v'], tiled=True))
      for k, v in res.items():
        v = np.asarray(multihost_utils.process_allgather(v, tiled=True))
        parts.setdefault(k, []).append(v[valid])
    return {k: np.concatenate(v) for k, v in parts.items()}

  def reduce(self, variables, split: str, fn, key: Any) -> dict[str, float]:
    """Averages `fn(logits, out, batch)`'s scalars over batches.

    Each batch's value is weighted by its number of valid rows (`fn` itself
    must ignore padding rows, as the losses do via `batch['valid']`).
    """
    if key not in self._compiled:
      self._compiled[key] = jax.jit(lambda v, b: fn(*self.apply(v, b), b))
    f = self._compiled[key]
    sums: dict[str, float] = {}
    total = 0.0
    for batch in self.batches(split):
      n = float(multihost_utils.process_allgather(
          np.asarray(batch['valid'].sum())).sum()) / self._replicas
      res = jax.device_get(f(variables, self._put(batch)))
      for k, v in res.items():
        sums[k] = sums.get(k, 0.0) + float(v) * n
      total += n
    return {k: v / max(total, 1.0) for k, v in sums.items()}


def build(name: str, cfg: Mapping[str, Any], ctx: EvalContext):
  """Builds evaluator `name` from its `config.evals` entry
  (`config_base.evaluator`: type, split, every_steps, final, kwargs)."""
  kw = dict(cfg)
  cls = EVALUATORS.get(kw.pop('type'), key=f'evals.{name}.type')
  del kw['every_steps'], kw['final']  # the trainer's, not the evaluator's
  try:
    return cls(ctx, **kw)
  except TypeError as e:
    raise TypeError(f'config.evals.{name}: {e}') from e


def metric_names(evaluator, variables) -> tuple[str, ...]:
  """The keys `evaluator.run` returns (every evaluator type declares them
  with `metric_names(variables)`, traced where they depend on the model)."""
  return tuple(evaluator.metric_names(variables))
