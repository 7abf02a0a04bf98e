"""Study B, evaluate: one trained model -> per-image result arrays.

`evaluate(run, splits, mesh, ...)` runs a loaded run (`cxr_jax.runs.Run`)
over the test split and returns a `StageResult` of arrays in split order,
from these steps:

  classify     class probabilities, log-odds (what the AUCs rank), labels
  gradcams     the true class's Grad-CAM of every image, (N, H, W) in [0, 1]
  cam_vs_gaze  each Grad-CAM scored against the gaze map: KL (MIT), CC, HS
  saliency     the predicted gaze distribution and its per-image metrics

Nothing here formats or writes.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from cxr_jax.evaluators import classification as cls_eval
from cxr_jax.evaluators import saliency as sal_eval
from cxr_jax.explain import compute_cams
from cxr_jax.metrics import saliency as sal_metrics
from cxr_jax.runs import Run

Splits = Mapping[str, Mapping[str, np.ndarray]]
# Per-image saliency metrics, in Table 4.2's column order: the authors'
# KL(gt || pred), CC and HS (comparable with the thesis), the MIT
# benchmark's KL and SIM, NSS and AUC-Judd (fixation maps), and KL in the
# other direction, KL(pred || gt), with the MIT epsilon.
SALIENCY_METRICS = ('kl', 'cc', 'hs', 'kl_mit', 'sim_mit', 'nss', 'auc_judd',
                    'kl_pred_gt_mit')
CAM_METRICS = ('kl', 'cc', 'hs')


def classify(run: Run, splits: Splits, mesh) -> dict[str, np.ndarray]:
  """'probs', 'log_odds' (N, K), 'label', 'index' of the test split."""
  ctx = run.eval_context(splits, mesh=mesh)
  return cls_eval.Evaluator(ctx, split='test',
                            task='multiclass').predict(run.variables)


def gradcams(run: Run, test: Mapping[str, np.ndarray]) -> np.ndarray:
  """Grad-CAM of the true class for every test image (N, H, W) in [0, 1],
  in batches of `config.eval_batch_size`."""
  out, bs = [], run.config.eval_batch_size
  for i in range(0, len(test['label']), bs):
    sl = slice(i, i + bs)
    kw = {k: np.asarray(test[k][sl]) for k in run.config.model_inputs}
    r = compute_cams(run.model, run.variables, np.asarray(test['image'][sl]),
                     method='gradcam', targets='label',
                     labels=np.asarray(test['label'][sl]),
                     model_kwargs=kw or None)
    out.append(np.asarray(r['cam']))
  return np.concatenate(out)


def cam_vs_gaze(gaze: Any, cams: np.ndarray) -> dict[str, np.ndarray]:
  """KL (MIT, with epsilon), CC and HS (authors') of each Grad-CAM, as a
  distribution, against its gaze map; NaN for a study without gaze."""
  gaze = np.asarray(gaze, np.float64)
  cam = cams.astype(np.float64) + 1e-12
  return {'kl': sal_metrics.kl(gaze, cam, variant='mit'),
          'cc': sal_metrics.cc(gaze, cam),
          'hs': sal_metrics.hs(gaze, cam, variant='authors')}


def kl_pred_gt(gaze: Any, pred: Any) -> np.ndarray:
  """KL(pred || gt) per image, the MIT way: sum P log(eps + P / (G + eps))
  of the sum-normalised maps, so a pixel without gaze (G = 0) under
  predicted mass stays finite; NaN for a study without gaze."""
  return sal_metrics.kl(gaze, pred, variant='mit', direction='pred||gt')


def saliency(run: Run, splits: Splits, mesh) -> dict[str, np.ndarray]:
  """Each of `SALIENCY_METRICS` per test image, plus 'pred' (the predicted
  distributions, (N, H, W)) and 'index'. The authors' KL is taken from the
  model's log-probabilities (finite where a float32 probability underflows
  on a gazed-at pixel)."""
  ctx = run.eval_context(splits, mesh=mesh)
  p = sal_eval.Evaluator(ctx, split='test').predict(run.variables)
  m = sal_eval.per_image_metrics(p['gaze'], p['pred'], p['fixmap'], 'authors',
                                 pred_logp=p['logp'])
  m['kl_mit'] = sal_metrics.kl(p['gaze'], p['pred'], variant='mit')
  m['sim_mit'] = sal_metrics.hs(p['gaze'], p['pred'], variant='mit')
  m['kl_pred_gt_mit'] = kl_pred_gt(p['gaze'], p['pred'])
  m['pred'] = p['pred']
  m['index'] = p['index']
  return m


@dataclasses.dataclass
class StageResult:
  """Per-image results of one stage on the test split (None: not asked).

  Attributes:
    network: the registered network that was trained.
    classified: `classify`'s arrays (a Table 4.1 classifier).
    cams: `gradcams` (a Table 4.1 classifier).
    cam_scores: `cam_vs_gaze` of those maps.
    saliency: `saliency`'s arrays (a Table 4.2 model).
  """
  network: str
  classified: dict[str, np.ndarray] | None = None
  cams: np.ndarray | None = None
  cam_scores: dict[str, np.ndarray] | None = None
  saliency: dict[str, np.ndarray] | None = None


def evaluate(run: Run, splits: Splits, mesh, *, classifier: bool,
             saliency_model: bool) -> StageResult:
  """A classifier's predictions, Grad-CAMs and their scores against gaze;
  a saliency model's predicted maps and metrics; or both."""
  out = StageResult(network=run.network)
  if classifier:
    out.classified = classify(run, splits, mesh)
    out.cams = gradcams(run, splits['test'])
    out.cam_scores = cam_vs_gaze(splits['test']['gaze'], out.cams)
  if saliency_model:
    out.saliency = saliency(run, splits, mesh)
  return out
