"""Study A, evaluate: one trained classifier -> per-image result arrays.

`evaluate` runs a loaded run (`cxr_jax.runs`) over the test split: class
probabilities and log-odds of every image (the classification evaluator),
and `cam.method` maps with their localisation metrics for every image with a
pneumothorax mask (`evaluators.cam_localization.cam_metrics`). The maps of
the figure's patients are kept at full precision, and every scored image's
map as uint8 (the report's per-case browser: 1,000 images of 224 x 224 px
take 50 MB per model). `compare_methods` computes several CAM methods of
one model on those patients. Nothing here formats or writes.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping, Sequence

import numpy as np
from absl import logging

from cxr_jax.evaluators import cam_localization as cam_loc
from cxr_jax.evaluators import classification as cls_eval
from cxr_jax.explain import compute_cams
from cxr_jax.runs import Run


@dataclasses.dataclass
class ModelResult:
  """Per-image results of one stage on the test split.

  Attributes:
    stage: the stage name (a thesis model name, e.g. 'vgg16').
    network: the registered network that was trained (e.g. 'vgg_tiny').
    init: its initial weights (`init.path`; '' = from scratch).
    pred: 'probs' (N, K), 'log_odds' (N, K), 'label', 'index' of every test
      image, in split order.
    loc: `cam_metrics` of the masked test images: 'index', 'label',
      'target', 'prob' and one (M,) array per `cam_localization.METRICS`;
      'cams' maps a row position to its (H, W) map for the figure rows.
    cams_u8: (M, H, W) uint8, round(255 * map) of every masked test image,
      in `loc` order.
    train: the training summary (`done.json`; empty if absent).
    eval_s: wall time of this evaluation.
  """
  stage: str
  network: str
  init: str
  pred: dict[str, np.ndarray]
  loc: dict[str, Any]
  cams_u8: np.ndarray
  train: dict[str, Any]
  eval_s: float


def grid_positions(n: int, k: int) -> list[int]:
  """k row positions spread evenly over n masked test images."""
  if n == 0 or k <= 0:
    return []
  return sorted(set(np.linspace(0, n - 1, min(k, n)).round().astype(int)))


def evaluate(stage: str, run: Run, test: Mapping[str, np.ndarray],
             masked: Mapping[str, np.ndarray], *, cam, mesh,
             keep_cams: Sequence[int]) -> ModelResult:
  """Probabilities on `test` and CAM metrics on `masked` (its masked rows).

  `cam` is the report's `config.cam` (method, targets, EHR variant and
  thresholds, top-k fraction, batch size); `keep_cams` the row positions in
  `masked` whose float32 maps are kept (the figures').
  """
  t0 = time.time()
  ctx = run.eval_context({'test': test}, batch_size=cam.batch_size,
                         mesh=mesh)
  pred = cls_eval.Evaluator(ctx, split='test').predict(run.variables)
  loc = cam_loc.cam_metrics(
      run.model, run.variables, masked, mesh=mesh, batch_size=cam.batch_size,
      method=cam.method, targets=cam.targets, ehr_variant=cam.ehr_variant,
      ehr_thresholds=cam.ehr_thresholds, top_k_fraction=cam.top_k_fraction,
      model_inputs=tuple(run.config.model_inputs),
      keep_cams=range(len(masked['label'])))
  cams = loc.pop('cams')
  loc['cams'] = {p: cams[p] for p in keep_cams}
  h, w = np.shape(masked['image'])[1:3]
  cams_u8 = np.zeros((len(cams), h, w), np.uint8)
  for p, m in cams.items():
    cams_u8[p] = np.round(m * 255.0)
  return ModelResult(stage=stage, network=run.network,
                     init=run.config.init.path, pred=pred, loc=loc,
                     cams_u8=cams_u8, train=run.summary,
                     eval_s=time.time() - t0)


def compare_stage(cam, sequence: Sequence[str]) -> str:
  """The stage whose CAM methods are compared: `cam.compare_model`, or the
  first CNN of `sequence` (the first stage if all are ViTs) when absent;
  '' for an empty sequence."""
  if cam.compare_model in sequence:
    return cam.compare_model
  if not sequence:
    return ''
  cnns = [n for n in sequence if not n.startswith('vit')]
  name = (cnns or list(sequence))[0]
  logging.info('cam.compare_model %r not in the sequence; using %r.',
               cam.compare_model, name)
  return name


def compare_methods(run: Run, masked: Mapping[str, np.ndarray],
                    positions: Sequence[int], *, methods: Sequence[str],
                    targets: str) -> dict[str, np.ndarray]:
  """method -> (len(positions), H, W) maps of `run` on those masked rows."""
  idx = np.asarray(positions)
  images, labels = masked['image'][idx], masked['label'][idx]
  return {m: np.asarray(compute_cams(run.model, run.variables, images,
                                     method=m, targets=targets,
                                     labels=labels)['cam'])
          for m in methods}
