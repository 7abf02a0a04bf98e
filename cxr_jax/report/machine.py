"""The machine a report was computed on, written beside its tables.

Float rounding in XLA's CPU kernels depends on the instruction set they were
compiled for (AVX2, AVX-512, ...), so the same run on another CPU model can
end in other digits, and a tiny demo can amplify them. Every report records
where it ran: `describe()` gives the CPU model and flags (`/proc/cpuinfo`,
else `lscpu`), the OS platform, Python, jax/jaxlib versions and the
accelerator devices; `write(out_dir)` stores it as `machine.json`;
`markdown(info)` is the line a report's Settings section shows.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from typing import Any

import jax
import jaxlib

CPUINFO = '/proc/cpuinfo'
# Instruction-set flags that decide which CPU kernels XLA runs (shown in the
# report; machine.json keeps every flag).
ISA_PREFIXES = ('sse4', 'avx', 'fma', 'amx', 'f16c', 'neon', 'asimd', 'sve')


def _cpuinfo(text: str) -> tuple[str, list[str]]:
  """(model name, flags) from /proc/cpuinfo's first processor (x86 or Arm
  field names)."""
  model, flags = '', []
  for line in text.splitlines():
    key, _, value = line.partition(':')
    key = key.strip().lower()
    if not model and key in ('model name', 'cpu model', 'hardware'):
      model = value.strip()
    elif not flags and key in ('flags', 'features'):
      flags = value.split()
  return model, flags


def _lscpu() -> tuple[str, list[str]]:
  if shutil.which('lscpu') is None:
    return '', []
  try:
    text = subprocess.run(['lscpu'], capture_output=True, text=True,
                          timeout=10, check=True).stdout
  except (OSError, subprocess.SubprocessError):
    return '', []
  fields = {k.strip().lower(): v.strip() for k, _, v in
            (line.partition(':') for line in text.splitlines())}
  return fields.get('model name', ''), fields.get('flags', '').split()


def cpu() -> dict[str, Any]:
  """{'model': CPU model name, 'flags': [...], 'source': where from}."""
  model, flags, source = '', [], ''
  if os.path.exists(CPUINFO):
    with open(CPUINFO) as f:
      model, flags = _cpuinfo(f.read())
    source = CPUINFO
  if not (model and flags):
    model, flags = _lscpu()
    source = 'lscpu' if model or flags else 'unavailable'
  return dict(model=model or platform.processor() or 'unknown',
              flags=sorted(set(flags)), source=source,
              count=os.cpu_count())


def describe() -> dict[str, Any]:
  """The machine: CPU, platform, versions, devices and process count."""
  devices = jax.devices()
  return dict(
      cpu=cpu(), platform=platform.platform(),
      python=platform.python_version(), jax=jax.__version__,
      jaxlib=jaxlib.__version__, backend=jax.default_backend(),
      devices=sorted({d.device_kind for d in devices}),
      device_count=len(devices), process_count=jax.process_count(),
      xla_flags=os.environ.get('XLA_FLAGS', ''))


def isa_flags(info: dict[str, Any]) -> list[str]:
  """The instruction-set flags among `info`'s CPU flags."""
  return [f for f in info['cpu']['flags'] if f.startswith(ISA_PREFIXES)]


def markdown(info: dict[str, Any]) -> str:
  """One Settings bullet naming the machine (all flags: machine.json)."""
  c = info['cpu']
  xla = info['xla_flags'] or 'none'
  return (f'- Machine: {c["model"]} ({c["count"]} CPUs; ISA flags '
          f'{" ".join(isa_flags(info)) or "unknown"}; every flag in '
          f'[machine.json](machine.json)), {info["platform"]}, Python '
          f'{info["python"]}, jax {info["jax"]} / jaxlib {info["jaxlib"]}, '
          f'{info["device_count"]} {info["backend"]} device(s) '
          f'({", ".join(info["devices"])}), {info["process_count"]} '
          f'process(es); XLA_FLAGS: `{xla}`.')


def write(out_dir: str) -> dict[str, Any]:
  """Writes `out_dir/machine.json`; returns what it wrote."""
  info = describe()
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'machine.json'), 'w') as f:
    json.dump(info, f, indent=2)
  return info
