"""CarRacing-v3 (gymnasium, box2d), headless: frames as 64x64x3 uint8, the paper's random policy.

Everything here is numpy and the environment; nothing imports JAX, so collection workers start fast.
"""

from __future__ import annotations

import math

import numpy as np

from gdl_jax.data.info import DataError

ENV_ID = "CarRacing-v3"
INSTALL = 'pip install -e ".[world]"'
FRAME = 64           # frames are resized to FRAME x FRAME x 3
CROP = 84            # the bottom 12 rows of the 96x96 observation are the status bar (as hardmaru)
ACTION_DIM = 3       # steer in [-1, 1], gas in [0, 1], brake in [0, 1]
ACTION_LOW = np.array([-1.0, 0.0, 0.0], np.float32)
ACTION_HIGH = np.array([1.0, 1.0, 1.0], np.float32)
# Track seeds: collection episodes use COLLECT_SEED_BASE + seed * 100_000 + i, the controller's
# training rollouts TRAIN_SEED_BASE + ..., evaluation EVAL_SEED_BASE + j, so the held-out tracks
# are never collected nor trained on.
COLLECT_SEED_BASE = 10_000
TRAIN_SEED_BASE = 500_000
EVAL_SEED_BASE = 1_000_000


class MissingExtraError(DataError):
  """gymnasium / box2d / evosax are not installed; the message names the install line."""


def require(module: str = "gymnasium"):
  """Imports `module` (gymnasium, Box2D, evosax) or raises one clear MissingExtraError."""
  try:
    mod = __import__(module)
    if module == "gymnasium":
      __import__("Box2D")
    return mod
  except ImportError as e:
    raise MissingExtraError(
        f"World Models needs the `world` extra ({e.name or module} is missing): run "
        f"`{INSTALL}` (gymnasium[box2d] and evosax).") from None


def make_env(max_steps: int | None = None, *, fast: bool = True):
  """A headless CarRacing-v3 (rgb_array rendering, no display); max_steps caps an episode.

  fast=True (default) draws the road with `fast_render.FastCarRacing`: bit-identical observations,
  rewards and dynamics, ~2x faster steps; fast=False is the stock class (the reference its tests
  compare against). Both are made from the registered spec, so the wrappers are the stock ones.
  """
  gym = require("gymnasium")
  import dataclasses
  kw = {} if max_steps is None else {"max_episode_steps": int(max_steps)}
  spec = gym.spec(ENV_ID)
  if fast:
    from gdl_jax.world.fast_render import FastCarRacing
    spec = dataclasses.replace(spec, entry_point=FastCarRacing)
  return gym.make(spec, render_mode="rgb_array", **kw)


def preprocess(obs: np.ndarray) -> np.ndarray:
  """A 96x96x3 observation -> the 64x64x3 uint8 frame V sees (status bar cropped, bilinear)."""
  from PIL import Image
  img = Image.fromarray(np.asarray(obs)[:CROP])
  return np.asarray(img.resize((FRAME, FRAME), Image.BILINEAR), np.uint8)


def brownian_actions(rng: np.random.Generator, n: int, dt: float = 1.0 / 50.0) -> np.ndarray:
  """The random policy of the World Models reimplementations (ctallec): a Brownian motion in the
  action box, a_0 ~ U(box), a_{t+1} = clip(a_t + sqrt(dt) N(0, I)): [n, 3] float32. Smooth, so the
  car actually drives and turns, unlike i.i.d. uniform actions."""
  a = np.empty((n, ACTION_DIM), np.float32)
  a[0] = rng.uniform(ACTION_LOW, ACTION_HIGH)
  noise = rng.standard_normal((n, ACTION_DIM)).astype(np.float32) * math.sqrt(dt)
  for t in range(1, n):
    a[t] = np.clip(a[t - 1] + noise[t], ACTION_LOW, ACTION_HIGH)
  return a


def to_env_action(a: np.ndarray) -> np.ndarray:
  """The controller's tanh outputs in [-1, 1]^3 -> CarRacing's box (as the paper's code: gas
  (a+1)/2, brake clipped to [0, 1])."""
  a = np.asarray(a, np.float32)
  return np.array([a[0], (a[1] + 1.0) / 2.0, np.clip(a[2], 0.0, 1.0)], np.float32)


def collect_seed(seed: int, episode: int) -> int:
  return COLLECT_SEED_BASE + int(seed) * 100_000 + int(episode)


def random_episode(track_seed: int, max_steps: int) -> dict:
  """One episode of the Brownian policy on track `track_seed` (a pure function of it).

  frames[t] is the frame the action actions[t] was taken on; rewards[t] and dones[t] follow that
  action (dones: terminated or truncated). Returns numpy arrays of length T <= max_steps.
  """
  env = make_env(max_steps)
  try:
    obs, _ = env.reset(seed=int(track_seed))
    actions = brownian_actions(np.random.default_rng([int(track_seed), 1]), int(max_steps))
    frames, rewards, dones = [], [], []
    for t in range(int(max_steps)):
      frames.append(preprocess(obs))
      obs, r, term, trunc, _ = env.step(actions[t])
      rewards.append(r)
      dones.append(term or trunc)
      if term or trunc:
        break
  finally:
    env.close()
  T = len(frames)
  return {"frames": np.stack(frames), "actions": actions[:T].copy(),
          "rewards": np.asarray(rewards, np.float32), "dones": np.asarray(dones, bool)}
