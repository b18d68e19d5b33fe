"""VQ-VAE with a GPT prior over its codes (two stages in one run), on 32x32 images.

Run:  gdl-jax train vqvae --dataset fashion_mnist --workdir runs/vqvae_fashion_mnist
      gdl-jax sample runs/vqvae_fashion_mnist          (two-stage: GPT codes, then the decoder)
      gdl-jax evaluate runs/vqvae_fashion_mnist        (bits/dim bound, classifier FD, novelty)
Datasets: fashion_mnist (28x28 padded to 32x32 inside the model with the background level, so
the harness and its classifier see the dataset's own 28x28 images), photo_crops (32x32 RGB),
digits (8x8, one stage: 4x4 codes). Variants: default, small (a CPU budget), tiny (tests).

Stage 1 (steps 0 .. vq_steps-1): the VQ-VAE (gdl_jax/models/vqvae.py) on per-pixel MSE in [-1, 1]
+ beta * commitment (0.25); the codebook follows EMAs of its clusters (decay 0.99) with dead-code
restarts, its statistics in TrainState.extra["vq"]. Stage 2 (the remaining steps): the project's
GPT (gdl_jax/models/gpt.py) learns p(codes) in raster order (8x8 = 64 tokens for 32x32 images)
on the codes of the frozen stage-1 model, computed per batch. The step reads state.step on the host
and runs that stage's own jitted step (config.dispatch="host", the default); dispatch="cond" puts
both stages in one program under lax.cond instead - the same numbers, but XLA:CPU runs
convolutions inside a conditional ~30-150x slower (measured: a 32x32 stage-1 step 12 s vs 0.4 s
on 2 loaded cores), as ProGAN's switch dispatch. Each stage has its own optimizer
(config.optimizer for stage 1 over vq_steps steps, config.prior_optimizer for stage 2), so resume is exact at any step.
Train metrics carry both stages' keys (the other stage's are 0) and `stage` (1 or 2).
VQ-GAN (config.gan, off by default; experiments/vqgan.py turns it on): gan.lpips_weight > 0 adds
LPIPS to the reconstruction loss, gan.weight > 0 a PatchGAN critic (TrainState params/opt_state
["disc"]) with Esser et al.'s adaptive weight from gan.disc_start on (see stage1_gan in build).

Sampling: codes from the GPT (KV-cached decoding, model.prior temperature/top-k/top-p), decoded,
rounded to levels. log_prob: log p(x | codes(x)) + log p_prior(codes(x)) in nats, a lower bound on
log p(x) = log sum_c p(c) p(x | c) (the decoder's mean with a learned per-channel logistic scale,
discretized to the dataset's levels; the scale is fitted beside the MSE on a stop-gradient mean,
so it does not change the reconstruction objective).

MEASURED (digits, `--variant small --steps 800 --config.vq_steps=500
--config.optimizer.warmup_steps=50 --config.prior_optimizer.warmup_steps=30`, 144 s on 2 shared
CPU cores): held-out recon. MSE 0.0457 per pixel in [-1, 1], 99% of the 64 codes used on the test
set (perplexity 51.7), prior 3.40 bits/token; `gdl-jax evaluate`: bound 2.807 bits/dim, FD 14.5,
novelty 1.36, no copies (the VAE: 1.788 / 8.04 / 1.16 after 2000 steps).
"""

from __future__ import annotations

import functools
import math
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments._common import base_config, shrink
from experiments.gpt_text import SAMPLING_RULES, make_model as make_gpt, sampling_config, sampling_kwargs
from gdl_jax.configs import (DECAY, FRACTION, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT,
                             ConfigError, Needs, OneOf, optimizer_rules)
from gdl_jax.models.gpt import POSITIONS
from gdl_jax.data.info import DatasetInfo, from_signed, to_signed
from gdl_jax.models.patchgan import PatchDiscriminator
from gdl_jax.models.vqvae import VQVAE, check_geometry
from gdl_jax.nn.vq import VQ_COLLECTION
from gdl_jax.objectives import vqgan as vqgan_losses
from gdl_jax.objectives.perceptual import lpips as lpips_fn
from gdl_jax.objectives.autoregressive import bits_per_dim, sequence_log_prob
from gdl_jax.optim import default_optimizer_config, make_optimizer
from gdl_jax.samplers.autoregressive import decode_cached
from gdl_jax.train.state import TrainState
from gdl_jax.train.step import tree_l2
from gdl_jax.train.task import Task

