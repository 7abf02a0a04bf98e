"""cxr_jax.runtime.hostmem: the glibc malloc tunables, the one-time restart and the
inline CPU dispatch that together keep XLA's temporaries mapped."""
import os
import subprocess
import sys
import textwrap

import pytest

from cxr_jax.runtime import hostmem

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_KEEP = ':'.join(hostmem.KEEP)


def _clean_env(**extra):
  env = {k: v for k, v in os.environ.items()
         if k not in ('GLIBC_TUNABLES', hostmem._MARK)}  # pylint: disable=protected-access
  env.update(extra)
  return env


applies_here = pytest.mark.skipif(
    not hostmem.needs_restart(_clean_env()),
    reason='needs Linux with glibc')


def test_merged_tunables_adds_each_once_and_keeps_the_users_choice():
  wanted = ('glibc.malloc.mmap_max=0', 'glibc.malloc.hugetlb=1')
  assert hostmem.merged_tunables(None, wanted) == ':'.join(wanted)
  assert hostmem.merged_tunables('', wanted) == ':'.join(wanted)
  once = hostmem.merged_tunables('glibc.malloc.arena_max=2', wanted)
  assert once == 'glibc.malloc.arena_max=2:' + ':'.join(wanted)
  assert hostmem.merged_tunables(once, wanted) == once
  mine = 'glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2'
  assert (hostmem.merged_tunables(mine, wanted) ==
          mine + ':glibc.malloc.mmap_max=0')
  assert hostmem.tunables()[:2] == hostmem.KEEP


def test_keeps_blocks_reads_mmap_max():
  assert hostmem.keeps_blocks(_KEEP)
  assert hostmem.keeps_blocks('glibc.malloc.hugetlb=1:' + _KEEP)
  assert not hostmem.keeps_blocks('glibc.malloc.mmap_max=10')
  assert not hostmem.keeps_blocks(None)


def test_no_restart_when_marked_or_already_set():
  assert not hostmem.needs_restart(_clean_env(**{hostmem._MARK: '-'}))  # pylint: disable=protected-access
  assert not hostmem.needs_restart(
      _clean_env(GLIBC_TUNABLES=':'.join(hostmem.tunables())))


@applies_here
def test_ensure_execs_the_same_command_with_the_tunables(monkeypatch):
  for k in ('GLIBC_TUNABLES', hostmem._MARK):  # pylint: disable=protected-access
    monkeypatch.delenv(k, raising=False)
  monkeypatch.setenv('GLIBC_TUNABLES', 'glibc.malloc.arena_max=4')
  calls = []
  assert hostmem.ensure(execve=lambda *a: calls.append(a))
  (exe, argv, env), = calls
  assert exe == sys.executable and argv[0] == sys.executable
  assert argv[1:] == (sys.orig_argv[1:])
  assert env['GLIBC_TUNABLES'] == ':'.join(
      ('glibc.malloc.arena_max=4',) + hostmem.tunables())
  assert env[hostmem._MARK] == '=glibc.malloc.arena_max=4'  # pylint: disable=protected-access


_RESTART = textwrap.dedent("""
    import os, sys
    print('start', os.environ.get('GLIBC_TUNABLES'), flush=True)
    from cxr_jax.runtime import hostmem
    hostmem.ensure()
    print('after', os.environ.get('GLIBC_TUNABLES'), sys.argv[1:],
          hostmem.configure_jax())
    import jax
    print(jax.config.values['jax_cpu_enable_async_dispatch'])
""")


@applies_here
@pytest.mark.parametrize('before', [None, 'glibc.malloc.arena_max=4'])
def test_restarted_process_runs_once_and_restores_the_environment(before):
  env = _clean_env(PYTHONPATH=_ROOT)
  if before is not None:
    env['GLIBC_TUNABLES'] = before
  out = subprocess.run([sys.executable, '-c', _RESTART, 'x', '--y=1'],
                       capture_output=True, text=True, check=True, cwd=_ROOT,
                       env=env).stdout.splitlines()
  tuned = hostmem.merged_tunables(before)
  # Child processes (data workers) see the user's settings again; this
  # process keeps glibc's, and runs CPU executions inline.
  assert out == [f'start {before}', f'start {tuned}',
                 f"after {before} ['x', '--y=1'] True", 'False']


_REUSE = textwrap.dedent("""
    import resource, sys
    from cxr_jax.runtime import hostmem
    if sys.argv[1] == 'tuned':
      hostmem.ensure()
      hostmem.configure_jax()
    import jax, jax.numpy as jnp
    jax.config.update('jax_platforms', 'cpu')
    x = jnp.ones((1 << 19, 64), jnp.float32)
    w = jnp.eye(64, dtype=jnp.float32)
    f = jax.jit(lambda x, w: (lambda y: y.T @ y)(jnp.tanh(x @ w)))
    for _ in range(3):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      f(x, w).block_until_ready()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


@applies_here
def test_xla_temporaries_stay_mapped_between_executions():
  """The property the module is for: a jitted function with a 128 MiB
  temporary faults it in afresh on every call by default (32,768 pages of
  4 KiB), and not again after the first calls with the tunables and inline
  dispatch."""
  def faults(mode):
    return int(subprocess.run(
        [sys.executable, '-c', _REUSE, mode], capture_output=True, text=True,
        check=True, cwd=_ROOT,
        env=_clean_env(PYTHONPATH=_ROOT)).stdout.split()[-1])
  pages = (128 << 20) // 4096
  assert faults('plain') > 0.9 * pages
  assert faults('tuned') < 0.02 * pages


_FRESH = textwrap.dedent("""
    import ctypes, resource
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    n = 256 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(ctypes.c_size_t(n))
    ctypes.memset(p, 1, n)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


@pytest.mark.skipif(hostmem.HUGE_PAGES not in hostmem.tunables(),
                    reason='needs glibc >= 2.35 and transparent huge pages '
                    'on request')
def test_huge_page_tunable_backs_fresh_blocks_with_huge_pages():
  """Touching a fresh 256 MiB malloc takes one fault per 4 KiB page
  without `HUGE_PAGES`, far fewer with it (the first step's faults)."""
  def faults(env):
    return int(subprocess.run([sys.executable, '-c', _FRESH],
                              capture_output=True, text=True, check=True,
                              env=env).stdout)
  pages = (256 << 20) // 4096
  assert faults(_clean_env()) > 0.9 * pages
  # (fewer than half: the kernel may fall back to small pages when its
  # memory is fragmented; here it took ~1 fault per 2 MiB)
  assert faults(_clean_env(GLIBC_TUNABLES=hostmem.HUGE_PAGES)) < 0.5 * pages


@applies_here
def test_benchmark_processes_get_the_tunables_per_side(monkeypatch):
  from benchmarks import alternating  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv('GLIBC_TUNABLES', raising=False)
  monkeypatch.delenv(hostmem._MARK, raising=False)  # pylint: disable=protected-access
  monkeypatch.setattr(alternating, 'TUNE_HOST_MALLOC', {'jax': True,
                                                     'torch': False})
  assert (alternating.side_env('jax')['GLIBC_TUNABLES'] ==
          ':'.join(hostmem.tunables()))
  assert 'GLIBC_TUNABLES' not in alternating.side_env('torch')
  monkeypatch.setenv('GLIBC_TUNABLES', 'glibc.malloc.mmap_max=4')
  assert alternating.side_env('jax')['GLIBC_TUNABLES'].startswith(
      'glibc.malloc.mmap_max=4:')
