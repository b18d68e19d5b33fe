"""CycleGAN's objectives: LSGAN / L1 values by hand, cycle loss zero for inverse maps, the history
buffer's semantics (fill phase, capacity, swap frequency 0.5, conservation, keys)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdl_jax.objectives import cyclegan as L
from gdl_jax.objectives.gan_step import make_two_player_step


def test_lsgan_losses_by_hand():
  real = jnp.array([[1.0, 0.5], [2.0, -1.0]])
  fake = jnp.array([[0.0, 0.2], [-0.5, 1.0]])
  # (mean((r - 1)^2) + mean(f^2)) / 2 = ((0 + .25 + 1 + 4) / 4 + (0 + .04 + .25 + 1) / 4) / 2
  assert float(L.lsgan_disc_loss(real, fake)) == pytest.approx((5.25 / 4 + 1.29 / 4) / 2, rel=1e-6)
  # mean((f - 1)^2) = (1 + .64 + 2.25 + 0) / 4
  assert float(L.lsgan_gen_loss(fake)) == pytest.approx(3.89 / 4, rel=1e-6)
  # the optimum: the critic says 1 on real, 0 on fake; the generator's fakes scored 1
  assert float(L.lsgan_disc_loss(jnp.ones(5), jnp.zeros(5))) == 0.0
  assert float(L.lsgan_gen_loss(jnp.ones((2, 3, 3)))) == 0.0


def test_l1_loss_by_hand_and_shape_check():
  x, y = np.random.default_rng(0).normal(size=(2, 3, 4, 4, 1))
  assert float(L.l1_loss(jnp.asarray(x), jnp.asarray(y))) == pytest.approx(np.abs(x - y).mean(), rel=1e-6)
  with pytest.raises(ValueError, match="equal shapes"):
    L.l1_loss(jnp.zeros((2, 4)), jnp.zeros((2, 5)))


@pytest.mark.parametrize("g, f", [
    (lambda x: -x, lambda y: -y),                                    # colour inversion in [-1, 1]
    (lambda x: jnp.swapaxes(x, 1, 2), lambda y: jnp.swapaxes(y, 1, 2)),  # transpose
    (lambda x: x[..., ::-1], lambda y: y[..., ::-1]),                # channel swap
    (lambda x: 0.5 * x + 0.25, lambda y: 2.0 * (y - 0.25)),          # an affine map and its inverse
])
def test_cycle_loss_is_zero_for_inverse_maps(g, f):
  x = jax.random.uniform(jax.random.key(0), (4, 6, 6, 3), minval=-1, maxval=1)
  assert float(L.l1_loss(f(g(x)), x)) == pytest.approx(0.0, abs=1e-7)
  assert float(L.l1_loss(g(f(x)), x)) == pytest.approx(0.0, abs=1e-7)
  # a map that is not F's inverse leaves the cycle error |x / 2 - x| = mean |x| / 2
  assert float(L.l1_loss(f(0.5 * g(x)), x)) > 0.1


def _ids(n, start):
  """n 2x2x1 images whose every pixel holds its id (start, start + 1, ...)."""
  return jnp.broadcast_to(jnp.arange(start, start + n, dtype=jnp.float32)[:, None, None, None], (n, 2, 2, 1))


def test_pool_fill_phase_stores_and_returns_new_images():
  pool = L.init_pool(5, (2, 2, 1))
  pool, out = L.pool_query(pool, _ids(3, 1), jax.random.key(0))
  np.testing.assert_array_equal(out, _ids(3, 1))
  assert int(pool["count"]) == 3
  pool, out = L.pool_query(pool, _ids(4, 4), jax.random.key(1))  # 2 fill the pool, then 2 may swap
  np.testing.assert_array_equal(out[:2], _ids(2, 4))
  assert int(pool["count"]) == 5                                  # capacity: never more than 5
  stored = sorted(np.asarray(pool["images"])[:, 0, 0, 0])
  # the pool holds 5 distinct images of the 7 seen, the outputs the other 2 of the last batch's view
  assert len(set(stored)) == 5 and set(stored) <= set(range(1, 8))


def test_pool_swap_frequency_is_one_half_and_images_are_conserved():
  cap, batch, rounds = 50, 40, 100
  pool = L.init_pool(cap, (2, 2, 1))
  pool, _ = L.pool_query(pool, _ids(cap, 0), jax.random.key(0))
  query = jax.jit(L.pool_query)
  old = 0
  for r in range(rounds):
    before = np.asarray(pool["images"])[:, 0, 0, 0]
    new = _ids(batch, cap + r * batch)
    pool, out = query(pool, new, jax.random.key(r + 1))
    after, got = np.asarray(pool["images"])[:, 0, 0, 0], np.asarray(out)[:, 0, 0, 0]
    # nothing is lost or duplicated: pool + outputs = old pool + new images (as multisets)
    np.testing.assert_array_equal(np.sort(np.concatenate([after, got])),
                                  np.sort(np.concatenate([before, np.asarray(new)[:, 0, 0, 0]])))
    old += int(np.sum(got != np.asarray(new)[:, 0, 0, 0]))          # a stored image came back
    assert int(pool["count"]) == cap
  share = old / (rounds * batch)
  assert abs(share - 0.5) < 4 * np.sqrt(0.25 / (rounds * batch)), share   # 4 sigma = 0.032


def test_pool_keys_capacity_zero_and_shape_check():
  pool = L.init_pool(3, (2, 2, 1))
  pool, _ = L.pool_query(pool, _ids(3, 0), jax.random.key(0))
  new = _ids(16, 10)
  _, out1 = L.pool_query(pool, new, jax.random.key(1))
  _, out2 = L.pool_query(pool, new, jax.random.key(1))
  _, out3 = L.pool_query(pool, new, jax.random.key(2))
  np.testing.assert_array_equal(out1, out2)                         # the same key: the same draws
  assert not np.array_equal(out1, out3)                             # another key: other draws
  empty = L.init_pool(0, (2, 2, 1))
  same, out = L.pool_query(empty, new, jax.random.key(0))
  np.testing.assert_array_equal(out, new)
  with pytest.raises(ValueError, match="capacity"):
    L.init_pool(-1, (2, 2, 1))
  with pytest.raises(ValueError, match="differ"):
    L.pool_query(pool, jnp.zeros((2, 3, 3, 1)), jax.random.key(0))


def test_two_player_step_generator_first_by_hand():
  """One step with SGD(0.1) on scalar players, against the hand computation: G updates on
  (w - v)^2, hands 3w (old w) through critic_inputs (x2, counted in extra), then D on (v - 6)^2."""
  import optax
  from gdl_jax.train.state import TrainState
  sgd = optax.sgd(0.1)

  def gen_loss(gp, dp, batch, key):
    value = (gp["w"] - dp["v"]) ** 2
    return value, (3.0 * gp["w"], {"g": value})

  def critic_inputs(extra, outputs, key):
    return {"calls": extra["calls"] + 1}, 2.0 * outputs

  def disc_loss(dp, batch, inputs, key):
    value = (dp["v"] - inputs) ** 2
    return value, {"d": value}

  params = {"gen": {"w": jnp.array(1.0)}, "disc": {"v": jnp.array(2.0)}}
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state={"gen": sgd.init(params["gen"]), "disc": sgd.init(params["disc"])},
                     extra={"calls": jnp.array(0)})
  step = make_two_player_step(gen_loss, disc_loss, sgd, sgd, critic_inputs=critic_inputs)
  state, m = step(state, {}, jax.random.key(0))
  assert float(state.params["gen"]["w"]) == pytest.approx(1.0 - 0.1 * 2 * (1.0 - 2.0))        # 1.2
  assert float(state.params["disc"]["v"]) == pytest.approx(2.0 - 0.1 * 2 * (2.0 - 6.0))       # 2.8
  assert int(state.extra["calls"]) == 1 and int(state.step) == 1
  assert float(m["loss"]) == pytest.approx(1.0) and float(m["d"]) == pytest.approx(16.0)
