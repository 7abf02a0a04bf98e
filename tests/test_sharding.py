"""The same train steps on 1 and on 8 (forced) CPU devices give the same losses."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np

_SCRIPT = textwrap.dedent('''
    import json, sys
    from absl import flags
    flags.FLAGS.mark_as_parsed()
    import jax
    from cxr_jax import train
    from configs import siim_classifier
    c = siim_classifier.get_config('demo')
    c.total_steps = 3
    c.log_every_steps = 1
    c.eval_every_steps = 3
    c.evals.test.final = False
    c.augment.noise_std = 0.0  # (augmentation is per-example seeded anyway)
    assert jax.device_count() == int(sys.argv[2]), jax.devices()
    train.run(c, sys.argv[1])
''')


def _losses(workdir, devices, cache_dir):
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count='
             f'{devices}', CXR_JAX_CACHE=cache_dir, JAX_PLATFORMS='cpu')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run([sys.executable, '-c', _SCRIPT, workdir, str(devices)],
                 check=True, cwd=root, env=env)
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  train_loss = [r['train/loss'] for r in rows if 'train/loss' in r]
  val = [r['val/loss'] for r in rows if 'val/loss' in r]
  return np.array(train_loss), np.array(val)


def test_one_vs_eight_devices_same_losses(tmp_path):
  cache = os.environ.get('CXR_JAX_CACHE', str(tmp_path / 'cache'))
  l1, v1 = _losses(str(tmp_path / 'd1'), 1, cache)
  l8, v8 = _losses(str(tmp_path / 'd8'), 8, cache)
  assert len(l1) == 3
  np.testing.assert_allclose(l1, l8, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(v1, v8, atol=1e-5, rtol=1e-5)
