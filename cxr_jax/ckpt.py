"""Checkpoints with orbax: latest (resume) and best (by a validation metric).

Layout of a workdir:
  ckpt/<step>/{state,data,meta}   latest train state, data iterator, counters
  best/<step>/{variables,meta}    params + batch_stats of the best evaluation
Orbax finalises a step by renaming a temporary folder, so a run killed while
saving leaves the previous checkpoint intact.

Errors name the checkpoint folder and say what is wrong: a checkpoint whose
tree does not fit the run's state lists the differing variables
(`describe_mismatch`), and a failed write says which folder and why (e.g. no
space left on device).
"""
from __future__ import annotations

from collections.abc import Mapping
import errno
import json
import os
import re
from typing import Any

from absl import logging
import jax
import orbax.checkpoint as ocp

# How many names of each kind a mismatch message lists.
_SHOWN = 5


def manager(directory: str, keep: int, items: tuple[str, ...]):
  """An orbax CheckpointManager of `items` in `directory` (synchronous)."""
  opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                      enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(directory), options=opts,
                               item_names=items)


def _key_str(key) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """'a/b/c' -> shape of every array leaf of a pytree, or of an orbax
  metadata tree (whose leaves have `.shape`)."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: hasattr(x, 'shape'))
  return {'/'.join(_key_str(k) for k in path): tuple(leaf.shape)
          for path, leaf in leaves if hasattr(leaf, 'shape')}


def describe_mismatch(stored: Mapping[str, tuple[int, ...]],
                      wanted: Mapping[str, tuple[int, ...]]) -> str:
  """A one-line summary of how two {name: shape} maps differ ('' if equal):
  names only in the checkpoint, only in the run, and different shapes."""

  def some(names: list[str]) -> str:
    more = f', ... ({len(names) - _SHOWN} more)' if len(names) > _SHOWN else ''
    return ', '.join(names[:_SHOWN]) + more

  only_stored = sorted(set(stored) - set(wanted))
  only_wanted = sorted(set(wanted) - set(stored))
  reshaped = [f'{k} {tuple(stored[k])} in the checkpoint, {tuple(wanted[k])} '
              'here' for k in sorted(set(stored) & set(wanted))
              if tuple(stored[k]) != tuple(wanted[k])]
  parts = []
  if only_stored:
    parts.append(f'{len(only_stored)} only in the checkpoint '
                 f'({some(only_stored)})')
  if only_wanted:
    parts.append(f'{len(only_wanted)} only in this run ({some(only_wanted)})')
  if reshaped:
    parts.append(f'{len(reshaped)} with other shapes ({some(reshaped)})')
  return '; '.join(parts)


def short_error(e: BaseException, limit: int = 300) -> str:
  """`Type: first line of the message`, cut at `limit` characters."""
  text = str(e).strip().splitlines()[0] if str(e).strip() else ''
  text = text if len(text) <= limit else text[:limit] + '...'
  return f'{type(e).__name__}: {text}'


def write_error(folder: str, step: int, e: Exception) -> Exception:
  """The error to raise for a failed checkpoint write: an OSError (with the
  errno the storage layer reported) naming `folder`, else a RuntimeError."""
  code = e.errno if isinstance(e, OSError) else None
  found = re.search(r"os_error_code='?(\d+)", str(e))
  if code is None and found:
    code = int(found.group(1))
  where = f'could not write checkpoint step {step} to {folder}'
  if code is None:
    return RuntimeError(f'{where} ({short_error(e)}).')
  fix = ('free space there' if code in (errno.ENOSPC, errno.EDQUOT) else
         'check the folder and its file system')
  return OSError(code, f'{where}: {os.strerror(code)}. To continue, {fix} '
                 '(or use another --workdir); the checkpoints already in the '
                 f'folder are kept. Cause: {short_error(e)}')


class Checkpointer:
  """The latest and the best checkpoint of one training run."""

  def __init__(self, workdir: str, keep_latest: int = 1):
    self.latest = manager(os.path.join(workdir, 'ckpt'), keep_latest,
                          ('state', 'data', 'meta'))
    self.best = manager(os.path.join(workdir, 'best'), 1,
                        ('variables', 'meta'))

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def _save(self, mngr: ocp.CheckpointManager, step: int,
            args: ocp.args.Composite) -> None:
    try:
      mngr.save(step, args=args, force=True)
      mngr.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise write_error(os.fspath(mngr.directory), step, e) from None

  def save_latest(self, step: int, state, data_state: dict, meta: dict):
    self._save(self.latest, step, ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave(meta)))

  def restore_latest(self, abstract_state) -> tuple[Any, dict, dict]:
    """(state, data iterator state, meta) of the latest step.

    Raises ValueError naming the checkpoint and the differing variables when
    it was written for another tree (another model or optimizer config).
    """
    step = self.latest.latest_step()
    where = os.path.join(os.fspath(self.latest.directory), str(step))
    try:
      r = self.latest.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      try:
        stored = shapes(self.latest.item_metadata(step)['state'].tree)
      except Exception:  # pylint: disable=broad-except
        stored = None  # unreadable metadata: report orbax's error alone
      diff = describe_mismatch(stored, shapes(abstract_state)) if (
          stored is not None) else ''
      if not diff:
        raise RuntimeError(f'{where}: could not restore the checkpoint '
                           f'({short_error(e)}).') from e
      raise ValueError(
          f'{where}: the checkpoint does not fit this run: {diff}. It was '
          'written by a run with another model or optimizer; resume with '
          'that config, or start this one in a new workdir.') from None
    return r['state'], r['data'], r['meta']

  def save_best(self, step: int, variables, meta: dict):
    # A run killed after writing `best/<step>` but before `ckpt/<step>`
    # resumes from an earlier latest checkpoint and reaches this step (and
    # the same value) again; orbax refuses to write an existing step.
    if step in self.best.all_steps():
      self.best.delete(step)
    self._save(self.best, step, ocp.args.Composite(
        variables=ocp.args.StandardSave(variables),
        meta=ocp.args.JsonSave(meta)))

  def close(self):
    """Closes both managers; safe after a failed save (a manager that fails
    to close is logged in one line, so the error that stopped the run stays
    the last thing printed)."""
    for mngr in (self.latest, self.best):
      try:
        mngr.close()
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('Closing the checkpoint manager of %s: %s',
                        mngr.directory, short_error(e))


def write_json(path: str, obj) -> None:
  """Writes JSON atomically (process 0 only)."""
  if jax.process_index() != 0:
    return
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, path)
