"""Masked convolutions for autoregressive image models (PixelCNN, gated PixelCNN stacks).

Raster order: pixel (i, j) may see pixels (i', j') with i' < i, or i' == i and j' < j. Within a
pixel, channel groups are ordered too (R before G before B): a type-"A" mask hides the current
pixel's own group and later ones (first layer), a type-"B" mask shows the own group (later layers).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

Dtype = Any


def causal_conv_mask(kernel_size: tuple[int, int], in_features: int, out_features: int,
                     mask_type: str, groups: int = 1) -> np.ndarray:
  """The [kh, kw, in, out] 0/1 mask of a raster-order masked convolution.

  `groups` splits in/out features into that many ordered channel groups (the image's channels);
  at the centre tap, out group g sees in groups < g (type "A") or <= g (type "B").
  """
  if mask_type not in ("A", "B"):
    raise ValueError(f"mask_type={mask_type!r}; use 'A' (first layer) or 'B' (later layers).")
  kh, kw = kernel_size
  if kh % 2 == 0 or kw % 2 == 0:
    raise ValueError(f"kernel_size={kernel_size} must be odd in both dimensions (e.g. 3, 5 or 7).")
  if in_features % groups or out_features % groups:
    raise ValueError(f"in_features={in_features} and out_features={out_features} must be multiples "
                     f"of groups={groups} (the image's channels); pick features divisible by {groups}.")
  ci, cj = kh // 2, kw // 2
  mask = np.ones((kh, kw, in_features, out_features), np.float32)
  mask[ci + 1:] = 0.0           # rows below
  mask[ci, cj + 1:] = 0.0       # right of centre in the centre row
  gin = np.arange(in_features) // (in_features // groups)
  gout = np.arange(out_features) // (out_features // groups)
  allowed = gin[:, None] < gout[None, :] if mask_type == "A" else gin[:, None] <= gout[None, :]
  mask[ci, cj] = allowed.astype(np.float32)
  return mask


class MaskedConv2D(nn.Module):
  """A 'SAME' convolution whose kernel is masked to raster order (PixelCNN, van den Oord 2016)."""

  features: int
  kernel_size: int = 3
  mask_type: str = "B"
  groups: int = 1
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):  # [B, H, W, Cin] -> [B, H, W, features]
    k = (self.kernel_size, self.kernel_size)
    mask = causal_conv_mask(k, x.shape[-1], self.features, self.mask_type, self.groups)
    return nn.Conv(self.features, k, padding="SAME", mask=jnp.asarray(mask), dtype=self.dtype,
                   param_dtype=self.param_dtype)(x)


def shift_down(x):
  """Moves rows down by one (zero row on top): row i then holds what row i-1 held."""  # [B,H,W,C]
  return jnp.pad(x, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]


def _gate(x):
  a, b = jnp.split(x, 2, axis=-1)
  return jnp.tanh(a) * nn.sigmoid(b)


class GatedMaskedConv(nn.Module):
  """One gated PixelCNN layer with a vertical and a horizontal stack: no blind spot.

  The vertical stack at row i sees rows <= i (all columns within reach); it feeds the horizontal
  stack shifted down a row, so the horizontal stack at (i, j) sees rows < i plus (i, j' <= j) of its
  own features. `first=True` hides the current pixel (type A) and drops the residual connection.
  Single-channel images only (channel ordering within a pixel is not modelled here).
  """

  features: int
  kernel_size: int = 3
  first: bool = False
  dropout: float = 0.0
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, v, h, *, train: bool = False):  # [B, H, W, C] each -> same, features wide
    k, f = self.kernel_size, self.features
    if k % 2 == 0:
      raise ValueError(f"kernel_size={k} must be odd (e.g. 3 or 5).")
    p = k // 2
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    # Vertical: a (p+1) x k window ending at the current row.
    v_feat = nn.Conv(2 * f, (p + 1, k), padding=((p, 0), (p, p)), name="v_conv", **kw)(v)
    v_out = _gate(v_feat)
    # Horizontal: a 1 x (p+1) window ending at the current column (type A hides the current one).
    h_mask = np.ones((1, p + 1, h.shape[-1], 2 * f), np.float32)
    if self.first:
      h_mask[:, -1] = 0.0
    h_feat = nn.Conv(2 * f, (1, p + 1), padding=((0, 0), (p, 0)), mask=jnp.asarray(h_mask),
                     name="h_conv", **kw)(h)
    h_feat = h_feat + nn.Conv(2 * f, (1, 1), name="v_to_h", **kw)(shift_down(v_feat))
    h_out = _gate(h_feat)
    h_out = nn.Dropout(self.dropout, deterministic=not train)(h_out)
    h_out = nn.Conv(f, (1, 1), name="h_out", **kw)(h_out)
    if not self.first:
      h_out = h_out + h
    return v_out, h_out
