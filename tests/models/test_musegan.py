"""MuseGAN: shapes, the latent split, WGAN-GP's weight and norm, an overfit run on real chorale grids."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdl_jax.models import musegan as M
from gdl_jax.objectives import gan as G

TINY_GEN = dict(z_dim=4, temporal_features=8, bar_features=16)
TINY_CRITIC = dict(features=(8,) * 7, dense=16)


@pytest.mark.parametrize("n_bars,n_tracks", [(4, 1)])   # (2, 4), the chorales', in the next test
def test_shapes_and_ranges(n_bars, n_tracks):
  gen = M.MuseGenerator(n_bars=n_bars, n_tracks=n_tracks, **TINY_GEN)
  critic = M.MuseCritic(**TINY_CRITIC)
  z = jax.random.normal(jax.random.key(0), (3, gen.latent_dim()))
  assert gen.latent_dim() == (2 + 2 * n_tracks) * 4
  gvars = jax.jit(lambda z: gen.init(jax.random.key(1), z, train=False))(z)
  y, _ = jax.jit(lambda v, z: gen.apply(v, z, train=True, mutable=["batch_stats"]))(gvars, z)
  assert y.shape == (3, n_bars, 16, 84, n_tracks)
  assert float(jnp.abs(y).max()) <= 1.0 and float(y.std()) > 0
  scores = jax.jit(lambda y: critic.apply(critic.init(jax.random.key(2), y), y))(y)
  assert scores.shape == (3,) and bool(jnp.all(jnp.isfinite(scores)))


@pytest.mark.parametrize("kernel,shape", [((2, 1, 1), (3, 2, 16, 84, 4)), ((1, 1, 12), (2, 1, 16, 84, 5)),
                                          ((1, 2, 1), (2, 1, 4, 1, 3)), ((1, 1, 1), (2, 1, 2, 3, 3)),
                                          ((1, 1, 7), (2, 1, 3, 15, 2))])      # 15: VALID drops one
def test_patch_conv_equals_flax_conv(kernel, shape):
  x = jax.random.normal(jax.random.key(0), shape)
  ours, ref = M.PatchConv(6, kernel), nn.Conv(6, kernel, strides=kernel, padding="VALID")
  params = ours.init(jax.random.key(1), x)
  ref_params = ref.init(jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, ref_params)
  np.testing.assert_array_equal(params["params"]["kernel"], ref_params["params"]["kernel"])  # same init
  params = jax.tree.map(lambda a: a + jax.random.normal(jax.random.key(2), a.shape), params)
  np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel,shape", [((2, 1), (3, 2, 1, 8)), ((1, 7), (2, 16, 1, 4)),
                                          ((1, 12), (2, 16, 7, 3)), ((2,), (3, 1, 5))])
def test_patch_conv_transpose_equals_flax_conv_transpose(kernel, shape):
  x = jax.random.normal(jax.random.key(0), shape)
  ours, ref = M.PatchConvTranspose(6, kernel), nn.ConvTranspose(6, kernel, strides=kernel, padding="VALID")
  params = ours.init(jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, ref.init(jax.random.key(1), x))
  params = jax.tree.map(lambda a: a + jax.random.normal(jax.random.key(2), a.shape), params)
  np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=1e-4, atol=1e-4)


def _per_track_loop(gen, variables, z, train):
  """The generator as K separate modules called bar by bar (the book's loop), on the vmapped
  generator's params sliced per track; returns (rolls, the updated batch_stats, stacked)."""
  lat = M.split_latents(z, gen.z_dim, gen.n_tracks)
  params, stats = variables["params"], dict(variables["batch_stats"])
  temporal = M.TemporalNetwork(gen.n_bars, gen.z_dim, gen.temporal_features, gen.bn_momentum)
  bar = M.BarGenerator(gen.n_steps, gen.n_pitches, gen.bar_features, gen.pitch_factors, gen.bn_momentum)
  at = lambda tree, k: jax.tree.map(lambda a: a[k], tree)

  def run(module, p, s, x):
    if not train:
      return module.apply({"params": p, "batch_stats": s}, x, False), s
    y, upd = module.apply({"params": p, "batch_stats": s}, x, True, mutable=["batch_stats"])
    return y, upd["batch_stats"]

  chords, stats["chords_temporal"] = run(temporal, params["chords_temporal"], stats["chords_temporal"],
                                         lat.chords)
  melody_stats, bar_stats, tracks = [], [], []
  for k in range(gen.n_tracks):
    melody, s = run(temporal, at(params["melody_temporal"], k), at(stats["melody_temporal"], k),
                    lat.melody[:, k])
    melody_stats.append(s)
    s, bars = at(stats["bar_generator"], k), []
    for n in range(gen.n_bars):
      h = jnp.concatenate([chords[:, n], lat.style, melody[:, n], lat.groove[:, k]], -1)
      y, s = run(bar, at(params["bar_generator"], k), s, h)
      bars.append(y)
    bar_stats.append(s)
    tracks.append(jnp.stack(bars, 1))
  stack = lambda trees: jax.tree.map(lambda *a: jnp.stack(a), *trees)
  stats.update(melody_temporal=stack(melody_stats), bar_generator=stack(bar_stats))
  return jnp.stack(tracks, -1), stats


@pytest.mark.parametrize("train", [True])   # train: batch statistics, running-stat updates
def test_vmapped_tracks_equal_the_per_track_loop(train):
  gen = M.MuseGenerator(**TINY_GEN)
  z = jax.random.normal(jax.random.key(0), (5, gen.latent_dim()))
  variables = jax.jit(lambda z: gen.init(jax.random.key(1), z, train=False))(z)
  k0 = variables["params"]["bar_generator"]["Dense_0"]["kernel"]
  assert not np.allclose(k0[0], k0[1])       # split rngs: K independent networks at init, not one
  variables = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(2), a.shape), variables)
  variables = {"params": variables["params"],
               "batch_stats": jax.tree.map(jnp.abs, variables["batch_stats"])}    # variances > 0
  assert jax.tree.leaves(variables["params"]["bar_generator"])[0].shape[0] == 4  # stacked per track
  if train:
    y, upd = jax.jit(lambda v, z: gen.apply(v, z, train=True, mutable=["batch_stats"]))(variables, z)
    new_stats = upd["batch_stats"]
  else:
    y, new_stats = jax.jit(lambda v, z: gen.apply(v, z, train=False))(variables, z), variables["batch_stats"]
  ref, ref_stats = jax.jit(lambda v, z: _per_track_loop(gen, v, z, train))(variables, z)
  np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), new_stats, ref_stats)


