"""Diffusion: noise schedules, the forward process, eps-/v-prediction losses and the discrete-time
variational bound (DDPM, Ho et al. 2020; improved DDPM, Nichol & Dhariwal 2021; v-prediction,
Salimans & Ho 2022; the book's Ch. 8).

Notation. Data x0 in [-1, 1]; discrete steps i = 0..T with alpha_bar[0] = 1 (the data itself) and
x_i = sqrt(alpha_bar[i]) x0 + sqrt(1 - alpha_bar[i]) eps. Writing a = sqrt(alpha_bar),
s = sqrt(1 - alpha_bar): v = a eps - s x0, so x0 = a x_i - s v and eps = s x_i + a v.
The network sees t = i / T in [0, 1].

Variational bound (bits/dim). For the T-step Markov chain with reverse variances
sigma_i^2 = beta_tilde_i (the posterior variance, "fixed small") and sigma_1^2 = beta_tilde_2,

  -log p(x0) <= KL(q(x_T|x0) || N(0, I))                                   (prior)
              + sum_{i=2..T} KL(q(x_{i-1}|x_i, x0) || p(x_{i-1}|x_i))      (diffusion)
              - E log p(x0 | x_1)                                           (decoder)

where p(x0|x_1) is a Gaussian N(x0_hat(x_1), sigma_1^2) integrated over each data level's bin
(width 2/(levels-1) on [-1, 1], the outer bins extended to +-inf), so the bound is on the
probability of the discrete data and bits/dim = bound / (D ln 2) needs no dequantization term.
With sigma_i^2 = beta_tilde_i each diffusion KL is c1_i^2 |x0 - x0_hat|^2 / (2 beta_tilde_i),
c1_i = sqrt(alpha_bar[i-1]) beta_i / (1 - alpha_bar[i]). The sum over i is computed exactly
(vlb_steps = T) or estimated without bias by one step per stratum (vlb_steps < T).

How tight it is: with fixed reverse variances the first steps dominate. sigma_i is ~0.005 there
(cosine, T=1000), so any x0_hat error well below a data level's width still costs nats, and a
network trained with the simple (unweighted eps/v) loss gets a loose bound (Nichol & Dhariwal
tighten it with learned variances). The K-step sub-chain on a coarser grid (`subchain`) is a
model of its own with the same network, larger first-step variances and often a tighter bound;
its ancestral sampler is DDIM with eta=1 and K steps.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

SCHEDULES = ("linear", "cosine", "offset_cosine")
PREDICTIONS = ("eps", "v", "x0")

# denoise(x_t [B,H,W,C], t [B] in [0,1]) -> network output (eps or v) [B,H,W,C]
DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class NoiseSchedule:
  """alpha_bar as a function of continuous t in [0, 1] (`alpha_bar`) or of discrete steps (`table`).

  linear: the DDPM betas linspace(beta_start, beta_end) at T=1000 (rescaled by 1000/T for other T);
    continuous form alpha_bar(t) = exp(-1000 (beta_start t + (beta_end - beta_start) t^2 / 2)).
  cosine: alpha_bar(t) = f(t) / f(0), f(t) = cos((t + s) / (1 + s) pi/2)^2 (Nichol & Dhariwal);
    discrete betas are clipped at max_beta so alpha_bar[T] > 0.
  offset_cosine: the book's 2nd-edition schedule, signal rate cos(angle) with the angle linear in t
    between acos(max_signal_rate) and acos(min_signal_rate); alpha_bar(0) = max_signal_rate^2.
  """

  kind: str = "cosine"
  beta_start: float = 1e-4
  beta_end: float = 0.02
  cosine_s: float = 0.008
  max_beta: float = 0.999
  min_signal_rate: float = 0.02
  max_signal_rate: float = 0.95

  def __post_init__(self):
    if self.kind not in SCHEDULES:
      raise ValueError(f"noise schedule {self.kind!r} is unknown; use one of {SCHEDULES}.")
    if not 0.0 < self.min_signal_rate < self.max_signal_rate <= 1.0:
      raise ValueError("offset_cosine needs 0 < min_signal_rate < max_signal_rate <= 1.")

  def alpha_bar(self, t):
    """Continuous-time alpha_bar(t), t in [0, 1] (numpy or jax arrays)."""
    xp = np if isinstance(t, (np.ndarray, float, int)) else jnp
    if self.kind == "linear":
      b0, b1 = 1000.0 * self.beta_start, 1000.0 * self.beta_end
      return xp.exp(-(b0 * t + 0.5 * (b1 - b0) * t * t))
    if self.kind == "cosine":
      s = self.cosine_s
      f = lambda u: xp.cos((u + s) / (1.0 + s) * (math.pi / 2.0)) ** 2
      return f(t) / f(0.0)
    a0, a1 = math.acos(self.max_signal_rate), math.acos(self.min_signal_rate)
    return xp.cos(a0 + t * (a1 - a0)) ** 2

  def table(self, num_steps: int) -> np.ndarray:
    """Discrete alpha_bar[0..T] (float64 numpy, [T+1]); alpha_bar[0] = 1 is the data."""
    if num_steps < 2:
      raise ValueError(f"num_timesteps={num_steps} must be at least 2.")
    i = np.arange(1, num_steps + 1, dtype=np.float64)
    if self.kind == "linear":
      scale = 1000.0 / num_steps
      betas = np.linspace(scale * self.beta_start, scale * self.beta_end, num_steps)
      ab = np.cumprod(1.0 - betas)
    elif self.kind == "cosine":
      ab_c = self.alpha_bar(np.concatenate([[0.0], i / num_steps]))
      betas = np.minimum(1.0 - ab_c[1:] / ab_c[:-1], self.max_beta)
      ab = np.cumprod(1.0 - betas)
    else:
      ab = self.alpha_bar(i / num_steps)
    return np.concatenate([[1.0], ab])


@dataclasses.dataclass(frozen=True)
class Diffusion:
  """The discrete forward process: a schedule, its number of steps T, the network's target."""

  schedule: NoiseSchedule = NoiseSchedule()
  num_timesteps: int = 1000
  prediction: str = "eps"

  def __post_init__(self):
    if self.prediction not in PREDICTIONS:
      raise ValueError(f"prediction {self.prediction!r} is unknown; use one of {PREDICTIONS}.")

  def alpha_bars(self) -> jax.Array:
    """[T+1] float32 alpha_bar table (index 0 = data)."""
    return jnp.asarray(self.schedule.table(self.num_timesteps), jnp.float32)


