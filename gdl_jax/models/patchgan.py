"""PatchGAN discriminator (Isola et al. 2017; the VQ-GAN's, Esser et al. 2021): a small conv net
that emits a grid of real/fake logits, one per overlapping image patch (Linen only).

    disc = PatchDiscriminator(features=(64, 128))
    logits = disc.apply({"params": p}, x)          # x [B, H, W, C] in [-1, 1] -> [B, H/4, W/4]

Each entry of `features` is a 4x4 stride-2 conv (LeakyReLU 0.2; LayerNorm over channels after all
but the first, a batch-statistics-free stand-in for pix2pix's BatchNorm, so the critic has no
mutable state), then a 4x4 stride-1 conv to 1 logit. SAME padding: the grid is
ceil(H / 2^n) x ceil(W / 2^n) for n = len(features), each logit seeing a receptive field of
about 4 * 2^n pixels.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class PatchDiscriminator(nn.Module):
  """[B, H, W, C] images in [-1, 1] -> [B, h, w] patch logits (see the module docstring)."""

  features: Sequence[int] = (64, 128)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 4:
      raise ValueError(f"PatchDiscriminator takes NHWC image batches, got shape {x.shape}.")
    if not self.features:
      raise ValueError("PatchDiscriminator needs at least one stride-2 layer (features=()).")
    x = x.astype(jnp.float32)
    for i, f in enumerate(self.features):
      x = nn.Conv(int(f), (4, 4), strides=(2, 2), padding="SAME")(x)
      if i > 0:
        x = nn.LayerNorm()(x)
      x = nn.leaky_relu(x, 0.2)
    return nn.Conv(1, (4, 4), padding="SAME", name="to_logits")(x)[..., 0]
