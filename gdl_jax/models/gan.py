"""Chapter 4 GANs: generator / critic pairs (DCGAN, WGAN, WGAN-GP, conditional GAN) as Linen modules.

Every module is called as `module(inputs, labels=None, *, train)`:
  Generator      z [B, Z] (+ labels [B]) -> images [B, H, W, C] in [-1, 1] (tanh)
  Discriminator  images [B, H, W, C] in [-1, 1] (+ labels [B]) -> logits / critic scores [B]
  MLPGenerator / MLPDiscriminator: the same for points [B, D] (toy 2-D problems).

The one family covers the chapter's variants through fields:
  DCGAN       Generator(norm="batch") + Discriminator(norm="batch")     (non-saturating loss)
  WGAN        Generator(norm="batch") + Discriminator(norm="none")      (weight clipping)
  WGAN-GP     Generator(norm="batch") + Discriminator(norm="none"|"layer") (gradient penalty; the book
              and Gulrajani et al.'s DCGAN-style critic use no norm, the paper suggests LayerNorm;
              BatchNorm is refused there because it couples the examples of a batch)
  CGAN        num_classes > 0 on both: the label enters the generator concatenated to z and the critic
              as extra channels broadcast over H x W (one-hot, or a learned embedding if label_dim > 0).
  AC-GAN      conditional generator + Discriminator(num_classes=0, aux_classes=K): the critic does not
              see the label; a second Dense head on its features gives class logits [B, K]
              (`with_aux=True`), trained by cross-entropy (Odena et al. 2017; the conditional CIFAR-10
              model of Gulrajani et al.'s WGAN-GP paper adds it to a WGAN-GP).
The generator starts from a Dense projection to [H / 2^n, W / 2^n, features[0]] (n = len(features)),
so 8x8, 28x28 and 32x32 images all work (the book's 1x1 -> 4x4 transposed conv needs powers of 2).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gdl_jax.nn.conv import Conv, ConvTranspose
from gdl_jax.nn.norm import BatchNorm

Dtype = Any
NORMS = ("batch", "layer", "none")


def _kernel_init(std: float):
  """DCGAN's N(0, std) weights; std=0 falls back to Flax's default (LeCun normal)."""
  return nn.initializers.normal(std) if std else nn.linear.default_kernel_init


def _at_least_f32(x: jax.Array) -> jax.Array:
  """Outputs in float32 even when computing in bfloat16 (float64 stays float64 under x64)."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _check_norm(norm: str) -> None:
  if norm not in NORMS:
    raise ValueError(f"norm={norm!r} is unknown; use one of {NORMS}.")


def _label_features(labels: Optional[jax.Array], num_classes: int, label_dim: int, dtype: Dtype,
                    param_dtype: Dtype, name: str) -> jax.Array:
  """labels [B] int -> [B, K] one-hot (label_dim=0) or a learned [B, label_dim] embedding."""
  if labels is None:
    raise ValueError(f"this module is conditional (num_classes={num_classes}): pass labels [B].")
  if label_dim:
    return nn.Embed(num_classes, label_dim, dtype=dtype, param_dtype=param_dtype, name=name)(labels)
  return jax.nn.one_hot(labels, num_classes, dtype=dtype or jnp.float32)


class _Norm(nn.Module):
  """BatchNorm (running averages in `batch_stats`), LayerNorm over all non-batch axes, or nothing."""

  kind: str
  momentum: float = 0.9
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    if self.kind == "batch":
      return BatchNorm(use_running_average=not train, momentum=self.momentum, dtype=self.dtype,
                       param_dtype=self.param_dtype)(x)
    if self.kind == "layer":
      return nn.LayerNorm(reduction_axes=tuple(range(1, x.ndim)), feature_axes=-1, dtype=self.dtype,
                          param_dtype=self.param_dtype)(x)
    return x


