"""Flow objectives: the exact negative log-likelihood, with uniform dequantization for images.

Dequantization follows the harness's convention (gdl_jax/evaluation/metrics.py): level k maps to
y = to_signed(k) in [-1, 1], bin width w = 2 / (levels - 1), and y + U(-w/2, w/2) is the continuous
data. log P(k) >= E_u[log p(y + u)] + dims * log(w), so the discrete bits/dim reported here are
(nll - dims * log(w)) / (dims * ln 2), an upper bound on the true ones.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from gdl_jax.data.info import to_signed

Array = jax.Array
LogProbFn = Callable[[Array], Array]  # x [B, ...] -> log p(x) [B] nats


def bin_width(levels: int) -> float:
  """One level's width in the signed space [-1, 1]."""
  if levels is None or int(levels) < 2:
    raise ValueError(f"levels must be an integer >= 2, got {levels}; use dataset.info.levels.")
  return 2.0 / (int(levels) - 1)


def dequantize(key: Array, images: Array, levels: int) -> Array:
  """Integer levels -> to_signed(images) + U(-w/2, w/2), float32, same shape."""
  w = bin_width(levels)
  u = jax.random.uniform(key, jnp.shape(images), jnp.float32, -0.5 * w, 0.5 * w)
  return to_signed(jnp.asarray(images), levels) + u


def discrete_log_prob(log_density: Array, dims: int, levels: int) -> Array:
  """log p(y + u) of dequantized data -> lower bound on log P(levels) in nats (same shape)."""
  return log_density + dims * math.log(bin_width(levels))


def nll_loss(log_prob_fn: LogProbFn, x: Array) -> tuple[Array, dict]:
  """Mean exact negative log-likelihood in nats of continuous data x (e.g. 2-D points)."""
  nll = -jnp.mean(log_prob_fn(x))
  return nll, {"nll": nll}


def dequantized_nll_loss(log_prob_fn: LogProbFn, images: Array, levels: int,
                         key: Array) -> tuple[Array, dict]:
  """Loss = mean continuous nll (nats) of dequantized images; metrics add the discrete bits/dim."""
  x = dequantize(key, images, levels)  # [B, H, W, C]
  dims = math.prod(images.shape[1:])
  nll = -jnp.mean(log_prob_fn(x))
  bpd = -discrete_log_prob(-nll, dims, levels) / (dims * math.log(2.0))
  return nll, {"nll": nll, "bits_per_dim": bpd}
