"""The train state: one pytree holding everything a step reads and writes."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """params, non-trained collections (`extra`, e.g. batch_stats), optimizer state, step and EMA params.

  `params` and `opt_state` may be dicts of several players (a GAN's {"gen", "disc"}); the generic
  step below treats them as one pytree, two-player steps address the entries by name.
  """

  step: jax.Array
  params: PyTree
  opt_state: PyTree
  extra: PyTree = flax.struct.field(default_factory=dict)
  ema_params: PyTree | None = None

  @classmethod
  def create(cls, params: PyTree, optimizer: optax.GradientTransformation, *, extra: PyTree = None,
             ema: bool = False) -> "TrainState":
    """A step-0 state; `ema=True` keeps an exponential moving average of params (see `ema_update`)."""
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
               extra={} if extra is None else extra,
               ema_params=jax.tree.map(jnp.copy, params) if ema else None)

  def eval_params(self) -> PyTree:
    """The parameters to sample and evaluate with: the EMA when kept, else the raw params."""
    return self.params if self.ema_params is None else self.ema_params


def ema_update(ema: PyTree, params: PyTree, step: jax.Array, decay: float) -> PyTree:
  """EMA with optax's debiasing warm-up: decay_t = min(decay, (1 + t) / (10 + t))."""
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return optax.incremental_update(params, ema, step_size=1.0 - d)
