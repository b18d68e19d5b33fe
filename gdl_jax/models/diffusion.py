"""Diffusion models (the book's Ch. 8): a U-Net denoiser paired with the forward process it inverts.

    model = DiffusionModel.from_config(config.model, info)        # Linen module
    params = model.init(key, x_t, t)["params"]                      # x_t [B,H,W,C], t [B] in [0,1]
    out = model.apply({"params": params}, x_t, t)                   # eps or v, per model.diffusion
    x0 = ddim_sample(model.predictor(), params, key, model.diffusion.alpha_bars(), shape=..., steps=50)

The losses and the bound live in gdl_jax.objectives.diffusion, the samplers in
gdl_jax.samplers.diffusion; the module holds only the network and the process' constants.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gdl_jax.nn.unet import UNet
from gdl_jax.objectives.diffusion import Diffusion, NoiseSchedule

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class Predictor:
  """`predict(params, x_t, t) -> eps or v` for the samplers; hashable by value (a jit static arg)."""

  module: nn.Module

  def __call__(self, params: Any, x_t: jax.Array, t: jax.Array) -> jax.Array:
    return self.module.apply({"params": params}, x_t, t)


class DiffusionModel(nn.Module):
  """The denoising network; `diffusion` (schedule, T, eps/v target) is a static field."""

  net: UNet
  diffusion: Diffusion = Diffusion()

  def __call__(self, x_t: jax.Array, t: jax.Array, *, train: bool = False) -> jax.Array:
    """x_t [B,H,W,C] noisy images in ~[-1,1], t [B] = step / T -> network output [B,H,W,C]."""
    return self.net(x_t, t, train=train)

  def predictor(self) -> Predictor:
    return Predictor(self)

  @staticmethod
  def from_config(cfg, channels: int) -> "DiffusionModel":
    """cfg: the experiment's `config.model` block; channels: the data's C."""
    if cfg.dtype not in _DTYPES:
      raise ValueError(f"model.dtype={cfg.dtype!r} is unknown; use one of {sorted(_DTYPES)}.")
    net = UNet(out_channels=channels, base_channels=int(cfg.base_channels),
               channel_mults=tuple(cfg.channel_mults), num_res_blocks=int(cfg.num_res_blocks),
               attention_levels=tuple(cfg.attention_levels), num_heads=int(cfg.num_heads),
               groups=int(cfg.groups), dropout=float(cfg.dropout), dtype=_DTYPES[cfg.dtype])
    schedule = NoiseSchedule(kind=cfg.schedule)
    return DiffusionModel(net=net, diffusion=Diffusion(schedule, int(cfg.num_timesteps), cfg.prediction))


@dataclasses.dataclass(frozen=True)
class ConditionalPredictor:
  """`predict(params, x_t, t, tokens, use_text [B] bool) -> eps or v`; hashable by value."""

  module: nn.Module

  def __call__(self, params: Any, x_t: jax.Array, t: jax.Array, tokens: jax.Array,
               use_text: jax.Array) -> jax.Array:
    return self.module.apply({"params": params}, x_t, t, tokens, use_text)


class TextToImageModel(nn.Module):
  """Imagen's recipe at toy scale: a Transformer text encoder's token features condition the U-Net
  through cross-attention (and their pooled mean through the time embedding).

  tokens [B, L] caption ids (0 = padding); use_text [B] bool: False drops the caption (every token
  masked, only the U-Net's learned null token remains): the unconditional model of classifier-free
  guidance, trained by dropping captions at random (Ho & Salimans 2022).
  """

  net: UNet
  text: Any  # gdl_jax.models.clip.TextEncoder
  diffusion: Diffusion = Diffusion()

  def __call__(self, x_t: jax.Array, t: jax.Array, tokens: jax.Array, use_text: jax.Array, *,
               train: bool = False) -> jax.Array:
    ctx, mask, _ = self.text(tokens)  # [B, L, D], [B, L]
    mask = mask & use_text.astype(bool)[:, None]
    return self.net(x_t, t, context=ctx, context_mask=mask, train=train)

  def predictor(self) -> ConditionalPredictor:
    return ConditionalPredictor(self)

  @staticmethod
  def from_config(cfg, channels: int, vocab_size: int, max_len: int) -> "TextToImageModel":
    from gdl_jax.models.clip import TextEncoder
    base = DiffusionModel.from_config(cfg, channels)
    text = TextEncoder(vocab_size, max_len, int(cfg.text_dim), int(cfg.text_depth), int(cfg.text_heads),
                       embed_dim=int(cfg.text_dim))
    return TextToImageModel(net=base.net, text=text, diffusion=base.diffusion)
