"""Exact likelihoods of discrete data for autoregressive models (nats), and the loss built on them.

Pixels: a categorical over the dataset's levels, or a discretized mixture of logistics (PixelCNN++,
Salimans et al. 2017) whose bins are the levels mapped to [-1, 1]; both give per-level log-probs
[..., levels] that sum to one, so log p(x) is exact and bits/dim = -log p(x) / (dims * ln 2).
Sequences: the model's input is the target shifted right behind a begin-of-sequence token, so
p(x) = prod_t p(x_t | x_<t) covers every token.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

LN2 = math.log(2.0)


def shift_right(tokens, bos: int):
  """[B, T] targets -> [B, T] inputs: bos, x_0, ..., x_{T-2}."""
  first = jnp.full(tokens.shape[:1] + (1,), bos, tokens.dtype)
  return jnp.concatenate([first, tokens[:, :-1]], axis=1)


def log_prob_of(log_probs, x):
  """Per-example log p(x) [B]: log_probs [B, ..., V] normalized over V, x int [B, ...]."""
  lp = jnp.take_along_axis(log_probs, x[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return lp.reshape(lp.shape[0], -1).sum(axis=1)


def sequence_log_prob(logits, targets):
  """Per-sequence log p [B] from unnormalized logits [B, T, V] and targets [B, T]."""
  return log_prob_of(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), targets)


def _log_sigmoid_diff(a, b):
  """log(sigmoid(a) - sigmoid(b)) for a > b, accurate in both tails (and NaN-free gradients)."""
  tiny = -1e-20
  lower = jax.nn.log_sigmoid(a) + jnp.log(-jnp.expm1(
      jnp.minimum(jax.nn.log_sigmoid(b) - jax.nn.log_sigmoid(a), tiny)))
  upper = jax.nn.log_sigmoid(-b) + jnp.log(-jnp.expm1(
      jnp.minimum(jax.nn.log_sigmoid(-a) - jax.nn.log_sigmoid(-b), tiny)))
  return jnp.where(a + b > 0, upper, lower)


def discretized_logistic_log_probs(means, log_scales, levels: int):
  """Per-level log-probs [..., levels] of a logistic(mean, exp(log_scale)) binned into levels.

  Level k is the bin [c_k - w, c_k + w] with c_k = -1 + 2k/(levels-1), w = 1/(levels-1); the two
  edge bins extend to -inf and +inf, so the levels' probabilities sum to exactly one.
  """
  centers = jnp.linspace(-1.0, 1.0, levels)  # [L]
  half = 1.0 / (levels - 1)
  inv_s = jnp.exp(-jnp.maximum(log_scales, -7.0))[..., None]
  plus = (centers + half - means[..., None]) * inv_s  # [..., L]
  minus = (centers - half - means[..., None]) * inv_s
  mid = _log_sigmoid_diff(plus, minus)
  k = jnp.arange(levels)
  return jnp.where(k == 0, jax.nn.log_sigmoid(plus),
                   jnp.where(k == levels - 1, jax.nn.log_sigmoid(-minus), mid))


def discretized_mix_logistic_log_probs(logit_weights, means, log_scales, levels: int):
  """Mixture of K discretized logistics: inputs [..., K] -> per-level log-probs [..., levels]."""
  comp = discretized_logistic_log_probs(means, log_scales, levels)  # [..., K, L]
  w = jax.nn.log_softmax(logit_weights.astype(jnp.float32), axis=-1)[..., None]
  return jax.nn.logsumexp(comp + w, axis=-2)


def bits_per_dim(nll_nats, dims: int):
  """Nats per example -> bits per dimension."""
  return nll_nats / (dims * LN2)


# log_prob_fn(params, batch, key, train) -> [B] nats of the discrete data
LogProbFn = Callable[[Any, dict, jax.Array, bool], jax.Array]


def make_nll_loss(log_prob_fn: LogProbFn, dims: int):
  """loss_fn(params, extra, batch, key) for make_train_step: mean nats per dimension.

  Metrics: bits_per_dim (of the training batch, with dropout if the model uses it).
  """

  def loss_fn(params, extra, batch, key):
    lp = log_prob_fn(params, batch, key, True)  # [B]
    nll = -jnp.mean(lp)
    return nll / dims, (extra, {"bits_per_dim": bits_per_dim(nll, dims)})

  return loss_fn
