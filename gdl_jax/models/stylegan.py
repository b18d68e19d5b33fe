"""StyleGAN2 (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN") as Linen
modules, called like the Chapter 4 GANs (`module(inputs, labels=None, *, train)`) so that the
two-player step in gdl_jax.objectives.gan_step trains them.

  StyleGAN2Generator      z [B, Z] -> images [B, R, R, C] in about [-1, 1] (no tanh, as in the paper)
    mapping   z -> pixel norm -> `mapping_layers` equalised Dense + lrelu (lr multiplier 0.01) -> w
    synthesis a learned constant [4, 4, C0]; per resolution 4, 8, ..., R: modulated 3x3 convs
              (bilinear 2x upsampling before the first conv of each block after 4x4), each followed
              by a noise input (one N(0, 1) map per example and layer, times a learned per-channel
              strength, initialised 0), a bias and lrelu; a 1x1 modulated (not demodulated) toRGB per
              resolution whose outputs are upsampled and summed (the "skip" generator).
    One w per style input: num_ws = 2 * blocks (blocks = log2(R) - 1). Block 0 (4x4) reads ws[0]
    (conv) and ws[1] (toRGB); block b >= 1 reads ws[2b - 1], ws[2b] (convs) and ws[2b + 1] (toRGB).
  StyleGAN2Discriminator  images [B, R, R, C] -> logits [B]: fromRGB (1x1), residual blocks
    (two 3x3 convs, the second after 2x2 average pooling, plus a pooled 1x1 skip; sum / sqrt 2),
    minibatch stddev at 4x4, a 3x3 conv, Dense, Dense -> 1. All layers have equalised lr.

Randomness (explicit Linen rng streams):
  "noise"   the per-layer noise maps (noise_mode="random"); noise_mode="const" uses maps drawn once
            from a fixed key (the same for every example and call); "none" leaves noise out.
            The default (None) is "random" when a "noise" rng is given, else "const".
  "mixing"  style-mixing regularisation in training (train=True and mixing_prob > 0): with
            probability mixing_prob an example's ws switch from w(z) to w(z2) at a crossover
            layer drawn uniformly from 1..num_ws - 1 (z2 fresh), per example.
The truncation trick: w' = w_avg + psi * (w - w_avg) (`truncate`), with w_avg passed in; the
experiment computes w_avg at sampling time as the mean of w over many z (see experiments/stylegan2.py).
"""

from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gdl_jax.nn.style import (SQRT2, EqualConv, EqualDense, ModulatedConv, downsample2x, lrelu,
                              minibatch_stddev, upsample2x)

NOISE_MODES = ("random", "const", "none")


def pixel_norm(z: jax.Array, eps: float = 1e-8) -> jax.Array:
  """z / sqrt(mean(z^2) + eps) over the last axis."""
  return z * jax.lax.rsqrt(jnp.mean(jnp.square(z), axis=-1, keepdims=True) + eps)


def mix_styles(w1: jax.Array, w2: jax.Array, crossover: jax.Array, num_ws: int) -> jax.Array:
  """ws [B, num_ws, W]: layer i reads w1 where i < crossover (per example [B] or one scalar), else w2."""
  crossover = jnp.broadcast_to(jnp.asarray(crossover), (w1.shape[0],))
  take_first = jnp.arange(num_ws)[None, :] < crossover[:, None]                      # [B, L]
  return jnp.where(take_first[..., None], w1[:, None, :], w2[:, None, :])


def truncate(ws: jax.Array, w_avg: jax.Array, psi) -> jax.Array:
  """The truncation trick: w_avg + psi * (ws - w_avg) (psi = 1 unchanged, 0 = w_avg for every z)."""
  return w_avg + psi * (ws - w_avg)


class MappingNetwork(nn.Module):
  """z [B, Z] -> w [B, w_dim]: pixel norm, then `num_layers` equalised Dense + lrelu."""

  w_dim: int
  num_layers: int = 8
  lr_mult: float = 0.01

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    x = pixel_norm(z)
    for i in range(self.num_layers):
      x = lrelu(EqualDense(self.w_dim, lr_mult=self.lr_mult, name=f"fc{i}")(x))
    return x