VARIANTS = ("default", "small", "tiny")
# The CLI's checks (gdl_jax.configs): single values here, the rest in `check` (= _check).
NEEDS = Needs("image", levels=True)
RULES = {"vq_steps": POSITIVE_INT, "dispatch": OneOf(("host", "cond")), "model.beta": NON_NEGATIVE, "model.decay": DECAY,
         "model.eps": POSITIVE, "model.dead_threshold": NON_NEGATIVE,
         "model.dead_after": NON_NEGATIVE_INT, "model.pad_to": NON_NEGATIVE_INT,
         "prior.dim": POSITIVE_INT, "prior.num_heads": POSITIVE_INT, "prior.mlp_ratio": POSITIVE_INT,
         "prior.positions": OneOf(POSITIONS), "prior.dropout": FRACTION,
         **{f"prior.{k.split('.', 1)[1]}": rule for k, rule in SAMPLING_RULES.items()},
         "gan.weight": NON_NEGATIVE, "gan.lpips_weight": NON_NEGATIVE,
         "gan.disc_start": NON_NEGATIVE_INT, "gan.loss": OneOf(vqgan_losses.GAN_LOSSES),
         "gan.disc_features": POSITIVE_INT,
         # the second and third optimizers get the common optimizer.* rules under their own names
         **optimizer_rules("prior_optimizer"), **optimizer_rules("gan.optimizer")}
# dataset -> (model overrides, steps, vq_steps) of the default variant
PRESETS = {
    "fashion_mnist": dict(image_channels=1, pad_to=32, features=(64, 128)),
    "photo_crops": dict(image_channels=3, pad_to=0, features=(64, 128)),
    "digits": dict(image_channels=1, pad_to=0, features=(64,), num_codes=64),
}


def model_config(**kw) -> ml_collections.ConfigDict:
  """VQ-VAE hyper-parameters (all keys present so CLI overrides type-check)."""
  m = ml_collections.ConfigDict(dict(
      image_channels=1, pad_to=0, features=(64, 128), res_blocks=2, res_hidden=64, num_codes=256,
      code_dim=32, beta=0.25, ema=True, decay=0.99, eps=1e-5, dead_after=100, dead_threshold=0.01))
  m.update(kw)
  return m


def prior_config(**kw) -> ml_collections.ConfigDict:
  """The GPT over the codes, and its sampler settings."""
  p = ml_collections.ConfigDict(dict(dim=128, num_heads=4, num_layers=4, mlp_ratio=4,
                                     positions="learned", dropout=0.1, **sampling_config()))
  p.update(kw)
  return p


def gan_config(**kw) -> ml_collections.ConfigDict:
  """The VQ-GAN terms of stage 1 (Esser et al. 2021); weight = lpips_weight = 0 is the plain VQ-VAE.

  weight        adversarial weight (times the adaptive lambda); > 0 adds the PatchGAN critic
  lpips_weight  LPIPS(VGG16) perceptual term on the reconstructions (needs >= 16x16 images)
  disc_start    the step from which the critic trains and its term reaches the generator
  loss          "hinge" (the VQ-GAN's) or "non_saturating"
  """
  g = ml_collections.ConfigDict(dict(
      weight=0.0, lpips_weight=0.0, disc_start=0, loss="hinge", disc_features=(64, 128),
      optimizer=default_optimizer_config(2e-4, b1=0.5, b2=0.9)))
  g.update(kw)
  return g


