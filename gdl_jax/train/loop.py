"""The one training loop: data-parallel steps, metrics, eval, checkpoints, resume, samples.

    state = fit(task, config, dataset, workdir)

The run directory holds config.json, checkpoints/ (orbax), metrics.jsonl, TensorBoard events in
tb/ and samples.png. Re-running with the same directory and config resumes from the latest
checkpoint and reproduces the uninterrupted run (batches and keys are functions of the step).
A corrupt latest checkpoint is moved to checkpoints_corrupt/ and the run resumes from the newest
intact one. One process trains into a directory at a time (`rundir.lock`); every file is written
so that a kill between any two writes leaves a directory that every verb accepts.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gdl_jax import data as data_lib
from gdl_jax import sharding
from gdl_jax.configs import ConfigError
from gdl_jax.train import checkpoint as ckpt
from gdl_jax.train import rundir
from gdl_jax.train.rundir import RunDirBusyError, RunDirError, RunDirWriteError  # noqa: F401
from gdl_jax.train.task import Task


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/Inf loss; the last good checkpoint is kept."""


def config_to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict, *, experiment: str = "",
                    run_info: dict | None = None, write: bool = True) -> None:
  """Creates the run dir and writes run.json then config.json, or checks existing ones match.

  Both are written atomically, run.json ({"experiment", **run_info}) first: a kill between the two
  leaves run.json alone, which `train` completes and the other verbs report as "no checkpoint yet".
  A config.json without run.json (left by older versions) gets its run.json here.
  write=False: only the check (what every process of a multi-host run does before process 0 writes).
  """
  if write:
    try:
      os.makedirs(workdir, exist_ok=True)
    except OSError as e:
      raise rundir.write_error(e, workdir) from None
  path = os.path.join(workdir, "config.json")
  want = json.loads(config_to_json(config))
  meta_path = os.path.join(workdir, "run.json")
  meta = {**({"experiment": experiment} if experiment else {}), **(run_info or {})}
  if os.path.exists(path):
    with open(path) as f:
      have = json.load(f)
    if have != want:
      diff = sorted(_diff_keys(have, want))
      raise RunDirError(
          f"run directory {workdir} holds a run with a different config (differs in: "
          f"{', '.join(diff[:8])}). Nothing was changed: pass a new --workdir, or the same config "
          "to resume.")
    if experiment and os.path.exists(meta_path):
      with open(meta_path) as f:
        prev = json.load(f).get("experiment")
      if prev and prev != experiment:
        raise RunDirError(f"run directory {workdir} holds a {prev!r} run, not {experiment!r}; "
                          "pass a new --workdir.")
    if write:
      _update_run_json(meta_path, meta)
    return
  if not write:
    return
  _update_run_json(meta_path, meta)
  rundir.atomic_write(path, config_to_json(config))


def _update_run_json(meta_path: str, meta: dict) -> None:
  """Writes run.json as its current content updated by `meta` (only if that changes it)."""
  if not meta:
    return
  prev = read_json(meta_path) or {}
  if {**prev, **meta} != prev or not os.path.exists(meta_path):
    rundir.atomic_write(meta_path, json.dumps({**prev, **meta}))


