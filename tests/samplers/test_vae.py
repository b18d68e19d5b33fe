"""Chapter 3 samplers: pixel draws match the likelihoods, latent tools against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdl_jax.models.vae import VAE, PixelParams
from gdl_jax.objectives import vae as O
from gdl_jax.samplers import vae as S


@pytest.mark.parametrize("k", [1, 3])
def test_discretized_logistic_draws_match_the_log_probs(k):
  levels, n = 17, 40000
  loc = jnp.array([-0.95, 0.1, 0.5][:k], jnp.float32)
  ls = jnp.array([-2.0, -1.5, -3.0][:k], jnp.float32)
  logits = jnp.array([0.3, -0.2, 0.5][:k], jnp.float32) if k > 1 else None
  px = PixelParams(jnp.broadcast_to(loc, (n, 1, 1, 1, k)), jnp.broadcast_to(ls, (n, 1, 1, 1, k)),
                   None if logits is None else jnp.broadcast_to(logits, (n, 1, 1, 1, k)))
  draws = jax.jit(lambda key: S.pixel_sample(px, key, likelihood="logistic", levels=levels))(
      jax.random.key(0))
  assert draws.shape == (n, 1, 1, 1) and draws.dtype == jnp.int32
  freq = np.bincount(np.asarray(draws).ravel(), minlength=levels) / n
  one = jax.tree.map(lambda a: a[:1], px)
  probs = np.exp([float(O.discretized_logistic_mixture_log_prob(jnp.full((1, 1, 1, 1), i), one, levels)
                        .squeeze()) for i in range(levels)])
  np.testing.assert_allclose(freq, probs, atol=0.01)


def test_bernoulli_and_gaussian_draws_and_means():
  n = 20000
  px = PixelParams(jnp.full((n, 1, 1, 1, 1), 1.0))
  d = S.pixel_sample(px, jax.random.key(1), likelihood="bernoulli", levels=17)
  assert set(np.unique(np.asarray(d))) <= {0, 16}
  np.testing.assert_allclose(np.mean(np.asarray(d) == 16), 1 / (1 + np.exp(-1.0)), atol=0.01)
  assert int(S.pixel_mean(px, likelihood="bernoulli", levels=17)[0, 0, 0, 0]) == round(16 / (1 + np.exp(-1.0)))
  g = PixelParams(jnp.full((n, 1, 1, 1, 1), 0.0), jnp.full((n, 1, 1, 1, 1), np.log(0.1)))
  d = np.asarray(S.pixel_sample(g, jax.random.key(2), likelihood="gaussian", levels=17))
  np.testing.assert_allclose(d.mean(), 8.0, atol=0.05)   # symmetric around the middle level
  assert int(S.pixel_mean(g, likelihood="gaussian", levels=17)[0, 0, 0, 0]) == 8


def test_logistic_mixture_mean_is_the_weighted_loc():
  loc = jnp.array([[[[[-1.0, 1.0]]]]])
  px = PixelParams(loc, jnp.zeros_like(loc), jnp.log(jnp.array([[[[[0.25, 0.75]]]]])))
  assert int(S.pixel_mean(px, likelihood="logistic", levels=17)[0, 0, 0, 0]) == 12  # y=0.5 -> level 12


def test_attribute_vector_matches_numpy():
  z = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
  has = np.array([1, 0, 0, 1, 1, 0, 0, 0, 1, 0], bool)
  np.testing.assert_allclose(S.attribute_vector(jnp.asarray(z), jnp.asarray(has)),
                             z[has].mean(0) - z[~has].mean(0), rtol=1e-5)


def test_latent_tools_are_consistent_with_reconstruct():
  model = VAE((8, 8, 1), 17, latent_dim=2, features=(4, 8), hidden=8)
  from sklearn.datasets import load_digits
  image = jnp.asarray(load_digits().images[:3].astype(np.int32)[..., None])
  params = jax.jit(model.init)(jax.random.key(0, impl="rbg"), image, jax.random.key(1))["params"]

  @jax.jit
  def run(params):
    rec = S.reconstruct(model, params, image)
    vec = jnp.array([0.5, -1.0])
    arith = S.latent_arithmetic(model, params, image, vec, jnp.array([0.0, 2.0]))
    z = S.encode_mean(model, params, image)
    shifted = S.decode(model, params, z + 2.0 * vec[None])
    mo = S.morph(model, params, image, image[::-1], 4)
    grid = S.latent_grid_2d(model, params, 3)
    prior = S.sample_prior(model, params, jax.random.key(2), 5, "sample")
    return rec, arith, shifted, mo, grid, prior

  rec, arith, shifted, mo, grid, prior = run(params)
  assert rec.shape == (3, 8, 8, 1) and rec.dtype == jnp.int32
  np.testing.assert_array_equal(arith[:, 0], rec)
  np.testing.assert_array_equal(arith[:, 1], shifted)
  assert mo.shape == (3, 4, 8, 8, 1)
  np.testing.assert_array_equal(mo[:, 0], rec)
  np.testing.assert_array_equal(mo[:, -1], rec[::-1])
  assert grid.shape == (3, 3, 8, 8, 1)
  assert prior.shape == (5, 8, 8, 1) and int(prior.min()) >= 0 and int(prior.max()) <= 16
  with pytest.raises(ValueError, match="mode"):
    S.to_levels(model, None, None, "median")


def test_project_2d():
  z = np.random.default_rng(0).normal(size=(50, 5)) * np.array([5.0, 1, 0.1, 0.1, 0.1])
  p, how = S.project_2d(z)
  assert p.shape == (50, 2) and "PCA" in how
  assert np.var(p[:, 0]) > np.var(p[:, 1]) and np.var(p[:, 0]) > 0.9 * np.var(z[:, 0])
  p2, how2 = S.project_2d(z[:, :2])
  np.testing.assert_allclose(p2, z[:, :2])
  assert how2 == "z"
