"""`make_train_step`: a loss function and an optimizer -> one jitted, donated, pure train step."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from gdl_jax.train.state import TrainState, ema_update

Batch = Any
# loss_fn(params, extra, batch, key) -> (loss, (new_extra, metrics))
LossFn = Callable[[Any, Any, Batch, jax.Array], tuple[jax.Array, tuple[Any, dict]]]


def tree_l2(tree) -> jax.Array:
  """Global L2 norm of a pytree (0 for an empty one)."""
  return optax.global_norm(tree) if jax.tree.leaves(tree) else jnp.zeros(())


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *,
                    ema_decay: float | None = None, jit: bool = True):
  """Returns `step(state, batch, key) -> (state, metrics)`.

  The key is folded with the state's step, so a resumed run draws the same randomness as an
  uninterrupted one. Metrics are a flat dict of scalars: `loss`, the loss function's own metrics,
  and `l2_grads`, `l2_params`, `l2_updates`. With `jit=True` the step is jitted with the state
  donated; inputs placed on a mesh (see `gdl_jax.sharding`) run data-parallel.
  """

  def step(state: TrainState, batch: Batch, key: jax.Array):
    key = jax.random.fold_in(key, state.step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (extra, metrics)), grads = grad_fn(state.params, state.extra, batch, key)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema_params
    if ema is not None and ema_decay is not None:
      ema = ema_update(ema, params, state.step, ema_decay)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              extra=extra, ema_params=ema)
    out = {"loss": loss, **metrics, "l2_grads": tree_l2(grads), "l2_params": tree_l2(params),
           "l2_updates": tree_l2(updates)}
    return new_state, out

  return jax.jit(step, donate_argnums=0) if jit else step