def read_json(path: str) -> Any:
  """The JSON in `path`; None if it is missing or unreadable (e.g. emptied by a crash)."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for k in sorted(set(a) | set(b)):
      out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
    return out
  return [] if a == b else [prefix.rstrip(".")]


class MetricsWriter:
  """metrics.jsonl (one JSON object per line) plus TensorBoard scalars (tensorboardX, no TF)."""

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if tensorboard and sharding.is_writer():
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tb"))
      except Exception:  # TensorBoard is optional: a broken install must not stop training
        self._tb = None

  def write(self, step: int, split: str, metrics: dict) -> None:
    """Appends one row (one write of one line: a kill leaves at most a torn last line, which
    `read_metrics` ignores and the next run's `truncate_after` drops)."""
    if not sharding.is_writer():
      return
    row = {"step": int(step), "split": split, **{k: float(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
      f.flush()
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(f"{split}/{k}", float(v), int(step))

  def truncate_after(self, step: int) -> None:
    """Keeps the rows up to `step`, one per (step, split) (a resumed run re-logs the later ones, so
    the file reads as one run); torn lines are dropped. Rewritten atomically."""
    if not os.path.exists(self.path) or not sharding.is_writer():
      return
    rows = [r for r in read_metrics(os.path.dirname(self.path)) if r["step"] <= step]
    rundir.atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in rows))

  def close(self):
    if self._tb is None:
      return
    tb, self._tb = self._tb, None
    try:
      tb.close()
    except Exception:  # a full / read-only disk: the event file cannot be flushed
      for fw in getattr(tb, "all_writers", {}).values():  # stop its thread and atexit flush anyway
        ew = getattr(fw, "event_writer", None)
        for stop in (lambda: ew._worker.stop(), lambda: ew._ev_writer.close()):
          try:
            stop()
          except Exception:  # noqa: BLE001 - best effort; the loop reports the disk error
            pass
        if ew is not None:
          ew._closed = True
      raise


def read_metrics(workdir: str) -> list[dict]:
  """The rows of metrics.jsonl in file order, one per (step, split) (the last written wins); lines
  that are not a whole JSON row (a write torn by a kill) are skipped."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  rows: dict[tuple, dict] = {}
  with open(path) as f:
    for line in f:
      try:
        r = json.loads(line)
      except ValueError:
        continue
      if isinstance(r, dict) and isinstance(r.get("step"), int) and "split" in r:
        rows.pop((r["step"], r["split"]), None)
        rows[(r["step"], r["split"])] = r
  return sorted(rows.values(), key=lambda r: r["step"])


def multi_step(step, k: int):
  """k train steps as one jitted call: `many(state, batches, key) -> (state, metrics)`, batches
  stacked on a leading axis of k, metrics stacked likewise. The steps are traced one after another
  inside the same jit (a Python loop: on XLA:CPU a rolled `lax.scan` of a conv step ran 3-20x
  slower, benchmarks/README.md), so compile time grows with k. `step` must be traceable: a step
  that reads the step counter on the host (a two-stage or growing schedule) cannot be fused, and
  `fit` says so. The key is passed unchanged to every step, which folds in its own state.step, so
  k fused steps equal k single calls."""

  def many(state, batches, key):
    rows = []
    for i in range(k):
      state, m = step(state, jax.tree.map(lambda x: x[i], batches), key)
      rows.append(m)
    return state, jax.tree.map(lambda *xs: jnp.stack(xs), *rows)

  return jax.jit(many, donate_argnums=0)


def check_steps_per_call(k) -> int:
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ConfigError(f"steps_per_call={k!r}: pass a whole number >= 1 (1 = one step per call).")
  return int(k)


def _next_event(step: int, config, end: int) -> int:
  """The first step after `step` at which the loop logs, evaluates, checkpoints, writes a sample
  grid or stops: fused calls never run across one."""
  events = [end, int(config.steps)]
  for every in (config.log_every, config.eval_every, config.ckpt_every, config.get("sample_every", 0)):
    if every:
      events.append((step // int(every) + 1) * int(every))
  return min(events)


_HOST_ERRORS = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                jax.errors.TracerIntegerConversionError, jax.errors.TracerBoolConversionError)


def _call_multi(many, state, batches, key, experiment):
  try:
    return many(state, batches, key)
  except _HOST_ERRORS as e:  # raised while tracing: nothing was donated or run
    raise ConfigError(
        f"{experiment or 'this experiment'}'s train step reads the step counter on the host (a "
        "two-stage or growing schedule chooses its step between calls), so it cannot run several "
        "steps in one call; use --steps_per_call 1 for it.") from e


def _unstack_rows(pending, host) -> list[tuple[int, dict]]:
  """(step, scalar metrics) per train step: a fused call's stacked [k] metrics become k rows."""
  rows = []
  for (s, _), m in zip(pending, host):
    n = np.ndim(next(iter(m.values()))) if m else 0
    if n == 0:
      rows.append((s, m))
    else:
      k = len(next(iter(m.values())))
      rows.extend((s + i, {name: v[i] for name, v in m.items()}) for i in range(k))
  return rows


def _mean_metrics(rows: list[dict]) -> dict:
  return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} if rows else {}


def init_state(task: Task, config, dataset: data_lib.Dataset, mesh):
  """The step-0 state, replicated on the mesh, and the run's base keys."""
  key = jax.random.key(config.seed)
  init_key, step_key, eval_key, sample_key = jax.random.split(key, 4)
  example = sharding.shard_batch(sharding.local_part(
      data_lib.batch_at(dataset.train, 0, config.batch_size, config.seed), mesh), mesh)
  state = jax.jit(task.init, out_shardings=sharding.replicated(mesh))(init_key, example)
  return state, dict(step=step_key, eval=eval_key, sample=sample_key)


def _shapes(tree) -> list[tuple[str, tuple]]:
  return [(jax.tree_util.keystr(path), tuple(getattr(x, "shape", np.shape(x))))
          for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def check_warm_start(state_like, run: str) -> tuple[dict, int]:
  """(run's newest saved state dict, its step) after checking its params have exactly the tree and
  shapes of `state_like`'s (a state or `jax.eval_shape` of one); else one CheckpointError naming
  the first differences and the fix."""
  tree, step = ckpt.restore_raw(os.path.join(run, "checkpoints"))
  src = tree.get("params") if isinstance(tree, dict) else None
  ours, theirs = _shapes(state_like.params), _shapes(src) if src is not None else []
  if ours != theirs:
    diff = [f"{p}: {b} there, {a} here" if p == q else f"{q} there, {p} here"
            for (p, a), (q, b) in zip(ours, theirs) if (p, a) != (q, b)][:3]
    if len(ours) != len(theirs):
      diff.append(f"{len(theirs)} arrays there, {len(ours)} here")
    raise ckpt.CheckpointError(
        f"--init_from {run}: its parameters do not fit this model ({'; '.join(diff)}); pass a run of "
        "the same experiment and model sizes (the dataset, schedule and steps may differ).")
  return tree, step


def warm_start(state, run: str):
  """(state, source step): `state` (a fresh step-0 state) with the parameters of run `run`'s newest
  checkpoint: fine-tuning from another run (another dataset, size or schedule; a fresh optimiser).

  Read without building the source's model: its params must have exactly this model's tree and
  shapes (`check_warm_start`). Its EMA parameters start this run's EMA where both keep one (else
  the params do) and its non-trained collections (`extra`, e.g. BatchNorm statistics) are taken
  when they have this model's shapes, else left fresh (said on stderr).
  """
  tree, step = check_warm_start(state, run)
  src = tree["params"]

  def like(mine, saved):
    return jax.tree.map(lambda a, b: jnp.asarray(b, a.dtype), mine, saved)

  state = state.replace(params=like(state.params, src))
  if state.ema_params is not None:
    want = _shapes(state.ema_params)
    ema = tree.get("ema_params")
    if ema is None or _shapes(ema) != want:   # the source kept none: start from its params (a
      p = state.params                        # GAN's EMA is {"gen": ...}: its generator's)
      parts = [p] + ([{k: v} for k, v in p.items()] + list(p.values()) if isinstance(p, dict) else [])
      ema = next((q for q in parts if _shapes(q) == want), None)
    if ema is not None:
      state = state.replace(ema_params=like(state.ema_params, ema))
  extra = tree.get("extra")
  if _shapes(state.extra):
    if extra is not None and _shapes(extra) == _shapes(state.extra):
      state = state.replace(extra=like(state.extra, extra))
    elif sharding.is_writer():
      print(f"gdl-jax: --init_from {run}: its non-trained state (e.g. BatchNorm statistics) has other "
            "shapes; this run starts those fresh.", file=sys.stderr, flush=True)
  return state, step


def heldout_split(dataset) -> str:
  """The split the loop evaluates during training: "valid" where the dataset has one (so a step
  count or a checkpoint chosen from the curves never looked at the test split), else "test"."""
  return "valid" if getattr(dataset, "valid", None) is not None else "test"


def evaluate_heldout(task: Task, state, dataset, config, mesh, key, split: str = "test") -> dict:
  """Example-weighted mean of task.eval_step over the first `eval_batches` batches of `split`.

  The last partial batch is evaluated too (trimmed to a multiple of the device count), so with
  eval_batches large enough this covers the whole split.
  """
  if task.eval_step is None:
    return {}
  n_test = dataset.num_examples(split)
  ndev = mesh.devices.size
  bs = min(config.batch_size, n_test // ndev * ndev)
  sums: dict[str, float] = {}
  count = 0
  for i in range(int(config.eval_batches)):
    lo = i * bs
    hi = min(lo + bs, lo + (n_test - lo) // ndev * ndev)
    if hi <= lo:
      break
    batch = sharding.local_part({k: v[lo:hi] for k, v in getattr(dataset, split).items()}, mesh)
    m = sharding.fetch(task.eval_step(state, sharding.shard_batch(batch, mesh),
                                      jax.random.fold_in(key, i)))
    for k, v in m.items():
      sums[k] = sums.get(k, 0.0) + float(v) * (hi - lo)
    count += hi - lo
  return {k: v / count for k, v in sums.items()} if count else {}


def fit(task: Task, config: ml_collections.ConfigDict, dataset: data_lib.Dataset, workdir: str, *,
        experiment: str = "", progress: bool = True, write_samples: bool = True,
        stop_after: int | None = None, run_info: dict | None = None, steps_per_call: int = 1,
        init_from: str | None = None):
  """Trains `task` for config.steps steps in `workdir`, resuming from its newest intact checkpoint.

  Holds `<workdir>/.lock` throughout (a second writer gets RunDirBusyError). A checkpoint newer than
  the newest one that restores is moved to `<workdir>/checkpoints_corrupt/` (reported on stderr).
  stop_after: return after this many steps of this call (to simulate a kill in tests).
  run_info: extra keys for run.json (e.g. the CLI's data_dir).
  steps_per_call: k > 1 runs k train steps in one jitted call (`multi_step`) wherever no logging,
  evaluation, checkpoint or sample grid falls inside those k steps (single steps elsewhere): the
  same steps, keys and logged rows as k = 1, less per-step dispatch (what pays on an accelerator;
  README "Speed"). Not part of the config: a run may be resumed with another k.
  init_from: a run directory whose newest parameters start a new run (`warm_start`; recorded in
  run.json); ignored once this run has its own checkpoint (a resume continues the run itself).
  Raises RunDirError (incl. RunDirBusyError, RunDirWriteError for a full/read-only disk),
  CheckpointError or NonFiniteLossError with a message naming the fix.
  """
  if sharding.is_writer():
    try:
      os.makedirs(workdir, exist_ok=True)
    except OSError as e:
      raise rundir.write_error(e, workdir) from None
  # One writer per run directory: the lock is process 0's (multi-host processes share the directory).
  held = rundir.lock(workdir) if sharding.is_writer() else contextlib.nullcontext()
  with held, rundir.quiet_disk_errors():
    try:
      return _fit_locked(task, config, dataset, workdir, experiment=experiment, progress=progress,
                         write_samples=write_samples, stop_after=stop_after, run_info=run_info,
                         steps_per_call=steps_per_call, init_from=init_from)
    except OSError as e:  # metrics, samples, train_time on a full / read-only disk
      err = rundir.write_error(e, workdir)
      if err is e:
        raise
      raise err from None


def _resume(task, config, workdir, mngr, state):
  """(manager, state or None, start step): restores the newest intact checkpoint, moving the newer
  corrupt ones to checkpoints_corrupt/ (then reopening the manager so orbax no longer sees them)."""
  restored, start, skipped = ckpt.restore_intact(mngr, state)
  if skipped and sharding.is_writer():
    mngr.close()
    for step, err in skipped:
      moved = ckpt.quarantine(workdir, step)
      reason = str(err).split(" It was left untouched")[0].rstrip(".")
      print(f"gdl-jax: skipped checkpoint step {step}: {reason}. Moved it to {moved} (kept, not "
            f"deleted); resuming from step {start}.", file=sys.stderr, flush=True)
    mngr = ckpt.manager(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints,
                        save_every=config.ckpt_every)
  return mngr, restored, start


def _fit_locked(task, config, dataset, workdir, *, experiment, progress, write_samples, stop_after,
                run_info, steps_per_call=1, init_from=None):
  # Every process checks the run dir (a different config is refused before any work), then
  # process 0 writes it, after the state is built (and a warm start read).
  prepare_workdir(workdir, config, experiment=experiment, write=False)
  if jax.process_count() > 1:
    sharding.sync("gdl_jax.prepare_workdir")
  warm = None
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  data_lib.steps_per_epoch(dataset.num_examples("train"), config.batch_size)
  state, keys = init_state(task, config, dataset, mesh)
  if init_from and not ckpt.saved_steps(os.path.join(workdir, "checkpoints")):
    warm = warm_start(jax.device_get(state), init_from)   # read and checked before the run dir is written
  if sharding.is_writer():
    prepare_workdir(workdir, config, experiment=experiment, run_info=run_info)

  mngr = ckpt.manager(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints,
                      save_every=config.ckpt_every)
  try:
    mngr, restored, start = _resume(task, config, workdir, mngr, state)
  except BaseException:
    mngr.close()
    raise
  if restored is not None:
    state = jax.device_put(restored, sharding.replicated(mesh))
  elif warm is not None:
    state, source_step = warm
    state = jax.device_put(state, sharding.replicated(mesh))
    if sharding.is_writer():
      _update_run_json(os.path.join(workdir, "run.json"),
                       {"init_from": os.path.abspath(init_from), "init_step": source_step})
  writer = MetricsWriter(workdir)
  writer.truncate_after(start)

  total = int(config.steps)
  end = total if stop_after is None else min(total, start + stop_after)
  pending: list[tuple[int, dict]] = []
  bar = None
  if progress and sharding.is_writer():
    from tqdm.auto import tqdm
    bar = tqdm(total=total, initial=start, desc=experiment or "train", dynamic_ncols=True)

  def flush(step_now: int):
    """Fetches pending metrics, checks them finite, logs their mean."""
    if not pending:
      return
    host = _unstack_rows(pending, sharding.fetch([m for _, m in pending]))
    for s, m in host:
      if not all(math.isfinite(float(v)) for v in m.values()):
        bad = [k for k, v in m.items() if not math.isfinite(float(v))]
        ckpt.wait(mngr, state)
        last = mngr.latest_step()
        kept = (f"The last good checkpoint (step {last}) is kept in {workdir}/checkpoints."
                if last is not None else "No checkpoint had been saved yet, so none is kept.")
        raise NonFiniteLossError(
            f"non-finite {', '.join(bad)} at step {s + 1}; training stopped. {kept} Lower the "
            "learning rate (--config.optimizer.lr) or set --config.optimizer.clip_norm=1.0 and re-run.")
    mean = _mean_metrics([m for _, m in host])
    writer.write(step_now, "train", mean)
    if bar is not None:
      bar.set_postfix({k: f"{v:.4g}" for k, v in list(mean.items())[:3]})
    pending.clear()

  k_max = check_steps_per_call(steps_per_call)
  many = multi_step(task.step, k_max) if k_max > 1 else None

  def batch_of(s):
    return data_lib.batch_at(dataset.train, s, config.batch_size, config.seed,
                             process_index=jax.process_index(), process_count=jax.process_count())

  t0 = time.time()
  step = start
  done = False
  try:
    while step < end:
      k = k_max if many is not None and _next_event(step, config, end) - step >= k_max else 1
      if k > 1:
        batches = jax.tree.map(lambda *xs: np.stack(xs), *[batch_of(step + i) for i in range(k)])
        state, metrics = _call_multi(many, state, sharding.shard_batch(batches, mesh, stacked=True),
                                     keys["step"], experiment)
      else:
        state, metrics = task.step(state, sharding.shard_batch(batch_of(step), mesh), keys["step"])
      pending.append((step, metrics))
      step += k
      if bar is not None:
        bar.update(k)
      if step % config.log_every == 0 or step == end:
        flush(step)
      if step % config.eval_every == 0 or step == total:
        split = heldout_split(dataset)
        ev = evaluate_heldout(task, state, dataset, config, mesh, keys["eval"], split)
        if ev:
          writer.write(step, split, ev)
      if step % config.ckpt_every == 0 or step == end:
        flush(step)
        ckpt.save(mngr, step, state)
      if config.get("sample_every", 0) and step % config.sample_every == 0 and \
          task.sample is not None and dataset.info.kind == "image" and sharding.is_writer():
        _write_progress_grid(task, sharding.host_local(state), dataset, config, workdir,
                             keys["sample"], step)
    ckpt.wait(mngr, state)  # a failed async save surfaces here, as one RunDirWriteError
    done = True
  finally:
    _close_all([mngr.wait_until_finished, mngr.close, writer.close] +
               ([bar.close] if bar is not None else []), raise_first=done)
  if step == total and write_samples and (task.sample is not None or task.write_artifacts is not None) \
      and sharding.is_writer():
    local = sharding.host_local(state)  # multi-host: process 0 samples alone, from its own copy
    from gdl_jax import progress as progress_lib
    with progress_lib.ticker("writing samples" + (" and figures" if task.write_artifacts else ""),
                             delay=2.0) if progress else contextlib.nullcontext():
      if task.sample is not None:
        _write_samples(task, local, dataset, config, workdir, keys["sample"])
        _write_progress_gif(workdir)
      if task.write_artifacts is not None:
        task.write_artifacts(local, dataset, workdir, keys["sample"])
  if sharding.is_writer():
    rundir.atomic_write(os.path.join(workdir, "train_time.json"),
                        json.dumps({"steps_this_call": step - start, "seconds": time.time() - t0}))
  return state


def _close_all(closers, *, raise_first: bool) -> None:
  """Calls every closer (a failing one must not leave the others open, e.g. TensorBoard's writer,
  whose atexit flush would print a traceback). Re-raises the first failure when `raise_first` (the
  run otherwise succeeded); else the error already propagating is the one reported."""
  first = None
  for close in closers:
    try:
      close()
    except Exception as e:  # noqa: BLE001 - every closer runs
      first = first or e
  if first is not None and raise_first:
    raise first


def _write_progress_grid(task, state, dataset, config, workdir, key, step):
  """Samples of one fixed key (the same latents for a GAN) at this step, as progress/step_N.png."""
  from gdl_jax.evaluation.grids import save_grid
  samples = np.asarray(jax.device_get(task.sample(state, key, int(config.num_samples))))
  os.makedirs(os.path.join(workdir, "progress"), exist_ok=True)
  save_grid(samples, os.path.join(workdir, "progress", f"step_{step:07d}.png"),
            levels=dataset.info.levels)


def _write_progress_gif(workdir):
  """progress.gif from the progress grids (over all calls of a resumed run)."""
  d = os.path.join(workdir, "progress")
  if not os.path.isdir(d):
    return
  from PIL import Image
  frames = [Image.open(os.path.join(d, f)).convert("P") for f in sorted(os.listdir(d))
            if f.endswith(".png")]
  if len(frames) > 1:
    frames[0].save(os.path.join(workdir, "progress.gif"), save_all=True, append_images=frames[1:],
                   duration=400, loop=0)


def _write_samples(task, state, dataset, config, workdir, key):
  from gdl_jax.evaluation.grids import save_grid
  samples = np.asarray(jax.device_get(task.sample(state, key, int(config.num_samples))))
  if task.save_samples is not None:   # e.g. music: .mid / .wav / piano-roll .png per sample
    task.save_samples(samples, os.path.join(workdir, "samples"))
  elif dataset.info.kind == "image":
    save_grid(samples, os.path.join(workdir, "samples.png"), levels=dataset.info.levels)
  elif dataset.info.kind == "points":
    from gdl_jax.evaluation.grids import save_scatter
    save_scatter(samples, None, os.path.join(workdir, "samples.png"))
  elif dataset.info.kind == "music":
    from gdl_jax.evaluation.music import write_music_samples
    write_music_samples(dataset.info, samples[:4], os.path.join(workdir, "samples"))
  elif dataset.info.kind == "text":
    vocab = dataset.info.vocab
    sep = "" if all(len(t) == 1 for t in vocab) else " "
    with open(os.path.join(workdir, "samples.txt"), "w") as f:
      for row in samples:
        f.write(sep.join(vocab[int(t)] for t in row) + "\n\n")


def latest_state(task: Task, config, dataset, workdir: str, step: int | None = None):
  """The checkpointed state of a run at `step` (default: the latest), and the run's keys (for
  sample/evaluate). Reads only: a corrupt checkpoint is reported with the steps that do restore."""
  mesh = sharding.make_mesh()
  state, keys = init_state(task, config, dataset, mesh)
  directory = os.path.join(workdir, "checkpoints")
  if not ckpt.saved_steps(directory):
    raise ckpt.CheckpointError(
        f"no checkpoint in {directory} yet; train first (or re-run `gdl-jax train` with "
        f"--workdir {workdir} to resume it).")
  mngr = ckpt.manager(directory, keep=config.keep_checkpoints, save_every=config.ckpt_every,
                      read_only=True)
  try:
    steps = sorted(int(s) for s in mngr.all_steps())
    if step is not None and step not in steps:
      raise ckpt.CheckpointError(f"no checkpoint at step {step} in {directory}; the saved steps "
                                 f"are {', '.join(map(str, steps))}.")
    try:
      restored = ckpt.restore(mngr, state, step)
    except ckpt.CheckpointError as e:
      failed = steps[-1] if step is None else step
      intact = ckpt.intact_steps(mngr, state, exclude=(failed,))
      reason = str(e).split(" It was left untouched")[0].rstrip(".")
      hint = (f"Intact steps: {', '.join(map(str, intact))}; pass --step {intact[0]} to use the "
              "newest of them (or re-run `gdl-jax train` on this directory, which resumes from "
              "it)." if intact else "No other step restores either: train in a new --workdir.")
      raise ckpt.CheckpointError(f"{reason}. It was left untouched. {hint}") from None
  finally:
    mngr.close()
  return jax.device_put(restored, sharding.replicated(mesh)), keys
