"""PixelCNN (van den Oord et al. 2016): the book's masked-convolution model and the gated variant.

    model = PixelCNN(levels=17)
    log_probs = model.apply(params, image)    # uint8 levels [B, H, W, C] -> [B, H, W, C, levels]
    log_p = log_prob_of(log_probs, image)     # exact nats per image (gdl_jax.objectives.autoregressive)

arch="plain": a 7x7 type-A masked conv, residual blocks of 3x3 type-B masked convs (the book's
model; it has the blind spot of stacked masked convs). arch="gated": vertical + horizontal stacks
with gated tanh*sigmoid units (no blind spot; single-channel images).
head="categorical": a softmax over levels per sub-pixel; head="logistic_mixture": a discretized
mixture of logistics. Either way the output is normalized per-level log-probs.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from gdl_jax.data.info import to_signed
from gdl_jax.nn.masked import GatedMaskedConv, MaskedConv2D
from gdl_jax.objectives.autoregressive import discretized_mix_logistic_log_probs

Dtype = Any
ARCHS = ("plain", "gated")
HEADS = ("categorical", "logistic_mixture")


class PixelCNN(nn.Module):
  """Per-level log-probs of every sub-pixel given the sub-pixels before it in raster order."""

  levels: int
  features: int = 64
  num_layers: int = 6
  kernel_size: int = 3
  first_kernel_size: int = 7
  arch: str = "gated"
  head: str = "categorical"
  num_mixtures: int = 5
  head_features: int = 128
  dropout: float = 0.0
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  def __call__(self, x, *, train: bool = False):  # int [B, H, W, C] -> [B, H, W, C, levels]
    if x.ndim != 4:
      raise ValueError(f"PixelCNN wants integer images [B, H, W, C]; got shape {x.shape}.")
    return self.log_probs_signed(to_signed(x, self.levels), train=train)

  @nn.compact
  def log_probs_signed(self, x, *, train: bool = False):  # float [B, H, W, C] in [-1, 1]
    """The network on images already in [-1, 1] (differentiable input, for causality tests)."""
    if self.arch not in ARCHS:
      raise ValueError(f"model.arch={self.arch!r}; use one of {ARCHS}.")
    if self.head not in HEADS:
      raise ValueError(f"model.head={self.head!r}; use one of {HEADS}.")
    c = x.shape[-1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if self.arch == "gated":
      if c != 1:
        raise ValueError(f"arch='gated' models single-channel images; this one has {c} channels. "
                         "Use --config.model.arch=plain (channel-ordered masks) for colour images.")
      v = h = x
      for i in range(self.num_layers):
        k = self.first_kernel_size if i == 0 else self.kernel_size
        v, h = GatedMaskedConv(self.features, k, first=(i == 0), dropout=self.dropout, **kw)(
            v, h, train=train)
      feats, groups = h, 1
    else:
      groups = c
      f = self.features // c * c
      h = MaskedConv2D(f, self.first_kernel_size, "A", groups=c, **kw)(x)
      for _ in range(self.num_layers - 1):
        y = MaskedConv2D(f // 2 // c * c, 1, "B", groups=c, **kw)(nn.relu(h))
        y = MaskedConv2D(f // 2 // c * c, self.kernel_size, "B", groups=c, **kw)(nn.relu(y))
        y = nn.Dropout(self.dropout, deterministic=not train)(y)
        h = h + MaskedConv2D(f, 1, "B", groups=c, **kw)(nn.relu(y))
      feats = h
    hf = self.head_features // groups * groups
    out = MaskedConv2D(hf, 1, "B", groups=groups, **kw)(nn.elu(feats))
    per = self.levels if self.head == "categorical" else 3 * self.num_mixtures
    out = MaskedConv2D(per * c, 1, "B", groups=groups, **kw)(nn.elu(out))  # [B, H, W, C * per]
    out = out.reshape(out.shape[:3] + (c, per)).astype(jnp.float32)  # channel-major groups
    if self.head == "categorical":
      return nn.log_softmax(out, axis=-1)
    w, mu, log_s = jnp.split(out, 3, axis=-1)
    return discretized_mix_logistic_log_probs(w, mu, log_s, self.levels)
