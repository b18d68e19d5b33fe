"""Johnson et al. (2016)'s feed-forward style network: one pass turns a photo into the painting.

    net = TransformNet(features=(32, 64, 128), num_res=5)
    params = net.init(key, x)["params"]
    y = net.apply({"params": params}, x)          # x, y [B, H, W, 3] in [-1, 1], same size

Layout (Johnson et al.'s, with Ulyanov et al.'s instance norm and the resize-convolution upsampling
of Odena et al. that avoids checkerboard artefacts): reflection-padded 9x9 conv -> two stride-2 3x3
convs (downsampling 4x) -> `num_res` residual blocks (two 3x3 convs each) -> two nearest-neighbour
2x upsamplings each followed by a 3x3 conv -> 9x9 conv to 3 channels -> tanh. Every conv but the
last is followed by instance normalisation (per image and channel, with a learned scale and bias)
and a ReLU. Fully convolutional: any H, W that are multiples of 4 keep their size; others are
padded (reflection) up to one and cropped back; at least MIN_SIZE (8) pixels a side.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


MIN_SIZE = 8  # the 9x9 convolutions reflect-pad by 4 pixels, which needs a side of 5 or more


def _reflect(x: jax.Array, pad: int) -> jax.Array:
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect") if pad else x


class ConvIN(nn.Module):
  """Reflection pad, conv (stride `strides`), instance norm, optional ReLU."""

  features: int
  kernel: int
  strides: int = 1
  relu: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(self.features, (self.kernel, self.kernel), strides=self.strides, padding="VALID",
                dtype=self.dtype)(_reflect(x, self.kernel // 2))
    x = nn.InstanceNorm(dtype=self.dtype)(x)
    return nn.relu(x) if self.relu else x


class ResidualBlock(nn.Module):
  """x + IN(conv(ReLU(IN(conv(x))))), Johnson et al.'s block (no ReLU after the sum)."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = ConvIN(self.features, 3, dtype=self.dtype)(x)
    return x + ConvIN(self.features, 3, relu=False, dtype=self.dtype)(h)


class TransformNet(nn.Module):
  """Image [B, H, W, 3] in [-1, 1] -> stylised image of the same shape in [-1, 1]."""

  features: Sequence[int] = (32, 64, 128)
  num_res: int = 5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if len(self.features) != 3 or min(self.features) < 1:
      raise ValueError(f"TransformNet features={tuple(self.features)}: pass three positive widths "
                       "(full resolution, 1/2, 1/4), e.g. (32, 64, 128).")
    if self.num_res < 0:
      raise ValueError(f"TransformNet num_res={self.num_res} must be >= 0.")
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or min(x.shape[1:3]) < MIN_SIZE:
      raise ValueError(f"TransformNet takes NHWC images of at least {MIN_SIZE}x{MIN_SIZE} with 3 "
                       f"(or 1, replicated) channels, got shape {x.shape}.")
    if x.shape[-1] == 1:
      x = jnp.repeat(x, 3, axis=-1)
    b, h, w, _ = x.shape
    ph, pw = -h % 4, -w % 4
    if ph or pw:
      x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="reflect")
    f1, f2, f3 = self.features
    y = ConvIN(f1, 9, dtype=self.dtype)(x.astype(self.dtype))
    y = ConvIN(f2, 3, strides=2, dtype=self.dtype)(y)
    y = ConvIN(f3, 3, strides=2, dtype=self.dtype)(y)
    for _ in range(self.num_res):
      y = ResidualBlock(f3, dtype=self.dtype)(y)
    for f in (f2, f1):
      n, hh, ww, c = y.shape
      y = jax.image.resize(y, (n, 2 * hh, 2 * ww, c), "nearest")
      y = ConvIN(f, 3, dtype=self.dtype)(y)
    y = nn.Conv(3, (9, 9), padding="VALID", dtype=self.dtype)(_reflect(y, 4))
    return jnp.tanh(y.astype(jnp.float32))[:, :h, :w]
