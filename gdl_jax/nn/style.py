"""StyleGAN2's layers: equalised learning rate, modulated / demodulated convolution, resampling.

Equalised learning rate (Karras et al. 2018): a weight is stored as w ~ N(0, 1) / lr_mult and used
as w * lr_mult / sqrt(fan_in), so every layer's effective weight starts at He scale while the
optimizer (Adam is invariant to a parameter's scale) moves every layer at the same relative speed;
lr_mult < 1 (the mapping network's 0.01) slows a layer down by that factor. Biases are stored as
b / lr_mult and used times lr_mult (the effective bias starts at `bias_init`).

Modulated convolution (Karras et al. 2020, eq. 1-3): for example b with style s_b [Cin],
  w'_b[k, i, o]  = s_b[i] * w[k, i, o]                                   (modulation)
  w''_b[k, i, o] = w'_b[k, i, o] / sqrt(sum_{k, i} w'_b[k, i, o]^2 + eps)  (demodulation)
and y_b = conv(x_b, w''_b). Two equal ways to compute it (`fused`):
  fused=True   one grouped convolution with a per-example kernel (feature_group_count = B);
  fused=False  scale the input channels by s_b, one ordinary convolution with w, then scale the
               output channels by the demodulation coefficients (the official non-fused path).
Shapes are NHWC; kernels HWIO.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

SQRT2 = math.sqrt(2.0)


def lrelu(x: jax.Array) -> jax.Array:
  """LeakyReLU(0.2) times sqrt(2) (StyleGAN's gain that keeps unit second moments)."""
  return jax.nn.leaky_relu(x, 0.2) * SQRT2


def _conv(x: jax.Array, kernel: jax.Array, groups: int = 1) -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=groups)


def demodulation(kernel: jax.Array, styles: jax.Array, eps: float = 1e-8) -> jax.Array:
  """d[b, o] = 1 / sqrt(sum_{k, i} (styles[b, i] * kernel[..., i, o])^2 + eps); [B, Cout]."""
  sq = jnp.sum(jnp.square(kernel), axis=(0, 1))                                      # [Cin, Cout]
  return jax.lax.rsqrt(jnp.square(styles) @ sq + eps)                                # [B, Cout]


def modulated_conv(x: jax.Array, kernel: jax.Array, styles: jax.Array, *, demodulate: bool = True,
                   fused: bool = False, eps: float = 1e-8) -> jax.Array:
  """y_b = conv(x_b, kernel * styles_b (demodulated)): x [B, H, W, Cin], kernel [k, k, Cin, Cout],
  styles [B, Cin] -> [B, H, W, Cout] ('SAME' padding, stride 1)."""
  b, _, _, cin = x.shape
  if kernel.ndim != 4 or kernel.shape[2] != cin or styles.shape != (b, cin):
    raise ValueError(f"modulated_conv: x {x.shape}, kernel {kernel.shape} and styles {styles.shape} "
                     f"do not fit; need kernel [k, k, {cin}, Cout] and styles [{b}, {cin}].")
  cout = kernel.shape[-1]
  if not fused:
    y = _conv(x * styles[:, None, None, :], kernel)                                  # [B, H, W, Cout]
    return y * demodulation(kernel, styles, eps)[:, None, None, :] if demodulate else y
  w = kernel[None] * styles[:, None, None, :, None]                                  # [B, k, k, Cin, Cout]
  if demodulate:
    w = w * demodulation(kernel, styles, eps)[:, None, None, None, :]
  w = jnp.transpose(w, (1, 2, 3, 0, 4)).reshape(w.shape[1], w.shape[2], cin, b * cout)  # group g = example g
  xg = jnp.transpose(x, (1, 2, 0, 3)).reshape(1, x.shape[1], x.shape[2], b * cin)
  y = _conv(xg, w, groups=b)                                                          # [1, H, W, B*Cout]
  return jnp.transpose(y.reshape(y.shape[1], y.shape[2], b, cout), (2, 0, 1, 3))


