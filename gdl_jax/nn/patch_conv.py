"""Convolutions whose kernel equals their stride (VALID), as a reshape and one matmul.

XLA:CPU has no fast path for such strided (and transposed) convolutions, least of all under a
gradient penalty's double differentiation; these layers keep nn.Conv's / nn.ConvTranspose's
parameter names, shapes and initialisers, so checkpoints and inits are interchangeable (MuseGAN's
players use them; tests/models/test_musegan.py checks them against flax's).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

_AXES = "defghijklmnopqrstuvw"


def _check_patches(kernel_size, spatial):
  if len(kernel_size) != len(spatial):
    raise ValueError(f"kernel {kernel_size} has {len(kernel_size)} spatial axes; the input has {len(spatial)}.")


def _params(module: nn.Module, k: tuple[int, ...], channels: int):
  """nn.Conv's / nn.ConvTranspose's "kernel" [*k, C, F] (lecun normal) and "bias" [F] (zeros)."""
  kernel = module.param("kernel", nn.initializers.lecun_normal(), (*k, channels, module.features))
  return kernel, module.param("bias", nn.initializers.zeros_init(), (module.features,))


class PatchConv(nn.Module):
  """nn.Conv(features, kernel_size, strides=kernel_size, padding="VALID") as a reshape and a matmul.

  x [B, *spatial, C] -> [B, *(spatial // kernel), features]; the same "kernel" [*kernel, C, F] and
  "bias" [F] params and initialisers as nn.Conv (a trailing remainder of an axis is dropped, as VALID)."""

  features: int
  kernel_size: tuple[int, ...]

  @nn.compact
  def __call__(self, x):
    k, spatial = tuple(self.kernel_size), x.shape[1:-1]
    _check_patches(k, spatial)
    kernel, bias = _params(self, k, x.shape[-1])
    n = len(k)
    out = tuple(d // ki for d, ki in zip(spatial, k))
    x = x[(slice(None),) + tuple(slice(0, o * ki) for o, ki in zip(out, k))]
    x = x.reshape((x.shape[0],) + sum(((o, ki) for o, ki in zip(out, k)), ()) + (x.shape[-1],))
    outer, inner = _AXES[:n], _AXES[n:2 * n]
    lhs = "a" + "".join(o + i for o, i in zip(outer, inner)) + "b"
    y = jnp.einsum(f"{lhs},{inner}bc->a{outer}c", x, kernel)
    return y + bias


class PatchConvTranspose(nn.Module):
  """nn.ConvTranspose(features, kernel_size, strides=kernel_size, padding="VALID") as a matmul.

  x [B, *spatial, C] -> [B, *(spatial * kernel), features]; the same params and initialisers as
  nn.ConvTranspose (transpose_kernel=False, whose output patch reads the kernel reversed)."""

  features: int
  kernel_size: tuple[int, ...]

  @nn.compact
  def __call__(self, x):
    k, spatial = tuple(self.kernel_size), x.shape[1:-1]
    _check_patches(k, spatial)
    kernel, bias = _params(self, k, x.shape[-1])
    n = len(k)
    kernel = jnp.flip(kernel, axis=tuple(range(n)))
    outer, inner = _AXES[:n], _AXES[n:2 * n]
    rhs = "a" + "".join(o + i for o, i in zip(outer, inner)) + "c"
    y = jnp.einsum(f"a{outer}b,{inner}bc->{rhs}", x, kernel)
    y = y.reshape((x.shape[0],) + tuple(d * ki for d, ki in zip(spatial, k)) + (self.features,))
    return y + bias
