"""Latent diffusion (Stable Diffusion's recipe, Rombach et al. 2022) on small images, two stages in one run.

Run:  gdl-jax train latent_diffusion --dataset digits --workdir runs/latent_diffusion_digits
      gdl-jax sample runs/latent_diffusion_digits      (DDIM in latent space, then the decoder)
      gdl-jax evaluate runs/latent_diffusion_digits    (classifier FD, novelty, sampling FLOPs)
Datasets: digits (8x8 -> a 4x4x2 latent), fashion_mnist (28x28 -> 7x7x2; not run). Variants: default,
small (a CPU budget), tiny (tests).

Stage 1 (steps 0 .. ae_steps-1): a KL-regularised convolutional autoencoder with a spatial latent
(gdl_jax/models/latent_diffusion.py: the VQ-VAE's conv stacks with a Gaussian posterior instead of
the codebook) on per-pixel MSE in [-1, 1] + autoencoder.kl_weight * KL(q(z|x) || N(0, I)) per pixel.
Stage 2 (the remaining steps): the project's U-Net denoiser (gdl_jax/models/diffusion.py; the
pixel DDPM's v-prediction, cosine schedule, EMA) on z * scale, z drawn from the frozen encoder's
posterior. `scale` is Stable Diffusion's scale factor: 1 / std of the latents of the first
stage-2 batch (all elements), measured once at step ae_steps and kept in TrainState.extra
["latent_scale"], so the diffusion sees unit-variance latents. As vqvae.py, the step reads
state.step on the host and runs that stage's own jitted step; each stage has its own optimizer
(config.optimizer for stage 1, config.diffusion_optimizer for stage 2); metrics carry both
stages' keys (the other's as 0) and `stage`.

Sampling: DDIM (model.sampler_steps, model.sampler_eta) in latent space from N(0, I), divided by
the scale, decoded, rounded to levels. No likelihood (no bits/dim). `gdl-jax evaluate` adds the
sampling FLOPs of one image (XLA's cost analysis: sampler_steps denoiser steps + one decode, see
gdl_jax/evaluation/flops.py) and the same count for the pixel DDPM (experiments/ddpm_digits.py's
default U-Net on the images) at the same number of steps, and their ratio; `python -m
experiments.latent_diffusion --flops` prints them without a run.

MEASURED (digits, batch 64, 359 samples, 2 shared CPU cores):
  default (1500 autoencoder + 7500 diffusion steps, c=2, kl_weight 1e-2; `gdl-jax train
    latent_diffusion --dataset digits --evaluate`, 446 s user CPU, 1:04:28 wall at nice 19 beside
    two World Models runs, 2026-12-03): FD **3.41** (`evaluate --seed 1`: 3.17), novelty 0.953
    (0.939), no copies: 0.86x (0.80x) the pixel DDPM's 3.97, within 1.2x (met), at 0.203 of its
    sampling FLOPs and ~0.7x its training FLOPs.
  1500 + 2500 diffusion steps (the pixel DDPM's step count; load ~15-20):
  c=2, kl_weight 1e-2: 23:11 wall incl. evaluate; held-out recon. MSE 0.0151 per pixel
    in [-1, 1], KL 1.28 nats/pixel; FD 5.74, novelty 1.087, no copies (`evaluate --seed 1`:
    FD 5.95; `--config.model.sampler_eta=0`: FD 6.11).
  c=4, kl_weight 1e-3: 19:59 wall; recon. MSE 0.0066, KL 3.56 nats/pixel; FD 8.25, novelty 1.164.
  Pixel DDPM (ddpm_digits, 2500 steps, DDIM-50 eta 1): FD 3.97. Sampling FLOPs per image at
  DDIM-50 (XLA cost analysis): 63.9 MFLOPs (c=2; 65.0 at c=4) vs the pixel DDPM's 315.5: ratio
  0.203 (<= 1/4, met); FD 5.74 = 1.45x the pixel DDPM's (within 1.2x: not met at 2500 steps).
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import ddpm_digits
from experiments._common import base_config, shrink
from gdl_jax.configs import NON_NEGATIVE, POSITIVE_INT, ConfigError, Needs, optimizer_rules
from gdl_jax.data.info import DatasetInfo, from_signed, to_signed
from gdl_jax.models.diffusion import DiffusionModel
from gdl_jax.models.latent_diffusion import KLAutoencoder, latent_geometry
from gdl_jax.objectives.diffusion import diffusion_loss
from gdl_jax.objectives.vae import gaussian_kl
from gdl_jax.optim import default_optimizer_config, make_optimizer
from gdl_jax.samplers.diffusion import ddim_sample
from gdl_jax.train.state import TrainState, ema_update
from gdl_jax.train.step import tree_l2
from gdl_jax.train.task import Task

VARIANTS = ("default", "small", "tiny")
NEEDS = Needs("image", levels=True)
RULES = {**{k: v for k, v in ddpm_digits.RULES.items()}, "ae_steps": POSITIVE_INT,
         "autoencoder.features": POSITIVE_INT, "autoencoder.res_blocks": POSITIVE_INT,
         "autoencoder.res_hidden": POSITIVE_INT, "autoencoder.latent_channels": POSITIVE_INT,
         "autoencoder.kl_weight": NON_NEGATIVE, **optimizer_rules("diffusion_optimizer")}
PRESETS = {"digits": dict(features=(32,)), "fashion_mnist": dict(features=(32, 64))}


def autoencoder_config(**kw) -> ml_collections.ConfigDict:
  # c=2, kl_weight 1e-2 measured better than c=4, 1e-3 on digits (FD 5.74 vs 8.25, the docstring)
  a = ml_collections.ConfigDict(dict(features=(32,), res_blocks=1, res_hidden=32, latent_channels=2,
                                     kl_weight=1e-2))
  a.update(kw)
  return a


def model_config(**kw) -> ml_collections.ConfigDict:
  """The latent U-Net and its sampler: the pixel DDPM's keys that apply (no bound in latent space)."""
  m = ml_collections.ConfigDict(dict(
      base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(), num_heads=1,
      groups=8, dropout=0.0, dtype="float32", schedule="cosine", num_timesteps=1000, prediction="v",
      ema_decay=0.995, sampler_steps=50, sampler_eta=1.0,
      clip_denoised=False))  # latents are not bounded: no clipping of x0_hat (Stable Diffusion's)
  m.update(kw)
  return m


