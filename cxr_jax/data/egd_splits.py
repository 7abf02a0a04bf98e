"""Train / validation / test splits of the eye-gaze dataset (Study B).

Three named rules (`data.split`), each seeded (`data.split_seed`):
'thesis' (a random test set of `num_test` images, a class-stratified
validation fraction of the rest), 'mtunet' (MT-UNet's per-class counter,
70/10/20) and 'patient' (like 'thesis', but no patient in two splits).
"""
from __future__ import annotations

from typing import Sequence

import ml_collections
import numpy as np

SPLITS = ('train', 'val', 'test')


def _num_test(num_test: int, n: int) -> int:
  """Checks the count of test images against the study size."""
  k = int(num_test)
  if not 0 < k < n:
    raise ValueError(f'num_test={num_test} test images out of {n}; need '
                     '0 < num_test < number of images')
  return k


def _stratified_take(idx: np.ndarray, labels: np.ndarray, frac: float
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Splits idx into (taken, rest): round(frac * len) taken, stratified.

  Members of each class keep their order in idx and are spread evenly over
  [0, 1) (rank + 0.5) / class size; the k smallest are taken, so every class
  gets its share up to rounding, and at least one is taken when frac > 0.
  """
  idx = np.asarray(idx, np.int64)
  k = int(round(frac * idx.size))
  if frac > 0:
    k = min(max(k, 1), idx.size)
  pos = np.empty(idx.size, np.float64)
  for c in np.unique(labels[idx]):
    sel = np.flatnonzero(labels[idx] == c)
    pos[sel] = (np.arange(sel.size) + 0.5) / sel.size
  order = np.argsort(pos, kind='stable')
  return idx[order[:k]], idx[order[k:]]


def _mtunet(labels: np.ndarray, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(train, val, test): a seeded permutation, then a counter per class:
  counter % 10 in {0, 1} -> test, 2 -> val, else train."""
  perm = rng.permutation(labels.shape[0])
  counter: dict[int, int] = {}
  parts = {'train': [], 'val': [], 'test': []}
  for i in perm:
    c = int(labels[i])
    k = counter.get(c, 0)
    counter[c] = k + 1
    parts['test' if k % 10 in (0, 1) else 'val' if k % 10 == 2
          else 'train'].append(i)
  return tuple(np.asarray(parts[s], np.int64) for s in SPLITS)


def _whole_patients(patients: Sequence[str], pids: np.ndarray,
                    at_least: int) -> tuple[list[str], int]:
  """The first patients (in the given order) whose images reach `at_least`,
  and their image count."""
  taken, count = [], 0
  for p in patients:
    if count >= at_least:
      break
    taken.append(p)
    count += int((pids == p).sum())
  return taken, count


def _patient(patient_ids: Sequence[str], n: int,
             cfg: ml_collections.ConfigDict, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(train, val, test) of whole patients, from a seeded permutation of the
  patients: test until `num_test` images, then val until its fraction."""
  pids = np.asarray([str(p) for p in patient_ids])
  if pids.shape[0] != n:
    raise ValueError(f'{pids.shape[0]} patient ids for {n} labels')
  patients = rng.permutation(np.unique(pids))
  test_p, count = _whole_patients(patients, pids, _num_test(cfg.num_test, n))
  test_set = set(test_p)
  rest_p = [p for p in patients if p not in test_set]
  n_val = int(round(cfg.num_val * (n - count)))
  n_val = max(n_val, 1) if cfg.num_val > 0 else 0
  val_p, _ = _whole_patients(rest_p, pids, n_val)
  test = np.flatnonzero(np.isin(pids, test_p))
  val = np.flatnonzero(np.isin(pids, val_p))
  train = np.flatnonzero(~np.isin(pids, test_p + val_p))
  return train, val, test


def split_indices(labels: np.ndarray, patient_ids: Sequence[str],
                  cfg: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """Positions (sorted int64) of each split in the study list.

  - 'thesis': seeded permutation; the first `num_test` are test, then
    `num_val` of each class of the rest (stratified) are val.
  - 'mtunet': seeded permutation, then a counter per class: counter % 10 in
    {0, 1} -> test, 2 -> val, else train (70/10/20 stratified; MT-UNet).
  - 'patient': like 'thesis' but whole patients are assigned (seeded
    permutation of patients), so no patient is in two splits.
  """
  labels = np.asarray(labels)
  n = labels.shape[0]
  rng = np.random.default_rng(int(cfg.split_seed))
  if not 0 <= cfg.num_val < 1:
    raise ValueError(f'num_val must be a fraction in [0, 1), got {cfg.num_val}')
  if cfg.split == 'thesis':
    perm = rng.permutation(n)
    k = _num_test(cfg.num_test, n)
    test, rest = perm[:k], perm[k:]
    val, train = _stratified_take(rest, labels, cfg.num_val)
  elif cfg.split == 'mtunet':
    train, val, test = _mtunet(labels, rng)
  elif cfg.split == 'patient':
    train, val, test = _patient(patient_ids, n, cfg, rng)
  else:
    raise ValueError(f"split must be 'thesis', 'mtunet' or 'patient', got "
                     f'{cfg.split!r}')
  return {s: np.sort(np.asarray(a, np.int64))
          for s, a in zip(SPLITS, (train, val, test))}
