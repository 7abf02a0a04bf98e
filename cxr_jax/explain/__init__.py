"""Explanations: class activation maps and attention rollout.

The package re-exports the public API of `cam` (the CAM engine and method
registry; the per-method formulas are in `cam_methods`) and `rollout`. Its
submodules import one another by full module path (`import
cxr_jax.explain.cam as cam_lib`), never through this package, so none of
them depends on this file having finished importing.
"""
from cxr_jax.explain.cam import (METHODS, CamMethod, compute_cams, get_method,
                                 normalize_maps, upsample_maps)
from cxr_jax.explain.rollout import attention_rollout, rollout_from_attn

__all__ = ['METHODS', 'CamMethod', 'compute_cams', 'get_method',
           'normalize_maps', 'upsample_maps', 'attention_rollout',
           'rollout_from_attn']
