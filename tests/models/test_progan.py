"""ProGAN: the paper's pieces against numpy, fade-in invariants, the schedule, the drift term, a
learning test on real digits, bad input, and the CLI round trip."""

import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdl_jax.models import progan as pg

SHAPE = (16, 16, 1)
FEATS = (8, 6, 4)


def _init(module, x, **kw):
  return module.init(jax.random.key(0), x, **kw)["params"]


# ---------------------------------------------------------------------------------------------
# equalised learning rate, pixel norm, minibatch stddev

def test_equalized_conv_is_a_plain_conv_with_the_he_scaled_weight():
  x = jax.random.normal(jax.random.key(1), (2, 5, 5, 3))
  layer = pg.EqualizedConv(4, kernel_size=3)
  params = _init(layer, x)
  w = params["kernel"]
  assert abs(float(jnp.std(w)) - 1.0) < 0.3                          # stored ~ N(0, 1)
  params = {**params, "bias": jnp.arange(4.0)}
  scale = math.sqrt(2.0 / (3 * 3 * 3))
  assert pg.he_scale(27) == pytest.approx(scale)
  plain = nn.Conv(4, (3, 3), padding="SAME")
  want = plain.apply({"params": {"kernel": w * scale, "bias": jnp.arange(4.0)}}, x)
  np.testing.assert_allclose(layer.apply({"params": params}, x), want, rtol=1e-5, atol=1e-5)
  # gain 1 (toRGB): scale 1 / sqrt(fan_in)
  head = pg.EqualizedConv(2, kernel_size=1, gain=1.0)
  hp = _init(head, x)
  want = np.einsum("bhwc,cf->bhwf", np.asarray(x), np.asarray(hp["kernel"][0, 0]) / math.sqrt(3))
  np.testing.assert_allclose(head.apply({"params": hp}, x), want, rtol=1e-5, atol=1e-5)


def test_equalized_dense_against_numpy():
  x = np.random.default_rng(0).normal(size=(3, 10)).astype(np.float32)
  layer = pg.EqualizedDense(5)
  params = _init(layer, x)
  params = {**params, "bias": jnp.full((5,), 0.5)}
  want = x @ (np.asarray(params["kernel"]) * math.sqrt(2.0 / 10)) + 0.5
  np.testing.assert_allclose(layer.apply({"params": params}, x), want, rtol=1e-5, atol=1e-5)


def test_pixel_norm_against_numpy():
  x = np.random.default_rng(1).normal(size=(2, 3, 3, 7)).astype(np.float32) * 5
  want = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-8)
  np.testing.assert_allclose(pg.pixel_norm(jnp.asarray(x)), want, rtol=1e-5)
  np.testing.assert_allclose(np.sqrt((np.asarray(pg.pixel_norm(x)) ** 2).mean(-1)), 1.0, rtol=1e-5)


@pytest.mark.parametrize("b,group,g", [(8, 4, 4), (8, 2, 2), (8, 0, 8), (6, 4, 3), (7, 4, 1)])
def test_minibatch_stddev_against_numpy(b, group, g):
  """g: the group size used (the largest divisor of b up to `group`; 0 = the whole batch)."""
  x = np.random.default_rng(2).normal(size=(b, 3, 3, 5)).astype(np.float32)
  out = np.asarray(pg.minibatch_stddev(jnp.asarray(x), group))
  m = b // g
  want = np.empty(b)
  for i in range(b):                       # example i's group: all j with j % m == i % m
    members = x[[j for j in range(b) if j % m == i % m]]
    want[i] = np.sqrt(members.var(axis=0) + 1e-8).mean()
  np.testing.assert_allclose(out[..., :5], x)
  np.testing.assert_allclose(out[..., 5], np.broadcast_to(want[:, None, None], (b, 3, 3)), rtol=1e-5)


def test_downsample_and_upsample_against_numpy():
  x = np.random.default_rng(3).normal(size=(2, 4, 4, 3)).astype(np.float32)
  want = x.reshape(2, 2, 2, 2, 2, 3).mean(axis=(2, 4))
  np.testing.assert_allclose(pg.downsample(jnp.asarray(x)), want, rtol=1e-6)
  up = np.asarray(pg.upsample(jnp.asarray(want)))
  assert up.shape == x.shape and (up[:, 0, 1] == want[:, 0, 0]).all() and (up[:, 3, 2] == want[:, 1, 1]).all()


