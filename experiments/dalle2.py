"""Chapter 13: DALL-E 2's two stages (unCLIP, Ramesh et al. 2022) at toy scale, on a frozen CLIP.

Run:  gdl-jax train clip --dataset digits_captions --workdir runs/clip_digits
      gdl-jax train dalle2 --dataset digits_captions --config.clip_run=runs/clip_digits \\
          --workdir runs/dalle2_digits
      gdl-jax sample runs/dalle2_digits --prompt "a seven" --num 16 --guidance 3
      gdl-jax evaluate runs/dalle2_digits  (class accuracy, FD, novelty per decoder guidance scale;
                                            the prior's cosine similarity vs the no-prior baseline)
The CLIP is an already trained `clip` run (config.clip_run; its dataset must be this run's, so the
vocabularies agree), frozen: its embeddings are computed per batch and never trained. Two stages
(gdl_jax/models/dalle2.py), trained in the same steps on disjoint parameters (the loss is the sum
of two independent losses, so each stage sees only its own gradient):
  prior    CLIP text embedding -> CLIP image embedding: a diffusion model on the embedding vector
           (scaled by sqrt(E) to unit variance per component, as in the reference implementations),
           a residual MLP predicting the clean embedding x0, cosine schedule; the caption's
           embedding dropped (a learned null vector) with probability prior.p_uncond
  decoder  CLIP image embedding -> image: the project's U-Net, the embedding projected to
           model.num_tokens cross-attention tokens (their mean joins the time embedding), v-
           prediction, cosine schedule; the embedding dropped with probability model.p_uncond
Each step shows each image with one of its 4 training captions (the prior's text side).

Sampling a prompt: CLIP text encoder -> prior (DDIM prior.sampler_steps, guidance prior.guidance,
result re-normalised to the unit sphere) -> decoder (DDIM model.sampler_steps, guidance `guidance`,
default model.guidance). Task.sample / sample_labeled use the class prompts "a photo of a {class}";
variations (write_artifacts: variations.png): a test image -> its CLIP image embedding -> decoder
samples from fresh noise. Task.metrics: text_to_image's guidance sweep (class accuracy of class-
prompt samples by the dataset classifier, classifier FD, novelty, attribute control), and for the
prior: the mean cosine similarity of prior samples (from each of `prior_n` test images' held-out
caption) to that image's true CLIP embedding (prior_cosine, at prior.guidance), against the
unconditional prior (guidance 0), the paper's no-prior baseline (image embedding := text
embedding), the chance level (another test image's embedding), and the no-prior baseline's class
accuracy through the decoder at model.guidance.

clip_random=True (the tiny variant only, for tests and `--check`): an untrained, randomly initialised
CLIP instead of a run; its embeddings carry little about the caption.
Variants: default (accelerator-sized), small (CPU), tiny (tests); `--dataset digits_captions` picks
a 16-32 U-Net preset.
MEASURED (digits_captions, on a digits CLIP of 800 steps (zero-shot 96.4%); `--variant small --steps
600`, batch 64, 1829 s wall niced on 2 shared CPU cores at load ~8; `gdl-jax evaluate RUN
--num_samples 200`, 200 samples per scale): prior samples' mean cosine to the true test image
embedding 0.741 vs 0.541 for the no-prior baseline (text embedding as image embedding), 0.033
chance; class accuracy of class-prompt samples at decoder guidance 0 / 1 / 2 / 3 / 5: 9.5 / 100 /
100 / 100 / 100% (no prior, guidance 3: 96.5%); FD 22.2 / 6.79 / 9.80 / 11.4 / 13.3; novelty
1.44 / 0.98 / 0.95 / 1.02 / 1.12; thin < thick ink in 100% of 100 same-noise pairs.
Fashion-MNIST: not run on the CPU.
"""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import ddpm_digits
from experiments._common import base_config, shrink
from gdl_jax.configs import (FRACTION, NON_NEGATIVE, POSITIVE_INT, ConfigError, Needs, OneOf, Range,
                             RunDir)
from gdl_jax.data import captions
from gdl_jax.data.info import DatasetInfo, from_signed, to_signed
from gdl_jax.models.clip import CLIP
from gdl_jax.models.dalle2 import DiffusionPrior, EmbeddingDecoder
from gdl_jax.models.diffusion import ConditionalPredictor, DiffusionModel
from gdl_jax.objectives.diffusion import SCHEDULES, Diffusion, NoiseSchedule, diffusion_loss
from gdl_jax.optim import make_optimizer
from gdl_jax.samplers.diffusion import ddim_sample, guided
from gdl_jax.train.state import TrainState
from gdl_jax.train.step import make_train_step
from gdl_jax.train.task import Task

