"""grain input pipelines over a split's arrays (see DESIGN.md, Data).

A split is a dict of equally long numpy arrays (often `np.memmap`s from
`cxr_jax/data/cache.py`): `image` (N, H, W, C) float32, `label` (N,) int32,
optional `mask`/`gaze` (N, H, W) float32 and `fixmap` (N, H, W) uint8, and
`index` (N,) int32.

Train (`train_iterator`): an infinite, shuffled, augmented stream. Design:

* The whole pipeline is a random-access `grain.MapDataset`, so batch `k` of a
  process is a pure function of (seed, k, shard): the same for any number of
  worker processes, and the iterator state is just `k` (plus a fingerprint of
  the settings). Resuming is O(1), and the state can be restored with a
  different `num_workers` or number of processes. (`grain.DataLoader` with an
  `IndexSampler` batches inside each worker, so its batches and its state
  depend on the worker count.)
* Global stream: epoch `e` visits the records in the permutation
  `default_rng([seed, e]).permutation(N)`. With `drop_remainder` each epoch
  keeps its first `(N // batch_size) * batch_size` records, so no global batch
  straddles two epochs (the dropped records differ between epochs).
* `batch_size` is the global batch. Global batch `k` holds stream positions
  `[k * B, (k + 1) * B)`; process `p` of `S` gets the contiguous share
  `[k * B + p * b, k * B + (p + 1) * b)` with `b = B // S`. Concatenating the
  processes' batches in process order gives exactly the batch a
  single-process run draws, so results do not depend on the process count.
* Augmentation is a `grain.transforms.RandomMap`; grain seeds its rng from
  (seed, stream position), so the augmentation of an example is also
  independent of workers and processes.

Eval (`eval_batches`): ordered, unaugmented, each batch padded to full size
with a `valid` flag (see its docstring for reassembling the global order).

Worker processes are started with `spawn` and receive the pipeline pickled:
`ArraySource` pickles a memory-mapped array as (file, offset, shape, dtype)
and re-opens it in the worker instead of copying its data. Everything here is
numpy-only so workers never import jax.
"""
from __future__ import annotations

import collections
from collections.abc import Iterator, Mapping
import mmap
import sys
from typing import Any

import grain
import ml_collections
import numpy as np

from cxr_jax.data import augment

_STATE_VERSION = 1


def num_batches(n: int, batch_size: int, *,
                drop_remainder: bool = False) -> int:
  """Batches needed for `n` examples (rounded down with `drop_remainder`)."""
  return n // batch_size if drop_remainder else -(-n // batch_size)


# ---------------------------------------------------------------- source ---


class _MemmapRef:
  """Picklable handle that re-opens a C-contiguous memmap read-only."""

  def __init__(self, arr: np.memmap):
    mm = getattr(arr, '_mmap', None)
    if mm is None or not arr.filename or not arr.flags.c_contiguous:
      raise ValueError('not a re-openable memmap')
    # np.memmap maps the file from `offset` rounded down to the allocation
    # granularity; the array's data pointer is relative to that mapping.
    start = arr.offset - arr.offset % mmap.ALLOCATIONGRANULARITY
    base = np.frombuffer(mm, np.uint8).ctypes.data
    self.filename = str(arr.filename)
    self.offset = start + (arr.ctypes.data - base)
    self.shape = arr.shape
    self.dtype = arr.dtype.str

  def open(self) -> np.ndarray:
    return np.memmap(self.filename, dtype=np.dtype(self.dtype), mode='r',
                     offset=self.offset, shape=self.shape)


class ArraySource:
  """Random access to the examples of a split: `source[i] -> dict`.

  Adds `index` (the row number) if the split has none. Memory-mapped arrays
  travel to worker processes as file references, in-memory arrays by value.
  """

  def __init__(self, arrays: Mapping[str, np.ndarray]):
    if 'image' not in arrays:
      raise KeyError(f'arrays need an "image" field, got {sorted(arrays)}')
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
      raise ValueError(f'fields have different lengths: {lengths}')
    self._arrays = dict(arrays)
    self._n = len(arrays['image'])
    if 'index' not in self._arrays:
      self._arrays['index'] = np.arange(self._n, dtype=np.int32)

  def __len__(self) -> int:
    return self._n

  @property
  def arrays(self) -> dict[str, np.ndarray]:
    """The fields, `index` included."""
    return self._arrays

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {k: np.array(v[i]) for k, v in self._arrays.items()}

  def __repr__(self) -> str:
    shapes = {k: (v.shape, v.dtype.name) for k, v in self._arrays.items()}
    return f'ArraySource({shapes})'

  def __getstate__(self) -> dict[str, Any]:
    packed = {}
    for k, v in self._arrays.items():
      try:
        packed[k] = _MemmapRef(v) if isinstance(v, np.memmap) else v
      except ValueError:
        packed[k] = np.asarray(v)
    return dict(arrays=packed, n=self._n)

  def __setstate__(self, state: dict[str, Any]):
    self._n = state['n']
    self._arrays = {k: v.open() if isinstance(v, _MemmapRef) else v
                    for k, v in state['arrays'].items()}


