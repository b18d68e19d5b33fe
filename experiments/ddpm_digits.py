"""Chapter 8: a denoising diffusion model (DDPM training, DDIM sampling) on the 8x8 digits.

Run:  gdl-jax train ddpm --dataset digits --workdir runs/ddpm_digits
      gdl-jax evaluate runs/ddpm_digits
A small U-Net (16-32 channels at 8x8-4x4, one residual block per level, self-attention in the
4x4 bottleneck, 0.16M parameters) learns v-prediction under the cosine schedule with T=1000
(v rather than the book's eps: the x0 estimate a x - s v never divides by sqrt(alpha_bar), so DDIM
inversion stays well-conditioned). EMA weights sample and score:
- Task.sample: DDIM with model.sampler_steps=50 steps and sampler_eta=1, i.e. ancestral sampling
  of the 50-step chain on DDIM's grid; integer levels 0..16. sampler_eta=0 is deterministic DDIM.
- Task.log_prob: minus the variational bound of that same 50-step chain (exact, 50 network
  calls; a discretized-Gaussian decoder over the 17 levels; see gdl_jax.objectives.diffusion).
- write_artifacts: samples_ddim.png, samples_ddpm.png (ancestral through all T steps),
  trajectory.png (x_t along one sampling run, x_T on the left) and trajectory_x0.png (x0_hat).

MEASURED (2-core CPU shared with other jobs, load ~8; 2500 steps at batch 64 in 271 s):
  `gdl-jax evaluate`: bits/dim 2.405 (bound), FD 3.97, novelty ratio 1.09, copy share 0.000
  (359 samples vs 359 test images; FD of 359 training images vs the test images: 2.65).
  Same weights, other samplers (FD, seed 1 / seed 2): DDIM-50 eta=1 3.97 / 3.85; DDIM-50 eta=0
  5.91 / 4.78; DDIM-20 eta=0 5.81; DDIM-10 eta=0 6.05; DDIM-1000 eta=0 6.01; DDPM (T=1000
  ancestral) 4.04. Bound of the full 1000-step chain (unclipped x0_hat): 4.09 bits/dim, its
  first steps dominate (the 200/100/20-step chains: 3.05/2.68/2.38).
  DDIM-50 sampling: ~50-80 images/s on that CPU.
"""

from __future__ import annotations

import functools
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments._common import base_config, shrink
from gdl_jax.configs import NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE_INT, ConfigError, Needs, OneOf, Range
from gdl_jax.data.info import DatasetInfo, from_signed, to_signed
from gdl_jax.models.diffusion import DiffusionModel
from gdl_jax.objectives.diffusion import (PREDICTIONS, SCHEDULES, bits_per_dim, diffusion_loss, subchain,
                                          vlb_terms)
from gdl_jax.optim import make_optimizer
from gdl_jax.samplers.diffusion import ddim_sample, ddpm_sample
from gdl_jax.train.state import TrainState
from gdl_jax.train.step import make_train_step
from gdl_jax.train.task import Task


# What the config may hold (checked before anything is built; gdl_jax.configs has the common rules).
NEEDS = Needs("image", levels=True)
RULES = {
    "model.dtype": OneOf("float32", "bfloat16", "float16"), "model.schedule": OneOf(SCHEDULES),
    "model.prediction": OneOf(PREDICTIONS), "model.base_channels": POSITIVE_INT,
    "model.channel_mults": POSITIVE_INT, "model.attention_levels": NON_NEGATIVE_INT,
    "model.groups": POSITIVE_INT, "model.num_timesteps": Range(2, integer=True),
    "model.sampler_steps": POSITIVE_INT, "model.sampler_eta": NON_NEGATIVE,
}


def check(config, info: DatasetInfo) -> None:
  """Constraints between keys (the single values are in RULES)."""
  mc = config.model
  check_unet(mc)
  _check_vlb(mc)