TEST_DATASET = "digits_captions"  # tests/test_cli_fuzz.py: a small captioned dataset
NEEDS = Needs("image", levels=True, labels=True,
              hint="DALL-E 2 needs captions: use fashion_mnist_captions or digits_captions")
RULES = {**ddpm_digits.RULES, "clip_run": RunDir("clip"),
         "model.num_tokens": POSITIVE_INT, "model.token_dim": POSITIVE_INT,
         "model.p_uncond": FRACTION, "model.guidance": NON_NEGATIVE,
         "prior.hidden": POSITIVE_INT, "prior.depth": POSITIVE_INT,
         "prior.schedule": OneOf(SCHEDULES), "prior.num_timesteps": Range(2, integer=True),
         "prior.sampler_steps": POSITIVE_INT, "prior.sampler_eta": NON_NEGATIVE,
         "prior.p_uncond": FRACTION, "prior.guidance": NON_NEGATIVE, "prior.ema_decay": FRACTION,
         "sweep_scales": NON_NEGATIVE, "sweep_n": POSITIVE_INT, "attribute_pairs": POSITIVE_INT,
         "prior_n": POSITIVE_INT}


def _no_clip_message(dataset: str) -> str:
  return (f"dalle2 builds on a trained, frozen CLIP: pass --config.clip_run=RUNDIR, the --workdir of "
          f"`gdl-jax train clip --dataset {dataset} --workdir runs/clip_{dataset.replace('_captions', '')}`.")


def check(config, info: DatasetInfo) -> None:
  if not info.vocab or tuple(info.vocab[:3]) != captions.SPECIALS:
    raise ConfigError(f"dalle2 needs a captioned dataset; {info.name!r} has no captions. Pass "
                      "--dataset fashion_mnist_captions or --dataset digits_captions.")
  run = str(config.clip_run)
  if not run and not bool(config.clip_random):
    raise ConfigError(_no_clip_message(info.name))
  if run:
    cfg = _clip_run_config(run)
    if cfg.get("dataset") != info.name:
      raise ConfigError(f"config clip_run={run!r} is a CLIP trained on {cfg.get('dataset')!r}, not on "
                        f"{info.name!r} (its vocabulary differs); {_no_clip_message(info.name)}")
  ddpm_digits.check_unet(config.model)
  pc = config.prior
  if int(pc.sampler_steps) > int(pc.num_timesteps):
    raise ConfigError(f"config prior.sampler_steps={pc.sampler_steps} must be in 1..prior.num_timesteps="
                      f"{pc.num_timesteps}; pass --config.prior.sampler_steps={pc.num_timesteps}.")


def _clip_run_config(run: str) -> dict:
  try:
    with open(os.path.join(run, "config.json")) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigError(f"config clip_run={run!r} has no readable config.json ({type(e).__name__}); "
                      "pass the --workdir of a finished `gdl-jax train clip` run.") from None


def prior_config(**kw) -> ml_collections.ConfigDict:
  p = ml_collections.ConfigDict(dict(hidden=256, depth=3, schedule="cosine", num_timesteps=1000,
                                     sampler_steps=64, sampler_eta=1.0, p_uncond=0.1, guidance=1.0,
                                     ema_decay=0.995))
  p.update(kw)
  return p


