"""gdl_jax.nn.norm.BatchNorm: flax's values, variables, running averages and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdl_jax.nn import norm
from gdl_jax.nn.norm import BatchNorm, batch_norm_train


def _variables(shape, key=1):
  c = shape[-1]
  k1, k2, k3, k4 = jax.random.split(jax.random.key(key), 4)
  return {"params": {"scale": 1.0 + 0.3 * jax.random.normal(k1, (c,)), "bias": 0.2 * jax.random.normal(k2, (c,))},
          "batch_stats": {"mean": 0.1 * jax.random.normal(k3, (c,)),
                          "var": 1.0 + 0.2 * jax.random.uniform(k4, (c,))}}


@pytest.fixture(params=["dots", "sums"])
def sums_path(request, monkeypatch):
  """Both ways of taking the channel sums (matmuls below DOT_SUMS_MAX elements, reductions above)."""
  monkeypatch.setattr(norm, "DOT_SUMS_MAX", 2 ** 40 if request.param == "dots" else 0)
  return request.param


@pytest.mark.parametrize("shape", [(6, 5, 4, 3), (16, 7), (2, 3, 3, 2, 4)])
def test_training_mode_matches_flax_values_stats_and_gradients(shape, sums_path):
  x = 1.5 * jax.random.normal(jax.random.key(0), shape) + 0.7
  ours, theirs = BatchNorm(use_running_average=False, momentum=0.9), nn.BatchNorm(use_running_average=False, momentum=0.9)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == \
      jax.tree.map(jnp.shape, theirs.init(jax.random.key(0), x))   # checkpoints interchangeable
  v = _variables(shape)
  y1, s1 = ours.apply(v, x, mutable=["batch_stats"])
  y2, s2 = theirs.apply(v, x, mutable=["batch_stats"])
  np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  w = jax.random.normal(jax.random.key(3), shape)

  def loss(model):   # through y and the updated running statistics, both
    def f(params, x):
      y, st = model.apply({**v, "params": params}, x, mutable=["batch_stats"])
      return jnp.sum(jnp.tanh(y) * w) + jnp.sum(st["batch_stats"]["mean"] ** 2 + jnp.sin(st["batch_stats"]["var"]))
    return f

  g1 = jax.grad(loss(ours), argnums=(0, 1))(v["params"], x)
  g2 = jax.grad(loss(theirs), argnums=(0, 1))(v["params"], x)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_eval_mode_and_init_match_flax():
  x = jax.random.normal(jax.random.key(0), (4, 3, 3, 5))
  v = _variables(x.shape)
  np.testing.assert_allclose(BatchNorm(use_running_average=True).apply(v, x),
                             nn.BatchNorm(use_running_average=True).apply(v, x), rtol=1e-5, atol=1e-6)
  # init leaves the running statistics at zeros / ones, as flax's
  init = BatchNorm(use_running_average=False).init(jax.random.key(0), x)
  np.testing.assert_array_equal(init["batch_stats"]["mean"], np.zeros(5))
  np.testing.assert_array_equal(init["batch_stats"]["var"], np.ones(5))


def test_second_order_gradient_and_vmap_match_an_autodiff_reference(sums_path):
  """The custom VJP is itself differentiable (a penalty on an input-gradient) and vmaps."""
  def reference(x, scale, bias, eps=1e-5):
    mean = jnp.mean(x, axis=tuple(range(x.ndim - 1)))
    var = jnp.mean(x * x, axis=tuple(range(x.ndim - 1))) - mean ** 2
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias

  x = jax.random.normal(jax.random.key(0), (8, 3, 4))
  scale, bias = jnp.array([1.0, 0.5, 2.0, -1.0]), jnp.array([0.1, 0.0, -0.3, 0.2])

  def penalty(bn):
    def f(scale, x):
      gx = jax.grad(lambda x: jnp.sum(jnp.tanh(bn(x, scale, bias)) ** 3))(x)
      return jnp.sum(gx ** 2)
    return f

  ours = lambda x, s, b: batch_norm_train(x, s, b)[0]
  for a, b in zip(jax.grad(penalty(ours), (0, 1))(scale, x), jax.grad(penalty(reference), (0, 1))(scale, x)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
  xs = jax.random.normal(jax.random.key(1), (3, 8, 4))   # vmap over 3 independent batches
  np.testing.assert_allclose(jax.vmap(lambda x: ours(x, scale, bias))(xs),
                             jnp.stack([reference(x, scale, bias) for x in xs]), rtol=1e-5, atol=1e-5)


def test_bad_input_is_one_clear_error():
  with pytest.raises(ValueError, match=r"x \[\.\.\., C\] with scale and bias \[C\]"):
    batch_norm_train(jnp.ones((4, 3)), jnp.ones(2), jnp.zeros(3))
