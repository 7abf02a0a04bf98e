"""Two JAX processes on localhost (gloo CPU collectives), like two hosts.

1. `cxr_jax.runtime.distributed.initialize` with explicit settings: both
   processes join, see 2 global devices and agree on a cross-process sum.
2. The trainer through `main.py` on 2 processes x 1 CPU device: a run that
   crashes right after its step-4 checkpoint (every process exits hard, as a
   preempted job would), then the same command resumes to step 6. Its final
   parameters, its per-step training losses, its validation losses and its
   final test metrics (the best checkpoint through the classification
   evaluator) equal a single-process run's with the same global batch
   (1e-5). The reference process has 2 (forced) CPU devices, so both runs
   split the batch the same way and differ only in who owns the devices;
   against a 1-device run the parameters differ by ~2e-5 after 6 Adam steps
   (float32 summation order, which Adam's normalisation amplifies;
   tests/test_sharding.py compares 1 and 8 devices by their losses).

Also, in-process: what `distributed.initialize` would pass to
`jax.distributed.initialize` for each combination of settings, and main.py's
flag defaults from the environment.

Everything binds to 127.0.0.1 and every subprocess has a timeout.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from cxr_jax.runtime import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300  # per phase; a phase takes ~30-60 s on 2 idle CPU cores

_PSUM = textwrap.dedent('''
    import sys
    import numpy as np
    from cxr_jax.runtime import distributed

    def main(flags):  # main.py's flag names, as _two_processes passes them
      distributed.initialize(distributed.Settings(
          coordinator_address=flags['coordinator_address'],
          num_processes=int(flags['num_processes']),
          process_id=int(flags['process_id']),
          timeout_s=int(flags['distributed_timeout_s'])))
      import jax
      from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
      mesh = Mesh(np.asarray(jax.devices()), ('data',))
      x = jax.make_array_from_process_local_data(
          NamedSharding(mesh, P('data')),
          np.full((2,), jax.process_index() + 1.0, np.float32))
      total = jax.jit(lambda x: x.sum(), out_shardings=NamedSharding(
          mesh, P()))(x)
      print('RESULT', jax.process_index(), jax.process_count(),
            jax.device_count(), float(total), distributed.is_main(),
            flush=True)

    main(dict(a.lstrip('-').split('=', 1) for a in sys.argv[1:]))
''')

# main.py, except that the process exits hard (no clean-up, like a kill)
# right after saving the checkpoint of step $CXR_TEST_CRASH_AFTER_STEP.
_CRASHING_MAIN = textwrap.dedent('''
    import os
    import sys
    from absl import app
    import main
    from cxr_jax import ckpt

    _AT = int(os.environ['CXR_TEST_CRASH_AFTER_STEP'])
    _save_latest = ckpt.Checkpointer.save_latest

    def save_latest(self, step, *args, **kwargs):
      _save_latest(self, step, *args, **kwargs)
      if step >= _AT:
        # Every process has finished the save before any exits, and the
        # coordinator (process 0, which hosts the coordination service)
        # exits last: a process still waiting on the service when it dies
        # aborts (exit -6) instead of crashing as planned.
        import time
        import jax
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f'crash-{step}')
        print(f'CRASHING after the step-{step} checkpoint', flush=True)
        sys.stderr.flush()
        if jax.process_index() == 0:
          time.sleep(2)
        os._exit(75)

    ckpt.Checkpointer.save_latest = save_latest
    app.run(main.main)
''')

# Builds the demo dataset cache first: several processes generating the SIIM
# phantom into one folder at once race (see the report / siim.phantom_root).
_BUILD_DATA = textwrap.dedent('''
    from configs import siim_classifier
    from cxr_jax.data import build_dataset
    build_dataset(siim_classifier.get_config('demo').data)
''')

_RUN_FLAGS = ('--config=configs/siim_classifier.py:demo',
              '--config.total_steps=6', '--config.checkpoint_every_steps=2',
              '--config.eval_every_steps=3', '--config.log_every_steps=1')


def test_init_kwargs_per_mode():
  settings = distributed.Settings
  assert distributed.init_kwargs(settings()) is None
  # Auto: only what was given explicitly; jax detects the rest.
  assert distributed.init_kwargs(settings('auto')) == dict(
      initialization_timeout=300)
  assert distributed.init_kwargs(settings(
      'auto', local_device_ids='0,1,2,3', num_processes=4)) == dict(
          initialization_timeout=300, local_device_ids=[0, 1, 2, 3],
          num_processes=4)
  # A coordinator address alone switches 'off' to explicit.
  assert distributed.init_kwargs(settings(
      coordinator_address='10.0.0.1:1234', num_processes=4,
      process_id=3)) == dict(
          initialization_timeout=300, coordinator_address='10.0.0.1:1234',
          num_processes=4, process_id=3)
  # Explicit: one process, index 0, unless told otherwise.
  assert distributed.init_kwargs(settings(
      'explicit', coordinator_address='h:1', timeout_s=5)) == dict(
          initialization_timeout=5, coordinator_address='h:1',
          num_processes=1, process_id=0)
  with pytest.raises(ValueError, match='process_id=4 must be in'):
    distributed.init_kwargs(settings(coordinator_address='h:1',
                                     num_processes=4, process_id=4))
  with pytest.raises(ValueError, match='needs a coordinator address'):
    distributed.init_kwargs(settings('explicit'))
  with pytest.raises(ValueError, match="mode 'on'"):
    distributed.init_kwargs(settings('on'))
  with pytest.raises(ValueError, match='comma-separated'):
    distributed.parse_device_ids('0;1')
  with pytest.raises(ValueError, match='distinct'):
    distributed.parse_device_ids('1,1')
  assert distributed.parse_device_ids(' ') is None


_FLAG_DEFAULTS = textwrap.dedent('''
    import main
    print('DEFAULTS', main._DISTRIBUTED.default,
          main._COORDINATOR.default, main._NUM_PROCESSES.default,
          main._PROCESS_ID.default, main._LOCAL_DEVICE_IDS.default,
          main._TUNE_HOST_MALLOC.default)
''')


@pytest.mark.parametrize('env, want', [
    ({}, 'off  None None  False'),
    (dict(CXR_DISTRIBUTED='auto', CXR_COORDINATOR='h:1', CXR_NUM_PROCESSES='2',
          CXR_PROCESS_ID='1', CXR_LOCAL_DEVICE_IDS='0,1',
          CXR_JAX_TUNE_MALLOC='1'), 'auto h:1 2 1 0,1 True'),
])
def test_main_flags_default_to_the_environment(tmp_path, env, want):
  """main.py's multi-process flags (and --tune_host_malloc) take their
  defaults from the CXR_* variables; without them, one plain process."""
  out = subprocess.run([sys.executable, '-c', _FLAG_DEFAULTS],
                       capture_output=True, text=True, timeout=TIMEOUT_S,
                       cwd=ROOT, env={**_env(str(tmp_path)), **env})
  lines = [l for l in out.stdout.splitlines() if l.startswith('DEFAULTS')]
  assert lines == ['DEFAULTS ' + want], out.stderr[-2000:]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(cache_dir: str, port: int | None = None, **extra) -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='',
             CXR_JAX_CACHE=cache_dir, PYTHONPATH=ROOT, **extra)
  for k in ('CXR_COORDINATOR', 'CXR_NUM_PROCESSES', 'CXR_PROCESS_ID',
            'CXR_DISTRIBUTED', 'JAX_COORDINATOR_ADDRESS'):
    env.pop(k, None)
  if port is not None:  # the coordinator service listens on loopback only
    env['JAX_COORDINATOR_BIND_ADDRESS'] = f'127.0.0.1:{port}'
  return env


def _start(args, env, log_path):
  log = open(log_path, 'w')
  proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env,
                          stdout=log, stderr=subprocess.STDOUT)
  proc.log_file = log
  proc.log_path = log_path
  return proc


def _wait(procs, timeout_s=TIMEOUT_S) -> list[int]:
  """Waits for all; on timeout kills every one and fails with the logs."""
  deadline = time.monotonic() + timeout_s
  codes = []
  try:
    for p in procs:
      codes.append(p.wait(timeout=max(deadline - time.monotonic(), 1)))
  except subprocess.TimeoutExpired:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
    pytest.fail(f'timed out after {timeout_s}s:\n' + _tails(procs))
  finally:
    for p in procs:
      p.log_file.close()
  return codes


def _tails(procs, n=30) -> str:
  out = []
  for p in procs:
    with open(p.log_path) as f:
      lines = f.read().splitlines()
    out.append(f'--- {p.log_path} (exit {p.poll()}):\n' +
               '\n'.join(lines[-n:]))
  return '\n'.join(out)


def _two_processes(script_args, env, log_prefix):
  port = _free_port()
  procs = [
      _start([*script_args, f'--coordinator_address=127.0.0.1:{port}',
              '--num_processes=2', f'--process_id={i}',
              '--distributed_timeout_s=120'],
             {**env, 'JAX_COORDINATOR_BIND_ADDRESS': f'127.0.0.1:{port}'},
             f'{log_prefix}{i}.log')
      for i in range(2)]
  return procs


def test_two_processes_agree_on_a_sum(tmp_path):
  procs = _two_processes(['-c', _PSUM], _env(str(tmp_path / 'cache')),
                         str(tmp_path / 'psum'))
  codes = _wait(procs, 120)
  assert codes == [0, 0], _tails(procs)
  results = []
  for p in procs:
    with open(p.log_path) as f:
      results += [l.split()[1:] for l in f if l.startswith('RESULT')]
  # Process i contributes 2 x (i + 1): 2 + 4 = 6, seen by both.
  assert sorted(results) == [['0', '2', '2', '6.0', 'True'],
                             ['1', '2', '2', '6.0', 'False']], _tails(procs)


def _latest(workdir):
  """(step, params as numpy) of a workdir's latest checkpoint.

  Restored onto this (single-device) process whatever topology saved it.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  ckpt_dir = os.path.join(workdir, 'ckpt')
  step = max(int(s) for s in os.listdir(ckpt_dir) if s.isdigit())
  path = os.path.join(ckpt_dir, str(step), 'state')
  ckptr = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      ckptr.metadata(path).item_metadata)
  state = ckptr.restore(path, abstract)
  ckptr.close()
  return step, jax.tree.map(np.asarray, state['params'])


