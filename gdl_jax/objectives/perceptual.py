"""Perceptual objectives on ImageNet VGG16 features: LPIPS, feature (content) loss, Gatys style loss,
and total variation. Pure functions: differentiable in the images, jit/vmap-able.

    lp = load_lpips_params()                     # once per process (cached): {"vgg", "lin"}
    d = lpips(lp, x, y)                          # [B] LPIPS(VGG) distances, x, y in [-1, 1]
    vgg = load_vgg16_params()
    c = perceptual_loss(vgg, x, y)               # [B] mean squared relu3_3 feature difference
    s = style_loss(vgg, x, style_image)          # [B] Gram-matrix distance (style [1 or B, ...])
    tv = total_variation(x)                      # [B]

Images are NHWC in [-1, 1] (the toolkit's convention and LPIPS's), RGB or grey [..., 1] (replicated);
at least 16x16 for the relu5_3 tap of LPIPS. Every function returns one value per example [B];
take `.mean()` for a scalar loss. Pass the params as arguments of your jitted step (not closed over),
so the 58 MB of weights are not baked into the compiled program as constants.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

from gdl_jax.nn.vgg import (LPIPS_TAPS, VGG16Features, load_lpips_params, load_vgg16_params)

__all__ = ["lpips", "perceptual_loss", "style_loss", "gram_matrix", "total_variation",
           "load_lpips_params", "load_vgg16_params", "CONTENT_LAYERS", "STYLE_LAYERS"]

CONTENT_LAYERS = ("relu3_3",)                                  # Johnson et al. 2016's content layer
STYLE_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")    # Johnson et al. 2016's style layers


def _check_pair(x: jax.Array, y: jax.Array, what: str) -> None:
  if x.ndim != 4 or y.ndim != 4:
    raise ValueError(f"{what} takes NHWC image batches, got shapes {x.shape} and {y.shape}.")
  if x.shape[1:] != y.shape[1:] or (x.shape[0] != y.shape[0] and 1 not in (x.shape[0], y.shape[0])):
    raise ValueError(f"{what}: image shapes {x.shape} and {y.shape} differ; pass two batches of "
                     "the same image shape (a batch of one broadcasts).")


def _features(vgg_params: Mapping, x: jax.Array, taps: Sequence[str]) -> dict:
  return VGG16Features(taps=tuple(taps)).apply({"params": vgg_params}, x)


def _unit_normalize(f: jax.Array, eps: float = 1e-10) -> jax.Array:
  """f / (|f|_2 over channels + eps), LPIPS's normalisation, with a finite gradient at f = 0.

  sqrt has an infinite derivative at 0 (ReLU features are often all zero at a pixel): the
  double-where keeps the value exact and the gradient finite.
  """
  sq = jnp.sum(jnp.square(f), axis=-1, keepdims=True)
  pos = sq > 0
  norm = jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)
  return f / (norm + eps)


def lpips(params: Mapping, x: jax.Array, y: jax.Array) -> jax.Array:
  """LPIPS(VGG16) distance per example [B] between image batches x, y [B, H, W, C] in [-1, 1].

  d(x, y) = sum over the taps l of mean over pixels of sum_c w_lc (u_l(x) - u_l(y))_c^2, where
  u_l = unit-normalised (over channels) VGG16 activation at tap l (relu1_2 ... relu5_3) and w_l
  the learned non-negative LPIPS weights (Zhang et al. 2018, v0.1, the eval form without dropout).
  params: `load_lpips_params()`. d(x, x) = 0, symmetric, differentiable in x and y.
  """
  _check_pair(x, y, "lpips")
  fx = _features(params["vgg"], x, LPIPS_TAPS)                 # a batch of one broadcasts
  fy = _features(params["vgg"], y, LPIPS_TAPS)
  total = jnp.zeros((max(x.shape[0], y.shape[0]),), jnp.float32)
  for tap in LPIPS_TAPS:
    ux = _unit_normalize(fx[tap].astype(jnp.float32))
    uy = _unit_normalize(fy[tap].astype(jnp.float32))
    diff = jnp.square(ux - uy)                                   # [B, h, w, C]
    total = total + jnp.mean(diff @ params["lin"][tap].astype(jnp.float32), axis=(1, 2))
  return total


def perceptual_loss(vgg_params: Mapping, x: jax.Array, y: jax.Array,
                    layers: Sequence[str] = CONTENT_LAYERS,
                    weights: Optional[Sequence[float]] = None) -> jax.Array:
  """Feature (content) loss per example [B]: sum_l weight_l * mean((phi_l(x) - phi_l(y))^2).

  phi_l = VGG16 activation at layer l (any of `LAYER_NAMES`; default relu3_3, as Johnson et al.),
  the mean over that layer's h*w*C entries. vgg_params: `load_vgg16_params()`. y may be [1, ...].
  """
  _check_pair(x, y, "perceptual_loss")
  layers = tuple(layers)
  weights = _weights(layers, weights)
  fx = _features(vgg_params, x, layers)
  fy = _features(vgg_params, y, layers)
  return sum(w * jnp.mean(jnp.square(fx[l] - fy[l]).astype(jnp.float32), axis=(1, 2, 3))
             for l, w in zip(layers, weights))


def gram_matrix(features: jax.Array) -> jax.Array:
  """Gram matrix per example: F [B, H, W, C] -> F^T F / (H W C) [B, C, C] (Johnson et al.'s scale)."""
  if features.ndim != 4:
    raise ValueError(f"gram_matrix takes NHWC features [B, H, W, C], got shape {features.shape}.")
  b, h, w, c = features.shape
  f = features.reshape(b, h * w, c).astype(jnp.float32)
  return jnp.einsum("bpi,bpj->bij", f, f, precision=jax.lax.Precision.HIGHEST) / (h * w * c)


def style_loss(vgg_params: Mapping, x: jax.Array, style: jax.Array,
               layers: Sequence[str] = STYLE_LAYERS,
               weights: Optional[Sequence[float]] = None) -> jax.Array:
  """Gatys style loss per example [B]: sum_l weight_l * ||G_l(x) - G_l(style)||_F^2.

  G_l = `gram_matrix` of the VGG16 activation at layer l (default relu1_2, relu2_2, relu3_3,
  relu4_3). style [1, H', W', C] (one style image for the batch) or [B, H', W', C]; its size may
  differ from x's (Gram matrices are C x C whatever the size).
  """
  if x.ndim != 4 or style.ndim != 4 or style.shape[0] not in (1, x.shape[0]):
    raise ValueError(f"style_loss: x {x.shape} and style {style.shape} must be NHWC batches with "
                     "style's batch 1 or x's.")
  layers = tuple(layers)
  weights = _weights(layers, weights)
  fx = _features(vgg_params, x, layers)
  fs = _features(vgg_params, style, layers)
  return sum(w * jnp.sum(jnp.square(gram_matrix(fx[l]) - gram_matrix(fs[l])), axis=(1, 2))
             for l, w in zip(layers, weights))


def total_variation(x: jax.Array, power: float = 1.0) -> jax.Array:
  """Anisotropic total variation per example [B]: sum |x[i+1, j] - x[i, j]|^p + |x[i, j+1] - x[i, j]|^p
  over pixels and channels (p = 1: tf.image.total_variation; p = 2: the squared form; p >= 1 keeps
  the gradient finite where neighbours are equal)."""
  if x.ndim != 4:
    raise ValueError(f"total_variation takes NHWC images [B, H, W, C], got shape {x.shape}.")
  dh = jnp.abs(x[:, 1:] - x[:, :-1])
  dw = jnp.abs(x[:, :, 1:] - x[:, :, :-1])
  return jnp.sum(dh ** power, axis=(1, 2, 3)) + jnp.sum(dw ** power, axis=(1, 2, 3))


def _weights(layers: tuple, weights) -> tuple:
  if not layers:
    raise ValueError("pass at least one VGG16 layer name.")
  if weights is None:
    return (1.0,) * len(layers)
  weights = tuple(weights)
  if len(weights) != len(layers):
    raise ValueError(f"{len(weights)} weights for {len(layers)} layers {layers}; pass one per layer.")
  return weights
