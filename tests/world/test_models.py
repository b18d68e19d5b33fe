"""M (MDN-RNN) likelihood against scipy, the dream step under jit/vmap, CMA-ES, reproducible rollouts."""

import numpy as np
import pytest
import scipy.stats

import jax
import jax.numpy as jnp

from gdl_jax.models.world import MDNRNN, controller_size
from gdl_jax.objectives import mdn
from gdl_jax.world import dream

Z, A, H, K = 4, 3, 8, 3


def test_mixture_log_prob_matches_scipy():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5, Z))
  logits, mu, log_sigma = rng.normal(size=(3, 5, Z, K))
  got = np.asarray(mdn.mixture_log_prob(jnp.asarray(x, jnp.float32), jnp.asarray(logits, jnp.float32),
                                        jnp.asarray(mu, jnp.float32), jnp.asarray(log_sigma, jnp.float32)))
  w = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  dens = (w * scipy.stats.norm.pdf(x[..., None], mu, np.exp(log_sigma))).sum(-1)
  np.testing.assert_allclose(got, np.log(dens), rtol=1e-5, atol=1e-5)
  # K = 1 is the unimodal Gaussian baseline; persistence is N(z, sigma^2)
  p = mdn.persistence_log_prob(jnp.float32(0.3), jnp.float32(0.1), jnp.float32(-0.5))
  np.testing.assert_allclose(p, scipy.stats.norm.logpdf(0.3, 0.1, np.exp(-0.5)), rtol=1e-6)


def _model_and_params(k=K, seed=0):
  m = MDNRNN(latent_dim=Z, action_dim=A, hidden=H, num_mixtures=k)
  params = m.init(jax.random.key(seed), m.initial_carry((2,)), jnp.zeros((2, Z)), jnp.zeros((2, A)))
  return m, params["params"]


def _batch(rng, B=2, T=7):
  return {"mu": rng.normal(size=(B, T, Z)).astype(np.float32),
          "logvar": np.full((B, T, Z), -4.0, np.float32),
          "action": rng.uniform(-1, 1, size=(B, T, A)).astype(np.float32),
          "reward": rng.normal(size=(B, T)).astype(np.float32),
          "done": np.zeros((B, T), bool)}


def test_mdn_shapes_and_overfit(test_seed):
  m, params = _model_and_params(seed=test_seed)
  rng = np.random.default_rng(test_seed)
  batch = _batch(rng)
  out, carry = mdn.scan_sequence(m, params, jnp.asarray(batch["mu"]), jnp.asarray(batch["action"]))
  assert out.mu.shape == (2, 7, Z, K) and out.reward.shape == (2, 7) and carry[1].shape == (2, H)
  import optax
  opt = optax.adam(3e-2)
  st = opt.init(params)

  @jax.jit
  def step(params, st, key):
    (loss, t), g = jax.value_and_grad(lambda p: mdn.mdn_loss(m, p, batch, key), has_aux=True)(params)
    u, st = opt.update(g, st)
    return optax.apply_updates(params, u), st, loss

  losses = [float(step(params, st, jax.random.key(0))[2])]
  for i in range(60):
    params, st, loss = step(params, st, jax.random.key(i))
  losses.append(float(loss))
  assert losses[1] < losses[0] - 1.0, losses


def test_dream_step_jittable_vmappable_and_reproducible():
  m, params = _model_and_params()
  n = controller_size(Z, H, A)
  pop = jax.random.normal(jax.random.key(1), (5, n)) * 0.1
  z0s = jax.random.normal(jax.random.key(2), (3, Z))
  state = (m.initial_carry(()), z0s[0], jnp.ones(()))
  keys = jax.random.split(jax.random.key(3), 5)
  step = jax.jit(lambda c, s, k: dream.dream_step(m, params, c, s, k, 1.15))
  (carry, z1, alive), (z, r, al) = step(pop[0], state, keys[0])
  assert z1.shape == (Z,) and r.shape == () and carry[1].shape == (H,)
  batched = jax.jit(jax.vmap(lambda c, k: dream.dream_step(m, params, c, state, k, 1.15)[0][1]))
  zb = batched(pop, keys)
  assert zb.shape == (5, Z)
  np.testing.assert_allclose(zb[0], z1, rtol=1e-5, atol=1e-5)  # the vmapped step is the step
  r1 = dream.population_returns(m, params, pop, z0s, jax.random.key(4), steps=6, temperature=1.15)
  r2 = dream.population_returns(m, params, pop, z0s, jax.random.key(4), steps=6, temperature=1.15)
  assert r1.shape == (5,) and np.all(np.isfinite(r1))
  np.testing.assert_array_equal(r1, r2)
  # temperature 0 ~ the mixture's most likely component mean: no sampling noise left
  out = m.apply({"params": params}, m.initial_carry(()), z0s[0], jnp.zeros(A))[1]
  a = dream.sample_next_z(jax.random.key(5), out, 1e-8)
  b = dream.sample_next_z(jax.random.key(6), out, 1e-8)
  np.testing.assert_allclose(a, b, atol=1e-3)


def test_cma_es_improves_a_quadratic():
  pytest.importorskip("evosax", reason='the `world` extra: pip install -e ".[world]"')
  from gdl_jax.world.es import minimize
  target = jnp.linspace(-1.0, 1.0, 8)
  f = lambda pop: jnp.sum((pop - target) ** 2, -1)
  x0 = jnp.full((8,), 2.0)
  mean, best = minimize(f, x0, jax.random.key(0), population=12, sigma0=0.5, generations=40)
  assert float(f(mean[None])[0]) < 1e-2 * float(f(x0[None])[0]), (float(f(mean[None])[0]), best[-1])
  assert best[-1] < best[0]
