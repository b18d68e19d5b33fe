"""The one training loop: data-parallel steps, metrics, eval, checkpoints, resume, samples.

    state = fit(task, config, dataset, workdir)

The run directory holds config.json, checkpoints/ (orbax), metrics.jsonl, TensorBoard events in
tb/ and samples.png. Re-running with the same directory and config resumes from the latest
checkpoint and reproduces the uninterrupted run (batches and keys are functions of the step).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gdl_jax import data as data_lib
from gdl_jax import sharding
from gdl_jax.train import checkpoint as ckpt
from gdl_jax.train.task import Task


class RunDirError(ValueError):
  """The run directory belongs to another configuration."""


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/Inf loss; the last good checkpoint is kept."""


def config_to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict, *, experiment: str = "",
                    write: bool = True) -> None:
  """Creates the run dir and writes config.json, or checks an existing one matches.

  write=False: only the check (what every process of a multi-host run does before process 0 writes).
  """
  if write:
    os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  want = json.loads(config_to_json(config))
  meta_path = os.path.join(workdir, "run.json")
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
    return
  if not write:
    return
  with open(path + ".tmp", "w") as f:
    f.write(config_to_json(config))
  os.replace(path + ".tmp", path)
  if experiment:
    with open(meta_path, "w") as f:
      json.dump({"experiment": experiment}, f)


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
    if not sharding.is_writer():
      return
    row = {"step": int(step), "split": split, **{k: float(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(f"{split}/{k}", float(v), int(step))

  def truncate_after(self, step: int) -> None:
    """Drops rows beyond `step` (a resumed run re-logs them, so the file reads as one run)."""
    if not os.path.exists(self.path) or not sharding.is_writer():
      return
    with open(self.path) as f:
      rows = [json.loads(l) for l in f if l.strip()]
    with open(self.path + ".tmp", "w") as f:
      for r in rows:
        if r["step"] <= step:
          f.write(json.dumps(r) + "\n")
    os.replace(self.path + ".tmp", self.path)

  def close(self):
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip()]


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


def evaluate_heldout(task: Task, state, dataset, config, mesh, key) -> dict:
  """Example-weighted mean of task.eval_step over the first `eval_batches` test batches.

  The last partial batch is evaluated too (trimmed to a multiple of the device count), so with
  eval_batches large enough this covers the whole test split.
  """
  if task.eval_step is None:
    return {}
  n_test = dataset.num_examples("test")
  ndev = mesh.devices.size
  bs = min(config.batch_size, n_test // ndev * ndev)
  sums: dict[str, float] = {}
  count = 0
  for i in range(int(config.eval_batches)):
    lo = i * bs
    hi = min(lo + bs, lo + (n_test - lo) // ndev * ndev)
    if hi <= lo:
      break
    batch = sharding.local_part({k: v[lo:hi] for k, v in dataset.test.items()}, mesh)
    m = sharding.fetch(task.eval_step(state, sharding.shard_batch(batch, mesh),
                                      jax.random.fold_in(key, i)))
    for k, v in m.items():
      sums[k] = sums.get(k, 0.0) + float(v) * (hi - lo)
    count += hi - lo
  return {k: v / count for k, v in sums.items()} if count else {}


def fit(task: Task, config: ml_collections.ConfigDict, dataset: data_lib.Dataset, workdir: str, *,
        experiment: str = "", progress: bool = True, write_samples: bool = True,
        stop_after: int | None = None):
  """Trains `task` for config.steps steps in `workdir`, resuming from its latest checkpoint.

  stop_after: return after this many steps of this call (to simulate a kill in tests).
  Raises RunDirError, CheckpointError or NonFiniteLossError with a message naming the fix.
  """
  if jax.process_count() > 1:  # multi-host: every process checks the run dir, then process 0 writes
    prepare_workdir(workdir, config, experiment=experiment, write=False)
    sharding.sync("gdl_jax.prepare_workdir")
  if sharding.is_writer():
    prepare_workdir(workdir, config, experiment=experiment)
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  data_lib.steps_per_epoch(dataset.num_examples("train"), config.batch_size)
  state, keys = init_state(task, config, dataset, mesh)

  mngr = ckpt.manager(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints,
                      save_every=config.ckpt_every)
  restored = ckpt.restore(mngr, state)
  start = 0
  if restored is not None:
    state = jax.device_put(restored, sharding.replicated(mesh))
    start = int(mngr.latest_step())
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
    host = sharding.fetch([m for _, m in pending])
    for (s, _), m in zip(pending, host):
      if not all(math.isfinite(float(v)) for v in m.values()):
        bad = [k for k, v in m.items() if not math.isfinite(float(v))]
        last = mngr.latest_step()
        mngr.wait_until_finished()
        kept = (f"The last good checkpoint (step {last}) is kept in {workdir}/checkpoints."
                if last is not None else "No checkpoint had been saved yet, so none is kept.")
        raise NonFiniteLossError(
            f"non-finite {', '.join(bad)} at step {s + 1}; training stopped. {kept} Lower the "
            "learning rate (--config.optimizer.lr) or set --config.optimizer.clip_norm=1.0 and re-run.")
    mean = _mean_metrics(host)
    writer.write(step_now, "train", mean)
    if bar is not None:
      bar.set_postfix({k: f"{v:.4g}" for k, v in list(mean.items())[:3]})
    pending.clear()

  t0 = time.time()
  step = start
  try:
    while step < end:
      batch = data_lib.batch_at(dataset.train, step, config.batch_size, config.seed,
                                process_index=jax.process_index(),
                                process_count=jax.process_count())
      state, metrics = task.step(state, sharding.shard_batch(batch, mesh), keys["step"])
      pending.append((step, metrics))
      step += 1
      if bar is not None:
        bar.update(1)
      if step % config.log_every == 0 or step == end:
        flush(step)
      if step % config.eval_every == 0 or step == total:
        ev = evaluate_heldout(task, state, dataset, config, mesh, keys["eval"])
        if ev:
          writer.write(step, "test", ev)
      if step % config.ckpt_every == 0 or step == end:
        flush(step)
        ckpt.save(mngr, step, state)
      if config.get("sample_every", 0) and step % config.sample_every == 0 and \
          task.sample is not None and dataset.info.kind == "image" and sharding.is_writer():
        _write_progress_grid(task, sharding.host_local(state), dataset, config, workdir,
                             keys["sample"], step)
  finally:
    mngr.wait_until_finished()
    mngr.close()
    writer.close()
    if bar is not None:
      bar.close()
  if step == total and write_samples and task.sample is not None and sharding.is_writer():
    local = sharding.host_local(state)  # multi-host: process 0 samples alone, from its own copy
    _write_samples(task, local, dataset, config, workdir, keys["sample"])
    _write_progress_gif(workdir)
    if task.write_artifacts is not None:
      task.write_artifacts(local, dataset, workdir, keys["sample"])
  if sharding.is_writer():
    with open(os.path.join(workdir, "train_time.json"), "w") as f:
      json.dump({"steps_this_call": step - start, "seconds": time.time() - t0}, f)
  return state


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
  if dataset.info.kind == "image":
    save_grid(samples, os.path.join(workdir, "samples.png"), levels=dataset.info.levels)
  elif dataset.info.kind == "points":
    from gdl_jax.evaluation.grids import save_scatter
    save_scatter(samples, None, os.path.join(workdir, "samples.png"))
  elif dataset.info.kind == "text":
    vocab = dataset.info.vocab
    sep = "" if all(len(t) == 1 for t in vocab) else " "
    with open(os.path.join(workdir, "samples.txt"), "w") as f:
      for row in samples:
        f.write(sep.join(vocab[int(t)] for t in row) + "\n\n")


def latest_state(task: Task, config, dataset, workdir: str):
  """The latest checkpointed state of a run (for sample/evaluate)."""
  mesh = sharding.make_mesh()
  state, keys = init_state(task, config, dataset, mesh)
  mngr = ckpt.manager(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints,
                      save_every=config.ckpt_every)
  try:
    restored = ckpt.restore(mngr, state)
  finally:
    mngr.close()
  if restored is None:
    raise ckpt.CheckpointError(f"no checkpoint in {workdir}/checkpoints; train first with "
                               "`gdl-jax train ... --workdir` on this directory.")
  return jax.device_put(restored, sharding.replicated(mesh)), keys
