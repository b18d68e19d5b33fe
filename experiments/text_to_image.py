"""Chapter 13: text-to-image diffusion, Imagen's recipe at toy scale, on captioned images.

Run:  gdl-jax train text_to_image --dataset fashion_mnist_captions --workdir runs/t2i_fashion_mnist
      gdl-jax sample runs/t2i_fashion_mnist --prompt "a dark ankle boot" --num 16 --guidance 3
      gdl-jax evaluate runs/t2i_fashion_mnist      (FD, novelty, class accuracy of class prompts,
                                                     and the guidance sweep + attribute control)
The project's U-Net (gdl_jax/nn/unet.py) with cross-attention to a Transformer text encoder's
token features at its attention levels and the bottleneck (padding masked, a learned null token),
the pooled caption added to the time embedding; text encoder and U-Net trained together on the
diffusion loss (v-prediction, cosine schedule, as experiments/ddpm_digits.py). Each step shows
each image with one of its 4 captions, and drops the caption (every token masked) with
probability `p_uncond` = 0.1, so the same network is also the unconditional model that
classifier-free guidance needs (gdl_jax.samplers.diffusion.guided).

Task.sample / sample_labeled: DDIM (model.sampler_steps, eta) from the class prompt "a photo of a
{class}" (classes in turn) at guidance `model.guidance`; sample_prompt: any prompt of the
captions' vocabulary (other words: one clear error naming them). Task.metrics (`gdl-jax
evaluate`): for each scale in `sweep_scales`, `sweep_n` samples of class prompts -> the dataset
classifier's accuracy on the asked class, classifier FD to test images, novelty ratio; and
attribute control: for each class, `attribute_pairs` pairs of "a photo of a {low} {class}" /
"a photo of a {high} {class}" (dark/light, thin/thick) from the same noise -> the share of pairs
whose mean intensities are ordered as asked.

Variants: default (accelerator-sized), small (CPU), tiny (tests); `--dataset digits_captions` picks
a 16-32 U-Net preset.
MEASURED (digits_captions, 600 steps at batch 64, 1035 s wall niced on 2 CPU cores at load ~16;
`gdl-jax evaluate RUN --num_samples 200 --config.attribute_pairs=20`, DDIM-25, 200 samples per
scale): class accuracy of class-prompt samples at guidance 0 / 1 / 2 / 3 / 5: 10.5 / 97.5 / 100 /
100 / 100%; FD 19.1 / 5.88 / 6.83 / 9.23 / 11.7; novelty 1.42 / 1.11 / 1.00 / 1.03 / 1.16;
thin < thick mean intensity in 100% of 200 same-noise pairs. Fashion-MNIST: not run on the CPU.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import ddpm_digits
from experiments._common import base_config, shrink
from gdl_jax.configs import FRACTION, NON_NEGATIVE, POSITIVE_INT, ConfigError, Needs
from gdl_jax.data import captions
from gdl_jax.data.info import DatasetInfo, from_signed, to_signed
from gdl_jax.models.diffusion import TextToImageModel
from gdl_jax.objectives.diffusion import diffusion_loss
from gdl_jax.optim import make_optimizer
from gdl_jax.samplers.diffusion import ddim_sample, guided
from gdl_jax.train.state import TrainState
from gdl_jax.train.step import make_train_step
from gdl_jax.train.task import Task

TEST_DATASET = "digits_captions"  # tests/test_cli_fuzz.py: a small captioned dataset
NEEDS = Needs("image", levels=True, labels=True,
              hint="text-to-image needs captions: use fashion_mnist_captions or digits_captions")
RULES = {**ddpm_digits.RULES, "model.text_dim": POSITIVE_INT, "model.text_depth": POSITIVE_INT,
         "model.text_heads": POSITIVE_INT, "model.p_uncond": FRACTION, "model.guidance": NON_NEGATIVE,
         "sweep_scales": NON_NEGATIVE, "sweep_n": POSITIVE_INT, "attribute_pairs": POSITIVE_INT}


def check(config, info: DatasetInfo) -> None:
  if not info.vocab or tuple(info.vocab[:3]) != captions.SPECIALS:
    raise ConfigError(f"text_to_image needs a captioned dataset; {info.name!r} has no captions. Pass "
                      "--dataset fashion_mnist_captions or --dataset digits_captions.")
  mc = config.model
  if int(mc.text_dim) % int(mc.text_heads):
    raise ConfigError(f"config model.text_heads={mc.text_heads} must divide model.text_dim={mc.text_dim}.")
  ddpm_digits.check(config, info)


def get_config(variant: str = "default", dataset: str = "fashion_mnist_captions") -> ml_collections.ConfigDict:
  c = base_config(dataset, steps=20000, batch_size=128, lr=2e-4, schedule="cosine", warmup_steps=1000,
                  final_lr_frac=0.1, clip_norm=1.0)
  c.eval_batches = 4
  c.model = ddpm_digits.model_config(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=2,
                                     attention_levels=(2,), dropout=0.1, ema_decay=0.9995,
                                     ddpm_artifacts=False, vlb_chain_steps=0, eval_vlb_steps=0)
  c.model.update(text_dim=64, text_depth=2, text_heads=4, p_uncond=0.1, guidance=3.0)
  c.sweep_scales = (0.0, 1.0, 2.0, 3.0, 5.0)
  c.sweep_n = 500
  c.attribute_pairs = 10
  if dataset.startswith("digits"):
    c.steps, c.batch_size, c.optimizer.lr, c.optimizer.warmup_steps = 3000, 64, 1e-3, 200
    c.model.update(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,),
                   dropout=0.0, ema_decay=0.995, text_dim=32, text_depth=1, text_heads=2)
    c.sweep_n = 360
  if variant == "small":  # CPU minutes: 16-32-32 channels, one block per level, fewer sampler steps
    c.steps, c.batch_size = 3000, 64
    c.log_every, c.eval_every, c.ckpt_every = 100, 1000, 500
    c.optimizer.update(lr=1e-3, warmup_steps=100)
    c.model.update(base_channels=16, num_res_blocks=1, dropout=0.0, ema_decay=0.995, text_dim=32,
                   text_depth=1, text_heads=2, sampler_steps=25)
    c.sweep_n = 200
  elif variant == "tiny":
    shrink(c, steps=4, batch_size=8)
    c.model.update(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,),
                   dropout=0.0, num_timesteps=50, sampler_steps=3, text_dim=8, text_depth=1,
                   text_heads=2, trajectory_columns=4)
    c.sweep_scales, c.sweep_n, c.attribute_pairs = (0.0, 3.0), 20, 2
  elif variant != "default":
    raise ValueError(f"unknown variant {variant!r}; use 'default', 'small' or 'tiny'.")
  return c


def build(config: ml_collections.ConfigDict, info: DatasetInfo) -> Task:
  if (problem := NEEDS.problem(info)):
    raise ConfigError(f"text_to_image {problem}")
  check(config, info)
  from experiments.clip import pick_caption
  mc = config.model
  tok = captions.tokenizer_for(info)
  scheme = info.base or info.name
  model = TextToImageModel.from_config(mc, info.shape[-1], len(tok.vocab), tok.max_len)
  diff = model.diffusion
  cond_predict = model.predictor()
  predict = guided(cond_predict)
  optimizer = make_optimizer(config.optimizer, int(config.steps))
  levels, shape = int(info.levels), tuple(info.shape)
  class_tokens = tok.encode_batch(captions.class_prompts(info))  # [K, L]

  def init(key, batch):
    x = to_signed(batch["image"], levels)
    n = x.shape[0]
    params = model.init(key, x, jnp.zeros((n,), jnp.float32), pick_caption(batch, key),
                        jnp.ones((n,), bool))["params"]
    return TrainState.create(params, optimizer, ema=True)

  def loss_fn(params, extra, batch, key):
    k_diff, k_drop, k_cap, k_use = jax.random.split(key, 4)
    tokens = pick_caption(batch, k_cap)
    use = jax.random.uniform(k_use, (tokens.shape[0],)) >= float(mc.p_uncond)  # caption dropped: False
    denoise = lambda x, t: model.apply({"params": params}, x, t, tokens, use, train=True,
                                       rngs={"dropout": k_drop})
    loss, metrics = diffusion_loss(denoise, to_signed(batch["image"], levels), k_diff,
                                   diff.alpha_bars(), diff.prediction)
    return loss, (extra, metrics)

  step = make_train_step(loss_fn, optimizer, ema_decay=float(mc.ema_decay))

  @jax.jit
  def eval_step(state, batch, key):
    tokens = batch["caption"][:, 0]  # held-out-template captions
    use = jnp.ones((tokens.shape[0],), bool)
    denoise = lambda x, t: cond_predict(state.eval_params(), x, t, tokens, use)
    loss, metrics = diffusion_loss(denoise, to_signed(batch["image"], levels), key, diff.alpha_bars(),
                                   diff.prediction)
    return {"loss": loss, **metrics}

  def sample_tokens(state, key, tokens, guidance=None, steps=None):
    """[n, L] caption ids -> [n, H, W, C] integer levels."""
    tokens = jnp.asarray(tokens)
    scale = float(mc.guidance if guidance is None else guidance)
    params = {"net": state.eval_params(), "cond": tokens, "scale": jnp.float32(scale)}
    x = ddim_sample(predict, params, key, diff.alpha_bars(), shape=(tokens.shape[0],) + shape,
                    steps=int(mc.sampler_steps if steps is None else steps), eta=float(mc.sampler_eta),
                    prediction=diff.prediction, clip=bool(mc.clip_denoised))
    return from_signed(x, levels)

  sample_labeled, sample, sample_prompt = prompt_samplers(sample_tokens, class_tokens, tok,
                                                          int(info.num_classes))

  def metrics(state, dataset, key, *, use_features=True, use_samples=True):
    if not use_samples:
      return {}
    return guidance_sweep(sample_labeled, sample_prompt, state, dataset, key,
                          scales=tuple(float(s) for s in config.sweep_scales), n=int(config.sweep_n),
                          pairs=int(config.attribute_pairs), guidance=float(mc.guidance), scheme=scheme,
                          use_features=use_features)

  def write_artifacts(state, data, workdir, key):
    from gdl_jax.evaluation.grids import save_grid
    k = int(info.num_classes)
    rows = []  # one row per class: unguided, then guided, then the low/high attribute prompts
    low, high = list(captions.attribute_words(scheme).values())[0]
    for y in range(k):
      rows += [captions.prompt(scheme, y, choice=0)] * 4
      rows += [captions.prompt(scheme, y, {list(captions.attribute_words(scheme))[0]: -1})] * 2
      rows += [captions.prompt(scheme, y, {list(captions.attribute_words(scheme))[0]: 1})] * 2
    imgs = np.asarray(sample_prompt(state, key, rows))
    save_grid(imgs, os.path.join(workdir, "samples_prompts.png"), nrow=8, levels=levels)
    with open(os.path.join(workdir, "samples_prompts.txt"), "w") as f:
      f.write(f"rows = classes 0..{k - 1}; columns: 4 x class prompt, 2 x '{low}', 2 x '{high}' "
              f"(guidance {float(mc.guidance)})\n" + "\n".join(dict.fromkeys(rows)) + "\n")

  return Task(init=init, step=step, eval_step=eval_step, sample=sample, sample_labeled=sample_labeled,
              sample_prompt=sample_prompt, metrics=metrics, write_artifacts=write_artifacts)


def prompt_samplers(sample_tokens, class_tokens, tok, num_classes: int):
  """From `sample_tokens(state, key, tokens [n, L], guidance=None)`: Task.sample_labeled (the class
  prompts' tokens), Task.sample (classes 0, 1, ... in turn) and Task.sample_prompt (free text)."""

  def sample_labeled(state, key, labels, guidance=None):
    return sample_tokens(state, key, class_tokens[np.asarray(labels)], guidance)

  def sample(state, key, n):
    return sample_labeled(state, key, np.arange(int(n)) % num_classes)

  def sample_prompt(state, key, prompts, guidance=None):
    return sample_tokens(state, key, tok.encode_batch(list(prompts)), guidance)

  return sample_labeled, sample, sample_prompt


def guidance_sweep(sample_labeled, sample_prompt, state, dataset, key, *, scales, n: int, pairs: int,
                   guidance: float, scheme: str, use_features: bool = True) -> dict:
  """Per guidance scale: class accuracy of class-prompt samples, classifier FD to test, novelty;
  and the attribute-control share at `guidance` (see the module docstring). use_features=False:
  novelty and attribute control only (no classifier is trained or read)."""
  from gdl_jax.evaluation import metrics as M
  from gdl_jax.evaluation.classifier import feature_fn, label_fn
  info = dataset.info
  levels = int(info.levels)
  labels = np.arange(n) % int(info.num_classes)
  test = dataset.test["image"][:n]
  if use_features:
    feats, classify = feature_fn(dataset), label_fn(dataset)
    test_feats = feats(test)
  train = dataset.train["image"]
  test_nn = float(np.median(M.nearest_neighbours(test, train)[0]))  # rule 2's yardstick, once
  out = {}
  for s in scales:
    x = np.asarray(jax.device_get(sample_labeled(state, jax.random.fold_in(key, 0), labels, s)))
    tag = f"{s:g}"
    if use_features:
      out[f"guidance_{tag}_class_accuracy"] = float(np.mean(classify(x) == labels))
      out[f"guidance_{tag}_fd"] = float(M.frechet_distance(feats(x), test_feats))
    out[f"guidance_{tag}_novelty"] = float(np.median(M.nearest_neighbours(x, train)[0])) / test_nn
  if use_features:
    best = max(scales, key=lambda s: out[f"guidance_{s:g}_class_accuracy"])
    out["guidance_best"] = float(best)
    out["guidance_best_class_accuracy"] = out[f"guidance_{best:g}_class_accuracy"]
  # attribute control: low vs high attribute word, same class, same noise
  attr = list(captions.attribute_words(scheme))[0]
  k = int(info.num_classes)
  low = [captions.prompt(scheme, y, {attr: -1}) for y in range(k) for _ in range(pairs)]
  high = [captions.prompt(scheme, y, {attr: 1}) for y in range(k) for _ in range(pairs)]
  kk = jax.random.fold_in(key, 1)
  lo = np.asarray(jax.device_get(sample_prompt(state, kk, low, guidance)))
  hi = np.asarray(jax.device_get(sample_prompt(state, kk, high, guidance)))
  m_lo, m_hi = captions.mean_intensity(lo, levels), captions.mean_intensity(hi, levels)
  out["attribute"] = attr
  out["attribute_control"] = float(np.mean(m_lo < m_hi))
  out["attribute_mean_low"], out["attribute_mean_high"] = float(m_lo.mean()), float(m_hi.mean())
  return out
