"""CAM-vs-mask localisation (Study A): Diff_GradCAM, EHR AUC, Quantus metrics.

The `cam_localization` evaluator explains every image of a split that has a
ground-truth mask (pneumothorax cases; healthy images have empty masks and no
localisation target) and averages per-image metrics:

  diff_gradcam     mean heat inside the mask - mean heat outside (thesis)
  ehr_auc          area under the Effective Heat Ratio curve; `ehr_variant`
                   'thesis' (equidistant thresholds) or 'inputiba'
  pointing_game    the hottest pixel lies in the mask (fraction of images)
  relevance_mass   heat inside / total heat (Quantus RMA)
  relevance_rank   share of the |mask| hottest pixels inside (Quantus RRA)
  top_k            share of the k hottest pixels inside, k = `top_k_fraction`
                   of the pixels (Quantus' k = 1000 at 224x224 ~ 0.02)
  pixel_auc        ROC AUC of the heat as a pixel score for the mask

`cam_metrics(...)` is the batched engine (also used by the Study A report):
it runs `compute_cams` on batches sharded over the mesh like the trainer's
evaluators, gathers the maps on every process and scores them on the host.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from cxr_jax.runtime import sharding as sharding_lib
from cxr_jax.data import pipeline
from cxr_jax.explain import compute_cams
from cxr_jax.metrics import heatmap
from cxr_jax.registry import check_choice

METRICS = ('diff_gradcam', 'ehr_auc', 'pointing_game', 'relevance_mass',
           'relevance_rank', 'top_k', 'pixel_auc')


def with_masks(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The rows of a split whose mask has at least one pixel, in order."""
  if 'mask' not in arrays:
    raise ValueError("CAM localisation needs a 'mask' field in the split "
                     f'(fields: {sorted(arrays)}).')
  keep = np.asarray(arrays['mask']).reshape(len(arrays['mask']), -1).max(1) > 0
  return {k: np.asarray(v)[keep] for k, v in arrays.items()}


def heatmap_metrics(cam_BHW: np.ndarray, mask_BHW: np.ndarray, *,
                    ehr_variant: str = 'thesis', ehr_thresholds: int = 101,
                    top_k_fraction: float = 0.02) -> dict[str, np.ndarray]:
  """Per-image `METRICS` of (B, H, W) heatmaps in [0, 1] against masks."""
  cam = np.asarray(cam_BHW, np.float64)
  mask = np.asarray(mask_BHW)
  k = max(1, int(round(top_k_fraction * cam.shape[1] * cam.shape[2])))
  per = lambda fn, **kw: heatmap.per_image(fn, cam, mask, **kw)
  return {
      'diff_gradcam': per(heatmap.diff_gradcam),
      'ehr_auc': per(heatmap.ehr_auc, variant=ehr_variant,
                     num_thresholds=ehr_thresholds),
      'pointing_game': per(heatmap.pointing_game),
      'relevance_mass': per(heatmap.relevance_mass_accuracy),
      'relevance_rank': per(heatmap.relevance_rank_accuracy),
      'top_k': per(heatmap.top_k_intersection, k=k),
      'pixel_auc': per(heatmap.pixel_auc),
  }


def _local_batches(arrays: Mapping[str, np.ndarray], batch_size: int, mesh
                   ) -> Iterator[dict[str, np.ndarray]]:
  index, count = sharding_lib.process_data_shard(mesh)
  return pipeline.eval_batches(arrays, batch_size=batch_size,
                               shard_index=index, shard_count=count)


def _gather(x: Any) -> np.ndarray:
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _score_batch(model, variables, g: Mapping[str, Any], *, method: str,
                 targets: str, model_inputs: Sequence[str], metric_kw
                 ) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """One global batch: per-image values of its valid rows and their CAMs."""
  res = compute_cams(model, variables, g['image'], method=method,
                     targets=targets, labels=g['label'],
                     model_kwargs={k: g[k] for k in model_inputs})
  valid = _gather(g['valid'])
  cam = _gather(res['cam'])[valid]
  mask = _gather(g['mask'])[valid]
  logits = _gather(res['logits'])[valid].astype(np.float64)
  prob = np.exp(logits - logits.max(-1, keepdims=True))
  got = dict(index=_gather(g['index'])[valid],
             label=_gather(g['label'])[valid],
             target=_gather(res['targets'])[valid],
             prob=prob / prob.sum(-1, keepdims=True))
  got.update(heatmap_metrics(cam, mask, **metric_kw))
  return got, cam


