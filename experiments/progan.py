"""Progressive GAN (Karras et al. 2018): growing 4 -> 8 -> 16 -> 32 with fade-in, WGAN-GP + drift.

Run:  gdl-jax train progan --dataset fashion_mnist --workdir runs/progan_fashion
      gdl-jax train progan --dataset photo_crops --workdir runs/progan_photos
      gdl-jax evaluate runs/progan_fashion
      gdl-jax sample runs/progan_fashion --num 64
The models are gdl_jax.models.progan (pixel norm, minibatch stddev, equalised learning rate); the
step is the project's GAN step (gdl_jax.objectives.gan_step) with n_critic=1, gradient penalty 10,
drift 1e-3 * D(x_real)^2, Adam(1e-3, b1=0, b2=0.99), and an EMA generator (0.999) for samples.

Growing inside one jitted, pure step(state, batch, key):
  - every resolution's parameters exist from init, so the TrainState never changes shape (a
    checkpoint from any phase restores and resumes);
  - (phase, alpha) = phase_alpha(state.step): 2 * 4 - 1 = 7 segments of model.phase_steps steps
    (0: ceil(steps / 7)): stabilise 4x4, then fade + stabilise for 8, 16 and 32; alpha rises
    linearly over a fade and is 1 otherwise;
  - the real images are padded to model.resolution (below), average-pooled to the phase's
    resolution and, during a fade, blended with their 2x-down-then-up version by the same alpha (as
    the paper does, so real and fake go through the same fade);
  - the shapes differ per phase, so there is one GAN step per phase. model.dispatch="host" (the
    default) reads state.step on the host and calls that phase's own jitted, donating step (each
    compiled when first reached); "switch" puts all of them in one program under
    `lax.switch(phase(state.step), ...)`. Both are pure functions of (state, batch, key) and give
    the same numbers (tests/models/test_progan.py). Measured (`small`, Fashion-MNIST, batch 64,
    a 32x32 step; process CPU seconds, the shared 2-core machine at load ~20): compile 18 s for the
    32x32 step alone vs 81 s for the switch over all four; a 32x32 step then takes 1.1 s on the
    host path vs 49 s under the switch (wall 6 s vs 350 s); on `tiny` the switch compiled in 27 s
    vs 41 s for the four host steps, and its 32x32 step ran 1.9x slower. XLA:CPU runs the convolutions inside a
    conditional far slower (as gan_step.py notes for while loops), so "host" is the default; the
    cost is one device-to-host read of the step counter per step.
Padding: Fashion-MNIST is 28x28 and ProGAN needs 4 * 2^k; with model.resolution=32 the images are
padded by (32 - 28) / 2 = 2 px on every side with model.pad_level (0: the black background) inside
the step, and samples are cropped back to 28x28, so the harness compares like with like.
Samples: the EMA generator at the phase of the state (upsampled, nearest, to the full resolution
when training stopped before the last phase). Artifacts: samples.png, progress/ + progress.gif
(the loop; the grid grows 4 -> 32 over training), resolutions.png (write_artifacts: one row per
resolution 4, 8, 16, 32 of the final generator's per-resolution toRGB outputs for the same latents,
each upsampled to 32x32 for display; the lower rows are the heads as last trained in their phase).

Measured (digits, 8x8 = two phases, `--variant small --steps 300 --config.model.phase_steps=100
--config.ckpt_every=100`, 45 s for the last 100 steps on 2 shared cores at load ~5; the first 200
ran at load ~20): classifier Fréchet distance 31.7 at the end of the 4x4 phase (upsampled), 27.0
at the end of 8x8, novelty 1.87, no copies (benchmarks/progan_phases.py, 359 samples vs 359 test
images) - a short run, far from the WGAN-GP's 14.3 after 1000 steps. Fashion-MNIST (`small`, 2800
steps) is not measured yet: its classifier for the FD was not trained on this machine.
"""

from __future__ import annotations

import math
import os
import sys
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments._common import base_config
from gdl_jax.data.info import DatasetInfo, from_signed, to_signed
from gdl_jax.models import progan as pg
from gdl_jax.objectives.gan_step import apply_player, init_gan_state, make_gan_step
from gdl_jax.optim import make_optimizer
from gdl_jax.train.task import Task

DISPATCH = ("switch", "host")


# The smallest 4 * 2^k size holding each dataset's images (others: 32, override model.resolution).
RESOLUTIONS = {"digits": 8, "fashion_mnist": 32, "photo_crops": 32, "lfw_subset": 32}


