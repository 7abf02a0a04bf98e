r"""Runs a config's `sweep(add)` points: locally, on SLURM or on a Cloud TPU VM.

  python launch/sweep.py --config=configs/cooperative.py:demo \
      --workdir=workdirs/coop_sweep [--mode=local|slurm|tpu] [--dry_run] \
      [--only=NAME[,NAME]] [--first_only] [-- EXTRA main.py FLAGS]

A config file that defines `sweep(add)` calls `add(name=..., **overrides)`
once per point; keys are config paths (`'stages.stage2.model.lr'` or plain
`sequence`). Each point becomes one command, run from the repository root:

  python main.py --config=PATH[:preset] --workdir=ROOT/NAME \
      --config.KEY=VALUE ... EXTRA

Values are rendered so that `ml_collections.config_flags` (what main.py uses)
parses them back to the same value: strings as they are, booleans as
true/false, numbers with repr, tuples/lists/dicts/None as Python literals;
each argument is shell-quoted when printed. Every point is checked against the
(locked) config before anything runs, so a typo in a key or a wrong type fails
at once, naming the point.

Modes:
* `local`: one point after another in this shell (output streamed); stops at
  the first failure. A point that finished (`ROOT/NAME/sweep_done.json`) is
  skipped, an interrupted one resumes from its checkpoint (`--rerun` reruns).
* `slurm`: one `sbatch launch/slurm.sbatch MAIN_FLAGS` per point
  (`--sbatch_args` adds sbatch options, e.g. `--nodes=4 --partition=gpu`).
* `tpu`: one `launch/tpu_vm.sh MAIN_FLAGS` per point, in turn (the VM named
  by `TPU_NAME` is created once and reused; see launch/README.md). The
  workdir is passed as given: it is a path on the TPU VM(s).

`--dry_run` prints `NAME: [ENV=...] COMMAND` lines (the exact commands, shell
quoted) and runs nothing. `--first_only` keeps only the first point (the
quick check each sweep gets in demo size). `--env KEY=VALUE` (repeatable) sets
environment variables for every command.
"""
from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import ml_collections
from absl import app
from absl import flags
from ml_collections import config_dict
from ml_collections.config_flags import config_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # config files import `configs.*` and `cxr_jax.*`
  sys.path.insert(0, REPO)
from cxr_jax import config_cli  # pylint: disable=g-import-not-at-top,wrong-import-position

MODES = ('local', 'slurm', 'tpu')
DONE = 'sweep_done.json'
_NAME_RE = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]*')


@dataclasses.dataclass(frozen=True)
class Point:
  """One sweep point: a name (its sub-workdir) and config overrides."""
  name: str
  overrides: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Job:
  """One command of a sweep: argv, extra environment, working directory."""
  name: str
  argv: list[str]
  env: dict[str, str]
  cwd: str
  workdir: str

  def shell(self) -> str:
    """The command as one shell-pasteable line (env assignments first)."""
    env = ' '.join(f'{k}={shlex.quote(v)}' for k, v in sorted(
        self.env.items()))
    return (env + ' ' if env else '') + shlex.join(self.argv)


# ---------------------------------------------------------------- config ---


def load(config_arg: str) -> tuple[ml_collections.ConfigDict, list[Point]]:
  """The (locked) config and the sweep points of `path[:preset]`."""
  path, preset = config_cli.split_config_arg(config_arg)
  module = config_cli.load_config_module(path, 'sweep_config_' + re.sub(
      r'\W', '_', os.path.splitext(os.path.basename(path))[0]))
  sweep_fn = getattr(module, 'sweep', None)
  if not callable(sweep_fn):
    raise ValueError(
        f'{path} defines no sweep(add) function, so there is nothing to '
        'sweep. Add one next to get_config, e.g.\n'
        '  def sweep(add):\n'
        "    add(name='lr3e-4', **{'optim.lr': 3e-4})\n"
        f'or run a single configuration with: python main.py '
        f'--config={config_arg}')
  config = module.get_config(*([] if preset is None else [preset]))
  config.lock()
  points = collect(sweep_fn)
  for p in points:
    apply_overrides(config, p)  # validates keys and types
    try:
      override_flags(config, p)
    except (TypeError, ValueError) as e:
      raise ValueError(f'sweep point {p.name!r}: {e}') from None
  return config, points


