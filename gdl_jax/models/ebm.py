"""Energy-based model (book ch. 7): a CNN energy E(x), low on data, trained by contrastive divergence.

    energy = model.apply(params, x)     # x [B, H, W, C] in [-1, 1] -> E(x) [B]

The book's network outputs a score (high on data); ours outputs the energy E = -score, so
p(x) is proportional to exp(-E(x)) and Langevin dynamics walks down the energy gradient.
"""

from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


class EnergyCNN(nn.Module):
  """Strided 'same' convs with swish, flatten, a swish dense layer, a linear scalar head.

  The book's model (32x32 MNIST): features (16, 32, 64, 64), kernels (5, 3, 3, 3), strides 2, dense 64.
  strides=None means 2 for every conv.
  """

  features: Sequence[int] = (16, 32, 64)
  kernels: Sequence[int] = (5, 3, 3)
  strides: Optional[Sequence[int]] = None
  dense: int = 64
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if x.ndim != 4:
      raise ValueError(f"EnergyCNN expects images [B, H, W, C], got shape {x.shape}.")
    strides = (2,) * len(self.features) if self.strides is None else tuple(self.strides)
    if not len(self.features) == len(self.kernels) == len(strides):
      raise ValueError(f"model.features {tuple(self.features)}, model.kernels {tuple(self.kernels)} "
                       f"and model.strides {strides} need the same length (one entry per conv).")
    h = x.astype(self.dtype)
    for f, k, s in zip(self.features, self.kernels, strides):
      h = nn.swish(nn.Conv(f, (k, k), strides=(s, s), padding="SAME", dtype=self.dtype)(h))
    h = h.reshape(h.shape[0], -1)  # [B, h*w*F]
    h = nn.swish(nn.Dense(self.dense, dtype=self.dtype)(h))
    return nn.Dense(1, dtype=self.dtype)(h)[:, 0].astype(jnp.float32)  # [B]
