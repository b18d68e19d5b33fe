"""Diffusion objectives: schedules, forward marginals, eps/v conversions, decoder, variational bound."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from gdl_jax.objectives import diffusion as D

KINDS = ("linear", "cosine", "offset_cosine")


@pytest.mark.parametrize("kind", KINDS)
def test_table_is_a_decreasing_alpha_bar_with_data_at_zero(kind):
  ab = D.NoiseSchedule(kind).table(200)
  assert ab.shape == (201,) and ab[0] == 1.0
  assert np.all(np.diff(ab) < 0) and ab[-1] > 0.0


def test_discrete_tables_match_their_continuous_forms():
  T = 1000
  i = np.arange(1, T + 1) / T
  cos = D.NoiseSchedule("cosine")
  ab = cos.table(T)
  # Nichol & Dhariwal: alpha_bar(i/T) exactly until the beta clip (only the last step) kicks in.
  np.testing.assert_allclose(ab[1:T], cos.alpha_bar(i[:-1]), rtol=1e-9)
  off = D.NoiseSchedule("offset_cosine", min_signal_rate=0.02, max_signal_rate=0.95)
  np.testing.assert_allclose(off.table(T)[1:], off.alpha_bar(i), rtol=1e-12)
  np.testing.assert_allclose(off.alpha_bar(np.array([0.0, 1.0])), [0.95 ** 2, 0.02 ** 2], rtol=1e-12)
  # linear: prod(1 - beta_j) vs exp(-integral of beta): |log ratio| <= sum beta^2 / 2 + one step.
  lin = D.NoiseSchedule("linear")
  gap = np.abs(np.log(lin.table(T)[1:]) - np.log(lin.alpha_bar(i)))
  betas = np.linspace(1e-4, 0.02, T)
  assert np.all(gap <= np.cumsum(betas ** 2) + 0.02 + 1e-9)
  assert gap[99] < 1e-3  # early steps agree closely
  # the 1000/T rescaling keeps alpha_bar(t) for other T (to first order)
  np.testing.assert_allclose(lin.table(100)[50], lin.table(1000)[500], rtol=0.1)


@pytest.mark.parametrize("kind", KINDS)
def test_continuous_alpha_bar_jax_equals_numpy(kind):
  s = D.NoiseSchedule(kind)
  t = np.linspace(0.0, 1.0, 17)
  np.testing.assert_allclose(np.asarray(s.alpha_bar(jnp.asarray(t, jnp.float32))), s.alpha_bar(t),
                             rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_chain_marginals_match_the_closed_form(kind):
  """Running q(x_i | x_{i-1}) step by step gives N(sqrt(ab_i) x0, (1 - ab_i) I), as q_sample does."""
  T, n = 60, 40000
  ab = D.NoiseSchedule(kind).table(T)
  betas = 1.0 - ab[1:] / ab[:-1]
  x0 = np.array([-1.0, -0.25, 0.5, 1.0])
  rng = np.random.default_rng(0)
  x = np.broadcast_to(x0, (n, 4)).copy()
  tol_mean, tol_var = 5.0 / math.sqrt(n), 5.0 * math.sqrt(2.0 / n)
  for i in range(1, T + 1):
    x = math.sqrt(1.0 - betas[i - 1]) * x + math.sqrt(betas[i - 1]) * rng.standard_normal(x.shape)
    if i in (1, T // 3, T):
      np.testing.assert_allclose(x.mean(0), math.sqrt(ab[i]) * x0, atol=tol_mean)
      np.testing.assert_allclose(x.var(0), np.full(4, 1.0 - ab[i]), atol=tol_var)
      eps = jax.random.normal(jax.random.key(i), (n, 4))
      xq = np.asarray(D.q_sample(jnp.asarray(np.broadcast_to(x0, (n, 4)), jnp.float32),
                                 jnp.full((n,), ab[i], jnp.float32), eps))
      np.testing.assert_allclose(xq.mean(0), math.sqrt(ab[i]) * x0, atol=tol_mean)
      np.testing.assert_allclose(xq.var(0), np.full(4, 1.0 - ab[i]), atol=tol_var)


def test_eps_and_v_parameterisations_convert_consistently():
  k = jax.random.split(jax.random.key(0), 4)
  x0 = jax.random.uniform(k[0], (6, 4, 4, 1), minval=-1, maxval=1)
  eps = jax.random.normal(k[1], x0.shape)
  ab = jax.random.uniform(k[2], (6,), minval=0.01, maxval=0.99)
  x_t = D.q_sample(x0, ab, eps)
  v = D.v_target(x0, eps, ab)
  x0_v, eps_v = D.x0_eps_from_v(x_t, v, ab)
  np.testing.assert_allclose(x0_v, x0, atol=1e-5)
  np.testing.assert_allclose(eps_v, eps, atol=1e-5)
  np.testing.assert_allclose(D.x0_from_eps(x_t, eps, ab), x0, atol=1e-4)
  np.testing.assert_allclose(D.eps_from_x0(x_t, x0, ab), eps, atol=1e-4)
  # an arbitrary eps prediction and the v prediction it implies give the same (x0_hat, eps_hat),
  # and |v - v_hat|^2 = |eps - eps_hat|^2 / alpha_bar
  eps_hat = eps + 0.3 * jax.random.normal(k[3], x0.shape)
  x0_hat = D.x0_from_eps(x_t, eps_hat, ab)
  v_hat = D.v_target(x0_hat, eps_hat, ab)
  for out, pred in ((eps_hat, "eps"), (v_hat, "v")):
    a, b = D.predict_x0_eps(out, x_t, ab, pred)
    np.testing.assert_allclose(a, x0_hat, atol=2e-4)
    np.testing.assert_allclose(b, eps_hat, atol=2e-4)
  lv = jnp.sum(jnp.square(v - v_hat), axis=(1, 2, 3))
  le = jnp.sum(jnp.square(eps - eps_hat), axis=(1, 2, 3))
  np.testing.assert_allclose(lv * ab, le, rtol=1e-4)


def test_diffusion_loss_eps_and_v_agree_on_the_implied_x0():
  x0 = jnp.linspace(-1.0, 1.0, 2 * 4 * 4).reshape(2, 4, 4, 1)
  ab = D.Diffusion(num_timesteps=50).alpha_bars()
  scale = lambda t: (0.5 + t).reshape(-1, 1, 1, 1)
  eps_net = lambda x, t: 0.5 * x * scale(t)

  def v_net(x, t):  # the same denoiser, written as a v-prediction
    a_b = ab[jnp.round(t * 50).astype(jnp.int32)]
    x0_hat = D.x0_from_eps(x, eps_net(x, t), a_b)
    return D.v_target(x0_hat, eps_net(x, t), a_b)

  key = jax.random.key(3)
  le, me = D.diffusion_loss(eps_net, x0, key, ab, "eps")
  lv, mv = D.diffusion_loss(v_net, x0, key, ab, "v")
  np.testing.assert_allclose(me["mse_x0"], mv["mse_x0"], rtol=1e-4)
  assert np.isfinite(le) and np.isfinite(lv) and float(le) != float(lv)
  zero, _ = D.diffusion_loss(lambda x, t: jnp.zeros_like(x), jnp.zeros((64, 8, 8, 1)), key, ab, "eps")
  np.testing.assert_allclose(zero, 1.0, atol=0.05)  # E|eps|^2 per pixel


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_discretized_gaussian_sums_to_one_and_matches_scipy(levels):
  grid = (-1.0 + 2.0 * np.arange(levels) / (levels - 1)).astype(np.float32)
  for mean, std in ((0.13, 0.05), (-0.9, 0.3), (1.7, 0.01), (0.0, 2.0)):
    lp = np.asarray(D.discretized_gaussian_log_prob(jnp.asarray(grid), jnp.float32(mean),
                                                    jnp.float32(std), levels))
    assert np.all(np.isfinite(lp))
    np.testing.assert_allclose(np.exp(lp).sum(), 1.0, atol=1e-4)
    half = 1.0 / (levels - 1)
    g = lambda u: stats.norm.cdf(u, loc=mean, scale=std)
    sf = lambda u: stats.norm.sf(u, loc=mean, scale=std)  # upper tail without cancellation
    upper = grid > mean
    mid = np.where(upper, sf(grid - half) - sf(grid + half), g(grid + half) - g(grid - half))
    want = np.where(grid < -1 + half, g(grid + half), np.where(grid > 1 - half, sf(grid - half), mid))
    ok = want > 1e-30
    np.testing.assert_allclose(lp[ok], np.log(want[ok]), rtol=1e-3, atol=1e-4)
  # far tails stay finite (a model 40 sigma off still gets a finite, large nll)
  far = D.discretized_gaussian_log_prob(jnp.float32(0.0), jnp.float32(0.9), jnp.float32(0.01), 256)
  assert np.isfinite(far) and far < -700


def _posterior_numpy(ab):
  """Independent float64 posterior mean coefficients and variances of q(x_{i-1} | x_i, x0)."""
  T = len(ab) - 1
  c1, c2, bt = np.zeros(T + 1), np.zeros(T + 1), np.zeros(T + 1)
  for i in range(1, T + 1):
    beta = 1.0 - ab[i] / ab[i - 1]
    c1[i] = math.sqrt(ab[i - 1]) * beta / (1.0 - ab[i])
    c2[i] = math.sqrt(1.0 - beta) * (1.0 - ab[i - 1]) / (1.0 - ab[i])
    bt[i] = beta * (1.0 - ab[i - 1]) / (1.0 - ab[i])
  return c1, c2, bt


def test_posterior_coefficients_match_bayes_rule():
  ab = D.NoiseSchedule("linear").table(40)
  c1, c2, bt = (np.asarray(a) for a in D.posterior_coefficients(jnp.asarray(ab)))
  w1, w2, wb = _posterior_numpy(ab)
  np.testing.assert_allclose(c1[1:], w1[1:], rtol=1e-6)
  np.testing.assert_allclose(c2[1:], w2[1:], rtol=1e-6, atol=1e-12)
  np.testing.assert_allclose(bt[1:], wb[1:], rtol=1e-6, atol=1e-12)
  # Bayes: the posterior of x_{i-1} given x_i, x0 by Gaussian conditioning (numbers for one x0, x_i)
  i, x0, xi = 17, 0.4, -0.3
  a_prev, a_i = ab[i - 1], ab[i]
  beta = 1 - a_i / a_prev
  prec = 1 / (1 - a_prev) + (1 - beta) / beta
  mean = (math.sqrt(a_prev) * x0 / (1 - a_prev) + math.sqrt(1 - beta) * xi / beta) / prec
  np.testing.assert_allclose(c1[i] * x0 + c2[i] * xi, mean, rtol=1e-5)
  np.testing.assert_allclose(bt[i], 1 / prec, rtol=1e-5)


def _const_x0_denoiser(ab_table, num_steps, value=0.0):
  """An eps 'network' whose implied x0_hat is `value` at every step: eps_hat = (x_t - a v) / s."""
  def denoise(x, t):
    a_b = ab_table[jnp.round(t * num_steps).astype(jnp.int32)].reshape(-1, 1, 1, 1)
    return (x - jnp.sqrt(a_b) * value) / jnp.sqrt(1.0 - a_b)
  return denoise


_zero_x0_denoiser = _const_x0_denoiser


@pytest.mark.parametrize("kind,sub", [("linear", None), ("cosine", None), ("cosine", 10)])
def test_vlb_equals_an_independent_gaussian_kl_sum(kind, sub):
  """With x0_hat = 0 the bound is deterministic; compare with general-form KLs and scipy's cdf.
  sub: the bound of the 10-step sub-chain of a 30-step process (network times = grid / T)."""
  T, levels = 30, 17
  ab = D.NoiseSchedule(kind).table(T)
  abj = jnp.asarray(ab, jnp.float32)
  x0 = (-1.0 + 2.0 * np.array([[0, 3, 8, 16], [16, 16, 1, 5]]) / 16).reshape(2, 2, 2, 1)
  kw = {}
  if sub:
    abj, kw["times"] = D.subchain(abj, sub)
    ab = ab[D.step_grid(T, sub)]
    T = sub
  out = D.vlb_terms(_zero_x0_denoiser(abj, T), jnp.asarray(x0, jnp.float32), jax.random.key(0),
                    abj, levels, "eps", **kw)
  c1, c2, bt = _posterior_numpy(ab)
  var = bt.copy(); var[1] = bt[2]
  x = x0.reshape(2, -1)
  prior = 0.5 * (ab[T] * x ** 2 + (1 - ab[T]) - 1 - math.log(1 - ab[T]))
  diff = 0.0
  for i in range(2, T + 1):  # KL(N(mu_q, bt) || N(mu_p, var)) with mu_q - mu_p = c1 x0
    diff = diff + 0.5 * (bt[i] / var[i] + (c1[i] * x) ** 2 / var[i] - 1 - math.log(bt[i] / var[i]))
  half, sd = 1.0 / (levels - 1), math.sqrt(var[1])
  # log P(bin) for a N(0, sd^2) decoder; bins above 0 via the survival function (symmetric)
  a = np.abs(x)
  near, far = stats.norm.logsf((a - half) / sd), stats.norm.logsf((a + half) / sd)
  far = np.where(a > 1 - half, -np.inf, far)
  dec = -(near + np.log1p(-np.exp(far - near)))
  np.testing.assert_allclose(out["prior"], prior.sum(1), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out["diffusion"], diff.sum(1), rtol=1e-4)
  np.testing.assert_allclose(out["decoder"], dec.sum(1), rtol=1e-3, atol=1e-3)
  np.testing.assert_allclose(out["total"], out["prior"] + out["diffusion"] + out["decoder"], rtol=1e-6)


def test_vlb_clip_uses_the_clipped_x0_hat():
  T = 20
  abj = D.Diffusion(D.NoiseSchedule("cosine"), T).alpha_bars()
  x0 = jnp.asarray(-1.0 + 2.0 * np.arange(8).reshape(2, 2, 2, 1) / 16, jnp.float32)
  run = lambda v, clip: D.vlb_terms(_const_x0_denoiser(abj, T, v), x0, jax.random.key(0), abj, 17,
                                    "eps", clip=clip)["total"]
  np.testing.assert_allclose(run(3.0, True), run(1.0, False), rtol=1e-5)
  assert np.all(run(3.0, False) > run(3.0, True))


@pytest.mark.parametrize("T,k", [(1000, 100), (1000, 20), (40, 6), (10, 10), (5, 1)])
def test_vlb_strata_partition_the_steps(T, k):
  e = D.vlb_strata(T, k)
  assert len(e) == k + 1 and e[0] == 1 and e[-1] == T + 1 and np.all(np.diff(e) >= 1)
  assert e[1] == 2 or k == 1  # the decoder step i = 1 is its own stratum: always evaluated


def test_stratified_vlb_is_unbiased():
  T, levels = 40, 17
  abj = D.Diffusion(D.NoiseSchedule("linear"), T).alpha_bars()
  x0 = jnp.asarray(-1.0 + 2.0 * np.arange(8).reshape(2, 2, 2, 1) / 16, jnp.float32)
  den = _zero_x0_denoiser(abj, T)
  exact = D.vlb_terms(den, x0, jax.random.key(0), abj, levels, "eps")["total"]
  est = jax.vmap(lambda k: D.vlb_terms(den, x0, k, abj, levels, "eps", vlb_steps=6)["total"])(
      jax.random.split(jax.random.key(1), 400))
  assert float(jnp.std(est[:, 0])) > 0.0  # really random
  np.testing.assert_allclose(est.mean(0), exact, rtol=0.05)
  with pytest.raises(ValueError, match="vlb_steps"):
    D.vlb_terms(den, x0, jax.random.key(0), abj, levels, "eps", vlb_steps=T + 1)


def test_bad_config_values_raise_with_the_fix():
  with pytest.raises(ValueError, match="one of"):
    D.NoiseSchedule("quadratic")
  with pytest.raises(ValueError, match="prediction"):
    D.Diffusion(prediction="x_0")  # "x0" is valid (DALL-E 2's prior)
  with pytest.raises(ValueError, match="at least 2"):
    D.NoiseSchedule().table(1)
