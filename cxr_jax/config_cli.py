"""Configs from the command line, with errors that name the key.

`main.py --config=FILE[:ARG] --config.KEY=VALUE ...` is parsed by
ml_collections' config flag: `FILE`'s `get_config(ARG)` builds the config,
the config is locked, and every override is checked against it. When that
fails, ml_collections reports an unknown key as a bare `AttributeError`
("'learning_rate'") or `KeyError`, a missing file only when the config is
first read, and a rejected preset inside a traceback. `parse_flags` runs the
same absl/ml_collections parsing; when it fails, it finds the cause and
raises a `ConfigError` that names the flag, the key (or file, or preset) and
what is wrong, with the closest existing keys for a typo. A valid command
line parses exactly as ml_collections parses it.

`ConfigError` is an `absl.flags.Error`, so `parse_flags_with_usage` (the
`flags_parser` of `main.py`'s `app.run`) prints it as one line, as absl
prints any flag error, and exits with status 1.
"""
from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys
from typing import Any, Sequence

import ml_collections
from absl import flags


class ConfigError(flags.Error):
  """A `--config` command line that cannot give a config."""


class ConfigFileError(ConfigError):
  """The config file does not exist."""


class ConfigArgError(ConfigError):
  """The config file's `get_config(ARG)` rejected ARG (an unknown preset)."""


class UnknownKeyError(ConfigError):
  """An override names a key the config does not have."""


class KeyTypeError(ConfigError):
  """An override's value does not parse as the key's type."""


# ------------------------------------------------------------- the file --


def split_config_arg(arg: str) -> tuple[str, str | None]:
  """'configs/x.py:demo' -> ('configs/x.py', 'demo') (first ':' splits, as
  ml_collections splits it)."""
  path, sep, preset = arg.partition(':')
  return path, (preset if sep else None)


def load_config_module(path: str, name: str = 'cxr_cli_config'):
  """Imports a config file by path (as ml_collections.config_flags does).

  Raises:
    ConfigFileError: `path` is not a file (the message lists the closest
      `.py` files of its folder).
  """
  if not os.path.isfile(path):
    folder = os.path.dirname(path) or '.'
    there = sorted(os.path.join(os.path.dirname(path), f)
                   for f in (os.listdir(folder) if os.path.isdir(folder)
                             else ()) if f.endswith('.py'))
    close = difflib.get_close_matches(path, there, n=3, cutoff=0.5)
    hint = f' Did you mean {_or(close)}?' if close else ''
    raise ConfigFileError(f'config file {path!r} does not exist (relative '
                          f'to {os.getcwd()}).{hint}')
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(config_arg: str) -> ml_collections.ConfigDict:
  """`get_config(ARG)` of `FILE[:ARG]`, locked.

  Raises:
    ConfigFileError: as `load_config_module`.
    ConfigArgError: `get_config` rejected ARG (its message says why).
  """
  path, preset = split_config_arg(config_arg)
  try:
    module = load_config_module(path)
  except ConfigFileError as e:
    raise ConfigFileError(f'--config={config_arg}: {e}') from None
  try:
    config = module.get_config(*([] if preset is None else [preset]))
  except (ValueError, TypeError, KeyError) as e:
    raise ConfigArgError(f'--config={config_arg}: {path} rejects the preset '
                         f'{preset!r}: {_text(e)}') from None
  config.lock()
  return config


# ------------------------------------------------------------- the keys --


def flat_keys(config: ml_collections.ConfigDict, prefix: str = ''
              ) -> list[str]:
  """Every dotted key of `config`, nested ConfigDicts and their fields."""
  out = []
  for k, v in config.items():
    out.append(prefix + k)
    if isinstance(v, ml_collections.ConfigDict):
      out += flat_keys(v, f'{prefix}{k}.')
  return out


