"""Chapter 3: convolutional autoencoder and variational autoencoder (Linen modules only).

Images enter as integer levels [B, H, W, C] and are mapped to [-1, 1] with `to_signed` inside
`encode`. The decoder returns the parameters of a per-pixel distribution (`PixelParams`); the
likelihoods themselves (Bernoulli, discretized logistic, Gaussian) live in
`gdl_jax.objectives.vae`, the samplers in `gdl_jax.samplers.vae`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gdl_jax.data.info import to_signed
from gdl_jax.nn.conv import ConvTranspose

LIKELIHOODS = ("bernoulli", "logistic", "gaussian")
MIN_LOG_SCALE = -7.0  # as PixelCNN++: keeps 1/scale finite


class Posterior(NamedTuple):
  """q(z|x) = N(mean, exp(logvar)); `logvar` is None for a deterministic encoder."""
  mean: jax.Array            # [B, Z]
  logvar: Optional[jax.Array]  # [B, Z]


class PixelParams(NamedTuple):
  """Per-pixel distribution parameters, mixture axis last: [B, H, W, C, K].

  bernoulli: loc = logits (K = 1). logistic: mixture of K discretized logistics (loc, log_scale,
  logit_probs). gaussian: loc, log_scale (K = 1). Unused fields are None.
  """
  loc: jax.Array
  log_scale: Optional[jax.Array] = None
  logit_probs: Optional[jax.Array] = None


class VAEOutput(NamedTuple):
  """One reparameterised pass: posterior, the latent drawn from it, and the decoder's pixels."""
  posterior: Posterior
  z: jax.Array               # [B, Z]
  pixels: PixelParams


class AEOutput(NamedTuple):
  """One deterministic pass: the code and the decoder's pixels."""
  z: jax.Array               # [B, Z]
  pixels: PixelParams


class Generated(NamedTuple):
  """Decoded prior draws: z ~ N(0, I) and the decoder's pixel distribution for each."""
  z: jax.Array               # [N, Z]
  pixels: PixelParams


def check_likelihood(likelihood: str, num_mixtures: int = 1) -> None:
  """Config-boundary check with the fix in the message."""
  if likelihood not in LIKELIHOODS:
    raise ValueError(f"model.likelihood={likelihood!r} is unknown; use one of {LIKELIHOODS}.")
  if num_mixtures < 1:
    raise ValueError(f"model.num_mixtures={num_mixtures} must be >= 1.")
  if likelihood != "logistic" and num_mixtures != 1:
    raise ValueError(f"model.num_mixtures={num_mixtures} needs likelihood='logistic' "
                     f"(got {likelihood!r}); set num_mixtures=1.")


def binarize(image: jax.Array, levels: int) -> jax.Array:
  """Integer levels -> {0, 1}: 1 where the pixel is above the middle level (int32)."""
  return (image.astype(jnp.float32) > (levels - 1) / 2.0).astype(jnp.int32)


class Encoder(nn.Module):
  """Strided 3x3 convs (one per stage, halving H and W) -> dense -> mean (and log-variance)."""

  latent_dim: int
  features: Sequence[int] = (32, 64)
  hidden: int = 256
  variational: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> Posterior:
    """x: [B, H, W, C] floats in [-1, 1]."""
    if x.ndim != 4:
      raise ValueError(f"Encoder expects images [B, H, W, C]; got shape {x.shape}.")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = x.astype(self.dtype)
    for f in self.features:
      h = nn.swish(nn.Conv(f, (3, 3), strides=(2, 2), padding="SAME", **kw)(h))  # [B, H/2, W/2, f]
      h = h + nn.swish(nn.Conv(f, (3, 3), padding="SAME", **kw)(h))            # residual refine
    h = h.reshape(h.shape[0], -1)                                                  # [B, h*w*f]
    h = nn.swish(nn.Dense(self.hidden, **kw)(h))                                  # [B, hidden]
    mean = nn.Dense(self.latent_dim, name="mean", **kw)(h).astype(jnp.float32)    # [B, Z]
    if not self.variational:
      return Posterior(mean, None)
    logvar = nn.Dense(self.latent_dim, name="logvar", **kw)(h).astype(jnp.float32)
    return Posterior(mean, logvar)


