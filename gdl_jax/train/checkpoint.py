"""Orbax checkpoints of the TrainState: atomic saves, keep K, restore against an abstract target.

A checkpoint that cannot be read (corrupt, or written by another model) raises `CheckpointError`
and is left exactly as it is: nothing here deletes or overwrites a step it could not restore.
"""

from __future__ import annotations

import os

import flax.serialization
import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored into this run's state."""


def manager(directory: str, *, keep: int, save_every: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=1, create=True,
                                         cleanup_tmp_directories=True)
  del save_every  # the loop decides when to save (so the final step is always saved)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state) -> None:
  """Saves `state` at `step` (async; orbax writes into a temporary dir and renames it: atomic)."""
  mngr.save(step, args=ocp.args.StandardSave(flax.serialization.to_state_dict(state)), force=True)


def restore(mngr: ocp.CheckpointManager, state_like, step: int | None = None):
  """The state saved at `step` (default: latest) shaped like `state_like`; None if there is none."""
  step = mngr.latest_step() if step is None else step
  if step is None:
    return None
  target = flax.serialization.to_state_dict(state_like)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  where = os.path.join(str(mngr.directory), str(step))
  try:
    restored = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
  except Exception as e:  # orbax raises many types: missing files, shape/dtype/tree mismatch
    raise CheckpointError(
        f"checkpoint {where} cannot be restored into this model ({type(e).__name__}: "
        f"{str(e).splitlines()[0][:300]}). It was left untouched. It is corrupt or was written by a "
        "different model/config: move it away, or train in a new --workdir.") from e
  _check_same_structure(target, restored, where)
  return flax.serialization.from_state_dict(state_like, restored)


def _check_same_structure(target, restored, where):
  want = jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), target)
  got = jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), restored)
  if jax.tree.structure(want) != jax.tree.structure(got) or want != got:
    raise CheckpointError(f"checkpoint {where} holds arrays of other shapes than this model's; it was "
                          "left untouched. Train in a new --workdir or restore the matching config.")
