"""Invertible layers for RealNVP: masks, squeeze, actnorm and affine coupling.

Every layer is a Linen module `layer(x, reverse=False) -> (y, logdet [B])`: `reverse=False` maps
data -> latent with log|det dy/dx|, `reverse=True` maps latent -> data with log|det dx/dy| (so the
two log-dets of a round trip cancel). The affine maps are the elementwise `affine` below (the
same arithmetic as distrax's ScalarAffine inside Block / MaskedCoupling, without its dependency on a
nightly TensorFlow Probability); the modules hold their parameters.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def checkerboard_mask(height: int, width: int, parity: int) -> Array:
  """bool [H, W, 1]: True (kept, conditioned on) where (i + j) % 2 == parity."""
  ij = jnp.arange(height)[:, None] + jnp.arange(width)[None, :]  # [H, W]
  return (ij % 2 == parity)[:, :, None]


def channel_mask(channels: int, parity: int) -> Array:
  """bool [1, 1, C]: the first half of the channels kept for parity 0, the second half for 1."""
  if channels % 2:
    raise ValueError(f"a channel mask needs an even number of channels, got {channels}; "
                     "squeeze first (4x the channels) or use a checkerboard mask.")
  first = jnp.arange(channels) < channels // 2
  return (first if parity == 0 else ~first)[None, None, :]


def alternating_mask(dims: int, parity: int) -> Array:
  """bool [D]: every other coordinate of a vector kept (for the 2-D / tabular flows)."""
  return jnp.arange(dims) % 2 == parity


def squeeze(x: Array) -> Array:
  """[B, H, W, C] -> [B, H/2, W/2, 4C]: each 2x2 spatial block becomes 4 channels (a permutation)."""
  b, h, w, c = x.shape
  if h % 2 or w % 2:
    raise ValueError(f"squeeze needs even height and width, got {h}x{w}; use an image size "
                     "divisible by 2**(num_scales - 1) or fewer scales.")
  x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)  # [B, H/2, W/2, 2, 2, C]
  return x.reshape(b, h // 2, w // 2, 4 * c)


def unsqueeze(x: Array) -> Array:
  """[B, H, W, 4C] -> [B, 2H, 2W, C]: the inverse of `squeeze`."""
  b, h, w, c4 = x.shape
  c = c4 // 4
  x = x.reshape(b, h, w, 2, 2, c).transpose(0, 1, 3, 2, 4, 5)  # [B, H, 2, W, 2, C]
  return x.reshape(b, 2 * h, 2 * w, c)


class Squeeze(nn.Module):
  """`squeeze` as a flow layer (log-det 0: it only permutes)."""

  @nn.compact
  def __call__(self, x: Array, reverse: bool = False) -> tuple[Array, Array]:
    y = unsqueeze(x) if reverse else squeeze(x)
    return y, jnp.zeros(x.shape[:1], x.dtype)


def affine(x: Array, shift: Array, log_scale: Array, reverse: bool) -> tuple[Array, Array]:
  """Elementwise y = exp(log_scale) * x + shift and log|dy/dx| = log_scale (broadcast to the
  result's shape); reverse: x = exp(-log_scale) * (y - shift) and -log_scale."""
  shape = jnp.broadcast_shapes(jnp.shape(x), jnp.shape(shift), jnp.shape(log_scale))
  if reverse:
    return jnp.exp(-log_scale) * (x - shift), jnp.broadcast_to(-log_scale, shape)
  return jnp.exp(log_scale) * x + shift, jnp.broadcast_to(log_scale, shape)


def _sum_event(log_det: Array, event_ndims: int) -> Array:
  """Sums the last event_ndims axes (one log-det per example)."""
  return jnp.sum(log_det, axis=tuple(range(-event_ndims, 0))) if event_ndims else log_det


class ActNorm(nn.Module):
  """Per-channel y = x * exp(log_scale) + shift (Glow); data-dependent init to zero mean, unit variance.

  The first call of `init` (in the data -> latent direction) sets the parameters from the batch it
  sees, so the layer's output starts standardised per channel.
  """

  eps: float = 1e-6

  @nn.compact
  def __call__(self, x: Array, reverse: bool = False) -> tuple[Array, Array]:
    axes = tuple(range(x.ndim - 1))
    c = x.shape[-1]

    def init_log_scale(_, shape):
      return jnp.broadcast_to(-jnp.log(jnp.std(x, axis=axes) + self.eps), shape)

    def init_shift(_, shape):
      mean = jnp.mean(x, axis=axes)
      return jnp.broadcast_to(-mean / (jnp.std(x, axis=axes) + self.eps), shape)

    log_scale = self.param("log_scale", init_log_scale, (c,))  # [C]
    shift = self.param("shift", init_shift, (c,))  # [C]
    y, log_det = affine(x, shift, log_scale, reverse)
    return y, _sum_event(log_det, x.ndim - 1)


class MLP(nn.Module):
  """Conditioner for vectors: Dense -> act, repeated, then a zero-initialised Dense to `out`.

  out=None gives 2x the input features (a coupling's log-scale and shift).
  """

  hidden: Sequence[int]
  out: int | None = None
  act: Callable = nn.relu

  @nn.compact
  def __call__(self, x: Array) -> Array:
    out = self.out or 2 * x.shape[-1]
    for h in self.hidden:
      x = self.act(nn.Dense(h)(x))
    return nn.Dense(out, kernel_init=nn.initializers.zeros)(x)


class ConvNet(nn.Module):
  """Conditioner for images: 3x3 conv, residual blocks, zero-initialised 3x3 conv to `out` (None: 2C)."""

  features: int
  num_blocks: int
  out: int | None = None
  act: Callable = nn.relu

  @nn.compact
  def __call__(self, x: Array) -> Array:
    out = self.out or 2 * x.shape[-1]
    h = nn.Conv(self.features, (3, 3))(x)  # [B, H, W, F]
    for _ in range(self.num_blocks):
      r = nn.Conv(self.features, (3, 3))(self.act(h))
      r = nn.Conv(self.features, (1, 1))(self.act(r))
      h = h + r
    return nn.Conv(out, (3, 3), kernel_init=nn.initializers.zeros)(self.act(h))


class AffineCoupling(nn.Module):
  """RealNVP affine coupling: kept entries x_m stay, the others become x * exp(s(x_m)) + t(x_m).

  mask: "checkerboard" or "channel" for images [B, H, W, C], "alternating" for vectors [B, D].
  parity: which half is kept (alternate it between consecutive couplings).
  net: the conditioner, a module mapping x_m (same shape as x) to 2x its last axis (log-scale,
    shift); zero-initialised last layer makes the coupling start as the identity.
  log_s = s_scale * tanh(raw) keeps the scales bounded (as the book's tanh s-network does).
  """

  mask: str
  parity: int
  net: nn.Module

  def make_mask(self, shape: tuple[int, ...]) -> Array:
    if self.mask == "checkerboard":
      return checkerboard_mask(shape[-3], shape[-2], self.parity)
    if self.mask == "channel":
      return channel_mask(shape[-1], self.parity)
    if self.mask == "alternating":
      return alternating_mask(shape[-1], self.parity)
    raise ValueError(f"mask={self.mask!r} is unknown; use 'checkerboard', 'channel' or 'alternating'.")

  @nn.compact
  def __call__(self, x: Array, reverse: bool = False) -> tuple[Array, Array]:
    c = x.shape[-1]
    s_scale = self.param("s_scale", nn.initializers.ones, (c,))  # [C]
    s_scale = s_scale.reshape((1,) * (x.ndim - 1) + (c,))  # same rank as x (strict rank promotion)

    def conditioner(x_kept):
      raw = self.net(x_kept)  # [..., 2C]
      if raw.shape[-1] != 2 * c:
        raise ValueError(f"the coupling conditioner must output 2 * {c} = {2 * c} features "
                         f"(log-scale and shift), got {raw.shape[-1]}; set its `out` to {2 * c}.")
      log_s = s_scale * jnp.tanh(raw[..., :c])
      return log_s, raw[..., c:]

    mask = self.make_mask(x.shape)
    log_s, shift = conditioner(jnp.where(mask, x, 0.0))  # the kept entries only (same both ways)
    y, log_det = affine(x, shift, log_s, reverse)
    return jnp.where(mask, x, y), _sum_event(jnp.where(mask, 0.0, log_det), x.ndim - 1)
