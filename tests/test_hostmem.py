"""cxr_jax.hostmem: the glibc huge-page tunable and the one-time restart."""
import os
import subprocess
import sys
import textwrap

import pytest

from cxr_jax import hostmem

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _clean_env(**extra):
  env = {k: v for k, v in os.environ.items()
         if k not in ('GLIBC_TUNABLES', hostmem.OPT_OUT, hostmem._MARK)}  # pylint: disable=protected-access
  env.update(extra)
  return env


applies_here = pytest.mark.skipif(
    not hostmem.needs_restart(_clean_env()),
    reason='needs Linux, glibc >= 2.35 and transparent huge pages on request')


def test_merged_tunables_adds_once_and_keeps_the_users_choice():
  assert hostmem.merged_tunables(None) == hostmem.TUNABLE
  assert hostmem.merged_tunables('') == hostmem.TUNABLE
  assert (hostmem.merged_tunables('glibc.malloc.arena_max=2') ==
          'glibc.malloc.arena_max=2:' + hostmem.TUNABLE)
  once = hostmem.merged_tunables('glibc.malloc.arena_max=2')
  assert hostmem.merged_tunables(once) == once
  mine = 'glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2'
  assert hostmem.merged_tunables(mine) == mine


def test_no_restart_when_opted_out_marked_or_already_set():
  assert not hostmem.needs_restart(_clean_env(**{hostmem.OPT_OUT: '0'}))
  assert not hostmem.needs_restart(_clean_env(**{hostmem._MARK: '1'}))  # pylint: disable=protected-access
  assert not hostmem.needs_restart(
      _clean_env(GLIBC_TUNABLES='glibc.malloc.hugetlb=0'))
  assert not hostmem.needs_restart(
      _clean_env(GLIBC_TUNABLES=hostmem.TUNABLE))


@applies_here
def test_ensure_execs_the_same_command_with_the_tunable(monkeypatch):
  for k in ('GLIBC_TUNABLES', hostmem.OPT_OUT, hostmem._MARK):  # pylint: disable=protected-access
    monkeypatch.delenv(k, raising=False)
  monkeypatch.setenv('GLIBC_TUNABLES', 'glibc.malloc.arena_max=4')
  calls = []
  assert hostmem.ensure(execve=lambda *a: calls.append(a))
  (exe, argv, env), = calls
  assert exe == sys.executable and argv[0] == sys.executable
  assert argv[1:] == (sys.orig_argv[1:])
  assert env['GLIBC_TUNABLES'] == 'glibc.malloc.arena_max=4:' + hostmem.TUNABLE
  assert env[hostmem._MARK] == '1'  # pylint: disable=protected-access
  monkeypatch.setenv(hostmem._MARK, '1')  # pylint: disable=protected-access
  assert not hostmem.ensure(execve=lambda *a: calls.append(a))
  assert len(calls) == 1


@applies_here
def test_restarted_process_runs_once_with_the_tunable():
  code = textwrap.dedent("""
      import os, sys
      print('start', os.environ.get('GLIBC_TUNABLES'), flush=True)
      from cxr_jax import hostmem
      hostmem.ensure()
      print('after', os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])
  """)
  out = subprocess.run([sys.executable, '-c', code, 'x', '--y=1'],
                       capture_output=True, text=True, check=True, cwd=_ROOT,
                       env=_clean_env(PYTHONPATH=_ROOT)).stdout.splitlines()
  assert out == ['start None', f'start {hostmem.TUNABLE}',
                 f"after {hostmem.TUNABLE} ['x', '--y=1']"]


_FAULTS = textwrap.dedent("""
    import ctypes, resource
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    n = 256 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(ctypes.c_size_t(n))
    ctypes.memset(p, 1, n)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


@applies_here
def test_tunable_backs_large_mallocs_with_huge_pages():
  """The property the restart is for: touching a fresh 256 MiB malloc takes
  one fault per 4 KiB page without the tunable, and far fewer with it."""
  def faults(env):
    return int(subprocess.run([sys.executable, '-c', _FAULTS],
                              capture_output=True, text=True, check=True,
                              env=env).stdout)
  pages = (256 << 20) // 4096
  assert faults(_clean_env()) > 0.9 * pages
  # (fewer than half: the kernel may fall back to small pages when its
  # memory is fragmented; here it took ~1 fault per 2 MiB)
  assert faults(_clean_env(GLIBC_TUNABLES=hostmem.TUNABLE)) < 0.5 * pages


@applies_here
def test_benchmark_processes_get_the_tunable_per_side(monkeypatch):
  from benchmarks import isolated  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv('GLIBC_TUNABLES', raising=False)
  monkeypatch.delenv(hostmem._MARK, raising=False)  # pylint: disable=protected-access
  monkeypatch.delenv(hostmem.OPT_OUT, raising=False)
  monkeypatch.setattr(isolated, 'HUGEPAGE_MALLOC', {'jax': True,
                                                    'torch': False})
  assert isolated.side_env('jax')['GLIBC_TUNABLES'] == hostmem.TUNABLE
  assert 'GLIBC_TUNABLES' not in isolated.side_env('torch')
  monkeypatch.setenv('GLIBC_TUNABLES', 'glibc.malloc.hugetlb=0')
  assert isolated.side_env('jax')['GLIBC_TUNABLES'] == 'glibc.malloc.hugetlb=0'
