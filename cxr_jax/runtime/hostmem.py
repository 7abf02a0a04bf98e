"""Host memory for XLA's CPU temporaries: mapped once, reused every step.

XLA's CPU runtime allocates the temporaries of each execution as one large
block (gigabytes for a ViT-B/16 or DenseNet-201 train step at batch 16) and
frees it when the execution ends. By default glibc serves such a block with
a fresh `mmap` and returns it with `munmap`, so on every step the kernel
faults in and zeroes it again: page faults and system time that grow with
the block. Two things send the block to `mmap`, and the fix needs both
halves (either alone changes nothing):

- The execution runs on a thread of the PJRT client's pool, whose glibc
  arena holds at most 64 MiB per heap and maps anything larger whatever the
  tunables say. `configure_jax` turns off JAX's asynchronous CPU dispatch,
  so executions run on the calling thread (Python's main thread), whose
  allocations come from glibc's main arena. Eigen's worker threads, which
  do the arithmetic, keep their own arenas.
- The main arena maps blocks above its mmap threshold (at most 32 MiB) and
  gives its heap back when the top is freed. `tunables()`:
  `glibc.malloc.mmap_max=0` (never map: large blocks come from the heap),
  `glibc.malloc.trim_threshold=64 GiB` (a freed block stays for the next
  step), and, where the kernel grants transparent huge pages on request
  (`/sys/kernel/mm/transparent_hugepage/enabled` set to `madvise` or
  `always`), `glibc.malloc.hugetlb=1` (glibc >= 2.35: the heap on 2 MiB
  pages, fewer TLB misses).

The process keeps its peak heap until it exits (what a training job does
anyway). The effect on CPU step times is measured in `benchmarks/README.md`
(lever "host memory"); accelerator steps are unaffected.

glibc reads its tunables only when a process starts, so `ensure` starts the
interpreter again, once, with the same command line and the tunables added
to `$GLIBC_TUNABLES` (a setting of the same name already there wins). The
restarted process puts `$GLIBC_TUNABLES` back as it was, so the processes
it starts (data-loading workers, tools) run with the user's settings.
Nothing here runs unless asked: `main.py --tune_host_malloc` (off by
default) calls `ensure` first thing and `configure_jax` before JAX starts,
through `cxr_jax.runtime.startup`; the benchmarks turn it on for their JAX
processes. It changes nothing elsewhere than on Linux with glibc.
"""
from __future__ import annotations

import os
import platform
import sys
from typing import Callable, Mapping

KEEP = ('glibc.malloc.mmap_max=0', 'glibc.malloc.trim_threshold=68719476736')
HUGE_PAGES = 'glibc.malloc.hugetlb=1'
# Set in the restarted process: '-' if $GLIBC_TUNABLES was unset before the
# restart, else '=' + its value.
_MARK = '_CXR_JAX_MALLOC_REEXEC'
_THP_ENABLED = '/sys/kernel/mm/transparent_hugepage/enabled'
_started_tuned: bool | None = None  # set by `ensure` in a restarted process


def _thp_on_request() -> bool:
  try:
    with open(_THP_ENABLED) as f:
      mode = f.read()
  except OSError:
    return False
  return '[madvise]' in mode or '[always]' in mode


def _glibc_version() -> tuple[int, ...]:
  lib, version = platform.libc_ver()
  if lib != 'glibc' or not version:
    return ()
  try:
    return tuple(int(p) for p in version.split('.')[:2])
  except ValueError:
    return ()


def tunables() -> tuple[str, ...]:
  """The settings this machine gets: `KEEP`, plus `HUGE_PAGES` where glibc
  and the kernel support it."""
  huge = _glibc_version() >= (2, 35) and _thp_on_request()
  return KEEP + (HUGE_PAGES,) * huge


def _key(item: str) -> str:
  return item.split('=', 1)[0]


def merged_tunables(current: str | None,
                    wanted: tuple[str, ...] | None = None) -> str:
  """`current` $GLIBC_TUNABLES plus each of `wanted` (default `tunables()`)
  whose name it does not set."""
  wanted = tunables() if wanted is None else wanted
  items = [t for t in (current or '').split(':') if t]
  have = {_key(t) for t in items}
  return ':'.join(items + [t for t in wanted if _key(t) not in have])


def keeps_blocks(current: str | None) -> bool:
  """Whether a process started with `current` $GLIBC_TUNABLES keeps large
  blocks in its main arena's heap (`mmap_max=0`)."""
  return KEEP[0] in (current or '').split(':')


def needs_restart(environ: Mapping[str, str] | None = None) -> bool:
  """Whether `ensure` would restart the process (see the module doc)."""
  env = os.environ if environ is None else environ
  if env.get(_MARK):
    return False
  if not sys.platform.startswith('linux') or not _glibc_version():
    return False
  current = env.get('GLIBC_TUNABLES')
  return merged_tunables(current) != (current or '')


def with_tunables(environ: Mapping[str, str]) -> dict[str, str]:
  """A copy of `environ` with `tunables()` added where they would take
  effect (for a child process: the benchmarks' JAX side)."""
  env = dict(environ)
  if needs_restart(env):
    env['GLIBC_TUNABLES'] = merged_tunables(env.get('GLIBC_TUNABLES'))
  return env


def restart_command() -> tuple[str, list[str], dict[str, str]]:
  """(executable, argv, environment) that `ensure` executes."""
  before = os.environ.get('GLIBC_TUNABLES')
  env = with_tunables(os.environ)
  env[_MARK] = '-' if before is None else '=' + before
  argv = list(getattr(sys, 'orig_argv', None) or [sys.executable] + sys.argv)
  argv[0] = sys.executable
  return sys.executable, argv, env


def ensure(execve: Callable[..., None] = os.execve) -> bool:
  """Restarts this process with `tunables()` set, if they are missing and
  would take effect; returns False when nothing was to be done (`execve`
  does not return). In the restarted process, puts $GLIBC_TUNABLES back as
  it was before the restart (glibc has read it by then)."""
  global _started_tuned
  mark = os.environ.get(_MARK)
  if mark:
    _started_tuned = keeps_blocks(os.environ.get('GLIBC_TUNABLES'))
    del os.environ[_MARK]
    if mark == '-':
      os.environ.pop('GLIBC_TUNABLES', None)
    else:
      os.environ['GLIBC_TUNABLES'] = mark[1:]
    return False
  if not needs_restart():
    return False
  sys.stdout.flush()
  sys.stderr.flush()
  execve(*restart_command())
  return True


def configure_jax() -> bool:
  """Runs CPU executions on the calling thread (`jax_cpu_enable_async_
  dispatch=False`), if this process keeps large blocks (restarted by
  `ensure`, or started with `mmap_max=0` in $GLIBC_TUNABLES); call before
  JAX starts its CPU backend. Returns whether it did."""
  tuned = _started_tuned
  if tuned is None:
    tuned = keeps_blocks(os.environ.get('GLIBC_TUNABLES'))
  if tuned:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update('jax_cpu_enable_async_dispatch', False)
  return tuned