def step_grid(num_timesteps: int, steps: int) -> np.ndarray:
  """steps+1 increasing step indices from 0 to T, evenly spaced (rounded): the sub-chain that
  DDIM with `steps` steps walks (backwards) and whose variational bound `subchain` describes."""
  if not 1 <= steps <= num_timesteps:
    raise ValueError(f"steps={steps} must be in 1..num_timesteps={num_timesteps}.")
  return np.linspace(0, num_timesteps, steps + 1).round().astype(np.int32)


def subchain(alpha_bars: jax.Array, steps: int):
  """(alpha_bars[grid] [K+1], network times grid/T [K+1]) of the K-step chain on `step_grid`.

  The K-step DDPM on a sub-grid is a model of its own with the same network; its ancestral
  sampler is DDIM with eta=1 and the same number of steps.
  """
  num_steps = alpha_bars.shape[0] - 1
  grid = step_grid(num_steps, steps)
  return alpha_bars[jnp.asarray(grid)], jnp.asarray(grid, jnp.float32) / num_steps


def _bcast(v: jax.Array, x: jax.Array) -> jax.Array:
  """[B] -> [B, 1, ..., 1] to broadcast against x."""
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def q_sample(x0: jax.Array, alpha_bar: jax.Array, eps: jax.Array) -> jax.Array:
  """x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps; alpha_bar [B]."""
  ab = _bcast(alpha_bar, x0)
  return jnp.sqrt(ab) * x0 + jnp.sqrt(1.0 - ab) * eps


def v_target(x0: jax.Array, eps: jax.Array, alpha_bar: jax.Array) -> jax.Array:
  """v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0."""
  ab = _bcast(alpha_bar, x0)
  return jnp.sqrt(ab) * eps - jnp.sqrt(1.0 - ab) * x0


def x0_eps_from_v(x_t: jax.Array, v: jax.Array, alpha_bar: jax.Array):
  """(x0, eps) = (a x_t - s v, s x_t + a v): no division, well-conditioned at any noise level."""
  ab = _bcast(alpha_bar, x_t)
  a, s = jnp.sqrt(ab), jnp.sqrt(1.0 - ab)
  return a * x_t - s * v, s * x_t + a * v


def x0_from_eps(x_t: jax.Array, eps: jax.Array, alpha_bar: jax.Array) -> jax.Array:
  """x0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)."""
  ab = _bcast(alpha_bar, x_t)
  return (x_t - jnp.sqrt(1.0 - ab) * eps) / jnp.sqrt(ab)


def eps_from_x0(x_t: jax.Array, x0: jax.Array, alpha_bar: jax.Array) -> jax.Array:
  """eps = (x_t - sqrt(alpha_bar) x0) / sqrt(1 - alpha_bar)."""
  ab = _bcast(alpha_bar, x_t)
  return (x_t - jnp.sqrt(ab) * x0) / jnp.sqrt(1.0 - ab)


