"""The config block every experiment shares (top-level keys read by the loop and the CLI)."""

from __future__ import annotations

import ml_collections

from gdl_jax.optim import default_optimizer_config


def base_config(dataset: str, *, steps: int, batch_size: int, lr: float = 1e-3,
                seed: int = 0, **optimizer_kw) -> ml_collections.ConfigDict:
  """Top-level keys of every experiment (the loop and CLI read these; `model` is the family's)."""
  c = ml_collections.ConfigDict()
  c.dataset = dataset
  c.seed = seed
  c.batch_size = batch_size
  c.steps = steps
  c.log_every = max(steps // 20, 1)
  c.eval_every = max(steps // 4, 1)
  c.ckpt_every = max(steps // 4, 1)
  c.keep_checkpoints = 2
  c.num_samples = 64
  c.sample_every = 0  # > 0: a sample grid of one fixed key every N steps, and a GIF of them
  c.eval_batches = 8
  c.optimizer = default_optimizer_config(lr, **optimizer_kw)
  c.model = ml_collections.ConfigDict()
  return c


def shrink(c: ml_collections.ConfigDict, steps: int = 4, batch_size: int = 8) -> ml_collections.ConfigDict:
  """The `tiny` variant: a few steps on small batches, for tests."""
  c.steps, c.batch_size = steps, batch_size
  c.log_every = c.eval_every = c.ckpt_every = max(steps // 2, 1)
  c.num_samples = 8
  c.eval_batches = 1
  return c
