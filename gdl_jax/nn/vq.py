"""Vector quantisation (VQ-VAE, van den Oord et al. 2017) as pure functions plus one Linen module.

    vq = VectorQuantizer(num_codes=K, code_dim=D)              # EMA codebook (the default)
    variables = vq.init(key, z)                                 # {"vq": codebook statistics}
    out = vq.apply(variables, z)                                # quantise, no update
    out, upd = vq.apply(variables, z, update=True, rngs={"vq": key}, mutable=["vq"])

z: encoder outputs [..., D]. Every vector goes to its nearest code by squared distance; the
output is z + stop_gradient(e - z) (the straight-through estimator: forward = the code, backward =
the identity to z). Losses (means over all elements): codebook ||sg(z) - e||^2 (trains the
codebook when it is a parameter, `ema=False`) and commitment beta * ||z - sg(e)||^2 (trains the
encoder). With `ema=True` (Sonnet's / Haiku's VectorQuantizerEMA) the codebook is no parameter: it
lives in the non-param collection "vq" as zero-debiased exponential moving averages of each code's
cluster size and of the sum of its vectors (decay 0.99), with Laplace-smoothed cluster sizes, and
`update=True` writes the next statistics. Dead codes (unused for `dead_after` steps, or with a
debiased EMA cluster size below `dead_threshold`) are re-initialised to random encoder outputs of
the current batch, drawn with the "vq" rng (deterministic given the step key).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

VQ_COLLECTION = "vq"


class VQOutput(NamedTuple):
  """One quantiser pass."""
  quantized: jax.Array   # [..., D] straight-through: the code forward, identity gradient to z
  indices: jax.Array     # [...] int32, the nearest code of each vector
  loss: jax.Array        # scalar: beta * commitment (+ codebook loss when the codebook is a param)
  metrics: dict          # codebook_loss, commitment_loss, perplexity, usage (+ restarted on update)


def squared_distances(z: jax.Array, codebook: jax.Array) -> jax.Array:
  """||z_n - e_k||^2 for z [N, D], codebook [K, D] -> [N, K] (expanded: |z|^2 - 2 z.e + |e|^2)."""
  z = z.astype(jnp.float32)
  codebook = codebook.astype(jnp.float32)
  return (jnp.sum(z ** 2, axis=1, keepdims=True) - 2.0 * z @ codebook.T
          + jnp.sum(codebook ** 2, axis=1)[None, :])


def nearest_codes(z: jax.Array, codebook: jax.Array) -> jax.Array:
  """Index of the nearest code (squared distance; ties -> the lowest index): [..., D] -> [...] int32."""
  flat = z.reshape(-1, z.shape[-1])
  idx = jnp.argmin(squared_distances(flat, codebook), axis=1).astype(jnp.int32)
  return idx.reshape(z.shape[:-1])


def straight_through(z: jax.Array, quantized: jax.Array) -> jax.Array:
  """The value of `quantized` with the gradient of `z`: z + stop_gradient(quantized - z)."""
  return z + jax.lax.stop_gradient(quantized - z)


def vq_losses(z: jax.Array, quantized: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(codebook loss mean((sg(z) - e)^2), commitment loss mean((z - sg(e))^2)); e = quantized.

  The codebook loss moves only the codes, the commitment loss only the encoder output.
  """
  sg = jax.lax.stop_gradient
  codebook = jnp.mean((sg(z) - quantized) ** 2)
  commitment = jnp.mean((z - sg(quantized)) ** 2)
  return codebook, commitment


def codebook_usage(indices: jax.Array, num_codes: int) -> tuple[jax.Array, jax.Array]:
  """(fraction of the codes used at least once, perplexity exp(H(p))) of the code histogram p."""
  counts = jnp.zeros((num_codes,), jnp.float32).at[indices.reshape(-1)].add(1.0)  # [K]
  p = counts / jnp.maximum(jnp.sum(counts), 1.0)
  usage = jnp.mean((counts > 0).astype(jnp.float32))
  perplexity = jnp.exp(jnp.sum(jax.scipy.special.entr(p)))
  return usage, perplexity