def test_latents_split_and_pack_are_inverse_and_each_input_has_its_role():
  z = jax.random.normal(jax.random.key(0), (2, M.latent_dim(4, 4)))
  lat = M.split_latents(z, 4, 4)
  assert lat.chords.shape == (2, 4) and lat.melody.shape == (2, 4, 4) and lat.groove.shape == (2, 4, 4)
  np.testing.assert_array_equal(M.pack_latents(lat), z)
  gen = M.MuseGenerator(**TINY_GEN)
  gvars = jax.jit(lambda z: gen.init(jax.random.key(1), z, train=False))(z)
  apply = jax.jit(lambda z: gen.apply(gvars, z, train=False))
  base = apply(z)
  assert base.shape == (2, 2, 16, 84, 4) and float(jnp.abs(base).max()) <= 1.0
  critic = M.MuseCritic(**TINY_CRITIC)
  assert jax.eval_shape(lambda y: critic.apply(critic.init(jax.random.key(2), y), y), base).shape == (2,)
  # groove and melody of track 1 only move track 1; chords and style move every track
  for name, tracks in (("groove", {1}), ("melody", {1}), ("chords", {0, 1, 2, 3}), ("style", {0, 1, 2, 3})):
    v = getattr(lat, name)
    v = v.at[:, 1].add(3.0) if v.ndim == 3 else v + 3.0
    y = apply(M.pack_latents(lat._replace(**{name: v})))
    moved = {k for k in range(4) if float(jnp.abs(y[..., k] - base[..., k]).max()) > 1e-6}
    assert moved == tracks, name
  # chords (through the temporal network) can differ between bars; style is the same input to both
  with pytest.raises(ValueError, match=r"MuseGAN latents are \[B, 40\]"):
    M.split_latents(jnp.zeros((2, 39)), 4, 4)


