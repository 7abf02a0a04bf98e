"""Checkpoints with orbax: latest (resume) and best (by a validation metric).

Layout of a workdir:
  ckpt/<step>/{state,data,meta}   latest train state, data iterator, counters
  best/<step>/{variables,meta}    params + batch_stats of the best evaluation
Orbax finalises a step by renaming a temporary folder, so a run killed while
saving leaves the previous checkpoint intact.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def manager(directory: str, keep: int, items: tuple[str, ...]):
  """An orbax CheckpointManager of `items` in `directory` (synchronous)."""
  opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                      enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(directory), options=opts,
                               item_names=items)


class Checkpointer:
  """The latest and the best checkpoint of one training run."""

  def __init__(self, workdir: str, keep_latest: int = 1):
    self.latest = manager(os.path.join(workdir, 'ckpt'), keep_latest,
                           ('state', 'data', 'meta'))
    self.best = manager(os.path.join(workdir, 'best'), 1,
                         ('variables', 'meta'))

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def save_latest(self, step: int, state, data_state: dict, meta: dict):
    self.latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave(meta)), force=True)
    self.latest.wait_until_finished()

  def restore_latest(self, abstract_state) -> tuple[Any, dict, dict]:
    step = self.latest.latest_step()
    r = self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
    return r['state'], r['data'], r['meta']

  def save_best(self, step: int, variables, meta: dict):
    # A run killed after writing `best/<step>` but before `ckpt/<step>`
    # resumes from an earlier latest checkpoint and reaches this step (and
    # the same value) again; orbax refuses to write an existing step.
    if step in self.best.all_steps():
      self.best.delete(step)
    self.best.save(step, args=ocp.args.Composite(
        variables=ocp.args.StandardSave(variables),
        meta=ocp.args.JsonSave(meta)), force=True)
    self.best.wait_until_finished()

  def close(self):
    self.latest.close()
    self.best.close()


def write_json(path: str, obj) -> None:
  """Writes JSON atomically (process 0 only)."""
  if jax.process_index() != 0:
    return
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, path)
