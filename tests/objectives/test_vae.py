"""Chapter 3 objectives against independent computations (scipy quadrature, numpy, brute force)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special, stats

from gdl_jax.models.vae import VAE, PixelParams
from gdl_jax.objectives import vae as O


def _tiny_vae(latent_dim=2, likelihood="logistic", num_mixtures=1, shape=(8, 8, 1), levels=17):
  return VAE(shape, levels, latent_dim=latent_dim, features=(4, 8), hidden=16,
             likelihood=likelihood, num_mixtures=num_mixtures)


def _digits(n=4):
  from sklearn.datasets import load_digits
  return load_digits().images[:n].astype(np.int32)[..., None]  # [n, 8, 8, 1] levels 0..16


@functools.lru_cache(maxsize=None)
def _init_cached(model, shape, seed):
  # rbg keys only for init: threefry-initialised params take ~20 s to compile on a loaded CPU.
  image = jnp.zeros(shape, jnp.int32)
  return jax.jit(model.init)(jax.random.key(seed, impl="rbg"), image, jax.random.key(seed + 1))["params"]


def _init(model, image, seed=0):
  return _init_cached(model, tuple(image.shape), seed)


# ---------------------------------------------------------------------------------------------
# latent densities

def test_gaussian_kl_matches_quadrature():
  rng = np.random.default_rng(0)
  mean, logvar = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
  got = np.asarray(O.gaussian_kl(jnp.asarray(mean, jnp.float32), jnp.asarray(logvar, jnp.float32)))
  want = np.zeros(3)
  for b in range(3):
    for j in range(4):
      q = stats.norm(mean[b, j], math.exp(0.5 * logvar[b, j]))
      f = lambda z: q.pdf(z) * (q.logpdf(z) - stats.norm.logpdf(z))
      want[b] += integrate.quad(f, -30, 30, limit=200)[0]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_latent_log_probs_match_scipy():
  rng = np.random.default_rng(1)
  z, mean, logvar = rng.normal(size=(3, 5, 4))
  got = O.diag_gaussian_log_prob(*(jnp.asarray(a, jnp.float32) for a in (z, mean, logvar)))
  want = stats.norm.logpdf(z, mean, np.exp(0.5 * logvar)).sum(-1)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(O.standard_normal_log_prob(jnp.asarray(z, jnp.float32)),
                             stats.norm.logpdf(z).sum(-1), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# pixel likelihoods

@pytest.mark.parametrize("levels", [2, 17, 256])
def test_discretized_logistic_sums_to_one_over_levels(levels):
  locs = jnp.array([-3.0, -1.0, -0.3, 0.0, 0.51, 1.0, 2.5], jnp.float32)
  log_scales = jnp.array([-7.0, -4.0, -2.0, 0.0, 2.0], jnp.float32)
  loc, ls = jnp.meshgrid(locs, log_scales)                                        # [S, L]
  x = jnp.arange(levels)[:, None, None]                                           # [levels, 1, 1]
  lp = O.discretized_logistic_log_prob(x, loc[None], ls[None], levels)            # [levels, S, L]
  assert bool(jnp.all(jnp.isfinite(lp)))
  assert bool(jnp.all(lp <= 1e-6))
  np.testing.assert_allclose(jnp.sum(jnp.exp(lp), 0), 1.0, atol=2e-5)


def test_discretized_logistic_matches_scipy_cdf():
  levels, rng = 17, np.random.default_rng(2)
  x = rng.integers(0, levels, size=200)
  loc, log_scale = rng.uniform(-1.2, 1.2, 200), rng.uniform(-3, 0.5, 200)
  y, h, s = 2 * x / (levels - 1) - 1, 1 / (levels - 1), np.exp(log_scale)
  upper = np.where(x == levels - 1, 1.0, stats.logistic.cdf(y + h, loc, s))
  lower = np.where(x == 0, 0.0, stats.logistic.cdf(y - h, loc, s))
  want = np.log(upper - lower)
  got = O.discretized_logistic_log_prob(jnp.asarray(x), jnp.asarray(loc, jnp.float32),
                                        jnp.asarray(log_scale, jnp.float32), levels)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_discretized_logistic_tails_and_gradients_are_finite():
  # A tiny scale far from the pixel: the probability underflows float32 but the log must not.
  x = jnp.array([8, 8, 3, 0, 16])
  loc = jnp.array([0.9, -0.9, 0.99, 1.0, -1.0])
  ls = jnp.full((5,), -7.0)
  lp = O.discretized_logistic_log_prob(x, loc, ls, 17)
  assert bool(jnp.all(jnp.isfinite(lp))) and float(jnp.max(lp)) < -50
  # asymptotically log P ~ -(distance to the nearer bin edge) / scale
  y8 = 0.0
  np.testing.assert_allclose(lp[0], -(0.9 - y8 - 1 / 16) / math.exp(-7.0), rtol=1e-3)
  g = jax.grad(lambda l, s: jnp.sum(O.discretized_logistic_log_prob(x, l, s, 17)), argnums=(0, 1))(loc, ls)
  assert all(bool(jnp.all(jnp.isfinite(a))) for a in g)


def test_logistic_mixture_sums_to_one_and_matches_manual_mixture():
  levels, key = 17, jax.random.key(0)
  k1, k2, k3 = jax.random.split(key, 3)
  loc = jax.random.normal(k1, (3, 5))
  ls = jax.random.normal(k2, (3, 5)) - 1.0
  logits = jax.random.normal(k3, (3, 5))
  px = PixelParams(loc, ls, logits)
  x = jnp.arange(levels)[:, None]                                                 # [levels, 1]
  lp = O.discretized_logistic_mixture_log_prob(x, jax.tree.map(lambda a: a[None], px), levels)  # [levels, 3]
  np.testing.assert_allclose(jnp.sum(jnp.exp(lp), 0), 1.0, atol=2e-5)
  comp = np.exp(np.asarray(O.discretized_logistic_log_prob(x[..., None], loc[None], ls[None],
                                                          levels)))  # [levels, 3, 5]
  w = special.softmax(np.asarray(logits), -1)
  np.testing.assert_allclose(np.exp(lp), (comp * w).sum(-1), rtol=1e-5, atol=1e-7)


def test_bernoulli_matches_scipy():
  x = jnp.array([0, 1, 1, 0])
  logits = jnp.array([-2.0, -0.5, 3.0, 10.0])
  want = stats.bernoulli.logpmf(np.asarray(x), special.expit(np.asarray(logits, np.float64)))
  np.testing.assert_allclose(O.bernoulli_log_prob(x, logits), want, rtol=1e-5)


def test_dequantized_gaussian_is_density_plus_log_bin_width_and_bounds_the_discrete_mass():
  levels, x = 17, jnp.array([[3, 8, 16]])                                          # [1, 3]
  loc, ls = jnp.array([[-0.5, 0.1, 0.8]]), jnp.array([[-2.0, -1.5, -2.5]])
  px = PixelParams(loc[..., None], ls[..., None])
  noise = jax.random.uniform(jax.random.key(0), (256, 1, 3))
  lp = jax.vmap(lambda u: O.log_likelihood(px, x, likelihood="gaussian", levels=levels, noise=u))(noise)
  y = np.asarray(O.dequantize(jnp.broadcast_to(x, noise.shape), noise, levels))
  want = (stats.norm.logpdf(y, np.asarray(loc), np.exp(np.asarray(ls))) + math.log(2 / 16)).sum(-1)
  np.testing.assert_allclose(lp, want, rtol=1e-5)
  # Jensen: E_u log p(y) + log w <= log of the Gaussian mass of the bin (the exact discrete density)
  yc, w, s = 2 * np.asarray(x) / 16 - 1, 2 / 16, np.exp(np.asarray(ls))
  mass = stats.norm.cdf(yc + w / 2, np.asarray(loc), s) - stats.norm.cdf(yc - w / 2, np.asarray(loc), s)
  assert float(jnp.mean(lp)) <= np.log(mass).sum()


def test_unknown_likelihood_and_missing_noise_raise():
  px = PixelParams(jnp.zeros((1, 2, 2, 1, 1)), jnp.zeros((1, 2, 2, 1, 1)))
  with pytest.raises(ValueError, match="unknown"):
    O.log_likelihood(px, jnp.zeros((1, 2, 2, 1), jnp.int32), likelihood="poisson", levels=17)
  with pytest.raises(ValueError, match="noise"):
    O.log_likelihood(px, jnp.zeros((1, 2, 2, 1), jnp.int32), likelihood="gaussian", levels=17)


# ---------------------------------------------------------------------------------------------
# ELBO and IWAE (jitted: one compile per function instead of op-by-op dispatch)

@functools.lru_cache(maxsize=None)
def _fns(model):
  """Jitted (elbo, iwae) closures over a static model."""
  e = jax.jit(lambda p, x, key, beta=1.0, kl="analytic": O.elbo(model, p, x, key, beta=beta, kl=kl),
              static_argnames=("kl",))
  i = jax.jit(lambda p, x, key, k, chunk=None: O.iwae(model, p, x, key, k=k, chunk=chunk),
              static_argnames=("k", "chunk"))
  return e, i


def test_elbo_matches_hand_computation():
  model, image = _tiny_vae(), jnp.asarray(_digits(3))
  params = _init(model, image)
  key = jax.random.key(7)
  beta = 0.5
  t = _fns(model)[0](params, image, key, beta)
  # by hand: same key split, posterior from the encoder, z, decoder, scipy logistic CDF bins.
  key_z, _ = jax.random.split(key)
  q = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode))(params, image)
  mean, logvar = np.asarray(q.mean, np.float64), np.asarray(q.logvar, np.float64)
  eps = np.asarray(jax.random.normal(key_z, mean.shape), np.float64)
  z = mean + np.exp(0.5 * logvar) * eps
  px = jax.jit(lambda p, z: model.apply({"params": p}, z, method=model.decode))(
      params, jnp.asarray(z, jnp.float32))
  loc, s = np.asarray(px.loc[..., 0], np.float64), np.exp(np.asarray(px.log_scale[..., 0], np.float64))
  x = np.asarray(image)
  y = 2 * x / 16 - 1
  upper = np.where(x == 16, 1.0, stats.logistic.cdf(y + 1 / 16, loc, s))
  lower = np.where(x == 0, 0.0, stats.logistic.cdf(y - 1 / 16, loc, s))
  log_px_z = np.log(upper - lower).reshape(3, -1).sum(-1)
  kl = 0.5 * (np.exp(logvar) + mean ** 2 - 1 - logvar).sum(-1)
  np.testing.assert_allclose(t.log_px_z, log_px_z, rtol=1e-4)
  np.testing.assert_allclose(t.kl, kl, rtol=1e-4)
  np.testing.assert_allclose(t.elbo, log_px_z - beta * kl, rtol=1e-4)


@pytest.mark.parametrize("likelihood", ["logistic", "gaussian", "bernoulli"])
def test_iwae_k1_equals_single_sample_elbo(likelihood):
  model, image = _tiny_vae(likelihood=likelihood), jnp.asarray(_digits(4))
  params = _init(model, image)
  elbo_fn, iwae_fn = _fns(model)
  for seed in range(2):
    key = jax.random.key(seed)
    e = elbo_fn(params, image, key, kl="sample").elbo
    np.testing.assert_allclose(iwae_fn(params, image, key, 1), e, rtol=1e-5)


def _badly_matched(params):
  """Widen q(z|x) (logvar bias + 2) so importance weighting has something to fix."""
  params = jax.tree.map(lambda a: a, params)
  enc = dict(params["encoder"])
  enc["logvar"] = dict(enc["logvar"], bias=enc["logvar"]["bias"] + 2.0)
  return dict(params, encoder=enc)


def test_analytic_elbo_is_the_expectation_of_iwae_k1():
  model, image = _tiny_vae(), jnp.asarray(_digits(4))
  params = _badly_matched(_init(model, image))
  keys = jax.random.split(jax.random.key(3), 400)
  diff = jax.jit(jax.vmap(lambda k: O.iwae(model, params, image, k, k=1)
                          - O.elbo(model, params, image, k).elbo))(keys)           # [400, B]
  se = np.std(np.asarray(diff), 0) / math.sqrt(len(keys))
  assert np.all(np.abs(np.mean(np.asarray(diff), 0)) < 4 * se + 1e-3)


def test_iwae_grows_with_k_and_chunking_is_exact():
  model, image = _tiny_vae(), jnp.asarray(_digits(4))
  params = _badly_matched(_init(model, image))
  _, iwae_fn = _fns(model)
  keys = jax.random.split(jax.random.key(5), 16)
  means = [float(np.mean([iwae_fn(params, image, kk, k, 8 if k > 8 else None) for kk in keys]))
           for k in (1, 8, 64)]
  assert means[0] + 0.1 < means[1] < means[2] - 0.1, means
  np.testing.assert_allclose(iwae_fn(params, image, keys[0], 8), iwae_fn(params, image, keys[0], 8, 2),
                             rtol=1e-5)
  with pytest.raises(ValueError, match="multiple"):
    O.iwae(model, params, image, keys[0], k=32, chunk=5)


def test_iwae_approaches_exact_log_likelihood_from_below():
  # 1-D latent: log p(x) = log int p(x|z) N(z) dz by brute-force quadrature on a dense grid.
  model, image = _tiny_vae(latent_dim=1), jnp.asarray(_digits(2))
  params = _badly_matched(_init(model, image, seed=3))

  @jax.jit
  def log_joint_on_grid(params, zs):
    px = model.apply({"params": params}, zs, method=model.decode)
    lp = jax.vmap(lambda img: O.log_likelihood(px, jnp.broadcast_to(img, (zs.shape[0],) + img.shape),
                                               likelihood="logistic", levels=17))(image)  # [B, G]
    return lp + O.standard_normal_log_prob(zs)[None]

  zs = jnp.linspace(-9.0, 9.0, 3001)[:, None]
  exact = special.logsumexp(np.asarray(log_joint_on_grid(params, zs), np.float64), axis=1) \
      + math.log(18.0 / 3000)
  elbo_fn, iwae_fn = _fns(model)
  e = np.mean([elbo_fn(params, image, k).elbo for k in jax.random.split(jax.random.key(0), 32)], 0)
  iw = np.mean([iwae_fn(params, image, k, 512, 64) for k in jax.random.split(jax.random.key(1), 2)], 0)
  assert np.all(e < exact) and np.all(iw <= exact + 1e-2), (e, iw, exact)
  assert np.all(iw - e > 0.5 * (exact - e)), (e, iw, exact)  # IWAE(512) closes most of the gap


def test_vae_loss_is_negative_elbo_per_dim():
  model, image = _tiny_vae(), jnp.asarray(_digits(4))
  params = _init(model, image)
  loss_fn = jax.jit(lambda p, key, beta: O.vae_loss(model, p, image, key, beta=beta))
  loss, m = loss_fn(params, jax.random.key(0), 1.0)
  np.testing.assert_allclose(loss * 64, m["recon"] + m["kl"], rtol=1e-5)
  np.testing.assert_allclose(m["elbo"], -(m["recon"] + m["kl"]), rtol=1e-5)
  np.testing.assert_allclose(m["elbo_bpd"], loss / math.log(2), rtol=1e-6)
  loss_b, m_b = loss_fn(params, jax.random.key(0), 4.0)
  np.testing.assert_allclose(loss_b * 64, m_b["recon"] + 4.0 * m_b["kl"], rtol=1e-5)
