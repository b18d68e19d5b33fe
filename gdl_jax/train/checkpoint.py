"""Orbax checkpoints of the TrainState: atomic saves, keep K, restore against an abstract target.

A checkpoint that cannot be read (corrupt, or written by another model) raises `CheckpointError`
and is never deleted: `restore_intact` falls back to the newest step that restores and `quarantine`
moves the unreadable newer ones to `<workdir>/checkpoints_corrupt/` (out of orbax's way, kept).
A save into a full or read-only disk raises one `RunDirWriteError` naming the directory and the
space a checkpoint needs; the steps saved before it are left intact.
"""

from __future__ import annotations

import os

import flax.serialization
import jax
import orbax.checkpoint as ocp

from gdl_jax.train import rundir

CORRUPT_DIR = "checkpoints_corrupt"


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored into this run's state."""


def manager(directory: str, *, keep: int, save_every: int,
            read_only: bool = False) -> ocp.CheckpointManager:
  """Orbax's manager of `directory`. read_only (sample/evaluate; never save with it): creates
  nothing and leaves the temporary directories of a save in progress alone (a live `train` may be
  writing one)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=1,
                                         create=not read_only,
                                         cleanup_tmp_directories=not read_only)
  del save_every  # the loop decides when to save (so the final step is always saved)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state) -> None:
  """Saves `state` at `step` (async; orbax writes into a temporary dir and renames it: atomic).

  First checks the disk has room for one more checkpoint (the size of the latest one on disk, or
  the state's bytes for the first), so a full disk is one RunDirWriteError before orbax starts
  writing, not a failure in its threads. Errors of the previous async save surface here too.
  """
  directory = str(mngr.directory)
  need = checkpoint_bytes(mngr, state)
  free = rundir.free_bytes(directory)
  if free is not None and free < need:
    wait(mngr, state)  # the previous save may still be writing; let it complete (or fail)
    free = rundir.free_bytes(directory)
  if free is not None and free < need:
    raise rundir.RunDirWriteError(
        f"no space left writing to {directory} ({rundir.format_bytes(free)} free, a checkpoint "
        f"needs about {rundir.format_bytes(need)}): step {step} was not saved. "
        f"{intact_sentence(mngr)}Nothing was deleted; free some space (or move the run to a "
        "larger disk) and re-run the same command to resume.")
  try:
    mngr.save(step, args=ocp.args.StandardSave(flax.serialization.to_state_dict(state)), force=True)
  except Exception as e:
    raise as_write_error(e, mngr, state) from None


def wait(mngr: ocp.CheckpointManager, state) -> None:
  """Waits for the pending async save; a full/read-only disk is one RunDirWriteError."""
  try:
    mngr.wait_until_finished()
  except Exception as e:
    raise as_write_error(e, mngr, state) from None


def as_write_error(e: BaseException, mngr: ocp.CheckpointManager, state) -> BaseException:
  """RunDirWriteError for a failed save on a full/read-only disk; `e` itself for any other error."""
  return rundir.write_error(e, str(mngr.directory), need=checkpoint_bytes(mngr, state),
                            intact=intact_sentence(mngr).strip())


def intact_sentence(mngr: ocp.CheckpointManager) -> str:
  steps = saved_steps(str(mngr.directory))
  return f"Checkpoints up to step {steps[-1]} are intact. " if steps else ""


def saved_steps(directory: str) -> list[int]:
  """The committed steps in a checkpoints directory (orbax's finished, renamed step dirs), sorted."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory)
                if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def checkpoint_bytes(mngr: ocp.CheckpointManager, state) -> int:
  """Bytes one more checkpoint takes: the newest saved step's size on disk, else the state's bytes
  plus orbax's per-array metadata."""
  steps = saved_steps(str(mngr.directory))
  if steps:
    root = os.path.join(str(mngr.directory), str(steps[-1]))
    size = 0
    for r, _, files in os.walk(root):
      for f in files:
        try:
          size += os.path.getsize(os.path.join(r, f))
        except OSError:
          pass
    if size:
      return size
  leaves = jax.tree.leaves(flax.serialization.to_state_dict(state))
  return int(sum(getattr(x, "nbytes", 8) for x in leaves)) + 1024 * len(leaves)


def restore(mngr: ocp.CheckpointManager, state_like, step: int | None = None):
  """The state saved at `step` (default: latest) shaped like `state_like`; None if there is none."""
  step = mngr.latest_step() if step is None else step
  if step is None:
    return None
  target = flax.serialization.to_state_dict(state_like)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  where = os.path.join(str(mngr.directory), str(step))
  try:
    with rundir.quiet_closed_loop_callbacks():
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


def restore_intact(mngr: ocp.CheckpointManager, state_like):
  """(state, step, skipped) from the newest checkpoint that restores; (None, 0, []) if none is saved.

  skipped: [(step, CheckpointError)] for the newer steps that could not be restored. If no step
  restores, raises the newest step's CheckpointError (nothing moved: it may be a config mismatch).
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  skipped = []
  for step in steps:
    try:
      return restore(mngr, state_like, step), int(step), skipped
    except CheckpointError as e:
      skipped.append((int(step), e))
  if not skipped:
    return None, 0, []
  if len(skipped) == 1:
    raise skipped[0][1]
  raise CheckpointError(
      f"no checkpoint in {mngr.directory} can be restored into this model (steps "
      f"{', '.join(str(s) for s, _ in skipped)}); the newest: {skipped[0][1]}")


def restore_raw(directory: str, step: int | None = None) -> tuple[dict, int]:
  """(the saved state dict as written, its step) of `directory`'s newest checkpoint (or `step`),
  read without a target (no model needed: what a warm start from another run reads)."""
  steps = saved_steps(directory)
  if not steps:
    raise CheckpointError(f"no checkpoint in {directory}: train that run first.")
  step = steps[-1] if step is None else step
  if step not in steps:
    raise CheckpointError(f"no checkpoint at step {step} in {directory}; the saved steps are "
                          f"{', '.join(map(str, steps))}.")
  mngr = manager(directory, keep=len(steps), save_every=1, read_only=True)
  where = os.path.join(directory, str(step))
  try:
    with rundir.quiet_closed_loop_callbacks():
      tree = mngr.restore(step, args=ocp.args.StandardRestore())
  except Exception as e:
    raise CheckpointError(f"checkpoint {where} cannot be read ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:300]}); it was left untouched.") from e
  finally:
    mngr.close()
  return tree, int(step)


def intact_steps(mngr: ocp.CheckpointManager, state_like, exclude=()) -> list[int]:
  """The saved steps (newest first) that restore into `state_like` (each one is read to check)."""
  out = []
  for step in sorted(mngr.all_steps(), reverse=True):
    if step in exclude:
      continue
    try:
      restore(mngr, state_like, step)
      out.append(int(step))
    except CheckpointError:
      pass
  return out


def quarantine(workdir: str, step: int) -> str:
  """Moves `<workdir>/checkpoints/<step>` to `<workdir>/checkpoints_corrupt/<step>` (or `<step>.N`
  if that exists), out of orbax's way and never deleted. Returns the new path."""
  src = os.path.join(workdir, "checkpoints", str(step))
  root = os.path.join(workdir, CORRUPT_DIR)
  dst = os.path.join(root, str(step))
  n = 1
  while os.path.exists(dst):
    dst = os.path.join(root, f"{step}.{n}")
    n += 1
  try:
    os.makedirs(root, exist_ok=True)
    os.rename(src, dst)
  except OSError as e:
    raise rundir.write_error(e, workdir) if rundir.disk_errno(e) else CheckpointError(
        f"checkpoint {src} cannot be restored and could not be moved to {dst} ({e}); move it "
        "away by hand and re-run.") from None
  return dst
