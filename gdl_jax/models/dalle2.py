"""DALL-E 2's two stages (Ramesh et al. 2022, "unCLIP"; the book's Ch. 13) at toy scale, on top of a
frozen CLIP (gdl_jax/models/clip.py):

    prior:    CLIP text embedding -> CLIP image embedding, a diffusion model on the embedding
              vector that predicts the clean embedding x0 (as the paper's diffusion prior)
    decoder:  CLIP image embedding -> image, the project's U-Net with the embedding projected to
              `num_tokens` context tokens (cross-attention, GLIDE-style) whose mean also joins the
              time embedding (gdl_jax/nn/unet.py)

Both take `use [B] bool`: False drops the condition (the prior's text embedding becomes a learned
null vector; the decoder's tokens are all masked, only the U-Net's null token remains), which is
the unconditional model classifier-free guidance needs (gdl_jax.samplers.diffusion.guided).

    prior = DiffusionPrior(embed_dim=64)
    x0_BxE = prior.apply({"params": p}, z_t_BxE, t_B, text_BxE, use_B)
    dec = EmbeddingDecoder(net=UNet(...), num_tokens=4, token_dim=32)
    out_BxHxWxC = dec.apply({"params": q}, x_t, t_B, image_emb_BxE, use_B)
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gdl_jax.nn.unet import UNet, sinusoidal_embedding
from gdl_jax.objectives.diffusion import Diffusion

Dtype = Any


class DiffusionPrior(nn.Module):
  """(z_t [B, E] noisy embedding, t [B] in [0, 1], text [B, E], use [B]) -> x0_hat [B, E].

  A residual MLP (pre-LayerNorm, GELU) on [z_t, text (or the null vector), time features]: the
  paper's decoder-only Transformer reads the same tokens; at toy size one vector per input is
  enough. x0-prediction, as the paper (its loss is the MSE to the clean embedding).
  """

  embed_dim: int
  hidden: int = 256
  depth: int = 3
  time_scale: float = 1000.0
  diffusion: Diffusion = Diffusion(prediction="x0")
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z_t: jax.Array, t: jax.Array, text: jax.Array, use: jax.Array, *,
               train: bool = False) -> jax.Array:
    del train
    if z_t.ndim != 2 or z_t.shape[-1] != self.embed_dim or text.shape != z_t.shape:
      raise ValueError(f"DiffusionPrior expects z_t and text [B, {self.embed_dim}], got {z_t.shape} "
                       f"and {text.shape}.")
    null = self.param("null_text", nn.initializers.normal(0.02), (self.embed_dim,))
    text = jnp.where(use.astype(bool)[:, None], text, null[None, :])  # [B, E]
    temb = sinusoidal_embedding(t * self.time_scale, self.hidden)  # [B, H]
    h = jnp.concatenate([z_t, text], axis=-1).astype(self.dtype)  # [B, 2E]
    h = nn.Dense(self.hidden, dtype=self.dtype)(h) + nn.Dense(self.hidden, dtype=self.dtype)(temb)
    for _ in range(self.depth):
      r = nn.LayerNorm(dtype=self.dtype)(h)
      r = nn.Dense(2 * self.hidden, dtype=self.dtype)(r)
      r = nn.Dense(self.hidden, dtype=self.dtype)(nn.gelu(r))
      h = h + r
    h = nn.LayerNorm(dtype=self.dtype)(h)
    return nn.Dense(self.embed_dim, dtype=self.dtype)(h).astype(jnp.float32)  # [B, E]


class EmbeddingDecoder(nn.Module):
  """(x_t [B, H, W, C], t [B], emb [B, E] CLIP image embedding, use [B]) -> U-Net output (eps/v).

  The embedding is projected to `num_tokens` tokens of width `token_dim`: the U-Net attends to
  them at its attention levels and adds their (masked) mean, projected, to the time embedding
  (DALL-E 2 adds the projected embedding to the timestep embedding and appends four extra tokens
  to the text encoder's outputs; here the embedding is the only condition).
  """

  net: UNet
  num_tokens: int = 4
  token_dim: int = 32
  diffusion: Diffusion = Diffusion()

  @nn.compact
  def __call__(self, x_t: jax.Array, t: jax.Array, emb: jax.Array, use: jax.Array, *,
               train: bool = False) -> jax.Array:
    b = x_t.shape[0]
    if emb.ndim != 2 or emb.shape[0] != b:
      raise ValueError(f"EmbeddingDecoder expects embeddings [B={b}, E], got {emb.shape}.")
    tokens = nn.Dense(self.num_tokens * self.token_dim)(emb).reshape(b, self.num_tokens, self.token_dim)
    mask = jnp.broadcast_to(use.astype(bool)[:, None], (b, self.num_tokens))  # [B, K]
    return self.net(x_t, t, context=tokens, context_mask=mask, train=train)
