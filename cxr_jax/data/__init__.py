"""Datasets: readers, preprocessing, cache and phantom generators.

`build_dataset(cfg)` dispatches on `cfg.name` to the dataset's
`build(cfg) -> {split: {field: array}}`; `default_config(name)` returns that
dataset's default data config.
"""
from __future__ import annotations

from typing import Any

import ml_collections

from cxr_jax.registry import Registry

DATASETS = Registry('dataset', {
    'siim': 'cxr_jax.data.siim:build',
    'egd': 'cxr_jax.data.egd:build',
})
_CONFIGS = Registry('dataset', {
    'siim': 'cxr_jax.data.siim:default_config',
    'egd': 'cxr_jax.data.egd:default_config',
})


def build_dataset(cfg: ml_collections.ConfigDict) -> dict[str, dict[str, Any]]:
  """Builds (or loads from the cache) the dataset that `cfg.name` names."""
  return DATASETS.get(cfg.name, key='data.name')(cfg)


def default_config(name: str) -> ml_collections.ConfigDict:
  """The default data config of dataset `name` (e.g. 'siim', 'egd')."""
  return _CONFIGS.get(name, key='data.name')()
