"""Metrics: classification, heatmap-vs-mask, saliency, faithfulness, stats.

Import the submodules directly, e.g. `from cxr_jax.metrics import heatmap`.
"""
