r"""Compile the project's train step for a GPU that is not there (deviceless).

  JAX_PLATFORMS=cpu python -m benchmarks.aot_gpu --model=vit_b16 --batch=256 \
      --dtype=bfloat16 --model_kw=gelu_approximate=true --hlo_out=/tmp/vit.hlo

XLA compiles for the card that `--target_config` describes (default:
`benchmarks/h100_target_config.txtpb`) without running anything, so the
optimised GPU program (fusions, layouts, custom calls) can be read and
compared on any machine: what a short lease on a real GPU cannot afford.
Prints the compile time, the fusions by kind with the bytes their outputs
write and their operands read per step (an estimate of the memory traffic:
each operand counted once: whole, or only its sliced part, or for a loop
fusion at most one element per output element, so fusions that read an
operand twice or reduce inside a loop are under-counted), the transposing
fusions, and arrays stored batch-minor (the batch size as the minor
dimension of an array of rank >= 3; pick a batch size no feature axis has,
e.g. 120, or channels of that size show up too). `--xla_option` passes
further XLA options (e.g. xla_gpu_enable_triton_gemm=false for cuBLAS
GEMMs).
No timing: autotuning is off (level 0), the kernels are not run. This is
how the ViT's batch-minor residual stream was found and removed
(`cxr_jax.models.ops.add_over_batch`; `benchmarks/README.md`, lever G-5).

Needs jaxlib's CUDA plugin (`pip install "jax[cuda12]==<jax version>"`,
best in a separate venv: with it installed, JAX looks for a GPU at start) and
`JAX_PLATFORMS=cpu`, so that the step is traced and the state built on the
host. The step is traced as on a GPU: the CPU-only forms of
`cxr_jax.models.ops` are switched off, and the ViT's attention is
`--model_kw=attn_implementation=cudnn` when asked for (cuDNN's compute
capability check is skipped: there is no device to ask).
"""
from __future__ import annotations

import collections
import os
import re
import time

from absl import app
from absl import flags
import jax

_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 'bf16': 2, 'f16': 2, 's16': 2,
          'f32': 4, 's32': 4, 'u32': 4, 'f64': 8, 's64': 8, 'u64': 8}


def _arrays(text: str) -> list[tuple[int, int]]:
  """(elements, bytes per element) of every array shape in an HLO type."""
  out = []
  for dtype, dims in re.findall(r'\b(\w+)\[([0-9,]*)\]', text):
    n = 1
    for d in filter(None, dims.split(',')):
      n *= int(d)
    out.append((n, _BYTES.get(dtype, 0)))
  return out


def shape_bytes(text: str) -> int:
  """Bytes of every array shape in an HLO type string (tuples summed)."""
  return sum(n * b for n, b in _arrays(text))


def _loop_read(operand_type: str, out_elements: int) -> int:
  """Bytes a loop fusion (elementwise, slices, broadcasts: one element of
  each operand per element of its outputs at most) reads of an operand."""
  return sum(min(n, out_elements) * b for n, b in _arrays(operand_type))


def _computations(text: str) -> dict[str, list[str]]:
  """Body lines of every non-entry computation of an HLO module, by name."""
  bodies = {}
  for m in re.finditer(r'^%([\w.-]+) \(.*?\n((?:.*\n)*?)\}$', text, re.M):
    bodies[m.group(1)] = m.group(2).splitlines()
  return bodies


def _sliced_reads(body: list[str]) -> dict[int, int]:
  """{parameter number: bytes} for the parameters of a fused computation
  (its body lines) that are only sliced inside it (the bytes of the slices,
  not of the whole operand)."""
  params = {}
  for line in body:
    m = re.match(r'\s*(?:ROOT )?%(\S+) = \S+ parameter\((\d+)\)', line)
    if m:
      params[m.group(1)] = int(m.group(2))
  reads = {}
  for pname, number in params.items():
    uses = [re.match(r'\s*(?:ROOT )?%\S+ = (.*?) ([\w-]+)\(', line)
            for line in body if re.search(rf'%{re.escape(pname)}[,)]', line)
            and not re.match(rf'\s*%{re.escape(pname)} = ', line)]
    if uses and all(u and u.group(2) in ('slice', 'dynamic-slice')
                    for u in uses):
      reads[number] = sum(shape_bytes(u.group(1)) for u in uses)
  return reads


def summarise_hlo(text: str, batch: int) -> dict[str, object]:
  """Entry-computation facts of an optimised HLO module (see module doc)."""
  entry = text[text.index('\nENTRY'):] if '\nENTRY' in text else text
  bodies = _computations(text[:len(text) - len(entry)] + '\n')
  by_kind: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
  transposing = []
  types = dict(re.findall(r'(\w[\w.-]*): (\w+\[[0-9,]*\])',
                          entry.split('\n', 2)[1]))  # ENTRY's parameters
  for line in entry.splitlines():
    m = re.match(r'\s*(?:ROOT )?%(\S+) = (.*?) ([\w-]+)\((.*?)\)[,\s]*',
                 line)
    if m:
      types[m.group(1)] = m.group(2)
    if not m or m.group(3) not in ('fusion', 'custom-call'):
      continue
    name, out_type, op, operands = m.groups()
    called = re.search(r'calls=%([\w.-]+)', line)
    sliced = _sliced_reads(bodies.get(called.group(1), [])) if called else {}
    loop = 'kind=kLoop' in line
    out_elements = sum(n for n, _ in _arrays(out_type))
    read = sum(
        sliced.get(i, _loop_read(types.get(o, ''), out_elements) if loop
                   else shape_bytes(types.get(o, '')))
        for i, o in enumerate(re.findall(r'%([\w.-]+)', operands)))
    target = re.search(r'custom_call_target="([^"]+)"', line)
    kind = (re.match(r'[A-Za-z_]*', called.group(1)).group(0) if called else
            f'custom-call {target.group(1) if target else "?"}')
    kind = re.sub(r'^(fused_|wrapped_)', '', kind)
    by_kind[kind][0] += 1
    by_kind[kind][1] += shape_bytes(out_type)
    by_kind[kind][2] += read
    if 'transpose' in kind:
      transposing.append(name)
  minor = sorted({s for s in re.findall(r'\b\w+\[[0-9,]+\]\{[0-9,]+\}', entry)
                  if re.search(rf'\[(?:\d+,){{2,}}{batch}\]\{{(?:\d+,)*0\}}',
                               s)})
  return dict(
      fusions={k: dict(count=c, bytes=b, bytes_read=r) for k, (c, b, r) in
               sorted(by_kind.items(), key=lambda kv: -kv[1][1])},
      bytes_written=sum(v[1] for v in by_kind.values()),
      bytes_read=sum(v[2] for v in by_kind.values()),
      transposing=transposing, batch_minor_shapes=minor)