# ---------------------------------------------------------------------------------------------
# the growing players

def test_every_phase_has_the_same_parameter_tree():
  z = jnp.zeros((4, 6))
  trees = []
  for p in range(3):
    g = pg.ProGenerator(SHAPE, FEATS, phase=p)
    d = pg.ProDiscriminator(SHAPE, FEATS, phase=p)
    r = pg.phase_resolution(p)
    trees.append((jax.tree.map(jnp.shape, _init(g, z)),
                  jax.tree.map(jnp.shape, _init(d, jnp.zeros((4, r, r, 1))))))
    assert g.apply({"params": _init(g, z)}, z).shape == (4, r, r, 1)
  assert trees[0] == trees[1] == trees[2]
  assert {"to_rgb0", "to_rgb2", "conv2_1"} <= set(trees[0][0]) and {"from_rgb0", "conv2_0"} <= set(trees[0][1])


def test_generator_fade_in_is_linear_between_the_upsampled_old_path_and_the_new_block():
  z = jax.random.normal(jax.random.key(4), (4, 6))
  g2, g1 = pg.ProGenerator(SHAPE, FEATS, phase=2), pg.ProGenerator(SHAPE, FEATS, phase=1)
  params = _init(g2, z)
  old = pg.upsample(g1.apply({"params": params}, z))                       # the 8x8 phase, doubled
  new = g2.apply({"params": params}, z, all_resolutions=True)[2]          # toRGB_2 of the new block
  np.testing.assert_allclose(g2.apply({"params": params}, z, alpha=jnp.float32(0.0)), old, atol=1e-5)
  np.testing.assert_allclose(g2.apply({"params": params}, z, alpha=jnp.float32(1.0)), new, atol=1e-5)
  np.testing.assert_allclose(g2.apply({"params": params}, z), new, atol=1e-5)
  assert float(jnp.abs(new - old).max()) > 1e-2                            # the check can fail
  for a in (0.25, 0.6):
    np.testing.assert_allclose(g2.apply({"params": params}, z, alpha=jnp.float32(a)),
                               (1 - a) * old + a * new, atol=1e-5)


def test_critic_fade_in_at_alpha_zero_is_the_previous_phase_on_pooled_images():
  x = jax.random.normal(jax.random.key(5), (4, 16, 16, 1))
  d2, d1 = pg.ProDiscriminator(SHAPE, FEATS, phase=2), pg.ProDiscriminator(SHAPE, FEATS, phase=1)
  params = _init(d2, x)
  old = d1.apply({"params": params}, pg.downsample(x))
  new = d2.apply({"params": params}, x)
  np.testing.assert_allclose(d2.apply({"params": params}, x, alpha=jnp.float32(0.0)), old, atol=1e-5)
  np.testing.assert_allclose(d2.apply({"params": params}, x, alpha=jnp.float32(1.0)), new, atol=1e-5)
  assert float(jnp.abs(new - old).max()) > 1e-3
  with pytest.raises(ValueError, match=r"phase-2 critic takes \[B, 16, 16, 1\]"):
    d2.apply({"params": params}, pg.downsample(x))


# ---------------------------------------------------------------------------------------------
# schedule and bad input

def test_phase_alpha_schedule():
  L, n = 10, 4
  table = {0: (0, 1.0), 9: (0, 1.0), 10: (1, 0.0), 15: (1, 0.5), 19: (1, 0.9), 20: (1, 1.0),
           29: (1, 1.0), 30: (2, 0.0), 45: (2, 1.0), 52: (3, 0.2), 60: (3, 1.0), 69: (3, 1.0),
           70: (3, 1.0), 500: (3, 1.0)}
  for step, (phase, alpha) in table.items():
    assert pg.phase_alpha(step, L, n) == (phase, pytest.approx(alpha)), step
  steps = jnp.arange(100)
  ph, al = jax.jit(jax.vmap(lambda s: pg.phase_alpha(s, L, n)))(steps)
  for s in range(100):                                                       # traced == host
    assert (int(ph[s]), float(al[s])) == (pg.phase_alpha(s, L, n)[0], pytest.approx(pg.phase_alpha(s, L, n)[1]))
  assert pg.phase_alpha(7, 5, 1) == (0, 1.0)                                 # one phase: never fades