class SynthesisLayer(nn.Module):
  """Modulated 3x3 conv (optionally after 2x upsampling) + noise * strength + bias + lrelu."""

  features: int
  up: bool = False
  fused: bool = False
  layer_index: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, w: jax.Array, noise_mode: str) -> jax.Array:
    if self.up:
      x = upsample2x(x)
    x = ModulatedConv(self.features, 3, demodulate=True, fused=self.fused, name="conv")(x, w)
    b, h, wd, _ = x.shape
    strength = self.param("noise_strength", nn.initializers.zeros, (self.features,))
    if noise_mode == "random":
      noise = jax.random.normal(self.make_rng("noise"), (b, h, wd, 1))
    elif noise_mode == "const":
      noise = jnp.broadcast_to(jax.random.normal(jax.random.fold_in(jax.random.key(0), self.layer_index),
                                                 (1, h, wd, 1)), (b, h, wd, 1))
    else:
      noise = jnp.zeros((b, h, wd, 1), x.dtype)
    x = x + noise * strength
    return lrelu(x + self.param("bias", nn.initializers.zeros, (self.features,)))


class ToRGB(nn.Module):
  """1x1 modulated conv without demodulation, plus a bias (no activation)."""

  channels: int
  fused: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, w: jax.Array) -> jax.Array:
    y = ModulatedConv(self.channels, 1, demodulate=False, fused=self.fused, name="conv")(x, w)
    return y + self.param("bias", nn.initializers.zeros, (self.channels,))


def num_style_inputs(num_blocks: int) -> int:
  """The number of w inputs of a synthesis network with `num_blocks` resolutions (4, 8, ...)."""
  return 2 * num_blocks


class SynthesisNetwork(nn.Module):
  """ws [B, num_ws, W] -> images [B, R, R, C]; channels[i] = features at resolution 4 * 2^i."""

  channels: Sequence[int]
  img_channels: int
  fused: bool = False

  @property
  def num_ws(self) -> int:
    return num_style_inputs(len(self.channels))

  @nn.compact
  def __call__(self, ws: jax.Array, noise_mode: str = "const") -> jax.Array:
    if ws.ndim != 3 or ws.shape[1] != self.num_ws:
      raise ValueError(f"synthesis needs ws [B, {self.num_ws}, w_dim]; got {ws.shape}.")
    b = ws.shape[0]
    const = self.param("const", nn.initializers.normal(1.0), (4, 4, self.channels[0]))
    x = jnp.broadcast_to(const[None], (b,) + const.shape)
    x = SynthesisLayer(self.channels[0], fused=self.fused, layer_index=0, name="b4_conv")(x, ws[:, 0], noise_mode)
    img = ToRGB(self.img_channels, fused=self.fused, name="b4_torgb")(x, ws[:, 1])
    for i, c in enumerate(self.channels[1:], start=1):
      res = 4 * 2 ** i
      x = SynthesisLayer(c, up=True, fused=self.fused, layer_index=2 * i - 1, name=f"b{res}_conv0")(
          x, ws[:, 2 * i - 1], noise_mode)
      x = SynthesisLayer(c, fused=self.fused, layer_index=2 * i, name=f"b{res}_conv1")(x, ws[:, 2 * i], noise_mode)
      img = upsample2x(img) + ToRGB(self.img_channels, fused=self.fused, name=f"b{res}_torgb")(x, ws[:, 2 * i + 1])
    return img


