"""`fit(..., steps_per_call=k)`: k train steps fused in one jitted call between the loop's events,
the same run as one step per call."""

import dataclasses

import jax
import numpy as np
import pytest

from experiments import classifier
from gdl_jax.configs import ConfigError
from gdl_jax.train import loop


def _config():
  c = classifier.get_config("tiny")
  c.steps, c.log_every, c.eval_every, c.ckpt_every = 10, 5, 5, 10
  return c


def _counting(task):
  """The task with its step wrapped to count Python-level calls (a fused call traces k of them once)."""
  calls = []

  def step(state, batch, key):
    calls.append(1)
    return task.step(state, batch, key)

  return dataclasses.replace(task, step=step), calls


def test_fused_steps_equal_single_steps(digits, tmp_path):
  c = _config()
  one, n_one = _counting(classifier.build(c, digits.info))
  three, n_three = _counting(classifier.build(c, digits.info))
  a = loop.fit(one, c, digits, str(tmp_path / "k1"), progress=False, write_samples=False)
  b = loop.fit(three, c, digits, str(tmp_path / "k3"), progress=False, write_samples=False,
               steps_per_call=3)
  # events at 5 and 10: steps 1-3 and 6-8 fused (3 traced calls each, traced once), 4, 5, 9, 10 single
  assert len(n_one) == 10 and len(n_three) == 3 + 2 + 2
  assert int(a.step) == int(b.step) == 10
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
               (a.params, a.extra), (b.params, b.extra))
  ra, rb = loop.read_metrics(str(tmp_path / "k1")), loop.read_metrics(str(tmp_path / "k3"))
  assert [(r["step"], r["split"]) for r in ra] == [(r["step"], r["split"]) for r in rb]
  for x, y in zip(ra, rb):
    for k in x:
      if k not in ("split", "step"):
        np.testing.assert_allclose(x[k], y[k], rtol=1e-4, err_msg=f"{k} at step {x['step']}")


def test_a_step_chosen_on_the_host_is_refused_clearly(digits, tmp_path):
  c = _config()
  task = classifier.build(c, digits.info)

  def host_step(state, batch, key):  # a two-stage schedule that reads the counter on the host
    if int(jax.device_get(state.step)) >= 100:
      raise AssertionError("unreachable")
    return task.step(state, batch, key)

  with pytest.raises(ConfigError, match="--steps_per_call 1"):
    loop.fit(dataclasses.replace(task, step=host_step), c, digits, str(tmp_path / "r"),
             progress=False, write_samples=False, steps_per_call=2)


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_bad_steps_per_call(k):
  with pytest.raises(ConfigError, match="steps_per_call"):
    loop.check_steps_per_call(k)
