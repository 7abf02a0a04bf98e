"""Train-step throughput: the project's JAX step against torch references.

JAX: `cxr_jax.training.step.make_train_step` (forward, backward, Adam,
BatchNorm in train mode), built exactly as `cxr_jax.train.run` builds it (the
model once from `config.model`, `init_state`, the freezing schedule's labels)
and compiled once with the state donated. Torch: torchvision/timm, `model.train()`, `torch.optim.Adam`,
cross-entropy, the same batch (NCHW, the default memory format).

Timing: both steps warm up, then run alternately in ABBA order
(`interleaved`), each timed to completion (`block_until_ready` /
`cuda.synchronize`); rates are images / median step time, so background load
hits both sides alike and the ratio JAX/torch is the number to read. JAX
compile time is reported separately and excluded.
"""
from __future__ import annotations

import dataclasses
import gc
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from benchmarks import alternating
from benchmarks import flops as flops_lib
from cxr_jax import config_base
from cxr_jax import models
from cxr_jax.training import step as step_lib

CLASSIFIERS = ('resnet50', 'densenet201', 'vgg16', 'vit_b16')
_TIMM = {'vit_s16': 'vit_small_patch16_224', 'vit_b16': 'vit_base_patch16_224',
         'vit_l16': 'vit_large_patch16_224'}


# ------------------------------------------------------------------ timing --
def interleaved(fns: dict[str, Callable[[], Any]], steps: int, warmup: int
                ) -> dict[str, list[float]]:
  """Runs each fn `warmup` times, then `steps` timed rounds in ABBA order.

  Each fn must block until its work is done. Returns seconds per call.
  """
  names = list(fns)
  for _ in range(warmup):
    for n in names:
      fns[n]()
  times = {n: [] for n in names}
  for i in range(steps):
    for n in (names if i % 2 == 0 else names[::-1]):
      t = time.perf_counter()
      fns[n]()
      times[n].append(time.perf_counter() - t)
  return times


def rate(times: list[float], batch: int) -> float:
  """Images per second at the median step time."""
  return batch / statistics.median(times)


# ------------------------------------------------------------------- torch --
def torch_model(name: str, num_classes: int = 1000, size: int = 224):
  """The torchvision/timm reference of a registered classifier (random init).

  Tiny variants are built to match the Flax 'tiny' layouts, so that
  `convert_torch(..., variant='tiny')` accepts their state dicts.
  """
  import timm  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  tvm = torchvision.models
  if name in _TIMM:
    return timm.create_model(_TIMM[name], pretrained=False,
                             num_classes=num_classes)
  if name == 'vit_tiny':  # Flax 'tiny': dim 32, depth 2, 2 heads, 4x4 grid
    from timm.models.vision_transformer import VisionTransformer  # pylint: disable=g-import-not-at-top
    return VisionTransformer(img_size=size, patch_size=size // 4, embed_dim=32,
                             depth=2, num_heads=2, num_classes=num_classes)
  if name == 'resnet_tiny':  # basic blocks, widths 8/16/32/64, 1 per stage

    class TinyResNet(tvm.resnet.ResNet):

      def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        if planes == 64:
          self.inplanes = 8
        return super()._make_layer(block, planes // 8, blocks, stride, dilate)

    m = TinyResNet(tvm.resnet.BasicBlock, [1, 1, 1, 1],
                   num_classes=num_classes)
    m.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
    m.bn1 = nn.BatchNorm2d(8)
    m.fc = nn.Linear(64, num_classes)
    return m
  if name == 'vgg_tiny':  # widths 8/16/32/32/32 (two convs last), hidden 64
    cfg = [8, 'M', 16, 'M', 32, 'M', 32, 'M', 32, 32, 'M']
    m = tvm.VGG(tvm.vgg.make_layers(cfg), num_classes=num_classes)
    m.classifier = nn.Sequential(
        nn.Linear(32 * 49, 64), nn.ReLU(True), nn.Dropout(),
        nn.Linear(64, 64), nn.ReLU(True), nn.Dropout(),
        nn.Linear(64, num_classes))
    return m
  if name == 'densenet_tiny':
    return tvm.DenseNet(growth_rate=4, block_config=(1, 1, 1, 1),
                        num_init_features=8, bn_size=4,
                        num_classes=num_classes)
  return getattr(tvm, name)(weights=None, num_classes=num_classes)


class TorchTrainStep:
  """One torch train step (`model.train()`, Adam, cross-entropy) per call."""

  def __init__(self, name: str, *, batch: int, size: int, num_classes: int,
               dtype: str = 'float32', device: str = 'cpu', seed: int = 0,
               cudnn_benchmark: bool = True):
    """`cudnn_benchmark` (CUDA): cuDNN autotuning, as a tuned torch run
    would (XLA autotunes its convolutions too); False = cuDNN's heuristics,
    the counterpart of XLA's autotune level 0."""
    import torch  # pylint: disable=g-import-not-at-top
    self.torch = torch
    torch.manual_seed(seed)
    if device == 'cuda':
      torch.backends.cudnn.benchmark = cudnn_benchmark
    self.device = device
    self.model = torch_model(name, num_classes, size).to(device).train()
    self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
    self.x = torch.randn(batch, 3, size, size, device=device)
    self.y = torch.randint(0, num_classes, (batch,), device=device)
    self.autocast = dtype == 'bfloat16'

  def __call__(self) -> None:
    torch = self.torch
    self.opt.zero_grad(set_to_none=True)
    with torch.autocast(self.device, torch.bfloat16, enabled=self.autocast):
      logits = self.model(self.x)
    loss = torch.nn.functional.cross_entropy(logits.float(), self.y)
    loss.backward()
    self.opt.step()
    if self.device == 'cuda':
      torch.cuda.synchronize()


# --------------------------------------------------------------------- jax --
@dataclasses.dataclass
class JaxTrainStep:
  """The compiled, state-donating project step; one step per call."""
  compiled: Any
  state: Any
  batch: dict[str, jax.Array]
  compile_s: float
  flops: float | None
  init_s: float | None = None

  def __call__(self) -> None:
    self.state, metrics = self.compiled(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))