def cam_metrics(model, variables, arrays: Mapping[str, np.ndarray], *, mesh,
                batch_size: int, method: str = 'gradcam',
                targets: str = 'label', ehr_variant: str = 'thesis',
                ehr_thresholds: int = 101, top_k_fraction: float = 0.02,
                model_inputs: Sequence[str] = (),
                keep_cams: Sequence[int] = ()) -> dict[str, np.ndarray]:
  """CAMs and per-image localisation metrics of every row of `arrays`.

  Args:
    model, variables: the classifier and its variables (never modified).
    arrays: a split (typically `with_masks(test)`) with 'image', 'mask',
      'label', 'index'.
    mesh: the mesh whose `'data'` axis the batches are sharded over.
    batch_size: global batch size (divisible by the 'data' axis size).
    method, targets: `compute_cams` arguments ('label' explains the true
      class, 'pred' the predicted one).
    ehr_variant, ehr_thresholds, top_k_fraction: see `heatmap_metrics`.
    model_inputs: extra batch fields passed to the model.
    keep_cams: row positions (in `arrays`) whose full-size CAM is returned.

  Returns:
    dict of (N,) arrays in `arrays` order: 'index', 'label', 'target' (the
    class explained), 'prob' (N, K) softmax of the logits, each of
    `METRICS`, and 'cams': {row position: (H, W) CAM} for `keep_cams`.
  """
  check_choice(targets, ('label', 'pred'), 'cam.targets')
  check_choice(ehr_variant, heatmap.EHR_VARIANTS, 'cam.ehr_variant')
  sharding = NamedSharding(mesh, P('data'))
  metric_kw = dict(ehr_variant=ehr_variant, ehr_thresholds=ehr_thresholds,
                   top_k_fraction=top_k_fraction)
  keep = set(int(i) for i in keep_cams)
  parts: dict[str, list[np.ndarray]] = {}
  cams: dict[int, np.ndarray] = {}
  for batch in _local_batches(arrays, batch_size, mesh):
    got, cam = _score_batch(
        model, variables,
        {k: jax.make_array_from_process_local_data(sharding, v)
         for k, v in batch.items()},
        method=method, targets=targets, model_inputs=model_inputs,
        metric_kw=metric_kw)
    offset = sum(len(v) for v in parts.get('index', ()))
    cams.update({offset + j: cam[j].astype(np.float32)
                 for j in range(len(cam)) if offset + j in keep})
    for k, v in got.items():
      parts.setdefault(k, []).append(v)
  if not parts:
    out = {k: np.zeros((0,)) for k in ('index', 'label', 'target') + METRICS}
    out['prob'] = np.zeros((0, 2))
  else:
    out = {k: np.concatenate(v) for k, v in parts.items()}
  out['cams'] = cams
  return out


def summarize(per_image: Mapping[str, np.ndarray]) -> dict[str, float]:
  """Mean of every metric over the images where it is defined, plus `n`."""
  out = {}
  for k in METRICS:
    v = np.asarray(per_image[k], np.float64)
    v = v[np.isfinite(v)]
    out[k] = float(v.mean()) if v.size else float('nan')
  out['n'] = float(len(per_image['index']))
  return out


class Evaluator:
  """`cam_localization` evaluator (see the module docstring).

  `config.evals.cam = config_base.evaluator('cam_localization', 'test',
  every_steps=-1, final=True, method='gradcam', targets='label')`; images
  without a mask are skipped; `n` = images scored.
  """

  def __init__(self, ctx, *, split: str = 'test', method: str = 'gradcam',
               targets: str = 'label', ehr_variant: str = 'thesis',
               ehr_thresholds: int = 101, top_k_fraction: float = 0.02):
    self.ctx, self.split = ctx, split
    self.method = method
    self.targets = check_choice(targets, ('label', 'pred'),
                                'evals.*.targets')
    self.ehr_variant = check_choice(ehr_variant, heatmap.EHR_VARIANTS,
                                    'evals.*.ehr_variant')
    self.ehr_thresholds = int(ehr_thresholds)
    self.top_k_fraction = float(top_k_fraction)
    self._arrays = None

  def per_image(self, variables) -> dict[str, np.ndarray]:
    """Per-image metrics of the split's images with a mask."""
    if self._arrays is None:
      if self.split not in self.ctx.splits:
        raise ValueError(f'Evaluator split {self.split!r} not in the dataset '
                         f'(splits: {sorted(self.ctx.splits)}).')
      self._arrays = with_masks(self.ctx.splits[self.split])
    return cam_metrics(
        self.ctx.model, variables, self._arrays, mesh=self.ctx.mesh,
        batch_size=self.ctx.batch_size, method=self.method,
        targets=self.targets, ehr_variant=self.ehr_variant,
        ehr_thresholds=self.ehr_thresholds,
        top_k_fraction=self.top_k_fraction,
        model_inputs=self.ctx.model_inputs)

  def metric_names(self, variables) -> tuple[str, ...]:
    """The keys `run` returns: every metric of `METRICS` and `n`."""
    del variables
    return METRICS + ('n',)

  def run(self, variables) -> dict[str, float]:
    return summarize(self.per_image(variables))
