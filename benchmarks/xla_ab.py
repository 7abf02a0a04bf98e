r"""A/B of train-step variants (XLA options, model fields, batch) in one
process.

  python -m benchmarks.xla_ab --model=vgg16 --batch=8 --steps=3 \
      --variant=default: \
      --variant=ynn_reduce:xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE
  python -m benchmarks.xla_ab --device=gpu --dtype=bfloat16 --model=vit_b16 \
      --batch=128 --steps=10 --variant=default: \
      --variant=cudnn:model.attn_implementation=cudnn \
      --variant=cudnn_b256:model.attn_implementation=cudnn,batch=256

Each `--variant=NAME:KEY=VALUE,KEY=VALUE` builds the project's train step
(as `benchmarks.train_step.build_jax_step` builds it). Keys: `batch` (the
variant's batch size; default `--batch`), `model.FIELD` (a field of
`config.model`, e.g. `model.attn_implementation=cudnn`), anything else an XLA
debug option passed to the step's compile (`Lowered.compile(
compiler_options=...)`, no XLA_FLAGS needed; a value with commas goes last,
as above). The variants and the torch reference (batch `--batch`) then run
interleaved (ABBA), so machine load hits all of them alike. Read the
variants against each other; the torch column shares the process, which
on CPU slows both sides unevenly (`benchmarks/alternating.py`), so CPU
JAX/torch ratios come from `benchmarks.run`. Prints each
variant's median step time, images/s, its rate over torch's, achieved
FLOP/s and (on an accelerator with a known peak) MFU; `--out` writes the rows
as JSON. This is how the CPU flag in `cxr_jax.runtime.xla_flags.CPU_XLA_FLAGS` was
chosen.
"""
from __future__ import annotations

import gzip
import json
import os
import statistics
import time

from absl import app
from absl import flags
import jax

from benchmarks import flops as flops_lib
from benchmarks import train_step


def parse_variant(spec: str) -> tuple[str, dict[str, object]]:
  """'name:a=1,b=x,y' -> ('name', {'a': True/int/str...})."""
  name, _, rest = spec.partition(':')
  opts: dict[str, object] = {}
  key = None
  for part in rest.split(',') if rest else []:
    if '=' in part:
      key, value = part.split('=', 1)
      opts[key] = value
    elif key is not None:  # a comma inside the previous value
      opts[key] = f'{opts[key]},{part}'
  for k, v in opts.items():
    if v in ('true', 'false'):
      opts[k] = v == 'true'
    elif v == 'none':
      opts[k] = None
    elif isinstance(v, str) and v.lstrip('-').isdigit():
      opts[k] = int(v)
    else:
      try:
        opts[k] = float(v)
      except ValueError:
        pass
  return name, opts


def split_options(opts: dict[str, object], batch: int
                  ) -> tuple[int, dict[str, object], dict[str, object]]:
  """A parsed variant -> (batch, model fields, XLA options)."""
  opts = dict(opts)
  batch = int(opts.pop('batch', batch))
  model = {k[len('model.'):]: opts.pop(k) for k in list(opts)
           if k.startswith('model.')}
  return batch, model, opts


def profile(fn, name: str, steps: int, trace_dir: str) -> None:
  """Traces `steps` calls of a warmed-up step and prints the summary."""
  from benchmarks import trace_summary  # pylint: disable=g-import-not-at-top
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for _ in range(steps):
      fn()
  print(f'== profile of {name!r} ({trace_dir})')
  print(trace_summary.report(
      trace_summary.summarise(trace_summary.load_events(trace_dir)), steps),
        flush=True)


