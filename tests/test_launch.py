"""launch/: the sweep runner's commands, their parsing, and the shell scripts.

* `launch/sweep.py --dry_run` on `configs/cooperative.py:demo` in the three
  modes prints exactly the expected commands (one per point, distinct
  workdirs, overrides shell-quoted, extra flags after `--`).
* Every generated command, split as a shell would, parses with the same
  `ml_collections.config_flags` machinery as main.py into the config with the
  point's overrides applied, also for awkward values (spaces, quotes, bools,
  one-element and empty tuples, None and dict fields).
* The sweep runs for real: `--mode=local --first_only` trains the first point
  of a demo-size sweep and a rerun skips it; (slow) the first point of
  `configs/cooperative.py:demo`'s sweep runs end to end, 2 steps a stage;
  `--mode=slurm` calls `sbatch` (a stand-in on PATH) once per point.
* `launch/slurm.sbatch` (with a stand-in `srun`) and `launch/tpu_vm.sh`
  (`DRY_RUN=1`, and with a stand-in `gcloud`) build the right commands; both
  pass `bash -n`.
* Errors are clear: a config without `sweep`, an unknown key, a bad --only.
"""
from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
import textwrap

import pytest
from absl import flags
from ml_collections import config_flags
from ml_collections.config_flags import config_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = os.path.join(ROOT, 'launch', 'sweep.py')
TPU_VM = os.path.join(ROOT, 'launch', 'tpu_vm.sh')
SBATCH = os.path.join(ROOT, 'launch', 'slurm.sbatch')
COOP = 'configs/cooperative.py:demo'
COOP_POINTS = ('pretraining_ablation', 'saliency_ablation',
               'classification_ablation', 'seed0', 'seed1', 'seed2',
               'densenet_feature_denseblock3')
COOP_FLAGS = {
    'pretraining_ablation': [
        '--config.sequence=("stage1_contrastive", "stage1_finetune", '
        '"densenet201")'],
    'saliency_ablation': [
        '--config.sequence=("stage1_contrastive", "stage1_finetune", '
        '"stage2", "unet_s", "res_se_unet")'],
    'classification_ablation': [
        '--config.sequence=("stage1_contrastive", "stage1_finetune", '
        '"stage2", "stage3", "densenet201")'],
    'seed0': ['--config.seed=0'],
    'seed1': ['--config.seed=1'],
    'seed2': ['--config.seed=2'],
    'densenet_feature_denseblock3': [
        '--config.stages.stage2.model.densenet_feature=denseblock3',
        '--config.stages.stage3.model.densenet_feature=denseblock3'],
}


def _sweep(*args, env=None, check=True, timeout=120):
  out = subprocess.run([sys.executable, SWEEP, *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, 'JAX_PLATFORMS': 'cpu',
                            **(env or {})})
  if check and out.returncode:
    raise AssertionError(f'sweep.py failed ({out.returncode}):\n{out.stdout}'
                         f'\n{out.stderr}')
  return out


def _lines(stdout: str) -> dict[str, list[str]]:
  """'NAME: command' lines -> {NAME: argv} (the command split like a shell)."""
  out = {}
  for line in stdout.splitlines():
    if line.startswith('#') or not line.strip():
      continue
    name, _, cmd = line.partition(': ')
    assert name not in out, f'point {name} printed twice'
    out[name] = shlex.split(cmd)
  return out


@pytest.fixture(scope='module')
def dry_runs(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('sweep') / 'root')
  runs = {mode: _lines(_sweep(f'--config={COOP}', f'--workdir={root}',
                              f'--mode={mode}', '--dry_run', '--',
                              '--config.data.split_seed=3').stdout)
          for mode in ('local', 'slurm', 'tpu')}
  return root, runs


def test_dry_run_local_commands(dry_runs):
  root, runs = dry_runs
  assert list(runs['local']) == list(COOP_POINTS)
  for name, argv in runs['local'].items():
    assert argv == [sys.executable, 'main.py', f'--config={COOP}',
                    f'--workdir={root}/{name}', *COOP_FLAGS[name],
                    '--config.data.split_seed=3']
  assert len({a[3] for a in runs['local'].values()}) == len(COOP_POINTS)


def test_dry_run_slurm_commands(dry_runs):
  root, runs = dry_runs
  assert list(runs['slurm']) == list(COOP_POINTS)
  for name, argv in runs['slurm'].items():
    assert argv == ['sbatch', f'--job-name=cxr-{name}', f'--chdir={ROOT}',
                    f'--output={root}/{name}/slurm-%j.out',
                    'launch/slurm.sbatch', f'--config={COOP}',
                    f'--workdir={root}/{name}', *COOP_FLAGS[name],
                    '--config.data.split_seed=3']