class Generator(nn.Module):
  """z [B, Z] (+ labels [B]) -> images [B, H, W, C] in [-1, 1].

  Dense -> [H/2^n, W/2^n, features[0]], then n stride-2 transposed convs (features[1:], then the
  image channels), each hidden layer followed by norm and LeakyReLU(0.2) as in the book.
  """

  shape: tuple[int, int, int]
  features: Sequence[int] = (128, 64)
  kernel_size: int = 4
  norm: str = "batch"
  bn_momentum: float = 0.9
  num_classes: int = 0
  label_dim: int = 0
  init_std: float = 0.02
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  def base_size(self) -> tuple[int, int]:
    """The spatial size the Dense projection reshapes to; validates the image shape."""
    if len(self.shape) != 3:
      raise ValueError(f"Generator.shape must be (H, W, C); got {self.shape}.")
    h, w, _ = self.shape
    s = 2 ** len(self.features)
    if h % s or w % s:
      raise ValueError(f"image {h}x{w} is not divisible by 2^len(features) = {s} "
                       f"(features={tuple(self.features)}); use at most {_fitting_depth(h, w)} "
                       "feature stages for this image size.")
    return h // s, w // s

  @nn.compact
  def __call__(self, z, labels=None, *, train: bool = True):
    _check_norm(self.norm)
    h0, w0 = self.base_size()
    init = _kernel_init(self.init_std)
    x = z.astype(self.dtype or jnp.float32)                                          # [B, Z]
    if self.num_classes:
      y = _label_features(labels, self.num_classes, self.label_dim, self.dtype, self.param_dtype, "embed")
      x = jnp.concatenate([x, y.astype(x.dtype)], axis=-1)                           # [B, Z + K]
    x = nn.Dense(h0 * w0 * self.features[0], use_bias=self.norm == "none", kernel_init=init,
                 dtype=self.dtype, param_dtype=self.param_dtype)(x)
    x = x.reshape(x.shape[0], h0, w0, self.features[0])                              # [B, h0, w0, F0]
    x = nn.leaky_relu(_Norm(self.norm, self.bn_momentum, self.dtype, self.param_dtype)(x, train=train), 0.2)
    k = (self.kernel_size, self.kernel_size)
    for f in self.features[1:]:
      x = ConvTranspose(f, k, strides=(2, 2), padding="SAME", use_bias=self.norm == "none",
                           kernel_init=init, dtype=self.dtype, param_dtype=self.param_dtype)(x)
      x = nn.leaky_relu(_Norm(self.norm, self.bn_momentum, self.dtype, self.param_dtype)(x, train=train), 0.2)
    x = ConvTranspose(self.shape[-1], k, strides=(2, 2), padding="SAME", kernel_init=init,
                         dtype=self.dtype, param_dtype=self.param_dtype)(x)          # [B, H, W, C]
    return _at_least_f32(jnp.tanh(x))


