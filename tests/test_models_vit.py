"""ViT: parity with timm (logits and the Grad-CAM target), token grid, attn."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch

from cxr_jax.models import attention
from cxr_jax.models import layers
from cxr_jax.models import ops
from cxr_jax.models import vit

jax.config.update('jax_numpy_rank_promotion', 'raise')


def np_init(model, x):
  """Variables with `model.init`'s tree filled in numpy (no XLA compile)."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  rng = np.random.default_rng(0)

  def fill(path, s):
    name = getattr(path[-1], 'key', '')
    if name == 'kernel':
      return rng.normal(0., 0.2, s.shape).astype(s.dtype)
    return np.ones(s.shape, s.dtype) if name == 'scale' else np.zeros(
        s.shape, s.dtype)
  return jax.tree_util.tree_map_with_path(fill, shapes)

TIMM_NAMES = {'s16': 'vit_small_patch16_224', 'b16': 'vit_base_patch16_224',
              'l16': 'vit_large_patch16_224'}


@pytest.mark.parametrize('variant,batch', [
    ('s16', 2), ('b16', 2), pytest.param('l16', 1, marks=pytest.mark.slow)])
def test_parity_with_timm(variant: str, batch: int):
  torch.manual_seed(0)
  tm = timm.create_model(TIMM_NAMES[variant], pretrained=False).eval()
  sd = {k: v.numpy() for k, v in tm.state_dict().items()}
  variables = vit.convert_torch(sd, variant=variant)
  model = vit.Model(1000, variant=variant)
  x = np.random.RandomState(0).randn(batch, 3, 224, 224).astype(np.float32)

  hooked = {}
  handle = tm.blocks[-1].norm1.register_forward_hook(
      lambda mod, inp, outp: hooked.__setitem__('norm1', outp))
  with torch.no_grad():
    t_logits = tm(torch.from_numpy(x)).numpy()
  handle.remove()
  t_feat = hooked['norm1'][:, 1:].numpy().reshape(batch, 14, 14, -1)

  shapes = {f'params/{k}': v.shape
            for k, v in layers.flatten(variables['params']).items()}
  assert shapes == layers.variable_shapes(model, jnp.zeros((1, 224, 224, 3)))

  logits, out = jax.jit(model.apply)(variables, jnp.asarray(
      x.transpose(0, 2, 3, 1)))
  tol = 1e-4 * max(1., float(np.abs(t_logits).max()))
  d_logits = float(np.abs(np.asarray(logits) - t_logits).max())
  d_feat = float(np.abs(np.asarray(out['features']) - t_feat).max())
  print(f'{variant}: max|dlogits|={d_logits:.2e} max|dfeatures|={d_feat:.2e}'
        f' tol={tol:.2e}')
  assert d_logits <= tol
  assert d_feat <= 1e-4 * max(1., float(np.abs(t_feat).max()))
  assert out['features'].shape == (batch, 14, 14, tm.embed_dim)
  assert 'block_out' not in out  # the last block ran for the class token


def test_convert_names_bad_keys():
  tm = timm.create_model('vit_small_patch16_224', pretrained=False)
  sd = {k: v.numpy() for k, v in tm.state_dict().items()}
  with pytest.raises(KeyError, match='extra.key'):
    vit.convert_torch({**sd, 'extra.key': np.zeros(1)}, variant='s16')
  del sd['blocks.3.mlp.fc1.bias']
  with pytest.raises(KeyError, match='blocks.3.mlp.fc1.bias'):
    vit.convert_torch(sd, variant='s16')
  with pytest.raises(ValueError, match='cls_token'):
    vit.convert_torch(sd, variant='b16')