def collect(sweep_fn: Callable[[Callable[..., None]], Any]) -> list[Point]:
  """Calls `sweep_fn(add)` and returns the points in order."""
  points: list[Point] = []

  def add(name: str | None = None, **overrides):
    if not name:
      raise ValueError(f'sweep point #{len(points) + 1} ({overrides}) has no '
                       'name=...; the name is its sub-workdir.')
    if not _NAME_RE.fullmatch(name):
      raise ValueError(f'sweep point name {name!r}: use letters, digits, '
                       "'_', '-', '.' (it becomes a folder name).")
    if any(p.name == name for p in points):
      raise ValueError(f'sweep point name {name!r} is used twice.')
    points.append(Point(name, dict(overrides)))

  sweep_fn(add)
  if not points:
    raise ValueError('sweep(add) added no points.')
  return points


def apply_overrides(config: ml_collections.ConfigDict,
                    point: Point) -> ml_collections.ConfigDict:
  """A copy of `config` with `point`'s overrides; errors name the point."""
  out = config.copy_and_resolve_references()
  out.lock()
  for key, value in point.overrides.items():
    try:
      config_cli.check_key(out, key)
      config_path.get_value(key, out)
    except config_cli.UnknownKeyError as e:
      raise ValueError(f'sweep point {point.name!r}: {e}') from None
    except (KeyError, AttributeError):
      raise ValueError(f'sweep point {point.name!r}: {key!r} is not a key of '
                       'the config.') from None
    try:
      config_path.set_value(key, out, value)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
      raise ValueError(f'sweep point {point.name!r}: cannot set {key} = '
                       f'{value!r}: {e}') from None
  return out


# ------------------------------------------------------------- rendering ---


def literal(value: Any) -> str:
  """A Python literal that `ast.literal_eval` reads back as `value`.

  Strings use double quotes so that the shell-quoted flag stays readable:
  `'--config.sequence=("a", "b")'`.
  """
  if isinstance(value, str):
    return json.dumps(value)  # a valid Python literal, double-quoted
  if value is None or isinstance(value, bool):
    return repr(value)
  if isinstance(value, int):
    return repr(int(value))
  if isinstance(value, float):
    if not math.isfinite(value):
      raise ValueError(f'{value!r} cannot be passed as a literal.')
    return repr(float(value))
  if isinstance(value, tuple):
    items = [literal(v) for v in value]
    return '(' + ', '.join(items) + (',)' if len(items) == 1 else ')')
  if isinstance(value, list):
    return '[' + ', '.join(literal(v) for v in value) + ']'
  if isinstance(value, (dict, config_dict.ConfigDict)):
    items = [f'{literal(k)}: {literal(v)}' for k, v in value.items()]
    return '{' + ', '.join(items) + '}'
  raise TypeError(f'Cannot render {value!r} ({type(value).__name__}) as a '
                  'config flag value.')


def render(config: ml_collections.ConfigDict, key: str, value: Any) -> str:
  """The `--config.KEY=` value text config_flags parses back to `value`.

  config_flags picks its parser from the field's type in the config: str
  fields take the text as is, bool/int/float fields absl's parsers, tuple,
  dict and `object` fields `ast.literal_eval`. Fields it cannot override
  (a plain `None` default, lists) are an error here rather than in main.py.
  """
  field_type = config_path.get_type(key, config)
  if field_type is str:
    if not isinstance(value, str):
      raise TypeError(f'{key} is a string field, got {value!r}.')
    return value
  if field_type is bool:
    return 'true' if value else 'false'
  if field_type in (int, float):
    return repr(value)
  if isinstance(field_type, type) and issubclass(field_type, enum.Enum):
    return value.name if isinstance(value, enum.Enum) else str(value)
  if field_type in (tuple, object) or (
      isinstance(field_type, type) and issubclass(
          field_type, config_dict.ConfigDict)):
    return literal(value)
  raise TypeError(
      f'main.py cannot override {key} from the command line: ml_collections '
      f'config_flags has no parser for its type {field_type.__name__} (e.g. a '
      'plain None default). Give it a typed default, e.g. '
      'ml_collections.config_dict.placeholder(str), or a tuple instead of a '
      'list.')