def init_codebook_state(key: jax.Array, num_codes: int, code_dim: int) -> dict:
  """EMA statistics at step 0: codes uniform in +-sqrt(3 / D) (Haiku's VarianceScaling uniform),
  zero EMA accumulators (debiased by 1 - decay^count), count 0, every code's age 0."""
  limit = math.sqrt(3.0 / code_dim)
  return dict(
      embedding=jax.random.uniform(key, (num_codes, code_dim), jnp.float32, -limit, limit),
      cluster_size=jnp.zeros((num_codes,), jnp.float32),     # biased EMA of per-code counts
      embed_sum=jnp.zeros((num_codes, code_dim), jnp.float32),  # biased EMA of per-code sums of z
      count=jnp.zeros((), jnp.int32),                        # EMA updates so far
      age=jnp.zeros((num_codes,), jnp.int32))                # updates since each code was last used


def debiased_cluster_size(state: dict, decay: float) -> jax.Array:
  """The EMA cluster sizes with Adam-style zero-debiasing (0 before the first update) -> [K]."""
  bias = 1.0 - jnp.power(decay, state["count"].astype(jnp.float32))
  return jnp.where(state["count"] > 0, state["cluster_size"] / jnp.maximum(bias, 1e-12), 0.0)


def ema_update(state: dict, z: jax.Array, indices: jax.Array, *, decay: float = 0.99,
               eps: float = 1e-5) -> dict:
  """One EMA codebook step (van den Oord et al. App. A.1; Sonnet/Haiku VectorQuantizerEMA).

  z [N, D] encoder outputs, indices [N] their codes. With t = count + 1:
    N_k = EMA(n_k), m_k = EMA(sum of the z assigned to k), both zero-debiased by 1 - decay^t;
    Laplace smoothing N_k' = (N_k + eps) / (n + K eps) * n with n = sum_k N_k;
    e_k = m_k / N_k'.   Ages: 0 for codes used in this batch, +1 for the others.
  """
  num_codes = state["embedding"].shape[0]
  z = z.astype(jnp.float32).reshape(-1, state["embedding"].shape[1])
  onehot = jax.nn.one_hot(indices.reshape(-1), num_codes, dtype=jnp.float32)      # [N, K]
  counts = jnp.sum(onehot, axis=0)                                               # [K]
  sums = onehot.T @ z                                                            # [K, D]
  count = state["count"] + 1
  cluster_size = decay * state["cluster_size"] + (1.0 - decay) * counts
  embed_sum = decay * state["embed_sum"] + (1.0 - decay) * sums
  bias = 1.0 - jnp.power(decay, count.astype(jnp.float32))
  size, total = cluster_size / bias, embed_sum / bias
  n = jnp.sum(size)
  smoothed = (size + eps) / (n + num_codes * eps) * n
  return dict(embedding=total / smoothed[:, None], cluster_size=cluster_size, embed_sum=embed_sum,
              count=count, age=jnp.where(counts > 0, 0, state["age"] + 1))


def dead_codes(state: dict, *, decay: float, dead_after: int = 0,
               dead_threshold: float = 0.0) -> jax.Array:
  """[K] bool: unused for >= dead_after updates (0: off) or debiased EMA size < dead_threshold (0: off)."""
  dead = jnp.zeros(state["age"].shape, bool)
  if dead_after > 0:
    dead = dead | (state["age"] >= dead_after)
  if dead_threshold > 0:
    dead = dead | (debiased_cluster_size(state, decay) < dead_threshold)
  return dead


def restart_codes(state: dict, z: jax.Array, dead: jax.Array, key: jax.Array, *,
                  decay: float) -> dict:
  """Re-initialises the codes where `dead` [K] to encoder outputs z [N, D] drawn with `key`.

  Each dead code k becomes z[j_k] (j = a draw of K rows, without replacement when N >= K), with a
  debiased EMA size of 1 and sum z[j_k] (so the next EMA step starts from it) and age 0. Live
  codes and their statistics are returned unchanged.
  """
  num_codes, code_dim = state["embedding"].shape
  z = z.astype(jnp.float32).reshape(-1, code_dim)
  n = z.shape[0]
  rows = jax.random.choice(key, n, (num_codes,), replace=n < num_codes)
  fresh = z[rows]                                                                # [K, D]
  bias = 1.0 - jnp.power(decay, jnp.maximum(state["count"], 1).astype(jnp.float32))
  d = dead[:, None]
  return dict(embedding=jnp.where(d, fresh, state["embedding"]),
              cluster_size=jnp.where(dead, bias, state["cluster_size"]),
              embed_sum=jnp.where(d, fresh * bias, state["embed_sum"]),
              count=state["count"], age=jnp.where(dead, 0, state["age"]))