def test_interpolation_weight_is_uniform_01():
  """x_hat = e * real + (1 - e) * fake with real = 1, fake = 0 gives e itself: KS test vs U[0, 1]."""
  from scipy import stats
  n = 4000
  real, fake = jnp.ones((n, 2, 2, 3, 4)), jnp.zeros((n, 2, 2, 3, 4))          # 5-D, as the rolls
  x = jax.jit(G.random_interpolates)(real, fake, jax.random.key(0))
  e = np.asarray(x.reshape(n, -1))
  np.testing.assert_array_equal(e, np.repeat(e[:, :1], e.shape[1], 1))   # one weight per example
  p = stats.kstest(e[:, 0], "uniform").pvalue
  assert p > 1e-3, p
  assert stats.kstest(e[:, 0], "norm").pvalue < 1e-6                     # not the notebook's normal


def test_gradient_norm_is_over_all_non_batch_axes():
  """The penalty's norm against a hand computation: f(x) = sum(w * x^2) has grad 2 w x."""
  k1, k2 = jax.random.split(jax.random.key(3))
  x = jax.random.normal(k1, (3, 2, 16, 84, 4))
  w = jax.random.normal(k2, (2, 16, 84, 4))
  f = lambda v: jnp.sum(w * v ** 2, axis=(1, 2, 3, 4))
  penalty, norms = jax.jit(lambda v: G.gradient_penalty(f, v))(x)
  g = 2 * np.asarray(w, np.float64)[None] * np.asarray(x, np.float64)
  hand = np.sqrt(np.sum(g ** 2, axis=(1, 2, 3, 4)))
  np.testing.assert_allclose(norms, hand, rtol=1e-5)
  np.testing.assert_allclose(penalty, np.mean((hand - 1) ** 2), rtol=1e-5)
  # three axes only (the notebook's) would be a different, per-track number
  assert not np.allclose(hand, np.sqrt(np.sum(g ** 2, axis=(1, 2, 3)))[:, 0], rtol=1e-2)
  # and on the MuseGAN critic: the batch-summed gradient equals per-example gradients
  critic = M.MuseCritic(**TINY_CRITIC)
  params = jax.jit(lambda x: critic.init(jax.random.key(4), x))(x)
  fc = lambda v: critic.apply(params, v)
  _, norms = jax.jit(lambda x: G.gradient_penalty(fc, x))(x)
  per = jax.jit(jax.vmap(jax.grad(lambda xi: fc(xi[None])[0])))(x)
  np.testing.assert_allclose(norms, np.linalg.norm(np.asarray(per).reshape(3, -1), axis=1), rtol=1e-4)


def test_critic_and_generator_bad_inputs():
  critic = M.MuseCritic(**TINY_CRITIC)
  with pytest.raises(ValueError, match="piano rolls"):
    critic.init(jax.random.key(0), jnp.zeros((2, 16, 84, 4)))
  gen = M.MuseGenerator(n_steps=12, **TINY_GEN)
  with pytest.raises(ValueError, match="multiple of 8"):
    gen.init(jax.random.key(0), jnp.zeros((2, gen.latent_dim())), train=False)
  gen = M.MuseGenerator(pitch_factors=(7, 11), **TINY_GEN)
  with pytest.raises(ValueError, match="multiply to 77"):
    gen.init(jax.random.key(0), jnp.zeros((2, gen.latent_dim())), train=False)


