"""The training loss (and its metrics) on a split, in inference mode."""
from __future__ import annotations

import jax

from cxr_jax import losses


class Evaluator:
  """`loss` evaluator: mean training loss on a split (the usual early-stopping
  and checkpoint-selection metric)."""

  def __init__(self, ctx, *, split: str):
    if ctx.loss is None:
      raise ValueError('The loss evaluator needs the training loss.')
    self.ctx, self.split = ctx, split
    name, kwargs = ctx.loss
    loss_fn = losses.get_loss(name)

    def fn(logits, out, batch):
      loss, metrics = loss_fn(logits, out, batch, **kwargs)
      return {'loss': loss, **metrics}
    self._fn = fn

  def metric_names(self, variables) -> tuple[str, ...]:
    """'loss' and the loss function's metrics (traced, not computed)."""
    shapes = jax.eval_shape(lambda v, b: self._fn(*self.ctx.apply(v, b), b),
                            variables, self.ctx.abstract_batch(self.split))
    return tuple(sorted(shapes))

  def run(self, variables) -> dict[str, float]:
    return self.ctx.reduce(variables, self.split, self._fn, key=id(self))
