"""Explanations: class activation maps and attention rollout."""
from cxr_jax.explain.cam import (METHODS, CamMethod, compute_cams, get_method,
                                 normalize_maps, upsample_maps)
from cxr_jax.explain.rollout import attention_rollout, rollout_from_attn

__all__ = ['METHODS', 'CamMethod', 'compute_cams', 'get_method',
           'normalize_maps', 'upsample_maps', 'attention_rollout',
           'rollout_from_attn']