@pytest.fixture(scope="module")
def grid_ds():
  pytest.importorskip("music21", reason='chorales_grid needs the [music] extra: pip install -e ".[music]"')
  from gdl_jax.data.music_grid import load_grid
  from tests.data.test_music_grid import PIECES
  return load_grid(os.environ["GDL_DATA_DIR"], PIECES)


@pytest.mark.slow  # 150 two-player steps: ~23 min wall at load ~17 (about 2 CPU-minutes)
def test_overfit_a_few_real_chorale_grids(grid_ds, test_seed, record_property):
  """WGAN-GP through the project's GAN step on 16 real windows: the samples' notes move into the
  voices' ranges (at init the argmax bin is spread over all 84) and the critic separates."""
  import experiments.musegan as E
  from gdl_jax.data.music_grid import voice_ranges
  from gdl_jax.evaluation.pianoroll import range_compliance
  c = E.get_config("tiny")
  c.steps, c.batch_size = 150, 16
  c.optimizer.lr = 3e-3
  c.model.update(z_dim=8, temporal_features=16, bar_features=32, critic_features=(16,) * 7,
                 critic_dense=32, n_critic=2, ema_decay=0.0, standing_stats=0)
  task = E.build(c, grid_ds.info)
  batch = {"roll": jnp.asarray(grid_ds.train["roll"][:16])}
  ranges = voice_ranges(grid_ds.train["bins"][:16])
  key = jax.random.key(test_seed)
  state = task.init(key, batch)
  before = np.nanmean(range_compliance(np.asarray(task.sample(state, jax.random.key(9), 32)), ranges))
  for _ in range(c.steps):
    state, metrics = task.step(state, batch, key)
  after = range_compliance(np.asarray(task.sample(state, jax.random.key(9), 32)), ranges)
  record_property("range_compliance", f"{before:.3f} -> {np.nanmean(after):.3f} (needs >= 0.8)")
  assert before < 0.6 and np.nanmean(after) >= 0.8, (before, after)
  assert np.isfinite(float(metrics["gp"])) and float(metrics["wasserstein"]) > 0


def test_experiment_samples_files_and_the_latent_figure(grid_ds, tmp_path):
  """The tiny experiment without training: rolls in the dataset's format, the files of
  `gdl-jax sample --out DIR` (Task.save_samples) and latents.png (write_artifacts)."""
  import experiments.musegan as E
  from gdl_jax.data.music_grid import SHAPE
  task = E.build(E.get_config("tiny"), grid_ds.info)
  batch = {"roll": jnp.asarray(grid_ds.train["roll"][:4])}
  state = jax.jit(task.init)(jax.random.key(0), batch)           # jitted: eager init is slower
  rolls = np.asarray(task.sample(state, jax.random.key(1), 13))   # 13: the figure's count, one compile
  assert rolls.shape == (13, *SHAPE) and rolls.dtype == np.uint8
  np.testing.assert_array_equal(rolls.sum(axis=3), 1)                  # one bin per step and track
  paths = task.save_samples(rolls[:1], str(tmp_path / "out"))
  assert sorted(os.path.splitext(p)[1] for p in paths) == [".mid", ".png", ".wav"]
  task.write_artifacts(state, grid_ds, str(tmp_path), jax.random.key(2))
  assert os.path.getsize(tmp_path / "latents.png") > 1000
  sweep = E.latent_sweep(lambda z, k: z, jax.random.key(3), 4, 4, n_variations=2)   # the latents
  lat = [M.split_latents(sweep[i:i + 1], 4, 4) for i in range(len(sweep))]
  for i, name in enumerate(M.LATENTS):                                 # rows differ in one input
    for j in range(2):
      v = lat[1 + 2 * i + j]
      for other in M.LATENTS:
        same = np.array_equal(getattr(v, other), getattr(lat[0], other))
        assert same == (other != name), (name, other)
  with pytest.raises(Exception, match="pianoroll"):
    from gdl_jax.data.info import DatasetInfo
    E.build(E.get_config("tiny"), DatasetInfo(name="digits", kind="image", shape=(8, 8, 1), levels=17))
