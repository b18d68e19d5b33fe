"""Chapter 3 samplers and latent-space tools: pixels from p(x|z), prior samples, reconstructions,
latent arithmetic, morphing and the 2-D latent grid. All return integer levels [N, H, W, C]."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from gdl_jax.data.info import from_signed
from gdl_jax.models.vae import PixelParams

MODES = ("mean", "sample")


def _check_mode(mode: str) -> None:
  if mode not in MODES:
    raise ValueError(f"mode={mode!r} is unknown; use 'mean' (the decoder's mean image, as the book "
                     "shows) or 'sample' (a draw from p(x|z), pixel noise included).")


def pixel_mean(pixels: PixelParams, *, likelihood: str, levels: int) -> jax.Array:
  """The mean of p(x|z) mapped to the nearest level: [B, H, W, C] int32."""
  if likelihood == "bernoulli":
    p = jax.nn.sigmoid(pixels.loc[..., 0])
    return jnp.round(p * (levels - 1)).astype(jnp.int32)
  loc = pixels.loc
  if pixels.logit_probs is not None:
    y = jnp.sum(jax.nn.softmax(pixels.logit_probs, axis=-1) * loc, axis=-1)
  else:
    y = loc[..., 0]
  return from_signed(y, levels)


def pixel_sample(pixels: PixelParams, key: jax.Array, *, likelihood: str, levels: int) -> jax.Array:
  """One draw from p(x|z) as integer levels [B, H, W, C] (Bernoulli draws land on 0 / levels-1)."""
  if likelihood == "bernoulli":
    on = jax.random.bernoulli(key, jax.nn.sigmoid(pixels.loc[..., 0]))
    return jnp.where(on, levels - 1, 0).astype(jnp.int32)
  key_c, key_u = jax.random.split(key)
  loc, log_scale = pixels.loc, pixels.log_scale                                   # [B, H, W, C, K]
  if pixels.logit_probs is not None:
    comp = jax.random.categorical(key_c, pixels.logit_probs, axis=-1)             # [B, H, W, C]
    pick = jax.nn.one_hot(comp, loc.shape[-1], dtype=loc.dtype)
    loc, log_scale = jnp.sum(loc * pick, -1), jnp.sum(log_scale * pick, -1)
  else:
    loc, log_scale = loc[..., 0], log_scale[..., 0]
  if likelihood == "logistic":
    noise = jax.random.logistic(key_u, loc.shape, loc.dtype)
  else:
    noise = jax.random.normal(key_u, loc.shape, loc.dtype)
  # The nearest level is exactly the bin (edges +-1/(L-1), end bins open) the continuous draw fell in.
  return from_signed(loc + jnp.exp(log_scale) * noise, levels)


def to_levels(model, pixels: PixelParams, key: Optional[jax.Array], mode: str) -> jax.Array:
  """Decoder output -> integer levels by `mode` ('mean' or 'sample', the latter needs a key)."""
  _check_mode(mode)
  if mode == "mean":
    return pixel_mean(pixels, likelihood=model.likelihood, levels=model.levels)
  if key is None:
    raise ValueError("mode='sample' needs a key.")
  return pixel_sample(pixels, key, likelihood=model.likelihood, levels=model.levels)


def _apply(model, params, *args, method, **kw):
  return model.apply({"params": params}, *args, method=method, **kw)


def encode_mean(model, params, image: jax.Array) -> jax.Array:
  """The posterior mean (VAE) or code (AE) of each image: [B, Z]."""
  return _apply(model, params, image, method=model.encode).mean


def decode(model, params, z: jax.Array, key: Optional[jax.Array] = None, mode: str = "mean") -> jax.Array:
  """Latents [N, Z] -> integer images [N, H, W, C]."""
  return to_levels(model, _apply(model, params, z, method=model.decode), key, mode)


def sample_prior(model, params, key: jax.Array, n: int, mode: str = "mean") -> jax.Array:
  """n images from the VAE: z ~ N(0, I), then the decoder's mean (or a draw): [n, H, W, C]."""
  key_z, key_x = jax.random.split(key)
  gen = _apply(model, params, key_z, n, method=model.sample)
  return to_levels(model, gen.pixels, key_x, mode)


def reconstruct(model, params, image: jax.Array, key: Optional[jax.Array] = None,
                mode: str = "mean") -> jax.Array:
  """Decode each image's posterior mean: [B, H, W, C] levels."""
  return decode(model, params, encode_mean(model, params, image), key, mode)


def attribute_vector(z: jax.Array, has_attribute: jax.Array) -> jax.Array:
  """The book's feature vector: mean latent of the examples with the attribute minus the rest: [Z]."""
  m = has_attribute.astype(z.dtype)[:, None]                                      # [N, 1]
  n_pos, n_neg = jnp.sum(m), jnp.sum(1.0 - m)
  return jnp.sum(z * m, 0) / jnp.maximum(n_pos, 1.0) - jnp.sum(z * (1.0 - m), 0) / jnp.maximum(n_neg, 1.0)


def latent_arithmetic(model, params, image: jax.Array, vector: jax.Array,
                      alphas: jax.Array) -> jax.Array:
  """Decode z(x) + alpha * vector for each image and alpha: [B, A, H, W, C] (rows: images)."""
  z = encode_mean(model, params, image)                                           # [B, Z]
  zs = z[:, None, :] + alphas[None, :, None] * vector[None, None, :]              # [B, A, Z]
  out = decode(model, params, zs.reshape(-1, z.shape[-1]))
  return out.reshape(zs.shape[:2] + out.shape[1:])


def morph(model, params, image_a: jax.Array, image_b: jax.Array, steps: int) -> jax.Array:
  """Linear interpolation in latent space between pairs of images: [B, steps, H, W, C]."""
  za, zb = encode_mean(model, params, image_a), encode_mean(model, params, image_b)  # [B, Z]
  t = jnp.linspace(0.0, 1.0, steps)[None, :, None]                               # [1, S, 1]
  zs = (1.0 - t) * za[:, None] + t * zb[:, None]                                  # [B, S, Z]
  out = decode(model, params, zs.reshape(-1, za.shape[-1]))
  return out.reshape(zs.shape[:2] + out.shape[1:])


def latent_grid_2d(model, params, n: int, extent: float = 2.0) -> jax.Array:
  """For a 2-D latent: decode an n x n grid over [-extent, extent]^2: [n, n, H, W, C] (row: z2 high->low)."""
  if model.latent_dim != 2:
    raise ValueError(f"latent_grid_2d needs latent_dim=2, the model has {model.latent_dim}.")
  ticks = jnp.linspace(-extent, extent, n)
  z1, z2 = jnp.meshgrid(ticks, ticks[::-1])                                        # [n, n]
  zs = jnp.stack([z1, z2], -1).reshape(-1, 2)
  out = decode(model, params, zs)
  return out.reshape((n, n) + out.shape[1:])


def project_2d(z: np.ndarray) -> tuple[np.ndarray, str]:
  """Latents [N, Z] -> [N, 2] for a scatter: as is when Z == 2, else the first two principal axes."""
  z = np.asarray(z, np.float64)
  if z.shape[1] == 2:
    return z, "z"
  zc = z - z.mean(0)
  _, _, vt = np.linalg.svd(zc, full_matrices=False)
  return zc @ vt[:2].T, "PCA of z"
