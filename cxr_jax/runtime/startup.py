"""Process set-up that must happen before JAX starts its backend.

`start` applies, in order: the optional glibc malloc tunables (`hostmem`,
which may restart the process once), the quieter library logging, the CPU
XLA flags (`xla_flags`), the persistent compilation cache and the
multi-process runtime (`distributed`). `main.py` calls it with its flag
values; any other program that trains through `cxr_jax.jobs` can call it
the same way.
"""
from __future__ import annotations

import logging as std_logging
import os

import jax
from absl import logging

from cxr_jax.data import cache
from cxr_jax.runtime import distributed
from cxr_jax.runtime import hostmem
from cxr_jax.runtime import xla_flags


class _QuietLibraries(std_logging.Filter):
  """Drops orbax's per-save INFO chatter; warnings and errors still show."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or (
        'orbax' not in record.pathname)


def compilation_cache_dir(requested: str | None) -> str:
  """The persistent XLA cache folder: `requested`, else
  $JAX_COMPILATION_CACHE_DIR, else `<data cache>/xla`; '' = none."""
  if requested is not None:
    return requested
  return os.environ.get('JAX_COMPILATION_CACHE_DIR') or os.path.join(
      cache.default_cache_dir(), 'xla')


def start(*, tune_host_malloc: bool = False,
          cpu_xla_flags: str = xla_flags.CPU_XLA_FLAGS,
          compilation_cache: str | None = None,
          distributed_settings: distributed.Settings = distributed.Settings()
          ) -> None:
  """Prepares this process for training; call before any JAX computation.

  Args:
    tune_host_malloc: restart once with `hostmem`'s malloc tunables and run
      CPU executions on the calling thread (faster CPU steps; see
      `cxr_jax/runtime/hostmem.py`).
    cpu_xla_flags: added to $XLA_FLAGS (a flag already there wins).
    compilation_cache: see `compilation_cache_dir`.
    distributed_settings: how this process joins the others.
  """
  if tune_host_malloc:
    hostmem.ensure()  # first: restarts the process at most once
    hostmem.configure_jax()
  logging.get_absl_handler().addFilter(_QuietLibraries())
  xla_flags.apply(cpu_xla_flags)
  cache_dir = compilation_cache_dir(compilation_cache)
  if cache_dir:
    jax.config.update('jax_compilation_cache_dir', cache_dir)
  distributed.initialize(distributed_settings)