def close_keys(key: str, keys: Sequence[str], n: int = 3) -> list[str]:
  """The keys of `keys` most like `key`: a sibling whose name is the other's
  initials (`optim.learning_rate` -> `optim.lr`) first, then difflib's."""
  parent, _, leaf = key.rpartition('.')

  def abbreviates(short: str, long: str) -> bool:  # 'lr', 'learning_rate'
    return '_' in long and short == ''.join(w[:1] for w in long.split('_'))

  abbrev = []
  for k in keys:
    k_parent, _, k_leaf = k.rpartition('.')
    if k_parent == parent and (abbreviates(leaf, k_leaf) or
                               abbreviates(k_leaf, leaf)):
      abbrev.append(k)
  close = difflib.get_close_matches(key, keys, n=n, cutoff=0.5)
  return list(dict.fromkeys(abbrev + close))[:n]


def check_key(config: ml_collections.ConfigDict, key: str,
              flag: str = '') -> None:
  """Raises UnknownKeyError unless dotted `key` is a field of `config`."""
  where = f'{flag}: ' if flag else ''
  node, path = config, []
  for part in key.split('.'):
    if '[' in part:  # an indexed key: ml_collections checks it
      return
    if not isinstance(node, ml_collections.ConfigDict):
      raise UnknownKeyError(
          f"{where}unknown config key {key!r}: {'.'.join(path)!r} is a "
          f'{type(node).__name__} ({_show(node)}), which has no fields.')
    if part not in node:
      inside = f"{'.'.join(path)!r} has" if path else 'the config has'
      close = close_keys(key, flat_keys(config))
      hint = (f' Did you mean {_or(close)}?' if close else
              f" Its keys: {', '.join(sorted(node.keys()))}.")
      raise UnknownKeyError(f'{where}unknown config key {key!r}: {inside} '
                            f'no field {part!r}.{hint}')
    node = node[part]
    path.append(part)


def check_tuple_elements(config: ml_collections.ConfigDict, key: str,
                         value: Any, flag: str = '') -> None:
  """Raises KeyTypeError when a tuple field whose elements are all numbers
  (or all strings) gets elements of the other kind: ml_collections reads
  `--config.data.image_size=abc` as the tuple ('abc',)."""
  old = _get(config, key)
  if not (isinstance(old, tuple) and old and isinstance(value, tuple)):
    return
  kinds = {_kind(x) for x in old}
  if len(kinds) != 1 or None in kinds:
    return
  kind, = kinds
  bad = [x for x in value if _kind(x) != kind]
  if bad:
    raise KeyTypeError(
        f'{flag or key}: config key {key!r} expects a tuple of {kind}s such as '
        f'{old!r}; got {value!r} ({bad[0]!r} is not a {kind}).')


def _kind(x: Any) -> str | None:
  if isinstance(x, bool):
    return None
  if isinstance(x, (int, float)):
    return 'number'
  return 'string' if isinstance(x, str) else None


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
  node = config
  for part in key.split('.'):
    node = node[part]
  return node


def _show(value: Any) -> str:
  if isinstance(value, ml_collections.ConfigDict):
    return f"fields {', '.join(sorted(value.keys()))}"
  return repr(value)


def _or(items: Sequence[str]) -> str:
  items = list(items)
  return ' or '.join([', '.join(items[:-1]), items[-1]] if len(items) > 1
                     else items)


def _text(e: BaseException) -> str:
  """An exception's message (KeyError's str() adds quotes)."""
  return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)


# ------------------------------------------------------- the command line --


def config_arg(argv: Sequence[str], name: str = 'config') -> str | None:
  """The last `--config=FILE[:ARG]` (or `--config FILE[:ARG]`) of argv."""
  found = None
  for i, a in enumerate(argv[1:], 1):
    m = re.fullmatch(rf'--?{re.escape(name)}(=(.*))?', a, re.S)
    if m:
      found = m.group(2) if m.group(1) else (
          argv[i + 1] if i + 1 < len(argv) else None)
  return found