class Decoder(nn.Module):
  """Dense -> [h0, w0, F0] map -> stride-2 transposed convs -> crop to (H, W) -> pixel params.

  h0 = ceil(H / 2**len(features)), so any image size works (8x8, 28x28, 25x25, 32x32, ...).
  """

  image_shape: tuple[int, int, int]
  features: Sequence[int] = (64, 32)  # coarsest stage first
  hidden: int = 256
  likelihood: str = "logistic"
  num_mixtures: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array) -> PixelParams:
    """z: [B, Z] -> PixelParams with fields [B, H, W, C, K] (float32)."""
    check_likelihood(self.likelihood, self.num_mixtures)
    H, W, C = self.image_shape
    n = len(self.features)
    h0, w0 = math.ceil(H / 2 ** n), math.ceil(W / 2 ** n)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    B = z.shape[0]
    h = nn.swish(nn.Dense(self.hidden, **kw)(z.astype(self.dtype)))                 # [B, hidden]
    h = nn.swish(nn.Dense(h0 * w0 * self.features[0], **kw)(h))
    h = h.reshape(B, h0, w0, self.features[0])                                     # [B, h0, w0, F0]
    for f in self.features:
      h = nn.swish(ConvTranspose(f, (3, 3), strides=(2, 2), padding="SAME", **kw)(h))
      h = h + nn.swish(nn.Conv(f, (3, 3), padding="SAME", **kw)(h))
    h = h[:, :H, :W]                                                               # [B, H, W, F]
    K = self.num_mixtures
    per_channel = {"bernoulli": 1, "gaussian": 2, "logistic": 3 * K if K > 1 else 2}[self.likelihood]
    out = nn.Conv(C * per_channel, (3, 3), padding="SAME", name="pixels", **kw)(h)
    out = out.astype(jnp.float32).reshape(B, H, W, C, per_channel)               # [B, H, W, C, P]
    if self.likelihood == "bernoulli":
      return PixelParams(loc=out)
    if self.likelihood == "gaussian" or K == 1:
      log_scale = jnp.maximum(out[..., 1:2], MIN_LOG_SCALE)
      return PixelParams(loc=out[..., 0:1], log_scale=log_scale)
    loc, log_scale, logits = jnp.split(out, 3, axis=-1)                           # [B, H, W, C, K]
    return PixelParams(loc=loc, log_scale=jnp.maximum(log_scale, MIN_LOG_SCALE), logit_probs=logits)


class _ConvEncoderDecoder(nn.Module):
  """What the VAE and the autoencoder share: the conv encoder/decoder pair and the input check."""

  image_shape: tuple[int, int, int]
  levels: int
  latent_dim: int = 16
  features: Sequence[int] = (32, 64)
  hidden: int = 256
  likelihood: str = "logistic"
  num_mixtures: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  variational: ClassVar[bool] = True  # the encoder outputs (mean, logvar) rather than a code

  def setup(self):
    check_likelihood(self.likelihood, self.num_mixtures)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.encoder = Encoder(self.latent_dim, tuple(self.features), self.hidden, self.variational, **kw)
    self.decoder = Decoder(tuple(self.image_shape), tuple(reversed(self.features)), self.hidden,
                           self.likelihood, self.num_mixtures, **kw)

  def model_input(self, image: jax.Array) -> jax.Array:
    """Integer levels -> the encoder's input in [-1, 1] (binarized first for a Bernoulli decoder)."""
    if tuple(image.shape[1:]) != tuple(self.image_shape):
      raise ValueError(f"{type(self).__name__} built for images {tuple(self.image_shape)}, got batch "
                       f"{image.shape}; set model image_shape from the dataset's info.shape.")
    if self.likelihood == "bernoulli":
      return to_signed(binarize(image, self.levels), 2)
    return to_signed(image, self.levels)

  def encode(self, image: jax.Array) -> Posterior:
    """image: [B, H, W, C] integer levels -> q(z|x) (the AE: Posterior(mean=z, logvar=None))."""
    return self.encoder(self.model_input(image))

  def decode(self, z: jax.Array) -> PixelParams:
    """z: [B, Z] -> p(x|z) parameters."""
    return self.decoder(z)


class VAE(_ConvEncoderDecoder):
  """Variational autoencoder: q(z|x) = N(mean, diag var), p(z) = N(0, I), p(x|z) per pixel."""

  def sample(self, key: jax.Array, n: int) -> Generated:
    """n latents from the prior N(0, I), decoded."""
    z = jax.random.normal(key, (n, self.latent_dim), jnp.float32)
    return Generated(z, self.decode(z))

  def __call__(self, image: jax.Array, key: jax.Array) -> VAEOutput:
    """Reparameterised pass: z = mean + exp(logvar / 2) * eps, eps ~ N(0, I) drawn from `key`."""
    q = self.encode(image)
    eps = jax.random.normal(key, q.mean.shape, q.mean.dtype)
    z = q.mean + jnp.exp(0.5 * q.logvar) * eps
    return VAEOutput(q, z, self.decode(z))


class AutoEncoder(_ConvEncoderDecoder):
  """Deterministic autoencoder (the book's first model): z = encoder(x), x ~ p(x | decoder(z))."""

  latent_dim: int = 2
  variational: ClassVar[bool] = False

  def sample(self, key: jax.Array, n: int, mean: jax.Array, std: jax.Array) -> Generated:
    """Decode n codes drawn from N(mean, diag std^2): the AE has no prior, so the caller supplies a
    fit to the training codes (the book samples the embedding's bounding box)."""
    z = mean + std * jax.random.normal(key, (n, self.latent_dim), jnp.float32)
    return Generated(z, self.decode(z))

  def __call__(self, image: jax.Array) -> AEOutput:
    """Deterministic pass."""
    z = self.encode(image).mean
    return AEOutput(z, self.decode(z))
