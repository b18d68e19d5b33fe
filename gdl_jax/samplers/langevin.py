"""Langevin dynamics on an energy E(x): one jitted lax.scan over the chain.

Each step (the book's `generate_samples`, with E = -score):

    x <- clip(x + noise_scale * N(0, I))
    x <- clip(x - step_size * clip(dE/dx, -grad_clip, grad_clip))

Per-example energies are summed before differentiation, so every chain moves along its own
gradient. The energies E(x) at each step's gradient evaluation come back too ([steps, B]).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

Array = jax.Array
EnergyFn = Callable[[Any, Array], Array]  # energy_fn(params, x [B, ...]) -> E(x) [B]


class LangevinResult(NamedTuple):
  x: Array  # [B, ...] the chains' final states
  energies: Array  # [steps, B] E(x) where each step took its gradient
  chain: Optional[Array]  # [steps, B, ...] the states after each step (return_chain=True) else None


@functools.partial(jax.jit, static_argnames=("energy_fn", "steps", "step_size", "noise_scale",
                                             "grad_clip", "bounds", "return_chain"))
def langevin(energy_fn: EnergyFn, params: Any, x0: Array, key: Array, *, steps: int,
             step_size: float, noise_scale: float, grad_clip: Optional[float] = None,
             bounds: Optional[tuple[float, float]] = (-1.0, 1.0),
             return_chain: bool = False) -> LangevinResult:
  """Runs `steps` Langevin steps from x0; grad_clip / bounds None disable the clipping.

  energy_fn must be hashable and stable across calls (e.g. a module's `apply` or a top-level
  function): it is a static argument. Gradients never flow back into `params` (stop_gradient):
  the samples are negatives for contrastive divergence, not part of its graph.
  """
  if steps < 1:
    raise ValueError(f"Langevin steps={steps}; use 1 or more.")
  params = jax.lax.stop_gradient(params)
  x0 = jax.lax.stop_gradient(x0)
  clip_x = (lambda x: jnp.clip(x, *bounds)) if bounds is not None else (lambda x: x)

  def total_energy(x):
    e = energy_fn(params, x)  # [B]
    return jnp.sum(e), e

  def body(x, k):
    x = clip_x(x + noise_scale * jax.random.normal(k, x.shape, x.dtype))
    grad, e = jax.grad(total_energy, has_aux=True)(x)
    if grad_clip is not None:
      grad = jnp.clip(grad, -grad_clip, grad_clip)
    x = clip_x(x - step_size * grad)
    return x, ((e, x) if return_chain else (e, None))

  x, (energies, chain) = jax.lax.scan(body, x0, jax.random.split(key, steps))
  return LangevinResult(x=x, energies=energies, chain=chain)
