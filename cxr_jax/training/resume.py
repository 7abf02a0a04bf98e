"""Resuming a run: its stored config must still describe it.

`workdir/config.json` records the config a run trains with. When a workdir
already holds a checkpoint, the new config is compared with the stored one
key by key (nested keys '.'-joined) before anything is restored or written:

* a change in a key that defines the run (model, data, augmentation, loss,
  optimizer, schedule, initial weights, seed, batch size, durations,
  evaluators, selection, ...: every key not in `OPERATIONAL`) is a
  `ConfigChangedError` that lists the changed keys and says how to start
  fresh or fork;
* `--config.allow_config_change=True` accepts such a change deliberately
  (e.g. training longer): config.json then holds the new config and a
  `history` list, one entry per accepted change with the time, the step
  of the checkpoint resumed and each changed key's old and new value, so
  the run's past settings are never lost;
* `OPERATIONAL` keys change how a run executes on a machine (logging and
  progress intervals, loader workers, the device mesh and parameter layout,
  the evaluation batch, the data cache folder), not what it computes
  beyond floating-point rounding; they may change freely and are recorded
  in `history` too.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

from absl import logging

CONFIG = 'config.json'
HISTORY = 'history'
OPERATIONAL = ('log_every_steps', 'progress_every_s', 'num_workers', 'mesh',
               'sharding_rules', 'eval_batch_size', 'data.cache_dir',
               'allow_config_change')
_ABSENT = '<absent>'


class ConfigChangedError(ValueError):
  """A run is resumed with a config that changes what defines it."""


def latest_checkpoint_step(workdir: str) -> int | None:
  """The newest finalised step under `workdir/ckpt/` (None: none)."""
  folder = os.path.join(workdir, 'ckpt')
  steps = [int(d) for d in os.listdir(folder) if d.isdigit()] if (
      os.path.isdir(folder)) else []
  return max(steps) if steps else None


def as_json(config) -> dict[str, Any]:
  """The config as config.json stores it (tuples as lists, ...)."""
  return json.loads(json.dumps(config.to_dict(), sort_keys=True, default=str))


def _flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping) and value:
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def differences(old: Mapping[str, Any], new: Mapping[str, Any]
                ) -> dict[str, tuple[Any, Any]]:
  """'.'-joined key -> (old, new) for every key whose value differs."""
  a, b = _flatten(old), _flatten(new)
  pairs = {k: (a.get(k, _ABSENT), b.get(k, _ABSENT))
           for k in sorted(set(a) | set(b))}
  # Compared as JSON text, so that NaN equals NaN.
  return {k: v for k, v in pairs.items()
          if json.dumps(v[0]) != json.dumps(v[1])}


def _defines_run(key: str) -> bool:
  return not any(key == k or key.startswith(k + '.') for k in OPERATIONAL)


def _error(workdir: str, step: int, changed) -> ConfigChangedError:
  lines = '\n'.join(f'  {k}: {old!r} -> {new!r}' for k, (old, new) in
                    changed.items())
  return ConfigChangedError(
      f'{workdir} holds a checkpoint (step {step}) of a run whose '
      f'{CONFIG} differs from this config in key(s) that define the run:\n'
      f'{lines}\nTo start fresh, give a new --workdir (or remove this one). '
      'To fork, give a new --workdir with --config.init.path='
      f'{workdir} (its best checkpoint). To continue this run with the '
      'change (e.g. more steps), add --config.allow_config_change=True; '
      f'the change is then recorded in {CONFIG} under {HISTORY!r}.')


def defining_changes(config, workdir: str) -> dict[str, tuple[Any, Any]]:
  """The keys that define the run (not `OPERATIONAL`) in which `config`
  differs from `workdir/config.json`; {} when there is none stored."""
  path = os.path.join(workdir, CONFIG)
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    stored = json.load(f)
  stored.pop(HISTORY, None)
  return {k: v for k, v in differences(stored, as_json(config)).items()
          if _defines_run(k)}


def finished_stage_error(workdir: str, changed) -> ConfigChangedError:
  """The error for a finished run (`done.json`) asked to serve a config it
  was not trained with."""
  lines = '\n'.join(f'  {k}: {old!r} -> {new!r}' for k, (old, new) in
                    changed.items())
  return ConfigChangedError(
      f'{workdir} is a finished stage trained with a config that differs '
      f'from this one in key(s) that define the run:\n{lines}\nIts results '
      'would be reported as if it had been trained with this config. Give '
      f'a new --workdir, or remove {workdir} to train this stage again, or '
      'add --config.stages.<stage>.allow_config_change=True to continue '
      f'training it with the change (recorded in its {CONFIG}).')


def config_to_write(config, workdir: str) -> dict[str, Any]:
  """What `workdir/config.json` must hold for this run.

  A fresh workdir gets the config. A workdir with a checkpoint keeps its
  `history`; a change in a key that defines the run raises
  `ConfigChangedError` unless `config.allow_config_change`, and every
  change becomes a `history` entry.
  """
  new = as_json(config)
  path = os.path.join(workdir, CONFIG)
  step = latest_checkpoint_step(workdir)
  if step is None or not os.path.isfile(path):
    return new
  with open(path) as f:
    stored = json.load(f)
  history = list(stored.pop(HISTORY, []))
  changed = differences(stored, new)
  defining = {k: v for k, v in changed.items() if _defines_run(k)}
  if defining and not config.allow_config_change:
    raise _error(workdir, step, defining)
  if changed:
    history.append(dict(
        time=time.strftime('%Y-%m-%dT%H:%M:%S'), step=step,
        changed={k: [old, new_] for k, (old, new_) in changed.items()}))
    logging.warning('Resuming %s at step %d with changed config keys: %s',
                    workdir, step, ', '.join(changed))
  if history:
    new[HISTORY] = history
  return new
