"""CycleGAN's objectives (Zhu et al. 2017) as pure functions: least-squares GAN, cycle and identity
L1 terms, and the image history buffer.

    d = lsgan_disc_loss(D(y), D(pool(G(x))))     # the critic: real -> 1, fake -> 0, squared errors
    g = lsgan_gen_loss(D(G(x)))                   # the generator: its fakes -> 1
    c = l1_loss(x, F(G(x)))                       # cycle consistency (weight 10 in the book)
    i = l1_loss(y, G(y))                          # identity (weight 5: the book's recipe)
    pool, out = pool_query(pool, fakes, key)     # the history of 50 fakes the critic also sees

Critic outputs are any shape (a PatchGAN's [B, h, w] grid): every loss is a mean over all entries.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def lsgan_disc_loss(real: jax.Array, fake: jax.Array) -> jax.Array:
  """Least-squares critic loss (Mao et al. 2017): (mean (D(real) - 1)^2 + mean D(fake)^2) / 2
  (the halving is the CycleGAN code's, so the critic learns at half the generator's rate)."""
  return 0.5 * (jnp.mean(jnp.square(real - 1.0)) + jnp.mean(jnp.square(fake)))


def lsgan_gen_loss(fake: jax.Array) -> jax.Array:
  """Least-squares generator loss: mean (D(G(x)) - 1)^2."""
  return jnp.mean(jnp.square(fake - 1.0))


def l1_loss(x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean absolute difference: the cycle term |F(G(a)) - a| and the identity term |G(b) - b|."""
  if x.shape != y.shape:
    raise ValueError(f"l1_loss needs equal shapes, got {x.shape} and {y.shape}.")
  return jnp.mean(jnp.abs(x - y))


def init_pool(capacity: int, shape: tuple[int, ...], dtype=jnp.float32) -> dict:
  """An empty history buffer: {"images": [capacity, *shape] zeros, "count": 0 (stored so far)}."""
  if capacity < 0:
    raise ValueError(f"the history buffer's capacity must be >= 0 (0 = no buffer); got {capacity}.")
  return {"images": jnp.zeros((capacity, *shape), dtype), "count": jnp.zeros((), jnp.int32)}


def pool_query(pool: dict, images: jax.Array, key: jax.Array, swap_prob: float = 0.5):
  """Shrivastava et al.'s image history, image by image as in the CycleGAN code; pure and jittable.

  For each image in turn: while the buffer is not full it is stored and returned; once full, with
  probability swap_prob a uniformly chosen stored image is returned and replaced by the new one,
  else the new image is returned. Returns (new pool, [B, ...] images for the critic). A buffer of
  capacity 0 returns the images unchanged.
  """
  capacity = pool["images"].shape[0]
  if capacity == 0:
    return pool, images
  if pool["images"].shape[1:] != images.shape[1:]:
    raise ValueError(f"pool images {pool['images'].shape[1:]} and new images {images.shape[1:]} differ.")

  def one(carry, inputs):
    stored, count = carry
    image, k = inputs
    k_swap, k_idx = jax.random.split(k)
    full = count >= capacity
    swap = full & (jax.random.uniform(k_swap) < swap_prob)
    idx = jnp.where(full, jax.random.randint(k_idx, (), 0, capacity), jnp.minimum(count, capacity - 1))
    out = jnp.where(swap, stored[idx], image)
    write = swap | ~full
    stored = stored.at[idx].set(jnp.where(write, image, stored[idx]))
    return (stored, count + (~full).astype(count.dtype)), out

  keys = jax.random.split(key, images.shape[0])
  (stored, count), out = jax.lax.scan(one, (pool["images"], pool["count"]),
                                      (images.astype(pool["images"].dtype), keys))
  return {"images": stored, "count": count}, out