def get_config(variant: str = "default", dataset: str = "fashion_mnist_captions") -> ml_collections.ConfigDict:
  c = base_config(dataset, steps=20000, batch_size=128, lr=2e-4, schedule="cosine", warmup_steps=1000,
                  final_lr_frac=0.1, clip_norm=1.0)
  c.clip_run = ""
  c.clip_random = False
  c.eval_batches = 4
  c.model = ddpm_digits.model_config(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=2,
                                     attention_levels=(2,), dropout=0.1, ema_decay=0.9995,
                                     ddpm_artifacts=False, vlb_chain_steps=0, eval_vlb_steps=0)
  c.model.update(num_tokens=4, token_dim=64, p_uncond=0.1, guidance=3.0)
  c.prior = prior_config()
  c.sweep_scales = (0.0, 1.0, 2.0, 3.0, 5.0)
  c.sweep_n = 500
  c.attribute_pairs = 10
  c.prior_n = 1000
  if dataset.startswith("digits"):
    c.steps, c.batch_size, c.optimizer.lr, c.optimizer.warmup_steps = 3000, 64, 1e-3, 200
    c.model.update(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,),
                   dropout=0.0, ema_decay=0.995, token_dim=32)
    c.prior.hidden = 128
    c.sweep_n, c.prior_n = 360, 359
  if variant == "small":  # CPU minutes: 16-32 channels, one block per level, fewer sampler steps
    c.steps, c.batch_size = 3000, 64
    c.log_every, c.eval_every, c.ckpt_every = 100, 1000, 500
    c.optimizer.update(lr=1e-3, warmup_steps=100)
    c.model.update(base_channels=16, num_res_blocks=1, dropout=0.0, ema_decay=0.995, token_dim=32,
                   sampler_steps=25)
    c.prior.update(hidden=128, sampler_steps=25)
    c.sweep_n = 200
  elif variant == "tiny":
    shrink(c, steps=4, batch_size=8)
    c.clip_random = True
    c.model.update(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,),
                   dropout=0.0, num_timesteps=50, sampler_steps=3, token_dim=8, num_tokens=2,
                   trajectory_columns=4)
    c.prior.update(hidden=16, depth=1, num_timesteps=50, sampler_steps=3)
    c.sweep_scales, c.sweep_n, c.attribute_pairs, c.prior_n = (0.0, 3.0), 20, 2, 16
  elif variant != "default":
    raise ValueError(f"unknown variant {variant!r}; use 'default', 'small' or 'tiny'.")
  return c


# ---------------------------------------------------------------------------------------------
# the frozen CLIP

def load_clip(config, info: DatasetInfo):
  """(CLIP module, its params) of config.clip_run (or, with clip_random and no run, a random init)."""
  from experiments import clip as clip_exp
  run = str(config.clip_run)
  if not run:
    if not bool(config.clip_random):
      raise ConfigError(_no_clip_message(info.name))
    cc = clip_exp.get_config("tiny", info.name)
    model = clip_exp.make_model(cc.model, info)
    imgs = jnp.zeros((1,) + tuple(info.shape), jnp.float32)
    params = model.init(jax.random.key(0), imgs, jnp.zeros((1, captions.MAX_LEN), jnp.int32))["params"]
    return model, params
  from gdl_jax.train import checkpoint as ckpt
  cc = ml_collections.ConfigDict(_clip_run_config(run))
  model = clip_exp.make_model(cc.model, info)
  task = clip_exp.build(cc, info)
  fake = {"image": jnp.zeros((2,) + tuple(info.shape), jnp.int32),
          "caption": jnp.zeros((2, 1, captions.MAX_LEN), jnp.int32), "label": jnp.zeros((2,), jnp.int32)}
  state_like = jax.eval_shape(task.init, jax.random.key(0), fake)
  directory = os.path.join(run, "checkpoints")
  if not ckpt.saved_steps(directory):
    raise ConfigError(f"config clip_run={run!r} has no checkpoint yet; {_no_clip_message(info.name)}")
  mngr = ckpt.manager(directory, keep=1, save_every=1, read_only=True)
  try:
    state = ckpt.restore(mngr, state_like)
  finally:
    mngr.close()
  return model, jax.tree.map(jnp.asarray, state.params)


# ---------------------------------------------------------------------------------------------

