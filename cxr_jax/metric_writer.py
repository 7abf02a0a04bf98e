"""Metric logging: JSON lines + TensorBoard event files + a progress line.

clu's metric writers import TensorFlow, which this project does not depend
on; tensorboardX writes the same event files with protobuf only. Only
process 0 writes (on other processes every call is a no-op).
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Mapping

import jax
import numpy as np
from absl import logging


def _scalar(v) -> float:
  return float(np.asarray(v))


class MetricWriter:
  """Writes scalars to `workdir/metrics.jsonl` and TensorBoard events."""

  def __init__(self, workdir: str, *, tensorboard: bool = True):
    self.active = jax.process_index() == 0
    self._jsonl = None
    self._tb = None
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, 'tb'))

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.active or not scalars:
      return
    row = {k: _scalar(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({'step': int(step), **row}) + '\n')
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in row.items():
        self._tb.add_scalar(k, v, int(step))
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def read_jsonl(path: str) -> list[dict]:
  """Reads a metrics.jsonl file back (used by reports and tests)."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class Progress:
  """Logs `step/total, loss, images/s, ETA` every `every_s` seconds."""

  def __init__(self, total_steps: int, batch_size: int, *, first_step: int = 0,
               every_s: float = 10.0, name: str = 'train'):
    self.total, self.batch, self.name = total_steps, batch_size, name
    self.every_s = every_s
    self._t0 = self._last = time.monotonic()
    self._step0 = first_step

  def update(self, step: int, loss: float | None = None, force: bool = False):
    now = time.monotonic()
    if not force and now - self._last < self.every_s:
      return
    self._last = now
    done = step - self._step0
    rate = done / max(now - self._t0, 1e-9)
    eta = (self.total - step) / rate if rate > 0 else math.inf
    loss_s = '' if loss is None else f' loss {loss:.4f}'
    logging.info('[%s] step %d/%d%s | %.1f img/s | ETA %s', self.name, step,
                 self.total, loss_s, rate * self.batch, _fmt_eta(eta))


def _fmt_eta(s: float) -> str:
  if not math.isfinite(s):
    return '?'
  s = int(s)
  return f'{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s' if s >= 3600 else (
      f'{s // 60}m{s % 60:02d}s')