def test_token_grid_order():
  gh, gw = 3, 5
  tok = jnp.arange(gh * gw, dtype=jnp.float32).reshape(1, gh * gw, 1)
  grid = vit.tokens_to_grid(tok, (gh, gw))
  for i in range(gh * gw):
    assert grid[0, i // gw, i % gw, 0] == i
  np.testing.assert_array_equal(vit.grid_to_tokens(grid), tok)


def test_marked_patch_lands_on_its_cell():
  """A marked image patch changes exactly one token, at its grid cell."""
  model = vit.Model(2, variant='tiny', img_size=32)  # patch 8 -> 4x4 grid
  x = jnp.zeros((1, 32, 32, 3))
  variables = np_init(model, x)
  r, c = 1, 3
  x_marked = x.at[:, 8 * r:8 * r + 8, 8 * c:8 * c + 8].set(1.)

  def norm1_tokens(xx):
    _, state = model.apply(
        variables, xx, capture_intermediates=lambda m, _: m.name == 'norm1',
        mutable=['intermediates'])
    return state['intermediates']['blocks_0']['norm1']['__call__'][0]

  diff = jnp.abs(norm1_tokens(x_marked) - norm1_tokens(x)).sum(-1)[0]  # (N,)
  assert int(jnp.argmax(diff)) == 1 + r * 4 + c
  assert int((diff > 1e-6).sum()) == 1
  grid = vit.tokens_to_grid(diff[None, 1:, None], (4, 4))[0, ..., 0]
  assert grid[r, c] > 0 and int((grid > 1e-6).sum()) == 1


@pytest.mark.parametrize('img_size,patch', [(32, 8), (64, 16)])
def test_tiny_shapes_attn_and_features_gradient(img_size: int, patch: int):
  model = vit.Model(3, variant='tiny', in_chans=1, return_attn=True)
  hw = (img_size, img_size)
  assert model.geometry(hw) == (hw, patch, (4, 4))
  assert vit.Model(variant='s16').geometry(hw) == ((224, 224), 16, (14, 14))
  x = jax.random.normal(jax.random.key(1), (2, img_size, img_size, 1))
  variables = np_init(model, x)
  assert variables['params']['blocks_0']['attn']['query']['kernel'].shape == (
      32, 2, 16)
  logits, out = model.apply(variables, x)
  assert logits.shape == (2, 3)
  assert out['features'].shape == (2, 4, 4, 32)
  assert out['pre_logits'].shape == (2, 32)
  assert len(out['attn']) == 2 and out['attn'][0].shape == (2, 2, 17, 17)
  np.testing.assert_allclose(out['attn'][1].sum(-1), 1., atol=1e-5)

  # The Grad-CAM target carries gradient from the class logits.
  def score(pert):
    lg, _ = model.apply({**variables, 'perturbations': pert}, x)
    return lg[:, 1].sum()
  g = jax.grad(score)(variables['perturbations'])['features']
  assert g.shape == out['features'].shape and float(jnp.abs(g).max()) > 0


def test_other_img_size_and_mismatch():
  model = vit.Model(None, variant='tiny', img_size=48, patch_size=8)
  x = jnp.zeros((1, 48, 48, 3))
  variables = np_init(model, x)
  assert variables['params']['pos_embed'].shape == (1, 37, 32)
  logits, out = model.apply(variables, x)
  assert logits.shape == (1, 32) and out['features'].shape == (1, 6, 6, 32)
  with pytest.raises(ValueError, match='img_size'):
    model.apply(variables, jnp.zeros((1, 32, 32, 3)))


def test_train_mode_dropout_and_drop_path():
  model = vit.Model(2, variant='tiny', dropout_rate=0.1, attn_dropout_rate=0.1,
                    drop_path_rate=0.2)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = np_init(model, x)
  run = lambda seed: model.apply(variables, x, train=True,
                                 rngs={'dropout': jax.random.key(seed)})[0]
  assert float(jnp.abs(run(0) - run(1)).max()) > 0
  np.testing.assert_array_equal(model.apply(variables, x)[0],
                                model.apply(variables, x)[0])


def test_fused_qkv_and_patch_matmul_match_reference_layers():
  """The fused q/k/v matmul, both attention paths and the patch matmul
  compute what three `nn.DenseGeneral`s + an explicit softmax and an
  `nn.Conv` compute, with the same parameter tree and initialisation."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class RefAttention(nn.Module):  # the layers Attention stands in for

    @nn.compact
    def __call__(self, y):
      q, k, v = (nn.DenseGeneral((2, 16), name=n)(y)
                 for n in ('query', 'key', 'value'))
      logits = jnp.einsum('bqhk,bnhk->bhqn', q * 16 ** -0.5, k)
      o = jnp.einsum('bhqn,bnhk->bqhk', jax.nn.softmax(logits, -1), v)
      return nn.Dense(32, name='proj')(o.reshape(o.shape[:2] + (32,)))

  y = jax.random.normal(jax.random.key(2), (2, 17, 32))
  ref_vars = RefAttention().init(jax.random.key(3), y)
  ours_vars = attention.Attention(2).init(jax.random.key(3), y, train=False)
  jax.tree.map(np.testing.assert_array_equal, ref_vars, ours_vars)
  fast, none = attention.Attention(2, implementation='xla').apply(ref_vars, y,
                                                            train=False)
  slow, probs = attention.Attention(2, return_weights=True).apply(ref_vars, y,
                                                            train=False)
  ref = RefAttention().apply(ref_vars, y)
  cpu, none2 = attention.Attention(2).apply(ref_vars, y, train=False)
  assert none is None and none2 is None and probs.shape == (2, 2, 17, 17)
  np.testing.assert_allclose(cpu, ref, atol=1e-5)
  np.testing.assert_allclose(fast, ref, atol=1e-5)
  np.testing.assert_allclose(slow, ref, atol=1e-5)

  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  conv = nn.Conv(32, (8, 8), strides=(8, 8), padding='VALID',
                 name='patch_embed')
  pe = conv.init(jax.random.key(4), x)
  np.testing.assert_array_equal(
      pe['params']['kernel'],
      vit.PatchEmbed(32, 8, name='patch_embed').init(
          jax.random.key(4), x)['params']['kernel'])
  np.testing.assert_allclose(vit.PatchEmbed(32, 8).apply(pe, x),
                             conv.apply(pe, x).reshape(2, 16, 32), atol=1e-5)


def test_gelu_approximate_same_parameters_close_outputs():
  """The tanh GELU option keeps the parameter tree and changes the logits
  only by the GELU approximation's error (< 1e-3 of GELU's scale)."""
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  exact = vit.Model(num_classes=3, variant='tiny')
  tanh = vit.Model(num_classes=3, variant='tiny', gelu_approximate=True)
  variables = np_init(exact, x)
  assert (jax.tree.structure(jax.eval_shape(tanh.init, jax.random.key(0), x))
          == jax.tree.structure(variables))
  a, b = exact.apply(variables, x)[0], tanh.apply(variables, x)[0]
  assert not np.array_equal(a, b)
  np.testing.assert_allclose(a, b, atol=5e-3 * float(jnp.abs(a).max()))


def loss_outputs_grads(model, variables, x, train):
  """(logits, Grad-CAM target, gradients of a logit sum w.r.t. the target's
  perturbation and the parameters) of `model` in eval or train mode."""
  def run(pert, params):
    v = {**variables, 'params': params, 'perturbations': pert}
    logits, out = model.apply(v, x, train=train,
                              rngs={'dropout': jax.random.key(0)})
    return (logits * jnp.arange(1., 1. + logits.shape[1])[None]).sum(), (
        logits, out)
  (_, (logits, out)), g = jax.value_and_grad(run, (0, 1), has_aux=True)(
      variables['perturbations'], variables['params'])
  return logits, out, g


def assert_same_outputs_and_grads(a, b, variables, x):
  """Models `a` and `b` give the same logits, Grad-CAM target and
  gradients (eval and train mode); returns their last `out` dicts."""
  for train in (False, True):
    (la, oa, ga), (lb, ob, gb) = (loss_outputs_grads(m, variables, x, train)
                                  for m in (a, b))
    np.testing.assert_allclose(la, lb, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(oa['features'], ob['features'], atol=1e-6)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-4,
                                                         atol=1e-5), ga, gb)
  return oa, ob


@pytest.mark.parametrize('implementation', [None, 'xla'])
def test_class_token_last_block_equals_full_last_block(implementation):
  """By default the last block's output is computed for the class token
  only; logits, the Grad-CAM target and its gradients (eval and train mode,
  parameter gradients too) equal the full computation's, which also returns
  the thesis's literal target `block_out`."""
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  kw = dict(num_classes=3, variant='tiny', attn_implementation=implementation)
  short, full = vit.Model(**kw), vit.Model(**kw, full_last_block=True)
  variables = np_init(full, x)
  jax.tree.map(np.testing.assert_array_equal, variables, np_init(short, x))
  out_short, _ = assert_same_outputs_and_grads(short, full, variables, x)
  assert 'block_out' not in out_short
  assert full.apply(variables, x)[1]['block_out'].shape == (2, 4, 4, 32)
  assert 'block_out' not in short.apply(variables, x)[1]


