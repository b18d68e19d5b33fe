"""Real-environment rollouts of the full agent (V encodes, M remembers, C acts), in this process
or in a pool of spawned worker processes (one CarRacing each; a population is evaluated in parallel).

An `Agent` is plain data (the modules' keyword arguments and numpy parameters), so a worker
rebuilds it once, at start, and receives only controllers (a flat vector) and track seeds after.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import numpy as np


@dataclasses.dataclass
class Agent:
  """V and M: their module kwargs and parameters (numpy pytrees)."""

  vae_kwargs: dict
  vae_params: Any
  mdn_kwargs: dict
  mdn_params: Any

  def modules(self):
    from gdl_jax.models.vae import VAE
    from gdl_jax.models.world import MDNRNN
    return VAE(**self.vae_kwargs), MDNRNN(**self.mdn_kwargs)


def make_policy(agent: Agent):
  """A jitted `step(ctrl, frame [64, 64, 3] uint8, carry) -> (env action [3], carry, z [Z])`, and
  the initial carry. z is V's posterior mean (deterministic, so a rollout is a function of the
  controller and the track seed)."""
  import jax
  import jax.numpy as jnp

  from gdl_jax.models.world import controller_action, env_action, hidden_of
  vae, mdn = agent.modules()
  vp, mp = agent.vae_params, agent.mdn_params

  @jax.jit
  def step(ctrl, frame, carry):
    z = vae.apply({"params": vp}, frame[None], method=vae.encode).mean[0]         # [Z]
    a = env_action(controller_action(ctrl, z, hidden_of(carry)))
    carry, _ = mdn.apply({"params": mp}, carry, z, a)
    return a, carry, z

  return step, mdn.initial_carry(())


def real_rollout(policy, ctrl, track_seed: int, max_steps: int, *, record: bool = False,
                 patience: int = 0) -> dict:
  """One episode of the agent on track `track_seed`: {"return", "steps"} (+ "frames", "z" [T, ...]
  with record=True).

  patience > 0 (CMA-ES fitness only, never evaluation) ends an episode once `patience` steps in a
  row earned no tile and books the rest as tile-less steps: return - 0.1 * (max_steps - t), the
  return the episode would have had if the car never reached a new tile again (CarRacing pays
  -0.1 per frame), so a candidate parked on the grass costs `patience` steps, not `max_steps`.
  """
  from gdl_jax.world import env as env_lib
  step, carry0 = policy
  env = env_lib.make_env(max_steps)
  frames, zs = [], []
  total, t, idle = 0.0, 0, 0
  try:
    obs, _ = env.reset(seed=int(track_seed))
    carry = carry0
    ctrl = np.asarray(ctrl, np.float32)
    for t in range(1, int(max_steps) + 1):
      frame = env_lib.preprocess(obs)
      a, carry, z = step(ctrl, frame, carry)
      if record:
        frames.append(frame)
        zs.append(np.asarray(z))
      obs, r, term, trunc, _ = env.step(np.asarray(a, np.float32))
      total += float(r)
      if term or trunc:
        break
      idle = 0 if r > 0 else idle + 1
      if patience and idle >= patience:
        total -= TILE_LESS_STEP * (int(max_steps) - t)
        break
  finally:
    env.close()
  out = {"return": total, "steps": t}
  if record:
    out.update(frames=np.stack(frames), z=np.stack(zs))
  return out


TILE_LESS_STEP = 0.1   # what CarRacing charges per frame


# ---------------------------------------------------------------------------------------------
# worker pool

_WORKER: dict = {}


def _init_worker(agent: Agent, max_steps: int, patience: int = 0) -> None:
  # One single-threaded CPU JAX per worker: the workers are the parallelism.
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
  _WORKER["policy"] = make_policy(agent)
  _WORKER["max_steps"] = max_steps
  _WORKER["patience"] = patience


def _run(args) -> float:
  ctrl, seed = args
  return real_rollout(_WORKER["policy"], ctrl, seed, _WORKER["max_steps"],
                      patience=_WORKER["patience"])["return"]


def _run_random(seed) -> float:
  return float(random_policy_returns([seed], _WORKER["max_steps"])[0])


class RolloutPool:
  """Evaluates controllers in the real environment on `workers` processes (1: in this process);
  patience > 0: fitness rollouts cut once the car stops earning tiles (see `real_rollout`)."""

  def __init__(self, agent: Agent, max_steps: int, workers: int = 2, patience: int = 0):
    self.workers = int(workers)
    self.max_steps = int(max_steps)
    self.patience = int(patience)
    self._pool = None
    if self.workers > 1:
      import multiprocessing
      ctx = multiprocessing.get_context("spawn")
      self._pool = ctx.Pool(self.workers, initializer=_init_worker,
                            initargs=(agent, self.max_steps, self.patience))
    else:
      self._policy = make_policy(agent)

  def returns(self, controllers: np.ndarray, seeds: list[int], bar: Optional[Any] = None) -> np.ndarray:
    """Return of each controller [P, n] on each seed: [P, len(seeds)]."""
    controllers = np.asarray(controllers, np.float32)
    jobs = [(c, s) for c in controllers for s in seeds]
    if self._pool is None:
      out = []
      for c, s in jobs:
        out.append(real_rollout(self._policy, c, s, self.max_steps,
                                patience=self.patience)["return"])
        if bar is not None:
          bar.update(1)
    else:
      out = []
      for r in self._pool.imap(_run, jobs):
        out.append(r)
        if bar is not None:
          bar.update(1)
    return np.asarray(out, np.float64).reshape(len(controllers), len(seeds))

  def random_returns(self, seeds: list[int]) -> np.ndarray:
    """The Brownian random policy's return on each seed (the acceptance's baseline): [len(seeds)]."""
    if self._pool is None:
      return random_policy_returns(seeds, self.max_steps)
    return np.asarray(self._pool.map(_run_random, list(seeds)), np.float64)

  def close(self):
    if self._pool is not None:
      self._pool.close()
      self._pool.join()
      self._pool = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
    return False


def random_policy_returns(seeds: list[int], max_steps: int) -> np.ndarray:
  """The Brownian random policy's return on each track seed (the baseline of the acceptance)."""
  from gdl_jax.world import env as env_lib
  out = []
  for s in seeds:
    env = env_lib.make_env(max_steps)
    try:
      env.reset(seed=int(s))
      actions = env_lib.brownian_actions(np.random.default_rng([int(s), 1]), int(max_steps))
      total = 0.0
      for a in actions:
        _, r, term, trunc, _ = env.step(a)
        total += float(r)
        if term or trunc:
          break
    finally:
      env.close()
    out.append(total)
  return np.asarray(out)