def build(config: ml_collections.ConfigDict, info: DatasetInfo) -> Task:
  if (problem := NEEDS.problem(info)):
    raise ConfigError(f"dalle2 {problem}")
  check(config, info)
  from experiments.clip import pick_caption
  from experiments.text_to_image import guidance_sweep, prompt_samplers
  mc, pc = config.model, config.prior
  levels, shape = int(info.levels), tuple(info.shape)
  tok = captions.tokenizer_for(info)
  scheme = info.base or info.name
  clip_model, clip_params = load_clip(config, info)
  embed_dim = int(clip_model.embed_dim)
  scale = math.sqrt(embed_dim)  # unit-norm embeddings -> ~unit variance per component

  def enc_img(images):
    return jax.lax.stop_gradient(clip_model.apply({"params": clip_params}, to_signed(images, levels),
                                                  method=CLIP.encode_image))

  def enc_txt(tokens):
    return jax.lax.stop_gradient(clip_model.apply({"params": clip_params}, tokens, method=CLIP.encode_text))

  enc_img_jit, enc_txt_jit = jax.jit(enc_img), jax.jit(enc_txt)

  prior = DiffusionPrior(embed_dim, hidden=int(pc.hidden), depth=int(pc.depth),
                         diffusion=Diffusion(NoiseSchedule(kind=pc.schedule), int(pc.num_timesteps), "x0"))
  base = DiffusionModel.from_config(mc, info.shape[-1])
  decoder = EmbeddingDecoder(net=base.net, num_tokens=int(mc.num_tokens), token_dim=int(mc.token_dim),
                             diffusion=base.diffusion)
  prior_ab, dec_ab = prior.diffusion.alpha_bars(), decoder.diffusion.alpha_bars()
  prior_guided, dec_guided = guided(ConditionalPredictor(prior)), guided(ConditionalPredictor(decoder))
  dec_cond = ConditionalPredictor(decoder)
  optimizer = make_optimizer(config.optimizer, int(config.steps))
  class_tokens = tok.encode_batch(captions.class_prompts(info))  # [K, L]

  def init(key, batch):
    k_p, k_d = jax.random.split(key)
    x = to_signed(batch["image"], levels)
    n = x.shape[0]
    e, t, use = jnp.zeros((n, embed_dim)), jnp.zeros((n,)), jnp.ones((n,), bool)
    params = {"prior": prior.init(k_p, e, t, e, use)["params"],
              "decoder": decoder.init(k_d, x, t, e, use)["params"]}
    return TrainState.create(params, optimizer, ema=True)

  def losses(params, batch, key, tokens, train: bool):
    """(prior loss, decoder loss, metrics) on one batch; conditions dropped only in training."""
    k_pd, k_dd, k_pu, k_du, k_drop = jax.random.split(key, 5)
    img = enc_img(batch["image"]) * scale  # [B, E]
    txt = enc_txt(tokens) * scale
    n = img.shape[0]
    use_p = jax.random.uniform(k_pu, (n,)) >= float(pc.p_uncond) if train else jnp.ones((n,), bool)
    use_d = jax.random.uniform(k_du, (n,)) >= float(mc.p_uncond) if train else jnp.ones((n,), bool)
    p_loss, p_m = diffusion_loss(lambda z, t: prior.apply({"params": params["prior"]}, z, t, txt, use_p),
                                 img, k_pd, prior_ab, "x0", clip_x0=False)
    d_loss, d_m = diffusion_loss(
        lambda x, t: decoder.apply({"params": params["decoder"]}, x, t, img, use_d, train=train,
                                   rngs={"dropout": k_drop}),
        to_signed(batch["image"], levels), k_dd, dec_ab, decoder.diffusion.prediction)
    return p_loss, d_loss, {"prior_loss": p_loss, "decoder_loss": d_loss, "decoder_mse_x0": d_m["mse_x0"]}

  def loss_fn(params, extra, batch, key):
    k_cap, k = jax.random.split(key)
    p_loss, d_loss, metrics = losses(params, batch, k, pick_caption(batch, k_cap), True)
    return p_loss + d_loss, (extra, metrics)  # disjoint parameters: each stage gets its own gradient

  step = make_train_step(loss_fn, optimizer, ema_decay=float(mc.ema_decay))

  @jax.jit
  def eval_step(state, batch, key):
    p_loss, d_loss, metrics = losses(state.eval_params(), batch, key, batch["caption"][:, 0], False)
    return {"loss": p_loss + d_loss, **metrics}

  def prior_sample(state, key, txt_unit, guidance=None):
    """[n, E] unit text embeddings -> [n, E] unit image embeddings sampled from the prior."""
    g = float(pc.guidance if guidance is None else guidance)
    params = {"net": state.eval_params()["prior"], "cond": jnp.asarray(txt_unit) * scale,
              "scale": jnp.float32(g)}
    z = ddim_sample(prior_guided, params, key, prior_ab, shape=(txt_unit.shape[0], embed_dim),
                    steps=int(pc.sampler_steps), eta=float(pc.sampler_eta), prediction="x0", clip=False)
    return z / jnp.linalg.norm(z, axis=-1, keepdims=True)

  def decode(state, key, img_unit, guidance=None):
    """[n, E] unit image embeddings -> [n, H, W, C] integer levels."""
    g = float(mc.guidance if guidance is None else guidance)
    params = {"net": state.eval_params()["decoder"], "cond": jnp.asarray(img_unit) * scale,
              "scale": jnp.float32(g)}
    x = ddim_sample(dec_guided, params, key, dec_ab, shape=(img_unit.shape[0],) + shape,
                    steps=int(mc.sampler_steps), eta=float(mc.sampler_eta),
                    prediction=decoder.diffusion.prediction, clip=bool(mc.clip_denoised))
    return from_signed(x, levels)

  def sample_tokens(state, key, tokens, guidance=None):
    k_prior, k_dec = jax.random.split(key)
    emb = prior_sample(state, k_prior, enc_txt_jit(jnp.asarray(tokens)))
    return decode(state, k_dec, emb, guidance)

  sample_labeled, sample, sample_prompt = prompt_samplers(sample_tokens, class_tokens, tok,
                                                          int(info.num_classes))

  def metrics(state, dataset, key, *, use_features=True, use_samples=True):
    out = prior_metrics(state, dataset, jax.random.fold_in(key, 7))
    if not use_samples:
      return out
    out.update(guidance_sweep(sample_labeled, sample_prompt, state, dataset, key,
                              scales=tuple(float(s) for s in config.sweep_scales), n=int(config.sweep_n),
                              pairs=int(config.attribute_pairs), guidance=float(mc.guidance),
                              scheme=scheme, use_features=use_features))
    if use_features:  # the no-prior ablation through the decoder: class prompts' text embeddings
      from gdl_jax.evaluation.classifier import label_fn
      n = int(config.sweep_n)
      labels = np.arange(n) % int(info.num_classes)
      txt = enc_txt_jit(jnp.asarray(class_tokens[labels]))
      x = np.asarray(decode(state, jax.random.fold_in(key, 0), txt))
      out["no_prior_class_accuracy"] = float(np.mean(label_fn(dataset)(x) == labels))
    return out

  def prior_metrics(state, dataset, key):
    """Mean cosine similarity to the true CLIP image embedding of held-out test images: prior samples
    from each image's held-out-template caption vs the no-prior baseline vs chance."""
    n = min(int(config.prior_n), len(dataset.test["image"]))
    img = enc_img_jit(jnp.asarray(dataset.test["image"][:n]))
    txt = enc_txt_jit(jnp.asarray(dataset.test["caption"][:n, 0]))
    cos = lambda a, b: float(jnp.mean(jnp.sum(a * b, axis=-1)))
    out = {"prior_n": n, "prior_cosine": cos(prior_sample(state, key, txt), img),
           "prior_cosine_unconditional": cos(prior_sample(state, key, txt, 0.0), img),
           "prior_cosine_no_prior": cos(txt, img),
           "prior_cosine_chance": cos(jnp.roll(img, 1, axis=0), img)}
    return out

  def write_artifacts(state, data, workdir, key):
    from gdl_jax.evaluation.grids import save_grid
    k = int(info.num_classes)
    rows = [captions.prompt(scheme, y, choice=0) for y in range(k) for _ in range(8)]
    imgs = np.asarray(sample_prompt(state, key, rows))
    save_grid(imgs, os.path.join(workdir, "samples_prompts.png"), nrow=8, levels=levels)
    # variations: one test image per class, then 7 decodings of its CLIP image embedding
    test = data.test
    idx = [int(np.flatnonzero(test["label"] == y)[0]) for y in range(k) if np.any(test["label"] == y)]
    originals = np.asarray(test["image"][idx])
    emb = enc_img_jit(jnp.asarray(originals))
    var = np.asarray(decode(state, jax.random.fold_in(key, 1), jnp.repeat(emb, 7, axis=0)))
    grid = np.concatenate([originals[:, None], var.reshape((len(idx), 7) + shape).astype(originals.dtype)],
                          axis=1).reshape((-1,) + shape)
    save_grid(grid, os.path.join(workdir, "variations.png"), nrow=8, levels=levels)
    with open(os.path.join(workdir, "samples_prompts.txt"), "w") as f:
      f.write(f"samples_prompts.png: rows = classes 0..{k - 1}, 8 x 'a photo of a {{class}}' (prior "
              f"guidance {float(pc.guidance)}, decoder guidance {float(mc.guidance)}); variations.png: "
              "column 1 a test image, then 7 decoder samples from its CLIP image embedding\n")

  return Task(init=init, step=step, eval_step=eval_step, sample=sample, sample_labeled=sample_labeled,
              sample_prompt=sample_prompt, metrics=metrics, write_artifacts=write_artifacts)