def compile_for_target(config, batch_np, target_config: str,
                       autotune_level: int = 0,
                       options: dict[str, object] | None = None):
  """(compiled, seconds) of the trainer's step for an absent GPU;
  `options`: further XLA options for the compile."""
  from jax._src.cudnn import fused_attention_stablehlo as fa  # pylint: disable=g-import-not-at-top
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  from benchmarks import train_step  # pylint: disable=g-import-not-at-top
  from cxr_jax.models import ops  # pylint: disable=g-import-not-at-top
  from cxr_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top
  fa.check_compute_capability = lambda *a, **k: True  # no device to ask
  ops.on_cpu = lambda: False
  topo = topologies.get_topology_desc('target', 'cuda',
                                      target_config=target_config,
                                      topology='1x1x1')
  mesh = jax.sharding.Mesh(topo.devices, ('d',))
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  model, state, batch, tx, labels, _ = train_step.build_state(config,
                                                               batch_np)
  step = step_lib.make_train_step(config, model, tx, labels)
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
      (state, batch))
  t = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=(0,)).lower(*abstract).compile(
      compiler_options={'xla_gpu_autotune_level': autotune_level,
                        **(options or {})})
  return compiled, time.perf_counter() - t


def define_flags() -> None:
  """The command-line flags (defined only when run as a script, so that
  importing this module next to `benchmarks.run` does not clash)."""
  flags.DEFINE_string('model', 'vit_b16', 'Registered classifier, or '
                      "'stage2' / 'stage2_demo' (the cooperative model at "
                      'thesis / demo size).')
  flags.DEFINE_integer('batch', 128, 'Batch size.')
  flags.DEFINE_integer('size', 224, 'Classifier input size.')
  flags.DEFINE_enum('dtype', 'bfloat16', ['float32', 'bfloat16'],
                    'Compute dtype.')
  flags.DEFINE_list('model_kw', [], 'FIELD=VALUE of config.model '
                    '(true/false/none/ints parsed).')
  flags.DEFINE_string(
      'target_config', os.path.join(os.path.dirname(__file__),
                                    'h100_target_config.txtpb'),
      "XLA's GpuTargetConfig (text proto) of the card to compile for.")
  flags.DEFINE_string('hlo_out', None, 'Write the optimised HLO.')
  flags.DEFINE_integer('autotune_level', 0, 'XLA GPU autotuning (only 0 '
                       'works without a device).')
  flags.DEFINE_list('xla_option', [], 'KEY=VALUE XLA options for the '
                    'compile (as `benchmarks.xla_ab` variants take them), '
                    'e.g. xla_gpu_enable_triton_gemm=false.')


def main(argv):
  del argv
  f = flags.FLAGS
  from benchmarks import train_step  # pylint: disable=g-import-not-at-top
  from benchmarks import xla_ab  # pylint: disable=g-import-not-at-top
  _, kw = xla_ab.parse_variant('x:' + ','.join(f.model_kw))
  _, options = xla_ab.parse_variant('x:' + ','.join(f.xla_option))
  name, b = f.model, f.batch
  if name in ('stage2', 'stage2_demo'):
    config = train_step.stage2_config(demo=name == 'stage2_demo', batch=b,
                                      dtype=f.dtype)
    config.model.update(kw)
    batch_np = train_step.stage2_batch(config, b)
  else:
    config = train_step.classifier_config(name, dtype=f.dtype, **kw)
    batch_np = train_step.classifier_batch(b, f.size, 1000)
  with open(f.target_config) as fh:
    target = fh.read()
  compiled, seconds = compile_for_target(config, batch_np, target,
                                         f.autotune_level, options)
  text = compiled.as_text()
  if f.hlo_out:
    with open(f.hlo_out, 'w') as fh:
      fh.write(text)
  s = summarise_hlo(text, b)
  print(f'{name} batch {b} {f.dtype} {kw} {options or ""}: compiled in '
        f'{seconds:.1f} s '
        f'for {target.split("device_description_str:")[-1].strip()}')
  print(f'fusion/custom-call outputs: {s["bytes_written"] / 1e9:.2f} GB '
        f'written, operands {s["bytes_read"] / 1e9:.2f} GB read per step')
  print(f'  {"kind":40s} {"count":>6s} {"written":>8s} {"read":>8s}')
  for kind, v in list(s['fusions'].items())[:15]:
    print(f'  {kind:40s} {v["count"]:5d}x {v["bytes"] / 1e9:8.2f} '
          f'{v["bytes_read"] / 1e9:8.2f} GB')
  print(f'transposing fusions: {len(s["transposing"])}')
  print(f'batch-minor array shapes: {len(s["batch_minor_shapes"])} '
        f'{s["batch_minor_shapes"][:6]}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
