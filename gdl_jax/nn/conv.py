"""Convolutions with flax's parameters and values and gradients XLA:CPU computes several times faster.

`ConvTranspose`: flax's transposed convolution with a ~10x faster kernel gradient. `Conv`: flax's
convolution whose second-order gradient (a WGAN-GP gradient penalty) is ~4.7x faster.

Why: differentiating `lax.conv_transpose` (a convolution of the input dilated by the stride) with
respect to its kernel makes XLA emit a convolution that XLA:CPU runs through a slow generic loop:
3.7 s of a 4.1 s forward+backward for the Fashion-MNIST DCGAN's 7x7x256 -> 14x14x128 layer at batch
128, where PyTorch takes 0.22 s (benchmarks/results/speed.md, "Profile"). A strided transposed
convolution is the input-gradient of a strided convolution, so both of its gradients are gradients
of that ordinary convolution: the input gradient is the convolution itself, and the kernel gradient
is the ordinary convolution's kernel gradient with the roles of input and cotangent swapped. Those
are the kernels XLA:CPU runs fast. The forward pass is unchanged (the same `lax.conv_transpose`).

The same holds one order up: the input-gradient of an ordinary convolution is a transposed
convolution, and a gradient penalty differentiates it with respect to the kernel. `conv` routes its
input-gradient through `conv_transpose`, so the penalty's gradient takes the fast path too.

`ConvTranspose` here takes the same fields as flax's and creates the same `kernel` [kh, kw, in, out]
and `bias` [out] parameters (unflipped kernel, `transpose_kernel=False`), so it is a drop-in
replacement whose parameters and checkpoints are interchangeable with `nn.ConvTranspose`.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")


def _transpose_pads(padding, kernel_size, strides) -> list[tuple[int, int]]:
  """The (lo, hi) pads `lax.conv_transpose` applies to the stride-dilated input, per spatial dim."""
  if isinstance(padding, str):
    pads = []
    for k, s in zip(kernel_size, strides):
      if padding == "SAME":
        total = k + s - 2
        lo = k - 1 if s > k - 1 else -(-total // 2)
      elif padding == "VALID":
        total = k + s - 2 + max(k - s, 0)
        lo = k - 1
      else:
        raise ValueError(f"padding={padding!r}; use 'SAME', 'VALID' or explicit (lo, hi) pairs.")
      pads.append((lo, total - lo))
    return pads
  pads = [tuple(p) for p in padding]
  if len(pads) != len(kernel_size) or any(len(p) != 2 for p in pads):
    raise ValueError(f"padding={padding!r} must be one (lo, hi) pair per spatial dimension "
                     f"({len(kernel_size)}), or 'SAME' / 'VALID'.")
  return pads


def conv_transpose(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                   padding: Any = "SAME") -> jax.Array:
  """`lax.conv_transpose(x, kernel, strides, padding, ('NHWC', 'HWIO', 'NHWC'))` with fast gradients.

  x: [B, H, W, Cin]; kernel: [kh, kw, Cin, Cout] (flax layout, not flipped). The value is exactly
  lax's; the backward pass is written through the equivalent ordinary strided convolution.
  """
  kernel_size = tuple(kernel.shape[:2])
  strides = tuple(int(s) for s in strides)
  pads = _transpose_pads(padding, kernel_size, strides)
  if x.ndim != 4 or kernel.ndim != 4:
    raise ValueError(f"conv_transpose takes x [B, H, W, C] and kernel [kh, kw, in, out]; got "
                     f"{x.shape} and {kernel.shape}.")
  return _conv_transpose(x, kernel, strides, tuple(pads))


def _forward(x, kernel, strides, pads):
  return lax.conv_transpose(x, kernel, strides, list(pads), dimension_numbers=_DN)


def _as_conv(kernel):
  """The HWIO kernel of the ordinary convolution (Cout -> Cin) whose input-gradient is our op."""
  return jnp.swapaxes(kernel[::-1, ::-1], 2, 3)  # [kh, kw, Cout, Cin]


def _conv_pads(kernel_size, pads):
  return [(k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(kernel_size, pads)]


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_transpose(x, kernel, strides, pads):
  return _forward(x, kernel, strides, pads)


def _ct_fwd(x, kernel, strides, pads):
  return _forward(x, kernel, strides, pads), (x, kernel)


def _ct_bwd(strides, pads, res, g):
  x, kernel = res
  conv_pads = _conv_pads(kernel.shape[:2], pads)

  def conv(u, w):  # the ordinary strided convolution, [B, H', W', Cout] -> [B, H, W, Cin]
    return lax.conv_general_dilated(u, w, strides, conv_pads, dimension_numbers=_DN)

  dx, conv_vjp = jax.vjp(conv, g, _as_conv(kernel))
  if dx.shape != x.shape:  # an output size the stride does not divide: lax's own (slow) gradient
    return jax.vjp(lambda x, k: _forward(x, k, strides, pads), x, kernel)[1](g)
  _, dw = conv_vjp(x)
  return dx, jnp.swapaxes(dw, 2, 3)[::-1, ::-1]


_conv_transpose.defvjp(_ct_fwd, _ct_bwd)


class _Conv2D(nn.Module):
  """The fields and parameters of flax's 2-D Conv / ConvTranspose (NHWC; no dilation or groups)."""

  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] | None = None
  padding: Any = "SAME"
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros_init()

  def _apply(self, x: jax.Array, op) -> jax.Array:
    if x.ndim != 4:
      raise ValueError(f"{type(self).__name__} takes images [B, H, W, C]; got shape {x.shape}.")
    kernel_size = tuple(self.kernel_size)
    if len(kernel_size) != 2:
      raise ValueError(f"kernel_size={self.kernel_size} must have 2 entries (kh, kw).")
    kernel = self.param("kernel", self.kernel_init, kernel_size + (x.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = op(x, kernel, tuple(self.strides or (1, 1)), self.padding)
    if bias is not None:
      y = y + bias.reshape((1, 1, 1, -1))
    return y


class ConvTranspose(_Conv2D):
  """`flax.linen.ConvTranspose` (2-D, NHWC, no kernel dilation) with `conv_transpose`'s fast gradient.

  Same fields and parameters as flax's; `transpose_kernel`, `kernel_dilation` and
  `feature_group_count` are not offered (they are unused in gdl_jax).
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return self._apply(x, conv_transpose)


def conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding: Any = "SAME") -> jax.Array:
  """`lax.conv_general_dilated` (NHWC, HWIO) whose input-gradient is `conv_transpose`.

  First-order gradients are lax's own. The point is the second order: a gradient penalty
  differentiates the input-gradient (a transposed convolution) with respect to the kernel, the op
  XLA:CPU runs slowly; routed through `conv_transpose` it takes the fast path.
  """
  strides = tuple(int(s) for s in strides)
  if x.ndim != 4 or kernel.ndim != 4:
    raise ValueError(f"conv takes x [B, H, W, C] and kernel [kh, kw, in, out]; got {x.shape} and "
                     f"{kernel.shape}.")
  kernel_size = tuple(kernel.shape[:2])
  pads = (lax.padtype_to_pads(x.shape[1:3], kernel_size, strides, padding)
          if isinstance(padding, str) else [tuple(p) for p in padding])
  return _conv(x, kernel, strides, tuple(tuple(int(v) for v in p) for p in pads))


def _conv_forward(x, kernel, strides, pads):
  return lax.conv_general_dilated(x, kernel, strides, list(pads), dimension_numbers=_DN)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, kernel, strides, pads):
  return _conv_forward(x, kernel, strides, pads)


def _conv_fwd(x, kernel, strides, pads):
  return _conv_forward(x, kernel, strides, pads), (x, kernel)


def _conv_bwd(strides, pads, res, g):
  x, kernel = res
  dkernel, = jax.vjp(lambda k: _conv_forward(x, k, strides, pads), kernel)[1](g)
  t_kernel = _as_conv(kernel)  # [kh, kw, Cout, Cin]: flax layout of the transposed conv Cout -> Cin
  t_pads = tuple(_conv_pads(kernel.shape[:2], pads))  # the involution of _conv_pads
  dx = _conv_transpose(g, t_kernel, strides, t_pads)
  if dx.shape != x.shape:  # sizes the stride does not divide: lax's own input-gradient
    dx = jax.vjp(lambda x: _conv_forward(x, kernel, strides, pads), x)[1](g)[0]
  return dx, dkernel


_conv.defvjp(_conv_fwd, _conv_bwd)


class Conv(_Conv2D):
  """`flax.linen.Conv` (2-D, NHWC, no dilation or groups) built on `conv`: same fields and
  parameters, and a second-order gradient (gradient penalties) ~4.7x faster on XLA:CPU.
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return self._apply(x, conv)
