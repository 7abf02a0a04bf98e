"""Saliency metrics of predicted gaze maps against the radiologists' maps."""
from __future__ import annotations

from absl import logging
import jax.numpy as jnp
import numpy as np

from cxr_jax.metrics import saliency as sal
from cxr_jax.registry import check_choice


METRICS = ('kl', 'cc', 'hs', 'nss', 'auc_judd')
_FROM_GAZE = ('kl', 'cc', 'hs')  # NaN for a study without gaze
_FROM_FIXATIONS = ('nss', 'auc_judd')  # NaN for a study without fixations


class Evaluator:
  """`saliency` evaluator: KL, CC, HS (authors' or MIT definitions), NSS and
  AUC-Judd (from the fixation maps) of `out['saliency_logp']`, averaged over
  the split (the per-image values come from `predict`)."""

  def __init__(self, ctx, *, split: str = 'test', variant: str = 'authors'):
    self.ctx, self.split = ctx, split
    self.variant = check_choice(variant, ('authors', 'mit'),
                                'evals.*.variant')
    self._warned = ''

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

  def metric_names(self, variables) -> tuple[str, ...]:
    """The keys `run` returns (see `summarise`)."""
    del variables
    counts = [f'{p}{k}' for k in METRICS for p in ('n_', 'n_undefined_')]
    return METRICS + tuple(counts) + ('n_images', 'n_undefined')

  def run(self, variables) -> dict[str, float]:
    """Means over the split's images (see `summarise`); the images left out
    of a mean are logged by their `index` (master-sheet row) once."""
    p = self.predict(variables)
    m = self.per_image(p)
    out = summarise(m)
    message = undefined_message(m, p['index'])
    if message and message != self._warned:
      logging.warning('saliency evaluator (split %r): %s', self.split,
                      message)
      self._warned = message
    return out


def summarise(m: dict[str, np.ndarray]) -> dict[str, float]:
  """Each metric's mean over the images where it is defined, with counts.

  A metric is undefined (NaN) for a study without gaze (KL, CC, HS) or
  without fixations (NSS, AUC-Judd); such images are left out of that mean
  only. Returns, per metric `<m>`: `<m>` (the mean, `np.nanmean`; NaN when
  no image has a finite value), `n_<m>` (the images the mean is over) and
  `n_undefined_<m>` (those left out); `n_images`; and `n_undefined`, the
  images with any metric undefined. A report's n column for metric `<m>` is
  `n_<m>`.
  """
  out: dict[str, float] = {}
  any_undefined = np.zeros(len(next(iter(m.values()))), bool)
  for k, v in m.items():
    v = np.asarray(v)
    nan = np.isnan(v)
    out[k] = (float(np.nanmean(v)) if np.isfinite(v).any()
              else float('nan'))
    out[f'n_{k}'] = int((~nan).sum())
    out[f'n_undefined_{k}'] = int(nan.sum())
    any_undefined |= nan
  out['n_images'] = int(any_undefined.size)
  out['n_undefined'] = int(any_undefined.sum())
  return out


def undefined_message(m: dict[str, np.ndarray], index: np.ndarray) -> str:
  """Names the images (by `index`, the master-sheet row) left out of the
  gaze metrics or of the fixation metrics, or ''."""
  index = np.asarray(index).reshape(-1)
  parts = []
  for names, why in ((_FROM_GAZE, 'no gaze'),
                     (_FROM_FIXATIONS, 'no fixations')):
    bad = np.any([np.isnan(np.asarray(m[k])) for k in names if k in m],
                 axis=0)
    if np.any(bad):
      rows = index[bad].tolist()
      more = ' ...' if len(rows) > 10 else ''
      parts.append(f'{len(rows)} of {bad.size} images left out of '
                   f'{"/".join(names)} (NaN: {why}, or a NaN prediction); '
                   f'master-sheet rows {rows[:10]}{more}')
  return '; '.join(parts)


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
