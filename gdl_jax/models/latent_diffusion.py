"""Latent diffusion (Rombach et al. 2022, Stable Diffusion's recipe): the autoencoder of stage 1.

    ae = KLAutoencoder(image_shape=(8, 8, 1), levels=17, features=(32,), latent_channels=4)
    post = ae.apply(v, image, method=ae.encode)        # Posterior(mean, logvar), each [B, h, w, c]
    recon = ae.apply(v, z, method=ae.decode)           # [B, H, W, C] in ~[-1, 1]

A convolutional VAE with a *spatial* latent: the VQ-VAE's encoder/decoder stacks
(gdl_jax/models/vqvae.py: stride-2 convs + residual stacks; one stride-2 stage per entry of
`features`, so h = H / 2^len(features)) with a diagonal-Gaussian posterior in place of the
quantiser (the encoder's last 1x1 conv gives mean and log-variance, 2c channels). Stage 2 is the
project's U-Net denoiser (gdl_jax/models/diffusion.py) on the latents times a scale factor; the
losses are gdl_jax.objectives (vae.gaussian_kl, diffusion.diffusion_loss), combined in
experiments/latent_diffusion.py (MSE + kl_weight * KL, then the diffusion loss).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gdl_jax.data.info import to_signed
from gdl_jax.models.vae import Posterior
from gdl_jax.models.vqvae import VQDecoder, VQEncoder

LOGVAR_RANGE = (-30.0, 20.0)  # as the LDM's DiagonalGaussianDistribution


class KLOutput(NamedTuple):
  posterior: Posterior  # mean, logvar [B, h, w, c]
  z: jax.Array          # [B, h, w, c] a draw from the posterior
  recon: jax.Array      # [B, H, W, C] decoder output in ~[-1, 1]


def latent_geometry(image_shape: Sequence[int], stages: int) -> tuple[int, int]:
  """(h, w) of the latent for `stages` stride-2 stages; an error naming the fix if they do not divide."""
  H, W = int(image_shape[0]), int(image_shape[1])
  if stages < 1:
    raise ValueError(f"autoencoder.features={stages} stages: the autoencoder needs at least one "
                     "stride-2 stage (e.g. --config.autoencoder.features='(32,)').")
  f = 2 ** stages
  if H % f or W % f:
    raise ValueError(f"images of {H}x{W} are not divisible by 2^len(autoencoder.features) = {f}, "
                     f"so no latent of 1/{f} their side fits; use fewer stride-2 stages "
                     f"(len(autoencoder.features), e.g. --config.autoencoder.features='(32,)') or "
                     f"images whose sides are multiples of {f}.")
  return H // f, W // f


class KLAutoencoder(nn.Module):
  """Conv encoder -> N(mean, exp(logvar)) over a [h, w, latent_channels] map -> conv decoder."""

  image_shape: tuple[int, int, int]
  levels: int
  features: Sequence[int] = (32,)
  res_blocks: int = 1
  res_hidden: int = 32
  latent_channels: int = 4

  def setup(self):
    latent_geometry(self.image_shape, len(self.features))
    self.encoder = VQEncoder(2 * self.latent_channels, tuple(self.features), self.res_blocks,
                             self.res_hidden)
    self.decoder = VQDecoder(int(self.image_shape[-1]), tuple(reversed(self.features)),
                             self.res_blocks, self.res_hidden)

  @property
  def latent_shape(self) -> tuple[int, int, int]:
    h, w = latent_geometry(self.image_shape, len(self.features))
    return h, w, int(self.latent_channels)

  def encode(self, image: jax.Array) -> Posterior:
    """image: [B, H, W, C] integer levels -> q(z|x), mean and logvar [B, h, w, c]."""
    if tuple(image.shape[1:]) != tuple(self.image_shape):
      raise ValueError(f"KLAutoencoder built for images {tuple(self.image_shape)}, got batch "
                       f"{image.shape}; build it from the dataset's info.shape.")
    moments = self.encoder(to_signed(image, self.levels))
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return Posterior(mean, jnp.clip(logvar, *LOGVAR_RANGE))

  def decode(self, z: jax.Array) -> jax.Array:
    """z: [B, h, w, c] -> reconstruction [B, H, W, C] in ~[-1, 1] (unclipped)."""
    if tuple(z.shape[1:]) != self.latent_shape:
      raise ValueError(f"KLAutoencoder decodes latents {self.latent_shape}, got {z.shape}.")
    return self.decoder(z).astype(jnp.float32)

  def __call__(self, image: jax.Array, key: jax.Array) -> KLOutput:
    """Reparameterised pass: z = mean + exp(logvar / 2) * eps, eps from `key`."""
    post = self.encode(image)
    z = post.mean + jnp.exp(0.5 * post.logvar) * jax.random.normal(key, post.mean.shape)
    return KLOutput(post, z, self.decode(z))
