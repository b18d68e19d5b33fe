"""gdl_jax.nn.conv.ConvTranspose: the same values, parameters and gradients as flax's."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdl_jax.nn.conv import Conv, ConvTranspose, conv_transpose

CASES = [  # (input HxW, kernel, stride, padding)
    (4, 4, 2, "SAME"), (3, 3, 2, "SAME"), (7, 4, 2, "SAME"), (2, 3, 2, "VALID"),
    (5, 2, 2, "VALID"), (4, 5, 2, "SAME"), (3, 3, 3, "SAME"), (4, 3, 1, "SAME"),
    (4, 3, 2, ((1, 2), (0, 1))),
]


@pytest.mark.parametrize("size,k,s,padding", CASES)
def test_matches_flax_values_params_and_gradients(size, k, s, padding):
  x = jax.random.normal(jax.random.key(0), (2, size, size + 1, 3))
  ours, theirs = (ConvTranspose(5, (k, k), strides=(s, s), padding=padding),
                  nn.ConvTranspose(5, (k, k), strides=(s, s), padding=padding))
  params = theirs.init(jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x)) == jax.tree.map(jnp.shape, params)
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), params)
  np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), rtol=1e-5, atol=1e-5)

  def loss(model):  # a non-linear function of the output, so the cotangent is not constant
    return lambda p, x: jnp.sum(jnp.sin(model.apply(p, x)) * jnp.arange(5.0))

  g_ours = jax.grad(loss(ours), argnums=(0, 1))(params, x)
  g_theirs = jax.grad(loss(theirs), argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_theirs)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_kernel_gradient_against_finite_differences():
  x = jax.random.normal(jax.random.key(0), (1, 3, 3, 2), jnp.float64) if jax.config.x64_enabled \
      else jax.random.normal(jax.random.key(0), (1, 3, 3, 2))
  kernel = jax.random.normal(jax.random.key(1), (4, 4, 2, 3), x.dtype)
  f = lambda k: jnp.sum(conv_transpose(x, k, (2, 2)) ** 2)
  g = jax.grad(f)(kernel)
  eps = 1e-2
  for idx in [(0, 0, 0, 0), (1, 2, 1, 2), (3, 3, 1, 1)]:
    e = jnp.zeros_like(kernel).at[idx].set(eps)
    fd = (f(kernel + e) - f(kernel - e)) / (2 * eps)
    np.testing.assert_allclose(g[idx], fd, rtol=2e-2, atol=2e-2)


def test_jit_vmap_and_bad_input():
  m = ConvTranspose(2, (4, 4), strides=(2, 2))
  x = jnp.ones((3, 4, 4, 1))
  p = m.init(jax.random.key(0), x)
  y = jax.jit(m.apply)(p, x)
  assert y.shape == (3, 8, 8, 2)
  yv = jax.vmap(lambda xi: m.apply(p, xi[None])[0])(x)
  np.testing.assert_allclose(yv, y, rtol=1e-6)
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
    m.apply(p, jnp.ones((4, 4, 1)))
  with pytest.raises(ValueError, match="padding"):
    ConvTranspose(2, (4, 4), strides=(2, 2), padding="FULL").init(jax.random.key(0), x)


@pytest.mark.parametrize("size,k,s,padding", [(8, 4, 2, "SAME"), (7, 3, 2, "SAME"), (8, 3, 1, "SAME"),
                                              (9, 3, 2, "VALID"), (6, 4, 2, ((1, 1), (2, 1)))])
def test_conv_matches_flax_to_second_order(size, k, s, padding):
  """Values, gradients, and the gradient of a gradient penalty (second order) equal flax's."""
  x = jax.random.normal(jax.random.key(0), (2, size, size, 2))
  ours, theirs = (Conv(3, (k, k), strides=(s, s), padding=padding),
                  nn.Conv(3, (k, k), strides=(s, s), padding=padding))
  params = theirs.init(jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x)) == jax.tree.map(jnp.shape, params)
  np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), rtol=1e-5, atol=1e-5)

  def penalty(model):
    def f(p, x):
      score = lambda x: jnp.sum(jnp.tanh(model.apply(p, x)) ** 2)
      g = jax.grad(score)(x)
      return jnp.sum((jnp.sqrt(jnp.sum(g ** 2, (1, 2, 3))) - 1.0) ** 2) + score(x)
    return f

  a = jax.grad(penalty(ours), argnums=(0, 1))(params, x)
  b = jax.grad(penalty(theirs), argnums=(0, 1))(params, x)
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-4)
