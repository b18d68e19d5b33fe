"""World Models' M: an MDN-RNN (Ha & Schmidhuber 2018), and C: a linear controller (Linen only).

M reads (z_t, a_t) one step at a time through an LSTM and outputs, from its new hidden state h_t,
a mixture of K Gaussians per latent dimension for z_{t+1}, the reward r_t and a done logit. The
step is the module's only computation, so a training sequence (lax.scan in the loss) and a dream
rollout (lax.scan in the sampler) run the same function. The likelihood lives in
`gdl_jax.objectives.mdn`, the dream sampler in `gdl_jax.world.dream`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

MIN_LOG_SIGMA = -7.0


class MDNOut(NamedTuple):
  """p(z_{t+1}, r_t, d_t | h_t): mixture axis last for the latent ([..., Z, K])."""
  logit_pi: jax.Array   # [..., Z, K]
  mu: jax.Array         # [..., Z, K]
  log_sigma: jax.Array  # [..., Z, K]
  reward: jax.Array     # [...]
  done_logit: jax.Array  # [...]


class MDNRNN(nn.Module):
  """LSTM(hidden) on [z, a] -> per-dimension mixture of `num_mixtures` Gaussians, reward, done."""

  latent_dim: int = 32
  action_dim: int = 3
  hidden: int = 256
  num_mixtures: int = 5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.cell = nn.OptimizedLSTMCell(self.hidden, **kw)
    self.head = nn.Dense(3 * self.latent_dim * self.num_mixtures + 2, **kw)

  def initial_carry(self, batch_shape: tuple[int, ...]):
    """Zero (c, h), each [*batch_shape, hidden]."""
    zeros = jnp.zeros((*batch_shape, self.hidden), jnp.float32)
    return (zeros, zeros)

  def __call__(self, carry, z: jax.Array, a: jax.Array):
    """One step: carry (c, h), z [..., Z], a [..., A] -> (new carry, MDNOut from the new h)."""
    if z.shape[-1] != self.latent_dim or a.shape[-1] != self.action_dim:
      raise ValueError(f"MDNRNN built for z [..., {self.latent_dim}] and a [..., {self.action_dim}]"
                       f", got {z.shape} and {a.shape}.")
    x = jnp.concatenate([z, a], -1).astype(self.dtype)
    carry, h = self.cell(carry, x)                                              # [..., H]
    out = self.head(h).astype(jnp.float32)                                      # [..., 3ZK + 2]
    Z, K = self.latent_dim, self.num_mixtures
    mix = out[..., :3 * Z * K].reshape(*out.shape[:-1], Z, 3 * K)
    logit_pi, mu, log_sigma = jnp.split(mix, 3, axis=-1)                       # [..., Z, K]
    return carry, MDNOut(logit_pi, mu, jnp.maximum(log_sigma, MIN_LOG_SIGMA), out[..., -2],
                         out[..., -1])


def hidden_of(carry) -> jax.Array:
  """The h of an LSTM carry (c, h): what the controller reads."""
  return carry[1]


def controller_size(latent_dim: int, hidden: int, action_dim: int = 3) -> int:
  """Parameters of the linear controller: W [A, Z + H] and b [A]."""
  return action_dim * (latent_dim + hidden) + action_dim


def controller_action(flat: jax.Array, z: jax.Array, h: jax.Array, action_dim: int = 3) -> jax.Array:
  """C: a = tanh(W [z, h] + b) in [-1, 1]^A, W and b unpacked from one flat vector (what CMA-ES
  searches). z [Z], h [H] (vmap for batches)."""
  x = jnp.concatenate([z, h], -1)                                               # [Z + H]
  n = action_dim * x.shape[-1]
  W = flat[:n].reshape(action_dim, x.shape[-1])
  return jnp.tanh(W @ x + flat[n:n + action_dim])


def env_action(a: jax.Array) -> jax.Array:
  """tanh outputs -> CarRacing's box: steer a0, gas (a1 + 1) / 2, brake clip(a2, 0, 1)."""
  return jnp.stack([a[..., 0], (a[..., 1] + 1.0) / 2.0, jnp.clip(a[..., 2], 0.0, 1.0)], -1)
