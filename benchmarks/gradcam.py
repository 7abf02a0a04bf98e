"""Grad-CAM throughput and agreement: `compute_cams` vs pytorch-grad-cam.

Both sides explain the SAME weights: the torch reference (torchvision/timm,
random init, BatchNorm statistics and affine parameters randomised so that
eval-mode BN is not the identity) is converted with the family's
`convert_torch`. Target layers (ours is always `out['features']`):

  resnet50  torch `layer4[-1]`           (stage-4 output, 7x7)
  vgg16     torch `features[29]`         (ReLU after the last conv, before
                                          the final max-pool, 14x14; index 28
                                          is the conv itself)
  vit_b16   torch `blocks[-1].norm1`     + pytorch-grad-cam's ViT
                                          reshape_transform (drop the class
                                          token, reshape to the 14x14 grid)

Speed: one call each, for a batch with per-image target classes (labels),
timed after warm-up, each side alone in its own processes (`isolate`, the
CPU default of `benchmarks.run`) or interleaved (ABBA) in one; ours =
jitted `compute_cams` (forward + backward to the target activation only,
bilinear upsample + min-max scaling on device); theirs =
`GradCAM(...)(input_tensor, targets)` (forward, backward through the whole
network, cv2 resize + scaling in numpy).

Agreement: Pearson correlation between our `raw` maps (ReLU'd, on the feature
grid, before upsampling) and pytorch-grad-cam's maps at the same point of
its pipeline (`np.maximum(cam.get_cam_image(...), 0)` on the activations and
gradients its hooks captured in its last call), over the whole batch.
`cam_corr` is the same for the final upsampled, scaled maps (ours: resize
then scale, jax bilinear; theirs: scale then cv2 resize).
"""
from __future__ import annotations

import gc
import statistics
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import alternating
from benchmarks import train_step
from cxr_jax import models
from cxr_jax.explain import cam as cam_lib

CAM_MODELS = ('resnet50', 'vgg16', 'vit_b16')


def torch_target_layer(name: str, tm) -> tuple[Any, Any]:
  """(target layer, reshape_transform) of pytorch-grad-cam for our 'features'."""
  family = models.family(name).__name__.rsplit('.', 1)[-1]
  if family == 'resnet':
    return tm.layer4[-1], None
  if family == 'vgg':
    # The ReLU after the last conv: the module before the final max-pool.
    return tm.features[len(tm.features) - 2], None
  if family == 'vit':
    gh, gw = tm.patch_embed.grid_size

    def reshape_transform(t):
      return t[:, 1:, :].reshape(t.shape[0], gh, gw, t.shape[2]).permute(
          0, 3, 1, 2)

    return tm.blocks[-1].norm1, reshape_transform
  raise ValueError(f'No Grad-CAM reference layer for {name!r}.')


def randomise_batchnorm(tm, seed: int = 0) -> None:
  """Random running stats and affine parameters for every torch BatchNorm."""
  import torch  # pylint: disable=g-import-not-at-top
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in tm.modules():
      if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):  # pylint: disable=protected-access
        n = m.num_features
        m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
        m.running_var.copy_(0.5 + torch.rand(n, generator=g))
        m.weight.copy_(1 + 0.1 * torch.randn(n, generator=g))
        m.bias.copy_(0.1 * torch.randn(n, generator=g))