def get_config(variant: str = "default", dataset: str = "digits") -> ml_collections.ConfigDict:
  if dataset not in PRESETS:
    raise ValueError(f"latent_diffusion has no preset for dataset {dataset!r}; use one of "
                     f"{sorted(PRESETS)}.")
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; use one of {VARIANTS}.")
  c = base_config(dataset, steps=9000, batch_size=64, lr=1e-3, schedule="cosine", warmup_steps=100,
                  final_lr_frac=0.05)
  # then 7500 diffusion steps: a latent step costs ~1/5 of a pixel-DDPM step (XLA's forward
  # counts: 1.26 vs 6.31 MFLOPs per image), so both stages together are ~0.7x the training FLOPs
  # of ddpm_digits' 2500 steps; with 2500 diffusion steps FD was 5.74 (README, latent diffusion)
  c.ae_steps = 1500
  c.diffusion_optimizer = default_optimizer_config(1e-3, schedule="cosine", warmup_steps=200,
                                                   final_lr_frac=0.05, clip_norm=1.0)
  c.autoencoder = autoencoder_config(**PRESETS[dataset])
  c.model = model_config()
  if variant == "small":
    c.steps, c.ae_steps = 3000, 1000
    c.log_every, c.eval_every, c.ckpt_every = 50, 500, 500
  elif variant == "tiny":
    shrink(c, steps=4, batch_size=8)
    c.ae_steps = 2
    c.optimizer.warmup_steps = c.diffusion_optimizer.warmup_steps = 0
    c.autoencoder.update(res_hidden=8, latent_channels=2)
    c.autoencoder.features = tuple(4 * (i + 1) for i in range(len(c.autoencoder.features)))
    c.model.update(base_channels=8, num_timesteps=50, sampler_steps=5)
  return c