def override_flags(config: ml_collections.ConfigDict,
                   point: Point) -> list[str]:
  """`--config.KEY=VALUE` arguments of a point (unquoted argv items)."""
  return [f'--config.{k}={render(config, k, v)}'
          for k, v in point.overrides.items()]


# ------------------------------------------------------------------ jobs ---


def repo_relative(path: str) -> str:
  """`path` relative to the repository root if inside it, else absolute."""
  path = os.path.abspath(path)
  rel = os.path.relpath(path, REPO)
  return path if rel.startswith('..') else rel


def _log(line: str) -> None:
  print(line, flush=True)  # before the child's output, which is unbuffered


def main_flags(config_arg: str, workdir: str, flags_: Sequence[str],
               extra: Sequence[str]) -> list[str]:
  """main.py's arguments: config, workdir, the point's overrides, extras."""
  return [f'--config={config_arg}', f'--workdir={workdir}', *flags_, *extra]


def make_jobs(config_arg: str, root: str, *, mode: str,
              only: Sequence[str] = (), first_only: bool = False,
              extra: Sequence[str] = (), env: dict[str, str] | None = None,
              python: str | None = None, sbatch_args: Sequence[str] = (),
              ) -> list[Job]:
  """The commands of a sweep (nothing runs; see `run_jobs`)."""
  if mode not in MODES:
    raise ValueError(f'--mode={mode!r}: choose one of {", ".join(MODES)}.')
  path, preset = config_cli.split_config_arg(config_arg)
  config, points = load(config_arg)
  if only:
    unknown = sorted(set(only) - {p.name for p in points})
    if unknown:
      raise ValueError(f'--only names unknown points {unknown}; the sweep has '
                       f'{[p.name for p in points]}.')
    points = [p for p in points if p.name in only]
  if first_only:
    points = points[:1]
  rel_config = repo_relative(path)
  if mode == 'tpu' and os.path.isabs(rel_config):
    raise ValueError(f'--mode=tpu: the config {path} must be inside the '
                     f'repository ({REPO}), which is what is copied to the VM.')
  config_arg = rel_config + ('' if preset is None else f':{preset}')
  env = dict(env or {})
  extra_keys = {a.split('=', 1)[0][len('--config.'):] for a in extra
                if a.startswith('--config.')}
  for p in points:
    both = sorted(extra_keys & set(p.overrides))
    if both:  # config_flags would merge repeated tuple flags, not override
      raise ValueError(f'Flags after -- set {both}, which sweep point '
                       f'{p.name!r} sets too.')
  jobs = []
  for p in points:
    workdir = (root.rstrip('/') + '/' + p.name if mode == 'tpu' else
               os.path.join(os.path.abspath(root), p.name))
    args = main_flags(config_arg, workdir, override_flags(config, p), extra)
    if mode == 'local':
      argv = [python or sys.executable, 'main.py', *args]
    elif mode == 'slurm':
      argv = ['sbatch', f'--job-name=cxr-{p.name}', f'--chdir={REPO}',
              f'--output={workdir}/slurm-%j.out', *sbatch_args,
              'launch/slurm.sbatch', *args]
    else:
      argv = ['launch/tpu_vm.sh', *args]
    jobs.append(Job(p.name, argv, env, REPO, workdir))
  return jobs


