"""cxr_jax.models.ops and accel_ops: the CPU forms and the accelerator forms
equal the lax/Flax forms and autodiff, values and grads."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax.models import accel_ops
from cxr_jax.models import ops

POOLS = [  # (input shape, window, strides, padding)
    ((2, 9, 11, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),  # ResNet/DenseNet stem
    ((2, 8, 8, 4), (2, 2), (2, 2), 'VALID'),  # VGG / UNet
    ((1, 9, 9, 2), (2, 2), (2, 2), 'VALID'),  # odd size: last row unread
    ((2, 10, 7, 3), (3, 3), (1, 1), ((1, 1), (1, 1))),  # overlapping windows
    ((2, 11, 11, 2), (3, 3), (2, 2), 'VALID'),  # Inception-ResNet-v2
    ((1, 8, 8, 2), (1, 1), (2, 2), 'VALID'),  # window smaller than stride
    ((1, 12, 13, 2), (5, 3), (2, 3), ((2, 1), (0, 1))),  # uneven everything
    ((1, 14, 13, 1), (12, 12), (1, 1), 'VALID'),  # int32 offsets, scatter
    ((1, 24, 24, 1), (12, 12), (12, 12), 'VALID'),  # int32 offsets, tiled
]


@pytest.mark.parametrize('shape,window,strides,padding', POOLS)
def test_max_pool_matches_flax_values_and_gradient(shape, window, strides,
                                                   padding):
  rng = np.random.default_rng(0)
  # ReLU'd input: whole windows of tied zeros, the case where a gradient
  # must go to one element (the first maximum), not to every tied one.
  x = np.maximum(rng.normal(size=shape), 0).astype(np.float32)
  x[0, 0, :, 0] = 1.0  # ties between positive values too
  x = jnp.asarray(x)
  y_ref, vjp_ref = jax.vjp(
      lambda v: nn.max_pool(v, window, strides, padding), x)
  y, vjp = jax.vjp(lambda v: ops.max_pool(v, window, strides, padding), x)
  np.testing.assert_array_equal(y, y_ref)
  g = jnp.asarray(rng.normal(size=y.shape).astype(np.float32))
  (dx_ref,), (dx,) = vjp_ref(g), vjp(g)
  np.testing.assert_allclose(dx, dx_ref, rtol=0, atol=1e-6)
  # Each output's gradient lands once: the totals agree exactly per channel.
  np.testing.assert_allclose(dx.sum((1, 2)), g.sum((1, 2)), rtol=1e-5,
                             atol=1e-5)


def test_max_pool_uses_custom_gradient_on_cpu():
  """Guards the speed path: no select_and_scatter in the CPU gradient."""
  x = jnp.ones((1, 8, 8, 2))
  f = lambda v: ops.max_pool(v, (3, 3), (2, 2), ((1, 1), (1, 1))).sum()
  ref = lambda v: nn.max_pool(v, (3, 3), (2, 2), ((1, 1), (1, 1))).sum()
  assert 'select_and_scatter' in str(jax.make_jaxpr(jax.grad(ref))(x))
  jaxpr = str(jax.make_jaxpr(jax.grad(f))(x))
  assert 'select_and_scatter' not in jaxpr
  assert 'scatter-add' in jaxpr  # overlapping windows: stored argmax
  tiled = lambda v: ops.max_pool(v, (2, 2), (2, 2)).sum()
  assert 'scatter' not in str(jax.make_jaxpr(jax.grad(tiled))(x))


@pytest.mark.parametrize('kernel,strides,padding', [
    (1, 1, 'VALID'), (1, 1, 'SAME'), (1, 2, 'VALID'), (1, 2, 'SAME'),
    (1, 2, ((0, 0), (0, 0))),
    (1, 1, ((1, 1), (1, 1))),  # padded 1x1: stays a lax convolution
    (3, 1, ((1, 1), (1, 1))), (3, 2, 'SAME')])
def test_conv_matches_nn_conv(kernel, strides, padding):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 9, 10, 5)).astype(np.float32))
  kw = dict(kernel_size=(kernel, kernel), strides=(strides, strides),
            padding=padding)
  ref, ours = nn.Conv(7, **kw), ops.Conv(7, **kw)
  params = ref.init(jax.random.key(0), x)
  # Same parameter tree: converted weights and checkpoints carry over.
  assert (jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x))
          == jax.tree.map(jnp.shape, params))
  np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x),
                             rtol=1e-5, atol=1e-5)
  loss = lambda m: lambda p, v: jnp.sum(jnp.sin(m.apply(p, v)))
  g_ref = jax.grad(loss(ref), (0, 1))(params, x)
  g = jax.grad(loss(ours), (0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_one_by_one_conv_is_a_dot_on_cpu():
  x = jnp.ones((2, 6, 6, 4))
  m = ops.Conv(3, (1, 1), strides=(2, 2))
  params = m.init(jax.random.key(0), x)
  jaxpr = str(jax.make_jaxpr(lambda p: m.apply(p, x))(params))
  assert 'dot_general' in jaxpr and 'conv_general_dilated' not in jaxpr
  m3 = ops.Conv(3, (3, 3))
  p3 = m3.init(jax.random.key(0), x)
  assert 'conv_general_dilated' in str(
      jax.make_jaxpr(lambda p: m3.apply(p, x))(p3))


@pytest.mark.parametrize('shape', [(2, 5, 16), (7, 33)])
def test_layer_norm_matches_flax_values_and_gradients(shape):
  rng = np.random.default_rng(2)
  x = jnp.asarray((3 + 2 * rng.normal(size=shape)).astype(np.float32))
  ref = nn.LayerNorm(epsilon=1e-6, use_fast_variance=False)
  ours = ops.LayerNorm(epsilon=1e-6)
  params = ref.init(jax.random.key(0), x)
  params = jax.tree.map(  # non-trivial scale and bias
      lambda p: p + jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
  assert (jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x))
          == jax.tree.map(jnp.shape, params))
  np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x),
                             rtol=1e-5, atol=1e-5)
  w = jnp.asarray(rng.normal(size=shape).astype(np.float32))
  loss = lambda m: lambda p, v: jnp.sum(jnp.tanh(m.apply(p, v)) * w)
  g_ref = jax.grad(loss(ref), (0, 1))(params, x)
  g = jax.grad(loss(ours), (0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_layer_norm_keeps_compute_dtype():
  x = jnp.ones((2, 3, 8), jnp.bfloat16)
  m = ops.LayerNorm(dtype=jnp.bfloat16)
  p = m.init(jax.random.key(0), x)
  assert m.apply(p, x).dtype == jnp.bfloat16
  assert p['params']['scale'].dtype == jnp.float32
  g = jax.grad(lambda v: m.apply(p, v).astype(jnp.float32).sum())(x)
  assert g.dtype == jnp.bfloat16


@pytest.mark.parametrize('shape', [(3, 7), (2, 5, 64)])
def test_gelu_matches_flax_exact_gelu(shape):
  """The CPU erf form equals jax's erfc form (values and gradients)."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(4 * rng.normal(size=shape).astype(np.float32))
  g = jnp.asarray(rng.normal(size=shape).astype(np.float32))
  y_ref, vjp_ref = jax.vjp(lambda v: nn.gelu(v, approximate=False), x)
  y, vjp = jax.vjp(ops.gelu, x)
  np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=2e-6)
  np.testing.assert_allclose(vjp(g)[0], vjp_ref(g)[0], rtol=1e-5, atol=2e-6)
  np.testing.assert_allclose(ops.gelu(x, approximate=True),
                             nn.gelu(x, approximate=True), rtol=0, atol=0)
  if jax.default_backend() == 'cpu':  # the speed path: no erfc
    assert 'erfc' not in str(jax.make_jaxpr(ops.gelu)(x))


