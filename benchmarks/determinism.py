r"""Which XLA CPU results depend on the machine: threads and instruction set.

  .venv/bin/python -m benchmarks.determinism [--out=/tmp/determinism]

Runs a few float32 programs (a dot with a long inner dimension, a short
one, a 3x3 convolution, its weight and input gradients, a per-channel mean
and variance over (B, H, W), a long sum) in fresh processes under
different settings and prints, per program, the largest absolute
difference from the first setting:

  reference   all cores, the CPU's own instruction set
  one_core    `taskset -c 0`: XLA's CPU runtime then uses one thread
  avx2        XLA_FLAGS=--xla_cpu_max_isa=AVX2 (code generation capped at
              AVX2, as on a CPU without AVX-512)

each with the project's CPU XLA flag (`cxr_jax.runtime.xla_flags`) and, as a
second group, with XLA's defaults. A difference of 0 means bitwise equal.
A program whose result moves with the thread count or the instruction set
gives different training runs on different machines from the same code,
data and seed: a one-ulp difference early in training grows, and tiny
models trained for a few epochs (the demos) end in visibly different
numbers.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

from absl import app
from absl import flags
import numpy as np

SETTINGS = {
    'reference': ([], {}),
    'one_core': (['taskset', '-c', '0'], {}),
    'avx2': ([], {'XLA_FLAGS': '--xla_cpu_max_isa=AVX2'}),
}


def programs() -> dict[str, np.ndarray]:
  """The programs' float32 results on fixed random inputs (run in a child)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  f32 = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  a, b = f32(256, 4096), f32(4096, 64)
  a2, b2 = f32(2048, 256), f32(256, 512)
  x, w = f32(8, 32, 32, 64), f32(3, 3, 64, 64)
  big = f32(1 << 22)

  def conv(x, w):
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  loss = lambda x, w: (conv(x, w) ** 2).sum()
  out = {
      'dot, inner dim 4096': jax.jit(jnp.dot)(a, b),
      'dot, inner dim 256': jax.jit(jnp.dot)(a2, b2),
      'conv 3x3': jax.jit(conv)(x, w),
      'conv weight gradient': jax.jit(jax.grad(loss, 1))(x, w),
      'conv input gradient': jax.jit(jax.grad(loss, 0))(x, w),
      'mean over (B, H, W)': jax.jit(lambda v: v.mean((0, 1, 2)))(x),
      'variance over (B, H, W)': jax.jit(lambda v: v.var((0, 1, 2)))(x),
      'sum of 4M values': jax.jit(jnp.sum)(big),
  }
  out['DenseNet train steps (params)'] = _densenet_steps()
  return {k: np.asarray(v) for k, v in out.items()}


def _densenet_steps(steps: int = 3):
  """The test-sized DenseNet's parameters after a few SGD steps on fixed
  inputs (BatchNorm in training mode): the demos' kind of computation."""
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from cxr_jax import models  # pylint: disable=g-import-not-at-top
  model = models.get_model('densenet_tiny', num_classes=3, in_chans=1)
  rng = np.random.default_rng(1)
  x = rng.normal(size=(8, 64, 64, 1)).astype(np.float32)
  y = np.arange(8) % 3
  v = models.init_variables(model, jax.random.key(0), x[:1])
  params, stats = v['params'], v['batch_stats']

  @jax.jit
  def step(params, stats):
    def loss(p):
      (logits, _), new = model.apply({'params': p, 'batch_stats': stats}, x,
                                     train=True, mutable=['batch_stats'])
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, y).mean(), new['batch_stats']
    (_, stats), g = jax.value_and_grad(loss, has_aux=True)(params)
    return jax.tree.map(lambda p, d: p - 0.1 * d, params, g), stats

  for _ in range(steps):
    params, stats = step(params, stats)
  return np.concatenate([np.ravel(a) for a in jax.tree.leaves(params)])


def _child(path: str, project_flag: bool) -> None:
  if project_flag:
    from cxr_jax.runtime import xla_flags  # pylint: disable=g-import-not-at-top
    xla_flags.apply()
  res = programs()
  np.savez(path, names=np.array(list(res)), **{
      f'r{i}': v for i, v in enumerate(res.values())})


def _run(setting: str, project_flag: bool, out_dir: str) -> dict:
  prefix, env = SETTINGS[setting]
  path = os.path.join(out_dir, f'{setting}_{int(project_flag)}.npz')
  cmd = prefix + [sys.executable, '-m', 'benchmarks.determinism',
                  f'--child={path}', f'--project_flag={project_flag}']
  subprocess.run(cmd, check=True, env={**os.environ, **env})
  data = np.load(path)
  return {str(n): data[f'r{i}'] for i, n in enumerate(data['names'])}


def main(argv) -> None:
  del argv
  fl = flags.FLAGS
  if fl.child:
    _child(fl.child, fl.project_flag)
    return
  if shutil.which('taskset') is None:
    raise SystemExit('taskset (util-linux) is needed for the one_core run.')
  os.makedirs(fl.out, exist_ok=True)
  for project_flag in (True, False):
    runs = {s: _run(s, project_flag, fl.out) for s in SETTINGS}
    ref = runs['reference']
    print(f'\n### XLA flags: {"the project CPU flag" if project_flag else "defaults"}'
          '\n\n| program | ' + ' | '.join(s for s in SETTINGS if s != 'reference')
          + ' |\n|---|' + '---|' * (len(SETTINGS) - 1))
    for name in ref:
      diffs = [float(np.abs(runs[s][name] - ref[name]).max())
               for s in SETTINGS if s != 'reference']
      print(f'| {name} | ' + ' | '.join(f'{d:.3g}' for d in diffs) + ' |')


if __name__ == '__main__':
  flags.DEFINE_string('out', '/tmp/determinism', 'Folder for the results.')
  flags.DEFINE_string('child', '', 'Internal: run the programs, write here.')
  flags.DEFINE_bool('project_flag', True, 'Internal: with the CPU XLA flag.')
  app.run(main)
