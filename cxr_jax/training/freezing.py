"""Freezing part of a model: one contract for every model family.

`config.schedule` labels every parameter (`optim.schedule_labels`); a pattern
whose settings are None freezes the parameters it matches. A *frozen module*
is a maximal subtree of the parameter tree whose parameters are all frozen
(`frozen_modules`: 'densenet' in Study B's stage 2, 'conv1', 'bn1',
'layer1_0', ... for a ResNet whose head alone trains). For every family, a
frozen module

1. gets no update (`optax.set_to_zero`, `optim.make_optimizer`) and no
   gradient (`stop_gradient` in the train step, so XLA drops its backward
   pass), and
2. runs in inference mode while the rest of the model trains: BatchNorm
   normalises with its running statistics and leaves them untouched, dropout
   is off. A linear probe of a pretrained backbone therefore trains its head
   on the features the backbone computes at test time.

Inference mode is applied from outside the model (`inference_mode`), so no
family needs a field for it: under `flax.linen.intercept_methods`, every
method call of a module at or below a frozen path gets `train=False`,
`deterministic=True` and `use_running_average=True` for those of these
arguments the call passes, and a BatchNorm or Dropout that its (training)
parent built with `use_running_average=False` / `deterministic=False` gets
that field switched on the bound instance, which lives for one `apply`.

Parameters frozen inside a module that also trains (e.g. a BatchNorm's scale
alone) are frozen parameters of a training module: they get no update, and
the module keeps its training mode. Likewise a parameter-free layer called
by a training module (e.g. the dropout before a VGG's head, called by the
model itself) follows that module's mode.

A model that still updates a frozen module's batch statistics (a module
that enters training mode some other way) cannot honour the contract:
`check_untouched` raises `FrozenModuleError`, naming the model and the
module, when the train step is traced, before the first update.
"""
from __future__ import annotations

import contextlib
import inspect
from typing import Any, Iterator, Mapping, Sequence

import flax.linen as nn
import jax

from cxr_jax import optim

# Argument/field -> its inference-mode value.
INFERENCE = {'train': False, 'deterministic': True,
             'use_running_average': True}
_FIELDS = ('deterministic', 'use_running_average')


class FrozenModuleError(ValueError):
  """A frozen module cannot run in inference mode while the model trains."""


def frozen_modules(labels: Mapping[str, Any] | None) -> tuple[str, ...]:
  """'/'-joined paths of the maximal subtrees of `labels` (the schedule's
  labels, `optim.schedule_labels`) whose parameters are all frozen."""
  out = []

  def visit(node, path):
    if not isinstance(node, Mapping):
      return
    leaves = jax.tree.leaves(node)
    if path and leaves and all(l == optim.FROZEN for l in leaves):
      out.append('/'.join(path))
      return
    for key, sub in node.items():
      visit(sub, path + (key,))

  visit(labels or {}, ())
  return tuple(out)


def _is_under(path: tuple[str, ...], frozen: Sequence[tuple[str, ...]]):
  return any(path[:len(f)] == f for f in frozen)


def _interceptor(frozen: Sequence[tuple[str, ...]]):
  """The `nn.intercept_methods` interceptor of `inference_mode`."""

  def intercept(next_fun, args, kwargs, context):
    module = context.module
    if module.scope is None or not _is_under(tuple(module.path), frozen):
      return next_fun(*args, **kwargs)
    for name in _FIELDS:
      value = (getattr(module, name) if name in module.__dataclass_fields__
               else None)
      if value is not None and value != INFERENCE[name]:
        object.__setattr__(module, name, INFERENCE[name])
    params = inspect.signature(context.orig_method).parameters
    if not any(name in params for name in INFERENCE):
      return next_fun(*args, **kwargs)
    bound = inspect.signature(context.orig_method).bind(*args, **kwargs)
    for name, value in INFERENCE.items():
      # `train` always; the others only where the caller passed a value (the
      # module's field is the default, and Flax refuses both at once).
      if name in params and (name == 'train' or
                             bound.arguments.get(name) is not None):
        bound.arguments[name] = value
    return next_fun(*bound.args, **bound.kwargs)

  return intercept


@contextlib.contextmanager
def inference_mode(frozen: Sequence[str]) -> Iterator[None]:
  """Within it, the modules at or below the '/'-joined `frozen` paths run in
  inference mode whatever `train` their callers pass."""
  if not frozen:
    yield
    return
  paths = [tuple(p.split('/')) for p in frozen]
  with nn.intercept_methods(_interceptor(paths)):
    yield


def check_untouched(old_stats, new_stats, frozen: Sequence[str],
                    model_name: str) -> None:
  """Raises `FrozenModuleError` unless the batch statistics under every
  frozen path are the (traced) arrays the step passed in, i.e. the model
  left them untouched. Called while the train step is traced."""
  for path in frozen:
    old, new = old_stats, new_stats
    for key in path.split('/'):
      if not isinstance(old, Mapping) or key not in old:
        old = None
        break
      old, new = old[key], new[key]
    if old is None:
      continue  # no batch statistics below this path
    if any(a is not b for a, b in zip(jax.tree.leaves(old),
                                      jax.tree.leaves(new))):
      raise FrozenModuleError(
          f"config.schedule freezes '{path}' of model {model_name!r}, but "
          'that module still updates its BatchNorm statistics in training '
          'mode: the model switches it to training mode in a way the '
          'trainer cannot override. Train it (give its parameters settings '
          'in config.schedule) or freeze a module that contains it.')
