"""VQ-VAE (van den Oord et al. 2017): a conv encoder, a vector quantiser, a conv decoder (Linen only).

    model = VQVAE(image_shape=(28, 28, 1), levels=256, pad_to=32)   # Fashion-MNIST as 32x32
    out = model.apply(variables, image)                # VQVAEOutput(recon [B, H, W, C] in [-1, 1], vq)
    codes = model.apply(variables, image, method=model.codes)          # [B, h, w] int32
    recon = model.apply(variables, codes, method=model.decode_codes)   # [B, H, W, C] in [-1, 1]

Images enter as integer levels and are mapped to [-1, 1]; with `pad_to` > H they are padded with
-1 (the darkest level: Fashion-MNIST's background) to pad_to x pad_to, and every output is cropped
back to (H, W), so losses and likelihoods cover the dataset's own pixels only. Each of the
len(features) stride-2 stages halves the size: 32x32 with two stages gives 8x8 = 64 codes.
The decoder's output is the mean of a discretized logistic with one learned log-scale per channel
(`log_scale`), which gives log p(x | codes) in nats of the discrete data. Priors over the codes
(the GPT of experiments/vqvae.py) live outside this module.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gdl_jax.data.info import to_signed
from gdl_jax.nn.conv import ConvTranspose
from gdl_jax.nn.vq import VectorQuantizer, VQOutput
from gdl_jax.objectives.vae import discretized_logistic_log_prob


class VQVAEOutput(NamedTuple):
  recon: jax.Array   # [B, H, W, C] decoder mean in [-1, 1] (the dataset's size)
  vq: VQOutput       # quantiser output on the [B, h, w, D] encoder map


class ResidualStack(nn.Module):
  """van den Oord et al.'s residual blocks: x + conv1x1(relu(conv3x3(relu(x)))), then a ReLU."""

  num_blocks: int = 2
  hidden: int = 32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for _ in range(self.num_blocks):
      h = nn.Conv(self.hidden, (3, 3), padding="SAME")(nn.relu(x))
      x = x + nn.Conv(x.shape[-1], (1, 1))(nn.relu(h))
    return nn.relu(x)


class VQEncoder(nn.Module):
  """Stride-2 4x4 convs (one per entry of features) -> 3x3 conv -> residual stack -> 1x1 to code_dim."""

  code_dim: int
  features: Sequence[int] = (64, 128)
  res_blocks: int = 2
  res_hidden: int = 32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, P, P, C] in [-1, 1] -> [B, h, w, D]
    for f in self.features:
      x = nn.relu(nn.Conv(f, (4, 4), strides=(2, 2), padding="SAME")(x))
    x = nn.Conv(self.features[-1], (3, 3), padding="SAME")(x)
    x = ResidualStack(self.res_blocks, self.res_hidden)(x)
    return nn.Conv(self.code_dim, (1, 1), name="to_code")(x)


class VQDecoder(nn.Module):
  """3x3 conv -> residual stack -> stride-2 4x4 transposed convs (coarsest first) -> 3x3 to channels."""

  channels: int
  features: Sequence[int] = (128, 64)
  res_blocks: int = 2
  res_hidden: int = 32

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:  # [B, h, w, D] -> [B, P, P, C]
    x = nn.Conv(self.features[0], (3, 3), padding="SAME")(z)
    x = ResidualStack(self.res_blocks, self.res_hidden)(x)
    for f in self.features:
      x = nn.relu(ConvTranspose(f, (4, 4), strides=(2, 2), padding="SAME")(x))
    return nn.Conv(self.channels, (3, 3), padding="SAME", name="to_pixels")(x)


def check_geometry(image_shape: Sequence[int], pad_to: int, stages: int) -> tuple[int, int]:
  """The padded (height, width) after checking the stride-2 stages divide it; errors name the fix."""
  h, w = int(image_shape[0]), int(image_shape[1])
  if pad_to:
    if pad_to < max(h, w):
      raise ValueError(f"model.pad_to={pad_to} is smaller than the images ({h}x{w}); use 0 (no "
                       f"padding) or a size >= {max(h, w)}.")
    h = w = int(pad_to)
  if stages < 1 or h % 2 ** stages or w % 2 ** stages:
    raise ValueError(f"images of {h}x{w} (after padding) are not divisible by 2^len(features) = "
                     f"{2 ** stages}; set model.pad_to to a multiple of {2 ** stages} (e.g. 32 for "
                     "28x28) or use fewer model.features.")
  return h, w