# ------------------------------------------------------------ transforms ---


class _ReadShuffled(grain.transforms.Map):
  """Stream position -> record of the epoch's permutation."""

  def __init__(self, source: ArraySource, *, seed: int, per_epoch: int):
    self._source = source
    self._seed = seed
    self._per_epoch = per_epoch
    self._perms: collections.OrderedDict[int, np.ndarray] = (
        collections.OrderedDict())

  def _perm(self, epoch: int) -> np.ndarray:
    if epoch not in self._perms:
      rng = np.random.default_rng([self._seed, epoch])
      self._perms[epoch] = rng.permutation(len(self._source))
      while len(self._perms) > 2:
        self._perms.popitem(last=False)
    return self._perms[epoch]

  def map(self, position: int) -> dict[str, np.ndarray]:
    epoch, i = divmod(int(position), self._per_epoch)
    return self._source[int(self._perm(epoch)[i])]

  def __getstate__(self) -> dict[str, Any]:
    return dict(self.__dict__, _perms=collections.OrderedDict())


class Augment(grain.transforms.RandomMap):
  """grain transform around `augment.augment_example`."""

  def __init__(self, cfg: ml_collections.ConfigDict | Mapping[str, Any]):
    self._cfg = ml_collections.ConfigDict(dict(cfg))

  def random_map(self, element: dict[str, Any],
                 rng: np.random.Generator) -> dict[str, Any]:
    return augment.augment_example(element, rng, self._cfg)


# ----------------------------------------------------------------- train ---