class StyleGAN2Generator(nn.Module):
  """z [B, Z] (labels ignored: unconditional) -> images [B, R, R, C], R = 4 * 2^(len(channels) - 1).

  Methods for sampling code: `map_z(z) -> w [B, W]`, `synthesize(ws [B, num_ws, W], noise_mode)`.
  __call__(z, labels=None, *, train, psi=1.0, w_avg=None, noise_mode=None).
  """

  shape: tuple[int, int, int]
  latent_dim: int = 64
  w_dim: int = 64
  mapping_layers: int = 8
  channels: Sequence[int] = (64, 64, 64, 64)
  mapping_lr_mult: float = 0.01
  mixing_prob: float = 0.9
  fused: bool = False
  num_classes: int = 0  # the GAN step reads it; StyleGAN2 here is unconditional

  def setup(self):
    h, w, c = self.shape
    res = 4 * 2 ** (len(self.channels) - 1)
    if h != w or h != res:
      raise ValueError(f"StyleGAN2Generator with {len(self.channels)} channel entries makes {res}x{res} "
                       f"images, but the image shape is {tuple(self.shape)}; give one channel entry per "
                       "resolution 4, 8, ..., H (H a power of 2; pad smaller images).")
    if not 0.0 <= self.mixing_prob <= 1.0:
      raise ValueError(f"mixing_prob must be in [0, 1]; got {self.mixing_prob}.")
    self.mapping = MappingNetwork(self.w_dim, self.mapping_layers, self.mapping_lr_mult)
    self.synthesis = SynthesisNetwork(tuple(self.channels), c, fused=self.fused)

  @property
  def num_ws(self) -> int:
    return num_style_inputs(len(self.channels))

  def map_z(self, z: jax.Array) -> jax.Array:
    return self.mapping(z)

  def synthesize(self, ws: jax.Array, noise_mode: Optional[str] = None) -> jax.Array:
    if noise_mode is None:
      noise_mode = "random" if self.has_rng("noise") else "const"
    if noise_mode not in NOISE_MODES:
      raise ValueError(f"noise_mode={noise_mode!r} is unknown; use one of {NOISE_MODES}.")
    return self.synthesis(ws, noise_mode)

  def __call__(self, z: jax.Array, labels: Optional[jax.Array] = None, *, train: bool = False,
               psi: float = 1.0, w_avg: Optional[jax.Array] = None,
               noise_mode: Optional[str] = None) -> jax.Array:
    del labels
    if z.ndim != 2 or z.shape[-1] != self.latent_dim:
      raise ValueError(f"z must be [B, {self.latent_dim}]; got {z.shape}.")
    w = self.map_z(z)                                                                # [B, W]
    ws = jnp.broadcast_to(w[:, None, :], (w.shape[0], self.num_ws, w.shape[1]))       # [B, L, W]
    if train and self.mixing_prob > 0:
      if not self.has_rng("mixing"):
        raise ValueError("style mixing in training needs a 'mixing' rng (rngs={'mixing': key, 'noise': key}); "
                         "or set mixing_prob=0.")
      k_z, k_cut, k_use = jax.random.split(self.make_rng("mixing"), 3)
      w2 = self.map_z(jax.random.normal(k_z, z.shape, z.dtype))
      cut = jax.random.randint(k_cut, (z.shape[0],), 1, self.num_ws)
      cut = jnp.where(jax.random.uniform(k_use, (z.shape[0],)) < self.mixing_prob, cut, self.num_ws)
      ws = mix_styles(w, w2, cut, self.num_ws)
    if not (isinstance(psi, (int, float)) and psi == 1.0):
      if w_avg is None:
        raise ValueError("truncation (psi != 1) needs w_avg, the mean w (e.g. map_z of many z, averaged).")
      ws = truncate(ws, w_avg, psi)
    return self.synthesize(ws, noise_mode)


class StyleGAN2Discriminator(nn.Module):
  """images [B, R, R, C] (labels ignored) -> logits [B]; channels[i] = features at resolution
  R / 2^i (the last entry is the 4x4 epilogue's width)."""

  channels: Sequence[int] = (64, 64, 64, 64)
  mbstd_group: int = 4
  mbstd_channels: int = 1
  num_classes: int = 0
  norm: str = "none"  # the GAN step refuses gradient penalties on BatchNorm critics; none here

  @nn.compact
  def __call__(self, x: jax.Array, labels: Optional[jax.Array] = None, *, train: bool = False) -> jax.Array:
    del labels, train
    res = 4 * 2 ** (len(self.channels) - 1)
    if x.ndim != 4 or x.shape[1] != res or x.shape[2] != res:
      raise ValueError(f"StyleGAN2Discriminator with {len(self.channels)} channel entries reads "
                       f"[B, {res}, {res}, C] images; got {x.shape}.")
    h = lrelu(EqualConv(self.channels[0], 1, name="fromrgb")(x))
    for i in range(len(self.channels) - 1):
      r = res // 2 ** i
      skip = EqualConv(self.channels[i + 1], 1, use_bias=False, name=f"b{r}_skip")(downsample2x(h))
      h = lrelu(EqualConv(self.channels[i], 3, name=f"b{r}_conv0")(h))
      h = lrelu(EqualConv(self.channels[i + 1], 3, name=f"b{r}_conv1")(downsample2x(h)))
      h = (h + skip) / SQRT2
    if self.mbstd_group > 1:
      h = minibatch_stddev(h, self.mbstd_group, self.mbstd_channels)
    c = self.channels[-1]
    h = lrelu(EqualConv(c, 3, name="b4_conv")(h))
    h = lrelu(EqualDense(c, name="b4_fc")(h.reshape(h.shape[0], -1)))
    return EqualDense(1, name="b4_out")(h)[:, 0]