@pytest.mark.parametrize("size", [0, 3, 12, 24, 28])
def test_image_size_not_four_times_a_power_of_two_is_refused(size):
  with pytest.raises(ValueError, match=r"4 \* 2\^k"):
    pg.num_phases(size)
  if size:
    with pytest.raises(ValueError, match=r"4 \* 2\^k"):
      pg.ProGenerator((size, size, 1), (4,) * 4).apply({}, jnp.zeros((1, 4)))


def test_experiment_refuses_bad_config():
  from experiments import progan
  from gdl_jax.data.info import DatasetInfo
  fashion = DatasetInfo("fashion_mnist", "image", (28, 28, 1), levels=256)
  c = progan.get_config("tiny", "fashion_mnist")
  assert progan.padding(fashion, 32) == 2
  c.model.resolution = 24
  with pytest.raises(ValueError, match=r"4 \* 2\^k"):
    progan.build(c, fashion)
  c.model.resolution = 16
  with pytest.raises(ValueError, match="pads square images evenly"):
    progan.build(c, fashion)
  c = progan.get_config("tiny", "fashion_mnist")
  c.model.gen_features = (8, 8)
  with pytest.raises(ValueError, match="one entry per resolution"):
    progan.build(c, fashion)
  c = progan.get_config("tiny", "fashion_mnist")
  c.model.dispatch = "loop"
  with pytest.raises(ValueError, match="model.dispatch"):
    progan.build(c, fashion)


def test_padding_fills_the_background_level_and_sampling_crops_it_away():
  from experiments import progan
  x = jnp.asarray(np.random.default_rng(6).uniform(-1, 1, (2, 28, 28, 1)), jnp.float32)
  y = progan.pad_images(x, 2, -1.0)
  assert y.shape == (2, 32, 32, 1)
  np.testing.assert_array_equal(y[:, 2:30, 2:30], x)
  assert (y[:, :2] == -1).all() and (y[:, :, 30:] == -1).all()


# ---------------------------------------------------------------------------------------------
# the GAN step: drift term; learning on real digits; the CLI

def _digits_batch(digits, n):
  return {"image": jnp.asarray(digits.train["image"][:n]), "label": jnp.asarray(digits.train["label"][:n])}


def test_drift_term_adds_epsilon_times_the_gradient_of_mean_squared_real_scores(digits):
  """With SGD(lr=1), the critic's params after a step with drift_weight=w differ from those without
  by exactly -w * grad mean(D(x_real)^2) (autodiff of an independent forward); the generator's
  loss and the reported metrics are otherwise the same."""
  import optax
  from gdl_jax.data.info import to_signed
  from gdl_jax.objectives.gan_step import init_gan_state, make_gan_step
  shape, feats = (8, 8, 1), (4, 4)
  g, d = pg.ProGenerator(shape, feats), pg.ProDiscriminator(shape, feats)
  opt = optax.sgd(1.0)
  batch = _digits_batch(digits, 8)
  x = to_signed(batch["image"], 17)
  state = init_gan_state(g, d, opt, opt, jax.random.key(0), x, latent_dim=4, ema=False)
  kw = dict(latent_dim=4, loss="wgan", gp_weight=0.0, levels=17, jit=False)
  w = 0.25
  s_plain, plain = make_gan_step(g, d, opt, opt, **kw)(state, batch, jax.random.key(1))
  s_drift, drift = make_gan_step(g, d, opt, opt, drift_weight=w, **kw)(state, batch, jax.random.key(1))
  real = d.apply({"params": state.params["disc"]}, x)
  assert float(drift["drift"]) == pytest.approx(float(jnp.mean(real ** 2)), rel=1e-5)
  assert float(drift["drift"]) > 0 and "drift" not in plain
  grad = jax.grad(lambda p: jnp.mean(d.apply({"params": p}, x) ** 2))(state.params["disc"])
  diff = jax.tree.map(lambda a, b: a - b, s_drift.params["disc"], s_plain.params["disc"])
  for got, want in zip(jax.tree.leaves(diff), jax.tree.leaves(grad)):
    np.testing.assert_allclose(got, -w * want, rtol=1e-3, atol=1e-6)
  assert max(float(jnp.abs(v).max()) for v in jax.tree.leaves(grad)) > 1e-4
  assert float(drift["d_loss"]) == pytest.approx(float(plain["d_loss"]), rel=1e-6)


