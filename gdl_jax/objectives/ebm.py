"""EBM objective: contrastive divergence with Langevin negatives drawn from a replay buffer.

The replay buffer is a fixed-size array in the train state's `extra` ({"buffer", "ptr"}), so the
whole step (buffer read, Langevin chain, loss, buffer write) is one pure jitted function. As in the
book, each chain starts from a random buffer entry, or from uniform noise with probability
`reinit_prob` (5%); the chains' end points are written back first-in first-out.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from gdl_jax.samplers.langevin import langevin

Array = jax.Array


def contrastive_divergence(e_real: Array, e_fake: Array, alpha: float) -> tuple[Array, dict]:
  """mean E(real) - mean E(fake) + alpha * mean(E(real)^2 + E(fake)^2) (energies [B])."""
  cd = jnp.mean(e_real) - jnp.mean(e_fake)
  reg = alpha * jnp.mean(jnp.square(e_real) + jnp.square(e_fake))
  return cd + reg, {"cd": cd, "reg": reg, "energy_real": jnp.mean(e_real),
                    "energy_fake": jnp.mean(e_fake)}


def init_buffer(key: Array, size: int, shape: tuple[int, ...],
                bounds: tuple[float, float] = (-1.0, 1.0)) -> dict:
  """A replay buffer of `size` uniform-noise examples: {"buffer": [N, *shape], "ptr": int32}."""
  if size < 1:
    raise ValueError(f"replay buffer size={size}; use 1 or more (the book uses 8192).")
  buf = jax.random.uniform(key, (size, *shape), jnp.float32, *bounds)
  return {"buffer": buf, "ptr": jnp.zeros((), jnp.int32)}


def buffer_starts(key: Array, state: dict, batch_size: int, reinit_prob: float,
                  bounds: tuple[float, float] = (-1.0, 1.0)) -> Array:
  """Chain starts [B, ...]: random buffer entries, each replaced by uniform noise w.p. reinit_prob."""
  k_idx, k_noise, k_coin = jax.random.split(key, 3)
  buf = state["buffer"]
  old = buf[jax.random.randint(k_idx, (batch_size,), 0, buf.shape[0])]  # [B, ...]
  fresh = jax.random.uniform(k_noise, old.shape, old.dtype, *bounds)
  coin = jax.random.bernoulli(k_coin, reinit_prob, (batch_size,) + (1,) * (old.ndim - 1))
  return jnp.where(coin, fresh, old)


def buffer_push(state: dict, samples: Array) -> dict:
  """Writes samples [B, ...] over the oldest entries (a ring: position ptr, ptr+1, ... mod N)."""
  buf, ptr = state["buffer"], state["ptr"]
  n, b = buf.shape[0], samples.shape[0]
  if b > n:
    raise ValueError(f"batch of {b} chains is larger than the replay buffer ({n}); "
                     "raise model.buffer_size or lower batch_size.")
  idx = (ptr + jnp.arange(b, dtype=jnp.int32)) % n
  return {"buffer": buf.at[idx].set(samples.astype(buf.dtype)), "ptr": (ptr + b) % n}


def cd_loss(energy_fn: Callable[[Any, Array], Array], params: Any, buffer: dict, x_real: Array,
            key: Array, *, alpha: float, reinit_prob: float, steps: int, step_size: float,
            noise_scale: float, grad_clip: Optional[float], data_noise: float = 0.0,
            bounds: tuple[float, float] = (-1.0, 1.0)) -> tuple[Array, tuple[dict, dict]]:
  """One contrastive-divergence loss: -> (loss, (new buffer, metrics)).

  x_real [B, ...] in [-1, 1] gets N(0, data_noise^2) noise (the book adds 0.005) before scoring.
  The negatives come from `steps` Langevin steps started by `buffer_starts`; they are constants
  for the gradient (the sampler stops gradients) and are pushed back into the buffer.
  """
  k_start, k_chain, k_noise = jax.random.split(key, 3)
  b = x_real.shape[0]
  x0 = buffer_starts(k_start, buffer, b, reinit_prob, bounds)
  chain = langevin(energy_fn, params, x0, k_chain, steps=steps, step_size=step_size,
                   noise_scale=noise_scale, grad_clip=grad_clip, bounds=bounds)
  x_fake = chain.x
  if data_noise:
    x_real = jnp.clip(x_real + data_noise * jax.random.normal(k_noise, x_real.shape, x_real.dtype),
                      *bounds)
  e = energy_fn(params, jnp.concatenate([x_real, x_fake], axis=0))  # [2B], one forward pass
  loss, metrics = contrastive_divergence(e[:b], e[b:], alpha)
  metrics["chain_energy_start"] = jnp.mean(chain.energies[0])
  metrics["chain_energy_end"] = jnp.mean(chain.energies[-1])
  return loss, (buffer_push(buffer, x_fake), metrics)