def make_autoencoder(ac, info: DatasetInfo) -> KLAutoencoder:
  return KLAutoencoder(image_shape=tuple(int(s) for s in info.shape), levels=int(info.levels),
                       features=tuple(int(f) for f in ac.features), res_blocks=int(ac.res_blocks),
                       res_hidden=int(ac.res_hidden), latent_channels=int(ac.latent_channels))


def check(config, info: DatasetInfo) -> None:
  """The CLI's hook (before anything is built): every error names the fix."""
  if (problem := NEEDS.problem(info)):
    raise ConfigError(f"latent_diffusion {problem}")
  ddpm_digits.check_unet(config.model)
  try:
    latent_geometry(info.shape, len(config.autoencoder.features))
  except ValueError as e:
    raise ConfigError(str(e)) from e
  ae_steps, steps = int(config.ae_steps), int(config.steps)
  if not 0 < ae_steps < steps:
    raise ConfigError(f"ae_steps={ae_steps} must be in [1, steps={steps}): stage 1 trains the "
                      "autoencoder for ae_steps steps and the latent diffusion for the rest; set "
                      f"--config.ae_steps (e.g. {max(steps // 2, 1)}).")
  for name, length in (("optimizer", ae_steps), ("diffusion_optimizer", steps - ae_steps)):
    if int(config[name].warmup_steps) >= length:
      raise ConfigError(f"{name}.warmup_steps={config[name].warmup_steps} is not shorter than its "
                        f"stage ({length} steps); set --config.{name}.warmup_steps to at most "
                        f"{max(length // 10, 0)}.")


def make_denoiser(config) -> DiffusionModel:
  return DiffusionModel.from_config(config.model, int(config.autoencoder.latent_channels))


def sampling_flops(config, info: DatasetInfo, steps: int | None = None) -> dict:
  """FLOPs of one sample (batch 1): `steps` DDIM steps of the latent U-Net + one decode, and the
  pixel DDPM (ddpm_digits' default U-Net on info.shape images) at the same steps; nothing runs."""
  from gdl_jax.evaluation.flops import ddim_sampling_flops
  steps = int(config.model.sampler_steps if steps is None else steps)
  ae, net = make_autoencoder(config.autoencoder, info), make_denoiser(config)
  latent = (1,) + ae.latent_shape
  image = jnp.zeros((1,) + tuple(info.shape), jnp.int32)
  ae_params = jax.eval_shape(lambda: ae.init(jax.random.key(0), image, jax.random.key(1)))["params"]
  net_params = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros(latent), jnp.zeros((1,))))
  decode = lambda p, z: ae.apply({"params": p}, z, method=ae.decode)
  ours = ddim_sampling_flops(net.predictor(), net_params["params"], net.diffusion.alpha_bars(), latent,
                             steps, prediction=net.diffusion.prediction,
                             clip=bool(config.model.clip_denoised), decode=decode, decode_params=ae_params)
  pc = ddpm_digits.get_config("default").model
  pixel = DiffusionModel.from_config(pc, int(info.shape[-1]))
  shape = (1,) + tuple(info.shape)
  pixel_params = jax.eval_shape(lambda: pixel.init(jax.random.key(0), jnp.zeros(shape), jnp.zeros((1,))))
  theirs = ddim_sampling_flops(pixel.predictor(), pixel_params["params"], pixel.diffusion.alpha_bars(),
                               shape, steps, prediction=pixel.diffusion.prediction,
                               clip=bool(pc.clip_denoised))
  return {"sampler_steps": steps, "sampling_flops": ours["total"],
          "sampling_flops_denoiser_step": ours["per_step"], "sampling_flops_decode": ours["decode"],
          "pixel_ddpm_sampling_flops": theirs["total"],
          "flops_ratio_vs_pixel_ddpm": ours["total"] / theirs["total"]}


