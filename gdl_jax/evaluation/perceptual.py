"""Fréchet distance in ImageNet VGG16 features (an FID-like score that needs no classifier training).

    fn = vgg16_feature_fn(levels=256)            # images uint8 [B, H, W, 1|3] -> [B, 512] numpy
    fd = metrics.frechet_distance(fn(samples), fn(real))

Features: the global average (over pixels) of VGG16's relu5_3 activation, 512 numbers per image,
with torchvision's ImageNet weights (gdl_jax.nn.vgg, the `perceptual` extra). Every image is resized
to `size` x `size` (default 64; bilinear, antialiased when shrinking) first: a 32x32 CIFAR-sized
crop would reach relu5_3 as 2x2 pixels, 64x64 gives 4x4. Grey images are replicated to RGB. The
harness reports it as "fd_vgg16" beside the classifier FD for image datasets of at least 16x16
pixels with 1 or 3 channels (`vgg_fd_applies`), when the extra is installed.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from gdl_jax.data.info import DatasetInfo, to_signed

VGG_FD_KEY = "fd_vgg16"
VGG_FD_SIZE = 64
VGG_FD_TAP = "relu5_3"
VGG_FD_MIN_SIDE = 16


def vgg_fd_applies(info: DatasetInfo) -> bool:
  """True for discrete image datasets with 1 or 3 channels and sides >= 16 (not 8x8 digits)."""
  return (info.kind == "image" and info.levels is not None and len(info.shape) == 3
          and info.shape[-1] in (1, 3) and min(info.shape[:2]) >= VGG_FD_MIN_SIDE)


def _embed(params, x, *, size: int, levels: int):
  from gdl_jax.nn.vgg import VGG16Features
  y = to_signed(x, levels)                                           # [B, H, W, C] in [-1, 1]
  if y.shape[1:3] != (size, size):
    y = jax.image.resize(y, (y.shape[0], size, size, y.shape[3]), "bilinear", antialias=True)
  f = VGG16Features(taps=(VGG_FD_TAP,)).apply({"params": params}, y)[VGG_FD_TAP]
  return jnp.mean(f, axis=(1, 2))                                    # [B, 512]


_embed_jit = jax.jit(_embed, static_argnames=("size", "levels"))


def vgg16_feature_fn(levels: int, *, size: int = VGG_FD_SIZE, batch_size: int = 64,
                     params: Optional[dict] = None):
  """A harness FeatureFn: integer images [B, H, W, 1|3] (levels values) -> [B, 512] float64 numpy.

  Runs in fixed batches of `batch_size` (the last one padded) so one program is compiled.
  params: VGG16 params (default `load_vgg16_params()`, which raises with the install command when
  the `perceptual` extra is missing).
  """
  from gdl_jax.nn.vgg import load_vgg16_params
  if levels is None or int(levels) < 2:
    raise ValueError(f"levels must be the dataset's number of pixel levels (>= 2), got {levels}.")
  if size < VGG_FD_MIN_SIDE:
    raise ValueError(f"size={size} is too small for relu5_3; use at least {VGG_FD_MIN_SIDE}.")
  params = load_vgg16_params() if params is None else params

  def feature_fn(images) -> np.ndarray:
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
      raise ValueError(f"VGG16 features take images [B, H, W, 1 or 3], got shape {x.shape}.")
    out = []
    for start in range(0, len(x), batch_size):
      chunk = x[start:start + batch_size]
      n = len(chunk)
      if n < batch_size:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, axis=0)])
      out.append(np.asarray(_embed_jit(params, jnp.asarray(chunk), size=int(size),
                                       levels=int(levels)), np.float64)[:n])
    return np.concatenate(out) if out else np.zeros((0, 512))

  return feature_fn