def get_config(variant: str = "default", dataset: str = "fashion_mnist") -> ml_collections.ConfigDict:
  if dataset not in PRESETS:
    raise ValueError(f"vqvae has no preset for dataset {dataset!r}; use one of {sorted(PRESETS)} "
                     "(32x32 images, or 8x8 digits).")
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; use one of {VARIANTS}.")
  c = base_config(dataset, steps=8000, batch_size=64, lr=2e-4, schedule="cosine",
                  warmup_steps=200, final_lr_frac=0.1)
  c.vq_steps = 4000
  c.dispatch = "host"   # "host": each stage its own jitted step; "cond": one program (slow on CPU)
  c.prior_optimizer = default_optimizer_config(1e-3, schedule="cosine", warmup_steps=200,
                                               final_lr_frac=0.05, clip_norm=1.0)
  c.model = model_config(**PRESETS[dataset])
  c.prior = prior_config()
  c.gan = gan_config()
  if variant == "small":
    c.steps, c.vq_steps = 3000, 1500
    c.log_every, c.eval_every, c.ckpt_every = 50, 500, 500
    c.optimizer.lr = 5e-4
    c.model.update(features=tuple([32, 64][:len(c.model.features)]), res_hidden=32,
                   num_codes=min(c.model.num_codes, 128), code_dim=16)
    c.prior.update(dim=96, num_layers=3)
    c.gan.disc_features = (32, 64)
  elif variant == "tiny":
    shrink(c, steps=4, batch_size=8)
    c.vq_steps = 2
    c.optimizer.warmup_steps = c.prior_optimizer.warmup_steps = 0
    c.model.update(features=tuple([4, 8][:len(c.model.features)]), res_blocks=1, res_hidden=4,
                   num_codes=8, code_dim=4, dead_after=1)
    c.prior.update(dim=16, num_heads=2, num_layers=1, dropout=0.0)
    c.gan.disc_features = (4, 8)
  return c


def make_model(mc, info: DatasetInfo) -> VQVAE:
  return VQVAE(image_shape=tuple(info.shape), levels=int(info.levels), pad_to=int(mc.pad_to),
               features=tuple(int(f) for f in mc.features), res_blocks=int(mc.res_blocks),
               res_hidden=int(mc.res_hidden), num_codes=int(mc.num_codes),
               code_dim=int(mc.code_dim), beta=float(mc.beta), ema=bool(mc.ema),
               decay=float(mc.decay), eps=float(mc.eps), dead_after=int(mc.dead_after),
               dead_threshold=float(mc.dead_threshold))


def check(config, info: DatasetInfo) -> None:
  """The CLI's hook (before anything is built): `_check` and the prior's heads, as ConfigErrors."""
  try:
    _check(config, info)
  except ConfigError:
    raise
  except ValueError as e:
    raise ConfigError(str(e)) from e
  pc = config.prior
  if int(pc.dim) % int(pc.num_heads):
    raise ConfigError(f"config prior.dim={pc.dim} must be a multiple of prior.num_heads="
                      f"{pc.num_heads}; pass --config.prior.num_heads=1 or a dim divisible by it.")


def _check(config, info: DatasetInfo) -> None:
  """Config against data, before anything is built; each error names the fix."""
  if info.kind != "image" or info.levels is None:
    raise ValueError(f"vqvae needs an image dataset with integer levels, got {info.name!r} "
                     f"(kind={info.kind!r}).")
  mc = config.model
  channels = int(info.shape[-1])
  if int(mc.image_channels) != channels:
    kind = {1: "grey", 3: "RGB"}
    raise ValueError(
        f"model.image_channels={mc.image_channels} ({kind.get(int(mc.image_channels), '?')} "
        f"config) but dataset {info.name!r} has {channels} channel(s) "
        f"({kind.get(channels, '?')}); train with `--dataset {info.name}` and no "
        f"image_channels override (its preset sets it), or --config.model.image_channels={channels}.")
  check_geometry(info.shape, int(mc.pad_to), len(mc.features))
  if not 0 < int(config.vq_steps) < int(config.steps):
    raise ValueError(f"vq_steps={config.vq_steps} must be in [1, steps={config.steps}): stage 1 "
                     "trains the VQ-VAE for vq_steps steps and the GPT prior for the rest; set "
                     f"--config.vq_steps (e.g. {max(int(config.steps) // 2, 1)}).")
  for name, opt, length in (("optimizer", config.optimizer, int(config.vq_steps)),
                            ("prior_optimizer", config.prior_optimizer,
                             int(config.steps) - int(config.vq_steps))):
    if int(opt.warmup_steps) >= length:
      raise ValueError(f"{name}.warmup_steps={opt.warmup_steps} is not shorter than its stage "
                       f"({length} steps), so the learning rate never reaches {name}.lr; set "
                       f"--config.{name}.warmup_steps to at most {max(length // 10, 0)}.")
  if not 0 <= float(mc.beta):
    raise ValueError(f"model.beta={mc.beta} (the commitment weight) must be >= 0; 0.25 is usual.")
  if "gan" in config:
    _check_gan(config, info)


