"""FLOP counts, a measured matmul peak and published accelerator peaks.

FLOPs of a train step come from XLA's cost model of the *lowered* step
(`jax.jit(step).lower(...).cost_analysis()['flops']`, the program as traced,
before backend optimisation; a multiply-add counts 2 FLOPs): forward,
backward, BatchNorm statistics, loss and optimizer, the same count on every
backend. The compiled executable's count (`compiled_flops`) is kept too but
not used: on GPU, convolutions become cuDNN custom calls that XLA's cost
model does not count (resnet50: 37 GFLOP/step compiled vs ~3 TFLOP traced at
batch 128). Achieved FLOP/s = traced FLOPs / median step time. Where the
backend has no cost model for the lowered program (jax 0.11 on GPU returned
none), `jaxpr_flops` counts the step's matrix products and convolutions
from its jaxpr instead (2 FLOPs per multiply-add; elementwise work, a few
per cent of a CNN's or ViT's step, is left out, as MFU usually does).

Utilisation is reported against two references:
* `matmul_peak`: a large square jnp matmul on the same device, same dtype,
  timed in the same run (what the machine delivers during it, load
  included);
* `published_peak`: the vendor's dense peak for the detected accelerator
  (None on CPU), i.e. MFU in the usual sense.
"""
from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core

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


def _dot_flops(eqn) -> float:
  lhs = eqn.invars[0].aval.shape
  (contract, _), _ = eqn.params['dimension_numbers']
  k = 1
  for d in contract:
    k *= lhs[d]
  out = eqn.outvars[0].aval.shape
  return 2.0 * float(_prod(out)) * k


def _conv_flops(eqn) -> float:
  rhs = eqn.invars[1].aval.shape
  dn = eqn.params['dimension_numbers']
  rhs_spec = dn.rhs_spec  # (out feature, in feature, *spatial) positions
  per_output = rhs[rhs_spec[1]] * _prod([rhs[d] for d in rhs_spec[2:]])
  # A strided convolution's input gradient dilates its input with zeros:
  # only 1 / prod(lhs_dilation) of the window positions are real products.
  holes = _prod(eqn.params.get('lhs_dilation') or (1,))
  return 2.0 * float(_prod(eqn.outvars[0].aval.shape)) * per_output / holes


def _fused_attention_flops(eqn, backward: bool) -> float:
  """cuDNN's fused attention (`jax.nn.dot_product_attention(implementation=
  'cudnn')`): Q K^T and P V forward (2 products), dV, dP, dQ, dK backward
  (4; the kernel's recomputation of P is not counted, as model FLOPs go)."""
  q, k = (v.aval.shape for v in eqn.invars[:2])
  bnth = 'BNTH' in str(eqn.params.get('layout', ''))
  b, heads, tq, dim = ((q[0], q[1], q[2], q[3]) if bnth else
                       (q[0], q[2], q[1], q[3]))
  tk = k[2] if bnth else k[1]
  return (4 if backward else 2) * 2.0 * b * heads * tq * tk * dim


def _prod(xs) -> int:
  n = 1
  for x in xs:
    n *= int(x)
  return n


def _sub_jaxprs(params: dict[str, Any]):
  for v in params.values():
    for item in (v if isinstance(v, (list, tuple)) else (v,)):
      if isinstance(item, jex_core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jex_core.Jaxpr):
        yield item


def _count(jaxpr) -> float:
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'dot_general':
      total += _dot_flops(eqn)
    elif name == 'conv_general_dilated':
      total += _conv_flops(eqn)
    elif name in ('dot_product_attention_fwd_wrapper',
                  'dot_product_attention_bwd_wrapper'):
      total += _fused_attention_flops(eqn, backward=name.endswith('bwd_wrapper'))
    elif name == 'cond':  # one branch runs: count the costliest
      total += max((_count(b.jaxpr) for b in eqn.params['branches']),
                   default=0.0)
    else:
      sub = sum(_count(j) for j in _sub_jaxprs(eqn.params))
      if name == 'scan':
        sub *= eqn.params['length']
      total += sub
  return total


def jaxpr_flops(fn, *args) -> float:
  """FLOPs of `fn(*args)`'s matrix products, convolutions and cuDNN fused
  attentions (2 per multiply-add), counted on its jaxpr: backend-independent, a `scan` body
  times its length, a `while` body once, the costliest `cond` branch."""
  return _count(jax.make_jaxpr(fn)(*args).jaxpr)


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
