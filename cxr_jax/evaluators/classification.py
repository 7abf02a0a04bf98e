"""Classification metrics of a split: accuracy, AUC, precision/recall."""
from __future__ import annotations

import jax
import numpy as np

from cxr_jax.metrics import classification as cls_metrics
from cxr_jax.registry import check_choice


class Evaluator:
  """`classification` evaluator.

  task='binary': accuracy, precision, recall, ROC AUC (positive class 1);
  task='multiclass': accuracy, one-vs-rest macro/micro AUC, Hand-Till AUC and
  per-class AUC. `logits_key` picks another head of the model's `out`.
  """

  def __init__(self, ctx, *, split: str = 'test', task: str = 'binary',
               logits_key: str = ''):
    self.ctx, self.split = ctx, split
    self.task = check_choice(task, ('binary', 'multiclass'), 'evals.*.task')
    self.logits_key = logits_key

  def predict(self, variables) -> dict[str, np.ndarray]:
    """Per-example class probabilities and labels, in split order."""
    key = self.logits_key

    def fn(logits, out, batch):
      logits = out[key] if key else logits
      return {'probs': jax.nn.softmax(logits.astype('float32'), -1),
              'label': batch['label'], 'index': batch['index']}
    return self.ctx.map(variables, self.split, fn, key=id(self))

  def run(self, variables) -> dict[str, float]:
    p = self.predict(variables)
    if self.task == 'binary':
      return cls_metrics.binary_report(p['label'], p['probs'])
    return cls_metrics.multiclass_report(p['label'], p['probs'])