class Discriminator(nn.Module):
  """images [B, H, W, C] (+ labels [B]) -> one logit / critic score per image [B].

  Stride-2 convs (features), norm on all but the first, LeakyReLU(0.2), optional dropout (the
  book's critic uses 0.3), then Dense(1). norm="batch" for DCGAN, "none"/"layer" for WGAN(-GP).
  aux_classes > 0 adds the AC-GAN head: with_aux=True returns (scores [B], class logits [B, K]).
  """

  features: Sequence[int] = (64, 128)
  kernel_size: int = 4
  norm: str = "batch"
  bn_momentum: float = 0.9
  dropout: float = 0.0
  num_classes: int = 0
  label_dim: int = 0
  aux_classes: int = 0
  init_std: float = 0.02
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, labels=None, *, train: bool = True, with_aux: bool = False):
    _check_norm(self.norm)
    if with_aux and not self.aux_classes:
      raise ValueError("with_aux=True needs the auxiliary classifier head: set aux_classes > 0.")
    if self.aux_classes and self.num_classes:
      raise ValueError("a critic with the class head (aux_classes > 0) must not take the label as input "
                       "(num_classes > 0): the head would read the answer off its input channels. "
                       "Use num_classes=0 with aux_classes.")
    if x.ndim != 4:
      raise ValueError(f"Discriminator expects images [B, H, W, C]; got shape {x.shape}.")
    init = _kernel_init(self.init_std)
    x = x.astype(self.dtype or jnp.float32)                                          # [B, H, W, C]
    if self.num_classes:
      y = _label_features(labels, self.num_classes, self.label_dim, self.dtype, self.param_dtype, "embed")
      y = jnp.broadcast_to(y[:, None, None, :].astype(x.dtype), x.shape[:3] + y.shape[-1:])
      x = jnp.concatenate([x, y], axis=-1)                                           # [B, H, W, C + K]
    k = (self.kernel_size, self.kernel_size)
    for i, f in enumerate(self.features):
      normed = i > 0 and self.norm != "none"
      x = Conv(f, k, strides=(2, 2), padding="SAME", use_bias=not normed, kernel_init=init,
                  dtype=self.dtype, param_dtype=self.param_dtype)(x)
      if normed:
        x = _Norm(self.norm, self.bn_momentum, self.dtype, self.param_dtype)(x, train=train)
      x = nn.leaky_relu(x, 0.2)
      if self.dropout:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = x.reshape(x.shape[0], -1)                                                    # [B, h*w*F]
    score = nn.Dense(1, kernel_init=init, dtype=self.dtype, param_dtype=self.param_dtype)(x)
    score = _at_least_f32(score[:, 0])                                               # [B]
    if not self.aux_classes:
      return score
    # Always built (so init creates it), returned on request: the gradient penalty sees scores only.
    logits = nn.Dense(self.aux_classes, kernel_init=init, dtype=self.dtype, param_dtype=self.param_dtype,
                      name="aux")(x)                                                 # [B, K]
    return (score, _at_least_f32(logits)) if with_aux else score


class MLPGenerator(nn.Module):
  """z [B, Z] (+ labels) -> points [B, out_dim] (linear output: points are not bounded)."""

  out_dim: int = 2
  features: Sequence[int] = (128, 128)
  norm: str = "none"
  bn_momentum: float = 0.9
  num_classes: int = 0
  label_dim: int = 0
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z, labels=None, *, train: bool = True):
    return _mlp_player(self, z, labels, train, nn.relu, self.out_dim)               # [B, D]


class MLPDiscriminator(nn.Module):
  """points [B, D] (+ labels) -> one logit / critic score per point [B]."""

  features: Sequence[int] = (128, 128)
  norm: str = "none"
  bn_momentum: float = 0.9
  num_classes: int = 0
  label_dim: int = 0
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, labels=None, *, train: bool = True):
    return _mlp_player(self, x, labels, train, lambda h: nn.leaky_relu(h, 0.2), 1)[:, 0]  # [B]


def _mlp_player(m: nn.Module, x, labels, train: bool, act, out_dim: int):
  """The shared body of the MLP players (called inside their compact __call__)."""
  _check_norm(m.norm)
  x = x.astype(m.dtype or jnp.float32)                                               # [B, Z or D]
  if m.num_classes:
    y = _label_features(labels, m.num_classes, m.label_dim, m.dtype, m.param_dtype, "embed")
    x = jnp.concatenate([x, y.astype(x.dtype)], axis=-1)
  for f in m.features:
    x = nn.Dense(f, dtype=m.dtype, param_dtype=m.param_dtype)(x)
    x = act(_Norm(m.norm, m.bn_momentum, m.dtype, m.param_dtype)(x, train=train))
  return _at_least_f32(nn.Dense(out_dim, dtype=m.dtype, param_dtype=m.param_dtype)(x))  # [B, out]


def _fitting_depth(h: int, w: int) -> int:
  """The most stride-2 stages (at most 4) whose product divides both image sides."""
  n = 0
  while n < 4 and h % 2 ** (n + 1) == 0 and w % 2 ** (n + 1) == 0 and h // 2 ** (n + 1) >= 2:
    n += 1
  return max(n, 1)