def get_config(variant: str = "default", dataset: str = "fashion_mnist") -> ml_collections.ConfigDict:
  c = base_config(dataset, steps=14000, batch_size=64, lr=1e-3, b1=0.0, b2=0.99)
  c.model = ml_collections.ConfigDict(dict(
      latent_dim=128,
      gen_features=(128, 128, 64, 32),   # channels at 4, 8, 16, 32 (one per resolution)
      disc_features=(128, 128, 64, 32),
      resolution=32,                      # images are padded to this (4 * 2^k) size
      pad_level=0,                        # the level padding is filled with (the background)
      phase_steps=0,                      # steps per fade and per stabilise; 0: ceil(steps / 7)
      dispatch="host",                    # "host" (one jitted step per phase) or "switch"
      mbstd_group=4,
      gp_weight=10.0,
      drift_weight=1e-3,
      ema_decay=0.999,
  ))
  if variant == "small":
    c.steps = 2800
    c.model.update(latent_dim=64, gen_features=(64, 64, 32, 16), disc_features=(64, 64, 32, 16))
  elif variant == "tiny":
    from gdl_jax.configs import shrink
    shrink(c, steps=7, batch_size=8)
    c.model.update(latent_dim=8, gen_features=(8, 8, 4, 4), disc_features=(4, 4, 8, 8), phase_steps=1)
  elif variant != "default":
    raise ValueError(f"unknown variant {variant!r}; use 'default', 'small' or 'tiny' (datasets: --dataset).")
  res = RESOLUTIONS.get(dataset, 32)
  n = pg.num_phases(res)
  c.model.resolution = res
  c.model.gen_features = tuple(c.model.gen_features)[:n]
  c.model.disc_features = tuple(c.model.disc_features)[:n]
  c.steps = c.steps * (2 * n - 1) // 7 if variant == "tiny" else c.steps
  c.sample_every = max(c.steps // 14, 1)
  c.ckpt_every = phase_steps(c)   # a checkpoint at every fade / stabilise end (phase ends: odd ones)
  c.keep_checkpoints = 7
  return c


def phase_steps(config: ml_collections.ConfigDict) -> int:
  """model.phase_steps, or ceil(steps / (2 * phases - 1)) when it is 0."""
  n = pg.num_phases(int(config.model.resolution))
  given = int(config.model.phase_steps)
  if given < 0:
    raise ValueError(f"model.phase_steps must be >= 0 (0: spread config.steps evenly); got {given}.")
  return given or max(math.ceil(int(config.steps) / (2 * n - 1)), 1)


def padding(info: DatasetInfo, resolution: int) -> int:
  """Pixels added on each side to bring info's square images to `resolution` (refused otherwise)."""
  h, w = info.shape[:2]
  pg.num_phases(resolution)
  if h != w or h > resolution or (resolution - h) % 2:
    raise ValueError(f"{info.name!r} images are {h}x{w}; ProGAN pads square images evenly up to "
                     f"model.resolution={resolution} (4 * 2^k): set --config.model.resolution to a "
                     f"4 * 2^k size >= {h} with an even difference.")
  return (resolution - h) // 2


def pad_images(x: jax.Array, pad: int, value: float) -> jax.Array:
  """[B, H, W, C] -> [B, H + 2 pad, W + 2 pad, C], the border filled with `value`."""
  if not pad:
    return x
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=value)


def build(config: ml_collections.ConfigDict, info: DatasetInfo) -> Task:
  return build_parts(config, info).task


