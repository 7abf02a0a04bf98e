"""Build-once, memory-map-later cache of preprocessed dataset arrays.

`cached(name, key, build_fn, cache_dir)` hashes `key` (canonical JSON) into a
folder `cache_dir/<name>-<hash12>/` holding `<split>/<field>.npy`, a
`key.json` (the key, for humans) and `layout.json` (split and field order).
The folder is written to a temporary sibling and renamed into place, so a
killed build never leaves a half cache behind, and concurrent builders agree
(the first rename wins, the others load it).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Mapping, Sequence

import numpy as np

Arrays = dict[str, dict[str, np.ndarray]]


def default_cache_dir() -> str:
  """$CXR_JAX_CACHE, else ~/.cache/cxr_jax."""
  return os.environ.get('CXR_JAX_CACHE') or os.path.join(
      os.path.expanduser('~'), '.cache', 'cxr_jax')


def _jsonable(x: Any) -> Any:
  """Turns configs, tuples and numpy scalars into plain JSON values."""
  if hasattr(x, 'to_dict'):
    x = x.to_dict()
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  if x is None or isinstance(x, (str, int, float, bool)):
    return x
  raise TypeError(f'cache key value {x!r} of type {type(x).__name__} is not '
                  'JSON-serialisable')


def key_hash(key: Mapping[str, Any]) -> str:
  """First 12 hex digits of sha256 over the sorted-key JSON of `key`."""
  text = json.dumps(_jsonable(key), sort_keys=True, separators=(',', ':'))
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def _check_name(name: str, what: str) -> None:
  if not name or name.startswith('.') or os.sep in name or '/' in name:
    raise ValueError(f'invalid {what} name {name!r} for the cache')


def _load(folder: str) -> Arrays:
  with open(os.path.join(folder, 'layout.json')) as f:
    layout = json.load(f)
  out: Arrays = {}
  for split, fields in layout.items():
    out[split] = {}
    for field in fields:
      fn = os.path.join(folder, split, f'{field}.npy')
      try:
        out[split][field] = np.load(fn, mmap_mode='r')
      except ValueError:  # empty arrays cannot be memory-mapped
        out[split][field] = np.load(fn)
  return out


def _save(folder: str, arrays: Arrays, name: str, key: Mapping[str, Any]
          ) -> None:
  layout = {}
  for split, fields in arrays.items():
    _check_name(split, 'split')
    os.makedirs(os.path.join(folder, split))
    layout[split] = []
    for field, arr in fields.items():
      _check_name(field, 'field')
      arr = np.asarray(arr)
      if arr.dtype == object:
        raise TypeError(f'{name}: {split}/{field} has dtype object; the cache '
                        'stores numeric arrays only')
      np.save(os.path.join(folder, split, f'{field}.npy'), arr,
              allow_pickle=False)
      layout[split].append(field)
  with open(os.path.join(folder, 'key.json'), 'w') as f:
    json.dump({'name': name, 'key': _jsonable(key)}, f, indent=2,
              sort_keys=True)
  with open(os.path.join(folder, 'layout.json'), 'w') as f:
    json.dump(layout, f, indent=2)


def file_fingerprint(root: str, paths: Sequence[str]) -> str:
  """Hash of files' paths (relative to `root`), sizes and modification times.

  Part of a dataset's cache key, so files added, restored or replaced after
  a build (e.g. a partial copy built with `on_error='skip'`) rebuild the
  arrays instead of loading the stale ones.
  """
  h = hashlib.sha256()
  for path in sorted(paths):
    st = os.stat(path)
    h.update(f'{os.path.relpath(path, root)}\0{st.st_size}\0'
             f'{st.st_mtime_ns}\n'.encode())
  return h.hexdigest()[:16]


def cache_path(name: str, key: Mapping[str, Any], cache_dir: str) -> str:
  """The folder that `cached` uses for this name and key."""
  return os.path.join(cache_dir, f'{name}-{key_hash(key)}')


def cached(name: str, key: Mapping[str, Any], build_fn: Callable[[], Arrays],
           cache_dir: str) -> Arrays:
  """Returns build_fn()'s arrays, memory-mapped from the cache.

  build_fn runs only when no complete cache folder exists for (name, key).
  """
  _check_name(name, 'cache')
  cache_dir = cache_dir or default_cache_dir()
  final = cache_path(name, key, cache_dir)
  if os.path.isfile(os.path.join(final, 'layout.json')):
    return _load(final)
  arrays = build_fn()
  build_dir_atomically(final, lambda tmp: _save(tmp, arrays, name, key),
                       done_file='layout.json')
  return _load(final)


def build_dir_atomically(final: str, write_fn: Callable[[str], Any], *,
                         done_file: str) -> str:
  """Builds folder `final` once, atomically, and returns it.

  `write_fn(tmp)` fills a temporary sibling folder, which is then renamed to
  `final`, so a killed build never leaves a half-written folder behind.
  `final/done_file` marks a complete folder: if it exists nothing is built;
  if another process finished first, its folder is kept; a folder without
  it (left by an old crash) is replaced.
  """
  done = os.path.join(final, done_file)
  if os.path.exists(done):
    return final
  parent = os.path.dirname(final)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=f'.{os.path.basename(final)}.tmp-')
  try:
    write_fn(tmp)
    if not os.path.exists(os.path.join(tmp, done_file)):
      open(os.path.join(tmp, done_file), 'w').close()
    if os.path.exists(final) and not os.path.exists(done):
      shutil.rmtree(final, ignore_errors=True)  # stale, from an old crash
    try:
      os.rename(tmp, final)
    except OSError:
      if not os.path.exists(done):
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return final
