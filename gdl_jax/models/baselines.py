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
_CHUNK_ELEMENTS = 1 << 22       # examples x dims per chunk of mixture_sample
# The mixture pass works pixel-major on [D, B] chunks of examples: the E-step gathers K-vectors
# lp[d, x[n, d], :] from a [D, L, K] table, the M-step scatter-adds responsibility K-vectors into
# [L, K] per pixel. Measured on Fashion-MNIST (N=60000, k=30, one busy core), one em_step took 16.9 s
# (E 7.2 s, M 10.2 s) with the former [K, N, D] scalar gather / scatter-add, 0.82 s (E 0.17, M 0.53) so.
_PASS_CHUNK_ELEMENTS = 1 << 20  # examples x components per chunk ([B, K] accumulators, 4 MB)
# Pixels per E-step scan step, summed as a tree: 16 was the fastest of 4..56 on Fashion-MNIST (0.16 s
# vs 0.47 s one pixel per step), and the shorter sequential sum is more accurate in float32.
_PIXEL_GROUP = 16


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


def _as_int_image(x, levels: int, dtype=jnp.int32) -> jax.Array:
  _check_images(x, levels)
  return jnp.asarray(x).astype(dtype)


def _out_dtype(levels: int):
  return jnp.uint8 if levels <= 256 else jnp.int32


def _tree_sum(terms: list) -> jax.Array:
  """Pairwise sum of a list of equal-shaped arrays (float32 round-off grows with the depth only)."""
  while len(terms) > 1:
    terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
  return terms[0]


def _pixel_major(x_NxD, chunk: int):
  """[N, D] -> ([n_chunks, D, chunk] zero-padded examples, mask [n_chunks, chunk])."""
  n, d = x_NxD.shape
  pad = (-n) % chunk
  x_pad = jnp.concatenate([x_NxD, jnp.zeros((pad, d), x_NxD.dtype)], axis=0)
  mask = jnp.concatenate([jnp.ones((n,), jnp.float32), jnp.zeros((pad,), jnp.float32)])
  return jnp.transpose(x_pad.reshape(-1, chunk, d), (0, 2, 1)), mask.reshape(-1, chunk)