def _check_gan(config, info: DatasetInfo) -> None:
  """The VQ-GAN keys (config.gan); each error names the fix."""
  g = config.gan
  for key in ("weight", "lpips_weight"):
    if not float(g[key]) >= 0:
      raise ConfigError(f"gan.{key}={g[key]} must be >= 0 (0 switches the term off); set "
                        f"--config.gan.{key}.")
  if float(g.lpips_weight) > 0 and min(int(info.shape[0]), int(info.shape[1])) < 16:
    raise ConfigError(f"gan.lpips_weight={g.lpips_weight}: LPIPS needs images of at least 16x16, "
                      f"dataset {info.name!r} has {info.shape[0]}x{info.shape[1]}; set "
                      "--config.gan.lpips_weight=0 or use a larger dataset (--dataset "
                      "fashion_mnist or photo_crops).")
  if float(g.weight) > 0:
    if g.loss not in vqgan_losses.GAN_LOSSES:
      raise ConfigError(f"gan.loss={g.loss!r} is not a GAN loss; use one of "
                        f"{vqgan_losses.GAN_LOSSES} (--config.gan.loss=hinge).")
    if not 0 <= int(g.disc_start) < int(config.vq_steps):
      raise ConfigError(f"gan.disc_start={g.disc_start} must be in [0, vq_steps={config.vq_steps}): "
                        "the critic only trains in stage 1; set --config.gan.disc_start (e.g. "
                        f"{int(config.vq_steps) // 2}).")
    if not g.disc_features or min(int(f) for f in g.disc_features) < 1:
      raise ConfigError(f"gan.disc_features={tuple(g.disc_features)} must be a non-empty tuple of "
                        "positive widths, one per stride-2 layer (e.g. (64, 128)).")