def test_stored_gradient_is_an_exact_identity():
  rng = np.random.default_rng(6)
  x = jnp.asarray(rng.normal(size=(2, 3, 4, 5)).astype(np.float32))
  g = jnp.asarray(rng.normal(size=x.shape).astype(np.float32))
  y, vjp = jax.vjp(ops.stored_gradient, x)
  np.testing.assert_array_equal(y, x)
  np.testing.assert_array_equal(vjp(g)[0], g)  # g @ I: g * 1 plus zeros
  if jax.default_backend() == 'cpu':  # the speed path: a matrix product
    f = lambda v: (ops.stored_gradient(v) ** 2).sum()
    assert 'dot_general' in str(jax.make_jaxpr(jax.grad(f))(x))


@pytest.mark.parametrize('x_dtype', [jnp.float32, jnp.bfloat16])
def test_add_over_batch_gradient_is_the_batch_sum(x_dtype):
  """The accelerator form (a (1, B) @ (B, rest) product for v's gradient)
  gives what autodiff of `x + v` gives: same values, x's gradient passed
  through, v's gradient the batch sum in v's dtype (float32)."""
  kx, kv, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (5, 7, 6)).astype(x_dtype)
  v = jax.random.normal(kv, (1, 7, 6))
  g = jax.random.normal(kg, (5, 7, 6)).astype(x_dtype)
  plain = lambda x, v: x + v.astype(x.dtype)  # noqa: E731
  y, vjp = jax.vjp(accel_ops.add_over_batch_matmul, x, v)
  y_ref, vjp_ref = jax.vjp(plain, x, v)
  assert y.dtype == x_dtype
  np.testing.assert_array_equal(np.asarray(y, np.float32),
                                np.asarray(y_ref, np.float32))
  (dx, dv), (dx_ref, dv_ref) = vjp(g), vjp_ref(g)
  np.testing.assert_array_equal(np.asarray(dx, np.float32),
                                np.asarray(dx_ref, np.float32))
  assert dv.dtype == jnp.float32 and dv.shape == v.shape
  exact = np.asarray(g, np.float64).sum(0, keepdims=True)
  tol = 1e-5 if x_dtype == jnp.float32 else 3e-2
  np.testing.assert_allclose(np.asarray(dv), exact, rtol=tol, atol=tol)
  np.testing.assert_allclose(np.asarray(dv_ref, np.float64), exact,
                             rtol=tol, atol=tol)
  # On the CPU the public function is the plain sum; 'matmul' forces the
  # product, 'sum' the plain form, anything else is refused.
  np.testing.assert_array_equal(np.asarray(ops.add_over_batch(x, v)),
                                np.asarray(y_ref))
  _, vjp_mm = jax.vjp(lambda x, v: ops.add_over_batch(x, v, 'matmul'), x, v)
  np.testing.assert_array_equal(np.asarray(vjp_mm(g)[1]), np.asarray(dv))
  with pytest.raises(ValueError, match="grad 'rows'"):
    ops.add_over_batch(x, v, 'rows')


