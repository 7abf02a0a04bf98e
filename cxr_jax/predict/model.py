"""What a trained run predicts, and the batched, jitted computation of it.

`heads(run, cams)` decides from the run's config what to predict, and why
not, in words:

- class probabilities where the config evaluates a classifier (a
  `classification` evaluator in `config.evals`; its `logits_key` picks the
  head), named by the dataset's `CLASS_NAMES`;
- the predicted gaze map where it evaluates saliency (a `saliency`
  evaluator): `exp(out['saliency_logp'])`, a distribution over the pixels;
- the requested CAM methods where it classifies and registers a Grad-CAM
  target (`out['features']`, see `cxr_jax.explain`).

So a Study A classifier gives the pneumothorax probability and its CAMs,
Study B's full model (stage 3, MT-UNet) its three class probabilities, the
predicted gaze map and Grad-CAM, UNet_S and Res_SE-UNet their gaze maps, a
stage-2 model (whose fusion classifier is not trained yet) its gaze map
only. A run whose model needs inputs besides the image (GazeGNN takes the
radiologist's gaze map, `config.model_inputs`) or that evaluates no head (a
contrastive pretraining stage) is an error that says so.

`Predictor(run, heads)` runs them on batches: one jitted forward pass (the
probabilities exactly as `evaluators.classification` computes them: softmax
of the float32 logits) and `explain.compute_cams` per CAM method; the batch
is split over every local device on a `'data'` mesh, the variables
replicated.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from cxr_jax.data import dataset_module
from cxr_jax.explain import compute_cams, get_method
from cxr_jax.runs import Run
from cxr_jax.runtime import sharding

GAZE = 'gaze'  # the name of the predicted gaze map in outputs


@dataclasses.dataclass(frozen=True)
class Heads:
  """What a run predicts.

  Attributes:
    classes: class names ((): no class probabilities).
    logits_key: '' = the model's logits, else the `out` entry to use.
    saliency: whether it predicts a gaze map.
    cams: CAM methods computed.
    cam_target: -1 = explain the predicted class, else this class.
    notes: what was left out and why (shown on the console and the page).
  """
  classes: tuple[str, ...]
  logits_key: str
  saliency: bool
  cams: tuple[str, ...]
  cam_target: int
  notes: tuple[str, ...]

  @property
  def maps(self) -> tuple[str, ...]:
    """The per-image maps, in output order: each CAM, then the gaze map."""
    return self.cams + ((GAZE,) if self.saliency else ())


def _evaluated(run: Run) -> dict[str, dict]:
  """Evaluator type -> its first `config.evals` entry."""
  out = {}
  for entry in run.config.evals.values():
    out.setdefault(str(entry['type']), dict(entry))
  return out


def _class_names(run: Run, k: int) -> tuple[str, ...]:
  """The dataset's class names; class_<i> when the head has another
  number of classes."""
  names = tuple(dataset_module(run.config.data.name).CLASS_NAMES)
  return names if len(names) == k else tuple(f'class_{i}' for i in range(k))


def _check_inputs(run: Run) -> None:
  extra = tuple(run.config.model_inputs)
  if extra:
    raise ValueError(
        f'{run.workdir}: the model ({run.network}) takes '
        f'{", ".join(extra)} as input besides the image '
        '(config.model_inputs; GazeGNN takes the radiologist\'s gaze map), so '
        'it cannot predict from images alone.')


def heads(run: Run, cams: Sequence[str], cam_target: str = 'pred') -> Heads:
  """What `run` predicts (module docstring); `cam_target` is 'pred' or a
  class name. Errors name the run folder and what is wrong."""
  _check_inputs(run)
  for m in cams:
    get_method(m)  # an unknown method is an error listing the valid ones
  evals = _evaluated(run)
  h, w = (int(v) for v in run.config.data.image_size)
  logits, out = jax.eval_shape(
      lambda v, x: run.model.apply(v, x, train=False), run.variables,
      jax.ShapeDtypeStruct((1, h, w, 1), jnp.float32))
  key = str(evals.get('classification', {}).get('logits_key', ''))
  classes: tuple[str, ...] = ()
  if 'classification' in evals:
    classes = _class_names(run, int((out[key] if key else logits).shape[-1]))
  saliency = 'saliency' in evals and 'saliency_logp' in out
  if not classes and not saliency:
    raise ValueError(
        f'{run.workdir}: nothing to predict: its config evaluates no '
        f'classifier or saliency head (config.evals types: '
        f'{sorted(evals) or "none"}); e.g. a contrastive pretraining stage '
        'trains an embedding only: predict with the fine-tuned stage.')
  notes, keep = [], tuple(cams)
  if cams and not classes:
    notes.append(f'No CAMs ({", ".join(cams)}): the run predicts no class.')
    keep = ()
  elif cams and 'features' not in out:
    notes.append(f'No CAMs: {run.network} registers no Grad-CAM target '
                 "(out['features']).")
    keep = ()
  target = -1
  if cam_target != 'pred':
    if cam_target not in classes:
      raise ValueError(f'cam_target {cam_target!r}: use pred or one of the '
                       f'classes {classes}.')
    target = classes.index(cam_target)
  return Heads(classes=classes, logits_key=key, saliency=saliency,
               cams=keep, cam_target=target, notes=tuple(notes))


class Predictor:
  """`predictor(images_BHWC)` -> per-image outputs of a run (numpy):
  'probs' (B, K), each CAM method (B, H, W) in [0, 1], 'gaze' (B, H, W)
  summing to 1. B must be a multiple of `num_devices`."""

  def __init__(self, run: Run, heads_: Heads):
    self.run, self.heads = run, heads_
    mesh = sharding.make_mesh()
    self.num_devices = mesh.size
    self._batch = NamedSharding(mesh, P(sharding.DATA))
    self._variables = jax.device_put(run.variables, NamedSharding(mesh, P()))
    key, model = heads_.logits_key, run.model

    def forward(variables, x):
      logits, out = model.apply(variables, x, train=False)
      res = {}
      if heads_.classes:
        res['probs'] = jax.nn.softmax(
            (out[key] if key else logits).astype('float32'), -1)
      if heads_.saliency:
        res[GAZE] = jnp.exp(out['saliency_logp'].astype(jnp.float32))
      return res
    self._forward = jax.jit(forward)

  def __call__(self, images_BHWC: np.ndarray) -> dict[str, np.ndarray]:
    x = jax.device_put(np.asarray(images_BHWC, np.float32), self._batch)
    res = self._forward(self._variables, x)
    for m in self.heads.cams:
      targets = ('pred' if self.heads.cam_target < 0 else
                 np.full(len(images_BHWC), self.heads.cam_target, np.int32))
      res[m] = compute_cams(self.run.model, self._variables, x, method=m,
                            targets=targets)['cam']
    return {k: np.asarray(v) for k, v in jax.device_get(res).items()}
