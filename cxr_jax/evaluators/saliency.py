"""Saliency metrics of predicted gaze maps against the radiologists' maps."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from cxr_jax.metrics import saliency as sal
from cxr_jax.registry import check_choice


class Evaluator:
  """`saliency` evaluator: KL, CC, HS (authors' or MIT definitions), NSS and
  AUC-Judd (from the fixation maps) of `out['saliency_logp']`, averaged over
  the split (the per-image values come from `predict`)."""

  def __init__(self, ctx, *, split: str = 'test', variant: str = 'authors'):
    self.ctx, self.split = ctx, split
    self.variant = check_choice(variant, ('authors', 'mit'),
                                'evals.*.variant')

  def predict(self, variables) -> dict[str, np.ndarray]:
    """Per-image predicted distributions (and their logs), targets and
    fixation maps."""
    def fn(logits, out, batch):
      del logits
      logp = out['saliency_logp'].astype(jnp.float32)
      return {'pred': jnp.exp(logp), 'logp': logp,
              'gaze': batch['gaze'], 'fixmap': batch['fixmap'],
              'index': batch['index']}
    return self.ctx.map(variables, self.split, fn, key=id(self))

  def per_image(self, p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return per_image_metrics(p['gaze'], p['pred'], p['fixmap'], self.variant,
                             pred_logp=p.get('logp'))

  def run(self, variables) -> dict[str, float]:
    """Means over the split's images; images whose metric is undefined (a
    study without gaze: NaN) are left out and counted in `n_undefined`."""
    m = self.per_image(self.predict(variables))
    out = {k: float(np.nanmean(v)) if np.isfinite(v).any() else float('nan')
           for k, v in m.items()}
    out['n_undefined'] = int(np.sum(~np.isfinite(m['kl'])))
    return out


def per_image_metrics(gaze, pred, fixmap, variant='authors', pred_logp=None):
  """KL, CC, HS, NSS, AUC-Judd per image for (N,H,W) maps.

  `pred_logp` (the model's log-softmax, optional): the authors' KL is then
  taken from the log-probabilities, which stay finite where a float32
  probability underflows to 0 (log p < ~-103) on a gazed-at pixel; equal to
  the value from `pred` otherwise.
  """
  if pred_logp is not None and variant == 'authors':
    kl = sal.kl(gaze, pred_logp=pred_logp)
  else:
    kl = sal.kl(gaze, pred, variant=variant)
  return {
      'kl': kl,
      'cc': sal.cc(gaze, pred),
      'hs': sal.hs(gaze, pred, variant=variant),
      'nss': sal.nss(pred, fixmap),
      'auc_judd': sal.auc_judd(pred, fixmap),
  }
