"""StyleGAN2 (Karras et al. 2020) at CPU size, on Fashion-MNIST (padded to 32x32) or photo_crops.

Run:  gdl-jax train stylegan2 --dataset fashion_mnist --variant small --workdir runs/stylegan2_fashion
      gdl-jax train stylegan2 --dataset photo_crops --workdir runs/stylegan2_photos
      gdl-jax sample runs/stylegan2_fashion --config.model.truncation=0.7
      gdl-jax evaluate runs/stylegan2_fashion
The models are gdl_jax.models.stylegan (mapping network with lr multiplier 0.01 and equalised lr, a
learned constant, modulated + demodulated convs, per-layer noise, the skip generator; a residual
critic with minibatch stddev), trained by the shared two-player step (gdl_jax.objectives.gan_step):
the non-saturating logistic loss, lazy R1 (gamma = model.r1_gamma, on every r1_every-th critic
update, scaled by r1_every), style mixing regularisation (model.mixing_prob of the examples switch to
a second w at a random layer), an EMA generator (model.ema_decay) that every sample comes from.
As in the paper the critic's Adam with lazy regularisation uses lr * c and beta2^c, c = k / (k + 1).

Truncation (model.truncation = psi, default 1): w' = w_avg + psi * (w - w_avg). w_avg is computed at
sampling time from the EMA generator's mapping of model.truncation_samples fixed latents (one MLP
pass, cheap), not tracked during training, so it always belongs to the parameters sampled with.
Images whose side is not a power of 2 are padded with background (level 0) to model.resolution
(Fashion-MNIST: 28 -> 32, 2 px each side) before they reach either player (`pad_images`), and
samples are cropped back to the dataset's size (`crop_images`), so the harness compares 28x28
images with 28x28 images.
Measured (fashion_mnist, `--variant small`: 5000 steps; 2026-12-03, 2 CPU cores shared with two
other runs, 1:31:35 wall, 5457 s user CPU): Fashion CNN Fréchet distance (1000 EMA samples vs 1000
test images) 16.8 / 15.7 / 14.7 / 13.8 / 12.5 / 11.4 at steps 2500 / 3000 / ... / 5000 (`gdl-jax
evaluate RUN --step N`; sample seed 1: 15.8 at 3500, 14.8 at 4000, 12.9 at 5000), novelty 1.04, no
copies; below the WGAN-GP small run's 15.3 from step 4000 on. But a StyleGAN2 step costs 1.82x a
WGAN-GP small step on this CPU (`python benchmarks/step_cost.py stylegan2:small@fashion_mnist
wgan_gp_fashion_mnist:small`: 579 vs 318 ms), and WGAN-GP small trained to the same compute
(`--steps 9000`) reaches 11.2 at 7250 and 10.1 at 9000 steps (seed 1: 11.4, 10.5): at equal compute,
at this size and budget, WGAN-GP is ahead. Tuned per compute with StyleGAN2-ADA's CIFAR-10 settings
(`--config.model.mixing_prob=0 --config.model.mapping_layers=2`: a step 1.86x WGAN-GP's, 539 vs 297
ms) it reads 13.1 / 11.9 / 10.8 at 4000 / 5000 / 6000 steps against WGAN-GP's 11.2 / 10.1 / 9.6 at the
same compute (7250 / 9000 / 11000 steps): still behind (README, Fashion-MNIST table).
Artifacts (write_artifacts): style_mixing_{coarse,middle,fine}.png (row 0: B sources, column 0: A
sources, cell (i, j): A_i's styles with B_j's in that layer range; noise fixed), truncation.png
(rows psi = 1, 0.7, 0.5, 0; columns the same latents; noise fixed), besides samples.png and
progress.gif from the loop.
"""

from __future__ import annotations

import math
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments._common import base_config, shrink
from gdl_jax.data.info import DatasetInfo, from_signed, to_signed
from gdl_jax.models.stylegan import StyleGAN2Discriminator, StyleGAN2Generator, mix_styles, truncate
from gdl_jax.objectives.gan_step import init_gan_state, make_gan_step
from gdl_jax.optim import make_optimizer
from gdl_jax.train.task import Task

