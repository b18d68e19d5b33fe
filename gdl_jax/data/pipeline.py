"""Deterministic batching: the batch of step t is a pure function of (seed, t).

That makes resuming exact: a run restarted at step t sees the same batches as one that never
stopped. Each epoch is a fresh seeded permutation; the last partial batch of an epoch is dropped.
"""

from __future__ import annotations

import numpy as np


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  if batch_size > num_examples:
    raise ValueError(f"batch_size={batch_size} is larger than the split ({num_examples} examples); "
                     f"use --config.batch_size={num_examples} or less.")
  return num_examples // batch_size


def batch_at(arrays: dict, step: int, batch_size: int, seed: int, *,
             process_index: int = 0, process_count: int = 1) -> dict:
  """Global batch `step` (this process's contiguous share of it under multi-host)."""
  n = len(next(iter(arrays.values())))
  spe = steps_per_epoch(n, batch_size)
  epoch, i = divmod(int(step), spe)
  perm = np.random.default_rng([seed, epoch]).permutation(n)
  idx = perm[i * batch_size:(i + 1) * batch_size]
  if process_count > 1:
    local = batch_size // process_count
    idx = idx[process_index * local:(process_index + 1) * local]
  return {k: v[idx] for k, v in arrays.items()}