def build(config: ml_collections.ConfigDict, info: DatasetInfo) -> Task:
  """The two-stage VQ-VAE + GPT-prior Task."""
  _check(config, info)
  model = make_model(config.model, info)
  h, w = model.latent_shape
  length = h * w
  prior = make_gpt(config.prior, int(config.model.num_codes), length)
  vq_steps, steps = int(config.vq_steps), int(config.steps)
  opt_vq = make_optimizer(config.optimizer, vq_steps)
  opt_prior = make_optimizer(config.prior_optimizer, steps - vq_steps)
  sampling = sampling_kwargs(config.prior)
  dims, log2 = info.dims, math.log(2.0)
  g = config.get("gan") or gan_config()
  gan_weight, lpips_weight = float(g.weight), float(g.lpips_weight)
  disc = PatchDiscriminator(tuple(int(f) for f in g.disc_features)) if gan_weight > 0 else None
  opt_disc = make_optimizer(g.optimizer, vq_steps) if disc is not None else None
  disc_start, gan_loss = int(g.disc_start), str(g.loss)
  # The LPIPS weights enter the jitted step as an argument (closed over, XLA would fold 58 MB).
  lp = {}
  if lpips_weight > 0:
    from gdl_jax.objectives.perceptual import load_lpips_params
    lp = load_lpips_params()

  def last_layer(tree):  # the decoder's last layer's kernel (Esser et al.'s lambda is taken there)
    return tree["decoder"]["to_pixels"]["kernel"]

  def variables(state):
    return {"params": state.params["vqvae"], VQ_COLLECTION: state.extra[VQ_COLLECTION]}

  def init(key, batch):
    k_model, k_prior = jax.random.split(key)
    v = model.init({"params": k_model}, batch["image"])
    tokens = jnp.zeros((batch["image"].shape[0], length), jnp.int32)
    prior_params = prior.init(k_prior, tokens)["params"]
    params = {"vqvae": v["params"], "prior": prior_params}
    opt_state = {"vqvae": opt_vq.init(params["vqvae"]), "prior": opt_prior.init(prior_params)}
    if disc is not None:
      params["disc"] = disc.init(jax.random.fold_in(key, 2), to_signed(batch["image"],
                                                                        info.levels))["params"]
      opt_state["disc"] = opt_disc.init(params["disc"])
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                      extra={VQ_COLLECTION: v[VQ_COLLECTION]})

  def stage1(state, batch, key):
    image = batch["image"]
    target = to_signed(image, info.levels)

    def loss_fn(p):
      out, mutated = model.apply({"params": p, VQ_COLLECTION: state.extra[VQ_COLLECTION]}, image,
                                 update=True, rngs={VQ_COLLECTION: key}, mutable=[VQ_COLLECTION])
      mse = jnp.mean((out.recon - target) ** 2)
      # The likelihood's scale is fitted on a stop-gradient mean: only log_scale learns from it.
      nll = -jnp.mean(model.apply({"params": p}, image, jax.lax.stop_gradient(out.recon),
                                  method=model.log_likelihood))
      loss = mse + out.vq.loss
      metrics = dict(recon_mse=mse, recon_bpd=nll / (dims * log2), **out.vq.metrics)
      return loss + nll / dims, (loss, mutated[VQ_COLLECTION], metrics)

    grads, (loss, vq_state, metrics) = jax.grad(loss_fn, has_aux=True)(state.params["vqvae"])
    updates, opt = opt_vq.update(grads, state.opt_state["vqvae"], state.params["vqvae"])
    params = {**state.params, "vqvae": jax.tree.map(jnp.add, state.params["vqvae"], updates)}
    new = state.replace(step=state.step + 1, params=params,
                        opt_state={**state.opt_state, "vqvae": opt},
                        extra={**state.extra, VQ_COLLECTION: vq_state})
    return new, dict(loss=loss, stage=jnp.ones(()), **metrics, l2_grads=tree_l2(grads),
                     l2_updates=tree_l2(updates))

  def stage1_gan(state, batch, key, lp):
    """Stage 1 of the VQ-GAN: the VQ-VAE on MSE + lpips_weight * LPIPS + commitment
    + weight * lambda * adversarial (lambda: the adaptive weight, 0 before disc_start), then one
    critic update on the same batch (real images vs. the pre-update reconstructions).

    Written here rather than with gdl_jax/objectives/gan_step.py: that step's generator maps noise
    to images on the adversarial loss alone, while this generator is an autoencoder driven by a
    reconstruction loss, with a weight computed from its own gradients at the decoder's last layer.
    One forward pass of the VQ-VAE (jax.vjp) is pulled back twice: once with the reconstruction
    cotangent (plus the VQ loss's) and once with the adversarial one, so the two gradients are
    exact, lambda comes from their to_pixels kernels, and the update is g_rec + w lambda g_adv.
    (The VQ loss does not depend on the decoder, so it adds nothing to the last layer's gradient.)
    """
    image = batch["image"]
    target = to_signed(image, info.levels)
    p = state.params["vqvae"]
    on = (state.step >= disc_start).astype(jnp.float32)

    def forward(p):
      out, mutated = model.apply({"params": p, VQ_COLLECTION: state.extra[VQ_COLLECTION]}, image,
                                 update=True, rngs={VQ_COLLECTION: key}, mutable=[VQ_COLLECTION])
      return (out.recon, out.vq.loss), (mutated[VQ_COLLECTION], out.vq.metrics)

    (recon, vq_loss), pull, (vq_state, vq_metrics) = jax.vjp(forward, p, has_aux=True)

    def rec_loss(r):
      mse = jnp.mean((r - target) ** 2)
      perceptual = jnp.mean(lpips_fn(lp, r, target)) if lpips_weight > 0 else jnp.zeros(())
      return mse + lpips_weight * perceptual, (mse, perceptual)

    (rec, (mse, perceptual)), g_rec_r = jax.value_and_grad(rec_loss, has_aux=True)(recon)
    grads = pull((g_rec_r, jnp.ones_like(vq_loss)))[0]
    # The likelihood's scale is fitted on a stop-gradient mean: only log_scale learns from it.
    nll_fn = lambda p: -jnp.mean(model.apply({"params": p}, image, jax.lax.stop_gradient(recon),
                                             method=model.log_likelihood))
    nll, g_nll = jax.value_and_grad(nll_fn)(p)
    grads = jax.tree.map(lambda a, b: a + b / dims, grads, g_nll)
    loss = rec + vq_loss
    metrics = dict(recon_mse=mse, recon_bpd=nll / (dims * log2), lpips=perceptual, **vq_metrics)
    new_params, new_opt = dict(state.params), dict(state.opt_state)
    if disc is not None:
      dp = state.params["disc"]
      adv_fn = lambda r: vqgan_losses.gen_loss(disc.apply({"params": dp}, r), gan_loss)
      adv, g_adv_r = jax.value_and_grad(adv_fn)(recon)
      g_adv = pull((g_adv_r, jnp.zeros_like(vq_loss)))[0]
      lam = vqgan_losses.adaptive_weight(last_layer(grads), last_layer(g_adv))
      scale = gan_weight * on * lam
      grads = jax.tree.map(lambda a, b: a + scale * b, grads, g_adv)
      loss = loss + scale * adv

      def d_loss_fn(dp):
        real = disc.apply({"params": dp}, target)
        fake = disc.apply({"params": dp}, jax.lax.stop_gradient(recon))
        return vqgan_losses.disc_loss(real, fake, gan_loss), (jnp.mean(real), jnp.mean(fake))

      (d_loss, (d_real, d_fake)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(dp)
      d_updates, d_opt = opt_disc.update(d_grads, state.opt_state["disc"], dp)
      # Before disc_start the critic stays exactly where it is (params and optimizer state).
      keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(on > 0, a, b), new, old)
      new_params["disc"] = keep(jax.tree.map(jnp.add, dp, d_updates), dp)
      new_opt["disc"] = keep(d_opt, state.opt_state["disc"])
      metrics.update(gen_adv_loss=adv, adaptive_weight=lam, disc_loss=d_loss, disc_real=d_real,
                     disc_fake=d_fake, disc_on=on)
    updates, opt = opt_vq.update(grads, state.opt_state["vqvae"], p)
    new_params["vqvae"] = jax.tree.map(jnp.add, p, updates)
    new_opt["vqvae"] = opt
    new = state.replace(step=state.step + 1, params=new_params, opt_state=new_opt,
                        extra={**state.extra, VQ_COLLECTION: vq_state})
    return new, dict(loss=loss, stage=jnp.ones(()), **metrics, l2_grads=tree_l2(grads),
                     l2_updates=tree_l2(updates))

  def codes_of(state, image):
    return model.apply(variables(state), image, method=model.codes).reshape(image.shape[0], -1)

  def stage2(state, batch, key):
    tokens = jax.lax.stop_gradient(codes_of(state, batch["image"]))              # [B, T] frozen

    def loss_fn(p):
      logits = prior.apply({"params": p}, tokens, train=True, rngs={"dropout": key})
      return -jnp.mean(sequence_log_prob(logits, tokens)) / length

    loss, grads = jax.value_and_grad(loss_fn)(state.params["prior"])
    updates, opt = opt_prior.update(grads, state.opt_state["prior"], state.params["prior"])
    params = {**state.params, "prior": jax.tree.map(jnp.add, state.params["prior"], updates)}
    new = state.replace(step=state.step + 1, params=params,
                        opt_state={**state.opt_state, "prior": opt})
    return new, dict(loss=loss, stage=2 * jnp.ones(()), prior_bits_per_token=loss / log2,
                     l2_grads=tree_l2(grads), l2_updates=tree_l2(updates))

  if gan_weight > 0 or lpips_weight > 0:
    first = stage1_gan
  else:
    first = lambda state, batch, key, lp: stage1(state, batch, key)
  second = lambda state, batch, key, lp: stage2(state, batch, key)

  def prepared(f):  # the step folded into the key; every metric of both stages (the other's as 0)
    def run(state, batch, key, lp):
      key = jax.random.fold_in(key, state.step)
      shapes = [jax.eval_shape(g, state, batch, key, lp)[1] for g in (first, second)]
      names = sorted(set(shapes[0]) | set(shapes[1]))
      new, m = f(state, batch, key, lp)
      return new, {k: jnp.asarray(m.get(k, 0.0), jnp.float32) for k in names}
    return run

  if str(config.get("dispatch", "host")) == "cond":
    def cond_step(state, batch, key, lp):
      return jax.lax.cond(state.step < vq_steps, prepared(first), prepared(second),
                          state, batch, key, lp)
    jitted_cond = jax.jit(cond_step, donate_argnums=0)

    def step(state, batch, key):
      """One training step (stage 1 or 2 by state.step, under lax.cond in one program)."""
      return jitted_cond(state, batch, key, lp)
  else:
    stage_steps = [jax.jit(prepared(f), donate_argnums=0) for f in (first, second)]

    def step(state, batch, key):
      """One training step: the stage is read from state.step on the host, then that stage's own
      jitted, donating step runs (the LPIPS weights ride along as an argument). Pure in
      (state, batch, key); the same numbers as dispatch="cond"."""
      return stage_steps[int(jax.device_get(state.step)) >= vq_steps](state, batch, key, lp)

  def heldout(state, image):
    """Per-example pieces of the held-out metrics."""
    out = model.apply(variables(state), image)
    target = to_signed(image, info.levels)
    mse = jnp.mean((out.recon - target) ** 2, axis=(1, 2, 3))                   # [B]
    recon_lp = model.apply(variables(state), image, out.recon, method=model.log_likelihood)
    tokens = out.vq.indices.reshape(image.shape[0], -1)
    prior_lp = sequence_log_prob(prior.apply({"params": state.params["prior"]}, tokens), tokens)
    return out, mse, recon_lp, prior_lp

  # Held-out LPIPS of the reconstructions (VQ-VAE vs VQ-GAN) wherever the weights are installed.
  eval_lp = lp
  if not eval_lp and min(int(info.shape[0]), int(info.shape[1])) >= 16:
    from gdl_jax.nn import vgg
    if vgg.available():
      from gdl_jax.objectives.perceptual import load_lpips_params
      eval_lp = load_lpips_params()

  @jax.jit
  def jitted_eval(state, batch, lp):
    out, mse, recon_lp, prior_lp = heldout(state, batch["image"])
    metrics = dict(recon_mse=jnp.mean(mse), recon_bpd=-jnp.mean(recon_lp) / (dims * log2),
                   prior_bits_per_token=-jnp.mean(prior_lp) / (length * log2),
                   bound_bits_per_dim=-jnp.mean(recon_lp + prior_lp) / (dims * log2),
                   commitment_loss=out.vq.metrics["commitment_loss"],
                   perplexity=out.vq.metrics["perplexity"], usage=out.vq.metrics["usage"])
    if lp:
      target = to_signed(batch["image"], info.levels)
      metrics["recon_lpips"] = jnp.mean(lpips_fn(lp, out.recon, target))
    return metrics

  def eval_step(state, batch, key):
    """Held-out metrics of one batch (+ recon_lpips with the perceptual extra, images >= 16x16)."""
    return jitted_eval(state, batch, eval_lp)

  @jax.jit
  def log_prob(state, batch, key):
    _, _, recon_lp, prior_lp = heldout(state, batch["image"])
    return recon_lp + prior_lp                                                    # [B] nats

  @functools.partial(jax.jit, static_argnums=2)
  def _sample(state, key, n):
    params = state.params["prior"]
    step_fn = lambda cache, x, i: prior.apply({"params": params}, cache, x, i, method="decode")
    prompt = jnp.full((n, 1), prior.bos, jnp.int32)
    tokens = decode_cached(step_fn, prior.init_cache(n), key, prompt, length, **sampling)[:, 1:]
    recon = model.apply(variables(state), tokens.reshape(n, h, w), method=model.decode_codes)
    return from_signed(recon, info.levels)                                        # [n, H, W, C]

  def sample(state, key, n):
    """Two-stage sampling: GPT codes [n, h, w], then the decoder -> integer levels [n, H, W, C]."""
    return _sample(state, key, int(n))

  def write_artifacts(state, data, workdir, key):
    from gdl_jax.evaluation.grids import save_grid
    originals = data.test["image"][:16]
    recon = jax.jit(lambda s, x: from_signed(model.apply(variables(s), x).recon, info.levels))(
        state, originals)
    save_grid(np.concatenate([originals, np.asarray(recon)]),
              os.path.join(workdir, "reconstructions.png"), nrow=len(originals), levels=info.levels)

  return Task(init=init, step=step, eval_step=eval_step, sample=sample, log_prob=log_prob,
              write_artifacts=write_artifacts)


if __name__ == "__main__":
  from gdl_jax.cli import main
  sys.exit(main(["train", "vqvae", *sys.argv[1:]]))
