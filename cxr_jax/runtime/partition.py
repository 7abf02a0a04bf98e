"""Parameter layout rules: `config.sharding_rules` -> a `PartitionSpec` per
parameter, checked against the mesh axis sizes without touching devices.

`config.sharding_rules` is a sequence whose entries are either a
`(regex, spec)` pair, matched (`re.fullmatch`) against the '/'-joined
parameter path ('blocks_3/mlp/fc1/kernel') like the freezing `schedule`, or a
bare string naming a preset (`PRESETS`: a list of such pairs) or a strategy
applied to every parameter not matched yet. The first matching pair wins;
parameters no pair matches are replicated, so the default `()` replicates
everything. A `spec` is

  * a tuple like a `PartitionSpec`: one entry per leading dimension, each
    None, a mesh axis name or a tuple of axis names ((None, 'model') shards a
    kernel's columns over 'model');
  * 'replicate';
  * 'fsdp' or 'fsdp:<axis>': the largest dimension that the axis size
    divides is sharded over the axis ('model' by default), as big_vision's
    fsdp strategy does; a parameter with no such dimension is replicated
    (the layout's log line counts the sharded ones).

An explicit spec that does not fit is an error, never a silent fallback: an
axis not in the mesh, an axis used twice, more entries than the parameter has
dimensions, or a dimension the axis sizes do not divide (the message names the
parameter, its shape, the spec and the mesh).

  config.sharding_rules = ('fsdp',)
  config.sharding_rules = ('megatron_vit', 'fsdp')   # ViT blocks tensor-
                                                     # parallel, the rest fsdp
  config.sharding_rules = (('.*mlp/fc1/kernel', (None, 'model')), 'fsdp')

On the command line (ml_collections parses tuple fields with
`ast.literal_eval`, and repeated flags form one tuple):

  --config.sharding_rules=megatron_vit --config.sharding_rules=fsdp

`cxr_jax.runtime.sharding` places the train state by these specs.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

import jax
from absl import logging
from jax.sharding import PartitionSpec as P

STRATEGIES = ('replicate', 'fsdp', 'fsdp:<axis>')

# Megatron-style tensor parallelism of the ViT blocks (cxr_jax/models/vit.py
# names): the attention's query/key/value kernels (D, heads, head_dim) split
# by head, the output projection by its input rows; the MLP's fc1 by columns
# and fc2 by rows, so that each block needs one reduction per half.
_MEGATRON_VIT = (
    (r'(.*/)?attn/(query|key|value)/kernel', (None, 'model', None)),
    (r'(.*/)?attn/(query|key|value)/bias', ('model', None)),
    (r'(.*/)?attn/proj/kernel', ('model', None)),
    (r'(.*/)?mlp/fc1/kernel', (None, 'model')),
    (r'(.*/)?mlp/fc1/bias', ('model',)),
    (r'(.*/)?mlp/fc2/kernel', ('model', None)),
)

PRESETS: dict[str, tuple] = {
    'replicate': (('.*', 'replicate'),),
    'fsdp': (('.*', 'fsdp'),),
    'megatron_vit': _MEGATRON_VIT,
}


def expand_rules(rules: Sequence[Any] | str) -> list[tuple[str, Any]]:
  """`config.sharding_rules` as `(regex, spec)` pairs, presets expanded."""
  if isinstance(rules, str):
    rules = (rules,)
  out = []
  for rule in rules:
    if isinstance(rule, str):
      if rule in PRESETS:
        out.extend(PRESETS[rule])
      elif _is_strategy(rule):
        out.append(('.*', rule))
      else:
        raise ValueError(
            f'config.sharding_rules: unknown preset {rule!r}; presets: '
            f'{", ".join(sorted(PRESETS))}; strategies: '
            f'{", ".join(STRATEGIES)}; or give (regex, spec) pairs.')
    elif isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(
        rule[0], str):
      out.append((rule[0], rule[1]))
    else:
      raise ValueError(f'config.sharding_rules: {rule!r} is neither a preset '
                       'name nor a (regex, spec) pair.')
  return out


def _is_strategy(spec: Any) -> bool:
  return isinstance(spec, str) and (
      spec in ('replicate', 'fsdp') or spec.startswith('fsdp:'))


def _check_spec(pattern: str, spec: Any, sizes: Mapping[str, int]) -> Any:
  """Validates a rule's spec against the mesh; returns it normalised."""
  where = f'config.sharding_rules ({pattern!r}, {spec!r})'
  if spec is None:
    return ()
  if isinstance(spec, str):
    if not _is_strategy(spec):
      raise ValueError(f'{where}: a string spec must be one of '
                       f'{", ".join(STRATEGIES)}; axis names go in a tuple, '
                       f"e.g. (None, {spec!r}).")
    axis = spec.partition(':')[2] or 'model'
    if spec.startswith('fsdp') and axis not in sizes:
      raise ValueError(f'{where}: axis {axis!r} is not in the mesh '
                       f'{dict(sizes)}; set config.mesh, e.g. '
                       f"(('data', -1), ('{axis}', 2)).")
    return spec
  spec = tuple(spec)
  used = []
  for entry in spec:
    names = entry if isinstance(entry, (tuple, list)) else (entry,)
    for name in names:
      if name is None and entry is None:
        continue
      if name not in sizes:
        raise ValueError(f'{where}: axis {name!r} is not in the mesh '
                         f'{dict(sizes)}.')
      if name in used:
        raise ValueError(f'{where}: axis {name!r} is used twice.')
      used.append(name)
  return tuple(tuple(e) if isinstance(e, list) else e for e in spec)


