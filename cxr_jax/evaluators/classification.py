"""Classification metrics of a split: accuracy, AUC, precision/recall."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.metrics import classification as cls_metrics
from cxr_jax.registry import check_choice


def log_odds(logits_BK: jax.Array) -> jax.Array:
  """log(p / (1 - p)) of each class's softmax probability, from the logits:
  l_k - logsumexp_{j != k} l_j (for two classes, the logit margin).

  An increasing function of p, so every AUC ranks it as it would rank p, but
  it does not saturate: float32 probabilities (and log-probabilities) round
  to exactly 1.0 (0.0) once a logit margin exceeds ~17, which ties the
  confident model's most certain examples.
  """
  k = logits_BK.shape[-1]
  others = jnp.where(jnp.eye(k, dtype=bool), -jnp.inf,
                     logits_BK[..., None, :])
  return logits_BK - jax.nn.logsumexp(others, axis=-1)


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
    """Per-example class probabilities, log-odds (what the AUCs rank, see
    `log_odds`) and labels, in split order."""
    key = self.logits_key

    def fn(logits, out, batch):
      logits = (out[key] if key else logits).astype('float32')
      return {'probs': jax.nn.softmax(logits, -1),
              'log_odds': log_odds(logits),
              'label': batch['label'], 'index': batch['index']}
    return self.ctx.map(variables, self.split, fn, key=id(self))

  def metric_names(self, variables) -> tuple[str, ...]:
    """The keys `run` returns; for 'multiclass' the per-class AUCs follow
    the number of classes, read from the traced logits."""
    if self.task == 'binary':
      return ('accuracy', 'precision', 'recall', 'auc', 'n')
    key = self.logits_key

    def fn(v, b):
      logits, out = self.ctx.apply(v, b)
      return out[key] if key else logits
    k = jax.eval_shape(fn, variables, self.ctx.abstract_batch(self.split))
    return ('accuracy', 'auc_ovr_macro', 'auc_ovr_weighted', 'auc_ovr_micro',
            'auc_hand_till', 'n') + tuple(
                f'auc_class{i}' for i in range(k.shape[-1]))

  def run(self, variables) -> dict[str, float]:
    p = self.predict(variables)
    report = (cls_metrics.binary_report if self.task == 'binary'
              else cls_metrics.multiclass_report)
    return report(p['label'], p['probs'], scores=p['log_odds'])
