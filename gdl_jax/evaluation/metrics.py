"""The harness's metrics: bits/dim, classifier Fréchet distance, novelty ratio and exact copies.

Conventions (see DESIGN.md, "The evaluation harness"):
- Discrete data: bits/dim = -log2 p(x) / dims, with log p(x) in nats from the model.
- Continuous densities on images: pixels are mapped to [-1, 1] with `to_signed` (level k ->
  -1 + k * w, w = 2 / (levels - 1) the bin width) and dequantized with uniform noise
  u ~ U(-w/2, w/2) per dimension. Then log P(k) >= E_u[log p(y + u)] + dims * log(w), so
  bits/dim = (nll_continuous - dims * log(w)) / (dims * ln 2), an upper bound on the discrete
  bits/dim. (log w < 0: the discrete nll is larger than the continuous one.)
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from gdl_jax.data.info import to_signed

LN2 = math.log(2.0)


def bits_per_dim(nll_nats, dims: int):
  """Per-example negative log-likelihood in nats -> bits per dimension (same shape)."""
  if dims <= 0:
    raise ValueError(f"dims must be positive, got {dims}; pass the number of dimensions per example.")
  return nll_nats / (dims * LN2)


def bin_width(levels: int) -> float:
  """Width of one level in the signed space [-1, 1]: 2 / (levels - 1)."""
  if levels is None or levels < 2:
    raise ValueError(f"levels must be an integer >= 2, got {levels}; use dataset.info.levels.")
  return 2.0 / (levels - 1)


def dequantize(key: jax.Array, x, levels: int) -> jax.Array:
  """Integer levels -> to_signed(x) + U(-w/2, w/2) noise, w = one level; float32, same shape."""
  return _dequantize(key, jnp.asarray(x), levels=int(levels), w=bin_width(levels))


@functools.partial(jax.jit, static_argnames=("levels", "w"))
def _dequantize(key, x, *, levels: int, w: float):
  u = jax.random.uniform(key, x.shape, jnp.float32, -0.5 * w, 0.5 * w)
  return to_signed(x, levels) + u


def dequantized_log_prob(log_density, dims: int, levels: int):
  """Continuous log-density at dequantized signed points -> a lower bound on discrete log P(x) (nats)."""
  return log_density + dims * math.log(bin_width(levels))


def dequantized_bits_per_dim(nll_continuous_nats_in_signed_space, dims: int, levels: int):
  """Continuous nll (nats) of dequantized data in [-1, 1] -> discrete bits/dim (upper bound).

  bits/dim = (nll - dims * log(w)) / (dims * ln 2), w = 2 / (levels - 1). Examples: the uniform
  density on [-1 - w/2, 1 + w/2]^dims (covering all bins) gives exactly log2(levels); the uniform
  density on [-1, 1]^dims gives log2(levels - 1) at the bin centres.
  """
  nll = nll_continuous_nats_in_signed_space
  return bits_per_dim(nll - dims * math.log(bin_width(levels)), dims)


def numpy_rng(key: jax.Array) -> np.random.Generator:
  """A numpy Generator seeded by a jax key (typed or raw uint32), for host-side sampling."""
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  return np.random.default_rng(np.asarray(key).astype(np.uint64).ravel().tolist())


# ----------------------------------------------------------------------------------------------
# Fréchet distance between Gaussian fits (float64 numpy: tiny matrices, accuracy matters).


def gaussian_fit(feats) -> tuple[np.ndarray, np.ndarray]:
  """Features [N, F] -> (mean [F], unbiased covariance [F, F]) in float64."""
  f = np.asarray(feats, dtype=np.float64)
  if f.ndim != 2 or f.shape[0] < 2:
    raise ValueError(f"features must be [N, F] with N >= 2, got shape {f.shape}; "
                     "flatten per-example features and pass at least two examples.")
  return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
  """Symmetric PSD square root via eigh (negative round-off eigenvalues clipped to 0)."""
  vals, vecs = np.linalg.eigh(0.5 * (s + s.T))
  return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance_from_stats(mu_a, cov_a, mu_b, cov_b) -> float:
  """|mu_a - mu_b|^2 + Tr(Sa + Sb - 2 (Sa Sb)^{1/2}) of two Gaussians.

  Tr((Sa Sb)^{1/2}) = sum of sqrt(eig(Sa^{1/2} Sb Sa^{1/2})), a symmetric PSD matrix similar to
  Sa Sb, so eigh applies and no complex sqrtm round-off appears.
  """
  mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
  cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
  if mu_a.shape != mu_b.shape or cov_a.shape != cov_b.shape:
    raise ValueError(f"feature sizes differ: {mu_a.shape} vs {mu_b.shape}; use one feature_fn for both.")
  root_a = _sqrt_psd(cov_a)
  m = root_a @ cov_b @ root_a
  eig = np.linalg.eigvalsh(0.5 * (m + m.T))
  tr_sqrt = np.sum(np.sqrt(np.clip(eig, 0.0, None)))
  diff = mu_a - mu_b
  fd = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_sqrt
  return float(max(fd, 0.0))


def frechet_distance(feats_a, feats_b) -> float:
  """Fréchet distance between Gaussian fits of two feature sets [Na, F] and [Nb, F]."""
  return frechet_distance_from_stats(*gaussian_fit(feats_a), *gaussian_fit(feats_b))


# ----------------------------------------------------------------------------------------------
# Nearest neighbours and novelty.


def _flat(x) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim < 2:
    raise ValueError(f"expected a batch [N, ...], got shape {x.shape}.")
  return x.reshape(x.shape[0], -1).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("k",))
def _nn_chunk(q, ref, ref_sq, *, k: int):
  """Exact squared NN distance and index for queries q [B, D] against ref [N, D] (centred).

  The k best candidates come from the matmul expansion |r|^2 - 2 q.r; their distances are then
  recomputed directly as sum((q - r)^2), so an exact copy gives exactly 0.
  """
  approx = ref_sq[None, :] - 2.0 * jnp.matmul(q, ref.T, precision=jax.lax.Precision.HIGHEST)  # [B, N]
  _, idx = jax.lax.top_k(-approx, k)                                     # [B, k]
  cand = ref[idx]                                                        # [B, k, D]
  exact = jnp.sum(jnp.square(q[:, None, :] - cand), axis=-1)             # [B, k]
  j = jnp.argmin(exact, axis=1)                                          # [B]
  best = jnp.take_along_axis(exact, j[:, None], axis=1)[:, 0]
  best_idx = jnp.take_along_axis(idx, j[:, None], axis=1)[:, 0]
  return best, best_idx


def nearest_neighbours(queries, ref, *, batch: int = 256, candidates: int = 8):
  """Exact L2 nearest neighbour of each query row in ref: (distances [Q], indices [Q]) numpy."""
  q, r = _flat(queries), _flat(ref)
  if q.shape[1] != r.shape[1]:
    raise ValueError(f"queries have {q.shape[1]} dims but the reference set has {r.shape[1]}; "
                     "pass arrays of the same example shape.")
  centre = r.mean(axis=0, keepdims=True)          # centring shrinks the matmul's round-off
  q, r = q - centre, r - centre
  r_j = jnp.asarray(r)
  r_sq = jnp.sum(jnp.square(r_j), axis=1)
  k = min(candidates, r.shape[0])
  batch = max(1, min(batch, q.shape[0]))
  dists, idxs = [], []
  for start in range(0, q.shape[0], batch):
    chunk = q[start:start + batch]
    n = chunk.shape[0]
    if n < batch:                                  # pad: one compiled shape for every chunk
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)], axis=0)
    d2, i = _nn_chunk(jnp.asarray(chunk), r_j, r_sq, k=k)
    dists.append(np.asarray(d2)[:n])
    idxs.append(np.asarray(i)[:n])
  return np.sqrt(np.concatenate(dists)), np.concatenate(idxs)


def novelty(samples, train, test, *, batch: int = 256) -> dict:
  """Rule 2, not a copy: NN distances of samples and of held-out data to the training set.

  novelty_ratio = median NN distance (samples -> train) / median NN distance (test -> train):
  about 1 means as novel as fresh data, near 0 means copying. copy_share = fraction of samples at
  distance exactly 0 from a training example.
  """
  s_d, _ = nearest_neighbours(samples, train, batch=batch)
  t_d, _ = nearest_neighbours(test, train, batch=batch)
  s_med, t_med = float(np.median(s_d)), float(np.median(t_d))
  return dict(novelty_ratio=s_med / t_med if t_med > 0 else float("nan"),
              copy_share=float(np.mean(s_d == 0.0)),
              sample_nn_median=s_med, test_nn_median=t_med)


def _row_keys(x, as_int: bool) -> list[bytes]:
  x = np.asarray(x)
  x = x.reshape(x.shape[0], -1)
  x = x.astype(np.int64) if as_int else x.astype(np.float64) + 0.0   # + 0.0: -0.0 -> 0.0
  return [row.tobytes() for row in np.ascontiguousarray(x)]


def exact_copy_share(samples, train) -> float:
  """Fraction of samples exactly equal to some training example (hashing: any train size)."""
  samples, train = np.asarray(samples), np.asarray(train)
  if samples.shape[1:] != train.shape[1:]:
    raise ValueError(f"sample shape {samples.shape[1:]} != train shape {train.shape[1:]}.")
  as_int = all(np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_ for a in (samples, train))
  seen = set(_row_keys(train, as_int))
  keys = _row_keys(samples, as_int)
  return float(np.mean([k in seen for k in keys])) if keys else float("nan")