def build_state(config: ml_collections.ConfigDict,
                batch_np: dict[str, np.ndarray]):
  """(model, state, batch, tx, labels, seconds) as `cxr_jax.train.run`
  builds them: the model built once, the state initialised, and the
  schedule's labels, with which the step skips the frozen parameters'
  backward pass and runs frozen modules in inference mode."""
  model = models.build(config.model)
  batch = {k: jnp.asarray(v) for k, v in batch_np.items()}
  t = time.perf_counter()
  state, (tx, labels) = step_lib.init_state(config, model, batch,
                                            jax.random.key(config.seed))
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t
  return model, state, batch, tx, labels, init_s


def build_jax_step(config: ml_collections.ConfigDict,
                   batch_np: dict[str, np.ndarray],
                   make_step: Callable | None = None,
                   compiler_options: dict[str, Any] | None = None
                   ) -> JaxTrainStep:
  """Builds the trainer's step for `config` as `cxr_jax.train.run` does.

  `make_step(config, model, tx, labels)` replaces `make_train_step`
  (used only to time variants of the step); `compiler_options` are XLA debug
  options for the step's compile (`benchmarks.xla_ab`). `init_s` is the time
  to build the state (the init program's compile and run), `compile_s` the
  step's.
  """
  model, state, batch, tx, labels, init_s = build_state(config, batch_np)
  print(f'  [{config.model.name}] state built in {init_s:.1f} s; compiling '
        'the step', flush=True)
  step = (make_step or step_lib.make_train_step)(config, model, tx, labels)
  t = time.perf_counter()
  lowered = jax.jit(step, donate_argnums=(0,)).lower(state, batch)
  compiled = lowered.compile(compiler_options=compiler_options or None)
  compile_s = time.perf_counter() - t
  print(f'  [{config.model.name}] step compiled in {compile_s:.1f} s',
        flush=True)
  flops = flops_lib.compiled_flops(lowered)
  if flops is None:  # e.g. GPU: count the same program lowered for the CPU
    try:
      flops = flops_lib.compiled_flops(jax.jit(step).trace(
          state, batch).lower(lowering_platforms=('cpu',)))
    except Exception:  # pylint: disable=broad-except
      flops = None
  if flops is None:  # no cost model: the jaxpr's dots and convolutions
    flops = flops_lib.jaxpr_flops(step, state, batch)
  return JaxTrainStep(compiled, state, batch, compile_s, flops, init_s)


def classifier_config(name: str, *, num_classes: int = 1000, in_chans: int = 3,
                      dtype: str = 'float32', **model_kw: Any
                      ) -> ml_collections.ConfigDict:
  """The trainer config of a plain classifier (cross-entropy, Adam, all
  parameters trained); `model_kw` are further model fields."""
  c = config_base.train_config()
  c.model = ml_collections.ConfigDict(dict(
      name=name, num_classes=num_classes, in_chans=in_chans, dtype=dtype,
      **model_kw))
  c.loss = ml_collections.ConfigDict(dict(name='ce', label_smoothing=0.0))
  return c


