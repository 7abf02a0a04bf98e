"""XLA flags this project sets by default, in one place.

XLA's CPU backend hands dots, reductions and convolutions to its YNNPACK
library. YNNPACK's convolution weight gradients are much slower than the
forward convolution of the same FLOPs, and its GEMMs slower than XLA's Eigen
kernels for the ViT's shapes, so `CPU_XLA_FLAGS` keeps YNNPACK for
reductions only (the train-step times behind this choice are in
`benchmarks/README.md`, lever "XLA CPU flags"). `main.py` (through
`cxr_jax.runtime.startup`) and `benchmarks/run.py` add `CPU_XLA_FLAGS` to
`XLA_FLAGS` before JAX starts its backend; it has no effect on GPU/TPU
computations, and a flag the user already set wins.
"""
from __future__ import annotations

import os

CPU_XLA_FLAGS = ('--xla_cpu_experimental_ynn_fusion_type='
                 'LIBRARY_FUSION_TYPE_REDUCE')


def merge(current: str, extra: str) -> str:
  """`current` XLA_FLAGS plus each flag of `extra` that it does not set."""
  have = {f.split('=', 1)[0] for f in current.split()}
  add = [f for f in extra.split() if f.split('=', 1)[0] not in have]
  return ' '.join([current] * bool(current.strip()) + add)


def apply(extra: str = CPU_XLA_FLAGS) -> str:
  """Adds `extra` to $XLA_FLAGS (call before the first JAX computation)."""
  os.environ['XLA_FLAGS'] = merge(os.environ.get('XLA_FLAGS', ''), extra)
  return os.environ['XLA_FLAGS']
