"""Rollout collection: random-policy episodes as array_record shards, in worker processes, resumable.

    collect(out_dir, episodes=200, max_steps=1000, seed=0, shard_size=4, workers=2)
    episodes = load_rollouts(out_dir)          # list of {"frames", "actions", "rewards", "dones"}

Shard k holds episodes [k * shard_size, (k + 1) * shard_size), one record per episode (an npz of
its arrays), and episode i is a pure function of (seed, i), so shards can be written in any order.
A shard is written to a hidden `.partial` name and renamed into place once closed: a reader only
ever sees whole shards, and a killed collection re-run on the same directory deletes its partial
files and writes only the missing shards. `collection.json` records the settings; a different
request on the same directory, or a directory holding other files, is refused (a user's rollouts
are never overwritten).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from typing import Callable, Iterator, Optional

import numpy as np

from gdl_jax import progress
from gdl_jax.data.info import DataError
from gdl_jax.world import env as env_lib

MANIFEST = "collection.json"
SHARD = "rollouts-{:05d}.array_record"
_SHARD_RE = re.compile(r"^rollouts-(\d{5})\.array_record$")
_PARTIAL = ".partial"
KEYS = ("frames", "actions", "rewards", "dones")


def _manifest(episodes, max_steps, seed, shard_size) -> dict:
  return {"env": env_lib.ENV_ID, "policy": "brownian", "frame": env_lib.FRAME,
          "episodes": int(episodes), "max_steps": int(max_steps), "seed": int(seed),
          "shard_size": int(shard_size)}


def num_shards(episodes: int, shard_size: int) -> int:
  return -(-int(episodes) // int(shard_size))


def shard_episodes(k: int, episodes: int, shard_size: int) -> range:
  return range(k * shard_size, min((k + 1) * shard_size, episodes))


def encode_episode(ep: dict) -> bytes:
  buf = io.BytesIO()
  np.savez_compressed(buf, **{k: ep[k] for k in KEYS})
  return buf.getvalue()


def decode_episode(data: bytes) -> dict:
  with np.load(io.BytesIO(data)) as f:
    return {k: f[k] for k in KEYS}


def write_shard(path: str, episodes: list[int], seed: int, max_steps: int,
                on_episode: Optional[Callable[[int], None]] = None) -> str:
  """Runs the episodes and writes them as one shard at `path` (via `path.partial`, then renamed)."""
  from array_record.python.array_record_module import ArrayRecordWriter
  tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + _PARTIAL)
  writer = ArrayRecordWriter(tmp, "group_size:1")
  for i in episodes:
    ep = env_lib.random_episode(env_lib.collect_seed(seed, i), max_steps)
    writer.write(encode_episode(ep))
    if on_episode is not None:
      on_episode(i)
  writer.close()
  os.replace(tmp, path)
  with contextlib.suppress(OSError):  # make the rename durable
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
  return path


def _worker(args) -> int:
  path, eps, seed, max_steps = args
  write_shard(path, eps, seed, max_steps)
  return len(eps)


def _check_dir(out_dir: str, manifest: dict) -> None:
  path = os.path.join(out_dir, MANIFEST)
  if os.path.exists(path):
    with open(path) as f:
      have = json.load(f)
    if have != manifest:
      diff = sorted(k for k in set(have) | set(manifest) if have.get(k) != manifest.get(k))
      raise DataError(
          f"{out_dir} holds a rollout collection with other settings (differs in: "
          f"{', '.join(f'{k}={have.get(k)} there, {manifest.get(k)} asked' for k in diff)}). Nothing was "
          "changed: pass a new rollouts directory, or the same settings to resume it.")
    return
  others = [f for f in os.listdir(out_dir) if not f.startswith(".")]
  if others:
    raise DataError(f"{out_dir} is not empty and holds no {MANIFEST} (files: {', '.join(sorted(others)[:5])}); "
                    "refusing to write rollouts there: pass a new or empty directory.")


def collect(out_dir: str, *, episodes: int, max_steps: int, seed: int = 0, shard_size: int = 4,
            workers: int = 2, on_episode: Optional[Callable[[int], None]] = None) -> dict:
  """Collects the missing shards of a collection in `out_dir` (resuming a killed one).

  workers > 1: shards are written by that many spawned processes (both cores); 1: in this process
  (on_episode(i) is then called after each episode: tests use it to kill a collection mid-shard).
  Returns {"episodes", "written_shards", "skipped_shards"}.
  """
  from gdl_jax.train import rundir
  env_lib.require("gymnasium")
  if episodes < 1 or max_steps < 1 or shard_size < 1 or workers < 1:
    raise DataError(f"collect: episodes={episodes}, max_steps={max_steps}, shard_size={shard_size}"
                    f" and workers={workers} must all be >= 1.")
  os.makedirs(out_dir, exist_ok=True)
  manifest = _manifest(episodes, max_steps, seed, shard_size)
  with rundir.lock(out_dir):
    _check_dir(out_dir, manifest)
    if not os.path.exists(os.path.join(out_dir, MANIFEST)):
      rundir.atomic_write(os.path.join(out_dir, MANIFEST), json.dumps(manifest, indent=1))
    for f in os.listdir(out_dir):  # half-written shards of a killed run: ours, never read
      if f.endswith(_PARTIAL):
        os.remove(os.path.join(out_dir, f))
    todo, done = [], 0
    for k in range(num_shards(episodes, shard_size)):
      path = os.path.join(out_dir, SHARD.format(k))
      eps = list(shard_episodes(k, episodes, shard_size))
      if os.path.exists(path):
        done += len(eps)
      else:
        todo.append((path, eps, int(seed), int(max_steps)))
    bar = progress.bar(desc=f"collecting {episodes} episodes", total=episodes, unit="episode")
    bar.update(done)
    try:
      if workers == 1 or len(todo) <= 1:
        for path, eps, s, m in todo:
          def tick(i, _on=on_episode):
            bar.update(1)
            if _on is not None:
              _on(i)
          write_shard(path, eps, s, m, tick)
      else:
        import multiprocessing
        ctx = multiprocessing.get_context("spawn")  # no fork after JAX / threads started
        with ctx.Pool(min(workers, len(todo))) as pool:
          for n in pool.imap_unordered(_worker, todo):
            bar.update(n)
    finally:
      bar.close()
  return {"episodes": episodes, "written_shards": len(todo),
          "skipped_shards": num_shards(episodes, shard_size) - len(todo)}


def read_manifest(out_dir: str) -> dict:
  path = os.path.join(out_dir, MANIFEST)
  if not os.path.exists(path):
    raise DataError(f"{out_dir} holds no rollout collection ({MANIFEST} missing); collect first "
                    "(`gdl-jax world collect --rollouts DIR`).")
  with open(path) as f:
    return json.load(f)


def iter_rollouts(out_dir: str, *, require_complete: bool = True) -> Iterator[dict]:
  """The episodes of the complete shards in `out_dir`, in episode order, one shard in memory at a
  time (never a partial shard)."""
  from array_record.python.array_record_module import ArrayRecordReader
  m = read_manifest(out_dir)
  shards = sorted(int(mt.group(1)) for f in os.listdir(out_dir) if (mt := _SHARD_RE.match(f)))
  expected = num_shards(m["episodes"], m["shard_size"])
  if require_complete and shards != list(range(expected)):
    raise DataError(f"{out_dir}: {len(shards)} of {expected} shards written; resume the collection "
                    "with the same settings to finish it.")
  for k in shards:
    r = ArrayRecordReader(os.path.join(out_dir, SHARD.format(k)))
    try:
      records = r.read_all()
    finally:
      r.close()
    for b in records:
      yield decode_episode(b)


def load_rollouts(out_dir: str, *, require_complete: bool = True) -> list[dict]:
  """All episodes of the complete shards in `out_dir` (see iter_rollouts) as a list."""
  return list(iter_rollouts(out_dir, require_complete=require_complete))