def predict_x0_eps(out: jax.Array, x_t: jax.Array, alpha_bar: jax.Array, prediction: str):
  """The network output (eps, v or x0) at x_t -> (x0_hat, eps_hat)."""
  if prediction == "eps":
    return x0_from_eps(x_t, out, alpha_bar), out
  if prediction == "v":
    return x0_eps_from_v(x_t, out, alpha_bar)
  if prediction == "x0":  # DALL-E 2's prior predicts the clean embedding itself
    return out, eps_from_x0(x_t, out, alpha_bar)
  raise ValueError(f"prediction {prediction!r} is unknown; use one of {PREDICTIONS}.")


def diffusion_loss(denoise: DenoiseFn, x0: jax.Array, key: jax.Array, alpha_bars: jax.Array,
                   prediction: str = "eps", *, clip_x0: bool = True):
  """The simple loss: E_{i ~ U{1..T}, eps} |target - net(x_i, i/T)|^2 (mean over pixels).

  target = eps (eps-prediction), v (v-prediction) or x0 (x0-prediction). Returns (loss scalar,
  metrics) where metrics has `mse_x0`, the implied x0 error (comparable between
  parameterisations; x0_hat clipped to [-1, 1] unless clip_x0=False, for data that is not images).
  """
  num_steps = alpha_bars.shape[0] - 1
  k_t, k_eps = jax.random.split(key)
  i = jax.random.randint(k_t, (x0.shape[0],), 1, num_steps + 1)  # [B]
  ab = alpha_bars[i]
  eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
  x_t = q_sample(x0, ab, eps)
  out = denoise(x_t, i.astype(jnp.float32) / num_steps)
  target = {"eps": eps, "x0": x0}.get(prediction)
  target = v_target(x0, eps, ab) if target is None else target
  loss = jnp.mean(jnp.square(out.astype(jnp.float32) - target))
  x0_hat, _ = predict_x0_eps(out, x_t, ab, prediction)
  x0_hat = jnp.clip(x0_hat, -1.0, 1.0) if clip_x0 else x0_hat
  return loss, {"mse_x0": jnp.mean(jnp.square(x0_hat - x0))}


def posterior_coefficients(alpha_bars: jax.Array):
  """[T+1] tables (c1, c2, beta_tilde): q(x_{i-1}|x_i, x0) = N(c1 x0 + c2 x_i, beta_tilde); index 0 unused."""
  ab_prev = jnp.concatenate([jnp.ones((1,), alpha_bars.dtype), alpha_bars[:-1]])
  alphas = alpha_bars / ab_prev
  betas = 1.0 - alphas
  c1 = jnp.sqrt(ab_prev) * betas / (1.0 - alpha_bars)
  c2 = jnp.sqrt(alphas) * (1.0 - ab_prev) / (1.0 - alpha_bars)
  beta_tilde = betas * (1.0 - ab_prev) / (1.0 - alpha_bars)
  nan_free = lambda v: v.at[0].set(0.0)  # index 0 is the data: 0/0 there
  return nan_free(c1), nan_free(c2), nan_free(beta_tilde)


def reverse_variances(alpha_bars: jax.Array) -> jax.Array:
  """sigma_i^2 of p(x_{i-1}|x_i): beta_tilde_i, with sigma_1^2 = beta_tilde_2 (beta_tilde_1 = 0)."""
  _, _, bt = posterior_coefficients(alpha_bars)
  return bt.at[1].set(bt[2])


def _log_prob_between(lo: jax.Array, hi: jax.Array) -> jax.Array:
  """log(Phi(hi) - Phi(lo)) for lo < hi, stable in both tails (mirrors to the lower tail)."""
  flip = lo > 0.0
  lo, hi = jnp.where(flip, -hi, lo), jnp.where(flip, -lo, hi)
  l_hi, l_lo = log_ndtr(hi), log_ndtr(lo)
  return l_hi + jnp.log(-jnp.expm1(jnp.minimum(l_lo - l_hi, -1e-12)))


def discretized_gaussian_log_prob(x0: jax.Array, mean: jax.Array, std: jax.Array,
                                  levels: int) -> jax.Array:
  """log P(x0's level) under N(mean, std^2) integrated over the level's bin; elementwise.

  x0 lies on the grid -1 + 2k/(levels-1); bins are +-1/(levels-1) around it, the lowest and
  highest extended to -inf/+inf, so the probabilities of all levels sum to one.
  """
  half = 1.0 / (levels - 1)
  lo = jnp.where(x0 < -1.0 + half, -jnp.inf, (x0 - half - mean) / std)
  hi = jnp.where(x0 > 1.0 - half, jnp.inf, (x0 + half - mean) / std)
  return _log_prob_between(lo, hi)


