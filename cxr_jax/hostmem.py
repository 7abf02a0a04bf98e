"""Large host allocations on transparent huge pages (glibc's malloc tunable).

XLA's CPU runtime allocates the temporaries of each execution as one block
(a ViT-B/16 train step at batch 16: 3.1 GB; DenseNet-201: 3.2 GB) and frees
it when the execution ends. glibc serves such a block with a fresh `mmap`
and returns it with `munmap`, so on every step the kernel faults in and
zeroes it again 4 KiB at a time: about 800,000 page faults and 1.3 s of
system time per step on the 2-core VM, where the whole step takes 3.5 s
(DenseNet-201) to 7 s (ViT-B/16) (`benchmarks/README.md`, lever 14).

With glibc's tunable `glibc.malloc.hugetlb=1` (glibc >= 2.35), malloc
advises the kernel to back such mappings with transparent huge pages when
the system allows them on request (`/sys/kernel/mm/transparent_hugepage/
enabled` set to `madvise` or `always`): faults come 2 MiB at a time, about
2,000 per step (DenseNet-201 step 3.48 -> 3.06 s, ViT-B/16 7.05 -> 6.69 s,
ResNet-50 2.44 -> 2.33 s). Keeping the freed memory instead (one arena, no
`mmap`, no trimming) removed the faults but made the steps slower.

glibc reads its tunables only when a process starts, so `ensure` starts the
interpreter again, once, with the same command line and the tunable added
to `$GLIBC_TUNABLES` (a `glibc.malloc.hugetlb` setting already there wins).
`main.py` calls it first thing (`--nohugepage_malloc` or
`CXR_JAX_HUGEPAGE_MALLOC=0` turn it off); it changes nothing elsewhere than
on Linux with glibc >= 2.35 and transparent huge pages available.
"""
from __future__ import annotations

import os
import platform
import sys
from typing import Callable, Mapping

TUNABLE = 'glibc.malloc.hugetlb=1'
OPT_OUT = 'CXR_JAX_HUGEPAGE_MALLOC'  # '0' = leave the allocator alone
_MARK = '_CXR_JAX_HUGEPAGE_REEXEC'  # set in the restarted process
_THP_ENABLED = '/sys/kernel/mm/transparent_hugepage/enabled'


def merged_tunables(current: str | None) -> str:
  """`current` $GLIBC_TUNABLES plus `TUNABLE`, unless it sets hugetlb."""
  items = [t for t in (current or '').split(':') if t]
  if any(t.split('=', 1)[0] == 'glibc.malloc.hugetlb' for t in items):
    return ':'.join(items)
  return ':'.join(items + [TUNABLE])


def _glibc_supports_hugetlb() -> bool:
  lib, version = platform.libc_ver()
  if lib != 'glibc' or not version:
    return False
  try:
    return tuple(int(p) for p in version.split('.')[:2]) >= (2, 35)
  except ValueError:
    return False


def _thp_on_request() -> bool:
  try:
    with open(_THP_ENABLED) as f:
      mode = f.read()
  except OSError:
    return False
  return '[madvise]' in mode or '[always]' in mode


def needs_restart(environ: Mapping[str, str] | None = None) -> bool:
  """Whether `ensure` would restart the process (see the module doc)."""
  env = os.environ if environ is None else environ
  if env.get(_MARK) or env.get(OPT_OUT, '1') == '0':
    return False
  if not sys.platform.startswith('linux'):
    return False
  current = env.get('GLIBC_TUNABLES')
  if merged_tunables(current) == (current or ''):
    return False  # already set, by us or by the user
  return _glibc_supports_hugetlb() and _thp_on_request()


def with_tunable(environ: Mapping[str, str]) -> dict[str, str]:
  """A copy of `environ` with `TUNABLE` added where it would take effect
  (for a child process: the benchmarks' JAX side)."""
  env = dict(environ)
  if needs_restart(env):
    env['GLIBC_TUNABLES'] = merged_tunables(env.get('GLIBC_TUNABLES'))
  return env


def restart_command() -> tuple[str, list[str], dict[str, str]]:
  """(executable, argv, environment) that `ensure` executes."""
  env = with_tunable(os.environ)
  env[_MARK] = '1'
  argv = list(getattr(sys, 'orig_argv', None) or [sys.executable] + sys.argv)
  argv[0] = sys.executable
  return sys.executable, argv, env


def ensure(execve: Callable[..., None] = os.execve) -> bool:
  """Restarts this process with `TUNABLE` set, if it is missing and would
  take effect; returns False when nothing was to be done (`execve` does not
  return)."""
  if not needs_restart():
    return False
  sys.stdout.flush()
  sys.stderr.flush()
  execve(*restart_command())
  return True
