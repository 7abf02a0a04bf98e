r"""The benchmark suite: train step, Grad-CAM, loader and FLOP utilisation.

  python -m benchmarks.run [--quick] [--out=DIR] [--only=train,gradcam,loader,flops]
      [--dtype=float32|bfloat16] [--batch=16] [--size=224] [--device=cpu|gpu]

Prints Markdown tables and writes DIR/results.json and DIR/results.md.
JAX/torch ratios: on CPU (`--isolate`, the default there) each side is
timed alone in its own processes, alternating JAX, torch, torch, JAX
(`benchmarks/alternating.py` says why); on GPU the two sides alternate (ABBA)
in one process after warm-up. See benchmarks/README.md for each number.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from typing import Any

from absl import app
from absl import flags



from benchmarks import stub_missing_grain  # pylint: disable=g-bad-import-order

stub_missing_grain()
# benchmarks.loader defines --out (and its own --workers, --batches, ...);
# here --out is the results directory.
from benchmarks import loader  # pylint: disable=g-import-not-at-top,g-bad-import-order
from cxr_jax.runtime import xla_flags  # pylint: disable=g-import-not-at-top,g-bad-import-order


_QUICK = flags.DEFINE_bool('quick', False, 'Few steps; skip the full-size '
                           'stage-2 step.')
_ONLY = flags.DEFINE_list('only', ['train', 'gradcam', 'loader', 'flops'],
                          'Parts to run.')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'],
                           'JAX compute dtype (torch: autocast for bfloat16).')
_BATCH = flags.DEFINE_integer('batch', 16, 'Classifier / Grad-CAM batch.')
_SIZE = flags.DEFINE_integer('size', 224, 'Classifier input size.')
_DEVICE = flags.DEFINE_enum('device', 'cpu', ['cpu', 'gpu'], 'JAX backend; '
                            'torch runs on the same kind of device.')
_MODELS = flags.DEFINE_list('models', ['resnet50', 'densenet201', 'vgg16',
                                       'vit_b16'], 'Train-step classifiers.')
_CAM_MODELS = flags.DEFINE_list('cam_models', ['resnet50', 'vgg16', 'vit_b16'],
                                'Grad-CAM models.')
_STEPS = flags.DEFINE_integer('steps', 0, 'Timed steps (0: 3 quick, 8 '
                              'otherwise).')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps per side.')
_STAGE2_BATCH = flags.DEFINE_integer('stage2_batch', 0, 'Full-size stage-2 '
                                     'batch (0: 2 on CPU, 8 on GPU).')
_STAGE2 = flags.DEFINE_bool('stage2', True, 'Time the stage-2 step(s).')
_STAGE2_SIZES = flags.DEFINE_list(
    'stage2_sizes', ['demo', 'full'], "Stage-2 steps to time, in this order: "
    "'demo' (128x96, batch 8), 'full' (the thesis's 640x512; skipped by "
    '--quick).')
flags.register_validator(
    'stage2_sizes', lambda v: set(v) <= {'demo', 'full'},
    "--stage2_sizes: each entry must be 'demo' or 'full'")
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 1000, 'Classifier heads.')
_TORCH = flags.DEFINE_bool('torch', True, 'Run the torch references (on GPU '
                           'only if torch sees CUDA).')
_ISOLATE = flags.DEFINE_bool(
    'isolate', None, 'Time JAX and torch in separate processes (2 per side, '
    'alternating) instead of interleaved in this one; default: on for CPU, '
    'off for GPU. See benchmarks/alternating.py.')
_TUNE_HOST_MALLOC = flags.DEFINE_bool(
    'tune_host_malloc', True, 'On (unlike main.py, where it is opt-in): start '
    'the JAX side\'s timing processes with glibc malloc tunables that keep '
    'XLA\'s temporaries mapped between steps, as `main.py --tune_host_malloc` '
    'does (cxr_jax/runtime/hostmem.py); with --noisolate on CPU this process '
    'restarts once with them, so both sides get them. The report says which '
    'sides ran with them.')
_TORCH_TUNE_HOST_MALLOC = flags.DEFINE_bool(
    'torch_tune_host_malloc', False, 'The same tunables for the torch side\'s '
    'processes (by default it runs as users run it).')
_TORCH_CUDNN_BENCHMARK = flags.DEFINE_bool(
    'torch_cudnn_benchmark', True, 'torch.backends.cudnn.benchmark for the '
    'torch side on a GPU (cuDNN autotuning, as XLA autotunes its '
    'convolutions); off = cuDNN\'s heuristics, the counterpart of '
    '--xla_gpu_autotune_level=0 (benchmarks/gpu.sh AUTOTUNE_LEVEL=0).')
_MATMUL_N = flags.DEFINE_integer('matmul_n', 2048, 'Matmul peak size.')
_CPU_XLA_FLAGS = flags.DEFINE_string(
    'cpu_xla_flags', xla_flags.CPU_XLA_FLAGS,
    'Appended to XLA_FLAGS with --device=cpu '
    '(before JAX starts its backend) unless XLA_FLAGS already sets the same '
    "flag; '' to measure XLA's defaults. See cxr_jax/runtime/xla_flags.py.")

_RESULTS: dict[str, Any] = {}  # filled by main; saved after every row


def _save(res: dict[str, Any], md: str | None = None) -> None:
  """Writes results.json (after every row, so a killed run keeps its rows)
  and, at the end, results.md."""
  if not flags.FLAGS.out:
    return
  os.makedirs(flags.FLAGS.out, exist_ok=True)
  with open(os.path.join(flags.FLAGS.out, 'results.json'), 'w') as f:
    json.dump(res, f, indent=2, default=str)
  if md is not None:
    with open(os.path.join(flags.FLAGS.out, 'results.md'), 'w') as f:
      f.write(md + '\n')


def _setup_backend() -> None:
  if _DEVICE.value == 'cpu' and not _isolate() and _TUNE_HOST_MALLOC.value:
    from cxr_jax.runtime import hostmem  # pylint: disable=g-import-not-at-top
    hostmem.ensure()  # restarts this process once, with the tunables
    hostmem.configure_jax()
  if _DEVICE.value == 'cpu':
    # Read by XLA when the backend starts (the first jax.devices() below).
    xla_flags.apply(_CPU_XLA_FLAGS.value)
  import jax  # pylint: disable=g-import-not-at-top
  if _DEVICE.value == 'cpu':
    jax.config.update('jax_platforms', 'cpu')
    jax.devices()
  elif jax.devices()[0].platform != 'gpu':
    raise SystemExit('--device=gpu but JAX sees no GPU: '
                     f'{jax.devices()}')


def _isolate() -> bool:
  return _DEVICE.value == 'cpu' if _ISOLATE.value is None else _ISOLATE.value


def _torch_device() -> str | None:
  if not _TORCH.value:
    return None
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  if _DEVICE.value == 'gpu':
    return 'cuda' if torch.cuda.is_available() else None
  torch.set_num_threads(os.cpu_count())
  return 'cpu'


def _fmt(v: Any, digits: int = 3) -> str:
  if v is None:
    return '-'
  if isinstance(v, float):
    if abs(v) >= 1e9:
      return f'{v / 1e9:.1f} G'
    return f'{v:.{digits}g}'
  return str(v)


def _table(rows: list[dict[str, Any]], cols: list[tuple[str, str]]) -> str:
  lines = ['| ' + ' | '.join(h for h, _ in cols) + ' |',
           '|' + '---|' * len(cols)]
  for r in rows:
    lines.append('| ' + ' | '.join(_fmt(r.get(k)) for _, k in cols) + ' |')
  return '\n'.join(lines)


def _machine() -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import flops as flops_lib  # pylint: disable=g-import-not-at-top
  return dict(device=flops_lib.device_name(), platform=platform.platform(),
              cpu_count=os.cpu_count(), jax=jax.__version__,
              xla_flags=os.environ.get('XLA_FLAGS', ''),
              load_avg_start=os.getloadavg()[0],
              time_utc=time.strftime('%Y-%m-%d %H:%M', time.gmtime()))


def run_train(steps: int, warmup: int, torch_device: str | None,
              quick: bool) -> list[dict[str, Any]]:
  from benchmarks import train_step  # pylint: disable=g-import-not-at-top
  rows = _RESULTS.setdefault('train', [])
  for name in _MODELS.value:
    rows.append(train_step.bench_classifier(
        name, batch=_BATCH.value, size=_SIZE.value, steps=steps,
        warmup=warmup, num_classes=_NUM_CLASSES.value, dtype=_DTYPE.value,
        torch_device=torch_device, isolate=_isolate(),
        torch_cudnn_benchmark=_TORCH_CUDNN_BENCHMARK.value))
    print(rows[-1], flush=True)
    _save(_RESULTS)
  gpu = _DEVICE.value == 'gpu'
  if not _STAGE2.value:
    return rows
  for size in _STAGE2_SIZES.value:
    if size == 'full' and quick:
      continue
    demo = size == 'demo'
    rows.append(train_step.bench_stage2(
        demo=demo, batch=8 if demo else _STAGE2_BATCH.value or (
            8 if gpu else 2),
        steps=steps if demo or gpu else max(2, steps // 3),
        warmup=warmup if demo else 1, dtype=_DTYPE.value))
    print(rows[-1], flush=True)
    _save(_RESULTS)
  return rows


def run_gradcam(steps: int, warmup: int, torch_device: str
                ) -> list[dict[str, Any]]:
  from benchmarks import gradcam  # pylint: disable=g-import-not-at-top
  rows = _RESULTS.setdefault('gradcam', [])
  for name in _CAM_MODELS.value:
    rows.append(gradcam.bench_gradcam(name, batch=_BATCH.value,
                                      size=_SIZE.value, steps=steps,
                                      warmup=warmup,
                                      num_classes=_NUM_CLASSES.value,
                                      torch_device=torch_device,
                                      isolate=_isolate()))
    print(rows[-1], flush=True)
    _save(_RESULTS)
  return rows


def run_loader(train_rows: list[dict[str, Any]], quick: bool
               ) -> list[dict[str, Any]]:
  """Loader images/s at Study A and B sizes next to the steps' consumption."""
  if getattr(sys.modules.get('grain'), 'STUB', False):
    print('loader: skipped (grain is not installed here).')
    return []
  from benchmarks import train_step  # pylint: disable=g-import-not-at-top
  (h_b, w_b) = train_step.stage2_config(demo=False, batch=8).data.image_size
  consumer = {r['model']: r['jax_images_per_s'] for r in train_rows}
  settings = [
      ('A', 224, 224, 32, dict(mask=True), consumer.get('resnet50'),
       'resnet50 step'),
      ('B', h_b, w_b, 8, dict(gaze=True),
       consumer.get('stage2 cooperative'), 'stage-2 step (full)'),
  ]
  rows = _RESULTS.setdefault('loader', [])
  with tempfile.TemporaryDirectory() as tmp:
    for study, h, w, bs, fields, need, what in settings:
      n = (64 if study == 'A' else 32) if quick else (256 if study == 'A'
                                                      else 96)
      d = os.path.join(tmp, study)
      os.makedirs(d)
      arrays = loader.memory_map(loader.synthetic_arrays(n, h, w, **fields), d)
      ips = loader.measure_loader(arrays, bs, 2, 4 if quick else 12)
      rows.append(dict(study=study, size=f'{h}x{w}', batch=bs, workers=2,
                       loader_images_per_s=ips, consumer=what,
                       consumer_images_per_s=need,
                       loader_over_step=(ips / need) if need else None))
      print(rows[-1], flush=True)
    _save(_RESULTS)
  return rows


