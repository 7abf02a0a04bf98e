"""Layouts over devices: the same losses on 1 and 8 (forced) CPU devices and
on a ('data', 'model') mesh with sharded parameters; the mesh and sharding
rules from config (cxr_jax/runtime/sharding.py, partition.py) and their
errors."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from absl import flags
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags

from cxr_jax import models
from cxr_jax import optim
from cxr_jax.runtime import partition
from cxr_jax.runtime import sharding

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


# A ('data', 4) x ('model', 2) mesh on 8 forced CPU devices: the tiny ViT
# with the 'megatron_vit' + 'fsdp' rules against plain data parallelism on the
# same 8 devices (same global batch), then a crash and resume on the 2-D mesh.
_MODEL_PARALLEL = textwrap.dedent('''
    import json, sys
    from absl import flags
    flags.FLAGS.mark_as_parsed()
    import jax
    import numpy as np
    from cxr_jax import ckpt, train, weights
    from cxr_jax.runtime import partition
    from cxr_jax.data import pipeline
    from configs import siim_classifier
    root = sys.argv[1]
    assert jax.device_count() == 8, jax.devices()

    def config(model_parallel):
      c = siim_classifier.get_config(
          f'demo,model=vit_tiny,model_parallel={model_parallel}')
      c.total_steps = 4
      c.log_every_steps = 1
      c.eval_every_steps = 4
      c.checkpoint_every_steps = 2
      c.evals.test.final = False
      return c

    seen = {}  # the live train state's layout, recorded at each save
    save = ckpt.Checkpointer.save_latest

    def recording_save(self, step, state, *args):
      fc1 = state.params['blocks_0']['mlp']['fc1']['kernel']
      moments = [(partition.path_str(p), x) for p, x in
                 jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
                 if partition.path_str(p).endswith('blocks_0/mlp/fc1/kernel')]
      seen['fc1'] = (str(fc1.sharding.spec), fc1.shape,
                     [s.data.shape for s in fc1.addressable_shards])
      seen['moments'] = [(p, str(x.sharding.spec)) for p, x in moments]
      seen['qkv'] = str(state.params['blocks_0']['attn']['query']['kernel']
                        .sharding.spec)
      seen['step'] = str(state.step.sharding.spec)
      seen['mesh'] = dict(fc1.sharding.mesh.shape)
      return save(self, step, state, *args)

    class Crash(Exception):
      pass

    real = pipeline.train_iterator

    def crashing(*a, **k):  # dies fetching step 3's batch (after ckpt 2)
      it = real(*a, **k)
      class It:
        n = 0
        def __next__(self):
          It.n += 1
          if It.n == 3:
            raise Crash()
          return next(it)
        get_state, set_state = it.get_state, it.set_state
      return It()

    train.run(config(0), root + '/dp')
    ckpt.Checkpointer.save_latest = recording_save
    train.run(config(2), root + '/mp')
    pipeline.train_iterator = crashing
    try:
      train.run(config(2), root + '/resumed')
      raise AssertionError('no crash')
    except Crash:
      pass
    pipeline.train_iterator = real
    train.run(config(2), root + '/resumed')
    a = weights.restore(root + '/mp')['params']
    b = weights.restore(root + '/resumed')['params']
    seen['resume_max_diff'] = max(float(np.abs(x - y).max()) for x, y in
                                  zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    json.dump(seen, open(root + '/seen.json', 'w'))
''')


def _rows(workdir, key):
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  return np.array([r[key] for r in rows if key in r])


def test_model_parallel_mesh_same_losses_sharded_params_and_resume(tmp_path):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  env.setdefault('CXR_JAX_CACHE', str(tmp_path / 'cache'))
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run([sys.executable, '-c', _MODEL_PARALLEL, str(tmp_path)],
                 check=True, cwd=root, env=env, timeout=600)
  dp, mp, res = (str(tmp_path / d) for d in ('dp', 'mp', 'resumed'))
  # (1) the same losses as data parallelism with the same global batch
  assert len(_rows(mp, 'train/loss')) == 4
  for key in ('train/loss', 'val/loss'):
    np.testing.assert_allclose(_rows(mp, key), _rows(dp, key), atol=1e-5,
                               rtol=1e-5)
  # (2) parameters and their optimizer moments really are sharded
  seen = json.load(open(tmp_path / 'seen.json'))
  assert seen['mesh'] == {'data': 4, 'model': 2}
  spec, shape, shards = seen['fc1']
  assert spec == str(P(None, 'model')) and shape == [32, 128]
  assert shards == [[32, 64]] * 8  # each device holds half the columns
  assert seen['moments'] and all(s == str(P(None, 'model'))
                                 for _, s in seen['moments'])
  assert seen['qkv'] == str(P(None, 'model', None))  # split by head
  assert seen['step'] == str(P())
  # (3) crash after the step-2 checkpoint + resume = uninterrupted
  np.testing.assert_allclose(_rows(res, 'train/loss'), _rows(mp, 'train/loss'),
                             atol=0, rtol=0)
  assert seen['resume_max_diff'] == 0.0


# ------------------------------------------------- rules and mesh, no devices


@pytest.fixture(scope='module')
def vit_params():
  model = models.get_model('vit_tiny', num_classes=2, in_chans=1)
  return jax.eval_shape(lambda: model.init(
      jax.random.key(0), np.zeros((2, 64, 64, 1), np.float32)))['params']


SIZES = {'data': 4, 'model': 2}


def _spec(specs, path):
  flat = {jax.tree_util.keystr(k, simple=True, separator='/'): s
          for k, s in jax.tree_util.tree_leaves_with_path(specs)}
  return flat[path]


def test_presets(vit_params):
  fsdp = partition.partition_specs(vit_params, ('fsdp',), SIZES)
  assert _spec(fsdp, 'blocks_0/mlp/fc1/kernel') == P(None, 'model')  # 128
  assert _spec(fsdp, 'blocks_0/mlp/fc2/kernel') == P('model')
  assert _spec(fsdp, 'patch_embed/kernel') == P(None, None, None, 'model')
  assert _spec(fsdp, 'cls_token') == P(None, None, 'model')
  both = partition.partition_specs(vit_params, ('megatron_vit', 'fsdp'), SIZES)
  assert _spec(both, 'blocks_1/attn/key/kernel') == P(None, 'model', None)
  assert _spec(both, 'blocks_1/attn/key/bias') == P('model', None)
  assert _spec(both, 'blocks_1/attn/proj/kernel') == P('model', None)
  assert _spec(both, 'blocks_1/mlp/fc1/bias') == P('model')
  assert _spec(both, 'blocks_1/mlp/fc2/kernel') == P('model', None)
  assert _spec(both, 'head/kernel') == P('model')  # fsdp: (32, 2) -> dim 0
  megatron = partition.partition_specs(vit_params, ('megatron_vit',), SIZES)
  assert _spec(megatron, 'norm/scale') == P()  # unmatched: replicated
  over_data = partition.partition_specs(vit_params, ('fsdp:data',), SIZES)
  assert _spec(over_data, 'blocks_0/mlp/fc1/kernel') == P(None, 'data')
  assert all(s == P() for s in jax.tree.leaves(
      partition.partition_specs(vit_params, (), SIZES),
      is_leaf=lambda x: isinstance(x, P)))
  explicit = partition.partition_specs(
      vit_params, (('.*fc1/kernel', (None, ('data', 'model'))),), SIZES)
  assert _spec(explicit, 'blocks_0/mlp/fc1/kernel') == P(None,
                                                         ('data', 'model'))


@pytest.mark.parametrize('rules, match', [
    ((('.*fc1/kernel', ('model',)),), r'blocks_0/mlp/fc1/kernel of shape '
     r'\(32, 128\): dimension 32 is not divisible by 3'),
    ((('.*fc1/kernel', (None, 'modle')),), "axis 'modle' is not in the mesh"),
    ((('.*fc1/kernel', ('model', 'model')),), "'model' is used twice"),
    ((('.*fc1/kernel', (None, None, 'model')),), '3 entries for 2 dim'),
    (('fdsp',), "unknown preset 'fdsp'.*fsdp, megatron_vit"),
    ((('.*', 'model'),), 'axis names go in a tuple'),
    (('fsdp:tensor',), "axis 'tensor' is not in the mesh"),
    ((('([', 'fsdp'),), 'bad regex'),
])
def test_bad_rules_are_clear_errors(vit_params, rules, match):
  with pytest.raises(ValueError, match=match):
    partition.partition_specs(vit_params, rules, {'data': 1, 'model': 3})


@pytest.mark.parametrize('mesh, match', [
    ((('data', -1), ('model', 3)), 'does not fit the 8 devices'),
    ((('data', 2), ('model', 2)), 'does not fit the 8 devices'),
    ((('data', -1), ('model', -1)), 'at most one -1'),
    ((('model', 8),), "no 'data' axis"),
    ((('data', -1), ('data', 2)), 'distinct'),
    ((('data', 'x'),), 'not an integer'),
])
def test_bad_meshes_are_clear_errors(mesh, match):
  with pytest.raises(ValueError, match=match):
    sharding.mesh_shape(mesh, 8)


def test_mesh_forms_and_the_default():
  want = {'data': 4, 'model': 2}
  for form in ((('data', -1), ('model', 2)), ('data:-1', 'model:2'),
               ('data', -1, 'model', 2), 'data:4,model:2'):
    assert sharding.mesh_shape(form, 8) == want, form
  mesh = sharding.make_mesh()
  assert mesh.axis_names == ('data',)
  assert list(mesh.devices) == jax.devices()
  assert sharding.process_data_shard(mesh) == (0, 1)


def test_mesh_and_rules_from_the_command_line():
  """main.py's flag parsing (ml_collections config_flags) of both fields."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for extra, mesh, rules in [
      (["--config.mesh=(('data', -1), ('model', 2))",
        '--config.sharding_rules=fsdp'], (('data', -1), ('model', 2)),
       ('fsdp',)),
      (['--config.mesh=data:-1', '--config.mesh=model:2',
        '--config.sharding_rules=megatron_vit',
        '--config.sharding_rules=fsdp'], ('data:-1', 'model:2'),
       ('megatron_vit', 'fsdp')),
      (["--config.mesh=(('data', -1), ('model', 2))",
        "--config.sharding_rules=(('.*fc1/kernel', (None, 'model')),)"],
       (('data', -1), ('model', 2)), (('.*fc1/kernel', (None, 'model')),)),
  ]:
    argv = ['main.py', f'--config={root}/configs/siim_classifier.py:demo',
            *extra]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file('config', flag_values=fv,
                                    lock_config=True, sys_argv=argv)
    fv(argv)
    assert fv.config.mesh == mesh and fv.config.sharding_rules == rules
    partition.check_rules(fv.config.sharding_rules,
                          sharding.mesh_shape(fv.config.mesh, 8))