def _train(config, ds, steps_at=None):
  from experiments import progan
  parts = progan.build_parts(config, ds.info)
  from gdl_jax.data import batch_at
  key = jax.random.key(int(config.seed))
  state = jax.jit(parts.task.init)(key, _digits_batch(ds, config.batch_size))
  losses = []
  for s in range(int(config.steps)):
    batch = {k: jnp.asarray(v) for k, v in batch_at(ds.train, s, config.batch_size, config.seed).items()}
    state, m = parts.task.step(state, batch, key)
    losses.append(jax.device_get(m))
  return parts, state, losses


@pytest.mark.parametrize("seed", [0])
def test_learns_the_pixel_statistics_of_real_digits(digits, seed):
  """300 steps at 4x4 (phase 0 only) on the digits: the generator's per-pixel mean and standard
  deviation over 512 samples move to the data's (4x4 pooled). Measured over seeds 0, 1, 2: mean
  error 1.32 / 0.53 / 0.79 at init -> 0.10 / 0.10 / 0.16; std error 0.53-0.55 -> 0.19-0.22."""
  from experiments import progan
  from gdl_jax.data.info import to_signed
  c = progan.get_config("tiny", "digits")
  c.seed, c.steps, c.batch_size = seed, 300, 32
  c.model.update(phase_steps=10_000, dispatch="host", ema_decay=0.0, latent_dim=8,
                 gen_features=(16, 8), disc_features=(16, 8))
  real = progan.build_parts(c, digits.info).reals_at(
      to_signed(jnp.asarray(digits.train["image"][:512]), 17), 0, 1.0)               # [512, 4, 4, 1]
  z = jax.random.normal(jax.random.key(9), (512, 8))

  def errors(parts, state):
    fake = pg.downsample(parts.generate_at(state, z, 0), 2)                         # [512, 4, 4, 1]
    return (float(jnp.abs(fake.mean(0) - real.mean(0)).mean()),
            float(jnp.abs(fake.std(0) - real.std(0)).mean()))

  parts0 = progan.build_parts(c, digits.info)
  mean0, std0 = errors(parts0, jax.jit(parts0.task.init)(jax.random.key(seed), _digits_batch(digits, 32)))
  parts, state, ms = _train(c, digits)
  mean1, std1 = errors(parts, state)
  assert mean1 < 0.25 and mean1 < 0.5 * mean0, (mean0, mean1)
  assert std1 < 0.6 * std0, (std0, std1)
  assert np.mean([m["wasserstein"] for m in ms[-20:]]) > 0


def test_cli_tiny_train_sample_evaluate(tmp_path):
  """train progan --dataset digits (8x8: two phases) --variant tiny, then sample and evaluate."""
  from gdl_jax import cli
  wd = str(tmp_path / "run")
  assert cli.main(["train", "progan", "--dataset", "digits", "--variant", "tiny", "--workdir", wd,
                   "--quiet"]) == 0
  for f in ("samples.png", "resolutions.png", "progress.gif", "config.json"):
    assert os.path.exists(os.path.join(wd, f)), f
  cfg = json.load(open(os.path.join(wd, "config.json")))
  assert cfg["model"]["resolution"] == 8 and cfg["steps"] == 3
  out = str(tmp_path / "s.png")
  assert cli.main(["sample", wd, "--num", "8", "--out", out]) == 0 and os.path.exists(out)
  assert cli.main(["evaluate", wd, "--no_features", "--num_samples", "16"]) == 0
  metrics = json.load(open(os.path.join(wd, "metrics.json")))
  assert "novelty_ratio" in metrics


@pytest.mark.slow
def test_host_and_switch_dispatch_give_the_same_steps(digits):
  """Three steps through 4x4 -> fade -> 8x8 with either dispatch: the same parameters."""
  from experiments import progan
  states = []
  for dispatch in ("host", "switch"):
    c = progan.get_config("tiny", "digits")
    c.model.dispatch = dispatch
    parts, state, ms = _train(c, digits)
    states.append(state)
    assert [float(m["wasserstein"]) for m in ms] != [0.0] * 3
  assert int(states[0].step) == int(states[1].step) == 3
  for a, b in zip(jax.tree.leaves(states[0].params), jax.tree.leaves(states[1].params)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
