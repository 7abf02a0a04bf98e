"""Datasets: readers, preprocessing, cache and phantom generators.

Each dataset is a module of this package with `build(cfg) -> {split:
{field: array}}` and `default_config()`; `DATASETS` maps the names a config
uses (`data.name`) to those modules, imported on first use so that building
one dataset never imports the others.
"""
from __future__ import annotations

import importlib
import types
from typing import Any

import ml_collections

from cxr_jax.registry import check_choice

DATASETS = {'siim': 'cxr_jax.data.siim', 'egd': 'cxr_jax.data.egd'}


def dataset_module(name: str) -> types.ModuleType:
  """The module of dataset `name`; an unknown name is an error that names
  `data.name` and lists the known ones."""
  check_choice(name, sorted(DATASETS), 'data.name')
  return importlib.import_module(DATASETS[name])


def build_dataset(cfg: ml_collections.ConfigDict) -> dict[str, dict[str, Any]]:
  """Builds (or loads from the cache) the dataset that `cfg.name` names."""
  return dataset_module(cfg.name).build(cfg)


def default_config(name: str) -> ml_collections.ConfigDict:
  """The default data config of dataset `name` (e.g. 'siim', 'egd')."""
  return dataset_module(name).default_config()