@pytest.mark.parametrize('full_last_block,off_cpu', [
    (False, False), (True, False), (False, True)])
def test_sequence_padded_once_equals_unpadded(monkeypatch, full_last_block,
                                              off_cpu):
  """`memory_lean` pads the sequence once after the embedding on the fused
  attention path (17 tokens -> 24 with `seq_multiple=8`, checked on XLA's
  implementation of the same call); logits, the Grad-CAM target and every
  gradient (parameters and the target's perturbation) equal those of the
  unpadded model, in eval and train mode. `off_cpu`: the program an
  accelerator runs, with the lean LayerNorm and GELU too, against its plain
  form."""
  if off_cpu:
    monkeypatch.setattr(ops, 'on_cpu', lambda: False)
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  kw = dict(num_classes=3, variant='tiny', attn_implementation='xla',
            full_last_block=full_last_block)
  padded = vit.Model(**kw, seq_multiple=8)
  plain = vit.Model(**kw, memory_lean=False)
  # pylint: disable=protected-access
  assert padded._sequence_padding(17, train=True) == 7
  assert plain._sequence_padding(17, train=True) == 0
  assert vit.Model(**kw)._sequence_padding(17, train=True) == 0  # xla: 1
  with pytest.raises(ValueError, match='seq_multiple 0'):
    vit.Model(**kw, seq_multiple=0)._sequence_padding(17, train=True)
  # pylint: enable=protected-access
  variables = np_init(plain, x)
  jaxpr = str(jax.make_jaxpr(
      lambda v: loss_outputs_grads(padded, v, x, False))(variables))
  assert 'pad[' in jaxpr and 'f32[2,24,32]' in jaxpr
  assert ('optimization_barrier' in jaxpr) == off_cpu  # the lean LayerNorm
  assert_same_outputs_and_grads(padded, plain, variables, x)
