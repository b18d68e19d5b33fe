"""The Chapter 4 GAN experiments' shared glue: config block, Task and artefacts.

Each experiments/<gan>_<dataset>.py sets its defaults with `gan_model_config(...)` and calls
`build_gan_task(config, info)`. A run directory gets, besides the loop's samples.png:
  progress/*.png, progress.gif   one fixed latent batch over training (the loop, every
                                 config.sample_every steps: `sample` draws the same latents and
                                 labels from the same key)
  interpolations.png             8 rows of straight lines between two latents (write_artifacts)
  samples_by_class.png           cGAN only: row k holds class k (write_artifacts)
All samples come from the EMA generator with standing BatchNorm statistics (gdl_jax.samplers.gan).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gdl_jax.configs import (DECAY, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, ConfigError,
                             Needs, OneOf)
from gdl_jax.data.info import DatasetInfo, from_signed, to_signed
from gdl_jax.models.gan import NORMS, Discriminator, Generator
from gdl_jax.objectives.gan_step import CRITIC_BATCHES, LOSSES, apply_player, init_gan_state, make_gan_step
from gdl_jax.optim import make_optimizer
from gdl_jax.samplers import gan as gan_sampler
from gdl_jax.train.task import Task

# What every GAN config may hold (each <gan>_<dataset> module re-exports these for the CLI).
NEEDS = Needs("image", levels=True)
RULES = {
    "model.loss": OneOf(LOSSES), "model.critic_batches": OneOf(CRITIC_BATCHES),
    "model.gen_norm": OneOf(NORMS), "model.disc_norm": OneOf(NORMS),
    "model.kernel_size": POSITIVE_INT, "model.bn_momentum": DECAY, "model.init_std": NON_NEGATIVE,
    "model.n_critic": POSITIVE_INT, "model.gp_weight": NON_NEGATIVE, "model.clip_value": NON_NEGATIVE,
    "model.label_noise": DECAY, "model.label_dim": NON_NEGATIVE_INT, "model.aux_weight": NON_NEGATIVE,
    "model.aux_gen_weight": NON_NEGATIVE, "model.standing_stats": NON_NEGATIVE_INT,
    "model.disc_lr_mult": POSITIVE, "model.truncation": POSITIVE,
}


def check(config, info: DatasetInfo) -> None:
  """Constraints between keys and against the images (the single values are in RULES)."""
  mc = config.model
  try:
    Generator(tuple(info.shape), tuple(mc.gen_features)).base_size()
  except ValueError as e:  # the image size against the generator's stages
    raise ConfigError(f"config model.gen_features={tuple(mc.gen_features)} does not fit the images of "
                      f"{info.name!r}: {e} Pass --config.model.gen_features with fewer entries.") from e
  make_players(mc, info)  # ConfigError: a conditional GAN (or its class head) on data without classes
  if float(mc.gp_weight) > 0 and mc.disc_norm == "batch":
    raise ConfigError(f"config model.gp_weight={mc.gp_weight} needs a critic that treats examples "
                      "independently; pass --config.model.disc_norm=none (or layer), or gp_weight=0.")
  if mc.critic_batches == "split" and int(config.batch_size) % int(mc.n_critic):
    raise ConfigError(f"config model.critic_batches='split' needs batch_size={config.batch_size} divisible "
                      f"by model.n_critic={mc.n_critic}; pass --config.batch_size="
                      f"{max(int(config.batch_size) // int(mc.n_critic), 1) * int(mc.n_critic)}.")


def gan_model_config(**kw) -> ml_collections.ConfigDict:
  """Every GAN hyper-parameter (all keys present so CLI overrides type-check)."""
  m = ml_collections.ConfigDict(dict(
      loss="nsgan",             # "nsgan" (DCGAN's non-saturating BCE) or "wgan"
      latent_dim=32,
      gen_features=(128, 64),   # Dense base, then one stride-2 transposed conv per further entry
      disc_features=(64, 128),  # one stride-2 conv each
      kernel_size=4,
      gen_norm="batch",
      disc_norm="batch",        # "batch" (DCGAN), "none" (WGAN, WGAN-GP as in the book), "layer"
      dropout=0.0,              # critic dropout (the book uses 0.3)
      bn_momentum=0.9,
      init_std=0.02,            # DCGAN's N(0, 0.02) init; 0 = Flax default
      n_critic=1,
      critic_batches="reuse",   # "reuse" the batch for every critic update, or "split" it
      gp_weight=0.0,            # WGAN-GP: 10
      clip_value=0.0,           # WGAN: 0.01
      label_noise=0.0,          # DCGAN: noisy BCE targets (the book's NOISE_PARAM = 0.1)
      conditional=False,        # cGAN: labels into both players
      label_dim=0,              # 0: one-hot labels; > 0: a learned embedding of that size
      aux_weight=0.0,           # cGAN: > 0 makes it an AC-GAN: the critic no longer sees the label
                                # but gets a class head (cross-entropy on real labels, this weight)
      aux_gen_weight=0.0,       # and the generator's cross-entropy on its fakes (this weight)
      ema_decay=0.999,          # 0 = no EMA (sample with the raw generator)
      standing_stats=512,       # BatchNorm stats for sampling re-estimated on this many latents
      disc_lr_mult=1.0,         # the critic's learning rate = optimizer.lr * this
      truncation=1.0,           # samples use z * truncation (< 1: the truncation trick, fewer but
                                # more typical samples); training always draws z ~ N(0, I)
  ))
  m.update(kw)
  return m


def apply_gan_variant(c: ml_collections.ConfigDict, variant: str, **tiny_model) -> ml_collections.ConfigDict:
  """The variants every GAN experiment shares: progress grids every steps/20; `small` (a CPU-sized
  run: batch 64, half the generator's features, 2500 steps); `tiny` for tests."""
  from gdl_jax.configs import shrink
  if variant == "small":
    c.batch_size = min(c.batch_size, 64)
    c.steps = min(c.steps, 2500)
    c.model.gen_features = tuple(max(f // 2, 8) for f in c.model.gen_features)
  c.sample_every = max(c.steps // 20, 1)
  if variant == "tiny":
    shrink(c, steps=4, batch_size=8)
    c.sample_every = 2
    c.model.update(standing_stats=32, **tiny_model)
  elif variant not in ("default", "small"):
    raise ValueError(f"unknown variant {variant!r}; use 'default', 'small' or 'tiny' (datasets: --dataset).")
  return c


def make_players(mc, info: DatasetInfo) -> tuple[Generator, Discriminator]:
  k = int(info.num_classes or 0) if mc.conditional else 0
  if mc.conditional and not k:
    raise ConfigError(f"model.conditional=True needs a labelled dataset; {info.name!r} has no classes.")
  gen = Generator(tuple(info.shape), tuple(mc.gen_features), kernel_size=int(mc.kernel_size),
                  norm=mc.gen_norm, bn_momentum=float(mc.bn_momentum), num_classes=k,
                  label_dim=int(mc.label_dim), init_std=float(mc.init_std))
  gen.base_size()  # validates the image shape against the number of stages now, with the fix
  aux = float(mc.get("aux_weight", 0.0)) > 0 or float(mc.get("aux_gen_weight", 0.0)) > 0
  if aux and not k:
    raise ConfigError("model.aux_weight / aux_gen_weight > 0 (the AC-GAN class head) needs "
                     "model.conditional=True on a labelled dataset.")
  disc = Discriminator(tuple(mc.disc_features), kernel_size=int(mc.kernel_size), norm=mc.disc_norm,
                       bn_momentum=float(mc.bn_momentum), dropout=float(mc.dropout),
                       num_classes=0 if aux else k, label_dim=int(mc.label_dim), aux_classes=k if aux else 0,
                       init_std=float(mc.init_std))
  return gen, disc


def build_gan_task(config: ml_collections.ConfigDict, info: DatasetInfo, name: str = "gan") -> Task:
  """The two-player Task for any image dataset with discrete levels."""
  if (problem := NEEDS.problem(info)):
    raise ConfigError(f"{name} {problem}")
  mc = config.model
  gen, disc = make_players(mc, info)
  levels, latent_dim = int(info.levels), int(mc.latent_dim)
  steps, n_critic = int(config.steps), int(mc.n_critic)
  gen_opt = make_optimizer(config.optimizer, steps)
  disc_cfg = ml_collections.ConfigDict(config.optimizer.to_dict())
  disc_cfg.lr = float(config.optimizer.lr) * float(mc.disc_lr_mult)
  disc_opt = make_optimizer(disc_cfg, steps * n_critic)
  ema = float(mc.ema_decay) > 0
  conditional = gen.num_classes > 0

  def init(key, batch):
    x = to_signed(batch["image"], levels)
    labels = batch["label"] if conditional else None
    return init_gan_state(gen, disc, gen_opt, disc_opt, key, x, labels, latent_dim=latent_dim, ema=ema)

  step = make_gan_step(gen, disc, gen_opt, disc_opt, latent_dim=latent_dim, loss=mc.loss,
                       n_critic=n_critic, critic_batches=mc.critic_batches,
                       gp_weight=float(mc.gp_weight), clip_value=float(mc.clip_value),
                       label_noise=float(mc.label_noise), aux_weight=float(mc.get("aux_weight", 0.0)),
                       aux_gen_weight=float(mc.get("aux_gen_weight", 0.0)), ema_decay=float(mc.ema_decay) if ema else None,
                       levels=levels)

  @jax.jit
  def eval_step(state, batch, key):
    """Held-out critic scores: real test images vs as many fresh fakes (eval mode)."""
    x = to_signed(batch["image"], levels)
    labels = batch["label"] if conditional else None
    z = jax.random.normal(key, (x.shape[0], latent_dim))
    fake, _ = apply_player(gen, state.params["gen"], state.extra["gen"], z, labels, train=False)
    real_out, _ = apply_player(disc, state.params["disc"], state.extra["disc"], x, labels, train=False)
    fake_out, _ = apply_player(disc, state.params["disc"], state.extra["disc"], fake, labels, train=False)
    out = {"d_real": real_out.mean(), "d_fake": fake_out.mean(),
           "wasserstein": real_out.mean() - fake_out.mean()}
    if mc.loss == "nsgan":
      out["d_acc"] = 0.5 * ((real_out > 0).mean() + (fake_out < 0).mean())
    return out

  @jax.jit
  def _generate(state, z, labels, key):
    y = gan_sampler.generate(gen, state.eval_params()["gen"], state.extra["gen"], z, labels, key=key,
                             standing_stats=int(mc.standing_stats))
    return from_signed(y, levels).astype(jnp.uint8)                                  # [n, H, W, C]

  def sample(state, key, n, labels=None):
    """n images as uint8 levels from the EMA generator; cGAN labels default to round robin."""
    n = int(n)
    if conditional and labels is None:
      labels = gan_sampler.round_robin_labels(n, gen.num_classes)
    k_z, k_stats = jax.random.split(key)
    z = jax.random.normal(k_z, (n, latent_dim)) * float(mc.get("truncation", 1.0))
    return _generate(state, z, labels, k_stats)

  def write_artifacts(state, data, workdir, key):
    from gdl_jax.evaluation.grids import save_grid
    k_line, k_stats, k_class = jax.random.split(key, 3)
    steps = 10
    z = gan_sampler.interpolate_latents(k_line, 8, steps, latent_dim)                 # [80, Z]
    labels = jnp.repeat(jnp.arange(8) % gen.num_classes, steps) if conditional else None
    save_grid(np.asarray(_generate(state, z, labels, k_stats)),
              os.path.join(workdir, "interpolations.png"), nrow=steps, levels=levels)
    if conditional:
      k = gen.num_classes
      labels = jnp.repeat(jnp.arange(k, dtype=jnp.int32), steps)                      # row = class
      save_grid(np.asarray(sample(state, k_class, k * steps, labels)),
                os.path.join(workdir, "samples_by_class.png"), nrow=steps, levels=levels)

  sample_labeled = (lambda state, key, labels: sample(state, key, len(labels), labels)) if conditional else None
  return Task(init=init, step=step, eval_step=eval_step, sample=sample, sample_labeled=sample_labeled,
              write_artifacts=write_artifacts)