def build_parts(config: ml_collections.ConfigDict, info: DatasetInfo) -> types.SimpleNamespace:
  """The Task and the pieces behind it (for scripts and tests): task, schedule(step) -> (phase,
  alpha), generate_at(state, z, phase, alpha) -> signed [n, R, R, C], to_levels, resolution_grid,
  reals_at(x, phase, alpha), generators / discriminators (one per phase), phase_steps, pad."""
  if info.kind != "image" or info.levels is None:
    raise ValueError(f"progan needs an image dataset with levels, got {info.name!r} (kind={info.kind!r}).")
  mc = config.model
  if mc.dispatch not in DISPATCH:
    raise ValueError(f"model.dispatch={mc.dispatch!r} is unknown; use one of {DISPATCH}.")
  res, levels, latent_dim = int(mc.resolution), int(info.levels), int(mc.latent_dim)
  pad = padding(info, res)
  n_phases = pg.num_phases(res)
  steps_per = phase_steps(config)
  shape = (res, res, int(info.shape[-1]))
  pad_value = float(to_signed(np.float32(int(mc.pad_level)), levels))
  gens = [pg.ProGenerator(shape, tuple(mc.gen_features), phase=p) for p in range(n_phases)]
  discs = [pg.ProDiscriminator(shape, tuple(mc.disc_features), phase=p, mbstd_group=int(mc.mbstd_group))
           for p in range(n_phases)]
  gens[-1].last_phase, discs[-1].last_phase  # validate features against the resolution now
  gen_opt = make_optimizer(config.optimizer, int(config.steps))
  disc_opt = make_optimizer(config.optimizer, int(config.steps))
  ema = float(mc.ema_decay) > 0

  def schedule(step):
    return pg.phase_alpha(step, steps_per, n_phases)

  def reals_at(x, p, alpha):
    """Signed full-size images -> padded, pooled to phase p's resolution, faded during a fade."""
    x = pg.downsample(pad_images(x, pad, pad_value), res // pg.phase_resolution(p))
    if p == 0:
      return x
    return pg.fade(pg.upsample(pg.downsample(x)), x, alpha)

  def init(key, batch):
    x = reals_at(to_signed(batch["image"], levels), n_phases - 1, 1.0)
    return init_gan_state(gens[-1], discs[-1], gen_opt, disc_opt, key, x, latent_dim=latent_dim, ema=ema)

  def phase_step(p):
    return make_gan_step(
        gens[p], discs[p], gen_opt, disc_opt, latent_dim=latent_dim, loss="wgan", n_critic=1,
        gp_weight=float(mc.gp_weight), drift_weight=float(mc.drift_weight),
        ema_decay=float(mc.ema_decay) if ema else None, levels=levels,
        step_kwargs=lambda s: {"alpha": schedule(s)[1]},
        x_transform=lambda x, s, p=p: reals_at(x, p, schedule(s)[1]), jit=False)

  branches = [phase_step(p) for p in range(n_phases)]
  if mc.dispatch == "switch":
    def switch_step(state, batch, key):
      return jax.lax.switch(schedule(state.step)[0], branches, state, batch, key)
    step = jax.jit(switch_step, donate_argnums=0)
  else:
    jitted = [jax.jit(b, donate_argnums=0) for b in branches]

    def step(state, batch, key):
      """Pure in (state, batch, key): the phase is read from state.step itself."""
      return jitted[schedule(int(jax.device_get(state.step)))[0]](state, batch, key)

  def current(state):
    return schedule(int(jax.device_get(state.step)))

  def _eval_at(q):
    def scores(state, batch, key, alpha):
      x = reals_at(to_signed(batch["image"], levels), q, alpha)
      z = jax.random.normal(key, (x.shape[0], latent_dim))
      fake, _ = apply_player(gens[q], state.params["gen"], {}, z, train=False, alpha=alpha)
      real_out, _ = apply_player(discs[q], state.params["disc"], {}, x, train=False, alpha=alpha)
      fake_out, _ = apply_player(discs[q], state.params["disc"], {}, fake, train=False, alpha=alpha)
      return real_out.mean(), fake_out.mean()
    return scores

  @jax.jit
  def _eval(state, batch, key):
    p, alpha = schedule(state.step)
    real, fake = jax.lax.switch(p, [_eval_at(q) for q in range(n_phases)], state, batch, key, alpha)
    return {"d_real": real, "d_fake": fake, "wasserstein": real - fake, "phase": p.astype(jnp.float32),
            "alpha": alpha}

  def eval_step(state, batch, key):
    """Held-out critic scores at the state's phase: real test images vs as many fresh fakes."""
    return _eval(state, batch, key)

  def _make_generate(p):
    @jax.jit
    def generate(params, z, alpha):
      y = gens[p].apply({"params": params}, z, alpha=alpha)                          # [n, r, r, C]
      return pg.upsample(y, res // pg.phase_resolution(p))                          # [n, R, R, C]
    return generate

  generators = [_make_generate(p) for p in range(n_phases)]

  def generate_at(state, z, p, alpha=1.0):
    """Signed [n, R, R, C] images of phase p (upsampled, nearest, to the full resolution)."""
    return generators[p](state.eval_params()["gen"], z, jnp.float32(alpha))

  def to_levels(y):
    """Signed padded images -> uint8 levels in the dataset's own shape (the padding cropped)."""
    y = y[:, pad:res - pad, pad:res - pad] if pad else y
    return from_signed(y, levels).astype(jnp.uint8)

  def sample(state, key, n):
    """n images as uint8 levels from the EMA generator at the state's phase and fade weight."""
    p, alpha = current(state)
    z = jax.random.normal(key, (int(n), latent_dim))
    return to_levels(generate_at(state, z, p, alpha))

  def resolution_grid(state, key, n: int = 8):
    """[phases * n, R, R, C] uint8: row q = toRGB_q(h_q) for the same n latents, upsampled."""
    z = jax.random.normal(key, (n, latent_dim))
    outs = gens[-1].apply({"params": state.eval_params()["gen"]}, z, all_resolutions=True)
    rows = [pg.upsample(y, res // y.shape[1]) for y in outs]
    return from_signed(jnp.concatenate(rows), levels).astype(jnp.uint8)

  def write_artifacts(state, data, workdir, key):
    from gdl_jax.evaluation.grids import save_grid
    save_grid(np.asarray(resolution_grid(state, key)), os.path.join(workdir, "resolutions.png"),
              nrow=8, levels=levels)

  task = Task(init=init, step=step, eval_step=eval_step, sample=sample, write_artifacts=write_artifacts)
  return types.SimpleNamespace(task=task, schedule=schedule, generate_at=generate_at,
                               to_levels=to_levels, resolution_grid=resolution_grid, reals_at=reals_at,
                               generators=gens, discriminators=discs, phase_steps=steps_per, pad=pad)


if __name__ == "__main__":
  from gdl_jax.cli import main
  sys.exit(main(["train", "progan", *sys.argv[1:]]))