class VQVAE(nn.Module):
  """Encoder -> VectorQuantizer -> decoder on integer-level images (see the module docstring)."""

  image_shape: tuple[int, int, int]
  levels: int
  pad_to: int = 0
  features: Sequence[int] = (64, 128)
  res_blocks: int = 2
  res_hidden: int = 32
  num_codes: int = 256
  code_dim: int = 32
  beta: float = 0.25
  ema: bool = True
  decay: float = 0.99
  eps: float = 1e-5
  dead_after: int = 0
  dead_threshold: float = 0.0

  def setup(self):
    self.padded_hw = check_geometry(self.image_shape, self.pad_to, len(self.features))
    self.encoder = VQEncoder(self.code_dim, tuple(self.features), self.res_blocks, self.res_hidden)
    self.quantizer = VectorQuantizer(self.num_codes, self.code_dim, self.beta, self.ema, self.decay,
                                     self.eps, self.dead_after, self.dead_threshold)
    self.decoder = VQDecoder(self.image_shape[2], tuple(reversed(self.features)), self.res_blocks,
                             self.res_hidden)
    self.log_scale = self.param("log_scale", nn.initializers.constant(-2.0), (self.image_shape[2],))

  @property
  def latent_shape(self) -> tuple[int, int]:
    """(h, w) of the code map."""
    h, w = check_geometry(self.image_shape, self.pad_to, len(self.features))
    return h // 2 ** len(self.features), w // 2 ** len(self.features)

  def _offsets(self) -> tuple[int, int]:
    (ph, pw), (h, w) = self.padded_hw, self.image_shape[:2]
    return (ph - h) // 2, (pw - w) // 2

  def model_input(self, image: jax.Array) -> jax.Array:
    """Integer levels [B, H, W, C] -> [-1, 1], padded with -1 to the padded size."""
    if tuple(image.shape[1:]) != tuple(self.image_shape):
      raise ValueError(f"VQVAE built for images {tuple(self.image_shape)}, got a batch of shape "
                       f"{image.shape}; build it from the dataset's info.shape.")
    x = to_signed(image, self.levels)
    (ph, pw), (h, w) = self.padded_hw, self.image_shape[:2]
    top, left = self._offsets()
    return jnp.pad(x, ((0, 0), (top, ph - h - top), (left, pw - w - left), (0, 0)),
                   constant_values=-1.0)

  def encode(self, image: jax.Array) -> jax.Array:
    """Integer levels -> encoder map [B, h, w, D] (before quantisation)."""
    return self.encoder(self.model_input(image))

  def decode(self, quantized: jax.Array) -> jax.Array:
    """Code vectors [B, h, w, D] -> decoder mean [B, H, W, C] in [-1, 1] (cropped)."""
    y = self.decoder(quantized)
    top, left = self._offsets()
    h, w = self.image_shape[:2]
    return y[:, top:top + h, left:left + w].astype(jnp.float32)

  def codes(self, image: jax.Array) -> jax.Array:
    """Integer levels -> code indices [B, h, w] int32."""
    return self.quantizer(self.encode(image)).indices

  def decode_codes(self, indices: jax.Array) -> jax.Array:
    """Code indices [B, h, w] -> decoder mean [B, H, W, C] in [-1, 1]."""
    return self.decode(self.quantizer.lookup(indices))

  def log_likelihood(self, image: jax.Array, recon: jax.Array) -> jax.Array:
    """log p(x | codes) [B] in nats: a discretized logistic(recon, exp(log_scale)) per pixel."""
    log_scale = jnp.maximum(self.log_scale, -7.0)                                # [C]
    lp = discretized_logistic_log_prob(image, recon, log_scale, self.levels)      # [B, H, W, C]
    return jnp.sum(lp.reshape(lp.shape[0], -1), axis=-1)

  def __call__(self, image: jax.Array, *, update: bool = False) -> VQVAEOutput:
    """Encode, quantise (update=True: EMA step, needs mutable 'vq' and a 'vq' rng), decode."""
    vq = self.quantizer(self.encode(image), update=update)
    return VQVAEOutput(self.decode(vq.quantized), vq)