def _up_axis(x: jax.Array, axis: int) -> jax.Array:
  prev = jnp.concatenate([jax.lax.slice_in_dim(x, 0, 1, axis=axis), jax.lax.slice_in_dim(x, 0, -1, axis=axis)], axis)
  nxt = jnp.concatenate([jax.lax.slice_in_dim(x, 1, None, axis=axis), jax.lax.slice_in_dim(x, -1, None, axis=axis)], axis)
  even, odd = 0.75 * x + 0.25 * prev, 0.75 * x + 0.25 * nxt
  y = jnp.stack([even, odd], axis=axis + 1)
  return y.reshape(x.shape[:axis] + (2 * x.shape[axis],) + x.shape[axis + 1:])


def upsample2x(x: jax.Array) -> jax.Array:
  """Bilinear 2x upsampling of [B, H, W, C] with half-pixel centres and replicated borders
  (out[2i] = 3/4 x[i] + 1/4 x[i-1], out[2i+1] = 3/4 x[i] + 1/4 x[i+1]): the official code's
  [1, 3, 3, 1] FIR upsampling filter, up to the border handling."""
  return _up_axis(_up_axis(x, 1), 2)


def downsample2x(x: jax.Array) -> jax.Array:
  """2x2 average pooling of [B, H, W, C] (H, W even)."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class EqualDense(nn.Module):
  """Dense layer with equalised learning rate: y = x @ (W * lr_mult / sqrt(fan_in)) + b * lr_mult."""

  features: int
  lr_mult: float = 1.0
  bias_init: float = 0.0
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = x.shape[-1]
    kernel = self.param("kernel", lambda k, s: jax.random.normal(k, s) / self.lr_mult, (fan_in, self.features))
    y = x @ (kernel * (self.lr_mult / math.sqrt(fan_in)))
    if self.use_bias:
      bias = self.param("bias", lambda k, s: jnp.full(s, self.bias_init / self.lr_mult, jnp.float32), (self.features,))
      y = y + bias * self.lr_mult
    return y


class EqualConv(nn.Module):
  """k x k 'SAME' convolution with equalised learning rate (scale 1 / sqrt(k * k * Cin))."""

  features: int
  kernel_size: int = 3
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, cin = self.kernel_size, x.shape[-1]
    kernel = self.param("kernel", nn.initializers.normal(1.0), (k, k, cin, self.features))
    y = _conv(x, kernel * (1.0 / math.sqrt(k * k * cin)))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,))
    return y


class ModulatedConv(nn.Module):
  """A style-modulated k x k convolution: styles = affine(w) (bias 1), then `modulated_conv` with the
  equalised kernel. x [B, H, W, Cin], w [B, W] -> [B, H, W, features] (no bias, no activation)."""

  features: int
  kernel_size: int = 3
  demodulate: bool = True
  fused: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, w: jax.Array) -> jax.Array:
    k, cin = self.kernel_size, x.shape[-1]
    styles = EqualDense(cin, bias_init=1.0, name="affine")(w)                          # [B, Cin]
    kernel = self.param("kernel", nn.initializers.normal(1.0), (k, k, cin, self.features))
    kernel = kernel * (1.0 / math.sqrt(k * k * cin))
    return modulated_conv(x, kernel, styles, demodulate=self.demodulate, fused=self.fused)


def minibatch_stddev(x: jax.Array, group_size: int = 4, num_channels: int = 1) -> jax.Array:
  """Appends `num_channels` feature maps holding the standard deviation of the features across
  groups of examples (Karras et al. 2018): [B, H, W, C] -> [B, H, W, C + num_channels].

  The group is the largest divisor of B not above group_size; example n is in group n % (B / G),
  as in the official code. Each new channel is that group's std averaged over H, W and the
  channel slice.
  """
  b, h, w, c = x.shape
  if c % num_channels:
    raise ValueError(f"minibatch_stddev: {c} channels do not split into {num_channels} groups.")
  g = max(d for d in range(1, min(group_size, b) + 1) if b % d == 0)
  y = x.reshape(g, b // g, h, w, num_channels, c // num_channels)
  y = jnp.sqrt(jnp.var(y, axis=0) + 1e-8)                                            # [B/G, H, W, F, C/F]
  y = y.mean(axis=(1, 2, 4))                                                         # [B/G, F]
  y = jnp.tile(y, (g, 1))                                                            # [B, F]
  return jnp.concatenate([x, jnp.broadcast_to(y[:, None, None, :], (b, h, w, num_channels))], axis=-1)