def build(config: ml_collections.ConfigDict, info: DatasetInfo) -> Task:
  """The two-stage autoencoder + latent-diffusion Task."""
  check(config, info)
  ae = make_autoencoder(config.autoencoder, info)
  net = make_denoiser(config)
  diff, predict = net.diffusion, net.predictor()
  mc = config.model
  ae_steps, steps = int(config.ae_steps), int(config.steps)
  opt_ae = make_optimizer(config.optimizer, ae_steps)
  opt_net = make_optimizer(config.diffusion_optimizer, steps - ae_steps)
  kl_weight, dims, levels = float(config.autoencoder.kl_weight), info.dims, int(info.levels)
  latent = ae.latent_shape
  ema_decay = float(mc.ema_decay)

  def init(key, batch):
    k_ae, k_net, k_z = jax.random.split(key, 3)
    image = batch["image"]
    ae_params = ae.init(k_ae, image, k_z)["params"]
    z = jnp.zeros((image.shape[0],) + latent, jnp.float32)
    net_params = net.init(k_net, z, jnp.zeros((image.shape[0],), jnp.float32))["params"]
    params = {"autoencoder": ae_params, "denoiser": net_params}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state={"autoencoder": opt_ae.init(ae_params), "denoiser": opt_net.init(net_params)},
                      extra={"latent_scale": jnp.ones((), jnp.float32)},
                      ema_params={"denoiser": jax.tree.map(jnp.copy, net_params)})

  def ae_loss(p, image, key):
    out = ae.apply({"params": p}, image, key)
    mse = jnp.mean((out.recon - to_signed(image, levels)) ** 2)
    post, b = out.posterior, image.shape[0]
    kl = jnp.mean(gaussian_kl(post.mean.reshape(b, -1), post.logvar.reshape(b, -1))) / dims
    # kl: nats per pixel
    return mse + kl_weight * kl, dict(recon_mse=mse, kl_per_dim=kl)

  def stage1(state, batch, key):
    p = state.params["autoencoder"]
    (loss, metrics), grads = jax.value_and_grad(ae_loss, has_aux=True)(p, batch["image"], key)
    updates, opt = opt_ae.update(grads, state.opt_state["autoencoder"], p)
    new = state.replace(step=state.step + 1,
                        params={**state.params, "autoencoder": jax.tree.map(jnp.add, p, updates)},
                        opt_state={**state.opt_state, "autoencoder": opt})
    return new, dict(loss=loss, stage=jnp.ones(()), **metrics, l2_grads=tree_l2(grads),
                     l2_updates=tree_l2(updates))

  def latents(ae_params, image, key):
    """z ~ q(z|x) of the frozen autoencoder, [B, h, w, c] (unscaled)."""
    return jax.lax.stop_gradient(ae.apply({"params": ae_params}, image, key).z)

  def stage2(state, batch, key):
    k_z, k_diff = jax.random.split(key)
    z = latents(state.params["autoencoder"], batch["image"], k_z)
    # Stable Diffusion's scale factor: 1/std of the first stage-2 batch's latents, then frozen.
    scale = jnp.where(state.step == ae_steps, 1.0 / jnp.std(z), state.extra["latent_scale"])
    p = state.params["denoiser"]

    def loss_fn(p):
      denoise = lambda x, t: net.apply({"params": p}, x, t, train=True)
      return diffusion_loss(denoise, z * scale, k_diff, diff.alpha_bars(), diff.prediction)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(p)
    updates, opt = opt_net.update(grads, state.opt_state["denoiser"], p)
    p = jax.tree.map(jnp.add, p, updates)
    ema = ema_update(state.ema_params["denoiser"], p, state.step - ae_steps, ema_decay)
    new = state.replace(step=state.step + 1, params={**state.params, "denoiser": p},
                        opt_state={**state.opt_state, "denoiser": opt},
                        extra={**state.extra, "latent_scale": scale}, ema_params={"denoiser": ema})
    return new, dict(loss=loss, stage=2 * jnp.ones(()), **metrics, latent_scale=scale,
                     l2_grads=tree_l2(grads), l2_updates=tree_l2(updates))

  def prepared(f):  # the step folded into the key; every metric of both stages (the other's as 0)
    def run(state, batch, key):
      key = jax.random.fold_in(key, state.step)
      shapes = [jax.eval_shape(g, state, batch, key)[1] for g in (stage1, stage2)]
      names = sorted(set(shapes[0]) | set(shapes[1]))
      new, m = f(state, batch, key)
      return new, {k: jnp.asarray(m.get(k, 0.0), jnp.float32) for k in names}
    return run

  stage_steps = [jax.jit(prepared(f), donate_argnums=0) for f in (stage1, stage2)]

  def step(state, batch, key):
    """One training step: the stage is read from state.step on the host, then that stage's own
    jitted, donating step runs (pure in (state, batch, key), as vqvae.py's host dispatch)."""
    return stage_steps[int(jax.device_get(state.step)) >= ae_steps](state, batch, key)

  @jax.jit
  def eval_step(state, batch, key):
    """Held-out reconstruction MSE / KL, and the EMA denoiser's loss on the scaled latents."""
    k_ae, k_z, k_diff = jax.random.split(key, 3)
    _, metrics = ae_loss(state.params["autoencoder"], batch["image"], k_ae)
    z = latents(state.params["autoencoder"], batch["image"], k_z) * state.extra["latent_scale"]
    loss, dm = diffusion_loss(lambda x, t: predict(state.ema_params["denoiser"], x, t), z, k_diff,
                              diff.alpha_bars(), diff.prediction)
    return {**metrics, "diffusion_loss": loss, "latent_std": jnp.std(z)}

  def decode(state, z):
    return ae.apply({"params": state.params["autoencoder"]}, z, method=ae.decode)

  def sample_latents(state, key, n, steps=None, eta=None):
    """n scaled latents [n, h, w, c] by DDIM with the EMA denoiser."""
    return ddim_sample(predict, state.ema_params["denoiser"], key, diff.alpha_bars(),
                       shape=(n,) + latent, steps=int(mc.sampler_steps if steps is None else steps),
                       eta=float(mc.sampler_eta if eta is None else eta), prediction=diff.prediction,
                       clip=bool(mc.clip_denoised))

  @jax.jit
  def _decode_levels(state, z):
    return from_signed(decode(state, z / state.extra["latent_scale"]), levels)

  def sample(state, key, n):
    """DDIM in latent space, then the decoder -> integer levels [n, H, W, C]."""
    return _decode_levels(state, sample_latents(state, key, int(n)))

  def metrics(state, dataset, key, *, use_features=True, use_samples=True):
    """The sampling FLOPs of one image, and the pixel DDPM's at the same steps (compiled, not run)."""
    return sampling_flops(config, info)

  def write_artifacts(state, data, workdir, key):
    from gdl_jax.evaluation.grids import save_grid
    originals = data.test["image"][:16]
    recon = jax.jit(lambda s, x: from_signed(decode(s, ae.apply({"params": s.params["autoencoder"]}, x,
                                                                method=ae.encode).mean), levels))(
        state, originals)
    save_grid(np.concatenate([originals, np.asarray(recon)]),
              os.path.join(workdir, "reconstructions.png"), nrow=len(originals), levels=levels)

  return Task(init=init, step=step, eval_step=eval_step, sample=sample, metrics=metrics,
              write_artifacts=write_artifacts)


