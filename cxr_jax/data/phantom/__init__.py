"""Phantom generators that write synthetic studies in the real file formats.

`write(dataset, out_dir, num, seed, size)` dispatches to
`cxr_jax.data.phantom.siim:write_siim` or `cxr_jax.data.phantom.gaze:write_gaze`
(imported lazily). CLI: `python -m cxr_jax.data.phantom --dataset=siim ...`.
"""
from __future__ import annotations

from cxr_jax.registry import Registry

WRITERS = Registry('phantom dataset', {
    'siim': 'cxr_jax.data.phantom.siim:write_siim',
    'gaze': 'cxr_jax.data.phantom.gaze:write_gaze',
})


def write(dataset: str, out_dir: str, num: int, seed: int, size: int) -> None:
  """Writes `num` phantom studies of `dataset` at `size` px into out_dir."""
  WRITERS.get(dataset, key='--dataset')(out_dir, num, seed, size)
