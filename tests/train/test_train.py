"""The step factory and the loop: purity, donation, resume equality, non-finite stop, run-dir safety."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import classifier
from gdl_jax.train import TrainState, loop, make_train_step
from gdl_jax.train.checkpoint import CheckpointError


def _linear_loss(params, extra, batch, key):
  pred = batch["x"] @ params["w"]
  return jnp.mean((pred - batch["y"]) ** 2), (extra, {"mse": jnp.mean((pred - batch["y"]) ** 2)})


def test_step_matches_hand_written_sgd():
  opt = optax.sgd(0.1)
  step = make_train_step(_linear_loss, opt)
  x = jnp.arange(6.0).reshape(3, 2)
  y = jnp.array([1.0, 2.0, 3.0])
  w = np.array([0.5, -0.5], np.float32)
  state = TrainState.create({"w": jnp.asarray(w)}, opt)
  new, m = step(state, {"x": x, "y": y}, jax.random.key(0))
  grad = 2 * x.T @ (x @ w - y) / 3
  np.testing.assert_allclose(new.params["w"], w - 0.1 * grad, rtol=1e-6)
  assert int(new.step) == 1 and {"loss", "mse", "l2_grads", "l2_params", "l2_updates"} <= set(m)
  np.testing.assert_allclose(m["l2_grads"], np.linalg.norm(grad), rtol=1e-6)


def test_step_donates_state():
  opt = optax.adam(1e-2)
  step = make_train_step(_linear_loss, opt)
  state = TrainState.create({"w": jnp.ones(2)}, opt)
  old_w = state.params["w"]
  step(state, {"x": jnp.ones((4, 2)), "y": jnp.zeros(4)}, jax.random.key(0))
  assert old_w.is_deleted()


def test_ema_tracks_params():
  opt = optax.sgd(0.5)
  step = make_train_step(_linear_loss, opt, ema_decay=0.9)
  state = TrainState.create({"w": jnp.zeros(2)}, opt, ema=True)
  batch = {"x": jnp.eye(2), "y": jnp.ones(2)}
  for _ in range(30):
    state, _ = step(state, batch, jax.random.key(0))
  # The EMA lags the params but follows them towards the solution w = 1.
  assert np.all(np.asarray(state.ema_params["w"]) < np.asarray(state.params["w"]) + 1e-6)
  assert np.all(np.asarray(state.ema_params["w"]) > 0.5)


def _tiny(digits_steps=6):
  c = classifier.get_config("tiny")
  c.steps = digits_steps
  c.log_every = 1
  c.eval_every = 3
  c.ckpt_every = 2
  return c


def test_resume_after_kill_equals_uninterrupted(digits, tmp_path):
  c = _tiny()
  task = classifier.build(c, digits.info)
  full = loop.fit(task, c, digits, str(tmp_path / "full"), progress=False)
  loop.fit(task, c, digits, str(tmp_path / "cut"), progress=False, stop_after=3)  # "killed" at 3
  assert json.load(open(tmp_path / "cut" / "train_time.json"))["steps_this_call"] == 3
  resumed = loop.fit(task, c, digits, str(tmp_path / "cut"), progress=False)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               full.params, resumed.params)
  m_full = [r for r in loop.read_metrics(str(tmp_path / "full")) if r["step"] == 6]
  m_cut = [r for r in loop.read_metrics(str(tmp_path / "cut")) if r["step"] == 6]
  assert len(m_full) == len(m_cut) == 2  # train + test rows
  for a, b in zip(m_full, m_cut):
    assert a["split"] == b["split"]
    for k in a:
      if k != "split":
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5)


def test_periodic_eval_uses_the_validation_split_where_there_is_one(digits, tmp_path):
  """A dataset with a `valid` split: the loop's held-out rows are "valid" rows computed on it (so a
  step count read off the curves never saw the test split); without one they stay "test" rows."""
  import dataclasses
  c = _tiny(digits_steps=3)
  task = classifier.build(c, digits.info)
  half = digits.num_examples("test") // 2
  valid = {k: v[:half] for k, v in digits.test.items()}
  test = {k: v[half:] for k, v in digits.test.items()}
  with_valid = dataclasses.replace(digits, test=test, valid=valid)
  state = loop.fit(task, c, with_valid, str(tmp_path / "v"), progress=False)
  rows = [r for r in loop.read_metrics(str(tmp_path / "v")) if r["split"] != "train"]
  assert [r["split"] for r in rows] == ["valid"]
  mesh = loop.sharding.make_mesh()
  key = jax.random.key(0)
  on_valid = loop.evaluate_heldout(task, state, with_valid, c, mesh, key, "valid")
  on_test = loop.evaluate_heldout(task, state, with_valid, c, mesh, key, "test")
  np.testing.assert_allclose(rows[0]["loss"], on_valid["loss"], rtol=1e-5)
  assert abs(on_valid["loss"] - on_test["loss"]) > 1e-6  # the two splits are told apart
  loop.fit(task, c, digits, str(tmp_path / "t"), progress=False)
  assert {r["split"] for r in loop.read_metrics(str(tmp_path / "t"))} == {"train", "test"}


def test_different_config_refused_and_untouched(digits, tmp_path):
  c = _tiny(2)
  task = classifier.build(c, digits.info)
  loop.fit(task, c, digits, str(tmp_path), progress=False)
  before = sorted(os.listdir(tmp_path / "checkpoints"))
  c2 = _tiny(2)
  c2.optimizer.lr = 0.5
  with pytest.raises(loop.RunDirError, match="optimizer.lr"):
    loop.fit(classifier.build(c2, digits.info), c2, digits, str(tmp_path), progress=False)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == before


def test_incompatible_checkpoint_is_clear_and_kept(digits, tmp_path):
  c = _tiny(2)
  loop.fit(classifier.build(c, digits.info), c, digits, str(tmp_path), progress=False)
  # Same run dir, a model of other shapes (hand-edit config.json as a user might).
  c2 = _tiny(2)
  c2.model.dense = 24
  with open(tmp_path / "config.json", "w") as f:
    f.write(loop.config_to_json(c2))
  with pytest.raises(CheckpointError, match="left untouched"):
    loop.fit(classifier.build(c2, digits.info), c2, digits, str(tmp_path), progress=False)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]


def test_corrupt_checkpoint_is_clear_and_kept(digits, tmp_path):
  c = _tiny(2)
  loop.fit(classifier.build(c, digits.info), c, digits, str(tmp_path), progress=False)
  ck = tmp_path / "checkpoints" / "2"
  victims = [os.path.join(r, f) for r, _, fs in os.walk(ck) for f in fs]
  for v in victims:  # scramble every file of the step
    with open(v, "wb") as f:
      f.write(b"\x00garbage")
  snapshot = {v: open(v, "rb").read() for v in victims}
  with pytest.raises(CheckpointError, match="cannot be restored"):
    loop.fit(classifier.build(c, digits.info), c, digits, str(tmp_path), progress=False)
  assert {v: open(v, "rb").read() for v in victims} == snapshot


def test_non_finite_loss_stops_with_step_and_keeps_checkpoint(digits, tmp_path):
  c = _tiny(8)
  c.ckpt_every = 2
  task = classifier.build(c, digits.info)
  calls = {"n": 0}

  def poisoned_step(state, batch, key):
    state, m = task.step(state, batch, key)
    calls["n"] += 1
    if calls["n"] == 5:
      m = dict(m, loss=jnp.nan)
    return state, m

  bad = task.__class__(**{**task.__dict__, "step": poisoned_step})
  with pytest.raises(loop.NonFiniteLossError, match="at step 5"):
    loop.fit(bad, c, digits, str(tmp_path), progress=False)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
