"""Diffusion samplers, each one jitted function looping with lax.scan:

  ddpm_sample   ancestral sampling through all T steps (reverse variance beta_tilde, Ho et al.)
  ddim_sample   DDIM on any sub-sequence of `steps` steps, eta in [0, 1] (eta=0 deterministic;
                eta=1 is ancestral sampling of the `steps`-step DDPM on that sub-grid, see
                objectives.diffusion.subchain; with steps=T it is exactly ddpm_sample)
  ddim_invert   the deterministic DDIM ODE run forwards: x0 -> x_T (round trip with eta=0)
  guided        classifier-free guidance: a conditional network -> a `predict` for the above

`predict(params, x [B,H,W,C], t [B] in [0,1]) -> eps or v` is a static argument: build it once
(e.g. in the experiment's `build`) and pass the same function object so the jit cache hits.
`alpha_bars` is the [T+1] table of `gdl_jax.objectives.diffusion.Diffusion.alpha_bars()`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from gdl_jax.objectives.diffusion import (posterior_coefficients, predict_x0_eps, reverse_variances,
                                          step_grid)

PredictFn = Callable[[object, jax.Array, jax.Array], jax.Array]


def ddim_timesteps(num_timesteps: int, steps: int) -> np.ndarray:
  """steps+1 strictly decreasing step indices from T to 0: `step_grid` backwards."""
  return step_grid(num_timesteps, steps)[::-1].copy()


def _x0_eps(predict, params, x, i, alpha_bars, prediction, clip):
  """Network at step i [B] -> (x0_hat, eps_hat); with clip, x0_hat in [-1, 1] and eps_hat re-derived."""
  ab = alpha_bars[i]
  out = predict(params, x, i.astype(jnp.float32) / (alpha_bars.shape[0] - 1)).astype(x.dtype)
  x0, eps = predict_x0_eps(out, x, ab, prediction)
  if clip:
    x0 = jnp.clip(x0, -1.0, 1.0)
    abx = ab.reshape((-1,) + (1,) * (x.ndim - 1))
    eps = (x - jnp.sqrt(abx) * x0) / jnp.sqrt(1.0 - abx)
  return x0, eps


@functools.partial(jax.jit, static_argnames=("predict", "shape", "prediction", "clip"))
def ddpm_sample(predict: PredictFn, params, key: jax.Array, alpha_bars: jax.Array, *,
                shape: tuple[int, ...], prediction: str = "eps", clip: bool = True) -> jax.Array:
  """Ancestral sampling x_T ~ N(0, I) -> x_0 through all T steps; returns x_0 [shape] in ~[-1, 1]."""
  num_steps = alpha_bars.shape[0] - 1
  k_init, k_steps = jax.random.split(key)
  c1, c2, _ = posterior_coefficients(alpha_bars)
  var = reverse_variances(alpha_bars)
  n = shape[0]

  def body(x, xs):
    i, k = xs
    ib = jnp.full((n,), i)
    x0, _ = _x0_eps(predict, params, x, ib, alpha_bars, prediction, clip)
    mean = c1[i] * x0 + c2[i] * x
    noise = jax.random.normal(k, shape, x.dtype)
    return mean + jnp.where(i > 1, jnp.sqrt(var[i]), 0.0) * noise, None

  steps = jnp.arange(num_steps, 0, -1)
  x, _ = jax.lax.scan(body, jax.random.normal(k_init, shape), (steps, jax.random.split(k_steps, num_steps)))
  return x


@functools.partial(jax.jit, static_argnames=("predict", "shape", "steps", "prediction", "clip",
                                             "return_trajectory"))
def ddim_sample(predict: PredictFn, params, key: jax.Array, alpha_bars: jax.Array, *,
                shape: tuple[int, ...], steps: int = 50, eta: float = 0.0, prediction: str = "eps",
                clip: bool = True, x_T: jax.Array | None = None, return_trajectory: bool = False):
  """DDIM (Song et al. 2021) from x_T (given, or drawn from `key`) to x_0 in `steps` steps.

  x_next = sqrt(ab_next) x0_hat + sqrt(1 - ab_next - sigma^2) eps_hat + sigma z,
  sigma = eta sqrt((1 - ab_next) / (1 - ab) (1 - ab / ab_next)). Returns x_0, or with
  return_trajectory (x_0, xs [steps+1, *shape] from x_T to x_0, x0_hats [steps, *shape]).
  """
  ts = ddim_timesteps(alpha_bars.shape[0] - 1, steps)
  k_init, k_steps = jax.random.split(key)
  x = jax.random.normal(k_init, shape) if x_T is None else x_T
  if x.shape != tuple(shape):
    raise ValueError(f"x_T has shape {x.shape}, expected {tuple(shape)}.")

  def body(x, xs):
    i, i_next, k = xs
    x0, eps = _x0_eps(predict, params, x, jnp.full((shape[0],), i), alpha_bars, prediction, clip)
    ab, ab_next = alpha_bars[i], alpha_bars[i_next]
    sigma2 = jnp.square(eta) * (1.0 - ab_next) / (1.0 - ab) * (1.0 - ab / ab_next)
    noise = jax.random.normal(k, shape, x.dtype)
    x_new = (jnp.sqrt(ab_next) * x0 + jnp.sqrt(jnp.maximum(1.0 - ab_next - sigma2, 0.0)) * eps
             + jnp.sqrt(sigma2) * noise)
    return x_new, (x_new, x0)

  xs = (jnp.asarray(ts[:-1]), jnp.asarray(ts[1:]), jax.random.split(k_steps, steps))
  x_out, (traj, x0s) = jax.lax.scan(body, x, xs)
  if return_trajectory:
    return x_out, jnp.concatenate([x[None], traj], axis=0), x0s
  return x_out


@functools.partial(jax.jit, static_argnames=("predict", "steps", "prediction"))
def ddim_invert(predict: PredictFn, params, x0: jax.Array, alpha_bars: jax.Array, *,
                steps: int = 50, prediction: str = "eps", fixed_point_iters: int | jax.Array = 0
                ) -> jax.Array:
  """Deterministic DDIM encoding x_0 -> x_T on the same step grid as ddim_sample(steps, eta=0).

  Each step i -> j (more noise) moves along x_j = sqrt(ab_j) x0_hat + sqrt(1 - ab_j) eps_hat with
  the network evaluated at the current (x_i, i) (Song et al.); x0_hat is never clipped, so
  ddim_sample(x_T=result, eta=0, clip=False) retraces the path up to discretisation error.
  fixed_point_iters > 0 re-evaluates eps_hat at the new point (x_j, j) and solves the sampler's
  step j -> i for x_j by fixed-point iteration, so the round trip becomes exact up to the
  iteration's convergence (one extra network call per iteration and step).

  Conditioning: the sampler's first step reads x0_hat at alpha_bar_T. With v-prediction that is
  a_T x - s_T v (well-conditioned); with eps-prediction it divides by sqrt(alpha_bar_T) (~5e-5 on
  the cosine schedule), which amplifies the network's error at x_T a thousandfold, so unclipped
  round trips need v-prediction (or a schedule that keeps alpha_bar_T away from 0).
  """
  ts = step_grid(alpha_bars.shape[0] - 1, steps)  # 0 -> T
  n = x0.shape[0]

  def body(x, xs):
    i, j = xs
    a_i, s_i = jnp.sqrt(alpha_bars[i]), jnp.sqrt(1.0 - alpha_bars[i])
    a_j, s_j = jnp.sqrt(alpha_bars[j]), jnp.sqrt(1.0 - alpha_bars[j])
    # The network is trained on steps 1..T only: read the clean data (i = 0) as the step-1 level.
    x0_hat, eps = _x0_eps(predict, params, x, jnp.full((n,), jnp.maximum(i, 1)), alpha_bars,
                          prediction, False)
    x_j = a_j * x0_hat + s_j * eps

    def refine(_, x_j):  # the sampler maps x_j to a_i x0_hat(x_j) + s_i eps(x_j): make that x
      _, eps_j = _x0_eps(predict, params, x_j, jnp.full((n,), j), alpha_bars, prediction, False)
      return a_j * (x - s_i * eps_j) / a_i + s_j * eps_j

    return jax.lax.fori_loop(0, fixed_point_iters, refine, x_j), None

  x, _ = jax.lax.scan(body, x0, (jnp.asarray(ts[:-1]), jnp.asarray(ts[1:])))
  return x


def guide(out_cond: jax.Array, out_uncond: jax.Array, scale) -> jax.Array:
  """Classifier-free guidance (Ho & Salimans 2022): uncond + scale (cond - uncond).

  scale 0 is the unconditional prediction, 1 the conditional one, > 1 pushes further along
  the direction the condition adds (sharper, more on-prompt, less diverse samples). Linear in
  the output, so guiding eps, v or x0 is the same thing.
  """
  return out_uncond + scale * (out_cond - out_uncond)


@dataclasses.dataclass(frozen=True)
class Guided:
  """`predict(params, x, t)` for the samplers from `cond_predict(net_params, x, t, cond, use [B])`,
  with params = {"net": network params, "cond": per-example condition (pytree, leading axis B),
  "scale": guidance scale}: one network call on the batch doubled ([x; x] with use = [1; 0]).
  Hashable by value, so one Guided per predictor hits the samplers' jit cache; the scale is traced
  (a sweep over scales compiles once)."""

  cond_predict: Callable

  def __call__(self, params, x: jax.Array, t: jax.Array) -> jax.Array:
    n = x.shape[0]
    cond = jax.tree.map(lambda c: jnp.concatenate([c, c]), params["cond"])
    use = jnp.concatenate([jnp.ones((n,), bool), jnp.zeros((n,), bool)])
    out = self.cond_predict(params["net"], jnp.concatenate([x, x]), jnp.concatenate([t, t]), cond, use)
    return guide(out[:n], out[n:], params["scale"])


def guided(cond_predict: Callable) -> Guided:
  """Classifier-free guidance around a conditional predictor (see `Guided`)."""
  return Guided(cond_predict)