def run_jobs(jobs: Sequence[Job], *, mode: str, rerun: bool = False,
             log: Callable[[str], None] = _log) -> None:
  """Runs the jobs (local: in turn, stopping at the first failure)."""
  for i, job in enumerate(jobs):
    tag = f'[{i + 1}/{len(jobs)}] {job.name}'
    done = os.path.join(job.workdir, DONE)
    if mode == 'local' and not rerun and os.path.exists(done):
      log(f'{tag}: done ({done}), skipped.')
      continue
    if mode != 'tpu':  # slurm writes its log there; local gets sweep_done
      os.makedirs(job.workdir, exist_ok=True)
    log(f'{tag}: {job.shell()}')
    t0 = time.time()
    rc = subprocess.run(job.argv, cwd=job.cwd,
                        env={**os.environ, **job.env}).returncode
    if rc:
      raise RuntimeError(f'{tag} failed with exit status {rc}: {job.shell()}')
    if mode == 'local':
      with open(done, 'w') as f:
        json.dump(dict(command=job.shell(), wall_s=time.time() - t0,
                       finished=datetime.datetime.now(
                           datetime.timezone.utc).isoformat()), f, indent=2)


# ------------------------------------------------------------------- CLI ---

_CONFIG = flags.DEFINE_string(
    'config', None, 'Config file with a sweep(add) function, PATH[:preset].')
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Sweep root; point NAME runs in WORKDIR/NAME.')
_MODE = flags.DEFINE_enum('mode', 'local', list(MODES), 'Where to run.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print the commands only.')
_ONLY = flags.DEFINE_list('only', [], 'Run only these points (names).')
_FIRST_ONLY = flags.DEFINE_bool('first_only', False,
                                'Run only the first point (a quick check).')
_RERUN = flags.DEFINE_bool('rerun', False,
                           f'local: rerun points that have {DONE}.')
_ENV = flags.DEFINE_multi_string('env', [], 'KEY=VALUE for every command.')
_PYTHON = flags.DEFINE_string('python', None,
                              'local: interpreter (default: this one).')
_SBATCH_ARGS = flags.DEFINE_string('sbatch_args', '',
                                   'slurm: extra sbatch options (shell words).')


def _parse_env(items: Sequence[str]) -> dict[str, str]:
  env = {}
  for item in items:
    key, eq, value = item.partition('=')
    if not eq or not re.fullmatch(r'[A-Za-z_][A-Za-z0-9_]*', key):
      raise ValueError(f'--env={item!r}: expected KEY=VALUE.')
    env[key] = value
  return env


def main(argv: Sequence[str]) -> None:
  extra = list(argv[1:])
  if extra and extra[0] == '--':
    extra = extra[1:]
  bad = [a for a in extra if not a.startswith('--')]
  if bad:
    raise app.UsageError(f'Unexpected arguments {bad}; main.py flags go '
                         'after `--`.')
  if not _CONFIG.value or not _WORKDIR.value:
    raise app.UsageError('--config and --workdir are required.')
  try:
    jobs = make_jobs(
        _CONFIG.value, _WORKDIR.value, mode=_MODE.value, only=_ONLY.value,
        first_only=_FIRST_ONLY.value, extra=extra, env=_parse_env(_ENV.value),
        python=_PYTHON.value, sbatch_args=shlex.split(_SBATCH_ARGS.value))
  except (ValueError, config_cli.ConfigError, TypeError) as e:
    sys.exit(f'sweep.py: error: {e}')
  if _DRY_RUN.value:
    print(f'# mode={_MODE.value}, {len(jobs)} point(s), each run in {REPO}')
    for job in jobs:
      print(f'{job.name}: {job.shell()}')
    return
  try:
    run_jobs(jobs, mode=_MODE.value, rerun=_RERUN.value)
  except (RuntimeError, FileNotFoundError) as e:
    sys.exit(f'sweep.py: error: {e}')


if __name__ == '__main__':
  app.run(main)