def check_unet(mc) -> None:
  """The U-Net's and the sampler's keys of a diffusion `config.model` (latent diffusion reuses it)."""
  base, mults, levels = int(mc.base_channels), tuple(mc.channel_mults), len(mc.channel_mults)
  if base % 2:
    raise ConfigError(f"config model.base_channels={base} must be even (the time embedding's size); "
                      f"pass --config.model.base_channels={base + 1}.")
  for ch in sorted({base} | {base * m for m in mults}):
    if ch % min(int(mc.groups), ch):
      raise ConfigError(f"config model.groups={mc.groups} does not divide {ch} channels (base_channels * "
                        "channel_mults); pass a model.groups dividing every level's channels, e.g. "
                        f"--config.model.groups={math.gcd(*([base] + [base * m for m in mults]))}.")
  bad = [i for i in mc.attention_levels if i >= levels]
  if bad:
    raise ConfigError(f"config model.attention_levels={tuple(mc.attention_levels)} names levels {bad}, "
                      f"but channel_mults has {levels} (0..{levels - 1}); pass e.g. "
                      "--config.model.attention_levels='()'.")
  for level in set(mc.attention_levels) | {levels - 1}:  # the bottleneck always attends
    if (base * mults[level]) % int(mc.num_heads):
      raise ConfigError(f"config model.num_heads={mc.num_heads} does not divide the {base * mults[level]} "
                        f"channels of attention level {level}; pass --config.model.num_heads=1.")
  T = int(mc.num_timesteps)
  if int(mc.sampler_steps) > T:
    raise ConfigError(f"config model.sampler_steps={mc.sampler_steps} must be in 1..num_timesteps={T}; "
                      f"pass --config.model.sampler_steps={T}.")


def _check_vlb(mc) -> None:
  T = int(mc.num_timesteps)
  chain = int(mc.vlb_chain_steps) or T  # the chain whose bound log_prob is
  if chain > T:
    raise ConfigError(f"config model.vlb_chain_steps={chain} must be in 0..num_timesteps={T}; "
                      f"pass --config.model.vlb_chain_steps={T}.")
  for name in ("vlb_steps", "eval_vlb_steps"):
    if int(mc[name]) > chain:
      raise ConfigError(f"config model.{name}={mc[name]} must be in 0..{chain} (the chain's steps; 0 = "
                        "exact for vlb_steps, off for eval_vlb_steps).")


def model_config(**kw) -> ml_collections.ConfigDict:
  """The diffusion family's hyper-parameters (all keys present so CLI overrides type-check)."""
  m = ml_collections.ConfigDict(dict(
      base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(),
      num_heads=1, groups=8, dropout=0.0, dtype="float32",
      schedule="cosine", num_timesteps=1000, prediction="v", ema_decay=0.995,
      sampler_steps=50,      # DDIM steps of Task.sample
      sampler_eta=1.0,       # 1: ancestral sampling of the sampler_steps-step chain; 0: deterministic
      clip_denoised=True,    # x0_hat clipped to [-1, 1] in sampling and in the bound's reverse model
      vlb_chain_steps=50,    # log_prob is the bound of this K-step chain (0 = all T steps)
      vlb_steps=0,           # network calls for it: 0 = exact (K); k < K = unbiased stratified estimate
      eval_vlb_steps=10,     # eval_step's bits/dim estimate on the same chain (0 = skip)
      ddpm_artifacts=True,   # write_artifacts also draws a T-step ancestral grid
      trajectory_columns=11))
  m.update(kw)
  return m


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  c = base_config("digits", steps=2500, batch_size=64, lr=1e-3, schedule="cosine",
                  warmup_steps=200, final_lr_frac=0.05, clip_norm=1.0)
  c.model = model_config()
  if variant == "tiny":
    shrink(c, steps=4, batch_size=8)
    c.model.update(base_channels=8, num_res_blocks=1, attention_levels=(), num_timesteps=50,
                   sampler_steps=5, vlb_chain_steps=10, vlb_steps=4, eval_vlb_steps=2,
                   trajectory_columns=4)
  elif variant != "default":
    raise ValueError(f"unknown variant {variant!r}; use 'default' or 'tiny'.")
  return c