def _spec_for(name: str, shape: tuple[int, ...], pattern: str, spec: Any,
              sizes: Mapping[str, int]) -> P:
  if spec == 'replicate' or spec == ():
    return P()
  if isinstance(spec, str):  # fsdp[:axis]
    axis = spec.partition(':')[2] or 'model'
    for d in sorted(range(len(shape)), key=lambda d: (-shape[d], -d)):
      if shape[d] >= sizes[axis] and shape[d] % sizes[axis] == 0:
        return P(*([None] * d + [axis]))
    return P()
  if len(spec) > len(shape):
    raise ValueError(f'Parameter {name} of shape {shape}: the sharding rule '
                     f'({pattern!r}, {spec!r}) has {len(spec)} entries for '
                     f'{len(shape)} dimensions.')
  for dim, entry in zip(shape, spec):
    if entry is None:
      continue
    names = entry if isinstance(entry, tuple) else (entry,)
    n = math.prod(sizes[a] for a in names)
    if dim % n:
      raise ValueError(
          f'Parameter {name} of shape {shape}: dimension {dim} is not '
          f'divisible by {n} (mesh axes {names} of {dict(sizes)}) in the '
          f'sharding rule ({pattern!r}, {spec!r}). Change config.mesh or '
          'the rule.')
  return P(*spec)


def check_rules(rules: Sequence[Any] | str, sizes: Mapping[str, int]
                ) -> list[tuple[re.Pattern, str, Any]]:
  """Validates `config.sharding_rules` against the mesh axis sizes (all but
  divisibility, which needs the parameter shapes); returns them compiled."""
  out = []
  for pattern, spec in expand_rules(rules):
    try:
      regex = re.compile(pattern)
    except re.error as e:
      raise ValueError(f'config.sharding_rules: bad regex {pattern!r}: '
                       f'{e}.') from None
    out.append((regex, pattern, _check_spec(pattern, spec, sizes)))
  return out


def partition_specs(params, rules: Sequence[Any] | str,
                    sizes: Mapping[str, int]):
  """A `PartitionSpec` for each leaf of `params` (arrays or shape structs).

  Pure: `sizes` maps mesh axis names to sizes, so the rules can be checked
  without the devices.
  """
  compiled = check_rules(rules, sizes)
  hits = [0] * len(compiled)

  def one(path, x):
    name = path_str(path)
    for i, (regex, pattern, spec) in enumerate(compiled):
      if regex.fullmatch(name):
        hits[i] += 1
        return _spec_for(name, tuple(x.shape), pattern, spec, sizes)
    return P()

  specs = jax.tree_util.tree_map_with_path(one, params)
  for (_, pattern, spec), n in zip(compiled, hits):
    if not n:
      logging.warning('config.sharding_rules: (%r, %r) matches no parameter.',
                      pattern, spec)
  return specs


def path_str(path) -> str:
  """'/'-joins a pytree key path (dict keys, attributes, sequence indices)."""
  parts = []
  for k in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return '/'.join(parts)