@pytest.mark.parametrize('x_dtype', [jnp.float32, jnp.bfloat16])
def test_lean_layer_norm_matches_autodiff(monkeypatch, x_dtype):
  """The accelerator form (statistics kept for the backward pass) gives
  autodiff's values and gradients for x, scale and bias, in x's dtype; on
  the CPU `lean` changes nothing."""
  monkeypatch.setattr(ops, 'on_cpu', lambda: False)
  rng = np.random.default_rng(4)
  x = jnp.asarray((3 + 2 * rng.normal(size=(3, 5, 32))).astype(np.float32)
                  ).astype(x_dtype)
  w = jnp.asarray(rng.normal(size=x.shape).astype(np.float32))
  lean, plain = ops.LayerNorm(lean=True), ops.LayerNorm(lean=False)
  p = jax.tree.map(
      lambda a: a + jnp.asarray(rng.normal(size=a.shape), a.dtype),
      plain.init(jax.random.key(0), x))
  loss = lambda m: lambda p, v: jnp.sum(  # noqa: E731
      jnp.tanh(m.apply(p, v).astype(jnp.float32)) * w)
  assert 'optimization_barrier' in str(jax.make_jaxpr(
      jax.grad(loss(lean), (0, 1)))(p, x))
  y, y_ref = lean.apply(p, x), plain.apply(p, x)
  assert y.dtype == x_dtype
  tol = 1e-5 if x_dtype == jnp.float32 else 1e-2
  np.testing.assert_allclose(np.asarray(y, np.float32),
                             np.asarray(y_ref, np.float32), rtol=tol, atol=tol)
  g = jax.grad(loss(lean), (0, 1))(p, x)
  g_ref = jax.grad(loss(plain), (0, 1))(p, x)
  assert g[1].dtype == x_dtype
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    np.testing.assert_allclose(a, b, rtol=10 * tol, atol=10 * tol)
  monkeypatch.setattr(ops, 'on_cpu', lambda: True)
  assert (str(jax.make_jaxpr(lambda v: lean.apply(p, v))(x))
          == str(jax.make_jaxpr(lambda v: plain.apply(p, v))(x)))


@pytest.mark.parametrize('approximate', [False, True])
def test_lean_gelu_matches_autodiff(monkeypatch, approximate):
  """The accelerator form (derivative recomputed from the input) gives the
  values and gradients of autodiff's GELU, exact and tanh forms."""
  monkeypatch.setattr(ops, 'on_cpu', lambda: False)
  rng = np.random.default_rng(5)
  x = jnp.asarray(4 * rng.normal(size=(6, 40)).astype(np.float32))
  g = jnp.asarray(rng.normal(size=x.shape).astype(np.float32))
  y, vjp = jax.vjp(lambda v: ops.gelu(v, approximate), x)
  y_ref, vjp_ref = jax.vjp(lambda v: ops.gelu(v, approximate, lean=False), x)
  np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_allclose(vjp(g)[0], vjp_ref(g)[0], rtol=1e-5, atol=1e-6)
  xb, gb = x.astype(jnp.bfloat16), g.astype(jnp.bfloat16)
  dxb = jax.vjp(lambda v: ops.gelu(v, approximate), xb)[1](gb)[0]
  dxb_ref = jax.vjp(lambda v: ops.gelu(v, approximate, lean=False),
                    xb)[1](gb)[0]
  assert dxb.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(dxb, np.float32),
                             np.asarray(dxb_ref, np.float32), rtol=2e-2,
                             atol=2e-2)