def overrides(argv: Sequence[str], name: str = 'config'
              ) -> list[tuple[str, str | None, str]]:
  """`(key, value text or None, the flag as written)` of each
  `--config.KEY=VALUE` (or `--config.KEY VALUE`, `--[no]config.KEY`)."""
  out = []
  for i, a in enumerate(argv[1:], 1):
    m = re.fullmatch(rf'--?(no)?{re.escape(name)}\.([^=]+)(?:=(.*))?', a,
                     re.S)
    if not m:
      continue
    key, value = m.group(2), m.group(3)
    if (value is None and not m.group(1) and i + 1 < len(argv) and
        not argv[i + 1].startswith('-')):
      value = argv[i + 1]
    flag = a if value is None or '=' in a else f'{a}={value}'
    out.append((key, value, flag))
  return out


def _type_name(config: ml_collections.ConfigDict, key: str) -> str:
  parent, _, leaf = key.rpartition('.')
  holder = _get(config, parent) if parent else config
  t = holder.get_type(leaf)
  if isinstance(t, type) and issubclass(t, ml_collections.ConfigDict):
    return 'a group of fields (ConfigDict)'
  return getattr(t, '__name__', str(t))


def _explain(argv: Sequence[str], error: BaseException | None,
             name: str) -> None:
  """Raises the ConfigError behind a failed parse, if it finds one."""
  arg = config_arg(argv, name)
  if arg is None:
    return
  config = load_config(arg)
  over = overrides(argv, name)
  for key, _, flag in over:
    check_key(config, key, flag)
  if not isinstance(error, flags.IllegalFlagValueError):
    return
  msg = str(error)
  for key, value, _ in over:
    prefix = f'flag --{name}.{key}='
    if not msg.startswith(prefix):
      continue
    rest = msg[len(prefix):]
    text = value if value is not None and rest.startswith(f'{value}: ') else (
        rest.partition(': ')[0])
    raise KeyTypeError(
        f'--{name}.{key}={text}: config key {key!r} expects '
        f'{_type_name(config, key)} (the config has '
        f'{_show(_get(config, key))}); {text!r} is not one: '
        f'{rest[len(text) + 2:]}')


def parse_flags(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS,
                name: str = 'config') -> list[str]:
  """`flag_values(argv)`, with a ConfigError for a bad `--config` line.

  The config flag reads its overrides from `sys.argv` (or the `sys_argv`
  it was defined with), which must be `argv`.

  Raises:
    ConfigError: naming the flag and the key, file or preset; other parse
      errors as absl raises them.
  """
  try:
    rest = flag_values(list(argv))
  except Exception as e:  # ml_collections raises AttributeError, KeyError...
    try:
      _explain(argv, e, name)
    except ConfigError as explained:
      raise explained from e
    except Exception:  # pylint: disable=broad-except
      pass  # no clearer cause found: the original error stands
    raise
  config = flag_values[name].value
  if config is not None and not isinstance(config, ml_collections.ConfigDict):
    _explain(argv, None, name)  # ml_collections defers a failed load
  tuples = [(k, f) for k, _, f in overrides(argv, name)
            if isinstance(config, ml_collections.ConfigDict) and
            '[' not in k and isinstance(_get(config, k), tuple)]
  if tuples:
    default = load_config(config_arg(argv, name))
    for key, flag in tuples:
      check_tuple_elements(default, key, _get(config, key), flag)
  return rest


def parse_flags_with_usage(argv: Sequence[str]) -> list[str]:
  """`parse_flags` for `app.run(main, flags_parser=...)`: a flag error is
  printed as one message (no traceback) and the program exits with 1."""
  try:
    return parse_flags(argv)
  except flags.Error as e:
    sys.stderr.write(f'FATAL Flags parsing error: {e}\n'
                     'Pass --helpshort or --helpfull to see help on flags.\n')
    sys.exit(1)