class VectorQuantizer(nn.Module):
  """Nearest-code quantiser of the last axis; see the module docstring for the state and losses."""

  num_codes: int
  code_dim: int
  beta: float = 0.25
  ema: bool = True
  decay: float = 0.99
  eps: float = 1e-5
  dead_after: int = 0
  dead_threshold: float = 0.0

  def setup(self):
    if self.num_codes < 2 or self.code_dim < 1:
      raise ValueError(f"VectorQuantizer needs num_codes >= 2 and code_dim >= 1; got "
                       f"{self.num_codes} and {self.code_dim}.")
    if not 0.0 < self.decay < 1.0:
      raise ValueError(f"model.decay={self.decay} must be in (0, 1) (0.99 is the usual EMA decay).")
    if not self.ema and (self.dead_after > 0 or self.dead_threshold > 0):
      raise ValueError("dead-code restarts rewrite the EMA codebook: with model.ema=False set "
                       "model.dead_after=0 and model.dead_threshold=0.0.")
    if self.ema:
      init = lambda: init_codebook_state(self.make_rng("params"), self.num_codes, self.code_dim)
      self.stats = self.variable(VQ_COLLECTION, "stats", init)
    else:
      limit = math.sqrt(3.0 / self.code_dim)
      self.codebook_param = self.param(
          "codebook", lambda k, s: jax.random.uniform(k, s, jnp.float32, -limit, limit),
          (self.num_codes, self.code_dim))

  def codebook(self) -> jax.Array:
    """The current codes [K, D]."""
    return self.stats.value["embedding"] if self.ema else self.codebook_param

  def lookup(self, indices: jax.Array) -> jax.Array:
    """Code vectors of integer indices [...] -> [..., D]."""
    return jnp.take(self.codebook(), indices, axis=0)

  def __call__(self, z: jax.Array, *, update: bool = False) -> VQOutput:
    """Quantises z [..., D]; update=True (EMA only) also writes the next codebook statistics."""
    if z.shape[-1] != self.code_dim:
      raise ValueError(f"VectorQuantizer(code_dim={self.code_dim}) got vectors of size "
                       f"{z.shape[-1]} (shape {z.shape}); the encoder's last axis must be code_dim.")
    codebook = self.codebook()
    flat = z.reshape(-1, self.code_dim).astype(jnp.float32)                      # [N, D]
    idx = nearest_codes(flat, codebook)                                          # [N]
    q = jnp.take(codebook, idx, axis=0)                                          # [N, D]
    codebook_loss, commitment = vq_losses(flat, q)
    loss = self.beta * commitment + (0.0 if self.ema else codebook_loss)
    usage, perplexity = codebook_usage(idx, self.num_codes)
    metrics = dict(codebook_loss=codebook_loss, commitment_loss=commitment, perplexity=perplexity,
                   usage=usage)
    if update and self.ema and not self.is_initializing():
      new = ema_update(self.stats.value, jax.lax.stop_gradient(flat), idx, decay=self.decay,
                       eps=self.eps)
      dead = dead_codes(new, decay=self.decay, dead_after=self.dead_after,
                        dead_threshold=self.dead_threshold)
      if self.dead_after > 0 or self.dead_threshold > 0:
        new = restart_codes(new, jax.lax.stop_gradient(flat), dead, self.make_rng(VQ_COLLECTION),
                            decay=self.decay)
      metrics["restarted"] = jnp.sum(dead.astype(jnp.float32))
      self.stats.value = new
    quantized = straight_through(flat, q).reshape(z.shape).astype(z.dtype)
    return VQOutput(quantized, idx.reshape(z.shape[:-1]), loss, metrics)