def build(config: ml_collections.ConfigDict, info: DatasetInfo) -> Task:
  """The diffusion Task for any image dataset (the Fashion-MNIST experiment reuses it)."""
  if (problem := NEEDS.problem(info)):
    raise ConfigError(f"diffusion experiments {problem}")
  check(config, info)
  mc = config.model
  model = DiffusionModel.from_config(mc, info.shape[-1])
  diff = model.diffusion
  predict = model.predictor()
  optimizer = make_optimizer(config.optimizer, int(config.steps))
  levels, shape = int(info.levels), tuple(info.shape)

  def init(key, batch):
    x = to_signed(batch["image"], levels)
    params = model.init(key, x, jnp.zeros((x.shape[0],), jnp.float32))["params"]
    return TrainState.create(params, optimizer, ema=True)

  def loss_fn(params, extra, batch, key):
    k_diff, k_drop = jax.random.split(key)
    denoise = lambda x, t: model.apply({"params": params}, x, t, train=True, rngs={"dropout": k_drop})
    loss, metrics = diffusion_loss(denoise, to_signed(batch["image"], levels), k_diff,
                                   diff.alpha_bars(), diff.prediction)
    return loss, (extra, metrics)

  step = make_train_step(loss_fn, optimizer, ema_decay=float(mc.ema_decay))

  chain = int(mc.vlb_chain_steps) or diff.num_timesteps  # the chain whose bound log_prob is

  def neg_vlb(params, image, key, vlb_steps):
    """-(variational bound) in nats [B] of the K-step chain."""
    ab, times = subchain(diff.alpha_bars(), chain)
    vlb = vlb_terms(functools.partial(predict, params), to_signed(image, levels), key, ab, levels,
                    diff.prediction, vlb_steps or None, times=times, clip=bool(mc.clip_denoised))
    return -vlb["total"]

  @jax.jit
  def eval_step(state, batch, key):
    params = state.eval_params()
    k_loss, k_vlb = jax.random.split(key)
    loss, metrics = diffusion_loss(functools.partial(predict, params), to_signed(batch["image"], levels),
                                   k_loss, diff.alpha_bars(), diff.prediction)
    out = {"loss": loss, **metrics}
    if int(mc.eval_vlb_steps) > 0:
      nll = -neg_vlb(params, batch["image"], k_vlb, int(mc.eval_vlb_steps))
      out["bits_per_dim"] = jnp.mean(bits_per_dim(nll, info.dims))
    return out

  def sample_signed(state, key, n, steps=None, eta=None, **kw):
    return ddim_sample(predict, state.eval_params(), key, diff.alpha_bars(), shape=(n,) + shape,
                       steps=int(mc.sampler_steps if steps is None else steps),
                       eta=float(mc.sampler_eta if eta is None else eta), prediction=diff.prediction,
                       clip=bool(mc.clip_denoised), **kw)

  def sample(state, key, n):
    return from_signed(sample_signed(state, key, int(n)), levels)  # [n, H, W, C] int32 levels

  neg_vlb_jit = jax.jit(neg_vlb, static_argnums=3)

  def log_prob(state, batch, key):
    return neg_vlb_jit(state.eval_params(), batch["image"], key, int(mc.vlb_steps))  # [B] nats

  def write_artifacts(state, data, workdir, key):
    from gdl_jax.evaluation.grids import save_grid
    k_ddim, k_ddpm, k_traj = jax.random.split(key, 3)
    n = int(config.num_samples)
    save_grid(np.asarray(sample(state, k_ddim, n)), os.path.join(workdir, "samples_ddim.png"),
              levels=levels)
    if bool(mc.ddpm_artifacts):
      x = ddpm_sample(predict, state.eval_params(), k_ddpm, diff.alpha_bars(), shape=(n,) + shape,
                      prediction=diff.prediction, clip=bool(mc.clip_denoised))
      save_grid(np.asarray(from_signed(x, levels)), os.path.join(workdir, "samples_ddpm.png"),
                levels=levels)
    rows = min(8, n)
    _, traj, x0s = sample_signed(state, k_traj, rows, return_trajectory=True)  # [S+1, rows, H, W, C]
    x0s = jnp.concatenate([x0s, traj[-1:]], axis=0)  # x0_hat after each step; the last is x_0
    cols = np.linspace(0, traj.shape[0] - 1, int(mc.trajectory_columns)).round().astype(int)
    for name, frames in (("trajectory.png", traj), ("trajectory_x0.png", x0s)):
      grid = np.asarray(jnp.swapaxes(frames[cols], 0, 1)).reshape((-1,) + shape)  # row = one sample
      save_grid(from_signed(np.clip(grid, -1.0, 1.0), levels), os.path.join(workdir, name),
                nrow=len(cols), levels=levels)

  return Task(init=init, step=step, eval_step=eval_step, sample=sample, log_prob=log_prob,
              write_artifacts=write_artifacts)
