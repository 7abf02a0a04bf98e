r"""A/B of XLA compiler options on one train step, in one process.

  python -m benchmarks.xla_ab --model=vgg16 --batch=8 --steps=3 \
      --variant=default: \
      --variant=ynn_reduce:xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE

Each `--variant=NAME:OPT=VALUE,OPT=VALUE` compiles the project's train step
(built as `benchmarks.train_step.build_jax_step` builds it) with those XLA
debug options passed per compile (`Lowered.compile(compiler_options=...)`,
no XLA_FLAGS needed; a value with commas goes last, as above); the variants
and the torch reference then run interleaved (ABBA), so machine load hits
all of them alike. Prints each variant's median step time and torch / it.
This is how the CPU flag in `cxr_jax.xla_flags.CPU_XLA_FLAGS` was chosen.
"""
from __future__ import annotations

import os
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from benchmarks import train_step
from cxr_jax import train

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
    elif isinstance(v, str) and v.lstrip('-').isdigit():
      opts[k] = int(v)
  return name, opts


def define_flags() -> None:
  """The command-line flags (defined only when run as a script, so that
  importing this module next to `benchmarks.run` does not clash)."""
  flags.DEFINE_string('model', 'resnet50', 'Registered classifier.')
  flags.DEFINE_integer('batch', 8, 'Batch size.')
  flags.DEFINE_integer('size', 224, 'Input size.')
  flags.DEFINE_integer('steps', 3, 'Timed rounds.')
  flags.DEFINE_multi_string(
      'variant', ['default:'], 'NAME:OPT=VALUE[,OPT=VALUE...] (the last '
      'value may contain commas).')
  flags.DEFINE_bool('torch', True, 'Also time the torch reference.')


def main(argv):
  del argv
  f = flags.FLAGS
  jax.config.update('jax_platforms', 'cpu')
  cfg = train_step.classifier_config(f.model)
  batch_np = train_step.classifier_batch(f.batch, f.size, 1000)
  fns = {}
  for spec in f.variant:
    name, opts = parse_variant(spec)
    model = train.build_model(cfg.model)
    batch = {k: jnp.asarray(v) for k, v in batch_np.items()}
    state, (tx, _) = train.init_state(cfg, model, batch, jax.random.key(0))
    step = train.make_train_step(cfg, model, tx)
    t = time.perf_counter()
    lowered = jax.jit(step, donate_argnums=(0,)).lower(state, batch)
    compiled = lowered.compile(compiler_options=opts or None)
    print(f'{name}: {opts} compiled in {time.perf_counter() - t:.1f} s')
    fns[name] = train_step.JaxTrainStep(compiled, state, batch, 0., None)
  if f.torch:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(os.cpu_count())
    fns['torch'] = train_step.TorchTrainStep(
        f.model, batch=f.batch, size=f.size, num_classes=1000)
  times = train_step.interleaved(fns, f.steps, 1)
  ref = statistics.median(times['torch']) if 'torch' in times else None
  for name, ts in times.items():
    med = statistics.median(ts)
    vs = f'  torch / this {ref / med:.2f}' if ref else ''
    print(f'{f.model} batch {f.batch} {name:12s} median {med:.3f} s'
          f'{vs}  ({", ".join(f"{x:.2f}" for x in ts)})')
  print(f'load average {os.getloadavg()}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