def _train_dataset(source: ArraySource, *, batch_size: int, seed: int,
                   augment_cfg: Any, shard_index: int, shard_count: int,
                   drop_remainder: bool) -> grain.MapDataset:
  """The (infinite) MapDataset of this process's batches."""
  n = len(source)
  per_epoch = (n // batch_size) * batch_size if drop_remainder else n
  if per_epoch == 0:
    raise ValueError(f'{n} examples cannot fill a batch of {batch_size}')
  ds = grain.MapDataset.range(sys.maxsize)  # global stream positions
  ds = ds.map(_ReadShuffled(source, seed=seed, per_epoch=per_epoch))
  if augment_cfg is not None:
    ds = ds.random_map(Augment(augment_cfg), seed=seed)
  ds = ds.batch(batch_size // shard_count, drop_remainder=True)
  return ds[shard_index::shard_count]


class TrainIterator(Iterator[dict[str, np.ndarray]]):
  """Infinite iterator of this process's batches with JSON-able state.

  `get_state()` returns `{'next_batch': k, ...settings}`; `set_state` checks
  the settings (seed, global batch size, number of records, drop_remainder,
  augmentation) and continues at batch `k`. Worker count, shard index and
  shard count may differ between save and restore.
  """

  def __init__(self, dataset: grain.MapDataset, *, num_workers: int,
               fingerprint: dict[str, Any], examples_per_epoch: int):
    self._dataset = dataset
    self._num_workers = num_workers
    self._fingerprint = fingerprint
    self._examples_per_epoch = examples_per_epoch
    self._next_batch = 0
    self._iterator: Any = None

  def _start(self):
    ds = self._dataset[self._next_batch:].to_iter_dataset(
        grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    if self._num_workers:
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=self._num_workers, per_worker_buffer_size=2))
    self._iterator = iter(ds)

  def __iter__(self) -> TrainIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._iterator is None:
      self._start()
    batch = next(self._iterator)
    self._next_batch += 1
    # Worker batches arrive in grain's POSIX shared memory, unlinked when the
    # array is garbage collected. A plain copy (off the device's critical
    # path) keeps /dev/shm clean if the trainer holds or leaks batches or the
    # process is killed.
    return {k: np.array(v) if type(v) is not np.ndarray else v
            for k, v in batch.items()}

  @property
  def epoch(self) -> float:
    """Epochs consumed so far (global examples / examples per epoch)."""
    batch_size = self._fingerprint['global_batch_size']
    return self._next_batch * batch_size / self._examples_per_epoch

  def get_state(self) -> dict[str, Any]:
    return dict(next_batch=self._next_batch, **self._fingerprint)

  def set_state(self, state: Mapping[str, Any]):
    expected = dict(state)
    next_batch = int(expected.pop('next_batch'))
    if expected != self._fingerprint:
      diff = sorted(k for k in set(expected) | set(self._fingerprint)
                    if expected.get(k) != self._fingerprint.get(k))
      raise ValueError(
          f'iterator state does not match this pipeline in {diff}: '
          f'state {expected}, pipeline {self._fingerprint}')
    self.close()
    self._next_batch = next_batch

  def close(self):
    """Stops worker processes (a later `next` restarts them)."""
    if self._iterator is not None and hasattr(self._iterator, 'close'):
      self._iterator.close()
    self._iterator = None


def train_iterator(
    arrays: Mapping[str, np.ndarray], *, batch_size: int, seed: int,
    augment_cfg: ml_collections.ConfigDict | Mapping[str, Any] | None,
    num_workers: int = 0, shard_index: int = 0, shard_count: int = 1,
    drop_remainder: bool = True) -> TrainIterator:
  """Infinite shuffled, augmented batches of this process's share.

  Args:
    arrays: the split's arrays (see module docstring).
    batch_size: GLOBAL batch size; each process gets `batch_size //
      shard_count` examples per batch.
    seed: shuffle and augmentation seed (0 <= seed < 2**32).
    augment_cfg: `augment.default_config()`-like; None disables augmentation.
    num_workers: grain worker processes (0: load in this process). Does not
      change the batches.
    shard_index: this process (`jax.process_index()`).
    shard_count: number of processes (`jax.process_count()`).
    drop_remainder: use `(N // batch_size) * batch_size` records per epoch so
      batches never straddle epochs; False streams every record each epoch.

  Returns:
    A `TrainIterator` yielding dicts of numpy batches (`image` (b, H, W, C)
    float32, `label`, the spatial fields, `index`).
  """
  if batch_size % shard_count:
    raise ValueError(f'batch_size {batch_size} is not divisible by '
                     f'shard_count {shard_count}')
  if not 0 <= shard_index < shard_count:
    raise ValueError(f'shard_index {shard_index} not in [0, {shard_count})')
  source = ArraySource(arrays)
  n = len(source)
  ds = _train_dataset(
      source, batch_size=batch_size, seed=seed, augment_cfg=augment_cfg,
      shard_index=shard_index, shard_count=shard_count,
      drop_remainder=drop_remainder)
  aug = None if augment_cfg is None else dict(
      ml_collections.ConfigDict(dict(augment_cfg)).to_dict())
  fingerprint = dict(version=_STATE_VERSION, seed=int(seed),
                     global_batch_size=int(batch_size), num_records=int(n),
                     drop_remainder=bool(drop_remainder), augment=aug)
  per_epoch = (n // batch_size) * batch_size if drop_remainder else n
  return TrainIterator(ds, num_workers=num_workers, fingerprint=fingerprint,
                       examples_per_epoch=per_epoch)


# ------------------------------------------------------------------ eval ---


def eval_batches(arrays: Mapping[str, np.ndarray], *, batch_size: int,
                 shard_index: int = 0,
                 shard_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Ordered, unaugmented batches of this process's share, padded.

  Every process yields the same number of batches, `num_batches(N,
  batch_size)`, each of `b = batch_size // shard_count` rows. Batch `j` of
  process `p` holds global rows `[j * B + p * b, j * B + (p + 1) * b)`
  (`B = batch_size`); rows past the end are padding (copies of row 0 with
  `index` -1) marked by `valid` (b,) bool = False.

  Reassembling the global order: for each step concatenate the processes'
  batches in process-index order along axis 0 (what a batch sharded over a
  ('data',) mesh in process order is, e.g. after
  `jax.experimental.multihost_utils.process_allgather(x, tiled=True)`), then
  concatenate the steps and keep the rows where `valid` is True: that is rows
  0..N-1 in order (`index` carries each row's study-list id).

  Args:
    arrays: the split's arrays.
    batch_size: GLOBAL batch size, divisible by `shard_count`.
    shard_index: this process.
    shard_count: number of processes.

  Yields:
    dicts of numpy arrays with a leading dim `b`, plus `valid`.
  """
  if batch_size % shard_count:
    raise ValueError(f'batch_size {batch_size} is not divisible by '
                     f'shard_count {shard_count}')
  source = ArraySource(arrays)
  fields, n = source.arrays, len(source)
  local = batch_size // shard_count
  for step in range(num_batches(n, batch_size)):
    lo = min(step * batch_size + shard_index * local, n)
    hi = min(lo + local, n)
    batch = {}
    for k, v in fields.items():
      out = np.empty((local,) + v.shape[1:], v.dtype)
      out[:hi - lo] = v[lo:hi]
      out[hi - lo:] = v[0]
      batch[k] = out
    batch['index'][hi - lo:] = -1
    valid = np.zeros(local, bool)
    valid[:hi - lo] = True
    batch['valid'] = valid
    yield batch
