"""Gatys et al.'s neural style transfer: optimise the image itself, one jitted lax.scan.

    vgg = load_vgg16_params()
    out = stylize(content, style, vgg, steps=100)                 # L-BFGS (optax) by default
    out.image                                                     # [1, H, W, 3] in [-1, 1]
    out.losses                                                    # [steps] objective per step
    out.terms                                                     # final content / style / tv [1]

The objective is gdl_jax.objectives.style_transfer's (content at relu4_2, Gram matrices at
relu1_1 ... relu5_1, total variation). The image starts at the content image (init="content",
deterministic) or at uniform noise (init="noise", needs a key). optimizer="lbfgs": optax.lbfgs
with its zoom line search (each step may evaluate the objective several times); "adam": optax.adam
at learning rate `lr`, the image clipped to [-1, 1] after every step. The returned image is
always clipped to [-1, 1], and its terms are those of the clipped image.
"""

from __future__ import annotations

import functools
from typing import Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from gdl_jax.objectives.style_transfer import (StyleWeights, style_targets, style_transfer_loss,
                                               style_transfer_terms)

__all__ = ["OPTIMIZERS", "StylizeResult", "stylize"]

OPTIMIZERS = ("lbfgs", "adam")


class StylizeResult(NamedTuple):
  image: jax.Array   # [1, H, W, C] in [-1, 1]
  losses: jax.Array  # [steps] the objective at the start of each step
  terms: dict        # {"content", "style", "tv"} [1] of the returned (clipped) image


def _as_batch(x: jax.Array, what: str) -> jax.Array:
  x = jnp.asarray(x, jnp.float32)
  if x.ndim == 3:
    x = x[None]
  if x.ndim != 4 or x.shape[0] != 1 or x.shape[-1] not in (1, 3):
    raise ValueError(f"stylize: {what} must be one image [H, W, C] or [1, H, W, C] with C = 3 "
                     f"(RGB) or 1 (grey), got shape {x.shape}.")
  return x


def stylize(content: jax.Array, style: jax.Array, vgg_params: Mapping, *,
            weights: StyleWeights = StyleWeights(), steps: int = 100, optimizer: str = "lbfgs",
            lr: float = 0.02, init: str = "content", memory_size: int = 10,
            key: Optional[jax.Array] = None) -> StylizeResult:
  """Optimises an image for `weights`' style transfer objective: content [H, W, C] and style
  [H', W', C'] in [-1, 1] (batch of one or none; the sizes may differ). The output has the
  content's size and channels; a grey content image with an RGB style comes out RGB (grey images
  are replicated to three channels first)."""
  content, style = _as_batch(content, "content"), _as_batch(style, "style")
  if optimizer not in OPTIMIZERS:
    raise ValueError(f"stylize: optimizer {optimizer!r}; choose one of {OPTIMIZERS}.")
  if not (isinstance(steps, int) and steps >= 1):
    raise ValueError(f"stylize: steps={steps!r} must be an integer >= 1.")
  if optimizer == "adam" and not lr > 0:
    raise ValueError(f"stylize: lr={lr!r} must be > 0.")
  if content.shape[-1] == 1 and style.shape[-1] == 3:
    content = jnp.repeat(content, 3, axis=-1)
  if init == "content":
    x0 = content
  elif init == "noise":
    if key is None:
      raise ValueError("stylize: init='noise' needs a key (jax.random.key(seed)).")
    x0 = jax.random.uniform(key, content.shape, jnp.float32, -1.0, 1.0)
  else:
    raise ValueError(f"stylize: init={init!r}; choose 'content' or 'noise'.")
  return _stylize(vgg_params, content, style, x0, weights=weights, steps=steps,
                  optimizer=optimizer, lr=float(lr) if optimizer == "adam" else 0.0,  # one program
                  memory_size=int(memory_size) if optimizer == "lbfgs" else 0)


@functools.partial(jax.jit, static_argnames=("weights", "steps", "optimizer", "lr", "memory_size"))
def _stylize(vgg_params, content, style, x0, *, weights, steps, optimizer, lr, memory_size):
  """The jitted optimisation; vgg_params is an argument (not a constant baked into the program)."""
  targets = style_targets(vgg_params, content, style, weights)

  def objective(x):
    return style_transfer_loss(vgg_params, x, targets, weights)[0]

  if optimizer == "lbfgs":
    opt = optax.lbfgs(memory_size=memory_size)
    value_and_grad = optax.value_and_grad_from_state(objective)

    def body(carry, _):
      x, state = carry
      value, grad = value_and_grad(x, state=state)
      updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=objective)
      return (optax.apply_updates(x, updates), state), value
  else:
    opt = optax.adam(lr)

    def body(carry, _):
      x, state = carry
      value, grad = jax.value_and_grad(objective)(x)
      updates, state = opt.update(grad, state, x)
      return (jnp.clip(optax.apply_updates(x, updates), -1.0, 1.0), state), value

  (x, _), losses = jax.lax.scan(body, (x0, opt.init(x0)), None, length=steps)
  x = jnp.clip(x, -1.0, 1.0)
  return StylizeResult(x, losses, style_transfer_terms(vgg_params, x, targets, weights))