def test_optimizer_state_follows_the_parameters(vit_params):
  """Adam's moments share their parameter's sharding, also under a freezing
  schedule (optax.multi_transform's masked state); scalars are replicated."""
  params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), vit_params)
  tx, _ = optim.make_optimizer(_adam_cfg(), (('head/.*', None), ('.*', {})),
                               params)
  state = {'params': params, 'opt_state': tx.init(params),
           'step': np.zeros((), np.int32)}
  mesh = sharding.make_mesh((('data', -1), ('model', 1)))
  sh = sharding.state_shardings(state, params, ('megatron_vit', 'fsdp'), mesh)
  flat = {partition.path_str(p): s for p, s in
          jax.tree_util.tree_flatten_with_path(sh)[0]}
  fc1 = [k for k in flat if k.endswith('blocks_0/mlp/fc1/kernel')]
  assert len(fc1) == 3  # the parameter, mu and nu
  assert all(flat[k].spec == P(None, 'model') for k in fc1)
  assert not any('head' in k for k in flat if k.startswith('opt_state'))
  assert flat['step'].spec == P()
  assert all(s.spec == P() for k, s in flat.items() if k.endswith('count'))
  placed = sharding.put(state, sh)
  assert placed['params']['blocks_0']['mlp']['fc1']['kernel'].sharding == (
      flat['params/blocks_0/mlp/fc1/kernel'])


def _adam_cfg():
  from configs import siim_classifier  # pylint: disable=g-import-not-at-top
  c = siim_classifier.get_config('demo').optim
  c.name = 'adam'
  return c


def test_bad_rule_fails_before_training(tmp_path):
  from configs import siim_classifier  # pylint: disable=g-import-not-at-top
  from cxr_jax import train  # pylint: disable=g-import-not-at-top
  c = siim_classifier.get_config('demo')
  c.mesh = (('data', -1), ('model', 1))
  c.sharding_rules = (('.*kernel', (None, 'modle')),)
  with pytest.raises(ValueError, match="axis 'modle' is not in the mesh"):
    train.run(c, str(tmp_path / 'x'))
  assert not os.path.exists(tmp_path / 'x')
