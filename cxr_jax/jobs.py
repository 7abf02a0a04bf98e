"""What `main.py` runs: `config.job` names a job, each `fn(config, workdir)`.

- `train`: one training run (`cxr_jax.train.run`).
- `sequence`: several training runs in order, each a full train config in
  `config.stages.<name>`, run in `workdir/<name>` in the order of
  `config.sequence`; `config.data` and `config.seed` are shared by every
  stage; a stage whose `init.from_stage` names an earlier stage starts from
  that stage's best checkpoint, and every other stage whose network has
  published ImageNet weights starts from `config.init_dir/<network>` when
  `config.init_dir` is set (the folders `python -m cxr_jax.convert --all`
  writes). A finished stage (`done.json`) is
  skipped and an interrupted one resumes, so re-running the same command
  continues the sequence; a finished stage whose stored config differs in
  a key that defines the run is an error (`training/resume.py`). `config.report` then names a report (`REPORTS`),
  `report(config, workdir, stages)` with `stages` = stage name -> resolved
  train config (`stage_config`), written to `workdir/report/`.
"""
from __future__ import annotations

import json
import os
import time

from absl import logging

from cxr_jax import ckpt
from cxr_jax import models
from cxr_jax.registry import Registry
from cxr_jax.training import resume

JOBS = Registry('job', {
    'train': 'cxr_jax.train:run',
    'sequence': 'cxr_jax.jobs:run_sequence',
})

REPORTS = Registry('report', {
    'gradcam_benchmark': 'cxr_jax.studies.gradcam_benchmark:report',
    'cooperative': 'cxr_jax.studies.cooperative:report',
})

SHARED = ('data', 'seed')
DONE = 'done.json'  # a finished stage's training summary


def run(config, workdir: str):
  """Runs the job `config.job` names."""
  return JOBS.get(config.job, key='job')(config, workdir)


def _init_path(config, name: str, sub, workdir: str) -> str:
  """Stage `name`'s initial weights: its `from_stage`'s run; else, when
  `config.init_dir` is set and its network has published ImageNet weights
  (`models.IMAGENET_PRETRAINED`), `init_dir/<network>` (the folders
  `python -m cxr_jax.convert --all` writes); else its own `init.path`."""
  if sub.init.from_stage:
    if sub.init.from_stage not in config.sequence[:config.sequence.index(
        name)]:
      raise ValueError(f'config.stages.{name}.init.from_stage = '
                       f'{sub.init.from_stage!r} is not an earlier stage.')
    return os.path.join(workdir, sub.init.from_stage)
  if not config.init_dir or sub.model.name not in models.IMAGENET_PRETRAINED:
    return sub.init.path
  path = os.path.join(config.init_dir, sub.model.name)
  if sub.init.path and sub.init.path != path:
    raise ValueError(f'config.init_dir = {config.init_dir!r} gives stage '
                     f'{name!r} the initial weights {path}, but '
                     f'config.stages.{name}.init.path = {sub.init.path!r}; '
                     'set one of the two.')
  return path


def stage_config(config, name: str, workdir: str):
  """The train config of stage `name` with the shared fields and init path."""
  if name not in config.stages:
    raise ValueError(f'config.sequence names stage {name!r}, which is not in '
                     f'config.stages ({", ".join(config.stages)}).')
  sub = config.stages[name].copy_and_resolve_references()
  with sub.unlocked():
    for key in SHARED:
      sub[key] = config[key]
    sub.init.path = _init_path(config, name, sub, workdir)
  return sub


def stage_names(sequence) -> tuple[str, ...]:
  """`config.sequence` as a tuple of stage names; a comma-separated string
  (what `--config.sequence=a,b` gives: one item 'a,b') is split."""
  if isinstance(sequence, str):
    sequence = (sequence,)
  names = tuple(n.strip() for item in sequence for n in str(item).split(','))
  return tuple(n for n in names if n)


def _finished(stage, sub_dir: str) -> dict | None:
  """The training summary of a finished stage, or None when it must train
  (not finished, or finished and `allow_config_change` continues it). A
  finished stage whose stored config differs from `stage` in a key that
  defines the run is an error: skipping it would report its results under
  a config it was not trained with."""
  path = os.path.join(sub_dir, DONE)
  if not os.path.exists(path):
    return None
  changed = resume.defining_changes(stage, sub_dir)
  if changed:
    if stage.allow_config_change:
      return None
    raise resume.finished_stage_error(sub_dir, changed)
  with open(path) as f:
    return json.load(f)


def _check_init_dir(config, stages: dict) -> None:
  """Every `init_dir/<network>` folder the stages start from exists; else
  one error listing the missing ones, before anything trains."""
  if not config.init_dir:
    return
  missing = sorted({s.model.name for s in stages.values()
                    if s.init.path == os.path.join(config.init_dir,
                                                   s.model.name)
                    and not os.path.isdir(s.init.path)})
  if missing:
    raise FileNotFoundError(
        f'config.init_dir = {config.init_dir!r} has no converted weights for '
        f'{", ".join(missing)} (expected a folder per network, '
        f'{os.path.join(config.init_dir, missing[0])}/). Write them with '
        'python -m cxr_jax.convert --all --src_dir=<torchvision/timm files> '
        f'--out_dir={config.init_dir}, or set --config.init_dir= to train '
        'from scratch.')


def run_sequence(config, workdir: str) -> dict:
  """Runs `config.sequence`'s stages, then `config.report`."""
  config.sequence = stage_names(config.sequence)
  stages = {n: stage_config(config, n, workdir)  # checked before training
            for n in config.sequence}
  _check_init_dir(config, stages)
  os.makedirs(workdir, exist_ok=True)
  ckpt.write_json(os.path.join(workdir, 'config.json'), config.to_dict())
  from cxr_jax import train  # pylint: disable=g-import-not-at-top
  summaries = {}
  for i, name in enumerate(config.sequence):
    sub_dir = os.path.join(workdir, name)
    done = _finished(stages[name], sub_dir)
    if done is not None:
      summaries[name] = done
      logging.info('[%d/%d] %s: already done, skipped.', i + 1,
                   len(config.sequence), name)
      continue
    logging.info('[%d/%d] %s: training in %s', i + 1, len(config.sequence),
                 name, sub_dir)
    t0 = time.time()
    summary = train.run(stages[name], sub_dir)
    summary['wall_s'] = time.time() - t0
    ckpt.write_json(os.path.join(sub_dir, DONE), summary)
    summaries[name] = summary
  if config.report:
    REPORTS.get(config.report, key='report')(config, workdir, stages)
  return summaries