def test_dry_run_tpu_commands(dry_runs):
  root, runs = dry_runs
  assert list(runs['tpu']) == list(COOP_POINTS)
  for name, argv in runs['tpu'].items():
    assert argv == ['launch/tpu_vm.sh', f'--config={COOP}',
                    f'--workdir={root}/{name}', *COOP_FLAGS[name],
                    '--config.data.split_seed=3']


def test_dry_run_quotes_tuples_for_the_shell(dry_runs):
  out = _sweep(f'--config={COOP}', '--workdir=/w', '--dry_run',
               '--only=saliency_ablation', '--env=A=x y').stdout
  line = [l for l in out.splitlines() if l.startswith('saliency_ablation:')]
  assert len(line) == 1
  assert line[0].endswith(
      "'--config.sequence=(\"stage1_contrastive\", \"stage1_finetune\", "
      "\"stage2\", \"unet_s\", \"res_se_unet\")'"), line[0]
  assert line[0].startswith("saliency_ablation: A='x y' "), line[0]


def _parse_main_flags(argv: list[str]):
  """main.py's flag parsing (config_flags, locked) on a fresh FlagValues."""
  args = ['main.py', *argv[argv.index('main.py') + 1:]]
  fv = flags.FlagValues()
  # (config_flags defines the --config.KEY flags that sys_argv mentions.)
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=fv,
                                  lock_config=True, sys_argv=args)
  flags.DEFINE_string('workdir', None, 'workdir', flag_values=fv)
  cwd = os.getcwd()
  os.chdir(ROOT)  # config paths are relative to the repository root
  try:
    fv(args)
    return fv.config, fv.workdir
  finally:
    os.chdir(cwd)