def _gauss_kl_std_normal(mean: jax.Array, var: jax.Array) -> jax.Array:
  """KL(N(mean, var) || N(0, 1)) elementwise."""
  return 0.5 * (mean * mean + var - 1.0 - jnp.log(var))


def vlb_strata(num_steps: int, k: int) -> np.ndarray:
  """k+1 increasing edges from 1 to T+1, geometrically spaced: single steps where the terms
  change fastest (small i, including the decoder at i = 1), wide strata where they are flat."""
  g = np.geomspace(1.0, num_steps + 1.0, k + 1)
  edges = np.zeros(k + 1, np.int64)
  edges[0], edges[k] = 1, num_steps + 1
  for j in range(1, k):  # at least one step per stratum, and room left for the later strata
    edges[j] = min(max(edges[j - 1] + 1, int(round(g[j]))), num_steps + 1 - (k - j))
  return edges.astype(np.int32)


def vlb_terms(denoise: DenoiseFn, x0: jax.Array, key: jax.Array, alpha_bars: jax.Array,
              levels: int, prediction: str = "eps", vlb_steps: int | None = None, *,
              times: jax.Array | None = None, clip: bool = False) -> dict:
  """The discrete-time variational bound per example, in nats: {"prior", "diffusion", "decoder", "total"}.

  x0: [B, ...] data on the level grid in [-1, 1]. vlb_steps: None or T sums all T terms (T network
  calls); k < T splits 1..T into k contiguous strata (`vlb_strata`: single steps first, where the
  terms are largest and change fastest) and evaluates one uniformly drawn step per stratum and
  example, weighted by the stratum's size (unbiased for the full sum, low variance).
  times: the network time of each index [T+1] (default i / T; see `subchain`). clip: the reverse
  model uses clip(x0_hat, -1, 1), as the samplers do with clip=True (still a valid bound).
  """
  num_steps = alpha_bars.shape[0] - 1
  k = num_steps if vlb_steps in (None, 0) else int(vlb_steps)
  if not 1 <= k <= num_steps:
    raise ValueError(f"vlb_steps={vlb_steps} must be in 1..num_timesteps={num_steps}.")
  bsz = x0.shape[0]
  red = lambda v: jnp.sum(v.reshape(bsz, -1), axis=-1)  # [B, ...] -> [B]
  c1, _, _ = posterior_coefficients(alpha_bars)
  var = reverse_variances(alpha_bars)

  ab_T = alpha_bars[-1]
  prior = red(_gauss_kl_std_normal(jnp.sqrt(ab_T) * x0, jnp.broadcast_to(1.0 - ab_T, x0.shape)))

  edges = vlb_strata(num_steps, k)  # strata [e_j, e_{j+1})
  starts, sizes = jnp.asarray(edges[:-1]), jnp.asarray(np.diff(edges))

  def term(carry, xs):
    start, size, key_j = xs
    k_i, k_eps = jax.random.split(key_j)
    i = start + jax.random.randint(k_i, (bsz,), 0, size)  # [B] a step in the stratum
    ab = alpha_bars[i]
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    x_t = q_sample(x0, ab, eps)
    t = i.astype(jnp.float32) / num_steps if times is None else times[i]
    out = denoise(x_t, t).astype(jnp.float32)
    x0_hat, _ = predict_x0_eps(out, x_t, ab, prediction)
    if clip:
      x0_hat = jnp.clip(x0_hat, -1.0, 1.0)
    kl = red(jnp.square(x0 - x0_hat)) * (jnp.square(c1[i]) / (2.0 * var[i]))  # [B]
    std = _bcast(jnp.sqrt(var[i]), x0)  # at i = 1 the model mean is x0_hat (c2_1 = 0, c1_1 = 1)
    nll0 = -red(discretized_gaussian_log_prob(x0, x0_hat, std, levels))
    w = size.astype(jnp.float32)
    diff, dec = carry
    return (diff + jnp.where(i > 1, w * kl, 0.0), dec + jnp.where(i == 1, w * nll0, 0.0)), None

  zeros = jnp.zeros((bsz,), jnp.float32)
  (diff, dec), _ = jax.lax.scan(term, (zeros, zeros), (starts, sizes, jax.random.split(key, k)))
  return {"prior": prior, "diffusion": diff, "decoder": dec, "total": prior + diff + dec}


def bits_per_dim(nats: jax.Array, dims: int) -> jax.Array:
  """nats per example -> bits per dimension."""
  return nats / (dims * math.log(2.0))
