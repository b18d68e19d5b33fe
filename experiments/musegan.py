"""MuseGAN (Dong et al. 2018; the book's Chapter 11) on the Bach chorales' 2-bar, 4-track piano rolls.

Run:  gdl-jax train musegan --dataset chorales_grid --variant small --workdir runs/musegan
      gdl-jax evaluate runs/musegan
      gdl-jax sample runs/musegan --num 4 --out samples_dir      (.mid, .wav, piano-roll .png each)
Data: chorales_grid (gdl_jax.data.music_grid): [2 bars, 16 steps, 84 pitch bins, 4 tracks S/A/T/B],
one-hot, fed to the players as {-1, 1}.
Model (gdl_jax.models.musegan): the generator's four latents (chords and style shared by all tracks,
melody and groove per track; chords and melody through temporal networks, one vector per bar), one
bar generator per track, tanh output; a 3-D conv critic without normalisation. WGAN-GP through the
project's GAN step (gdl_jax.objectives.gan_step.make_gan_step): n_critic = 5 critic updates per
generator update, penalty 10 * (||grad f(x_hat)|| - 1)^2 with x_hat = e * real + (1 - e) * fake,
e ~ Uniform[0, 1] per example, the norm over ALL non-batch axes (bars, steps, pitches, tracks; the
second edition's notebook draws e from a normal and sums over three axes only); Adam(1e-3, 0.5, 0.9)
as in the book. Samples: the argmax bin per step and track (a pitch or the rest bin), from the EMA
generator with standing BatchNorm statistics.
Artifacts: samples/ (.mid, .wav, piano-roll .png per sample via gdl_jax.music_io), latents.png (the
book's figure: one base sample, then the chords, style, melody or groove input redrawn alone).
Evaluation (`gdl-jax evaluate`): per-voice range compliance (share of generated notes inside each
voice's training range; target >= 0.95), in-key ratio (target >= 0.8), pitch-class-histogram
distance to held-out pieces, each beside the held-out windows' own values
(gdl_jax.evaluation.pianoroll).
Variants: default (the book's sizes; for an accelerator), small (a CPU budget), tiny (tests).
Speed on XLA:CPU: every convolution of both players has kernel == stride (VALID), so they run as
reshapes and matmuls with nn.Conv's parameters (gdl_jax.models.musegan.PatchConv /
PatchConvTranspose), and the per-track networks are one nn.vmap over the tracks. Before (3-D and
transposed nn.Conv, a Python loop of 4 bar generators x 2 bars): the small run's first step came
after 17:44 min wall (nice 10, load ~17), then 20 steps took ~24 min. After, same machine (load
~22): jit of the step lowers + compiles in 38 CPU-s (16196 StableHLO lines, 0 convolutions,
626 dot_generals; 647 s wall at nice 5) and runs in 0.63 CPU-s a step (batch 32, n_critic 5);
the init's jit still takes ~21 CPU-s (the params' RNG, 4182 lines; no convolution in it).
Measured (README's music section): `python -m gdl_jax.cli train musegan --dataset chorales_grid
--variant small --steps 2000 --config.ckpt_every=100 --config.eval_every=500` (the book's Adam(1e-3,
0.5, 0.9) kept: the critic's scores settle, d_real / d_fake 468 / 111 at step 30, 31 / 11 at 480),
`evaluate` (208 samples vs the 208 held-out windows): at step 2000 range compliance S 0.998 / A 0.979
/ T 0.987 / B 0.998 (target >= 0.95: met), in-key 0.820 (held-out 0.919; target >= 0.8: met),
pitch-class distance 0.106 (held-out 0.020), no copies; at step 500: 0.584 / 0.836 / 0.673 / 0.704,
in-key 0.802.
Held-out windows themselves (tests/evaluation/test_pianoroll.py) have in-key > 0.8, and a 150-step
overfit on 16 real windows moves the samples' range compliance from < 0.6 to >= 0.8
(tests/models/test_musegan.py, -m slow).
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments._common import base_config, shrink
from gdl_jax.configs import DECAY, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE_INT, Needs
from gdl_jax.data.info import DatasetInfo, to_signed
from gdl_jax.models.musegan import LATENTS, Latents, MuseCritic, MuseGenerator, pack_latents, split_latents
from gdl_jax.objectives.gan_step import apply_player, init_gan_state, make_gan_step
from gdl_jax.optim import make_optimizer
from gdl_jax.samplers import gan as gan_sampler
from gdl_jax.train.task import Task

NEEDS = Needs("pianoroll", levels=True, hint="MuseGAN trains on chorales_grid")
TEST_DATASET = "chorales_grid_tiny"   # the CLI fuzz's dataset (8 chorales; all 350 take minutes to parse)
RULES = {"model.z_dim": POSITIVE_INT, "model.temporal_features": POSITIVE_INT,
         "model.bar_features": POSITIVE_INT, "model.critic_features": POSITIVE_INT,
         "model.critic_dense": POSITIVE_INT, "model.n_critic": POSITIVE_INT,
         "model.gp_weight": NON_NEGATIVE, "model.ema_decay": DECAY, "model.bn_momentum": DECAY,
         "model.standing_stats": NON_NEGATIVE_INT}


def get_config(variant: str = "default", dataset: str = "chorales_grid") -> ml_collections.ConfigDict:
  c = base_config(dataset, steps=6000, batch_size=64, lr=1e-3, b1=0.5, b2=0.9)
  c.model = ml_collections.ConfigDict(dict(
      z_dim=32, temporal_features=1024, bar_features=512,
      critic_features=(128, 128, 128, 128, 128, 256, 512), critic_dense=1024,
      n_critic=5, gp_weight=10.0, bn_momentum=0.9, ema_decay=0.999, standing_stats=512))
  c.num_samples = 16
  if variant == "small":   # a CPU budget: narrower players, same recipe
    c.batch_size, c.steps = 32, 1500
    c.model.update(temporal_features=128, bar_features=64, critic_features=(32, 32, 32, 32, 32, 64, 64),
                   critic_dense=128, ema_decay=0.99, standing_stats=256)
  elif variant == "tiny":
    shrink(c, steps=4, batch_size=8)
    c.num_samples = 4
    c.model.update(z_dim=4, temporal_features=8, bar_features=16, critic_features=(8,) * 7,
                   critic_dense=16, n_critic=2, standing_stats=16)
  elif variant != "default":
    raise ValueError(f"unknown variant {variant!r}; use 'default', 'small' or 'tiny'.")
  c.log_every = max(c.steps // 50, 1)
  return c


def check(config, info: DatasetInfo) -> None:
  """The critic's stage list: at least 5 entries (bars, 1x1, two pitch stages, then the steps)."""
  from gdl_jax.configs import ConfigError
  if len(tuple(config.model.critic_features)) < 5:
    raise ConfigError(f"config model.critic_features={tuple(config.model.critic_features)} needs at "
                      "least 5 entries (bars, 1x1, two pitch stages, the steps' stages).")
  if len(info.shape) != 4 or info.shape[2] != 84:
    raise ConfigError(f"MuseGAN's players are built for [bars, steps, 84 pitch bins, tracks] rolls; "
                      f"{info.name!r} has examples of shape {info.shape}.")


