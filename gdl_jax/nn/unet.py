"""The DDPM U-Net: residual blocks with GroupNorm, a sinusoidal time embedding, self-attention at
low resolution, skip connections between the down and up paths (Ho et al. 2020; the book's Ch. 8).

Works on any H, W: inputs whose sides do not divide 2**(len(channel_mults) - 1) are zero-padded up
to the next multiple and the output is cropped back (28x28 with three levels needs no padding:
28 -> 14 -> 7; 8x8 and 32x32 divide too).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def sinusoidal_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """[B] float times -> [B, dim] sin/cos features at geometric frequencies (Transformer style)."""
  if dim % 2:
    raise ValueError(f"time embedding dim={dim} must be even.")
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)  # [D/2]
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]  # [B, D/2]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)  # [B, D]


def _groups(channels: int, groups: int) -> int:
  g = min(groups, channels)
  if channels % g:
    raise ValueError(f"GroupNorm: {channels} channels are not divisible into {g} groups; choose "
                     "model.groups dividing every level's channels (base_channels * mult).")
  return g


class ResBlock(nn.Module):
  """GN-swish-conv, + projected time embedding, GN-swish-dropout-conv, + (1x1-projected) input."""

  features: int
  groups: int = 8
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array, *, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = nn.swish(nn.GroupNorm(_groups(x.shape[-1], self.groups), **kw)(x))
    h = nn.Conv(self.features, (3, 3), **kw)(h)  # [B, H, W, F]
    h = h + nn.Dense(self.features, **kw)(nn.swish(temb))[:, None, None, :]
    h = nn.swish(nn.GroupNorm(_groups(self.features, self.groups), **kw)(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    # Zero-initialised last conv: every block starts as the identity (stable deep training).
    h = nn.Conv(self.features, (3, 3), kernel_init=nn.initializers.zeros, **kw)(h)
    if x.shape[-1] != self.features:
      x = nn.Conv(self.features, (1, 1), **kw)(x)
    return x + h


class AttentionBlock(nn.Module):
  """Pre-GroupNorm multi-head self-attention over the H*W positions, residual."""

  num_heads: int = 1
  groups: int = 8
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, hgt, wid, c = x.shape
    h = nn.GroupNorm(_groups(c, self.groups), dtype=self.dtype, param_dtype=self.param_dtype)(x)
    h = h.reshape(b, hgt * wid, c)  # [B, HW, C]
    h = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype,
                                        param_dtype=self.param_dtype,
                                        out_kernel_init=nn.initializers.zeros)(h, h)
    return x + h.reshape(b, hgt, wid, c)


class CrossAttentionBlock(nn.Module):
  """Pre-GroupNorm attention from the H*W positions to a sequence of context tokens (a caption's
  text-encoder features), residual; Imagen's / Stable Diffusion's text conditioning.

  context [B, L, D], context_mask [B, L] (True = a real token). A learned null token is always
  attendable, so a fully masked context (the caption dropped, for classifier-free guidance) is
  well defined; masked tokens get zero attention weight, so their values never matter.
  """

  num_heads: int = 1
  groups: int = 8
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array, context_mask: jax.Array) -> jax.Array:
    b, hgt, wid, c = x.shape
    null = self.param("null_token", nn.initializers.normal(0.02), (1, 1, context.shape[-1]),
                      self.param_dtype)
    ctx = jnp.concatenate([jnp.broadcast_to(null, (b, 1, context.shape[-1])).astype(context.dtype),
                           context], axis=1)  # [B, 1+L, D]
    keep = jnp.concatenate([jnp.ones((b, 1), bool), context_mask.astype(bool)], axis=1)  # [B, 1+L]
    h = nn.GroupNorm(_groups(c, self.groups), dtype=self.dtype, param_dtype=self.param_dtype)(x)
    h = h.reshape(b, hgt * wid, c)  # [B, HW, C]
    h = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, qkv_features=c, out_features=c,
                                        dtype=self.dtype, param_dtype=self.param_dtype,
                                        out_kernel_init=nn.initializers.zeros)(
        h, ctx.astype(self.dtype), mask=keep[:, None, None, :])
    return x + h.reshape(b, hgt, wid, c)


class UNet(nn.Module):
  """eps/v-prediction network: (x [B,H,W,C], t [B] in [0, 1]) -> [B,H,W,out_channels].

  channel_mults: one entry per resolution level (level i has base_channels * mult[i] channels,
  resolution H / 2**i). attention_levels: level indices whose blocks use self-attention (the
  bottleneck always does). time_scale: t is multiplied by it before the sinusoidal embedding,
  so t = step / T in [0, 1] gets the frequencies of the integer-step DDPM embedding.

  Text conditioning (optional): context [B, L, D] token features and context_mask [B, L] add a
  CrossAttentionBlock after every self-attention block (attention_levels and the bottleneck) and
  the masked mean of the context, projected, to the time embedding. Without a context the network
  and its parameters are exactly the unconditional U-Net's.
  """

  out_channels: int | None = None
  base_channels: int = 32
  channel_mults: Sequence[int] = (1, 2, 2)
  num_res_blocks: int = 2
  attention_levels: Sequence[int] = (2,)
  num_heads: int = 1
  groups: int = 8
  dropout: float = 0.0
  time_scale: float = 1000.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, *, context: jax.Array | None = None,
               context_mask: jax.Array | None = None, train: bool = False) -> jax.Array:
    if x.ndim != 4:
      raise ValueError(f"UNet expects images [B, H, W, C], got shape {x.shape}.")
    if t.shape != (x.shape[0],):
      raise ValueError(f"UNet expects one time per example, t of shape ({x.shape[0]},); got {t.shape}.")
    bad = [i for i in self.attention_levels if not 0 <= i < len(self.channel_mults)]
    if bad:
      raise ValueError(f"attention_levels {bad} out of range for {len(self.channel_mults)} levels.")
    if context is not None and (context.ndim != 3 or context.shape[0] != x.shape[0]):
      raise ValueError(f"UNet context must be [B={x.shape[0]}, L, D] token features; got {context.shape}.")
    if context is not None and context_mask is None:
      context_mask = jnp.ones(context.shape[:2], bool)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    blk = dict(groups=self.groups, dropout=self.dropout, **kw)
    b, hgt, wid, c = x.shape
    out_c = self.out_channels or c
    factor = 2 ** (len(self.channel_mults) - 1)
    ph, pw = (-hgt) % factor, (-wid) % factor
    if ph or pw:  # pad bottom/right to a multiple of the total downsampling, crop at the end
      x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))

    ch = self.base_channels
    temb = sinusoidal_embedding(t * self.time_scale, ch)  # [B, ch]
    temb = nn.Dense(4 * ch, **kw)(temb)
    temb = nn.Dense(4 * ch, **kw)(nn.swish(temb))  # [B, 4ch]
    if context is not None:  # pooled caption -> the time embedding (Imagen); 0 when all masked
      m = context_mask.astype(jnp.float32)[..., None]  # [B, L, 1]
      pooled = jnp.sum(context * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)  # [B, D]
      temb = temb + nn.Dense(4 * ch, **kw)(pooled)

    def attend(h):
      h = AttentionBlock(self.num_heads, self.groups, **kw)(h)
      if context is not None:
        h = CrossAttentionBlock(self.num_heads, self.groups, **kw)(h, context, context_mask)
      return h

    h = nn.Conv(ch, (3, 3), **kw)(x.astype(self.dtype))
    skips = [h]
    for level, mult in enumerate(self.channel_mults):
      for _ in range(self.num_res_blocks):
        h = ResBlock(ch * mult, **blk)(h, temb, train=train)
        if level in self.attention_levels:
          h = attend(h)
        skips.append(h)
      if level < len(self.channel_mults) - 1:
        h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), **kw)(h)  # [B, H/2, W/2, C]
        skips.append(h)

    h = ResBlock(h.shape[-1], **blk)(h, temb, train=train)
    h = attend(h)
    h = ResBlock(h.shape[-1], **blk)(h, temb, train=train)

    for level, mult in reversed(list(enumerate(self.channel_mults))):
      for _ in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = ResBlock(ch * mult, **blk)(h, temb, train=train)
        if level in self.attention_levels:
          h = attend(h)
      if level > 0:
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest-neighbour x2
        h = nn.Conv(h.shape[-1], (3, 3), **kw)(h)
    assert not skips

    h = nn.swish(nn.GroupNorm(_groups(h.shape[-1], self.groups), **kw)(h))
    h = nn.Conv(out_c, (3, 3), kernel_init=nn.initializers.zeros, **kw)(h)
    return h[:, :hgt, :wid, :].astype(jnp.float32)  # [B, H, W, out_c]