def _expected(config_arg: str, overrides: dict):
  """get_config(preset) with the overrides set in Python."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  path, _, preset = config_arg.partition(':')
  spec = importlib.util.spec_from_file_location(
      'expected_cfg', os.path.join(ROOT, path) if not os.path.isabs(path)
      else path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(*([preset] if preset else []))
  for k, v in overrides.items():
    config_path.set_value(k, c, v)
  return c


def test_generated_overrides_parse_back(dry_runs):
  root, runs = dry_runs
  extra = {'data.split_seed': 3}  # the flag after `--` in `dry_runs`
  points = {
      'pretraining_ablation': dict(extra, sequence=(
          'stage1_contrastive', 'stage1_finetune', 'densenet201')),
      'saliency_ablation': dict(extra, sequence=(
          'stage1_contrastive', 'stage1_finetune', 'stage2', 'unet_s',
          'res_se_unet')),
      'classification_ablation': dict(extra, sequence=(
          'stage1_contrastive', 'stage1_finetune', 'stage2', 'stage3',
          'densenet201')),
      **{f'seed{i}': dict(extra, seed=i) for i in range(3)},
      'densenet_feature_denseblock3': {
          **extra,
          'stages.stage2.model.densenet_feature': 'denseblock3',
          'stages.stage3.model.densenet_feature': 'denseblock3'},
  }
  base = _expected(COOP, {})
  for name, argv in runs['local'].items():
    config, workdir = _parse_main_flags(argv)
    assert workdir == f'{root}/{name}'
    expected = _expected(COOP, points[name])
    assert config.to_dict() == expected.to_dict(), name
    assert config.to_dict() != base.to_dict()


_TYPES_CONFIG = textwrap.dedent('''
    import ml_collections

    def get_config(arg=None):
      c = ml_collections.ConfigDict()
      c.title = 'plain'
      c.flag = False
      c.steps = 1
      c.lr = 0.1
      c.names = ('a', 'b')
      c.empty = ()
      c.maybe = ml_collections.FieldReference(None, field_type=object)
      c.nested = ml_collections.ConfigDict(dict(
          kw=dict(a=1), path='', pairs=(('x', 1),)))
      c.preset = arg or ''
      return c

    def sweep(add):
      add(name='awkward', **{
          'title': "it's a \\"test\\" $HOME; echo x",
          'flag': True, 'steps': 7, 'lr': 3e-4,
          'names': ('only one',), 'empty': ('x', 'y'), 'maybe': 'text',
          'nested.path': '/data/with space/(1)',
          'nested.pairs': (('y', 2), ('z', -1.5e-9)),
          'nested.kw': {'b': [1, 2], 'c': None}})
      add(name='back', **{'names': (), 'flag': False, 'maybe': (1, None),
                          'empty': ('true',), 'title': ''})
''')


def test_awkward_values_round_trip(tmp_path):
  cfg = tmp_path / 'types_config.py'
  cfg.write_text(_TYPES_CONFIG)
  arg = f'{cfg}:pre,set'
  runs = _lines(_sweep(f'--config={arg}', f'--workdir={tmp_path}/w',
                       '--dry_run').stdout)
  assert list(runs) == ['awkward', 'back']
  overrides = {
      'awkward': {
          'title': "it's a \"test\" $HOME; echo x", 'flag': True,
          'steps': 7, 'lr': 3e-4, 'names': ('only one',),
          'empty': ('x', 'y'), 'maybe': 'text',
          'nested.path': '/data/with space/(1)',
          'nested.pairs': (('y', 2), ('z', -1.5e-9)),
          'nested.kw': {'b': [1, 2], 'c': None}},
      'back': {'names': (), 'flag': False, 'maybe': (1, None),
               'empty': ('true',), 'title': ''},
  }
  for name, argv in runs.items():
    assert argv[2] == f'--config={arg}'
    config, _ = _parse_main_flags(argv)
    expected = _expected(arg, overrides[name]).to_dict()
    assert config.to_dict() == expected, name
    assert config.preset == 'pre,set'


def test_bash_syntax():
  for script in (TPU_VM, SBATCH):
    subprocess.run(['bash', '-n', script], check=True, timeout=30)
  assert os.access(TPU_VM, os.X_OK)


_MAIN_ARGS = ['--config=configs/cooperative.py:demo', '--workdir=/mnt/s/p1',
              '--config.sequence=("stage2", "stage3")', "--config.x=it's"]


def test_tpu_vm_dry_run():
  env = {**os.environ, 'DRY_RUN': '1', 'TPU_NAME': 'cxr-test',
         'ZONE': 'europe-west4-a', 'ACCELERATOR_TYPE': 'v5litepod-16',
         'PROJECT': 'my-proj', 'SPOT': '1', 'DELETE': '1'}
  out = subprocess.run([TPU_VM, *_MAIN_ARGS], env=env, capture_output=True,
                       text=True, check=True, timeout=30).stdout
  cmds = [shlex.split(l) for l in out.splitlines()]
  tpu = ['gcloud', 'compute', 'tpus', 'tpu-vm']
  where = ['--zone=europe-west4-a', '--project=my-proj']
  assert cmds[0] == [*tpu, 'create', 'cxr-test', *where,
                     '--accelerator-type=v5litepod-16',
                     '--version=tpu-ubuntu2204-base', '--spot']
  assert cmds[1][:2] == ['tar', '-czf'] and '--exclude=./.venv' in cmds[1]
  assert cmds[2] == [*tpu, 'scp', cmds[1][2], 'cxr-test:cxr_jax_src.tar.gz',
                     *where, '--worker=all']
  ssh = [*tpu, 'ssh', 'cxr-test', *where, '--worker=all']
  remote = []
  for c in cmds[3:6]:
    assert c[:-1] == ssh and c[-1].startswith('--command=')
    remote.append(c[-1][len('--command='):])
  assert remote[0] == ('mkdir -p cxr_jax && tar -xzf cxr_jax_src.tar.gz -C '
                       'cxr_jax')
  assert 'bash scripts/setup.sh' in remote[1]
  assert "'jax[tpu]==0.10.2' -f https://storage.googleapis.com/jax-releases/" \
      'libtpu_releases.html' in remote[1]
  # The training command, as the remote shell splits it: main.py's flags
  # arrive unchanged, plus --distributed=auto.
  assert shlex.split(remote[2]) == [
      'cd', 'cxr_jax', '&&', '.venv/bin/python', 'main.py', *_MAIN_ARGS,
      '--distributed=auto']
  assert cmds[6] == [*tpu, 'delete', 'cxr-test', *where, '--quiet']
  assert len(cmds) == 7


def _stub(bin_dir, name, body):
  path = os.path.join(bin_dir, name)
  with open(path, 'w') as f:
    f.write('#!/usr/bin/env bash\n' + body)
  os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)


_RECORD = ('"$STUB_PY" -c \'import json, os, sys; print(json.dumps(['
           'os.path.basename(sys.argv[1]), sys.argv[2:], '
           '{k: v for k, v in os.environ.items() if k.startswith(("JAX_", '
           '"XLA_", "SLURM_"))}]))\' "$0" "$@" >> "$STUB_LOG"\n')


def _calls(log):
  with open(log) as f:
    return [json.loads(l) for l in f]


def test_tpu_vm_with_stub_gcloud(tmp_path):
  """Runs for real with a `gcloud` that records its arguments."""
  bin_dir = str(tmp_path / 'bin')
  os.makedirs(bin_dir)
  # `describe` fails (no such VM yet), everything else succeeds.
  _stub(bin_dir, 'gcloud', _RECORD + '[ "$4" != describe ]\n')
  log = str(tmp_path / 'calls.jsonl')
  env = {**os.environ, 'PATH': f'{bin_dir}:{os.environ["PATH"]}',
         'STUB_LOG': log, 'STUB_PY': sys.executable, 'TMPDIR': str(tmp_path),
         'SYNC': 'git', 'GIT_URL': 'https://example.org/cxr_jax.git',
         'GIT_REF': 'v1', 'SETUP': '0'}
  subprocess.run([TPU_VM, *_MAIN_ARGS], env=env, check=True, timeout=30,
                 capture_output=True)
  calls = [args for _, args, _ in _calls(log)]
  assert [c[3] for c in calls] == ['describe', 'create', 'ssh', 'ssh']
  assert calls[2][-1].startswith('--command={ [ -d cxr_jax/.git ] || git '
                                 'clone https://example.org/cxr_jax.git')
  assert shlex.split(calls[3][-1][len('--command='):])[4:] == [
      'main.py', *_MAIN_ARGS, '--distributed=auto']


def test_slurm_sbatch_with_stub_srun(tmp_path):
  """The batch script's srun line and environment (SLURM faked)."""
  bin_dir = str(tmp_path / 'bin')
  os.makedirs(bin_dir)
  _stub(bin_dir, 'srun', _RECORD)
  log = str(tmp_path / 'calls.jsonl')
  env = {**os.environ, 'PATH': f'{bin_dir}:{os.environ["PATH"]}',
         'STUB_LOG': log, 'STUB_PY': sys.executable,
         'SLURM_SUBMIT_DIR': ROOT, 'SLURM_JOB_ID': '77', 'SLURM_NNODES': '2',
         'SLURM_GPUS_ON_NODE': '4'}
  env.pop('JAX_LOCAL_DEVICE_IDS', None)
  env.pop('XLA_PYTHON_CLIENT_PREALLOCATE', None)
  env.pop('PYTHON', None)
  subprocess.run(['bash', SBATCH, *_MAIN_ARGS], env=env, check=True,
                 timeout=30, capture_output=True, cwd=str(tmp_path))
  [(name, args, jax_env)] = _calls(log)
  assert name == 'srun'
  assert args == ['--ntasks-per-node=1', '--kill-on-bad-exit=1',
                  '.venv/bin/python', 'main.py', *_MAIN_ARGS,
                  '--distributed=auto']
  assert jax_env['JAX_LOCAL_DEVICE_IDS'] == '0,1,2,3'
  assert jax_env['XLA_PYTHON_CLIENT_PREALLOCATE'] == 'true'
  with open(SBATCH) as f:
    text = f.read()
  for line in ('#SBATCH --nodes=', '#SBATCH --ntasks-per-node=1',
               '#SBATCH --gpus-per-node=', '#SBATCH --time='):
    assert line in text


