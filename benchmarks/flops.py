"""FLOP counts, a measured matmul peak and published accelerator peaks.

FLOPs of a train step come from XLA's cost model of the *lowered* step
(`jax.jit(step).lower(...).cost_analysis()['flops']`, the program as traced,
before backend optimisation; a multiply-add counts 2 FLOPs): forward,
backward, BatchNorm statistics, loss and optimizer, the same count on every
backend. The compiled executable's count (`compiled_flops`) is kept too but
not used: on GPU, convolutions become cuDNN custom calls that XLA's cost
model does not count (resnet50: 37 GFLOP/step compiled vs ~3 TFLOP traced at
batch 128). Achieved FLOP/s = traced FLOPs / median step time.

Utilisation is reported against two references:
* `matmul_peak`: a large square jnp matmul on the same device, same dtype,
  timed in the same run (what the machine delivers now, load included);
* `published_peak`: the vendor's dense peak for the detected accelerator
  (None on CPU), i.e. MFU in the usual sense.
"""
from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp

# Dense (no sparsity) peaks, FLOP/s, SXM parts. float32 = plain FP32 (no
# TF32): XLA on GPU may run fp32 dots on TF32 tensor cores (default matmul
# precision), so fp32 "MFU" above 100% means TF32 was used.
PUBLISHED_PEAKS = {
    'H200': {'bfloat16': 989e12, 'float32': 67e12},
    'H100': {'bfloat16': 989e12, 'float32': 67e12},
    'A100': {'bfloat16': 312e12, 'float32': 19.5e12},
}


def compiled_flops(compiled: Any) -> float | None:
  """XLA's FLOP count of a `Lowered` or `Compiled` (None if unavailable)."""
  try:
    ca = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # backend without a model
    return None
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else {}
  flops = (ca or {}).get('flops')
  return float(flops) if flops and flops > 0 else None


def matmul_peak(n: int = 2048, dtype: Any = jnp.float32, reps: int = 10
                ) -> dict[str, float]:
  """Median FLOP/s of an (n, n) @ (n, n) jnp matmul on the default device."""
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (n, n), dtype)
  b = jax.random.normal(kb, (n, n), dtype)
  f = jax.jit(jnp.matmul)
  f(a, b).block_until_ready()
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - t)
  sec = statistics.median(times)
  return dict(n=n, dtype=jnp.dtype(dtype).name, median_s=sec,
              flops_per_s=2.0 * n**3 / sec)


def device_name() -> str:
  """The default device's kind, e.g. 'NVIDIA H200' or 'cpu'."""
  d = jax.devices()[0]
  return d.device_kind if d.platform != 'cpu' else 'cpu'


def published_peak(kind: str, dtype: str) -> float | None:
  """Vendor dense peak FLOP/s for a device kind string, or None."""
  for card, peaks in PUBLISHED_PEAKS.items():
    if card.lower() in kind.lower():
      return peaks.get(jnp.dtype(dtype).name)
  return None


def utilisation(flops: float | None, seconds: float,
                peak: float | None) -> float | None:
  """Achieved / peak in percent (None when either is unknown)."""
  if not flops or not peak or seconds <= 0:
    return None
  return 100.0 * flops / seconds / peak