def make_players(mc, info: DatasetInfo) -> tuple[MuseGenerator, MuseCritic]:
  n_bars, n_steps, n_pitches, n_tracks = info.shape
  gen = MuseGenerator(n_bars=n_bars, n_steps=n_steps, n_pitches=n_pitches, n_tracks=n_tracks,
                      z_dim=int(mc.z_dim), temporal_features=int(mc.temporal_features),
                      bar_features=int(mc.bar_features), bn_momentum=float(mc.bn_momentum))
  disc = MuseCritic(features=tuple(int(f) for f in mc.critic_features), dense=int(mc.critic_dense))
  return gen, disc


def to_roll(y_BxNxSxPxK: jax.Array) -> jax.Array:
  """Generator output in [-1, 1] -> the one-hot uint8 roll: the argmax bin per step and track."""
  idx = jnp.argmax(y_BxNxSxPxK, axis=-2)                                            # [B, N, S, K]
  return jnp.moveaxis(jax.nn.one_hot(idx, y_BxNxSxPxK.shape[-2], dtype=jnp.uint8), -1, -2)


def build(config: ml_collections.ConfigDict, info: DatasetInfo) -> Task:
  from gdl_jax.configs import ConfigError
  if (problem := NEEDS.problem(info)):
    raise ConfigError(f"musegan {problem}")
  mc = config.model
  gen, disc = make_players(mc, info)
  latent_dim, levels = gen.latent_dim(), int(info.levels)
  steps, n_critic = int(config.steps), int(mc.n_critic)
  gen_opt = make_optimizer(config.optimizer, steps)
  disc_opt = make_optimizer(config.optimizer, steps * n_critic)
  ema = float(mc.ema_decay) > 0

  def init(key, batch):
    x = to_signed(jnp.asarray(batch["roll"]), levels)
    return init_gan_state(gen, disc, gen_opt, disc_opt, key, x, latent_dim=latent_dim, ema=ema)

  step = make_gan_step(gen, disc, gen_opt, disc_opt, latent_dim=latent_dim, loss="wgan",
                       n_critic=n_critic, gp_weight=float(mc.gp_weight),
                       ema_decay=float(mc.ema_decay) if ema else None, levels=levels, x_key="roll")

  @jax.jit
  def eval_step(state, batch, key):
    """Held-out critic scores: real test rolls vs as many fresh fakes."""
    x = to_signed(batch["roll"], levels)
    z = jax.random.normal(key, (x.shape[0], latent_dim))
    fake, _ = apply_player(gen, state.params["gen"], state.extra["gen"], z, train=False)
    real_out = disc.apply({"params": state.params["disc"]}, x, train=False)
    fake_out = disc.apply({"params": state.params["disc"]}, fake, train=False)
    return {"d_real": real_out.mean(), "d_fake": fake_out.mean(),
            "wasserstein": real_out.mean() - fake_out.mean()}

  @jax.jit
  def _generate(state, z, key):
    y = gan_sampler.generate(gen, state.eval_params()["gen"], state.extra["gen"], z, key=key,
                             standing_stats=int(mc.standing_stats))
    return to_roll(y)                                                               # uint8 one-hot

  def sample(state, key, n):
    """n one-hot rolls [n, bars, steps, 84, tracks] (uint8) from the EMA generator."""
    k_z, k_stats = jax.random.split(key)
    return _generate(state, jax.random.normal(k_z, (int(n), latent_dim)), k_stats)

  def save_samples(samples, directory):
    from gdl_jax.evaluation.pianoroll import save_rolls
    return save_rolls(np.asarray(samples), directory)

  def write_artifacts(state, data, workdir, key):
    from gdl_jax.evaluation.pianoroll import save_latent_figure
    rolls = latent_sweep(lambda z, k: _generate(state, z, k), key, gen.z_dim, gen.n_tracks)
    save_latent_figure(np.asarray(rolls), os.path.join(workdir, "latents.png"))

  return Task(init=init, step=step, eval_step=eval_step, sample=sample, save_samples=save_samples,
              write_artifacts=write_artifacts)


def latent_sweep(generate, key, z_dim: int, n_tracks: int, n_variations: int = 3) -> jax.Array:
  """The book's figure: a base latent, then each of the four inputs redrawn alone.

  Returns rolls [1 + 4 * n_variations, ...]: the base sample, then for chords, style, melody and
  groove (LATENTS order) n_variations samples where only that input differs from the base.
  """
  k_base, k_new, k_stats = jax.random.split(key, 3)
  base = split_latents(jax.random.normal(k_base, (1, (2 + 2 * n_tracks) * z_dim)), z_dim, n_tracks)
  zs = [pack_latents(base)]
  for i, name in enumerate(LATENTS):
    for j in range(n_variations):
      fresh = split_latents(jax.random.normal(jax.random.fold_in(k_new, 10 * i + j), zs[0].shape),
                            z_dim, n_tracks)
      zs.append(pack_latents(base._replace(**{name: getattr(fresh, name)})))
  return generate(jnp.concatenate(zs), k_stats)


__all__ = ["Latents", "build", "get_config", "latent_sweep", "to_roll"]

if __name__ == "__main__":
  from gdl_jax.cli import main
  sys.exit(main(["train", "musegan", *sys.argv[1:]]))
