"""CLIP (Radford et al. 2021) at toy scale: a small CNN image encoder, a small Transformer text
encoder, both projected to one embedding space, and a learned temperature (the book's Ch. 13).

    model = CLIP(vocab_size=len(vocab), max_len=16)
    img_BxE, txt_BxE, log_scale = model.apply({"params": p}, images, tokens)   # L2-normalised
    tokens_BxLxD, mask_BxL = model.apply({"params": p}, tokens, method=CLIP.text_tokens)

The text encoder's per-token features (`text_tokens`) are what a text-to-image model attends to
(gdl_jax/nn/unet.py's cross-attention); padding (token id 0) is masked in every attention.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
PAD = 0


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  return x / jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + eps)


class ImageEncoder(nn.Module):
  """[B, H, W, C] in [-1, 1] -> [B, embed_dim]: conv-GN-swish stages (stride 2 between), mean pool.
  stem_stride=2 makes the first conv strided too (4x fewer FLOPs at full resolution)."""

  features: Sequence[int] = (32, 64, 128)
  embed_dim: int = 64
  stem_stride: int = 1
  groups: int = 8
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 4:
      raise ValueError(f"ImageEncoder expects images [B, H, W, C], got shape {x.shape}.")
    h = x.astype(self.dtype)
    for i, f in enumerate(self.features):
      if i or self.stem_stride > 1:
        s = 2 if i else self.stem_stride
        h = nn.Conv(f, (3, 3), strides=(s, s), dtype=self.dtype)(h)  # [B, H/s, W/s, f]
      h = nn.Conv(f, (3, 3), dtype=self.dtype)(h)
      h = nn.swish(nn.GroupNorm(min(self.groups, f), dtype=self.dtype)(h))
    h = jnp.mean(h, axis=(1, 2))  # [B, F]
    return nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype)(h).astype(jnp.float32)


class TextBlock(nn.Module):
  """Pre-LN Transformer block: masked self-attention + MLP."""

  dim: int
  num_heads: int
  mlp_ratio: int = 4
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array, mask_BxL: jax.Array) -> jax.Array:
    attn_mask = mask_BxL[:, None, None, :]  # [B, 1, 1(query), L(key)]
    h = nn.LayerNorm(dtype=self.dtype)(x_BxLxD)
    h = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype)(h, h, mask=attn_mask)
    x_BxLxD = x_BxLxD + h
    h = nn.LayerNorm(dtype=self.dtype)(x_BxLxD)
    h = nn.Dense(self.dim * self.mlp_ratio, dtype=self.dtype)(h)
    h = nn.Dense(self.dim, dtype=self.dtype)(nn.gelu(h))
    return x_BxLxD + h


class TextEncoder(nn.Module):
  """[B, L] token ids (0 = padding) -> (tokens [B, L, dim], mask [B, L], embedding [B, embed_dim]).

  The embedding is the final-LayerNorm feature of the last non-padding token (the <eos> that the
  tokenizer appends, as in CLIP), projected; padding never influences any non-padding output.
  """

  vocab_size: int
  max_len: int = 16
  dim: int = 64
  depth: int = 2
  num_heads: int = 4
  embed_dim: int = 64
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens_BxL: jax.Array):
    if tokens_BxL.ndim != 2 or tokens_BxL.shape[1] > self.max_len:
      raise ValueError(f"TextEncoder expects tokens [B, L<={self.max_len}], got {tokens_BxL.shape}.")
    b, length = tokens_BxL.shape
    mask_BxL = tokens_BxL != PAD
    x = nn.Embed(self.vocab_size, self.dim, embedding_init=nn.initializers.normal(0.02))(tokens_BxL)
    pos = self.param("positions", nn.initializers.normal(0.02), (self.max_len, self.dim))
    x = (x + pos[None, :length]).astype(self.dtype)
    for _ in range(self.depth):
      x = TextBlock(self.dim, self.num_heads, dtype=self.dtype)(x, mask_BxL)
    x = nn.LayerNorm(dtype=self.dtype)(x).astype(jnp.float32)  # [B, L, D]
    last = jnp.maximum(jnp.sum(mask_BxL, axis=1) - 1, 0)  # [B] index of <eos>
    pooled = x[jnp.arange(b), last]  # [B, D]
    emb = nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype)(pooled).astype(jnp.float32)
    return x, mask_BxL, emb


class CLIP(nn.Module):
  """Image and text encoders into one space; __call__ returns (img [B,E], txt [B,E], log_scale),
  both embeddings L2-normalised, log_scale the learned log inverse temperature (init log 1/0.07)."""

  vocab_size: int
  max_len: int = 16
  image_features: Sequence[int] = (32, 64, 128)
  text_dim: int = 64
  text_depth: int = 2
  text_heads: int = 4
  embed_dim: int = 64
  init_temperature: float = 0.07
  stem_stride: int = 1
  dtype: Dtype = jnp.float32

  def setup(self):
    self.image_encoder = ImageEncoder(tuple(self.image_features), self.embed_dim, self.stem_stride,
                                      dtype=self.dtype)
    self.text_encoder = TextEncoder(self.vocab_size, self.max_len, self.text_dim, self.text_depth,
                                    self.text_heads, self.embed_dim, dtype=self.dtype)
    self.log_scale = self.param("log_scale", nn.initializers.constant(math.log(1.0 / self.init_temperature)), ())

  def encode_image(self, images: jax.Array) -> jax.Array:
    return l2_normalize(self.image_encoder(images))

  def encode_text(self, tokens: jax.Array) -> jax.Array:
    return l2_normalize(self.text_encoder(tokens)[2])

  def text_tokens(self, tokens: jax.Array):
    """Per-token features and the padding mask: ([B, L, text_dim], [B, L] bool)."""
    x, mask, _ = self.text_encoder(tokens)
    return x, mask

  def __call__(self, images: jax.Array, tokens: jax.Array):
    return self.encode_image(images), self.encode_text(tokens), self.log_scale
