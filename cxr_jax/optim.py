"""Optimizers from config and freezing by a schedule of regex patterns.

`config.schedule` is a sequence of `(regex, settings)` pairs matched against
'/'-joined parameter paths ('densenet/conv0/kernel'); the first match wins and
every parameter must be matched. `settings=None` freezes the parameter
(`optax.set_to_zero()` in an `optax.multi_transform`; the modules whose
parameters are all frozen also run in inference mode,
`cxr_jax.training.freezing`); a dict overrides fields of `config.optim`
(e.g. `dict(lr=1e-3)`) for that group.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import flax
import optax

from cxr_jax.registry import check_choice

FROZEN = 'frozen'
OPTIMIZERS = ('adam', 'adamw', 'sgd')


def schedule_labels(params, schedule: Sequence) -> tuple[Any, dict[str, Any]]:
  """Labels each parameter with its schedule group.

  Returns `(labels, groups)`: `labels` mirrors `params` with 'g<i>' (the index
  of the first matching pattern) or 'frozen'; `groups` maps each label that
  occurs to its settings dict (None for frozen). Raises ValueError listing the
  parameters no pattern covers.
  """
  if not schedule:
    raise ValueError("config.schedule is empty: give at least ('.*', {}).")
  compiled = [(re.compile(p), s) for p, s in schedule]
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  labels, groups, uncovered = {}, {}, []
  for key in flat:
    name = '/'.join(key)
    for i, (pattern, settings) in enumerate(compiled):
      if pattern.fullmatch(name):
        label = FROZEN if settings is None else f'g{i}'
        groups[label] = None if settings is None else dict(settings)
        labels[key] = label
        break
    else:
      uncovered.append(name)
  if uncovered:
    shown = ', '.join(uncovered[:10])
    more = f' (and {len(uncovered) - 10} more)' if len(uncovered) > 10 else ''
    raise ValueError(f'config.schedule covers no pattern for {len(uncovered)} '
                     f'parameter(s): {shown}{more}. Add a pattern (e.g. '
                     "('.*', {})) so that every parameter is trained or frozen.")
  return flax.traverse_util.unflatten_dict(labels), groups


def _base(optim: Mapping[str, Any], overrides: Mapping[str, Any] | None):
  cfg = dict(optim)
  unknown = set(overrides or {}) - set(cfg)
  if unknown:
    raise ValueError(f'config.schedule settings {sorted(unknown)} are not '
                     f'config.optim keys ({sorted(cfg)}).')
  cfg.update(overrides or {})
  name = check_choice(cfg['name'], OPTIMIZERS, 'optim.name')
  if name == 'adam':
    tx = optax.adam(cfg['lr'], b1=cfg['b1'], b2=cfg['b2'], eps=cfg['eps'])
  elif name == 'adamw':
    tx = optax.adamw(cfg['lr'], b1=cfg['b1'], b2=cfg['b2'], eps=cfg['eps'],
                     weight_decay=cfg['weight_decay'])
  else:
    tx = optax.sgd(cfg['lr'], momentum=cfg['momentum'] or None)
  if cfg['weight_decay'] and name != 'adamw':
    tx = optax.chain(optax.add_decayed_weights(cfg['weight_decay']), tx)
  if cfg['grad_clip_norm']:
    tx = optax.chain(optax.clip_by_global_norm(cfg['grad_clip_norm']), tx)
  return tx


def make_optimizer(optim: Mapping[str, Any], schedule: Sequence, params):
  """Builds the optax transformation and the labels for `params`."""
  labels, groups = schedule_labels(params, schedule)
  if set(groups) == {FROZEN}:
    raise ValueError('config.schedule freezes every parameter: nothing would '
                     'train. Give at least one pattern settings (e.g. {}).')
  transforms = {label: optax.set_to_zero() if s is None else _base(optim, s)
                for label, s in groups.items()}
  return optax.multi_transform(transforms, labels), labels