def classifier_batch(batch: int, size: int, num_classes: int,
                     in_chans: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return dict(
      image=rng.normal(size=(batch, size, size, in_chans)).astype(np.float32),
      label=rng.integers(0, num_classes, batch).astype(np.int32))


def stage2_config(*, demo: bool, batch: int, dtype: str = 'float32'
                  ) -> ml_collections.ConfigDict:
  """Study B stage 2 (Res_SE-UNet on gaze, DenseNet frozen by the schedule)."""
  from configs import study_b  # pylint: disable=g-import-not-at-top
  c = study_b.stage2(study_b.args('demo' if demo else None), from_stage='')
  c.batch_size = batch
  c.model.dtype = dtype
  return c


def stage2_batch(config, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
  h, w = config.data.image_size
  rng = np.random.default_rng(seed)
  gaze = rng.random((batch, h, w), dtype=np.float32)
  return dict(image=rng.random((batch, h, w, 1), dtype=np.float32),
              gaze=gaze / gaze.max(axis=(1, 2), keepdims=True),
              label=rng.integers(0, 3, batch).astype(np.int32))


# ------------------------------------------------------------- benchmarks --
def make_side(side: str, name: str, *, batch: int, size: int,
              num_classes: int = 1000, dtype: str = 'float32',
              device: str = 'cpu', cudnn_benchmark: bool = True
              ) -> tuple[Callable[[], Any], dict[str, Any]]:
  """One side of the classifier benchmark: (one-step callable, info)."""
  if side == 'jax':
    js = build_jax_step(classifier_config(name, num_classes=num_classes,
                                          dtype=dtype),
                        classifier_batch(batch, size, num_classes))
    return js, dict(compile_s=js.compile_s, init_s=js.init_s,
                    flops=js.flops)
  return TorchTrainStep(name, batch=batch, size=size, num_classes=num_classes,
                        dtype=dtype,
                        device='cuda' if device == 'gpu' else device,
                        cudnn_benchmark=cudnn_benchmark), {}


def bench_classifier(name: str, *, batch: int, size: int, steps: int,
                     warmup: int, num_classes: int = 1000,
                     dtype: str = 'float32', torch_device: str | None = 'cpu',
                     isolate: bool = False, rounds: int = 2,
                     torch_cudnn_benchmark: bool = True) -> dict[str, Any]:
  """JAX vs torch train step of one classifier; a result row.

  `isolate`: each side in its own processes (`rounds` per side, alternating;
  `benchmarks.alternating`), else both interleaved (ABBA) in this process.
  `torch_cudnn_benchmark`: see `TorchTrainStep`.
  """
  side_kw = dict(batch=batch, size=size, num_classes=num_classes, dtype=dtype,
                 device='gpu' if torch_device == 'cuda' else 'cpu')
  if isolate and torch_device:
    times, info = alternating.run_alternating(
        'train', rounds=rounds, steps=steps, warmup=warmup, model=name,
        **side_kw)
  else:
    fns, infos = {}, {}
    for side in ('jax', 'torch') if torch_device else ('jax',):
      fns[side], infos[side] = make_side(
          side, name, **side_kw, cudnn_benchmark=torch_cudnn_benchmark)
    times = interleaved(fns, steps, warmup)
    info = infos['jax']
    del fns
  row = dict(model=name, batch=batch, size=size, dtype=dtype, steps=steps,
             isolated=bool(isolate and torch_device),
             jax_images_per_s=rate(times['jax'], batch),
             jax_step_s=statistics.median(times['jax']),
             jax_compile_s=info['compile_s'], jax_init_s=info['init_s'],
             flops_per_step=info['flops'])
  if torch_device == 'cuda':
    row['torch_cudnn_benchmark'] = torch_cudnn_benchmark
  if times.get('torch'):
    row['torch_images_per_s'] = rate(times['torch'], batch)
    row['torch_step_s'] = statistics.median(times['torch'])
    row['ratio'] = row['jax_images_per_s'] / row['torch_images_per_s']
  gc.collect()
  return row


def bench_stage2(*, demo: bool, batch: int, steps: int, warmup: int,
                 dtype: str = 'float32') -> dict[str, Any]:
  """The cooperative model's stage-2 step (no torch reference exists)."""
  config = stage2_config(demo=demo, batch=batch, dtype=dtype)
  js = build_jax_step(config, stage2_batch(config, batch))
  times = interleaved({'jax': js}, steps, warmup)
  h, w = config.data.image_size
  row = dict(model=f'stage2 {config.model.name}', batch=batch,
             size=f'{h}x{w}', dtype=dtype, steps=steps,
             jax_images_per_s=rate(times['jax'], batch),
             jax_step_s=statistics.median(times['jax']),
             jax_compile_s=js.compile_s, jax_init_s=js.init_s,
             flops_per_step=js.flops)
  del js
  gc.collect()
  return row
