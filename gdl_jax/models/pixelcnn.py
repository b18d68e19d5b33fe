"""PixelCNN (van den Oord et al. 2016): the book's masked-convolution model and the gated variant.

    model = PixelCNN(levels=17)
    log_probs = model.apply(params, image)    # uint8 levels [B, H, W, C] -> [B, H, W, C, levels]
    log_p = log_prob_of(log_probs, image)     # exact nats per image (gdl_jax.objectives.autoregressive)

arch="plain": a 7x7 type-A masked conv, residual blocks of 3x3 type-B masked convs (the book's
model; it has the blind spot of stacked masked convs). arch="gated": vertical + horizontal stacks
with gated tanh*sigmoid units (no blind spot; single-channel images).
head="categorical": a softmax over levels per sub-pixel; head="logistic_mixture": a discretized
mixture of logistics. Either way the output is normalized per-level log-probs.

`raster_steps(model, params, (H, W))` is the gated model computed one pixel at a time with cached
activations (fast generation, Ramachandran et al. 2017) for `samplers.sample_raster_cached`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gdl_jax.data.info import to_signed
from gdl_jax.nn.masked import GatedMaskedConv, MaskedConv2D, causal_conv_mask
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


def _gate(x):
  a, b = jnp.split(x, 2, axis=-1)
  return jnp.tanh(a) * nn.sigmoid(b)


def raster_steps(model: PixelCNN, params, size: tuple[int, int]):
  """The gated PixelCNN one pixel at a time: (init, pixel, commit, end_row) for RasterSteps.

  The same arithmetic as `model.apply({"params": params}, x)` at one position (equal up to float
  reassociation), reading the same parameters. Cached per layer l (padding p_l = k_l // 2):
    vin[l]   [B, p_l + H, W + 2 p_l, C_l]  the vertical stack's input, zero-padded like its conv;
    vprev[l] [B, W, 2F]                    the vertical features of the previous row (zeros on row 0:
                                           shift_down's zero row);
    hrow[l]  [B, p_l + W, C_l]             the horizontal stack's input on the current row.
  A pixel costs, per layer, a 1 x (p+1) window, two 1x1 maps and the head at that one position;
  the end of a row runs the vertical stack on that row only. Pixel (i, j) needs the vertical
  features of rows < i and the horizontal inputs of (i, j' <= j): all cached when it is reached.
  Only arch='gated' (single channel); the plain stack samples with `sample_raster`.
  """
  if model.arch != "gated":
    raise ValueError(f"raster_steps covers arch='gated'; model.arch={model.arch!r} samples with "
                     "samplers.autoregressive.sample_raster.")
  height, width = size
  n = model.num_layers
  layers = [params[f"GatedMaskedConv_{i}"] for i in range(n)]
  ks = [model.first_kernel_size if i == 0 else model.kernel_size for i in range(n)]
  ps = [k // 2 for k in ks]
  chans = [1] + [model.features] * (n - 1)
  f2 = 2 * model.features
  head1, head2 = params["MaskedConv2D_0"]["Conv_0"], params["MaskedConv2D_1"]["Conv_0"]
  m1 = causal_conv_mask((1, 1), *head1["kernel"].shape[2:], "B")[0, 0]
  m2 = causal_conv_mask((1, 1), *head2["kernel"].shape[2:], "B")[0, 0]
  per = head2["kernel"].shape[-1]
  dn = ("NHWC", "HWIO", "NHWC")

  def h_kernel(i):  # [p+1, C, 2F] -> [(p+1) C, 2F], type A (first layer) hides the current tap
    k = layers[i]["h_conv"]["kernel"][0]
    if i == 0:
      k = k.at[-1].set(0.0)
    return k.reshape(-1, f2)

  hk = [h_kernel(i) for i in range(n)]

  def init(b):
    dt = jnp.float32
    return {"vin": [jnp.zeros((b, p + height, width + 2 * p, c), dt) for p, c in zip(ps, chans)],
            "vprev": [jnp.zeros((b, width, f2), dt) for _ in range(n)],
            "hrow": [jnp.zeros((b, p + width, c), dt) for p, c in zip(ps, chans)]}

  def pixel(cache, i, j):
    hrow = list(cache["hrow"])
    b = hrow[0].shape[0]
    for l in range(n):
      p, c, lp = ps[l], chans[l], layers[l]
      win = jax.lax.dynamic_slice(hrow[l], (0, j, 0), (b, p + 1, c)).reshape(b, -1)
      vp = jax.lax.dynamic_index_in_dim(cache["vprev"][l], j, axis=1, keepdims=False)
      feat = (win @ hk[l] + lp["h_conv"]["bias"]
              + (vp @ lp["v_to_h"]["kernel"][0, 0] + lp["v_to_h"]["bias"]))
      out = _gate(feat) @ lp["h_out"]["kernel"][0, 0] + lp["h_out"]["bias"]
      if l > 0:
        out = out + jax.lax.dynamic_index_in_dim(hrow[l], p + j, axis=1, keepdims=False)
      if l + 1 < n:
        hrow[l + 1] = jax.lax.dynamic_update_slice(hrow[l + 1], out[:, None], (0, ps[l + 1] + j, 0))
    out = nn.elu(out) @ (head1["kernel"][0, 0] * m1) + head1["bias"]
    out = (nn.elu(out) @ (head2["kernel"][0, 0] * m2) + head2["bias"]).astype(jnp.float32)
    if model.head == "categorical":
      lp = nn.log_softmax(out, axis=-1)
    else:
      w, mu, log_s = jnp.split(out, 3, axis=-1)
      lp = discretized_mix_logistic_log_probs(w, mu, log_s, model.levels)
    return lp, {**cache, "hrow": hrow}

  def commit(cache, i, j, tok):
    x = to_signed(tok, model.levels)[:, None, None]  # [B, 1, 1]
    hrow = list(cache["hrow"])
    hrow[0] = jax.lax.dynamic_update_slice(hrow[0], x, (0, ps[0] + j, 0))
    return {**cache, "hrow": hrow}

  def end_row(cache, i):  # row i is complete: its vertical features, for row i + 1's pixels
    vin, vprev = list(cache["vin"]), list(cache["vprev"])
    p0 = ps[0]
    vin[0] = jax.lax.dynamic_update_slice(vin[0], cache["hrow"][0][:, None, p0:], (0, p0 + i, p0, 0))
    for l in range(n):
      p, lp = ps[l], layers[l]
      b, _, wp, c = vin[l].shape
      win = jax.lax.dynamic_slice(vin[l], (0, i, 0, 0), (b, p + 1, wp, c))
      feat = jax.lax.conv_general_dilated(win, lp["v_conv"]["kernel"], (1, 1), "VALID",
                                          dimension_numbers=dn) + lp["v_conv"]["bias"]
      vprev[l] = feat[:, 0]
      if l + 1 < n:
        q = ps[l + 1]
        vin[l + 1] = jax.lax.dynamic_update_slice(vin[l + 1], _gate(feat), (0, q + i, q, 0))
    return {**cache, "vin": vin, "vprev": vprev}

  return init, pixel, commit, end_row
