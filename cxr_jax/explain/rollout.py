"""Attention rollout (Abnar & Zuidema 2020) for ViT-style models.

The ViT module, built with `return_attn=True`, returns the attention
probabilities of each block in `out['attn']`: a list of (B, heads, N, N) with
the class token first. Per layer the heads are fused ('mean' | 'max' | 'min'),
optionally the weakest `discard_ratio` of the entries of each row-set are set
to zero (never the class-to-class entry; as in jacobgil/vit-explain), the
residual is modelled as 0.5 * A + 0.5 * I, rows are renormalised to sum 1 and
the layers are multiplied (first layer on the right). The class-token row
over the patch tokens, reshaped to the patch grid, is the map; it is then
upsampled and scaled exactly like the CAMs in `cam.py`.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

import cxr_jax.explain.cam as cam_lib

HEAD_FUSIONS = ('mean', 'max', 'min')


def rollout_from_attn(attn: Sequence[jax.Array], *, head_fusion: str = 'mean',
                      discard_ratio: float = 0.0, num_prefix_tokens: int = 1,
                      grid_hw: tuple[int, int] | None = None) -> jax.Array:
  """Rollout map (B, h, w) from per-layer attention (B, heads, N, N)."""
  if head_fusion not in HEAD_FUSIONS:
    raise ValueError(f'head_fusion must be one of {HEAD_FUSIONS}, got '
                     f'{head_fusion!r}.')
  if not 0.0 <= discard_ratio < 1.0:
    raise ValueError(f'discard_ratio must be in [0, 1), got {discard_ratio}.')
  b, _, n, _ = attn[0].shape
  result_BNN = jnp.broadcast_to(jnp.eye(n, dtype=jnp.float32), (b, n, n))
  for a_BHNN in attn:
    a_BHNN = a_BHNN.astype(jnp.float32)
    fused_BNN = getattr(jnp, head_fusion)(a_BHNN, axis=1)
    if discard_ratio > 0:
      flat_BM = fused_BNN.reshape(b, n * n)
      k = int(n * n * discard_ratio)
      if k > 0:
        thresh_B = jnp.sort(flat_BM, axis=-1)[:, k - 1]
        drop = flat_BM <= thresh_B[:, None]
        drop = drop.at[:, 0].set(False)
        flat_BM = jnp.where(drop, 0.0, flat_BM)
      fused_BNN = flat_BM.reshape(b, n, n)
    a_BNN = 0.5 * fused_BNN + 0.5 * jnp.eye(n, dtype=jnp.float32)[None]
    a_BNN = a_BNN / jnp.sum(a_BNN, axis=-1, keepdims=True)
    result_BNN = jnp.einsum('bij,bjk->bik', a_BNN, result_BNN)
  row_BP = result_BNN[:, 0, num_prefix_tokens:]
  p = row_BP.shape[-1]
  if grid_hw is None:
    side = int(round(math.sqrt(p)))
    if side * side != p:
      raise ValueError(f'{p} patch tokens are not a square grid; pass grid_hw.')
    grid_hw = (side, side)
  return row_BP.reshape(b, *grid_hw)


@functools.partial(jax.jit, static_argnames=(
    'model', 'head_fusion', 'discard_ratio', 'num_prefix_tokens', 'grid_hw',
    'upsample', 'normalize'))
def _rollout(model, variables, images_BHWC, model_kwargs, *, head_fusion,
             discard_ratio, num_prefix_tokens, grid_hw, upsample, normalize):
  model = cam_lib.unwrap_model(model)
  base = {k: v for k, v in variables.items() if k != 'perturbations'}
  logits, out = model.apply(base, images_BHWC, train=False, **model_kwargs)
  if 'attn' not in out:
    raise ValueError("The model's `out` has no 'attn'; build the ViT with "
                     'return_attn=True.')
  raw = rollout_from_attn(out['attn'], head_fusion=head_fusion,
                          discard_ratio=discard_ratio,
                          num_prefix_tokens=num_prefix_tokens, grid_hw=grid_hw)
  cam = (cam_lib.upsample_maps(raw, images_BHWC.shape[1:3]) if upsample
         else raw)
  if normalize:
    cam = cam_lib.normalize_maps(cam)
  return dict(cam=cam, raw=raw, logits=logits)


def attention_rollout(model: nn.Module, variables: Mapping[str, Any],
                      images_BHWC: Any, *, head_fusion: str = 'mean',
                      discard_ratio: float = 0.0, num_prefix_tokens: int = 1,
                      grid_hw: tuple[int, int] | None = None,
                      upsample: bool = True, normalize: bool = True,
                      model_kwargs: Mapping[str, Any] | None = None
                      ) -> dict[str, jax.Array]:
  """Attention rollout maps for a batch (class-agnostic).

  Returns dict with 'cam' (B, H, W) in [0, 1] (bilinear upsampling, then
  (x - min) / max(x - min), as `compute_cams`), 'raw' (B, h, w) the
  class-token rollout row on the patch grid, and 'logits' (B, K).
  """
  return _rollout(cam_lib.hashable_model(model), variables,
                  jnp.asarray(images_BHWC),
                  dict(model_kwargs or {}), head_fusion=head_fusion,
                  discard_ratio=float(discard_ratio),
                  num_prefix_tokens=num_prefix_tokens,
                  grid_hw=None if grid_hw is None else tuple(grid_hw),
                  upsample=upsample, normalize=normalize)