def define_flags() -> None:
  """The command-line flags (defined only when run as a script, so that
  importing this module next to `benchmarks.run` does not clash)."""
  flags.DEFINE_string('model', 'resnet50', 'Registered classifier.')
  flags.DEFINE_integer('batch', 8, 'Batch size (torch; variants default).')
  flags.DEFINE_integer('size', 224, 'Input size.')
  flags.DEFINE_integer('steps', 3, 'Timed rounds.')
  flags.DEFINE_integer('warmup', 1, 'Untimed rounds after compiling.')
  flags.DEFINE_enum('device', 'cpu', ['cpu', 'gpu'], 'Where to run.')
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'],
                    'Compute dtype (torch: autocast).')
  flags.DEFINE_multi_string(
      'variant', ['default:'], 'NAME:KEY=VALUE[,KEY=VALUE...]: batch=N, '
      'model.FIELD=V or an XLA option (the last value may contain commas).')
  flags.DEFINE_bool('torch', True, 'Also time the torch reference.')
  flags.DEFINE_string('out', None, 'Write the rows to this JSON file.')
  flags.DEFINE_string('profile', None, 'After timing, trace this variant '
                      'for --profile_steps steps and print where its device '
                      'time goes (benchmarks.trace_summary).')
  flags.DEFINE_string('hlo_out', None, 'Write each variant\'s optimised HLO '
                      '(`Compiled.as_text()`) to DIR/NAME.hlo.txt.gz.')
  flags.DEFINE_integer('profile_steps', 3, 'Steps traced by --profile.')
  flags.DEFINE_string('profile_dir', '/tmp/cxr_jax_xla_ab_trace',
                      'Where --profile writes the trace.')


def main(argv):
  del argv
  f = flags.FLAGS
  if f.device == 'cpu':
    jax.config.update('jax_platforms', 'cpu')
  fns, rows = {}, {}
  for spec in f.variant:
    name, opts = parse_variant(spec)
    batch, model_kw, xla_opts = split_options(opts, f.batch)
    try:
      cfg = train_step.classifier_config(f.model, dtype=f.dtype, **model_kw)
      js = train_step.build_jax_step(
          cfg, train_step.classifier_batch(batch, f.size, 1000),
          compiler_options=xla_opts)
    except Exception as e:  # pylint: disable=broad-except
      print(f'{name}: FAILED to build: {type(e).__name__}: {e}'[:2000],
            flush=True)
      continue
    print(f'{name}: batch {batch} model {model_kw} xla {xla_opts}: init '
          f'{js.init_s:.1f} s, compiled in {js.compile_s:.1f} s', flush=True)
    fns[name] = js
    if f.hlo_out:
      os.makedirs(f.hlo_out, exist_ok=True)
      with gzip.open(os.path.join(f.hlo_out, f'{name}.hlo.txt.gz'), 'wt') as fh:
        fh.write(js.compiled.as_text())
    rows[name] = dict(variant=name, batch=batch, model_kw=model_kw,
                      xla_options=xla_opts, init_s=js.init_s,
                      compile_s=js.compile_s, flops_per_step=js.flops)
  if f.torch:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(os.cpu_count())
    fns['torch'] = train_step.TorchTrainStep(
        f.model, batch=f.batch, size=f.size, num_classes=1000, dtype=f.dtype,
        device='cuda' if f.device == 'gpu' else 'cpu')
    rows['torch'] = dict(variant='torch', batch=f.batch)
  times = train_step.interleaved(fns, f.steps, f.warmup)
  kind = flops_lib.device_name()
  peak = flops_lib.published_peak(kind, f.dtype) if f.device != 'cpu' else None
  ref = (rows['torch']['batch'] / statistics.median(times['torch'])
         if 'torch' in times else None)
  print(f'{kind}, {f.model}, {f.dtype}')
  for name, ts in times.items():
    row = rows[name]
    med = statistics.median(ts)
    row.update(step_s=med, images_per_s=row['batch'] / med, times=ts)
    line = (f'{name:14s} batch {row["batch"]:4d} median {med * 1e3:9.2f} ms '
            f'{row["images_per_s"]:9.1f} img/s')
    if ref and name != 'torch':
      row['vs_torch'] = row['images_per_s'] / ref
      line += f'  x{row["vs_torch"]:.2f} torch'
    if row.get('flops_per_step'):
      row['flops_per_s'] = row['flops_per_step'] / med
      line += f'  {row["flops_per_s"] / 1e12:7.2f} TFLOP/s'
      row['mfu_pct'] = flops_lib.utilisation(row['flops_per_step'], med, peak)
      if row['mfu_pct'] is not None:
        line += f'  MFU {row["mfu_pct"]:.1f}%'
    print(line, flush=True)
  print(f'load average {os.getloadavg()}')
  if f.profile:
    profile(fns[f.profile], f.profile, f.profile_steps, f.profile_dir)
  if f.out:
    with open(f.out, 'w') as fh:
      json.dump(dict(device=kind, model=f.model, dtype=f.dtype,
                     rows=list(rows.values())), fh, indent=1, default=str)


if __name__ == '__main__':
  define_flags()
  app.run(main)
