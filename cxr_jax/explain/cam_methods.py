"""The per-method rules of the class activation maps: each turns the target
activation `A` (B, h, w, C) and the gradient `g` = dS/dA of the selected
logit into a map (B, h, w) before the ReLU. `cam.py` runs the model, picks
the rule by name (`cam.METHODS`) and post-processes the map.

Formulas follow pytorch-grad-cam (jacobgil) so maps are comparable:
  gradcam    w_c = mean_hw(dS/dA_c);          cam = ReLU(sum_c w_c A_c)
  hirescam   cam = ReLU(sum_c dS/dA_c * A_c)
  gradcam++  a = g^2 / (2 g^2 + sum_hw(A) g^3 + 1e-6), a = 0 where g == 0,
             w_c = sum_hw(ReLU(g) a);         cam = ReLU(sum_c w_c A_c)
  xgradcam   w_c = sum_hw(g A / (sum_hw(A) + 1e-7)); cam = ReLU(sum_c w_c A_c)
  layercam   cam = ReLU(sum_c ReLU(g) A_c)
  scorecam   each channel, bilinearly upsampled (align_corners=True, as
             torch's UpsamplingBilinear2d) and min-max scaled to [0, 1]
             (+1e-8), masks the input; w = softmax_c(target logit of the
             masked input); cam = ReLU(sum_c w_c A_c)
  eigencam   projection of the centred activations (hw, C) on their first
             right singular vector; the SVD sign is arbitrary, so the map is
             flipped where |min| > |max| (the sign correction of
             pytorch-grad-cam's `get_2d_projection_with_sign_correction`;
             its `EigenCAM` class itself does not correct); cam = ReLU(.)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _spatial_sum(x_BhwC: Array) -> Array:
  return jnp.sum(x_BhwC, axis=(1, 2), keepdims=True)


def weighted(acts_BhwC: Array, w_BC: Array) -> Array:
  """sum_c w_c A_c: the channel-weighted activation map (B, h, w)."""
  return jnp.einsum('bhwc,bc->bhw', acts_BhwC, w_BC)


def gradcam(acts_BhwC: Array, grads_BhwC: Array) -> Array:
  """Grad-CAM (Selvaraju et al. 2017), before ReLU."""
  return weighted(acts_BhwC, jnp.mean(grads_BhwC, axis=(1, 2)))


def hirescam(acts_BhwC: Array, grads_BhwC: Array) -> Array:
  """HiResCAM (Draelos & Carin 2020): element-wise gradient x activation."""
  return jnp.sum(grads_BhwC * acts_BhwC, axis=-1)


def gradcam_pp(acts_BhwC: Array, grads_BhwC: Array) -> Array:
  """Grad-CAM++ (Chattopadhyay et al. 2018), pytorch-grad-cam's eq. 19."""
  g2 = grads_BhwC**2
  g3 = g2 * grads_BhwC
  aij = g2 / (2 * g2 + _spatial_sum(acts_BhwC) * g3 + 1e-6)
  aij = jnp.where(grads_BhwC != 0, aij, 0.0)
  w_BC = jnp.sum(jax.nn.relu(grads_BhwC) * aij, axis=(1, 2))
  return weighted(acts_BhwC, w_BC)


def xgradcam(acts_BhwC: Array, grads_BhwC: Array) -> Array:
  """XGrad-CAM (Fu et al. 2020)."""
  w_BC = jnp.sum(grads_BhwC * acts_BhwC / (_spatial_sum(acts_BhwC) + 1e-7),
                 axis=(1, 2))
  return weighted(acts_BhwC, w_BC)


def layercam(acts_BhwC: Array, grads_BhwC: Array) -> Array:
  """LayerCAM (Jiang et al. 2021)."""
  return jnp.sum(jax.nn.relu(grads_BhwC) * acts_BhwC, axis=-1)


def eigencam(acts_BhwC: Array, grads_BhwC: Array | None = None) -> Array:
  """Eigen-CAM (Muhammad & Yeasin 2020): first principal component, signed."""
  del grads_BhwC
  b, h, w, c = acts_BhwC.shape
  x_BNC = jnp.nan_to_num(acts_BhwC.reshape(b, h * w, c))
  x_BNC = x_BNC - jnp.mean(x_BNC, axis=1, keepdims=True)
  _, _, vt_BCC = jnp.linalg.svd(x_BNC, full_matrices=False)
  proj_BN = jnp.einsum('bnc,bc->bn', x_BNC, vt_BCC[:, 0, :])
  flip_B = jnp.abs(proj_BN.min(-1)) > jnp.abs(proj_BN.max(-1))
  proj_BN = jnp.where(flip_B[:, None], -proj_BN, proj_BN)
  return proj_BN.reshape(b, h, w)


def scorecam(acts_BhwC: Array, scores_BCK: Array, targets_B: Array, *,
             all_classes: bool) -> Array:
  """Score-CAM (Wang et al. 2020) from the logits `scores_BCK` of the input
  masked by each channel (`cam._scorecam_logits`): channel weights are the
  softmax over channels of the target logit. Maps (B, h, w), or
  (B, K, h, w) for every class with `all_classes`."""
  w_BCK = jax.nn.softmax(scores_BCK, axis=1)
  if all_classes:
    return jnp.einsum('bhwc,bck->bkhw', acts_BhwC, w_BCK)
  w_BC = jnp.take_along_axis(w_BCK, targets_B[:, None, None], axis=2)
  w_BC = w_BC[..., 0]
  return weighted(acts_BhwC, w_BC)
