"""Training losses, by name: `config.loss = dict(name=..., **kwargs)`.

Each loss is `fn(logits, out, batch, **kwargs) -> (loss, metrics)` where
`(logits, out)` is what the model returned and `batch` the input dict. Losses
are computed in float32 whatever the model's compute dtype.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

Metrics = dict[str, jax.Array]


def _wmean(x_B, batch):
  """Mean over the batch, ignoring padding rows (`batch['valid']` False)."""
  if 'valid' not in batch:
    return x_B.mean()
  w = batch['valid'].astype(jnp.float32)
  return jnp.sum(x_B * w) / jnp.maximum(w.sum(), 1.0)


def _ce(logits, labels, label_smoothing: float = 0.0):
  logits = logits.astype(jnp.float32)
  num_classes = logits.shape[-1]
  onehot = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    onehot = optax.smooth_labels(onehot, label_smoothing)
  return optax.softmax_cross_entropy(logits, onehot)


def ce(logits, out, batch, *, label_smoothing: float = 0.0,
       logits_key: str = '') -> tuple[jax.Array, Metrics]:
  """Softmax cross-entropy on `logits` (or `out[logits_key]`)."""
  logits = out[logits_key] if logits_key else logits
  loss = _wmean(_ce(logits, batch['label'], label_smoothing), batch)
  acc = _wmean(jnp.argmax(logits, -1) == batch['label'], batch)
  return loss, {'ce': loss, 'accuracy': acc}


def saliency_kl_per_example(gaze_BHW, logp_BHW):
  """KL(gaze || prediction) per image; gaze is normalised to sum 1.

  The authors' and MT-UNet's definition: no epsilon, the prediction given as
  log-probabilities (log-softmax over pixels); 0 log 0 = 0.
  """
  b = gaze_BHW.shape[0]
  g = gaze_BHW.reshape(b, -1).astype(jnp.float32)
  g = g / jnp.maximum(g.sum(-1, keepdims=True), 1e-12)
  logp = logp_BHW.reshape(b, -1).astype(jnp.float32)
  return jnp.sum(jax.scipy.special.xlogy(g, g) - g * logp, axis=-1)


def kl_saliency(logits, out, batch) -> tuple[jax.Array, Metrics]:
  """Saliency KL(gaze || softmax prediction), batch mean."""
  del logits
  kl = _wmean(saliency_kl_per_example(batch['gaze'], out['saliency_logp']),
              batch)
  return kl, {'kl': kl}


def triplet_batch_all(emb_BD, labels_B, margin: float = 1.0, valid_B=None):
  """Mean triplet loss over every valid (anchor, positive, negative) triplet.

  Positive = same class, different example; negative = other class. L2
  distances; loss = max(d(a,p) - d(a,n) + margin, 0). Returns (loss, number
  of valid triplets, fraction of them with positive loss).
  """
  emb = emb_BD.astype(jnp.float32)
  sq = jnp.sum(emb**2, -1)
  d2 = sq[:, None] - 2 * emb @ emb.T + sq[None, :]
  # sqrt with a safe gradient at zero distance.
  d = jnp.sqrt(jnp.maximum(d2, 1e-12)) * (d2 > 1e-12)
  same = labels_B[:, None] == labels_B[None, :]
  eye = jnp.eye(labels_B.shape[0], dtype=bool)
  pos = same & ~eye
  neg = ~same
  valid = pos[:, :, None] & neg[:, None, :]
  if valid_B is not None:
    v = valid_B.astype(bool)
    valid = valid & v[:, None, None] & v[None, :, None] & v[None, None, :]
  per = jnp.maximum(d[:, :, None] - d[:, None, :] + margin, 0.0)
  n = valid.sum()
  loss = jnp.where(valid, per, 0.0).sum() / jnp.maximum(n, 1)
  frac = jnp.where(valid, per > 0, False).sum() / jnp.maximum(n, 1)
  return loss, n, frac


def triplet(logits, out, batch, *, margin: float = 1.0,
            embedding_key: str = 'pre_logits') -> tuple[jax.Array, Metrics]:
  """Batch-all triplet loss on `out[embedding_key]` (contrastive pretraining)."""
  del logits
  loss, n, frac = triplet_batch_all(out[embedding_key], batch['label'], margin,
                                    batch.get('valid'))
  return loss, {'triplet': loss, 'num_triplets': n.astype(jnp.float32),
                'active_triplets': frac}


def cooperative_joint(logits, out, batch, *, saliency_weight: float = 1.0,
                      label_smoothing: float = 0.0):
  """The authors' released stage 3: classifier CE + weighted saliency KL."""
  ce_loss, m = ce(logits, out, batch, label_smoothing=label_smoothing)
  kl, mk = kl_saliency(logits, out, batch)
  return ce_loss + saliency_weight * kl, {**m, **mk}


def uncertainty_multitask(logits, out, batch, *, label_smoothing: float = 0.0):
  """MT-UNet's uncertainty weighting with learned log-sigmas.

  L = L_cls / s_c^2 + log(s_c + 1) + L_sal / (2 s_s^2) + log(s_s + 1), with
  (log s_c, log s_s) = out['log_sigmas'] (Zhu et al. 2022).
  """
  ce_loss, m = ce(logits, out, batch, label_smoothing=label_smoothing)
  kl, mk = kl_saliency(logits, out, batch)
  log_sc, log_ss = (jnp.asarray(v, jnp.float32) for v in out['log_sigmas'])
  sc, ss = jnp.exp(log_sc), jnp.exp(log_ss)
  loss = (ce_loss / sc**2 + jnp.log(sc + 1) + kl / (2 * ss**2) +
          jnp.log(ss + 1))
  return loss, {**m, **mk, 'sigma_cls': sc, 'sigma_sal': ss}


LOSSES: Mapping[str, Callable[..., Any]] = {
    'ce': ce,
    'kl_saliency': kl_saliency,
    'triplet': triplet,
    'cooperative_joint': cooperative_joint,
    'uncertainty_multitask': uncertainty_multitask,
}


def get_loss(name: str) -> Callable[..., Any]:
  if name not in LOSSES:
    raise ValueError(f"Unknown loss {name!r} (config key 'loss.name'). Valid "
                     f'choices: {", ".join(sorted(LOSSES))}.')
  return LOSSES[name]
