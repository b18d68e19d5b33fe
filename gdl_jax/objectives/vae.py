"""Chapter 3 objectives: decoder likelihoods of discrete pixels, the (beta-)ELBO and the IWAE bound.

All log-likelihoods are in nats of the *discrete* data (integer levels 0..L-1):
  * bernoulli: exact log P of the binarized image (pixel > middle level);
  * logistic: exact log P under a (mixture of) discretized logistic(s), PixelCNN++ bins: level i
    sits at y_i = 2i/(L-1) - 1 with edges y_i +- 1/(L-1), the end bins extended to -inf / +inf;
  * gaussian: a continuous density on [-1, 1]; uniform dequantization over one bin (width
    w = 2/(L-1)) turns it into a lower bound on log P(x): log P(x) >= E_u log p(y + u) + D log w.
Randomness is always an explicit key.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from gdl_jax.data.info import to_signed
from gdl_jax.models.vae import PixelParams, Posterior, binarize

LOG_2PI = math.log(2.0 * math.pi)


# ---------------------------------------------------------------------------------------------
# Latent densities

def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, I)) in closed form, summed over the last axis: [..., Z] -> [...]."""
  return 0.5 * jnp.sum(jnp.exp(logvar) + mean ** 2 - 1.0 - logvar, axis=-1)


def diag_gaussian_log_prob(z: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """log N(z; mean, diag exp(logvar)) summed over the last axis."""
  return -0.5 * jnp.sum(LOG_2PI + logvar + (z - mean) ** 2 * jnp.exp(-logvar), axis=-1)


def standard_normal_log_prob(z: jax.Array) -> jax.Array:
  """log N(z; 0, I) summed over the last axis."""
  return -0.5 * jnp.sum(LOG_2PI + z ** 2, axis=-1)


# ---------------------------------------------------------------------------------------------
# Pixel likelihoods (elementwise, [B, H, W, C] -> [B, H, W, C])

def bernoulli_log_prob(x_bin: jax.Array, logits: jax.Array) -> jax.Array:
  """log Bernoulli(x_bin; sigmoid(logits)) elementwise; x_bin in {0, 1}."""
  return jnp.where(x_bin > 0, jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits))


