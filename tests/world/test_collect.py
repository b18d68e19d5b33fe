"""Rollout collection: reproducible episodes, shards resumable after a kill mid-shard, refusals."""

import os

import numpy as np
import pytest

pytest.importorskip("gymnasium", reason='the `world` extra: pip install -e ".[world]"')
pytest.importorskip("Box2D", reason='the `world` extra: pip install -e ".[world]"')

from gdl_jax.data.info import DataError  # noqa: E402
from gdl_jax.world import collect as col  # noqa: E402
from gdl_jax.world import env as env_lib  # noqa: E402

STEPS = 6


def _same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    for k in col.KEYS:
      np.testing.assert_array_equal(x[k], y[k])


def test_episode_shapes_and_reproducible():
  a = env_lib.random_episode(123, STEPS)
  b = env_lib.random_episode(123, STEPS)
  c = env_lib.random_episode(124, STEPS)
  assert a["frames"].shape == (STEPS, 64, 64, 3) and a["frames"].dtype == np.uint8
  assert a["actions"].shape == (STEPS, 3) and a["rewards"].shape == (STEPS,)
  assert a["dones"].dtype == bool and a["dones"][-1]  # truncated at max_steps
  assert np.all(a["actions"] >= env_lib.ACTION_LOW) and np.all(a["actions"] <= env_lib.ACTION_HIGH)
  _same([a], [b])
  assert not np.array_equal(a["actions"], c["actions"])


class Killed(Exception):
  pass


def test_killed_mid_shard_resumes_and_loses_nothing(tmp_path):
  ref, run = str(tmp_path / "ref"), str(tmp_path / "run")
  kw = dict(episodes=3, max_steps=STEPS, seed=0, shard_size=2, workers=1)
  col.collect(ref, **kw)

  def kill(i):
    if i == 0:  # after the first episode of shard 0: a half-written shard on disk
      raise Killed

  with pytest.raises(Killed):
    col.collect(run, on_episode=kill, **kw)
  partial = [f for f in os.listdir(run) if f.endswith(".partial")]
  assert partial, "the kill should leave a half-written shard"
  with pytest.raises(DataError, match="0 of 2 shards"):
    col.load_rollouts(run)  # a reader never takes the partial shard
  assert col.load_rollouts(run, require_complete=False) == []
  out = col.collect(run, **kw)
  assert out["written_shards"] == 2
  assert not [f for f in os.listdir(run) if f.endswith(".partial")]
  _same(col.load_rollouts(run), col.load_rollouts(ref))
  assert col.collect(run, **kw)["written_shards"] == 0  # complete: nothing rewritten


def test_never_overwrites(tmp_path):
  d = str(tmp_path / "r")
  col.collect(d, episodes=1, max_steps=3, seed=0, shard_size=1, workers=1)
  with pytest.raises(DataError, match="other settings .*episodes"):
    col.collect(d, episodes=2, max_steps=3, seed=0, shard_size=1, workers=1)
  user = tmp_path / "mine"
  user.mkdir()
  (user / "episode0.npz").write_bytes(b"x")
  with pytest.raises(DataError, match="not empty"):
    col.collect(str(user), episodes=1, max_steps=3, workers=1)
  assert (user / "episode0.npz").read_bytes() == b"x"


def test_missing_extra_names_the_install_line(monkeypatch):
  import builtins
  real = builtins.__import__

  def fake(name, *a, **kw):
    if name == "gymnasium":
      raise ImportError("no", name="gymnasium")
    return real(name, *a, **kw)

  monkeypatch.setattr(builtins, "__import__", fake)
  with pytest.raises(env_lib.MissingExtraError, match=r'pip install -e "\.\[world\]"'):
    env_lib.make_env()


def test_worker_processes_write_the_same_shards(tmp_path):
  kw = dict(episodes=2, max_steps=4, seed=1, shard_size=1)
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  assert col.collect(a, workers=2, **kw)["written_shards"] == 2
  col.collect(b, workers=1, **kw)
  _same(col.load_rollouts(a), col.load_rollouts(b))


def test_fast_renderer_is_bit_identical_to_the_stock_environment():
  """FastCarRacing draws the same pixels: every observation, reward and flag over 250 steps of two
  tracks (the car leaves its start, turns, and visits tiles, whose colour then changes) equals the
  stock CarRacing-v3's, including the zoom-in of the first second and a track seed's own layout."""
  from gymnasium.envs.box2d.car_racing import CarRacing

  from gdl_jax.world.fast_render import FastCarRacing
  for seed in (3, 7):
    stock, fast = env_lib.make_env(250, fast=False), env_lib.make_env(250)
    assert type(stock.unwrapped) is CarRacing and type(fast.unwrapped) is FastCarRacing
    try:
      a, _ = stock.reset(seed=seed)
      b, _ = fast.reset(seed=seed)
      np.testing.assert_array_equal(a, b)
      visited = 0
      for t, act in enumerate(env_lib.brownian_actions(np.random.default_rng(seed), 250)):
        a, ra, ta, ua, _ = stock.step(act)
        b, rb, tb, ub, _ = fast.step(act)
        np.testing.assert_array_equal(a, b, err_msg=f"track {seed}, step {t}")
        assert (ra, ta, ua) == (rb, tb, ub)
        visited += ra > 0
        if ta or ua:
          break
      assert visited >= 3   # tiles were visited, so recoloured tiles were drawn too
    finally:
      stock.close()
      fast.close()


def test_patience_books_the_tile_less_rest_exactly():
  """A parked car (full brake, no gas) earns no tile after its start: cut after `patience` idle
  steps, the booked return equals the whole episode's return, in a fraction of the steps."""
  from gdl_jax.world.rollout import real_rollout

  def step(ctrl, frame, carry):
    return np.array([0.0, 0.0, 1.0], np.float32), carry, np.zeros(1)

  full = real_rollout((step, None), None, 5, 120)
  cut = real_rollout((step, None), None, 5, 120, patience=15)
  assert full["steps"] == 120 and cut["steps"] < 40
  np.testing.assert_allclose(cut["return"], full["return"], rtol=0, atol=1e-6)
