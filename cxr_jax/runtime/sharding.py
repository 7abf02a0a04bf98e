"""The device mesh, the train state's layout over it, and placement.

`config.mesh` is a sequence of `(axis name, size)` pairs; one size may be -1
(the devices left over). The devices, in `jax.devices()` order (process by
process), are reshaped to those sizes, so the last axis runs over neighbouring
devices: put the model-parallel axis last to keep its groups inside one host.
Batches are always split over the `'data'` axis only (`P('data')`): the other
axes replicate the batch and exist to shard parameters.

  config.mesh = (('data', -1),)                 # default: data parallelism
  config.mesh = (('data', -1), ('model', 4))    # + 4-way parameter sharding
  --config.mesh="(('data', -1), ('model', 4))"   or
  --config.mesh=data:-1 --config.mesh=model:4

The parameters are laid out by `config.sharding_rules` (the rule language is
in `cxr_jax.runtime.partition`). The rest of the train state follows the
parameters: any leaf whose path ends with a parameter's path and that has the
parameter's shape (Adam's `mu` and `nu`, SGD's momentum) gets that
parameter's sharding; every other leaf (step, RNG, counters, BatchNorm
statistics) is replicated. XLA's SPMD partitioner inserts the collectives;
there are no activation annotations.

`put`, `abstract` and `to_host` move trees onto and off such layouts, also
when the mesh spans several processes.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cxr_jax.runtime import partition
# Re-exported: the trainer checks `config.sharding_rules` against its mesh
# (`mesh_shape`) before it builds anything.
from cxr_jax.runtime.partition import check_rules  # pylint: disable=unused-import

DATA = 'data'
DEFAULT_MESH = ((DATA, -1),)


# ---------------------------------------------------------------- the mesh --


def mesh_axes(mesh_cfg: Sequence[Any]) -> list[tuple[str, int]]:
  """Normalises `config.mesh` to `[(name, size), ...]`.

  Accepts `(name, size)` pairs, 'name:size' strings and the flat
  `(name, size, name, size)` tuple that repeated `--config.mesh=(...)` flags
  produce.
  """
  if isinstance(mesh_cfg, str):
    mesh_cfg = mesh_cfg.split(',')
  items, axes = list(mesh_cfg), []
  i = 0
  while i < len(items):
    item = items[i]
    if isinstance(item, (tuple, list)) and len(item) == 2:
      name, size = item
      i += 1
    elif isinstance(item, str) and ':' in item:
      name, _, size = item.partition(':')
      i += 1
    elif isinstance(item, str) and i + 1 < len(items):
      name, size = item, items[i + 1]
      i += 2
    else:
      raise ValueError(
          f'config.mesh = {tuple(mesh_cfg)!r}: expected (axis name, size) '
          "pairs such as (('data', -1), ('model', 2)), or 'data:-1' strings.")
    try:
      axes.append((str(name).strip(), int(size)))
    except ValueError:
      raise ValueError(f'config.mesh: size {size!r} of axis {name!r} is not an '
                       'integer.') from None
  names = [n for n, _ in axes]
  if len(set(names)) != len(names) or not all(names):
    raise ValueError(f'config.mesh: axis names {names} must be distinct and '
                     'non-empty.')
  if DATA not in names:
    raise ValueError(f"config.mesh has no {DATA!r} axis ({names}): batches are "
                     f"split over it; add ('{DATA}', -1).")
  return axes


def mesh_shape(mesh_cfg: Sequence[Any], num_devices: int) -> dict[str, int]:
  """`{axis: size}` with the -1 axis resolved against `num_devices`."""
  axes = mesh_axes(mesh_cfg)
  rest = [n for n, s in axes if s == -1]
  bad = [(n, s) for n, s in axes if s == 0 or s < -1]
  if bad or len(rest) > 1:
    raise ValueError(f'config.mesh = {axes}: sizes must be positive, with at '
                     'most one -1 (the remaining devices).')
  known = math.prod(s for _, s in axes if s != -1)
  if num_devices % known or (not rest and known != num_devices):
    raise ValueError(f'config.mesh = {axes} does not fit the {num_devices} '
                     f'devices (the sizes multiply to {known}).')
  return {n: (num_devices // known if s == -1 else s) for n, s in axes}


def make_mesh(mesh_cfg: Sequence[Any] = DEFAULT_MESH, devices=None) -> Mesh:
  """The mesh of `config.mesh` over all (or the given) devices."""
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(mesh_cfg, len(devices))
  return Mesh(np.asarray(devices).reshape(tuple(shape.values())),
              tuple(shape))


def process_data_shard(mesh: Mesh) -> tuple[int, int]:
  """`(shard_index, shard_count)` of this process's rows of a global batch.

  A process reads the rows of the `'data'` positions its devices sit on;
  processes whose devices share those positions (a model axis across hosts)
  read the same rows. With a 1-D mesh this is `(process_index,
  process_count)`.
  """
  axis = mesh.axis_names.index(DATA)
  me = jax.process_index()
  pos = sorted({int(idx[axis]) for idx in np.ndindex(mesh.devices.shape)
                if mesh.devices[idx].process_index == me})
  n = mesh.shape[DATA]
  if not pos or pos != list(range(pos[0], pos[0] + len(pos))) or (
      n % len(pos) or pos[0] % len(pos)):
    raise ValueError(
        f'Process {me} holds the {DATA!r} positions {pos} of {n}: each process '
        'must hold one aligned block. Put the model axis last in config.mesh '
        'with a size that divides, or is a multiple of, the devices per '
        'process.')
  return pos[0] // len(pos), n // len(pos)


# ------------------------------------------------------------- the layout --


def state_shardings(state, params, rules: Sequence[Any] | str, mesh: Mesh):
  """A `NamedSharding` for every leaf of `state` (a tree holding `params`).

  `params` get theirs from `rules`; a leaf whose path ends with a
  parameter's path and that has its shape (the optimizer's moments) shares
  it; everything else is replicated.
  """
  specs = partition.partition_specs(params, rules, dict(mesh.shape))
  by_path = {}
  for (path, x), spec in zip(
      jax.tree_util.tree_flatten_with_path(params)[0],
      jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, P))):
    by_path[partition.path_str(path)] = (tuple(x.shape), spec)

  def one(path, x):
    parts = partition.path_str(path).split('/')
    for i in range(len(parts)):
      hit = by_path.get('/'.join(parts[i:]))
      if hit is not None and hit[0] == tuple(getattr(x, 'shape', ())):
        return NamedSharding(mesh, hit[1])
    return NamedSharding(mesh, P())

  out = jax.tree_util.tree_map_with_path(one, state)
  _log_layout(params, specs, mesh)
  return out


def _log_layout(params, specs, mesh: Mesh) -> None:
  leaves = jax.tree.leaves(params)
  spec_leaves = jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, P))
  total = per_device = 0.0
  sharded = 0
  for x, spec in zip(leaves, spec_leaves):
    size = math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
    n = math.prod(mesh.shape[a] for e in spec if e is not None
                  for a in (e if isinstance(e, tuple) else (e,)))
    total += size
    per_device += size / n
    sharded += n > 1
  logging.info('Mesh %s; %d of %d parameters sharded: %.1f of %.1f MiB of '
               'parameters per device.', dict(mesh.shape), sharded,
               len(leaves), per_device / 2**20, total / 2**20)


# -------------------------------------------------------------- placement --


def put(tree, shardings):
  """Puts a tree whose values are the same on every process on `shardings`.

  `shardings` is one sharding or a tree of them matching `tree`.
  `jax.device_put` cannot move an array committed to one local device onto
  the devices of other processes (multi-host); numpy values it can, so such
  arrays go through the host (PRNG keys as their key data). Arrays already on
  their sharding are returned as they are.
  """
  def one(x, sharding):
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x
    if (jax.process_count() > 1 and isinstance(x, jax.Array) and
        x.is_fully_addressable):
      if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(
            one(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x))
      x = np.asarray(x)
    return jax.device_put(x, sharding)
  if isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda x: one(x, shardings), tree)
  return jax.tree.map(one, tree, shardings)


def abstract(tree, shardings):
  """`jax.ShapeDtypeStruct`s with shardings: an orbax restore target."""
  def one(x, sharding):
    if not hasattr(x, 'shape'):
      return x
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  return jax.tree.map(one, tree, shardings)


def to_host(tree):
  """The whole value of every array as numpy, on every process.

  Arrays sharded over several processes are all-gathered; the rest (local or
  replicated) are fetched as `jax.device_get` would.
  """
  def one(x):
    if (isinstance(x, jax.Array) and not x.is_fully_addressable and
        not x.is_fully_replicated):
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return x
  return jax.device_get(jax.tree.map(one, tree))
