"""Langevin dynamics: exact steps on a quadratic energy, the discretised stationary variance, clipping."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdl_jax.samplers.langevin import langevin


def quadratic(params, x):
  """E(x) = |x - mu|^2 / (2 sigma^2) per example -> [B]."""
  d = x - params["mu"]
  return jnp.sum(d.reshape(d.shape[0], -1) ** 2, axis=1) / (2.0 * params["sigma"] ** 2)


PARAMS = {"mu": jnp.float32(0.3), "sigma": jnp.float32(0.5)}


def test_noiseless_chain_is_the_geometric_gradient_descent():
  x0 = jnp.asarray(np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 2, 2, 1))
  eps, steps = 0.05, 7
  res = langevin(quadratic, PARAMS, x0, jax.random.key(0), steps=steps, step_size=eps,
                 noise_scale=0.0, bounds=None, return_chain=True)
  a = 1.0 - eps / 0.25  # x_{k+1} - mu = (1 - eps / sigma^2)(x_k - mu)
  want = [0.3 + a ** (k + 1) * (np.asarray(x0) - 0.3) for k in range(steps)]
  np.testing.assert_allclose(res.chain, np.stack(want), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(res.x, want[-1], rtol=1e-5, atol=1e-6)
  # energies[k] is E at the point where step k took its gradient: x0, then the chain's states
  prev = np.concatenate([np.asarray(x0)[None], np.stack(want[:-1])])  # [S, B, ...]
  want_e = np.stack([np.asarray(quadratic(PARAMS, jnp.asarray(p))) for p in prev])
  assert res.energies.shape == (steps, 3)
  np.testing.assert_allclose(res.energies, want_e, rtol=1e-5)


def test_stationary_variance_matches_the_discretised_ou_process():
  # noise then gradient step: x' - mu = a (x - mu + n xi), so Var = a^2 n^2 / (1 - a^2).
  eps, n = 0.02, float(np.sqrt(2 * 0.02))
  a = 1.0 - eps / 0.25
  x0 = jnp.full((4096, 1), 0.3, jnp.float32)
  res = langevin(quadratic, PARAMS, x0, jax.random.key(1), steps=400, step_size=eps,
                 noise_scale=n, bounds=None)
  want_var = a * a * n * n / (1 - a * a)
  x = np.asarray(res.x, np.float64)
  assert abs(np.mean(x) - 0.3) < 4 * np.sqrt(want_var / 4096)
  assert abs(np.var(x) / want_var - 1.0) < 0.08, (np.var(x), want_var)  # ~ 4 sd of the estimate


def test_gradient_clip_and_bounds():
  x0 = jnp.asarray(np.array([[-0.9], [0.0], [0.95]], np.float32))
  big = {"mu": jnp.float32(0.3), "sigma": jnp.float32(0.01)}  # huge gradients
  res = langevin(quadratic, big, x0, jax.random.key(0), steps=1, step_size=2.0, noise_scale=0.0,
                 grad_clip=0.03)
  # each coordinate moves step_size * clip = 0.06 towards mu, then is clipped to [-1, 1]
  np.testing.assert_allclose(res.x, [[-0.84], [0.06], [0.89]], atol=1e-6)
  res = langevin(quadratic, PARAMS, x0, jax.random.key(0), steps=20, step_size=0.5,
                 noise_scale=3.0)
  assert float(res.x.min()) >= -1.0 and float(res.x.max()) <= 1.0


def test_no_gradient_reaches_params_and_one_trace():
  traces = []

  def energy(params, x):
    traces.append(1)
    return quadratic(params, x)

  x0 = jnp.ones((4, 3))
  kw = dict(steps=5, step_size=0.1, noise_scale=0.01)
  g = jax.grad(lambda p: jnp.sum(langevin(energy, p, x0, jax.random.key(0), **kw).x))(PARAMS)
  np.testing.assert_array_equal(g["mu"], 0.0)
  np.testing.assert_array_equal(g["sigma"], 0.0)
  traces.clear()
  x1 = jnp.ones((2, 5))  # a new shape: traced once, then cached
  for i in range(3):
    langevin(energy, PARAMS, x1, jax.random.key(i), **kw)
  assert len(traces) == 1
  with pytest.raises(ValueError, match="steps"):
    langevin(energy, PARAMS, x0, jax.random.key(0), steps=0, step_size=0.1, noise_scale=0.0)
