"""Name -> object registries with errors that list the valid choices.

Registries map a string (what a config names) to a lazily imported object, so
that building one model never imports every family, and a typo in a config
fails with the key and the choices spelled out.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


class Registry:
  """Maps names to `'module:attribute'` strings (imported on first use)."""

  def __init__(self, kind: str, entries: Mapping[str, str]):
    self.kind = kind
    self._entries = dict(entries)

  def names(self) -> list[str]:
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries

  def get(self, name: str, *, key: str = '') -> Any:
    """Returns the registered object; `key` names the config field in errors."""
    if name not in self._entries:
      where = f' (config key {key!r})' if key else ''
      raise ValueError(
          f'Unknown {self.kind} {name!r}{where}. Valid choices: '
          f'{", ".join(self.names())}.')
    module, _, attr = self._entries[name].partition(':')
    return getattr(importlib.import_module(module), attr)

  def register(self, name: str, target: str) -> None:
    self._entries[name] = target


def check_choice(value: str, choices, key: str) -> str:
  """Raises a ValueError naming `key` unless `value` is one of `choices`."""
  if value not in choices:
    raise ValueError(f'Config key {key!r} = {value!r} is not valid. Valid '
                     f'choices: {", ".join(map(str, choices))}.')
  return value


def call_with(fn: Callable[..., Any], kwargs: Mapping[str, Any], key: str):
  """Calls fn(**kwargs), turning an unexpected-keyword TypeError into a clear error."""
  try:
    return fn(**kwargs)
  except TypeError as e:
    raise TypeError(f'{key}: {e}') from e