TRUNCATION_SWEEP = (1.0, 0.7, 0.5, 0.0)


def get_config(variant: str = "default", dataset: str = "fashion_mnist") -> ml_collections.ConfigDict:
  c = base_config(dataset, steps=10000, batch_size=32, lr=2.5e-3, b1=0.0, b2=0.99, eps=1e-8)
  c.model = ml_collections.ConfigDict(dict(
      resolution=32,                 # images are padded to this (a power of 2)
      latent_dim=256, w_dim=256, mapping_layers=8, mapping_lr_mult=0.01,
      gen_channels=(256, 256, 128, 64),   # resolutions 4, 8, 16, 32
      disc_channels=(64, 128, 256, 256),  # resolutions 32, 16, 8, 4
      mbstd_group=4,
      fused_modconv=False,           # True: one grouped conv per layer (the same numbers)
      mixing_prob=0.9,
      r1_gamma=0.01,                 # StyleGAN2-ADA's CIFAR-10 (32x32) value
      r1_every=16,
      ema_decay=0.999,
      truncation=1.0,                # psi for samples (1: none)
      truncation_samples=4096,       # latents averaged for w_avg
  ))
  if dataset == "digits":  # 8x8: two synthesis blocks (4x4, 8x8)
    c.model.update(resolution=8, latent_dim=64, w_dim=64, mapping_layers=4, gen_channels=(128, 64),
                   disc_channels=(64, 128))
  if variant == "small":   # CPU-sized: 5000 steps (Fashion-MNIST FD 11.4; 2500 steps gave 16.8-17.4)
    c.steps = min(c.steps, 5000)
    if dataset != "digits":
      c.model.update(latent_dim=128, w_dim=128, mapping_layers=4, gen_channels=(128, 128, 64, 32),
                     disc_channels=(32, 64, 128, 128))
  c.sample_every = max(c.steps // 20, 1)
  if variant == "tiny":
    shrink(c, steps=4, batch_size=8)
    c.sample_every = 2
    blocks = len(c.model.gen_channels)
    c.model.update(latent_dim=8, w_dim=8, mapping_layers=2, gen_channels=(8,) * blocks,
                   disc_channels=(8,) * blocks, r1_every=2, truncation_samples=64)
  elif variant not in ("default", "small"):
    raise ValueError(f"unknown variant {variant!r}; use 'default', 'small' or 'tiny' (datasets: --dataset).")
  return c


def pad_images(x, size: int, value: int = 0):
  """[B, H, W, C] -> [B, size, size, C], centred, the border filled with `value` (numpy or jax)."""
  h, w = x.shape[1], x.shape[2]
  if h > size or w > size:
    raise ValueError(f"images of {h}x{w} do not fit into {size}x{size}; raise model.resolution.")
  top, left = (size - h) // 2, (size - w) // 2
  xp = jnp if isinstance(x, jax.Array) else np
  return xp.pad(x, ((0, 0), (top, size - h - top), (left, size - w - left), (0, 0)), constant_values=value)


def crop_images(x, h: int, w: int):
  """The centre h x w of [B, S, S, C] (inverse of `pad_images`)."""
  top, left = (x.shape[1] - h) // 2, (x.shape[2] - w) // 2
  return x[:, top:top + h, left:left + w]


def make_players(mc, info: DatasetInfo) -> tuple[StyleGAN2Generator, StyleGAN2Discriminator]:
  res = int(mc.resolution)
  blocks = int(round(math.log2(res))) - 1
  if res < 4 or 4 * 2 ** (blocks - 1) != res:
    raise ValueError(f"model.resolution={res} must be a power of 2 >= 4 (e.g. 32).")
  for key in ("gen_channels", "disc_channels"):
    if len(mc[key]) != blocks:
      raise ValueError(f"model.{key} has {len(mc[key])} entries but resolution {res} needs {blocks} "
                       f"(one per resolution {', '.join(str(4 * 2 ** i) for i in range(blocks))}).")
  if float(mc.r1_gamma) < 0 or int(mc.r1_every) < 1:
    raise ValueError(f"model.r1_gamma must be >= 0 and model.r1_every >= 1; got {mc.r1_gamma}, {mc.r1_every}.")
  if not 0.0 <= float(mc.truncation) <= 1.0:
    raise ValueError(f"model.truncation (psi) must be in [0, 1]; got {mc.truncation}.")
  gen = StyleGAN2Generator((res, res, info.shape[-1]), latent_dim=int(mc.latent_dim), w_dim=int(mc.w_dim),
                           mapping_layers=int(mc.mapping_layers), channels=tuple(mc.gen_channels),
                           mapping_lr_mult=float(mc.mapping_lr_mult), mixing_prob=float(mc.mixing_prob),
                           fused=bool(mc.fused_modconv))
  disc = StyleGAN2Discriminator(tuple(mc.disc_channels), mbstd_group=int(mc.mbstd_group))
  return gen, disc


def build(config: ml_collections.ConfigDict, info: DatasetInfo) -> Task:
  if info.kind != "image" or info.levels is None or len(info.shape) != 3:
    raise ValueError(f"stylegan2 needs an image dataset with levels, got {info.name!r} (kind={info.kind!r}).")
  mc = config.model
  gen, disc = make_players(mc, info)
  res, levels, latent_dim = int(mc.resolution), int(info.levels), int(mc.latent_dim)
  h, w = int(info.shape[0]), int(info.shape[1])
  steps, k = int(config.steps), int(mc.r1_every)
  gen_opt = make_optimizer(config.optimizer, steps)
  c = k / (k + 1.0)                              # lazy regularisation's optimizer correction
  disc_cfg = ml_collections.ConfigDict(config.optimizer.to_dict())
  disc_cfg.lr = float(config.optimizer.lr) * c
  disc_cfg.b1, disc_cfg.b2 = float(disc_cfg.b1) ** c, float(disc_cfg.b2) ** c
  disc_opt = make_optimizer(disc_cfg, steps)
  ema = float(mc.ema_decay) > 0

  def pad(batch):
    return {**batch, "image": pad_images(batch["image"], res)}

  def init(key, batch):
    x = to_signed(pad(batch)["image"], levels)
    return init_gan_state(gen, disc, gen_opt, disc_opt, key, x, latent_dim=latent_dim, ema=ema)

  step = make_gan_step(gen, disc, gen_opt, disc_opt, latent_dim=latent_dim, loss="nsgan",
                       r1_weight=float(mc.r1_gamma), reg_every=k, gen_rngs=("noise", "mixing"),
                       ema_decay=float(mc.ema_decay) if ema else None, levels=levels,
                       x_transform=lambda x, s: pad_images(x, res, value=-1.0))
  # The real images are padded in [-1, 1] (level 0 -> -1: the same numbers as padding the levels).
  # make_gan_step's own jit reads the lazy-R1 schedule on the host: two programs, with and without
  # the penalty (XLA:CPU runs a conditional's convolutions far slower).

  @jax.jit
  def eval_step(state, batch, key):
    """Held-out critic logits: real test images vs as many fresh fakes (EMA-free raw generator)."""
    x = to_signed(pad(batch)["image"], levels)
    k_z, k_noise = jax.random.split(key)
    z = jax.random.normal(k_z, (x.shape[0], latent_dim))
    fake = gen.apply({"params": state.params["gen"]}, z, rngs={"noise": k_noise})
    real_out = disc.apply({"params": state.params["disc"]}, x)
    fake_out = disc.apply({"params": state.params["disc"]}, fake)
    return {"d_real": real_out.mean(), "d_fake": fake_out.mean(),
            "d_acc": 0.5 * ((real_out > 0).mean() + (fake_out < 0).mean())}

  @jax.jit
  def w_average(gparams):
    z = jax.random.normal(jax.random.key(12345), (int(mc.truncation_samples), latent_dim))
    return gen.apply({"params": gparams}, z, method=gen.map_z).mean(axis=0)           # [W]

  def to_levels(y):
    return from_signed(crop_images(y, h, w), levels).astype(jnp.uint8)               # [n, h, w, C]

  @jax.jit
  def _synthesize(gparams, ws, key):
    return to_levels(gen.apply({"params": gparams}, ws, rngs={"noise": key}, method=gen.synthesize))

  @jax.jit
  def _synthesize_fixed_noise(gparams, ws):
    return to_levels(gen.apply({"params": gparams}, ws, noise_mode="const", method=gen.synthesize))

  @jax.jit
  def _styles(gparams, z):
    wv = gen.apply({"params": gparams}, z, method=gen.map_z)
    return jnp.broadcast_to(wv[:, None], (wv.shape[0], gen.num_ws, wv.shape[1]))       # [n, L, W]

  def sample(state, key, n):
    """n images (uint8 levels, the dataset's size) from the EMA generator, truncated by model.truncation."""
    gparams = state.eval_params()["gen"]
    k_z, k_noise = jax.random.split(key)
    ws = _styles(gparams, jax.random.normal(k_z, (int(n), latent_dim)))
    psi = float(mc.truncation)
    if psi != 1.0:
      ws = truncate(ws, w_average(gparams), psi)
    return _synthesize(gparams, ws, k_noise)

  def write_artifacts(state, data, workdir, key):
    from gdl_jax.evaluation.grids import save_grid
    gparams = state.eval_params()["gen"]
    k_a, k_b, k_t = jax.random.split(key, 3)
    n = 6
    wa, wb = _styles(gparams, jax.random.normal(k_a, (n, latent_dim))), _styles(gparams, jax.random.normal(k_b, (n, latent_dim)))
    img_a, img_b = np.asarray(_synthesize_fixed_noise(gparams, wa)), np.asarray(_synthesize_fixed_noise(gparams, wb))
    blank = np.zeros_like(img_a[:1])
    for name, (lo, hi) in style_ranges(gen.num_ws).items():
      rows = [np.concatenate([blank, img_b])]
      for i in range(n):
        layers = (jnp.arange(gen.num_ws) >= lo) & (jnp.arange(gen.num_ws) < hi)          # B's layers
        mixed = jnp.where(layers[None, :, None], wb, wa[i:i + 1])                          # [n, L, W]
        rows.append(np.concatenate([img_a[i:i + 1], np.asarray(_synthesize_fixed_noise(gparams, mixed))]))
      save_grid(np.concatenate(rows), os.path.join(workdir, f"style_mixing_{name}.png"), nrow=n + 1, levels=levels)
    ws = _styles(gparams, jax.random.normal(k_t, (8, latent_dim)))
    w_avg = w_average(gparams)
    sweep = [np.asarray(_synthesize_fixed_noise(gparams, truncate(ws, w_avg, psi))) for psi in TRUNCATION_SWEEP]
    save_grid(np.concatenate(sweep), os.path.join(workdir, "truncation.png"), nrow=8, levels=levels)

  return Task(init=init, step=step, eval_step=eval_step, sample=sample, write_artifacts=write_artifacts)


def style_ranges(num_ws: int) -> dict[str, tuple[int, int]]:
  """Ranges [lo, hi) of the style inputs for coarse / middle / fine styles. Synthesis block b
  (resolution 4 * 2^b) starts at w index 2b - 1 (block 0 at 0); the middle range starts at block
  blocks // 2, the fine range at the last block (32x32: coarse = 4x4 and 8x8 [0, 3), middle =
  16x16 [3, 5), fine = 32x32 [5, 8))."""
  blocks = num_ws // 2
  if blocks < 2:
    raise ValueError(f"style ranges need at least 2 synthesis blocks; got {blocks}.")
  b1, b2 = max(1, blocks // 2), max(blocks // 2 + 1, blocks - 1)
  return {"coarse": (0, 2 * b1 - 1), "middle": (2 * b1 - 1, 2 * b2 - 1), "fine": (2 * b2 - 1, num_ws)}


if __name__ == "__main__":
  from gdl_jax.cli import main
  sys.exit(main(["train", "stylegan2", *sys.argv[1:]]))