def test_sweep_slurm_mode_submits_each_point(tmp_path):
  bin_dir = str(tmp_path / 'bin')
  os.makedirs(bin_dir)
  _stub(bin_dir, 'sbatch', _RECORD)
  log = str(tmp_path / 'calls.jsonl')
  root = str(tmp_path / 'root')
  _sweep(f'--config={COOP}', f'--workdir={root}', '--mode=slurm',
         '--sbatch_args=--partition=gpu --nodes=4',
         env={'PATH': f'{bin_dir}:{os.environ["PATH"]}', 'STUB_LOG': log,
              'STUB_PY': sys.executable})
  calls = _calls(log)
  assert [c[0] for c in calls] == ['sbatch'] * len(COOP_POINTS)
  for (_, args, _), name in zip(calls, COOP_POINTS):
    assert args[:6] == [f'--job-name=cxr-{name}', f'--chdir={ROOT}',
                        f'--output={root}/{name}/slurm-%j.out',
                        '--partition=gpu', '--nodes=4', 'launch/slurm.sbatch']
    assert args[6:8] == [f'--config={COOP}', f'--workdir={root}/{name}']
    assert os.path.isdir(os.path.join(root, name))  # for SLURM's --output


_DEMO_SWEEP = textwrap.dedent('''
    from configs import siim_classifier

    def get_config(arg=None):
      c = siim_classifier.get_config(arg)
      c.total_steps = 2
      c.eval_every_steps = 2
      c.evals.test.final = False
      return c

    def sweep(add):
      add(name='lr_high', **{'optim.lr': 2e-3})
      add(name='lr_low', **{'optim.lr': 1e-4})
''')


