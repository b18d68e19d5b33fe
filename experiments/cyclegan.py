"""CycleGAN (Zhu et al. 2017; the first edition's Chapter 5 "Paint") on two unpaired image domains.

Run:  gdl-jax train cyclegan --dataset fashion_sneaker_boot --variant small --workdir runs/cyclegan_fashion
      gdl-jax train cyclegan --dataset digits_inverted --variant small --workdir runs/cyclegan_digits
      gdl-jax train cyclegan --dataset photos_cat_coffee --workdir runs/cyclegan_photos
      gdl-jax evaluate runs/cyclegan_fashion
Datasets (gdl_jax.data.unpaired): fashion_sneaker_boot (sneaker <-> ankle boot), digits_inverted /
fashion_mnist_inverted / digits_transposed (a known map f, presented unpaired), photos_cat_coffee
(32x32 crops of two scikit-image photos), apple2orange (the book's, tfds, when prepared), and any
pair:<base>:<class A>:<class B> or map:<base>:<f>.
Variants: default, small (a CPU budget), tiny (tests).
Acceptance runs (issue 16; numbers, wall times and commands in README's Paint table):
      gdl-jax train cyclegan --dataset fashion_sneaker_boot --variant small --steps 2500 --workdir R1
      gdl-jax train cyclegan --dataset digits_inverted --variant small --steps 1500 --workdir R2
      gdl-jax evaluate R1; gdl-jax evaluate R2
  targets: target_accuracy_ab >= 0.85, cycle_mae < 0.05, fd_ab < fd_ab_untranslated (R1: 85.9%,
  0.048, 21.3 vs 113.6); mse_ab <= mse_identity_ab / 4 (R2: 0.170 / 0.179 of 0.717 for A->B / B->A).

Two generators G: A -> B and F: B -> A (model.generator: "resnet", c7s1-k / d2k / residual
blocks / u / c7s1 with instance norm, or "unet"; gdl_jax.models.cyclegan) and two PatchGAN critics
D_A, D_B (gdl_jax.models.patchgan), trained as ONE two-player Task by the shared step
(gdl_jax.objectives.gan_step.make_two_player_step): the generators minimise
  LSGAN(D_B(G(a))) + LSGAN(D_A(F(b))) + cycle_weight * (|F(G(a)) - a| + |G(F(b)) - b|)
  + identity_weight * (|G(b) - b| + |F(a) - a|)                      (10 and 5: the book's recipe;
                                                        0 for known maps, see get_config)
then the critics minimise the least-squares loss on real images vs the fakes passed through an
image history of model.pool_size (50) per domain, kept in state.extra["pool"] (so resume is
exact). Adam 2e-4, b1 0.5, constant for the first half and linearly to 0 over the second
(optimizer.decay_start_frac = 0.5); critics at optimizer.lr * model.disc_lr_mult.
Evaluation (`gdl-jax evaluate`, gdl_jax.evaluation.translation): cycle reconstruction MAE on [0, 1];
class pairs: the base dataset's classifier's share of translated held-out images labelled as the
target class, Fréchet distance of translations to the target domain vs the untranslated images';
known maps: MSE of G(a) to f(a) vs the identity map's. Artifacts: translations_ab.png /
translations_ba.png (rows: held-out a, G(a), F(G(a)); then b, F(b), G(F(b))).
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments._common import base_config, shrink
from gdl_jax.configs import NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, ConfigError, Needs, OneOf
from gdl_jax.data.info import DatasetInfo, from_signed, to_signed
from gdl_jax.data.unpaired import SHORTCUTS
from gdl_jax.models.cyclegan import GENERATORS, check_size, make_generator
from gdl_jax.models.patchgan import PatchDiscriminator
from gdl_jax.objectives import cyclegan as L
from gdl_jax.objectives.gan_step import make_two_player_step
from gdl_jax.optim import make_optimizer
from gdl_jax.train.state import TrainState
from gdl_jax.train.task import Task

NEEDS = Needs("unpaired", levels=True, hint="two image domains, e.g. fashion_sneaker_boot, digits_inverted, "
              "photos_cat_coffee, pair:<base>:<class A>:<class B> or map:<base>:<f>")
RULES = {
    "model.generator": OneOf(GENERATORS), "model.gen_features": POSITIVE_INT,
    "model.n_down": POSITIVE_INT, "model.n_blocks": NON_NEGATIVE_INT, "model.disc_features": POSITIVE_INT,
    "model.cycle_weight": NON_NEGATIVE, "model.identity_weight": NON_NEGATIVE,
    "model.pool_size": NON_NEGATIVE_INT, "model.disc_lr_mult": POSITIVE,
}
TEST_DATASET = "digits_inverted"


def get_config(variant: str = "default", dataset: str = "fashion_sneaker_boot") -> ml_collections.ConfigDict:
  c = base_config(dataset, steps=10000, batch_size=16, lr=2e-4, b1=0.5, b2=0.999,
                  schedule="linear", decay_start_frac=0.5)
  c.model = ml_collections.ConfigDict(dict(
      generator="resnet",       # "resnet" (c7s1-k, d2k, d4k, residual blocks, u2k, uk, c7s1) or "unet"
      gen_features=32,          # k: the first conv's features, doubled at each downsampling
      n_down=2,                 # downsamplings (the U-Net's depth); H, W divisible by 2^n_down
      n_blocks=6,               # residual blocks at the bottleneck (resnet)
      disc_features=(64, 128),  # PatchGAN: one 4x4 stride-2 conv each (28x28 -> a 7x7 logit grid)
      cycle_weight=10.0,
      identity_weight=5.0,
      pool_size=50,             # the image history per domain (0: critics see only the new fakes)
      disc_lr_mult=1.0,
  ))
  shape_presets = {"digits": dict(n_down=1, n_blocks=4, disc_features=(32, 64)),
                   "apple2orange": dict(disc_features=(64, 128, 256))}
  base = dataset.split(":")[1] if ":" in dataset else dataset.split("_")[0]
  c.model.update(shape_presets.get(base, {}))
  if SHORTCUTS.get(dataset, dataset).startswith("map:"):
    # A known map f with f(b) != b: the identity term |G(b) - b| pulls G towards the identity, i.e.
    # away from f, and the generators then satisfy the cycle loss with a different (inverted)
    # digit. Measured on digits_inverted (small): MSE ratio to f 0.24-0.29 with the book's 5,
    # 0.15-0.18 without it (README, issue 16).
    c.model.identity_weight = 0.0
  if variant == "small":      # a CPU budget
    c.steps = min(c.steps, 3000)
    c.model.update(gen_features=16, n_blocks=min(c.model.n_blocks, 4),
                   disc_features=tuple(max(f // 2, 8) for f in c.model.disc_features))
  c.eval_batches = 4
  if variant == "tiny":
    shrink(c, steps=4, batch_size=8)
    c.model.update(gen_features=4, n_blocks=1, disc_features=(4,) * len(c.model.disc_features), pool_size=4)
  elif variant not in ("default", "small"):
    raise ValueError(f"unknown variant {variant!r}; use 'default', 'small' or 'tiny' (datasets: --dataset).")
  return c


def check(config, info: DatasetInfo) -> None:
  """The image size against the generators' downsamplings and the critics' layers."""
  mc = config.model
  try:
    check_size(info.shape[:2], int(mc.n_down), "model.n_down" if mc.generator == "resnet" else "model.n_down (depth)")
  except ValueError as e:
    raise ConfigError(f"{e} Pass --config.model.n_down with a smaller value.") from e
  if 2 ** len(mc.disc_features) > min(info.shape[:2]):
    raise ConfigError(f"config model.disc_features={tuple(mc.disc_features)} halves the {info.shape[0]}x"
                      f"{info.shape[1]} images {len(mc.disc_features)} times, below one pixel; pass "
                      "--config.model.disc_features with fewer entries.")
  if mc.generator == "resnet" and int(mc.n_down) and min(info.shape[:2]) // 2 ** int(mc.n_down) < 2 \
      and int(mc.n_blocks):
    raise ConfigError(f"config model.n_down={mc.n_down} leaves {info.shape[0] // 2 ** int(mc.n_down)}-pixel "
                      "feature maps, too small for the residual blocks' reflection padding; pass "
                      "--config.model.n_down with a smaller value.")


def make_players(mc, info: DatasetInfo):
  """(G: A -> B, F: B -> A, critic) modules; both generators and both critics share a shape."""
  gen = make_generator(mc.generator, int(info.shape[-1]), int(mc.gen_features), int(mc.n_down), int(mc.n_blocks))
  disc = PatchDiscriminator(tuple(int(f) for f in mc.disc_features))
  return gen, disc


def build(config: ml_collections.ConfigDict, info: DatasetInfo) -> Task:
  if (problem := NEEDS.problem(info)):
    raise ConfigError(f"cyclegan {problem}")
  check(config, info)
  mc = config.model
  gen, disc = make_players(mc, info)
  levels, steps = int(info.levels), int(config.steps)
  cw, iw, pool_size = float(mc.cycle_weight), float(mc.identity_weight), int(mc.pool_size)
  gen_opt = make_optimizer(config.optimizer, steps)
  disc_cfg = ml_collections.ConfigDict(config.optimizer.to_dict())
  disc_cfg.lr = float(config.optimizer.lr) * float(mc.disc_lr_mult)
  disc_opt = make_optimizer(disc_cfg, steps)

  def G(p, x):
    return gen.apply({"params": p}, x)

  def D(p, x):
    return disc.apply({"params": p}, x)

  def init(key, batch):
    kg, kf, ka, kb = jax.random.split(key, 4)
    a = to_signed(batch["a"], levels)
    params = {"gen": {"g": gen.init(kg, a)["params"], "f": gen.init(kf, a)["params"]},
              "disc": {"a": disc.init(ka, a)["params"], "b": disc.init(kb, a)["params"]}}
    pool = {d: L.init_pool(pool_size, tuple(info.shape)) for d in ("a", "b")}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state={"gen": gen_opt.init(params["gen"]), "disc": disc_opt.init(params["disc"])},
                      extra={"pool": pool})

  def gen_loss(gp, dp, batch, key):
    del key
    a, b = to_signed(batch["a"], levels), to_signed(batch["b"], levels)
    n = a.shape[0]
    fake_b, fake_a = G(gp["g"], a), G(gp["f"], b)
    # one call per generator for its second uses (instance norm: images are independent)
    g_out = G(gp["g"], jnp.concatenate([fake_a, b]) if iw else fake_a)
    f_out = G(gp["f"], jnp.concatenate([fake_b, a]) if iw else fake_b)
    rec_b, rec_a = g_out[:n], f_out[:n]
    adv_b, adv_a = L.lsgan_gen_loss(D(dp["b"], fake_b)), L.lsgan_gen_loss(D(dp["a"], fake_a))
    cyc_a, cyc_b = L.l1_loss(rec_a, a), L.l1_loss(rec_b, b)
    total = adv_a + adv_b + cw * (cyc_a + cyc_b)
    metrics = {"g_adv_a": adv_a, "g_adv_b": adv_b, "cycle_a": cyc_a, "cycle_b": cyc_b}
    if iw:
      idt_b, idt_a = L.l1_loss(g_out[n:], b), L.l1_loss(f_out[n:], a)
      total = total + iw * (idt_a + idt_b)
      metrics.update(identity_a=idt_a, identity_b=idt_b)
    metrics["g_loss"] = total
    return total, ({"a": fake_a, "b": fake_b}, metrics)

  def critic_inputs(extra, fakes, key):
    k_a, k_b = jax.random.split(key)
    pool_a, fake_a = L.pool_query(extra["pool"]["a"], fakes["a"], k_a)
    pool_b, fake_b = L.pool_query(extra["pool"]["b"], fakes["b"], k_b)
    return {**extra, "pool": {"a": pool_a, "b": pool_b}}, {"a": fake_a, "b": fake_b}

  def disc_loss(dp, batch, fakes, key):
    del key
    out = {}
    for d in ("a", "b"):
      x = to_signed(batch[d], levels)
      logits = D(dp[d], jnp.concatenate([x, fakes[d]]))                  # one pass: real, then fake
      real, fake = logits[:x.shape[0]], logits[x.shape[0]:]
      out[d] = (L.lsgan_disc_loss(real, fake), real.mean(), fake.mean())
    total = out["a"][0] + out["b"][0]
    return total, {"d_loss": total, "d_loss_a": out["a"][0], "d_loss_b": out["b"][0],
                   "d_real_a": out["a"][1], "d_fake_a": out["a"][2],
                   "d_real_b": out["b"][1], "d_fake_b": out["b"][2]}

  step = make_two_player_step(gen_loss, disc_loss, gen_opt, disc_opt, critic_inputs=critic_inputs)

  @jax.jit
  def eval_step(state, batch, key):
    """Held-out cycle and identity MAE on [0, 1], critic scores; MSE to f for known maps."""
    del key
    gp, dp = state.params["gen"], state.params["disc"]
    a, b = to_signed(batch["a"], levels), to_signed(batch["b"], levels)
    fake_b, fake_a = G(gp["g"], a), G(gp["f"], b)
    rec_a, rec_b = G(gp["f"], fake_b), G(gp["g"], fake_a)
    out = {"cycle_mae_a": 0.5 * jnp.mean(jnp.abs(rec_a - a)), "cycle_mae_b": 0.5 * jnp.mean(jnp.abs(rec_b - b)),
           "identity_mae_b": 0.5 * jnp.mean(jnp.abs(G(gp["g"], b) - b)),
           "d_real_b": D(dp["b"], b).mean(), "d_fake_b": D(dp["b"], fake_b).mean(),
           "d_real_a": D(dp["a"], a).mean(), "d_fake_a": D(dp["a"], fake_a).mean()}
    if "a_mapped" in batch:                          # [-1, 1] differences / 2 -> [0, 1] units
      out["mse_ab"] = 0.25 * jnp.mean(jnp.square(fake_b - to_signed(batch["a_mapped"], levels)))
      out["mse_ba"] = 0.25 * jnp.mean(jnp.square(fake_a - to_signed(batch["b_mapped"], levels)))
    return out

  @jax.jit
  def _translate_ab(gparams, images):
    return from_signed(G(gparams["g"], to_signed(images, levels)), levels).astype(jnp.uint8)

  @jax.jit
  def _translate_ba(gparams, images):
    return from_signed(G(gparams["f"], to_signed(images, levels)), levels).astype(jnp.uint8)

  def translate(state, images, direction: str):
    """Integer-level images of domain A -> B ("ab") or B -> A ("ba"), integer levels."""
    if direction not in ("ab", "ba"):
      raise ValueError(f"direction must be 'ab' (A -> B) or 'ba' (B -> A); got {direction!r}.")
    images = jnp.asarray(images)
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(info.shape):
      raise ValueError(f"translate takes [N, {', '.join(map(str, info.shape))}] images of {info.name!r}; "
                       f"got shape {tuple(images.shape)}.")
    fn = _translate_ab if direction == "ab" else _translate_ba
    return fn(state.eval_params()["gen"], images)

  def write_artifacts(state, data, workdir, key):
    from gdl_jax.evaluation.grids import save_grid
    del key
    n = min(8, data.num_examples("test"))
    for d, (fwd, back) in {"ab": ("ab", "ba"), "ba": ("ba", "ab")}.items():
      x = np.asarray(data.test[d[0]][:n])
      y = np.asarray(translate(state, x, fwd))
      z = np.asarray(translate(state, y, back))
      save_grid(np.concatenate([x, y, z]), os.path.join(workdir, f"translations_{d}.png"), nrow=n,
                levels=levels)

  return Task(init=init, step=step, eval_step=eval_step, translate=translate, write_artifacts=write_artifacts)


if __name__ == "__main__":
  from gdl_jax.cli import main
  sys.exit(main(["train", "cyclegan", *sys.argv[1:]]))
