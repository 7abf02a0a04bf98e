"""Model variables on disk: the converted-weights folder, restoring a run's
best checkpoint, and initialising a model from either.

A converted-weights folder (written by `python -m cxr_jax.convert`, or
`save`) holds `variables/` (an orbax checkpoint of `{'params': ...,
'batch_stats': ...}` as numpy) and `meta.json` (model name, source file, its
sha256). `restore(path)` reads that, or a training workdir's best checkpoint.

`config.init = dict(path=..., rules=((target_regex, source_template), ...),
dont_load=(regex, ...))`. Every parameter and batch statistic of the new model
is looked up in the loaded tree under its own name, or under the name the
first matching rule gives (`re.sub` on the '/'-joined path, e.g.
`('densenet/(.*)', r'\\1')` loads a stage-1 DenseNet into the dual encoder).
Names matching `dont_load` keep their fresh initialisation (a new classifier
head). Anything else that is missing or mis-shaped is an error listing every
such name. A 3-channel first convolution loaded into a 1-channel model is
summed over its input channels: for a grey image replicated to RGB this gives
the same output, so ImageNet features carry over to 1-channel CXRs.
"""
from __future__ import annotations

from collections.abc import Mapping
import json
import os
import re
from typing import Any, Sequence

import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from cxr_jax import ckpt
from cxr_jax.models import layers

META = 'meta.json'


def _map_leaves(fn, tree: Any) -> Any:
  """`fn` of every leaf of nested mappings, as nested dicts."""
  if isinstance(tree, Mapping):
    return {k: _map_leaves(fn, v) for k, v in tree.items()}
  return fn(tree)


def _to_numpy(tree: Any) -> Any:
  return _map_leaves(np.asarray, tree)


def save(variables: Mapping[str, Any], out_dir: str,
         meta: Mapping[str, Any] | None = None) -> None:
  """Writes a converted-weights folder: `out_dir/variables` (+ `meta.json`)."""
  out_dir = os.path.abspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(out_dir, 'variables'), _to_numpy(variables),
               force=True)
  if meta is not None:
    with open(os.path.join(out_dir, META), 'w') as f:
      json.dump(dict(meta), f, indent=2)


def load(out_dir: str) -> dict[str, Any]:
  """Reads a converted-weights folder as nested dicts of numpy arrays."""
  path = os.path.join(os.path.abspath(out_dir), 'variables')
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{out_dir}: no variables/ folder; not a folder '
                            'written by python -m cxr_jax.convert?')
  with ocp.PyTreeCheckpointer() as ckptr:
    meta = ckptr.metadata(path)
    tree = meta.item_metadata.tree if hasattr(meta, 'item_metadata') else meta
    restored = ckptr.restore(path, args=ocp.args.PyTreeRestore(
        restore_args=_map_leaves(
            lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)))
  return _to_numpy(restored)


def _load_best(path: str) -> tuple[dict[str, Any], str]:
  """The variables of the best checkpoint under `path` (a workdir or its
  `best/`), and that checkpoint's folder."""
  best = os.path.join(path, 'best') if os.path.isdir(
      os.path.join(path, 'best')) else path
  mngr = ckpt.manager(best, 1, ('variables', 'meta'))
  try:
    step = mngr.latest_step()
    if step is None:
      raise FileNotFoundError(
          f'{path}: no best checkpoint under {best} (expected a training '
          'workdir with best/<step>/, or a folder written by python -m '
          'cxr_jax.convert).')
    r = mngr.restore(step, args=ocp.args.Composite(
        variables=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
  finally:
    mngr.close()
  return _to_numpy(r['variables']), os.path.join(best, str(step))


def restore(path: str, like: Any = None) -> dict:
  """Loads `{'params': ..., 'batch_stats': ...}` as numpy from `path`.

  `path` may be a training workdir (its best checkpoint is used: chosen on
  validation), a workdir's `best/` folder, or a converted-weights folder.
  `like`: the variables (arrays or shape structs, same collections) the
  caller will use; when given, weights of another tree (a run of another
  model) are a ValueError naming the checkpoint and the differing variables.
  """
  path = os.path.abspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist (expected a training '
                            'workdir or a folder written by python -m '
                            'cxr_jax.convert).')
  try:
    if os.path.exists(os.path.join(path, META)):
      variables, where = load(path), path
    else:
      variables, where = _load_best(path)
  except FileNotFoundError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'{path}: could not read the weights '
                     f'({ckpt.short_error(e)}).') from e
  if like is not None:
    diff = ckpt.describe_mismatch(ckpt.shapes(variables), ckpt.shapes(like))
    if diff:
      raise ValueError(f'{where}: the weights do not fit the model: {diff}. '
                       'They were written for another model (config.model).')
  return variables


def _adapt(name: str, src: np.ndarray, shape: tuple[int, ...]):
  """Returns src reshaped for `shape`, or None if it cannot be adapted."""
  if src.shape == tuple(shape):
    return src
  if (src.ndim == 4 and len(shape) == 4 and src.shape[:2] == shape[:2] and
      src.shape[3] == shape[3] and shape[2] == 1 and src.shape[2] == 3):
    logging.info('weights: %s summed over 3 input channels for 1-channel '
                 'input.', name)
    return src.sum(axis=2, keepdims=True)
  return None


def merge(init_vars, loaded, *, rules: Sequence = (),
          dont_load: Sequence[str] = ()) -> dict:
  """Returns `init_vars` with every leaf replaced by its loaded counterpart."""
  target = layers.flatten(init_vars)
  source = layers.flatten(loaded)
  rules = [(re.compile(t), s) for t, s in rules]
  skip = [re.compile(p) for p in dont_load]
  out, missing, misshaped, used = {}, [], [], set()
  for key, init in target.items():
    coll, _, name = key.partition('/')
    if any(p.fullmatch(name) for p in skip):
      out[key] = init
      continue
    src_name = name
    for pattern, template in rules:
      if pattern.fullmatch(name):
        src_name = pattern.sub(template, name)
        break
    src_key = f'{coll}/{src_name}'
    if src_key not in source:
      missing.append(f'{key} (looked for {src_key})' if src_key != key else key)
      continue
    value = _adapt(key, np.asarray(source[src_key]), np.shape(init))
    if value is None:
      misshaped.append(f'{key}: model {tuple(np.shape(init))} vs loaded '
                       f'{tuple(np.shape(source[src_key]))}')
      continue
    used.add(src_key)
    out[key] = value.astype(np.asarray(init).dtype)
  if missing or misshaped:
    lines = [f'  missing: {m}' for m in missing] + [
        f'  mis-shaped: {m}' for m in misshaped]
    raise ValueError(
        f'config.init: {len(missing)} missing and {len(misshaped)} mis-shaped '
        'variables (use config.init.dont_load for parts to keep freshly '
        'initialised, e.g. a new head, or config.init.rules to rename):\n' +
        '\n'.join(lines[:50]))
  unused = sorted(set(source) - used)
  if unused:
    logging.info('weights: %d loaded variables not used (e.g. %s).',
                 len(unused), ', '.join(unused[:5]))
  return layers.unflatten(out)


def init_from(init_cfg, init_vars) -> dict:
  """Loads `init_cfg.path` into `init_vars` (see module docstring)."""
  loaded = restore(init_cfg.path)
  logging.info('Initialising from %s', init_cfg.path)
  try:
    return merge(init_vars, loaded, rules=init_cfg.rules,
                 dont_load=init_cfg.dont_load)
  except ValueError as e:
    raise ValueError(f'config.init.path = {init_cfg.path}: {e}') from None