def test_local_first_only_runs_and_skips_when_done(tmp_path):
  """The first point of a demo-size sweep trains; a rerun skips it."""
  cfg = tmp_path / 'demo_sweep.py'
  cfg.write_text(_DEMO_SWEEP)
  root = tmp_path / 'root'
  env = {'CXR_JAX_CACHE': os.environ.get('CXR_JAX_CACHE',
                                         str(tmp_path / 'cache'))}
  out = _sweep(f'--config={cfg}:demo', f'--workdir={root}', '--first_only',
               env=env, timeout=600)
  assert (root / 'lr_high' / 'sweep_done.json').exists(), out.stdout
  assert not (root / 'lr_low').exists()
  saved = json.loads((root / 'lr_high' / 'config.json').read_text())
  assert saved['optim']['lr'] == 2e-3 and saved['total_steps'] == 2
  assert os.listdir(root / 'lr_high' / 'ckpt') == ['2']
  again = _sweep(f'--config={cfg}:demo', f'--workdir={root}', '--first_only',
                 env=env)
  assert 'lr_high: done' in again.stdout, again.stdout


@pytest.mark.slow
def test_cooperative_sweep_first_point_in_demo_size(tmp_path):
  """configs/cooperative.py's first point (3 stages + report), 2 steps each."""
  stages = _expected(COOP, {}).stages
  short = [f'--config.stages.{s}.{k}=2' for s in stages
           for k in ('total_steps', 'eval_every_steps')]
  root = tmp_path / 'root'
  env = {'CXR_JAX_CACHE': os.environ.get('CXR_JAX_CACHE',
                                         str(tmp_path / 'cache'))}
  _sweep(f'--config={COOP}', f'--workdir={root}', '--first_only', '--',
         *short, env=env, timeout=1500)
  point = root / COOP_POINTS[0]
  assert (point / 'sweep_done.json').exists()
  assert sorted(p.name for p in root.iterdir()) == [COOP_POINTS[0]]
  for stage in ('stage1_contrastive', 'stage1_finetune', 'densenet201'):
    assert (point / stage / 'done.json').exists(), stage
  assert not (point / 'stage2').exists()
  assert (point / 'report' / 'report.md').exists()


def test_config_without_sweep_is_a_clear_error():
  out = _sweep('--config=configs/siim_classifier.py:demo', '--workdir=/w',
               '--dry_run', check=False)
  assert out.returncode == 1
  assert 'configs/siim_classifier.py defines no sweep(add) function' in (
      out.stderr)


def test_bad_points_and_flags_are_clear_errors(tmp_path):
  cfg = tmp_path / 'bad.py'
  cfg.write_text(textwrap.dedent('''
      import ml_collections
      def get_config(arg=None):
        return ml_collections.ConfigDict(dict(lr=0.1, names=('a',)))
      def sweep(add):
        add(name='ok', lr=0.2)
        add(name='typo', **{'lrr': 0.3})
  '''))
  out = _sweep(f'--config={cfg}', '--workdir=/w', '--dry_run', check=False)
  assert out.returncode == 1
  assert ("sweep point 'typo': unknown config key 'lrr': the config has no "
          "field 'lrr'. Did you mean lr?") in out.stderr, out.stderr
  cfg.write_text(textwrap.dedent('''
      import ml_collections
      def get_config(arg=None):
        return ml_collections.ConfigDict(dict(path=None))
      def sweep(add):
        add(name='untyped', path='/x')
  '''))
  out = _sweep(f'--config={cfg}', '--workdir=/w', '--dry_run', check=False)
  assert out.returncode == 1
  assert ("sweep point 'untyped': main.py cannot override path from the "
          'command line') in out.stderr, out.stderr
  out = _sweep(f'--config={COOP}', '--workdir=/w', '--dry_run',
               '--only=nope', check=False)
  assert out.returncode == 1 and "unknown points ['nope']" in out.stderr
  out = _sweep(f'--config={COOP}', '--workdir=/w', '--dry_run', '--',
               '--config.sequence=("stage2",)', check=False)
  assert out.returncode == 1 and "set ['sequence']" in out.stderr
  out = _sweep(f'--config={COOP}', '--workdir=/w', '--dry_run', '--mode=tpu',
               '--', '--config.seed=1', 'stray', check=False)
  assert out.returncode == 1 and 'stray' in out.stderr
