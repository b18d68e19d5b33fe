"""Classical baselines on discrete images (Chapter 1's "Naive Bayes" parametric model and friends).

Images are integer levels [N, H, W, C] in {0..levels-1}. Pure functions on params pytrees:

  fit_independent(x, levels, alpha) -> {"log_probs": [H, W, C, L]}     independent categorical pixels
  fit_mixture(x, levels, k, iters, key) -> ({"log_weights": [K], "log_probs": [K, H, W, C, L]}, history)
  fit_gmm / fit_kde -> fitted scikit-learn models on dequantized signed pixels, with
  sklearn_log_prob (discrete nats via dequantization) and sklearn_sample (integer levels).
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gdl_jax.data.info import from_signed
from gdl_jax.evaluation.metrics import bin_width, dequantize, dequantized_log_prob, numpy_rng

# Add-alpha smoothing per (pixel, level) keeps log p finite for levels never seen at a pixel in
# training. Measured on digits (seeded 80/20 split), held-out bits/dim: independent 2.4226 / 2.4221 /
# 2.4228 / 2.4242 for alpha 0.01 / 0.1 / 0.5 / 1; mixture k=20 2.236 / 2.217 / 2.234 / 2.289 for
# alpha 0.1 / 0.5 / 1 / 2. So 0.5 for both.
DEFAULT_ALPHA = 0.5
_CHUNK_ELEMENTS = 1 << 22       # examples x components x dims per chunk of the mixture E-step


def _check_images(x, levels: int):
  """Validates integer images [N, H, W, C] with values in {0..levels-1} (when concrete)."""
  if levels is None or int(levels) < 2:
    raise ValueError(f"levels must be an integer >= 2, got {levels}; use dataset.info.levels.")
  if x.ndim != 4:
    raise ValueError(f"images must be [N, H, W, C], got shape {x.shape}; add a channel axis.")
  if not jnp.issubdtype(x.dtype, jnp.integer):
    raise ValueError(f"images must hold integer levels, got dtype {x.dtype}; use from_signed(x, levels).")
  if not isinstance(x, jax.core.Tracer):
    lo, hi = int(np.min(x)), int(np.max(x))
    if lo < 0 or hi >= levels:
      raise ValueError(f"pixel values span [{lo}, {hi}] but levels={levels}; pass the dataset's levels.")


def _as_int_image(x, levels: int) -> jax.Array:
  _check_images(x, levels)
  return jnp.asarray(x).astype(jnp.int32)


def _out_dtype(levels: int):
  return jnp.uint8 if levels <= 256 else jnp.int32


def _level_counts(x_NxD, weights_NxK, levels: int) -> jax.Array:
  """sum_n w[n, k] [x[n, d] == l] -> [K, D, L] by scatter-add (no [N, D, L] one-hot)."""
  n, d = x_NxD.shape
  k = weights_NxK.shape[1]
  vals = jnp.broadcast_to(weights_NxK.T[:, :, None], (k, n, d))          # [K, N, D]
  d_idx = jnp.broadcast_to(jnp.arange(d)[None, :], (n, d))                # [N, D]
  return jnp.zeros((k, d, levels), jnp.float32).at[:, d_idx, x_NxD].add(vals)


# ----------------------------------------------------------------------------------------------
# Independent categorical pixels.


@functools.partial(jax.jit, static_argnames=("levels",))
def _fit_independent(x, alpha, *, levels: int):
  n = x.shape[0]
  x_flat = x.reshape(n, -1)                                               # [N, D]
  counts = _level_counts(x_flat, jnp.ones((n, 1), jnp.float32), levels)[0]   # [D, L]
  log_probs = jnp.log(counts + alpha) - jnp.log(n + levels * alpha)
  return {"log_probs": log_probs.reshape(*x.shape[1:], levels)}


def fit_independent(x, levels: int, alpha: float = DEFAULT_ALPHA) -> dict:
  """Maximum likelihood (add-alpha smoothed) per-pixel categoricals -> {"log_probs": [H, W, C, L]}."""
  if alpha < 0:
    raise ValueError(f"alpha must be >= 0, got {alpha}; use a small positive value such as 0.5.")
  return _fit_independent(_as_int_image(x, levels), jnp.float32(alpha), levels=int(levels))


@jax.jit
def independent_log_prob(params: dict, x) -> jax.Array:
  """log p(x) in nats per example [N] under independent categorical pixels."""
  log_probs = params["log_probs"]                                         # [H, W, C, L]
  levels = log_probs.shape[-1]
  lp = log_probs.reshape(-1, levels)                                      # [D, L]
  x_flat = jnp.asarray(x).astype(jnp.int32).reshape(x.shape[0], -1)       # [N, D]
  return jnp.sum(lp[jnp.arange(lp.shape[0])[None, :], x_flat], axis=1)


@functools.partial(jax.jit, static_argnames=("n",))
def independent_sample(params: dict, key: jax.Array, n: int) -> jax.Array:
  """n images [n, H, W, C] of integer levels drawn pixel by pixel."""
  log_probs = params["log_probs"]
  x = jax.random.categorical(key, log_probs, shape=(n, *log_probs.shape[:-1]))
  return x.astype(_out_dtype(log_probs.shape[-1]))


# ----------------------------------------------------------------------------------------------
# Mixture of independent categoricals, fit by EM (MAP with a Dirichlet(alpha + 1) prior).


def _chunked(x_NxD, chunk: int):
  """[N, D] -> ([n_chunks, chunk, D] zero-padded, mask [n_chunks, chunk])."""
  n, d = x_NxD.shape
  pad = (-n) % chunk
  x_pad = jnp.concatenate([x_NxD, jnp.zeros((pad, d), x_NxD.dtype)], axis=0)
  mask = jnp.concatenate([jnp.ones((n,), jnp.float32), jnp.zeros((pad,), jnp.float32)])
  return x_pad.reshape(-1, chunk, d), mask.reshape(-1, chunk)


def _chunk_size(n: int, k: int, d: int) -> int:
  return max(1, min(n, _CHUNK_ELEMENTS // (k * d)))


def _component_log_lik_direct(lp_KxDxL, x_NxD) -> jax.Array:
  """log p(x_n | component k) -> [N, K] by one gather [K, N, D]."""
  d = lp_KxDxL.shape[1]
  return jnp.sum(lp_KxDxL[:, jnp.arange(d)[None, :], x_NxD], axis=2).T


def _component_log_lik(lp_KxDxL, x_NxD) -> jax.Array:
  """log p(x_n | component k) -> [N, K], in chunks of examples to bound memory."""
  k, d, _ = lp_KxDxL.shape
  n = x_NxD.shape[0]
  chunk = _chunk_size(n, k, d)
  if chunk == n:
    return _component_log_lik_direct(lp_KxDxL, x_NxD)
  xs, _ = _chunked(x_NxD, chunk)
  out = jax.lax.map(lambda xc: _component_log_lik_direct(lp_KxDxL, xc), xs)   # [n_chunks, B, K]
  return out.reshape(-1, k)[:n]


def _em_pass(params, x_NxD, alpha):
  """One pass over the data: the MAP objective at params and the EM-updated params."""
  log_w = params["log_weights"]                                          # [K]
  k = log_w.shape[0]
  shape = params["log_probs"].shape
  levels = shape[-1]
  lp = params["log_probs"].reshape(k, -1, levels)                        # [K, D, L]
  n, d = x_NxD.shape
  chunk = _chunk_size(n, k, d)

  def stats(xc, mc):                                                     # [B, D], [B]
    joint = log_w[None, :] + _component_log_lik_direct(lp, xc)           # [B, K]
    ll = jax.nn.logsumexp(joint, axis=1)                                 # [B]
    resp = jnp.exp(joint - ll[:, None]) * mc[:, None]                    # [B, K]
    return jnp.sum(ll * mc), _level_counts(xc, resp, levels), jnp.sum(resp, axis=0)

  if chunk == n:
    ll_sum, counts, nk = stats(x_NxD, jnp.ones((n,), jnp.float32))
  else:
    def body(carry, inp):
      return jax.tree.map(jnp.add, carry, stats(*inp)), None
    init = (jnp.zeros((), jnp.float32), jnp.zeros((k, d, levels), jnp.float32),
            jnp.zeros((k,), jnp.float32))
    (ll_sum, counts, nk), _ = jax.lax.scan(body, init, _chunked(x_NxD, chunk))
  # alpha * log p with 0 * log 0 = 0 (alpha = 0 is plain maximum likelihood).
  prior = jnp.sum(jnp.where(alpha > 0, alpha * lp, 0.0)) + jnp.sum(jnp.where(alpha > 0, alpha * log_w, 0.0))
  objective = ll_sum + prior
  # A component with no responsibility (only possible at alpha = 0) gets weight 0 and log p = -inf.
  norm = jnp.maximum(nk + levels * alpha, jnp.finfo(jnp.float32).tiny)
  new_lp = jnp.log(counts + alpha) - jnp.log(norm)[:, None, None]
  new_w = jnp.log(nk + alpha) - jnp.log(n + k * alpha)
  return objective, {"log_weights": new_w, "log_probs": new_lp.reshape(shape)}


@jax.jit
def em_step(params: dict, x, alpha) -> tuple[jax.Array, dict]:
  """One EM iteration on images x [N, H, W, C]: (MAP objective at params, updated params)."""
  x_flat = jnp.asarray(x).astype(jnp.int32).reshape(x.shape[0], -1)
  return _em_pass(params, x_flat, jnp.asarray(alpha, jnp.float32))


@functools.partial(jax.jit, static_argnames=("iters",))
def _run_em(params, x_NxD, alpha, *, iters: int):
  """iters EM updates; objectives at all iters + 1 visited params (one E-step body in the graph)."""
  def step(carry, _):
    _, p = carry
    objective, new = _em_pass(p, x_NxD, alpha)
    return (p, new), objective
  (params, _), history = jax.lax.scan(step, (params, params), None, length=iters + 1)
  return params, history


@functools.partial(jax.jit, static_argnames=("levels", "k"))
def _init_mixture(key, x_NxD, alpha, *, levels: int, k: int):
  """Each component: half a random training image (one-hot), half the smoothed pixel marginals."""
  n, d = x_NxD.shape
  marg = _level_counts(x_NxD, jnp.ones((n, 1), jnp.float32), levels)[0] + jnp.maximum(alpha, 1e-3)
  marg = marg / jnp.sum(marg, axis=-1, keepdims=True)                    # [D, L]
  seeds = jax.random.choice(key, n, (k,), replace=n < k)
  onehot = jax.nn.one_hot(x_NxD[seeds], levels)                          # [K, D, L]
  probs = 0.5 * onehot + 0.5 * marg[None]
  return jnp.full((k,), -math.log(k), jnp.float32), jnp.log(probs)


def fit_mixture(x, levels: int, k: int, iters: int, key: jax.Array,
                alpha: float = DEFAULT_ALPHA) -> tuple[dict, jax.Array]:
  """EM for a k-component mixture of independent categoricals.

  Returns (params, history [iters + 1]) where history[t] is the MAP objective
  sum_n log p(x_n) + alpha * (sum log probs + sum log weights) before iteration t (the last entry:
  at the returned params); EM guarantees it never decreases. alpha = 0 gives plain maximum likelihood.
  """
  if k < 1 or iters < 0:
    raise ValueError(f"need k >= 1 and iters >= 0, got k={k}, iters={iters}.")
  if alpha < 0:
    raise ValueError(f"alpha must be >= 0, got {alpha}.")
  x = _as_int_image(x, levels)
  x_flat = x.reshape(x.shape[0], -1)
  log_w, lp = _init_mixture(key, x_flat, jnp.float32(alpha), levels=int(levels), k=int(k))
  params = {"log_weights": log_w, "log_probs": lp.reshape(k, *x.shape[1:], levels)}
  return _run_em(params, x_flat, jnp.float32(alpha), iters=int(iters))


@jax.jit
def mixture_log_prob(params: dict, x) -> jax.Array:
  """log p(x) in nats per example [N] under the mixture."""
  log_w = params["log_weights"]
  k, levels = log_w.shape[0], params["log_probs"].shape[-1]
  lp = params["log_probs"].reshape(k, -1, levels)                        # [K, D, L]
  x_flat = jnp.asarray(x).astype(jnp.int32).reshape(x.shape[0], -1)      # [N, D]
  return jax.nn.logsumexp(log_w[None, :] + _component_log_lik(lp, x_flat), axis=1)


@functools.partial(jax.jit, static_argnames=("n",))
def mixture_sample(params: dict, key: jax.Array, n: int) -> jax.Array:
  """n images [n, H, W, C]: a component from the weights, then its pixels independently."""
  log_w, log_probs = params["log_weights"], params["log_probs"]          # [K], [K, H, W, C, L]
  levels = log_probs.shape[-1]
  chunk = max(1, min(n, _CHUNK_ELEMENTS // math.prod(log_probs.shape[1:])))
  n_chunks = -(-n // chunk)                     # whole chunks only: no remainder body to compile

  def draw(key):
    kc, kx = jax.random.split(key)
    c = jax.random.categorical(kc, log_w, shape=(chunk,))               # [B]
    return jax.random.categorical(kx, log_probs[c])                      # [B, H, W, C]

  if n_chunks == 1:
    return draw(key)[:n].astype(_out_dtype(levels))
  x = jax.lax.map(draw, jax.random.split(key, n_chunks))                 # [n_chunks, B, H, W, C]
  return x.reshape(n_chunks * chunk, *log_probs.shape[1:-1])[:n].astype(_out_dtype(levels))


# ----------------------------------------------------------------------------------------------
# scikit-learn continuous densities on dequantized signed pixels.


def _one_blas_thread(fn):
  """Runs fn with one BLAS/OpenMP thread: sklearn's small matrices run many times faster than with
  threads contending for a busy machine (GaussianMixture: 0.3 s instead of 9 s on digits)."""
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    from threadpoolctl import threadpool_limits
    with threadpool_limits(1):
      return fn(*args, **kwargs)
  return wrapped


def _seed(key: jax.Array) -> int:
  return int(numpy_rng(key).integers(2**31 - 1))


def _dequantized_flat(key, x, levels: int) -> np.ndarray:
  x = _as_int_image(x, levels)
  return np.asarray(dequantize(key, x, levels), np.float64).reshape(x.shape[0], -1)


def _split(n: int, val_fraction: float, key: jax.Array):
  perm = numpy_rng(key).permutation(n)
  n_val = max(1, int(round(n * val_fraction)))
  return perm[n_val:], perm[:n_val]


@_one_blas_thread
def sklearn_log_prob(model, x, levels: int, key: jax.Array) -> np.ndarray:
  """Discrete log P(x) lower bound (nats) [N]: continuous log-density at one dequantized draw."""
  y = _dequantized_flat(key, x, levels)
  return dequantized_log_prob(model.score_samples(y), y.shape[1], levels)


@_one_blas_thread
def sklearn_sample(model, key: jax.Array, n: int, shape: Sequence[int], levels: int) -> np.ndarray:
  """n samples of a fitted GaussianMixture / gaussian KernelDensity, rounded to levels [n, *shape]."""
  if hasattr(model, "weights_"):                 # GaussianMixture.sample(n) -> (X, labels), no seed
    model.random_state = _seed(key)
    y, _ = model.sample(n)
    y = numpy_rng(key).permutation(np.asarray(y))   # sklearn returns samples grouped by component
  else:
    y = model.sample(n, random_state=_seed(key))
  return np.asarray(from_signed(np.asarray(y, np.float32), levels)).reshape(n, *shape).astype(
      np.uint8 if levels <= 256 else np.int32)


def _select(fit_fn, grid, x, levels, key, val_fraction):
  """Fits fit_fn(y_train, value) for each value on a validation split; refits the best on all of x."""
  k_split, k_fit, k_val = jax.random.split(key, 3)
  y = _dequantized_flat(k_fit, x, levels)
  scores = {}
  if len(grid) > 1:
    tr, va = _split(len(y), val_fraction, k_split)
    y_val = _dequantized_flat(k_val, np.asarray(x)[va], levels)
    for v in grid:
      scores[v] = float(np.mean(fit_fn(y[tr], v).score_samples(y_val)))
    best = max(scores, key=scores.get)
  else:
    best = grid[0]
  model = fit_fn(y, best)
  model.selection_ = {"best": best, "val_log_density": scores}
  return model


@_one_blas_thread
def fit_gmm(x, levels: int, key: jax.Array, n_components: Sequence[int] = (1, 2, 5, 10),
            covariance_type: str = "full", reg_covar: float = 1e-3, val_fraction: float = 0.2,
            max_iter: int = 200):
  """sklearn GaussianMixture on dequantized signed pixels; n_components picked on a validation split."""
  from sklearn.mixture import GaussianMixture
  seed = _seed(key)

  def fit(y, k):
    return GaussianMixture(k, covariance_type=covariance_type, reg_covar=reg_covar,
                           max_iter=max_iter, random_state=seed).fit(y)

  return _select(fit, tuple(n_components), x, levels, key, val_fraction)


@_one_blas_thread
def fit_kde(x, levels: int, key: jax.Array, bandwidths: Sequence[float] | None = None,
            val_fraction: float = 0.2):
  """sklearn gaussian KernelDensity on dequantized signed pixels; bandwidth picked on a validation split.

  The default grid is in units of the bin width w: 0.5w .. 4w, 13 log-spaced values.
  """
  from sklearn.neighbors import KernelDensity
  if bandwidths is None:
    bandwidths = tuple(float(b) for b in bin_width(levels) * np.geomspace(0.5, 4.0, 13))

  def fit(y, h):
    return KernelDensity(kernel="gaussian", bandwidth=h).fit(y)

  return _select(fit, tuple(bandwidths), x, levels, key, val_fraction)
