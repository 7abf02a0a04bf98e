"""The freezing contract (cxr_jax.training.freezing) for every family: a
frozen backbone keeps its parameters and batch statistics bit for bit and
runs in inference mode while the head trains."""
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cxr_jax import config_base
from cxr_jax import models
from cxr_jax import train
from cxr_jax import weights
from cxr_jax.training import freezing
from cxr_jax.training import step as step_lib
from configs import siim_classifier

# name -> (input size, trained-head pattern, model keywords)
FAMILIES = {
    'vgg_tiny': (32, 'head/.*', dict(dropout=0.0)),
    'resnet_tiny': (32, 'head/.*', {}),
    'vit_tiny': (32, 'head/.*', {}),
    'densenet_tiny': (32, 'classifier/.*', {}),
    'inception_resnet_v2_tiny': (64, 'classif/.*', {}),
    # Study B's stage 3 shape: the DenseNet frozen, the rest trains.
    'cooperative_tiny': (64, '(fusion|unet)/.*', {}),
}


def _flat(tree):
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep='/')


def _config(name: str, head: str, model_kw) -> ml_collections.ConfigDict:
  c = config_base.train_config()
  c.model.name = name
  c.model.num_classes = 3 if name.startswith('cooperative') else 2
  c.model.update(model_kw)
  c.schedule = ((head, {}), ('.*', None))
  c.optim.lr = 1e-2
  return c


def _batch(size: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  return {'image': rng.normal(size=(4, size, size, 1)).astype(np.float32),
          'label': np.array([0, 1, 0, 1], np.int32)}


@pytest.mark.parametrize('name', sorted(FAMILIES))
def test_frozen_backbone_is_bitwise_unchanged_and_the_head_trains(name):
  size, head, model_kw = FAMILIES[name]
  c = _config(name, head, model_kw)
  model = models.build(c.model)
  batch = _batch(size)
  state0, (tx, labels) = step_lib.init_state(c, model, batch,
                                             jax.random.key(0))
  frozen = freezing.frozen_modules(labels)
  assert frozen
  step = jax.jit(step_lib.make_train_step(c, model, tx, labels))
  state, metrics = step(state0, batch)
  # The first step's forward pass is the inference-mode one wherever the
  # model has BatchNorm or dropout: the frozen modules normalise with
  # their running statistics.
  if name != 'cooperative_tiny':  # (its UNet trains, in training mode)
    logits, _ = jax.jit(model.apply)(state0.variables(), batch['image'])
    ce = _ce(logits, batch['label'])
    np.testing.assert_allclose(metrics['loss'], ce, rtol=1e-5)
  for _ in range(2):
    state, _ = step(state, batch)
  labels_flat = _flat(labels)
  p0, p1 = _flat(state0.params), _flat(state.params)
  for k in p0:
    if labels_flat[k] == 'frozen':
      np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)
  trained = [k for k in p0 if labels_flat[k] != 'frozen']
  assert any(not np.array_equal(p0[k], p1[k]) for k in trained)
  b0, b1 = _flat(state0.batch_stats), _flat(state.batch_stats)
  under = [k for k in b0 if any(k.startswith(f + '/') for f in frozen)]
  assert len(under) == len(b0) - sum(k.startswith('unet/') for k in b0)
  for k in under:
    np.testing.assert_array_equal(b0[k], b1[k], err_msg=k)
  if name == 'cooperative_tiny':  # the UNet trains in training mode
    assert any(not np.array_equal(b0[k], b1[k]) for k in b0
               if k.startswith('unet/'))


def _ce(logits, labels):
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], 1))


def test_frozen_modules_are_the_maximal_frozen_subtrees():
  f, t = 'frozen', 'g0'
  labels = {'a': {'conv': {'kernel': f}, 'bn': {'scale': f, 'bias': f}},
            'b': {'x': {'kernel': f}, 'y': {'kernel': t}},
            'bn1': {'scale': f, 'bias': t},
            'token': f, 'head': {'kernel': t}}
  assert freezing.frozen_modules(labels) == ('a', 'b/x')
  assert freezing.frozen_modules(None) == ()


class _Stats(nn.Module):
  """A module that counts its calls in 'batch_stats' whatever the mode."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    count = self.variable('batch_stats', 'count', jnp.zeros, ())
    if not self.is_initializing():
      count.value += 1
    return nn.Dense(2, name='dense')(x)


class _Toy(nn.Module):

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = _Stats(name='stats')(x.reshape(x.shape[0], -1), train=train)
    return nn.Dense(2, name='head')(x), {}


def test_a_module_that_cannot_run_in_inference_mode_is_an_error():
  c = _config('toy', 'head/.*', {})
  batch = _batch(4)
  model = _Toy()
  state, (tx, labels) = step_lib.init_state(c, model, batch,
                                            jax.random.key(0))
  with pytest.raises(freezing.FrozenModuleError,
                     match=r"freezes 'stats' of model 'toy'.*BatchNorm"):
    jax.jit(step_lib.make_train_step(c, model, tx, labels))(state, batch)


def test_inference_mode_switches_fields_and_arguments():
  """A BatchNorm built by a training parent with use_running_average=False,
  and a dropout given deterministic=False at call time, both switch."""
  from cxr_jax.models import layers  # pylint: disable=g-import-not-at-top

  class Net(nn.Module):

    @nn.compact
    def __call__(self, x, train: bool):
      x = layers.BatchNorm(use_running_average=not train, name='bn')(x)
      return nn.Dropout(0.5, name='drop')(x, deterministic=not train)

  x = jnp.arange(8.0).reshape(4, 2)
  net = Net()
  variables = net.init(jax.random.key(0), x, train=False)
  with freezing.inference_mode(('bn', 'drop')):
    y, mutated = net.apply(variables, x, train=True, mutable=['batch_stats'],
                           rngs={'dropout': jax.random.key(1)})
  np.testing.assert_array_equal(y, net.apply(variables, x, train=False))
  assert mutated['batch_stats']['bn']['mean'] is not None
  np.testing.assert_array_equal(mutated['batch_stats']['bn']['mean'],
                                variables['batch_stats']['bn']['mean'])


def test_linear_probe_through_the_trainer(tmp_path):
  """`train.run` with a frozen ResNet backbone: its parameters and batch
  statistics in the last checkpoint are the initial ones."""
  c = siim_classifier.get_config('demo')
  c.total_steps = 3
  c.eval_every_steps = 3
  c.evals.test.final = False
  c.schedule = (('head/.*', {}), ('.*', None))
  model = models.build(c.model)
  example = {'image': np.zeros((2, 64, 64, 1), np.float32)}
  init, _ = step_lib.init_state(c, model, example, jax.random.key(c.seed))
  wd = str(tmp_path / 'probe')
  train.run(c, wd)
  best = weights.restore(wd)
  for coll, before in (('params', init.params),
                       ('batch_stats', init.batch_stats)):
    a, b = _flat(before), _flat(best[coll])
    changed = [k for k in a if not np.array_equal(a[k], b[k])]
    assert all(k.startswith('head/') for k in changed), changed
    assert changed or coll == 'batch_stats'