def _print_flops(argv) -> int:
  import argparse
  from gdl_jax import data
  ap = argparse.ArgumentParser(description="Sampling FLOPs: latent diffusion vs the pixel DDPM.")
  ap.add_argument("--variant", default="default", choices=VARIANTS)
  ap.add_argument("--dataset", default="digits", choices=sorted(PRESETS))
  ap.add_argument("--steps", type=int, nargs="*", default=[50])
  args = ap.parse_args(argv)
  config = get_config(args.variant, args.dataset)
  info = data.load(args.dataset).info
  for s in args.steps:
    f = sampling_flops(config, info, s)
    print(f"{args.dataset} {args.variant} DDIM-{s}: latent {f['sampling_flops'] / 1e6:.2f} MFLOPs "
          f"(denoiser step {f['sampling_flops_denoiser_step'] / 1e6:.3f}, decode "
          f"{f['sampling_flops_decode'] / 1e6:.3f}) vs pixel DDPM {f['pixel_ddpm_sampling_flops'] / 1e6:.2f}"
          f" MFLOPs per image: ratio {f['flops_ratio_vs_pixel_ddpm']:.3f}")
  return 0


if __name__ == "__main__":
  if "--flops" in sys.argv[1:]:
    sys.exit(_print_flops([a for a in sys.argv[1:] if a != "--flops"]))
  from gdl_jax.cli import main
  sys.exit(main(["train", "latent_diffusion", *sys.argv[1:]]))