def _chunk_size(n: int, k: int) -> int:
  """Examples per chunk: [B, K] within _PASS_CHUNK_ELEMENTS, split evenly so padding stays small."""
  n_chunks = max(1, -(-n * k // _PASS_CHUNK_ELEMENTS))
  return max(1, -(-n // n_chunks))


def _chunk_log_lik(lp_DxLxK, x_DxB) -> jax.Array:
  """sum_d lp[d, x[d, b], k] -> [B, K]: a scan over groups of _PIXEL_GROUP pixels."""
  d, levels, k = lp_DxLxK.shape
  b = x_DxB.shape[1]
  gather = lambda lp_d, x_d: lp_d[x_d.astype(jnp.int32)]                 # [L, K], [B] -> [B, K]
  g = min(_PIXEL_GROUP, d)
  steps = d // g
  d0 = steps * g

  def body(acc, inp):
    lp_g, x_g = inp                                                      # [g, L, K], [g, B]
    return acc + _tree_sum([gather(lp_g[i], x_g[i]) for i in range(g)]), None

  acc, _ = jax.lax.scan(body, jnp.zeros((b, k), lp_DxLxK.dtype),
                        (lp_DxLxK[:d0].reshape(steps, g, levels, k), x_DxB[:d0].reshape(steps, g, b)))
  if d0 == d:
    return acc
  return acc + _tree_sum([gather(lp_DxLxK[i], x_DxB[i]) for i in range(d0, d)])


def _chunk_level_counts(x_DxB, w_BxK, levels: int) -> jax.Array:
  """sum_b w[b, k] [x[d, b] == l] -> [D, L, K]: per pixel, a scatter-add of B rows w[b] into [L, K]."""
  zeros = jnp.zeros((levels, w_BxK.shape[1]), jnp.float32)
  return jax.lax.map(lambda x_d: zeros.at[x_d.astype(jnp.int32)].add(w_BxK), x_DxB)


def _level_counts(x_NxD, weights_NxK, levels: int) -> jax.Array:
  """sum_n w[n, k] [x[n, d] == l] -> [D, L, K], in chunks of examples (no [N, D, L] one-hot)."""
  n, d = x_NxD.shape
  k = weights_NxK.shape[1]
  chunk = _chunk_size(n, k)
  xs, _ = _pixel_major(x_NxD, chunk)                                     # [C, D, B]
  ws, _ = _pixel_major(weights_NxK, chunk)                               # [C, K, B], padding weighs 0

  def body(acc, inp):
    x_DxB, w_KxB = inp
    return acc + _chunk_level_counts(x_DxB, w_KxB.T, levels), None

  return jax.lax.scan(body, jnp.zeros((d, levels, k), jnp.float32), (xs, ws))[0]


# ----------------------------------------------------------------------------------------------
# Independent categorical pixels.


@functools.partial(jax.jit, static_argnames=("levels",))
def _fit_independent(x, alpha, *, levels: int):
  n = x.shape[0]
  x_flat = x.reshape(n, -1)                                               # [N, D]
  counts = _level_counts(x_flat, jnp.ones((n, 1), jnp.float32), levels)[..., 0]   # [D, L]
  log_probs = jnp.log(counts + alpha) - jnp.log(n + levels * alpha)
  return {"log_probs": log_probs.reshape(*x.shape[1:], levels)}


def fit_independent(x, levels: int, alpha: float = DEFAULT_ALPHA) -> dict:
  """Maximum likelihood (add-alpha smoothed) per-pixel categoricals -> {"log_probs": [H, W, C, L]}."""
  if alpha < 0:
    raise ValueError(f"alpha must be >= 0, got {alpha}; use a small positive value such as 0.5.")
  x = _as_int_image(x, levels, _out_dtype(levels))
  return _fit_independent(x, jnp.float32(alpha), levels=int(levels))


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


def _table(log_probs, k: int) -> jax.Array:
  """[K, H, W, C, L] -> the pixel-major table [D, L, K]."""
  return jnp.transpose(log_probs.reshape(k, -1, log_probs.shape[-1]), (1, 2, 0))


def _component_log_lik(lp_DxLxK, x_NxD) -> jax.Array:
  """log p(x_n | component k) -> [N, K], in chunks of examples to bound memory."""
  n = x_NxD.shape[0]
  k = lp_DxLxK.shape[2]
  xs, _ = _pixel_major(x_NxD, _chunk_size(n, k))
  out = jax.lax.map(lambda x_DxB: _chunk_log_lik(lp_DxLxK, x_DxB), xs)   # [n_chunks, B, K]
  return out.reshape(-1, k)[:n]


def _em_pass(params, xs, masks, n: int, alpha):
  """One pass over the data (xs [C, D, B], masks [C, B] from _pixel_major, holding n examples):
  the MAP objective at params and the EM-updated params."""
  log_w = params["log_weights"]                                          # [K]
  k = log_w.shape[0]
  shape = params["log_probs"].shape
  levels = shape[-1]
  lp = _table(params["log_probs"], k)                                    # [D, L, K]
  d = lp.shape[0]

  def body(carry, inp):
    x_DxB, mask = inp                                                    # [D, B], [B]
    joint = log_w[None, :] + _chunk_log_lik(lp, x_DxB)                   # [B, K]
    ll = jax.nn.logsumexp(joint, axis=1)                                 # [B]
    resp = jnp.exp(joint - ll[:, None]) * mask[:, None]                  # [B, K]
    ll_sum, counts, nk = carry
    return (ll_sum + jnp.sum(ll * mask), counts + _chunk_level_counts(x_DxB, resp, levels),
            nk + jnp.sum(resp, axis=0)), None

  init = (jnp.zeros((), jnp.float32), jnp.zeros((d, levels, k), jnp.float32),
          jnp.zeros((k,), jnp.float32))
  (ll_sum, counts, nk), _ = jax.lax.scan(body, init, (xs, masks))
  # alpha * log p with 0 * log 0 = 0 (alpha = 0 is plain maximum likelihood).
  prior = jnp.sum(jnp.where(alpha > 0, alpha * lp, 0.0)) + jnp.sum(jnp.where(alpha > 0, alpha * log_w, 0.0))
  objective = ll_sum + prior
  # A component with no responsibility (only possible at alpha = 0) gets weight 0 and log p = -inf.
  norm = jnp.maximum(nk + levels * alpha, jnp.finfo(jnp.float32).tiny)
  new_lp = jnp.log(counts + alpha) - jnp.log(norm)                       # [D, L, K]
  new_w = jnp.log(nk + alpha) - jnp.log(n + k * alpha)
  return objective, {"log_weights": new_w, "log_probs": jnp.transpose(new_lp, (2, 0, 1)).reshape(shape)}


def _flat_levels(x, levels: int) -> jax.Array:
  """Images -> [N, D] in the narrowest integer dtype holding the levels (uint8 for <= 256)."""
  return jnp.asarray(x).astype(_out_dtype(levels)).reshape(x.shape[0], -1)


@jax.jit
def em_step(params: dict, x, alpha) -> tuple[jax.Array, dict]:
  """One EM iteration on images x [N, H, W, C]: (MAP objective at params, updated params)."""
  x_flat = _flat_levels(x, params["log_probs"].shape[-1])                # [N, D]
  n = x_flat.shape[0]
  xs, masks = _pixel_major(x_flat, _chunk_size(n, params["log_weights"].shape[0]))
  return _em_pass(params, xs, masks, n, jnp.asarray(alpha, jnp.float32))


@functools.partial(jax.jit, static_argnames=("iters",))
def _run_em(params, x_NxD, alpha, *, iters: int):
  """iters EM updates; objectives at all iters + 1 visited params (one E-step body in the graph)."""
  n = x_NxD.shape[0]
  xs, masks = _pixel_major(x_NxD, _chunk_size(n, params["log_weights"].shape[0]))   # once per fit

  def step(carry, _):
    _, p = carry
    objective, new = _em_pass(p, xs, masks, n, alpha)
    return (p, new), objective
  (params, _), history = jax.lax.scan(step, (params, params), None, length=iters + 1)
  return params, history


@functools.partial(jax.jit, static_argnames=("levels", "k"))
def _init_mixture(key, x_NxD, alpha, *, levels: int, k: int):
  """Each component: half a random training image (one-hot), half the smoothed pixel marginals."""
  n, d = x_NxD.shape
  marg = _level_counts(x_NxD, jnp.ones((n, 1), jnp.float32), levels)[..., 0] + jnp.maximum(alpha, 1e-3)
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
  x = _as_int_image(x, levels, _out_dtype(levels))
  x_flat = x.reshape(x.shape[0], -1)                                     # [N, D]
  log_w, lp = _init_mixture(key, x_flat, jnp.float32(alpha), levels=int(levels), k=int(k))
  params = {"log_weights": log_w, "log_probs": lp.reshape(k, *x.shape[1:], levels)}
  return _run_em(params, x_flat, jnp.float32(alpha), iters=int(iters))


@jax.jit
def mixture_log_prob(params: dict, x) -> jax.Array:
  """log p(x) in nats per example [N] under the mixture."""
  log_w = params["log_weights"]
  k, levels = log_w.shape[0], params["log_probs"].shape[-1]
  lp = _table(params["log_probs"], k)                                    # [D, L, K]
  x_flat = _flat_levels(x, levels)                                       # [N, D]
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


def _select(fit_fn, grid, x, levels, key, val_fraction, *, grow: float | None = None,
            limits: tuple[float, float] = (0.0, np.inf), desc: str = "fit"):
  """Fits fit_fn(y_train, value) for each value on a validation split; refits the best on all of x.

  grow: when the best value sits at an end of the grid, keep stepping past that end by this factor
  while the validation score improves (and the value stays inside limits), so a grid sized for one
  dataset still finds the optimum of another. Progress (gdl_jax.progress): one bar of the fits, `desc`.
  """
  from gdl_jax import progress
  k_split, k_fit, k_val = jax.random.split(key, 3)
  y = _dequantized_flat(k_fit, x, levels)
  scores = {}
  bar = progress.bar(desc=desc, total=len(grid) + 1 if len(grid) > 1 else 1, unit="fit")

  def score(v):
    bar.set_postfix_str(f"{v:.3g} on validation")
    out = float(np.mean(fit_fn(y[tr], v).score_samples(y_val)))
    bar.update(1)
    return out

  if len(grid) > 1:
    tr, va = _split(len(y), val_fraction, k_split)
    y_val = _dequantized_flat(k_val, np.asarray(x)[va], levels)
    for v in grid:
      scores[v] = score(v)
    best = max(scores, key=scores.get)
    if grow:
      for edge, step in ((max(grid), grow), (min(grid), 1.0 / grow)):
        while best == edge and limits[0] <= edge * step <= limits[1]:
          edge = edge * step
          bar.total += 1
          scores[edge] = score(edge)
          best = max(scores, key=scores.get)
  else:
    best = grid[0]
  bar.set_postfix_str(f"best {best:.3g}, refit on all {len(y)}")
  model = fit_fn(y, best)
  bar.update(1)
  bar.close()
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

  return _select(fit, tuple(n_components), x, levels, key, val_fraction,
                 desc="GaussianMixture components")


@_one_blas_thread
def fit_kde(x, levels: int, key: jax.Array, bandwidths: Sequence[float] | None = None,
            val_fraction: float = 0.2):
  """sklearn gaussian KernelDensity on dequantized signed pixels; bandwidth picked on a validation split.

  The default grid is in units of the bin width w: 0.5w .. 4w, 13 log-spaced values, extended past
  either end in the same steps while the validation score improves (up to 2 in signed units, the
  whole pixel range): Fashion-MNIST (256 levels, w = 2/255) peaks at h = 0.25 = 32w, digits (17
  levels) at 0.21 = 1.8w.
  """
  from sklearn.neighbors import KernelDensity
  default = bandwidths is None
  if default:
    bandwidths = tuple(float(b) for b in bin_width(levels) * np.geomspace(0.5, 4.0, 13))

  def fit(y, h):
    return KernelDensity(kernel="gaussian", bandwidth=h).fit(y)

  grow = float(np.geomspace(0.5, 4.0, 13)[1] / 0.5) if default else None
  return _select(fit, tuple(bandwidths), x, levels, key, val_fraction, grow=grow, limits=(1e-6, 2.0),
                 desc="KernelDensity bandwidth search")
