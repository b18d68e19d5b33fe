"""BatchNorm with flax's fields, variables and values, and a backward pass XLA:CPU runs faster.

`BatchNorm` is a drop-in for `flax.linen.BatchNorm` (feature axis last, no cross-device
`axis_name`: under `jax.sharding` the batch statistics of a sharded batch are global anyway): the
same params ("scale", "bias"), batch_stats ("mean", "var"), momentum update and fast variance
(E[x^2] - E[x]^2), so checkpoints are interchangeable. In training mode the normalisation is one
`jax.custom_vjp` with the closed-form backward

    dx = scale / std * (g - mean(g) - xhat * mean(g * xhat)),

instead of autodiff through flax's statistics. Each pair of channel sums (sum x and sum x^2 in the
forward, sum g and sum g * xhat in the backward) is taken as two reductions or, for inputs up to
`DOT_SUMS_MAX` elements, as ones-vector matmuls over [rows, C] (XLA:CPU's dot kernels use both cores
where its reduce loops do not). Measured with benchmarks/kernels.py (value + gradients, interleaved
rounds; benchmarks/README.md has the table): the closed-form backward alone 1.18-1.25x flax's at
the Fashion CNN's shapes; the matmul sums 1.55-2.9x up to 1.6M elements but 0.80x at 3.2M
(128x28x28x32), hence the threshold. A variadic reduce (both sums in one fusion) was slower
(0.57-1.11x) and is not used. Whole train steps: 1.04-1.11x (cnn_digits, cnn_fashion, dcgan_digits,
dcgan_fashion; `benchmarks/kernels.py --only_steps`).

Training mode supports jit, vmap and reverse-mode gradients of any order; forward mode (`jax.jvp`,
`jax.jacfwd`) does not pass a `custom_vjp` (use flax's BatchNorm there); eval mode is plain jnp.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

DOT_SUMS_MAX = 2 ** 21   # elements of the input: up to this, channel sums as matmuls (see above)


def _channel_sums(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sum of a, sum of b) over every axis but the last, for two arrays of the same shape."""
  c = a.shape[-1]
  if a.size <= DOT_SUMS_MAX:
    ones = jnp.ones((a.size // c,), a.dtype)
    return ones @ a.reshape(-1, c), ones @ b.reshape(-1, c)
  axes = tuple(range(a.ndim - 1))
  return jnp.sum(a, axes), jnp.sum(b, axes)


def _forward(x, scale, bias, eps, sums):
  n = x.size // x.shape[-1]
  s1, s2 = sums(x, x * x)
  mean = s1 / n
  var = jnp.maximum(s2 / n - mean * mean, 0.0)
  inv = lax.rsqrt(var + eps)
  xhat = (x - mean) * inv
  return (xhat * scale + bias, mean, var), (xhat, inv, scale)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _normalize(x, scale, bias, eps, sums):
  return _forward(x, scale, bias, eps, sums)[0]


def _bwd(eps, sums, res, cts):
  del eps
  g, g_mean, g_var = cts
  xhat, inv, scale = res
  n = g.size // g.shape[-1]
  sg, sgx = sums(g, g * xhat)
  dx = (scale * inv / n) * (n * g - sg - xhat * sgx)
  # the batch statistics are outputs too (they update batch_stats): their exact cotangents
  dx = dx + (g_mean + 2.0 * g_var * xhat / inv) / n
  return dx, sgx, sg


_normalize.defvjp(_forward, _bwd)


def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float = 1e-5, *,
                     sums=None):
  """Training-mode batch normalisation over every axis but the last.

  Returns (y, mean, var): y = (x - mean) / sqrt(var + eps) * scale + bias with the batch's mean and
  (biased, fast) variance, which are returned for the running averages. Differentiable in all
  three arguments (a custom VJP: see the module docstring), also through mean and var.
  sums(a, b) -> (sum a, sum b) over every axis but the last: how the two pairs of channel sums are
  taken (default: matmuls up to DOT_SUMS_MAX elements, else reductions; benchmarks/kernels.py passes
  its variants).
  """
  if x.ndim < 2 or scale.shape != (x.shape[-1],) or bias.shape != (x.shape[-1],):
    raise ValueError(f"batch_norm_train takes x [..., C] with scale and bias [C]; got {x.shape}, "
                     f"{scale.shape}, {bias.shape}.")
  return _normalize(x, scale, bias, float(eps), _channel_sums if sums is None else sums)


class BatchNorm(nn.Module):
  """`flax.linen.BatchNorm` (feature axis -1) with `batch_norm_train`'s faster backward.

  Same fields (but no `axis`, `axis_name` or `use_fast_variance=False`), variables and defaults;
  values equal flax's to float32 rounding (tests/nn/test_norm.py).
  """

  use_running_average: bool | None = None
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Any = nn.initializers.zeros
  scale_init: Any = nn.initializers.ones

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    use_ra = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
    c = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    scale = (self.param("scale", self.scale_init, (c,), self.param_dtype) if self.use_scale
             else jnp.ones((c,), self.param_dtype))
    bias = (self.param("bias", self.bias_init, (c,), self.param_dtype) if self.use_bias
            else jnp.zeros((c,), self.param_dtype))
    dtype = self.dtype or jnp.result_type(x, scale, bias)
    if use_ra:
      inv = lax.rsqrt(ra_var.value + self.epsilon)
      y = (x.astype(jnp.float32) - ra_mean.value) * (inv * scale) + bias
      return y.astype(dtype)
    y, mean, var = batch_norm_train(x.astype(jnp.float32), scale.astype(jnp.float32),
                                    bias.astype(jnp.float32), self.epsilon)
    if not self.is_initializing():
      m = self.momentum
      ra_mean.value = m * ra_mean.value + (1.0 - m) * mean
      ra_var.value = m * ra_var.value + (1.0 - m) * var
    return y.astype(dtype)
