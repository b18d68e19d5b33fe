"""GAN sampling: z ~ N(0, I) through the generator in eval mode, with standing BatchNorm statistics.

The generator's stored running averages (TrainState.extra["gen"]) describe the *raw* parameters;
the EMA parameters we sample with need their own. `standing_batch_stats` re-estimates them from
one large batch of fresh latents (BigGAN's "standing statistics"), so samples do not depend on
how many are drawn at once.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def round_robin_labels(n: int, num_classes: int) -> jax.Array:
  """[0, 1, ..., K-1, 0, 1, ...] of length n."""
  return jnp.arange(n, dtype=jnp.int32) % num_classes                                # [n]


def standing_batch_stats(generator, params, batch_stats, key: jax.Array, n: int = 512, *,
                         latent_dim: int):
  """BatchNorm mean/var of the generator with `params` on n fresh latents.

  batch_stats: any stats of the right structure (their values are ignored); {} returns {}.
  """
  if not batch_stats:
    return {}
  z = jax.random.normal(key, (n, latent_dim))                                        # [n, Z]
  labels = round_robin_labels(n, generator.num_classes) if generator.num_classes else None
  probe = generator.clone(bn_momentum=0.0)  # running average := this batch's statistics
  _, upd = probe.apply({"params": params, "batch_stats": batch_stats}, z, labels, train=True,
                       mutable=["batch_stats"])
  return upd["batch_stats"]


def decode(generator, params, batch_stats, z: jax.Array, labels: Optional[jax.Array] = None) -> jax.Array:
  """G(z) in eval mode: [n, Z] -> [n, ...] in the generator's output range."""
  variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
  return generator.apply(variables, z, labels, train=False)


def generate(generator, params, batch_stats, z: jax.Array, labels: Optional[jax.Array] = None, *,
             key: Optional[jax.Array] = None, standing_stats: int = 512) -> jax.Array:
  """G(z) in eval mode [n, ...]; standing_stats > 0 first re-estimates BatchNorm statistics for
  `params` on that many fresh latents drawn with `key` (use it with EMA params); 0 uses
  `batch_stats` as given."""
  if standing_stats and batch_stats:
    if key is None:
      raise ValueError("standing_stats > 0 needs a key for its latents.")
    batch_stats = standing_batch_stats(generator, params, batch_stats, key, standing_stats,
                                       latent_dim=z.shape[-1])
  return decode(generator, params, batch_stats, z, labels)


def sample(generator, params, batch_stats, key: jax.Array, n: int, labels: Optional[jax.Array] = None,
           *, latent_dim: int, standing_stats: int = 512) -> jax.Array:
  """n samples [n, ...] for z ~ N(0, I); conditional generators default to round-robin labels."""
  k_z, k_stats = jax.random.split(key)
  if generator.num_classes and labels is None:
    labels = round_robin_labels(n, generator.num_classes)
  z = jax.random.normal(k_z, (n, latent_dim))                                        # [n, Z]
  return generate(generator, params, batch_stats, z, labels, key=k_stats, standing_stats=standing_stats)


def interpolate_latents(key: jax.Array, rows: int, steps: int, latent_dim: int) -> jax.Array:
  """rows straight lines between pairs of z ~ N(0, I), `steps` points each: [rows * steps, Z]."""
  k_a, k_b = jax.random.split(key)
  a, b = jax.random.normal(k_a, (rows, 1, latent_dim)), jax.random.normal(k_b, (rows, 1, latent_dim))
  t = jnp.linspace(0.0, 1.0, steps)[None, :, None]                                   # [1, S, 1]
  return ((1.0 - t) * a + t * b).reshape(rows * steps, latent_dim)
