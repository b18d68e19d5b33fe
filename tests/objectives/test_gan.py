"""GAN objectives and the two-player step: exact math, the penalty against finite differences,
clipping, step bookkeeping, a tiny learning check and (slow) mode coverage on 8 Gaussians."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gdl_jax.models.gan import Discriminator, Generator, MLPDiscriminator, MLPGenerator
from gdl_jax.objectives import gan as G
from gdl_jax.objectives.gan_step import init_gan_state, make_gan_step


def _softplus(x):
  return np.logaddexp(0.0, x)


def test_nonsaturating_losses_match_formula():
  k1, k2 = jax.random.split(jax.random.key(0))
  r, f = 3 * jax.random.normal(k1, (16,)), 3 * jax.random.normal(k2, (16,))
  rn, fn = np.asarray(r, np.float64), np.asarray(f, np.float64)
  np.testing.assert_allclose(G.nonsaturating_disc_loss(r, f),
                             np.mean(_softplus(-rn)) + np.mean(_softplus(fn)), rtol=1e-5)
  np.testing.assert_allclose(G.nonsaturating_gen_loss(f), np.mean(_softplus(-fn)), rtol=1e-5)
  # Non-saturating: a confidently rejected fake still gets a gradient of ~ -1/B (log(1 - D) gives ~0).
  g = jax.grad(G.nonsaturating_gen_loss)(jnp.full((4,), -20.0))
  np.testing.assert_allclose(g, -0.25, rtol=1e-6)


def test_label_noise_keeps_targets_inside_unit_interval():
  big = 30.0
  real, fake = jnp.full((8192,), big), jnp.full((8192,), -big)
  # For confident logits BCE(l, t) ~ |l| * |t - sign|, so the loss / |l| is E[noise * u] * 2 = noise.
  loss = G.nonsaturating_disc_loss(real, fake, label_noise=0.1, key=jax.random.key(1))
  assert 0.0 < float(loss) / big and abs(float(loss) / big - 0.1) < 0.005
  assert float(G.nonsaturating_disc_loss(real, fake)) < 1e-6
  with pytest.raises(ValueError, match="needs a key"):
    G.nonsaturating_disc_loss(real, fake, label_noise=0.1)


def test_wasserstein_losses():
  real, fake = jnp.array([1.0, 2.0, 3.0]), jnp.array([-1.0, 0.5, 0.0])
  np.testing.assert_allclose(G.wasserstein_critic_loss(real, fake), -0.5 / 3 - 2.0, rtol=1e-6)
  np.testing.assert_allclose(G.wasserstein_gen_loss(fake), 0.5 / 3, rtol=1e-6)


def test_auxiliary_class_loss_is_softmax_cross_entropy():
  logits = jax.random.normal(jax.random.key(0), (5, 4)) * 3
  labels = jnp.array([0, 3, 1, 1, 2])
  lse = np.log(np.exp(np.asarray(logits, np.float64)).sum(-1))
  expected = np.mean(lse - np.asarray(logits, np.float64)[np.arange(5), np.asarray(labels)])
  np.testing.assert_allclose(float(G.auxiliary_class_loss(logits, labels)), expected, rtol=1e-5)


def test_interpolates_lie_on_each_segment():
  k1, k2, k3 = jax.random.split(jax.random.key(2), 3)
  real, fake = jax.random.normal(k1, (5, 3, 3, 2)), jax.random.normal(k2, (5, 3, 3, 2))
  x = G.random_interpolates(real, fake, k3)
  e = np.asarray((x - fake) / (real - fake)).reshape(5, -1)                        # one e per example
  np.testing.assert_allclose(e, np.repeat(e[:, :1], e.shape[1], axis=1), atol=1e-4)
  assert np.all((e >= -1e-5) & (e <= 1 + 1e-5)) and np.ptp(e[:, 0]) > 0.05


def test_gradient_penalty_matches_finite_differences():
  with jax.enable_x64(True):  # float64 so that tiny steps never straddle a LeakyReLU kink
    critic = Discriminator(features=(4, 8), norm="layer", init_std=0.3, dtype=jnp.float64,
                           param_dtype=jnp.float64)
    x = jax.random.uniform(jax.random.key(3), (3, 4, 4, 1), jnp.float64, -1.0, 1.0)
    params = critic.init(jax.random.key(4), x, train=False)
    f = lambda v: critic.apply(params, v, train=False)                             # [N, ...] -> [N]
    penalty, norms = jax.jit(lambda v: G.gradient_penalty(f, v))(x)
    # Central differences of each example's score along each of its 16 pixels, all in one batch.
    h, d = 1e-6, 16
    eye = np.eye(d).reshape(d, 4, 4, 1) * h
    plus = (np.asarray(x)[:, None] + eye[None]).reshape(-1, 4, 4, 1)
    minus = (np.asarray(x)[:, None] - eye[None]).reshape(-1, 4, 4, 1)
    both = np.asarray(jax.jit(f)(np.concatenate([plus, minus])))
    fd = (both[:3 * d] - both[3 * d:]).reshape(3, d) / (2 * h)
    fd_norms = np.linalg.norm(fd, axis=1)
    assert norms.dtype == jnp.float64 and fd_norms.min() > 1e-2  # a non-trivial check
    np.testing.assert_allclose(norms, fd_norms, rtol=1e-6)
    np.testing.assert_allclose(penalty, np.mean((fd_norms - 1.0) ** 2), rtol=1e-6)


def test_clip_params_and_weight_clipping_transform():
  params = {"a": jnp.array([-1.0, -0.005, 0.003, 2.0]), "b": {"c": jnp.array([[0.02, -0.0]])}}
  clipped = G.clip_params(params, 0.01)
  np.testing.assert_array_equal(clipped["a"], np.float32([-0.01, -0.005, 0.003, 0.01]))
  np.testing.assert_array_equal(clipped["b"]["c"], np.float32([[0.01, 0.0]]))
  tx = optax.chain(optax.sgd(1.0), G.weight_clipping(0.01))
  state = tx.init(params)
  big = jax.tree.map(lambda p: jnp.full_like(p, -5.0), params)
  updates, _ = tx.update(big, state, params)
  new = optax.apply_updates(params, updates)
  for leaf in jax.tree.leaves(new):
    np.testing.assert_allclose(leaf, 0.01, rtol=1e-6)  # pushed to the upper bound
  inside = {"a": jnp.array([0.001, -0.002]), "b": {"c": jnp.array([[0.0, 0.004]])}}
  small = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), inside)
  u, _ = tx.update(small, tx.init(inside), inside)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-9), u,
               jax.tree.map(lambda g: -g, small))  # inside the box: plain SGD
  with pytest.raises(ValueError, match="clip_value"):
    G.clip_params(params, 0.0)


def _tiny_image_players(**kw):
  gen = Generator((8, 8, 1), features=(8, 4), **kw)
  disc = Discriminator(features=(4, 8), norm="batch", **kw)
  return gen, disc


def test_step_bookkeeping_n_critic_split_ema_and_batch_stats():
  gen, disc = MLPGenerator(4, (8,), norm="batch"), MLPDiscriminator((8,), norm="batch")
  opt = optax.adam(1e-2)
  points = jax.random.normal(jax.random.key(5), (6, 4))
  state = init_gan_state(gen, disc, opt, opt, jax.random.key(6), points, latent_dim=4)
  before = jax.device_get(state)
  step = make_gan_step(gen, disc, opt, opt, latent_dim=4, n_critic=3, critic_batches="split",
                       ema_decay=0.999, label_noise=0.1, x_key="x")
  state, m = step(state, {"x": points}, jax.random.key(7))
  assert int(state.step) == 1
  assert int(optax.tree.get(state.opt_state["disc"], "count")) == 3   # 3 critic updates
  assert int(optax.tree.get(state.opt_state["gen"], "count")) == 1    # 1 generator update
  assert all(np.isfinite(float(v)) for v in m.values())
  # EMA after step 0: decay_0 = min(0.999, 1/10) -> ema = 0.1 * ema + 0.9 * params.
  jax.tree.map(lambda e, old, new: np.testing.assert_allclose(e, 0.1 * old + 0.9 * new, atol=1e-6),
               state.ema_params["gen"], before.ema_params["gen"], state.params["gen"])
  for player in ("gen", "disc"):
    changed = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()),
                           state.extra[player], before.extra[player])
    assert max(jax.tree.leaves(changed)) > 0, f"{player} batch stats were not updated"
  with pytest.raises(ValueError, match="divisible by n_critic=3"):
    step(state, {"x": points[:4]}, jax.random.key(7))


def test_step_refuses_bad_configs():
  gen, disc = _tiny_image_players()
  opt = optax.adam(1e-3)
  with pytest.raises(ValueError, match="norm='layer' or norm='none'"):
    make_gan_step(gen, disc, opt, opt, latent_dim=4, loss="wgan", gp_weight=10.0)
  with pytest.raises(ValueError, match="loss='hinge' is unknown"):
    make_gan_step(gen, disc, opt, opt, latent_dim=4, loss="hinge")
  with pytest.raises(ValueError, match="critic_batches"):
    make_gan_step(gen, disc, opt, opt, latent_dim=4, critic_batches="fresh")


def test_auxiliary_classifier_step_learns_the_labels_of_real_digits(test_seed, record_property):
  """AC-GAN: the critic's class head learns real labels, the generator makes fakes it classifies
  (64 digits: the first 64 for seed 0, else drawn by the seed)."""
  from sklearn.datasets import load_digits
  d = load_digits()
  idx = np.arange(64) if test_seed == 0 else np.random.default_rng(test_seed).choice(
      len(d.target), 64, replace=False)
  x = jnp.asarray(d.images[idx, :, :, None] / 8.0 - 1.0, jnp.float32)              # [64, 8, 8, 1]
  labels = jnp.asarray(d.target[idx], jnp.int32)
  gen = Generator((8, 8, 1), features=(16, 8), num_classes=10)
  disc = Discriminator(features=(16, 32), norm="none", aux_classes=10)          # label-blind critic
  opt = optax.adam(3e-3, b1=0.5, b2=0.9)
  key = jax.random.key(test_seed)
  state = init_gan_state(gen, disc, opt, opt, key, x, labels, latent_dim=4, ema=False)
  step = make_gan_step(gen, disc, opt, opt, latent_dim=4, loss="wgan", gp_weight=10.0,
                       aux_weight=1.0, aux_gen_weight=1.0, levels=None, x_key="x")
  hist = []
  for t in range(80):
    state, m = step(state, {"x": x, "label": labels}, jax.random.fold_in(key, t + 1))
    hist.append({k: float(v) for k, v in m.items()})
  first, last = hist[0], {k: np.mean([h[k] for h in hist[-10:]]) for k in hist[0]}
  record_property("aux_mean_last10", (
      f"acc_real {first['aux_acc_real']:.3g} -> {last['aux_acc_real']:.3g} > 0.9; "
      f"aux_real {last['aux_real']:.3g} < 0.5 * {first['aux_real']:.3g}; "
      f"acc_fake {last['aux_acc_fake']:.3g} > 0.8; aux_fake {last['aux_fake']:.3g} < 0.5 * {first['aux_fake']:.3g}"))
  assert first["aux_acc_real"] < 0.3 and last["aux_acc_real"] > 0.9
  assert last["aux_real"] < 0.5 * first["aux_real"]
  assert last["aux_acc_fake"] > 0.8 and last["aux_fake"] < 0.5 * first["aux_fake"]
  plain = Discriminator(features=(16, 32), norm="none")
  with pytest.raises(ValueError, match="aux_classes=num_classes"):
    make_gan_step(gen, plain, opt, opt, latent_dim=4, loss="wgan", aux_weight=1.0)


def test_weight_clipping_step_keeps_critic_in_range():
  gen, disc = MLPGenerator(2, (8,)), MLPDiscriminator((8,))
  opt = optax.sgd(1.0)  # steps far larger than the box, so clipping must act
  x = jax.random.normal(jax.random.key(8), (16, 2)) + 3.0
  state = init_gan_state(gen, disc, opt, opt, jax.random.key(9), x, latent_dim=2, ema=False)
  step = make_gan_step(gen, disc, opt, opt, latent_dim=2, loss="wgan", n_critic=2, clip_value=0.01,
                       x_key="x")
  for _ in range(3):
    state, _ = step(state, {"x": x}, jax.random.key(10))
  leaves = [np.asarray(v) for v in jax.tree.leaves(state.params["disc"])]
  assert max(np.abs(v).max() for v in leaves) <= 0.01
  assert sum(int(np.sum(np.abs(v) == np.float32(0.01))) for v in leaves) > 0   # the box is active
  assert max(np.abs(np.asarray(v)).max() for v in jax.tree.leaves(state.params["gen"])) > 0.01


def _train_points(loss, data_fn, steps, *, batch=64, latent=2, features=(32, 32), lr=3e-3,
                  n_critic=1, gp_weight=0.0, seed=0):
  gen, disc = MLPGenerator(2, features), MLPDiscriminator(features)
  b1, b2 = (0.5, 0.9)
  opt = optax.adam(lr, b1=b1, b2=b2)
  key = jax.random.key(seed)
  state = init_gan_state(gen, disc, opt, opt, key, data_fn(key, batch), latent_dim=latent)
  step = make_gan_step(gen, disc, opt, opt, latent_dim=latent, loss=loss, n_critic=n_critic,
                       gp_weight=gp_weight, ema_decay=0.99, x_key="x")
  history = []
  for t in range(steps):
    state, m = step(state, {"x": data_fn(jax.random.fold_in(key, t + 1), batch)}, key)
    history.append({k: float(v) for k, v in m.items()})
  z = jax.random.normal(jax.random.key(seed + 1), (2000, latent))
  out = np.asarray(gen.apply({"params": state.eval_params()["gen"]}, z, train=False))
  return out, history


@pytest.mark.parametrize("loss, gp", [("nsgan", 0.0), ("wgan", 1.0)])
def test_gan_learns_a_shifted_gaussian(loss, gp, test_seed, record_property):
  target = jnp.array([2.0, -1.0])
  data = lambda k, n: target + 0.2 * jax.random.normal(k, (n, 2))
  out, hist = _train_points(loss, data, 300, gp_weight=gp, n_critic=1 if loss == "nsgan" else 2,
                            seed=test_seed)
  dist, std = float(np.linalg.norm(out.mean(0) - np.asarray(target))), float(out.std(0).mean())
  record_property("mean_dist_and_std", f"{dist:.3g} < 0.3; 0.05 < {std:.3g} < 0.8")
  assert dist < 0.3, (dist, std)                                     # started ~2.2 away
  # not collapsed, not spread far past the data's 0.2 (seeds 0-2: 0.16-0.54; 0.6 was too thin)
  assert 0.05 < std < 0.8, (dist, std)
  first, last = hist[0], hist[-1]
  assert first["d_loss"] != last["d_loss"] and first["g_loss"] != last["g_loss"]


def _ring(k, n, modes=8, radius=2.0, std=0.02):
  c = jax.random.randint(k, (n,), 0, modes)
  ang = 2 * jnp.pi * c / modes
  centres = radius * jnp.stack([jnp.cos(ang), jnp.sin(ang)], -1)                    # [n, 2]
  return centres + std * jax.random.normal(jax.random.fold_in(k, 1), (n, 2))


@pytest.mark.slow
def test_wgan_gp_covers_all_8_modes_of_a_ring():
  out, _ = _train_points("wgan", _ring, 3000, batch=256, latent=8, features=(128, 128, 128),
                         lr=1e-3, n_critic=5, gp_weight=0.1)
  ang = 2 * np.pi * np.arange(8) / 8
  centres = 2.0 * np.stack([np.cos(ang), np.sin(ang)], -1)                           # [8, 2]
  d = np.linalg.norm(out[:, None] - centres[None], axis=-1)                          # [N, 8]
  nearest, dist = d.argmin(1), d.min(1)
  good = dist < 0.2                                                                  # 10 std
  counts = np.bincount(nearest[good], minlength=8)
  assert good.mean() > 0.5, f"only {good.mean():.2f} of samples near a mode"
  assert counts.min() >= 0.25 * len(out) / 8 * good.mean(), f"modes under-covered: {counts}"
