"""Classical baselines: independent categorical, EM mixture, scikit-learn densities."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

from gdl_jax.evaluation import metrics as M
from gdl_jax.models import baselines as B


@pytest.fixture(scope="module")
def digit_images():
  from sklearn.datasets import load_digits
  return load_digits().images.astype(np.uint8)[..., None]                # [1797, 8, 8, 1], 17 levels


def _onehot(x, levels):
  return np.eye(levels)[x.reshape(len(x), -1)]                            # [N, D, L]


# --- independent categorical --------------------------------------------------------------------


def test_fit_independent_is_smoothed_counts(digit_images):
  x, alpha = digit_images[:200], 0.5
  params = B.fit_independent(x, 17, alpha)
  counts = _onehot(x, 17).sum(0)                                          # [D, L]
  expected = np.log((counts + alpha) / (200 + 17 * alpha))
  np.testing.assert_allclose(np.asarray(params["log_probs"]).reshape(64, 17), expected, atol=1e-5)
  np.testing.assert_allclose(np.exp(params["log_probs"]).sum(-1), 1.0, atol=1e-5)


def test_independent_log_prob_matches_brute_force(digit_images):
  params = B.fit_independent(digit_images[:200], 17)
  x = digit_images[300:310]
  lp = np.asarray(params["log_probs"], np.float64).reshape(64, 17)
  brute = [sum(lp[d, v] for d, v in enumerate(img.ravel())) for img in x]
  np.testing.assert_allclose(B.independent_log_prob(params, x), brute, rtol=1e-5)


def test_smoothing_keeps_held_out_likelihood_finite(digit_images):
  train, test = digit_images[:100], digit_images[1000:1100]
  assert np.isfinite(np.asarray(B.independent_log_prob(B.fit_independent(train, 17), test))).all()
  assert np.isneginf(np.asarray(B.independent_log_prob(B.fit_independent(train, 17, 0.0), test))).any()


def test_independent_sample_frequencies():
  probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])                   # a 1x2x1 image, 3 levels
  params = {"log_probs": jnp.log(jnp.asarray(probs, jnp.float32)).reshape(1, 2, 1, 3)}
  s = np.asarray(B.independent_sample(params, jax.random.key(0), 20000))
  assert s.shape == (20000, 1, 2, 1) and s.dtype == np.uint8
  freq = np.stack([np.bincount(s[:, 0, d, 0], minlength=3) / 20000 for d in range(2)])
  np.testing.assert_allclose(freq, probs, atol=0.015)


def test_input_validation(digit_images):
  with pytest.raises(ValueError, match="levels"):
    B.fit_independent(digit_images[:10], 16)
  with pytest.raises(ValueError, match="integer"):
    B.fit_independent(digit_images[:10].astype(np.float32), 17)
  with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
    B.fit_independent(digit_images[:10, ..., 0], 17)


# --- mixture of independent categoricals ----------------------------------------------------------


def _mixture_brute(params, x):
  """log sum_k w_k prod_d p_k,d(x_d) by explicit loops in float64."""
  lw = np.asarray(params["log_weights"], np.float64)
  lp = np.asarray(params["log_probs"], np.float64).reshape(len(lw), -1, params["log_probs"].shape[-1])
  out = []
  for img in x.reshape(len(x), -1):
    per_k = [lw[k] + sum(lp[k, d, v] for d, v in enumerate(img)) for k in range(len(lw))]
    out.append(scipy.special.logsumexp(per_k))
  return np.array(out)


def test_mixture_log_prob_matches_brute_force(digit_images):
  x = digit_images[:60, 2:5, 2:5] // 6                                          # [60, 3, 3, 1], 3 levels
  params, _ = B.fit_mixture(x, 3, 3, 5, jax.random.key(0))
  np.testing.assert_allclose(B.mixture_log_prob(params, x[:8]), _mixture_brute(params, x[:8]), rtol=1e-5)


def test_em_step_matches_numpy(digit_images):
  x, alpha, levels = digit_images[:60, 2:5, 2:5] // 6, 0.5, 3
  params, _ = B.fit_mixture(x, levels, 3, 1, jax.random.key(1), alpha=alpha)
  objective, new = B.em_step(params, x, alpha)
  lw = np.asarray(params["log_weights"], np.float64)
  lp = np.asarray(params["log_probs"], np.float64).reshape(3, 9, levels)
  oh = _onehot(x, levels)                                                 # [N, D, L]
  joint = lw[None] + np.einsum("ndl,kdl->nk", oh, lp)                     # [N, K]
  ll = scipy.special.logsumexp(joint, axis=1)
  resp = np.exp(joint - ll[:, None])
  counts = np.einsum("nk,ndl->kdl", resp, oh)
  nk = resp.sum(0)
  np.testing.assert_allclose(objective, ll.sum() + alpha * (lp.sum() + lw.sum()), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(new["log_probs"]).reshape(3, 9, levels),
                             np.log((counts + alpha) / (nk[:, None, None] + levels * alpha)), atol=1e-5)
  np.testing.assert_allclose(new["log_weights"], np.log((nk + alpha) / (60 + 3 * alpha)), atol=1e-5)


@pytest.fixture
def small_chunks(monkeypatch):
  """Forces several padded example chunks (and a pixel remainder for D=25) in the mixture pass."""
  monkeypatch.setattr(B, "_PASS_CHUNK_ELEMENTS", 64)
  jax.clear_caches()                              # the constant is read when a jitted function traces
  yield
  jax.clear_caches()


def test_pixel_major_counts_and_log_lik_match_loops(digit_images, small_chunks):
  """The chunked scatter-add / gather against explicit loops: [D, L, K] counts, [N, K] log-liks."""
  x = digit_images[:50, 1:6, 1:6] // 4                                   # [50, 5, 5, 1]: D=25, 5 levels
  levels, k = 5, 4
  x_flat = x.reshape(50, -1)
  assert B._chunk_size(50, k) == 13 and 25 % B._PIXEL_GROUP != 0         # 4 chunks, 2 padded rows
  w = scipy.special.softmax(np.cos(np.arange(50 * k).reshape(50, k)), axis=1)   # deterministic [N, K]
  counts = np.zeros((25, levels, k))
  for n in range(50):
    for d in range(25):
      counts[d, x_flat[n, d]] += w[n]
  got = B._level_counts(jnp.asarray(x_flat), jnp.asarray(w, jnp.float32), levels)
  np.testing.assert_allclose(got, counts, rtol=1e-5, atol=1e-6)
  params, _ = B.fit_mixture(x, levels, k, 2, jax.random.key(10))
  lp = np.asarray(params["log_probs"], np.float64).reshape(k, 25, levels)
  loops = np.array([[sum(lp[j, d, v] for d, v in enumerate(img)) for j in range(k)] for img in x_flat])
  got = B._component_log_lik(B._table(params["log_probs"], k), jnp.asarray(x_flat))
  np.testing.assert_allclose(got, loops, rtol=1e-5)
  np.testing.assert_allclose(B.mixture_log_prob(params, x), _mixture_brute(params, x), rtol=1e-5)


def test_chunked_em_step_matches_numpy(digit_images, small_chunks):
  x, alpha, levels, k = digit_images[:50, 1:6, 1:6] // 4, 0.5, 5, 4
  params, _ = B.fit_mixture(x, levels, k, 1, jax.random.key(11), alpha=alpha)
  objective, new = B.em_step(params, x, alpha)
  lw = np.asarray(params["log_weights"], np.float64)
  lp = np.asarray(params["log_probs"], np.float64).reshape(k, 25, levels)
  oh = _onehot(x, levels)                                                 # [N, D, L]
  joint = lw[None] + np.einsum("ndl,kdl->nk", oh, lp)
  ll = scipy.special.logsumexp(joint, axis=1)
  resp = np.exp(joint - ll[:, None])
  counts, nk = np.einsum("nk,ndl->kdl", resp, oh), resp.sum(0)
  np.testing.assert_allclose(objective, ll.sum() + alpha * (lp.sum() + lw.sum()), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(new["log_probs"]).reshape(k, 25, levels),
                             np.log((counts + alpha) / (nk[:, None, None] + levels * alpha)), atol=1e-5)
  np.testing.assert_allclose(new["log_weights"], np.log((nk + alpha) / (50 + k * alpha)), atol=1e-5)
  assert new["log_probs"].shape == (k, 5, 5, 1, levels)


def test_independent_counts_in_chunks(digit_images, small_chunks):
  x = digit_images[:200]                                                  # 200 > 64: 4 chunks
  expected = np.log((_onehot(x, 17).sum(0) + 0.5) / (200 + 17 * 0.5))
  np.testing.assert_allclose(np.asarray(B.fit_independent(x, 17)["log_probs"]).reshape(64, 17), expected,
                             atol=1e-5)


@pytest.mark.parametrize("alpha", [0.5, 0.0])
def test_em_objective_never_decreases(digit_images, alpha):
  x = digit_images[:300]
  params, history = B.fit_mixture(x, 17, 8, 15, jax.random.key(2), alpha=alpha)
  h = np.asarray(history, np.float64)
  assert h.shape == (16,) and np.isfinite(h).all()
  assert np.all(np.diff(h) >= -1e-6 * np.abs(h[1:])), np.diff(h)        # float32 round-off only
  assert h[-1] > h[0] + 100.0
  # The last entry is the objective at the returned params (independent evaluation).
  lp_sum = float(np.sum(B.mixture_log_prob(params, x)))
  prior = alpha * float(np.sum(params["log_probs"]) + np.sum(params["log_weights"])) if alpha else 0.0
  np.testing.assert_allclose(h[-1], lp_sum + prior, rtol=1e-5)


def test_one_component_mixture_is_the_independent_model(digit_images):
  x = digit_images[:200]
  params, _ = B.fit_mixture(x, 17, 1, 2, jax.random.key(3))
  np.testing.assert_allclose(params["log_probs"][0], B.fit_independent(x, 17)["log_probs"], atol=1e-5)
  np.testing.assert_allclose(params["log_weights"], [0.0], atol=1e-6)


def test_mixture_sample_picks_components_by_weight():
  lp = np.full((2, 2, 2, 1, 4), -30.0, np.float32)
  lp[0, ..., 0] = 0.0                                                     # component 0: all level 0
  lp[1, ..., 3] = 0.0                                                     # component 1: all level 3
  params = {"log_weights": jnp.log(jnp.array([0.3, 0.7])), "log_probs": jnp.asarray(lp)}
  s = np.asarray(B.mixture_sample(params, jax.random.key(4), 4000))
  assert s.shape == (4000, 2, 2, 1) and s.dtype == np.uint8
  flat = s.reshape(4000, -1)
  assert set(np.unique(flat.max(1) - flat.min(1))) == {0}                 # whole images from one component
  assert np.mean(flat[:, 0] == 0) == pytest.approx(0.3, abs=0.025)


# --- scikit-learn densities -----------------------------------------------------------------------


def test_gmm_log_prob_bounds_exact_discrete_likelihood(digit_images):
  """Dequantized log-density + D log w is a lower bound on log P(x) of the discretized Gaussian."""
  x = digit_images[:400, 3:5, 3:5]                                              # [400, 2, 2, 1]: 4 dims
  gmm = B.fit_gmm(x, 17, jax.random.key(5), n_components=(1,), covariance_type="diag")
  mu, var = gmm.means_[0], gmm.covariances_[0]
  w = 2.0 / 16
  y = x.reshape(400, -1) * w - 1.0
  sd = np.sqrt(var)
  exact = np.sum(np.log(scipy.stats.norm.cdf(y + w / 2, mu, sd) - scipy.stats.norm.cdf(y - w / 2, mu, sd)), 1)
  draws = np.stack([B.sklearn_log_prob(gmm, x, 17, jax.random.key(i)) for i in range(20)])
  bound = draws.mean(0)
  assert bound.mean() <= exact.mean() + 1e-3
  assert bound.mean() >= exact.mean() - 0.05                              # a smooth density: tight
  # Same noise -> the formula score(y + u) + D log w, with u from metrics.dequantize.
  u = np.asarray(M.dequantize(jax.random.key(0), x, 17), np.float64).reshape(400, -1)
  np.testing.assert_allclose(draws[0], gmm.score_samples(u) + 4 * math.log(w), rtol=1e-6)


def test_kde_selects_best_validation_bandwidth_and_samples_levels(digit_images):
  x = digit_images[:300]
  kde = B.fit_kde(x, 17, jax.random.key(6), bandwidths=(0.02, 0.2, 2.0))
  scores = kde.selection_["val_log_density"]
  assert kde.bandwidth == max(scores, key=scores.get) == 0.2
  s = B.sklearn_sample(kde, jax.random.key(7), 16, (8, 8, 1), 17)
  assert s.shape == (16, 8, 8, 1) and s.dtype == np.uint8 and s.max() <= 16
  g = B.fit_gmm(x, 17, jax.random.key(8), n_components=(2,), covariance_type="diag")
  sg = B.sklearn_sample(g, jax.random.key(9), 16, (8, 8, 1), 17)
  assert sg.shape == (16, 8, 8, 1) and sg.dtype == np.uint8


def test_kde_grid_grows_past_its_edge_to_the_validation_optimum(digit_images):
  """A grid entirely below the optimum (as 0.5w..4w is for 256 levels) is extended until the
  validation score turns down, and the pick is the best of all values scored."""
  from sklearn.neighbors import KernelDensity
  x = digit_images[:300]
  fit = lambda y, h: KernelDensity(bandwidth=h).fit(y)
  model = B._select(fit, (0.01, 0.012), x, 17, jax.random.key(6), 0.2, grow=1.5)
  scores = model.selection_["val_log_density"]
  best = model.bandwidth
  assert best == max(scores, key=scores.get) and best > 0.1                # far past the grid
  above = min(v for v in scores if v > best)
  assert scores[above] < scores[best] and max(scores) == above            # stopped one step past
  fixed = B._select(fit, (0.01, 0.012), x, 17, jax.random.key(6), 0.2)    # no grow: stays inside
  assert fixed.bandwidth == 0.012