def run_flops(train_rows: list[dict[str, Any]]) -> dict[str, Any]:
  """Achieved FLOP/s of each step against the measured and published peak."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from benchmarks import flops as flops_lib  # pylint: disable=g-import-not-at-top
  peak = flops_lib.matmul_peak(_MATMUL_N.value, jnp.dtype(_DTYPE.value))
  kind = flops_lib.device_name()
  published = flops_lib.published_peak(kind, _DTYPE.value)
  rows = []
  for r in train_rows:
    f, s = r.get('flops_per_step'), r['jax_step_s']
    rows.append(dict(
        model=r['model'], batch=r['batch'], size=r['size'],
        gflop_per_step=f / 1e9 if f else None,
        achieved_flops_per_s=f / s if f else None,
        util_vs_matmul_pct=flops_lib.utilisation(f, s, peak['flops_per_s']),
        mfu_pct=flops_lib.utilisation(f, s, published)))
  return dict(matmul_peak=peak, device=kind, published_peak=published,
              rows=rows)


def report(res: dict[str, Any]) -> str:
  m = res['machine']
  out = [f"# cxr_jax benchmarks: {m['device']}, {m['cpu_count']} CPUs, "
         f"dtype {res['config']['dtype']}, load avg {m['load_avg_start']:.1f} "
         f"at start, {m['time_utc']} UTC", '']
  hp = res['config'].get('tune_host_malloc') or {}
  tuned = ', '.join(k for k in ('jax', 'torch') if hp.get(k)) or 'none'
  out += ['glibc malloc tunables of cxr_jax/runtime/hostmem.py (main.py '
          f'--tune_host_malloc, off by default there): sides {tuned}.', '']
  if res.get('train'):
    out += ['## Train step (images/s, median; ratio = JAX / torch)', '',
            _table(res['train'], [
                ('model', 'model'), ('batch', 'batch'), ('size', 'size'),
                ('JAX img/s', 'jax_images_per_s'),
                ('torch img/s', 'torch_images_per_s'), ('ratio', 'ratio'),
                ('JAX init s', 'jax_init_s'), ('JAX compile s', 'jax_compile_s'),
                ('steps', 'steps')]), '']
  if res.get('gradcam'):
    out += ['## Grad-CAM (images/s; ratio = JAX / pytorch-grad-cam; '
            'corr = Pearson of raw maps)', '',
            _table(res['gradcam'], [
                ('model', 'model'), ('batch', 'batch'),
                ('JAX img/s', 'jax_images_per_s'),
                ('pytorch-grad-cam img/s', 'torch_images_per_s'),
                ('ratio', 'ratio'), ('raw corr', 'raw_corr'),
                ('upsampled corr', 'cam_corr')]), '']
  if res.get('loader'):
    out += ['## Loader vs step consumption (images/s)', '',
            _table(res['loader'], [
                ('study', 'study'), ('size', 'size'), ('batch', 'batch'),
                ('workers', 'workers'), ('loader', 'loader_images_per_s'),
                ('consumer', 'consumer'),
                ('consumer img/s', 'consumer_images_per_s'),
                ('loader / step', 'loader_over_step')]), '']
  if res.get('flops'):
    f = res['flops']
    pk = f['matmul_peak']
    out += [f"## FLOP utilisation (XLA cost analysis FLOPs; matmul peak "
            f"{pk['n']}^3 {pk['dtype']}: {pk['flops_per_s'] / 1e9:.1f} "
            f"GFLOP/s; published peak: {_fmt(f['published_peak'])})", '',
            _table(f['rows'], [
                ('model', 'model'), ('batch', 'batch'), ('size', 'size'),
                ('GFLOP/step', 'gflop_per_step'),
                ('achieved FLOP/s', 'achieved_flops_per_s'),
                ('% of matmul peak', 'util_vs_matmul_pct'),
                ('MFU %', 'mfu_pct')]), '']
  out.append(f"Load avg at end: {res['load_avg_end']:.1f}.")
  return '\n'.join(out)


def main(argv: list[str]) -> None:
  del argv
  _setup_backend()
  quick = _QUICK.value
  steps = _STEPS.value or (3 if quick else 8)
  only = set(_ONLY.value)
  unknown = only - {'train', 'gradcam', 'loader', 'flops'}
  if unknown:
    raise SystemExit(f'--only: unknown parts {sorted(unknown)}')
  torch_device = _torch_device()
  from benchmarks import alternating  # pylint: disable=g-import-not-at-top
  alternating.TUNE_HOST_MALLOC.update(jax=_TUNE_HOST_MALLOC.value,
                                   torch=_TORCH_TUNE_HOST_MALLOC.value)
  if not _isolate():  # one process: the tunables (CPU only) cover both sides
    both = _TUNE_HOST_MALLOC.value and _DEVICE.value == 'cpu'
    alternating.TUNE_HOST_MALLOC.update(jax=both, torch=both)
  res = _RESULTS
  res.update(
      machine=_machine(), config=dict(
          quick=quick, steps=steps, warmup=_WARMUP.value, dtype=_DTYPE.value,
          batch=_BATCH.value, size=_SIZE.value, device=_DEVICE.value,
          torch_device=torch_device, isolate=_isolate(),
          tune_host_malloc=dict(alternating.TUNE_HOST_MALLOC),
          argv=sys.argv[1:]))
  res['partial'] = True
  train_rows = []
  if only & {'train', 'flops', 'loader'}:
    train_rows = run_train(steps, _WARMUP.value, torch_device, quick)
  if 'gradcam' in only and torch_device:
    run_gradcam(steps, _WARMUP.value, torch_device)
  if 'loader' in only:
    run_loader(train_rows, quick)
  if 'flops' in only:
    res['flops'] = run_flops(train_rows)
  res['load_avg_end'] = os.getloadavg()[0]
  res['partial'] = False
  md = report(res)
  print(md)
  _save(res, md)


if __name__ == '__main__':
  app.run(main)
