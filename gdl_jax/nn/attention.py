"""Causal multi-head self-attention with rotary positions and an explicit key/value cache.

The cache is a plain pytree {"k", "v": [B, max_len, heads, head_dim]} passed in and returned, so
decoding stays a pure function (no mutable Linen collection). Query at position q attends to keys
at positions <= q; cache slots not yet written sit at later positions and are masked out.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def rotary_embedding(x, positions, base: float = 10000.0):
  """RoPE (Su et al. 2021) on [B, S, H, Dh] at integer positions [S]: rotates feature pairs."""
  dh = x.shape[-1]
  if dh % 2:
    raise ValueError(f"rotary positions need an even head dimension; got {dh}. Change dim/heads.")
  freqs = base ** (-jnp.arange(0, dh // 2, dtype=jnp.float32) * 2.0 / dh)  # [Dh/2]
  angles = positions.astype(jnp.float32)[:, None] * freqs[None, :]  # [S, Dh/2]
  cos, sin = jnp.cos(angles)[None, :, None, :], jnp.sin(angles)[None, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
  return out.astype(x.dtype)


def init_kv_cache(batch: int, max_len: int, heads: int, head_dim: int, dtype=jnp.float32) -> dict:
  """An empty cache for one attention layer."""
  z = jnp.zeros((batch, max_len, heads, head_dim), dtype)
  return {"k": z, "v": z}


class CausalSelfAttention(nn.Module):
  """Multi-head causal self-attention; with `cache` it writes this call's keys/values into it."""

  num_heads: int
  rotary: bool = False
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, positions, cache: Optional[dict] = None):
    """x [B, S, D] at positions [S] (consecutive) -> (y [B, S, D], cache or None)."""
    d = x.shape[-1]
    if d % self.num_heads:
      raise ValueError(f"model dim {d} is not divisible by heads={self.num_heads}; pick dim = "
                       "heads * head_dim.")
    dh = d // self.num_heads
    dense = lambda name: nn.DenseGeneral((self.num_heads, dh), dtype=self.dtype,  # noqa: E731
                                         param_dtype=self.param_dtype, name=name)
    q, k, v = dense("query")(x), dense("key")(x), dense("value")(x)  # [B, S, H, Dh]
    if self.rotary:
      q, k = rotary_embedding(q, positions), rotary_embedding(k, positions)
    if cache is None:
      key_pos = positions
    else:
      start = positions[0]
      k = jax.lax.dynamic_update_slice_in_dim(cache["k"], k.astype(cache["k"].dtype), start, axis=1)
      v = jax.lax.dynamic_update_slice_in_dim(cache["v"], v.astype(cache["v"].dtype), start, axis=1)
      cache = {"k": k, "v": v}
      key_pos = jnp.arange(k.shape[1])
    mask = key_pos[None, :] <= positions[:, None]  # [S, K]
    y = jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype),
                                     mask=mask[None, None])  # [B, S, H, Dh]
    y = nn.DenseGeneral(d, axis=(-2, -1), dtype=self.dtype, param_dtype=self.param_dtype,
                        name="out")(y)
    return y, cache