def _log1mexp(x: jax.Array) -> jax.Array:
  """log(1 - exp(x)) for x < 0, accurate at both ends (Maechler 2012)."""
  x = jnp.minimum(x, -1e-30)
  return jnp.where(x > -math.log(2.0), jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def _log_sigmoid_diff(a: jax.Array, b: jax.Array) -> jax.Array:
  """log(sigmoid(a) - sigmoid(b)) for a > b, evaluated in whichever tail is accurate."""
  flip = (a + b) > 0  # both in the right tail: sigmoid(a) - sigmoid(b) = sigmoid(-b) - sigmoid(-a)
  hi, lo = jnp.where(flip, -b, a), jnp.where(flip, -a, b)
  log_hi, log_lo = jax.nn.log_sigmoid(hi), jax.nn.log_sigmoid(lo)
  return log_hi + _log1mexp(log_lo - log_hi)


def discretized_logistic_log_prob(x: jax.Array, loc: jax.Array, log_scale: jax.Array,
                                  levels: int) -> jax.Array:
  """log P(x) of integer levels x under a logistic(loc, exp(log_scale)) on [-1, 1], binned.

  Broadcasts x against loc/log_scale (e.g. x[..., None] against a mixture axis).
  """
  y = to_signed(x, levels)
  half = 1.0 / (levels - 1)
  inv_s = jnp.exp(-log_scale)
  plus = inv_s * (y - loc + half)   # upper bin edge, standardized
  minus = inv_s * (y - loc - half)  # lower bin edge
  first = jax.nn.log_sigmoid(plus)              # level 0: P(Y < y_0 + half)
  last = jax.nn.log_sigmoid(-minus)             # level L-1: P(Y > y_{L-1} - half)
  middle = _log_sigmoid_diff(plus, minus)
  return jnp.where(x <= 0, first, jnp.where(x >= levels - 1, last, middle))


def discretized_logistic_mixture_log_prob(x: jax.Array, pixels: PixelParams, levels: int) -> jax.Array:
  """log P(x) under the mixture over the last axis of `pixels` ([..., K]); x: [...] levels."""
  lp = discretized_logistic_log_prob(x[..., None], pixels.loc, pixels.log_scale, levels)  # [..., K]
  if pixels.logit_probs is None:
    return lp[..., 0]
  return jax.nn.logsumexp(lp + jax.nn.log_softmax(pixels.logit_probs, axis=-1), axis=-1)


def gaussian_log_prob(y: jax.Array, loc: jax.Array, log_scale: jax.Array) -> jax.Array:
  """log N(y; loc, exp(log_scale)^2) elementwise (a continuous density)."""
  return -0.5 * (LOG_2PI + ((y - loc) * jnp.exp(-log_scale)) ** 2) - log_scale


def dequantize(x: jax.Array, noise: jax.Array, levels: int) -> jax.Array:
  """Integer levels + uniform noise in [0, 1) -> points spread uniformly over each level's bin in [-1, 1]."""
  return to_signed(x, levels) + (noise - 0.5) * (2.0 / (levels - 1))


def dequantization_noise(key: jax.Array, shape) -> jax.Array:
  """Uniform [0, 1) noise of `shape` for `dequantize`."""
  return jax.random.uniform(key, shape, jnp.float32)


def log_likelihood(pixels: PixelParams, image: jax.Array, *, likelihood: str, levels: int,
                   noise: Optional[jax.Array] = None) -> jax.Array:
  """log p(x|z) per example, summed over [H, W, C] -> [B], in nats of the discrete data.

  likelihood 'gaussian' needs `noise` (uniform [0, 1), image's shape) and returns the dequantized
  bound log p(y|z) + D log w, a lower bound on log P(x|z) in expectation over the noise.
  """
  if likelihood == "bernoulli":
    lp = bernoulli_log_prob(binarize(image, levels), pixels.loc[..., 0])
  elif likelihood == "logistic":
    lp = discretized_logistic_mixture_log_prob(image, pixels, levels)
  elif likelihood == "gaussian":
    if noise is None:
      raise ValueError("likelihood='gaussian' is a continuous density: pass dequantization `noise` "
                       "(see dequantization_noise) so the result bounds the discrete log-likelihood.")
    y = dequantize(image, noise, levels)
    lp = gaussian_log_prob(y, pixels.loc[..., 0], pixels.log_scale[..., 0]) + math.log(2.0 / (levels - 1))
  else:
    raise ValueError(f"likelihood={likelihood!r} is unknown; use 'bernoulli', 'logistic' or 'gaussian'.")
  return jnp.sum(lp.reshape(lp.shape[0], -1), axis=-1)


# ---------------------------------------------------------------------------------------------
# Bounds

class ElboTerms(NamedTuple):
  """Per-example terms, [B] nats: elbo = log_px_z - beta * kl."""
  elbo: jax.Array
  log_px_z: jax.Array
  kl: jax.Array


def _apply(model, params, *args, method):
  return model.apply({"params": params}, *args, method=method)


def elbo(model, params, image: jax.Array, key: jax.Array, *, beta: float = 1.0,
         kl: str = "analytic") -> ElboTerms:
  """The beta-ELBO with one reparameterised sample z ~ q(z|x).

  kl='analytic' uses the closed-form Gaussian KL; kl='sample' uses the single-sample estimate
  log q(z|x) - log p(z) at the drawn z (then with beta=1 this equals `iwae(k=1)` for the same key).
  With beta=1 the ELBO is a lower bound on log P(x) (in expectation for the Gaussian decoder).
  """
  if kl not in ("analytic", "sample"):
    raise ValueError(f"kl={kl!r} is unknown; use 'analytic' or 'sample'.")
  key_z, key_x = jax.random.split(key)
  q: Posterior = _apply(model, params, image, method=model.encode)
  eps = jax.random.normal(key_z, q.mean.shape, q.mean.dtype)                     # [B, Z]
  z = q.mean + jnp.exp(0.5 * q.logvar) * eps
  pixels = _apply(model, params, z, method=model.decode)
  noise = dequantization_noise(key_x, image.shape) if model.likelihood == "gaussian" else None
  log_px_z = log_likelihood(pixels, image, likelihood=model.likelihood, levels=model.levels,
                            noise=noise)                                          # [B]
  if kl == "analytic":
    kl_term = gaussian_kl(q.mean, q.logvar)
  else:
    kl_term = diag_gaussian_log_prob(z, q.mean, q.logvar) - standard_normal_log_prob(z)
  return ElboTerms(log_px_z - beta * kl_term, log_px_z, kl_term)


def iwae(model, params, image: jax.Array, key: jax.Array, *, k: int,
         chunk: Optional[int] = None) -> jax.Array:
  """The importance-weighted bound log (1/k) sum_i p(x, z_i) / q(z_i|x), z_i ~ q(z|x): [B] nats.

  A lower bound on log P(x) that tightens as k grows (k=1 is the single-sample ELBO). The k
  decoder passes run `chunk` at a time (default: all at once) under lax.map to bound memory.
  """
  if k < 1:
    raise ValueError(f"iwae needs k >= 1 samples, got k={k}.")
  chunk = k if chunk is None else min(int(chunk), k)
  if k % chunk:
    raise ValueError(f"iwae: k={k} must be a multiple of chunk={chunk}; pick chunk dividing k.")
  key_z, key_x = jax.random.split(key)
  q: Posterior = _apply(model, params, image, method=model.encode)
  B = image.shape[0]
  eps = jax.random.normal(key_z, (k,) + q.mean.shape, q.mean.dtype)              # [k, B, Z]
  gaussian = model.likelihood == "gaussian"
  noise = dequantization_noise(key_x, (k,) + image.shape) if gaussian else jnp.zeros((k, 1))

  def log_weights(args):
    eps_c, noise_c = args                                                         # [c, B, Z]
    mean, logvar = q.mean[None], q.logvar[None]                                   # [1, B, Z]
    z = mean + jnp.exp(0.5 * logvar) * eps_c
    pixels = _apply(model, params, z.reshape((-1,) + z.shape[2:]), method=model.decode)
    img = jnp.broadcast_to(image, (chunk,) + image.shape).reshape((-1,) + image.shape[1:])
    nz = noise_c.reshape((-1,) + image.shape[1:]) if gaussian else None
    log_px_z = log_likelihood(pixels, img, likelihood=model.likelihood, levels=model.levels,
                              noise=nz).reshape(chunk, B)                         # [c, B]
    return log_px_z + standard_normal_log_prob(z) - diag_gaussian_log_prob(z, mean, logvar)

  groups = k // chunk
  eps_g = eps.reshape((groups, chunk) + eps.shape[1:])
  noise_g = noise.reshape((groups, chunk) + noise.shape[1:])
  log_w = jax.lax.map(log_weights, (eps_g, noise_g)).reshape(k, B)               # [k, B]
  return jax.nn.logsumexp(log_w, axis=0) - math.log(k)


# ---------------------------------------------------------------------------------------------
# Training losses: (loss, metrics) with loss in nats per dimension

def vae_loss(model, params, image: jax.Array, key: jax.Array, *, beta: float = 1.0,
             kl: str = "analytic") -> tuple[jax.Array, dict]:
  """-beta-ELBO per dimension, averaged over the batch; metrics in nats/example and bits/dim."""
  t = elbo(model, params, image, key, beta=beta, kl=kl)
  dims = math.prod(image.shape[1:])
  elbo_beta1 = t.log_px_z - t.kl
  metrics = {"elbo": jnp.mean(elbo_beta1), "recon": -jnp.mean(t.log_px_z), "kl": jnp.mean(t.kl),
             "elbo_bpd": -jnp.mean(elbo_beta1) / (dims * math.log(2.0))}
  return -jnp.mean(t.elbo) / dims, metrics


def autoencoder_loss(model, params, image: jax.Array, key: jax.Array) -> tuple[jax.Array, dict, jax.Array]:
  """Reconstruction NLL per dimension (the AE is not a density model) -> (loss, metrics, codes [B, Z])."""
  out = model.apply({"params": params}, image)
  noise = dequantization_noise(key, image.shape) if model.likelihood == "gaussian" else None
  log_px_z = log_likelihood(out.pixels, image, likelihood=model.likelihood, levels=model.levels,
                            noise=noise)
  dims = math.prod(image.shape[1:])
  nll = -jnp.mean(log_px_z)
  return nll / dims, {"recon": nll, "recon_bpd": nll / (dims * math.log(2.0))}, out.z
