"""Config -> one optax chain (clipping, Adam/AdamW/SGD, schedule), built outside the step."""

from __future__ import annotations

import ml_collections
import optax

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("constant", "cosine", "linear")


def make_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """constant / cosine / linear decay after an optional linear warm-up.

  decay_start_frac (optional key, default 0): the decay holds lr until this fraction of the steps
  (CycleGAN's recipe: 0.5, constant for the first half, linear to 0 over the second).
  """
  lr = float(cfg.lr)
  warmup = int(cfg.get("warmup_steps", 0))
  kind = cfg.get("schedule", "constant")
  hold = max(int(round(float(cfg.get("decay_start_frac", 0.0)) * int(total_steps))) - warmup, 0)
  decay_steps = max(int(total_steps) - warmup - hold, 1)
  if kind == "constant":
    main = optax.constant_schedule(lr)
  elif kind == "cosine":
    main = optax.cosine_decay_schedule(lr, decay_steps, alpha=float(cfg.get("final_lr_frac", 0.0)))
  elif kind == "linear":
    main = optax.linear_schedule(lr, lr * float(cfg.get("final_lr_frac", 0.0)), decay_steps)
  else:
    raise ValueError(f"optimizer.schedule={kind!r} is unknown; use 'constant', 'cosine' or 'linear'.")
  if hold and kind != "constant":
    main = optax.join_schedules([optax.constant_schedule(lr), main], [hold])
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
  return main


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """cfg: name, lr, [b1, b2, eps, weight_decay, momentum, clip_norm, clip_value, schedule, warmup_steps].

  clip_value clips *gradients* elementwise. The WGAN critic's weight clipping is a parameter
  constraint, not a gradient transform: see gdl_jax.objectives.gan (clip_params / weight_clipping).
  """
  name = cfg.get("name", "adam")
  if name not in OPTIMIZERS:
    raise ValueError(f"optimizer.name={name!r} is unknown; use one of {OPTIMIZERS}.")
  lr = make_schedule(cfg, total_steps)
  parts = []
  if cfg.get("clip_norm", None):
    parts.append(optax.clip_by_global_norm(float(cfg.clip_norm)))
  if cfg.get("clip_value", None):
    parts.append(optax.clip(float(cfg.clip_value)))
  b1, b2, eps = float(cfg.get("b1", 0.9)), float(cfg.get("b2", 0.999)), float(cfg.get("eps", 1e-8))
  if name == "adam":
    parts.append(optax.adam(lr, b1=b1, b2=b2, eps=eps))
  elif name == "adamw":
    parts.append(optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=float(cfg.get("weight_decay", 1e-4))))
  elif name == "sgd":
    parts.append(optax.sgd(lr, momentum=cfg.get("momentum", None)))
  elif name == "rmsprop":
    parts.append(optax.rmsprop(lr))
  return optax.chain(*parts)


def default_optimizer_config(lr: float = 1e-3, **kw) -> ml_collections.ConfigDict:
  """The optimizer block every experiment config carries (all keys present so CLI overrides type-check)."""
  c = ml_collections.ConfigDict(dict(name="adam", lr=lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
                                     clip_norm=0.0, clip_value=0.0, schedule="constant",
                                     warmup_steps=0, final_lr_frac=0.0))
  c.update(kw)
  return c