def _metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(l) for l in f if l.strip()]
  train = {r['step']: r['train/loss'] for r in rows if 'train/loss' in r}
  val = {r['step']: r['val/loss'] for r in rows if 'val/loss' in r}
  return rows, train, val


def test_two_process_training_crash_resume_matches_one_process(tmp_path):
  cache = os.environ.get('CXR_JAX_CACHE', str(tmp_path / 'cache'))
  one, two = str(tmp_path / 'one'), str(tmp_path / 'two')

  data = _start(['-c', _BUILD_DATA], _env(cache), str(tmp_path / 'data.log'))
  assert _wait([data]) == [0], _tails([data])
  # The single-process reference runs while the two processes crash.
  ref = _start(['main.py', *_RUN_FLAGS, f'--workdir={one}'],
               {**_env(cache),
                'XLA_FLAGS': '--xla_force_host_platform_device_count=2'},
               str(tmp_path / 'one.log'))
  crash = _two_processes(['-c', _CRASHING_MAIN, *_RUN_FLAGS,
                          f'--workdir={two}'],
                         _env(cache, CXR_TEST_CRASH_AFTER_STEP='4'),
                         str(tmp_path / 'crash'))
  codes = _wait([ref, *crash])
  assert codes == [0, 75, 75], _tails([ref, *crash])
  assert sorted(os.listdir(os.path.join(two, 'ckpt'))) == ['4'], (
      os.listdir(os.path.join(two, 'ckpt')))

  resume = _two_processes(['main.py', *_RUN_FLAGS, f'--workdir={two}'],
                          _env(cache), str(tmp_path / 'resume'))
  codes = _wait(resume)
  assert codes == [0, 0], _tails(resume)
  with open(resume[0].log_path) as f:
    assert 'at step 4' in f.read(), _tails(resume)

  step1, params1 = _latest(one)
  step2, params2 = _latest(two)
  assert step1 == step2 == 6
  flat1 = jax.tree_util.tree_leaves_with_path(params1)
  flat2 = jax.tree_util.tree_leaves_with_path(params2)
  assert [p for p, _ in flat1] == [p for p, _ in flat2]
  for (path, a), (_, b) in zip(flat1, flat2):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5,
                               err_msg=jax.tree_util.keystr(path))

  rows1, train1, val1 = _metrics(one)
  rows2, train2, val2 = _metrics(two)
  assert sorted(train1) == sorted(train2) == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose([train2[s] for s in sorted(train2)],
                             [train1[s] for s in sorted(train1)],
                             atol=1e-5, rtol=1e-5)
  assert sorted(val1) == sorted(val2) == [3, 6]
  np.testing.assert_allclose([val2[3], val2[6]], [val1[3], val1[6]],
                             atol=1e-5, rtol=1e-5)
  with open(os.path.join(one, 'final_metrics.json')) as f:
    final1 = json.load(f)
  with open(os.path.join(two, 'final_metrics.json')) as f:
    final2 = json.load(f)
  assert sorted(final1) == sorted(final2) and 'test/auc' in final1, final1
  for k in final1:
    np.testing.assert_allclose(final2[k], final1[k], atol=1e-5, err_msg=k)
  # Process 0 alone writes metrics: one row per logged step, no duplicates.
  train_rows = [r['step'] for r in rows2 if 'train/loss' in r]
  assert train_rows == [1, 2, 3, 4, 5, 6], train_rows