def converted_pair(name: str, *, size: int, num_classes: int = 1000,
                   seed: int = 0):
  """(torch model in eval mode, Flax model, converted variables)."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  tm = train_step.torch_model(name, num_classes, size).eval()
  randomise_batchnorm(tm, seed)
  sd = {k: v.detach().cpu().numpy().copy() for k, v in tm.state_dict().items()}
  variables = models.family(name).convert_torch(sd, variant=models.variant(name))
  variables = jax.tree.map(jnp.asarray, variables)
  model = models.get_model(name, num_classes=num_classes, in_chans=3)
  return tm, model, variables


def pearson(a: np.ndarray, b: np.ndarray) -> float:
  """Correlation of two arrays, flattened (1.0 if both are constant+equal)."""
  a = np.asarray(a, np.float64).ravel()
  b = np.asarray(b, np.float64).ravel()
  if a.std() == 0 or b.std() == 0:
    return 1.0 if np.allclose(a, b) else 0.0
  return float(np.corrcoef(a, b)[0, 1])


def _inputs(batch: int, size: int, num_classes: int, seed: int):
  rng = np.random.default_rng(seed)
  x_np = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
  labels = rng.integers(0, num_classes, batch).astype(np.int32)
  return x_np, labels


def _ours(model, variables, x_np, labels) -> Callable[[], Any]:
  x_jax, labels_jax = jnp.asarray(x_np), jnp.asarray(labels)
  return lambda: jax.block_until_ready(cam_lib.compute_cams(
      model, variables, x_jax, method='gradcam', targets='label',
      labels=labels_jax))


def _theirs(name, tm, x_np, labels, torch_device):
  """(pytorch-grad-cam object, one-call callable, its target layer, input)."""
  import torch  # pylint: disable=g-import-not-at-top
  from pytorch_grad_cam import GradCAM  # pylint: disable=g-import-not-at-top
  from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # pylint: disable=g-import-not-at-top
  tm = tm.to(torch_device)
  x_torch = torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy()).to(
      torch_device)
  layer, reshape = torch_target_layer(name, tm)
  targets = [ClassifierOutputTarget(int(c)) for c in labels]
  ref = GradCAM(model=tm, target_layers=[layer], reshape_transform=reshape)

  def theirs():
    out = ref(input_tensor=x_torch, targets=targets)
    if torch_device == 'cuda':
      torch.cuda.synchronize()
    return out
  return ref, theirs, layer, x_torch, targets


def make_side(side: str, name: str, *, batch: int, size: int,
              num_classes: int = 1000, seed: int = 0, device: str = 'cpu'
              ) -> tuple[Callable[[], Any], dict[str, Any]]:
  """One side of the Grad-CAM benchmark: (one-call callable, info). The
  JAX side builds (never runs) the torch model, for the converted weights."""
  tm, model, variables = converted_pair(name, size=size,
                                        num_classes=num_classes, seed=seed)
  x_np, labels = _inputs(batch, size, num_classes, seed)
  if side == 'jax':
    del tm
    gc.collect()
    return _ours(model, variables, x_np, labels), {}
  return _theirs(name, tm, x_np, labels,
                 'cuda' if device == 'gpu' else 'cpu')[1], {}


def bench_gradcam(name: str, *, batch: int, size: int, steps: int,
                  warmup: int, num_classes: int = 1000, seed: int = 0,
                  torch_device: str = 'cpu', isolate: bool = False,
                  rounds: int = 2) -> dict[str, Any]:
  """Grad-CAM images/s (ours vs pytorch-grad-cam) and map agreement.

  The maps are compared in this process; with `isolate` the timing runs in
  separate processes per side (`benchmarks.alternating`), else interleaved.
  """
  tm, model, variables = converted_pair(name, size=size,
                                        num_classes=num_classes, seed=seed)
  x_np, labels = _inputs(batch, size, num_classes, seed)
  ours = _ours(model, variables, x_np, labels)
  ref, theirs, layer, x_torch, targets = _theirs(name, tm, x_np, labels,
                                                 torch_device)
  results: dict[str, Any] = {}
  fns = {'jax': lambda: results.__setitem__('jax', ours()),
         'torch': lambda: results.__setitem__('torch', theirs())}
  if isolate:
    for fn in fns.values():  # once each, for the agreement check
      fn()
    times, _ = alternating.run_alternating(
        'gradcam', rounds=rounds, steps=steps, warmup=max(warmup, 1),
        model=name, batch=batch, size=size, num_classes=num_classes,
        device='gpu' if torch_device == 'cuda' else 'cpu')
  else:
    times = train_step.interleaved(fns, steps, max(warmup, 1))
  acts = ref.activations_and_grads.activations[0].cpu().numpy()
  grads = ref.activations_and_grads.gradients[0].cpu().numpy()
  raw_ref = np.maximum(ref.get_cam_image(x_torch, layer, targets, acts, grads,
                                         False), 0)
  raw = np.asarray(results['jax']['raw'])
  if raw.shape != raw_ref.shape:
    raise ValueError(f'{name}: our raw maps {raw.shape} vs pytorch-grad-cam '
                     f'{raw_ref.shape}')
  row = dict(model=name, batch=batch, size=size, steps=steps,
             isolated=isolate,
             jax_images_per_s=train_step.rate(times['jax'], batch),
             torch_images_per_s=train_step.rate(times['torch'], batch),
             jax_s=statistics.median(times['jax']),
             torch_s=statistics.median(times['torch']),
             raw_corr=pearson(raw, raw_ref),
             cam_corr=pearson(results['jax']['cam'], results['torch']),
             grid=list(raw.shape[1:]))
  row['ratio'] = row['jax_images_per_s'] / row['torch_images_per_s']
  ref.activations_and_grads.release()
  del ref, tm, variables, results
  gc.collect()
  return row
