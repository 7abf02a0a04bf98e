"""cxr_jax.models.attention: its cores and its implementation choice."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax.models import attention
from cxr_jax.models import vit

jax.config.update('jax_numpy_rank_promotion', 'raise')


@pytest.mark.parametrize('q_len', [7, 1])  # all tokens; class token only
def test_attention_matches_softmax_form(q_len):
  """Normalising after P V (custom VJP) equals softmax(q k^T) v: values and
  the gradients of q, k and v, against a float64 numpy reference; logits
  large enough that the max subtraction matters."""
  rng = np.random.default_rng(7)
  b, h, n, d = 2, 3, 7, 5
  q, k, v = (jnp.asarray(3 * rng.normal(size=s).astype(np.float32))
             for s in ((b, h, q_len, d), (b, h, n, d), (b, h, n, d)))
  g = jnp.asarray(rng.normal(size=(b, h, q_len, d)).astype(np.float32))

  def ref(q, k, v):
    s = jnp.einsum('bhqk,bhnk->bhqn', q, k)
    return jnp.einsum('bhqn,bhnk->bhqk', jax.nn.softmax(s, axis=-1), v)

  y, vjp = jax.vjp(attention.attend, q, k, v)
  with jax.enable_x64():
    args64 = [jnp.asarray(np.asarray(a, np.float64)) for a in (q, k, v)]
    y_ref, vjp_ref = jax.vjp(ref, *args64)
    grads_ref = [np.asarray(t) for t in vjp_ref(
        jnp.asarray(np.asarray(g, np.float64)))]
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  for got, want in zip(vjp(g), grads_ref):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  if jax.default_backend() == 'cpu':  # the speed path: P = E / l never built
    jaxpr = jax.make_jaxpr(jax.grad(
        lambda *a: attention.attend(*a).sum(), (0, 1, 2)))(q, k, v).jaxpr
    divides = [e.outvars[0].aval.shape for e in jaxpr.eqns
               if e.primitive.name == 'div']
    assert divides and (b, h, q_len, n) not in divides
    plain = jax.make_jaxpr(jax.grad(lambda *a: ref(*a).sum(), (0, 1, 2)))(
        q, k, v).jaxpr
    assert (b, h, q_len, n) in [e.outvars[0].aval.shape for e in plain.eqns
                                if e.primitive.name == 'div']


def test_padded_fused_attention_equals_unpadded():
  """cuDNN needs an even token count: padding 197 tokens to 200 and masking
  the padding (keys) / slicing it off (queries) changes neither the output
  nor the gradients (checked on XLA's implementation of the same call)."""
  q, k, v = (jax.random.normal(r, (2, 197, 3, 16))
             for r in jax.random.split(jax.random.key(0), 3))

  def loss(q, k, v, pad_to):
    y = attention.fused_attention(q, k, v, scale=0.25, implementation='xla',
                            pad_to=pad_to)
    assert y.shape == q.shape
    return jnp.sum(y ** 2)

  ref, ref_g = jax.value_and_grad(loss, (0, 1, 2))(q, k, v, 1)
  got, got_g = jax.value_and_grad(loss, (0, 1, 2))(q, k, v, 8)
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  for a, b in zip(got_g, ref_g):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_attn_implementation_auto_and_bad_name():
  """'auto' is the written-out attention on the CPU (and for float32, which
  cuDNN's fused attention does not take); an unknown name is a clear error."""
  assert jax.default_backend() == 'cpu'
  for dtype in (jnp.float32, jnp.bfloat16):
    assert attention.Attention(2, dtype=dtype).resolved_implementation() is None
  assert attention.Attention(2, implementation='xla').resolved_implementation() == (
      'xla')
  x = jnp.zeros((1, 32, 32, 3))
  with pytest.raises(ValueError, match="attn_implementation 'flash'"):
    vit.Model(num_classes=2, variant='tiny',
              attn_implementation='flash').init(jax.random.key(0), x)
