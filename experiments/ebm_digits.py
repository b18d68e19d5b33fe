"""Chapter 7: an energy-based model on the 8x8 digits, contrastive divergence with Langevin sampling.

Run:  gdl-jax train ebm --dataset digits --workdir runs/ebm_digits
      (or: python -m experiments.ebm_digits --workdir runs/ebm_digits)
The book's recipe: a swish CNN energy, negatives from `langevin_steps` Langevin steps (step size
10, noise 0.005, gradients clipped to +-0.03, pixels clipped to [-1, 1]) started 95% from a replay
buffer of past negatives and 5% from uniform noise, loss = E(real) - E(fake) +
alpha * (E(real)^2 + E(fake)^2), Adam(lr 1e-4, b1 0). The buffer lives in TrainState.extra.
eval_step reports `rank_vs_noise`: the share of (held-out image, uniform-noise image) pairs in
which the held-out image gets the lower energy.
Samples (Task.sample): model.sample_init="buffer" continues random replay-buffer entries for
`sample_steps` (60) Langevin steps: persistent chains, started from uniform noise during training
and never from data (rule 2 checks they are not copies); sample_init="noise" runs fresh chains
from uniform noise instead (the book's `generate_samples`, 1000 steps). Artifacts: samples.png,
buffer.png (current replay-buffer entries), chain.png (one row per fresh chain from noise,
`chain_steps` = 1000 steps, columns = Langevin steps) and chain_energy.png (mean and spread of
E(x) over those steps).

MEASURED (2 CPU cores, shared; FD = classifier Fréchet distance, 359 samples vs 359 held-out;
the independent-pixel baseline's samples: 28.3; train-vs-test images 2.1-2.7):
- default config, 1500 steps (9.5 min under heavy load): rank_vs_noise 1.000 at every eval;
  buffer chains + 60 steps FD 14.4, novelty 1.76, no copies; fresh chains from noise after 1000
  steps FD 29.0, novelty 1.70 (digit-shaped but speckled).
- `--steps 5000` (22 min, load ~4): rank_vs_noise 1.000; buffer + 60 steps FD 11.0 / 8.6 (two
  sampling seeds), novelty 1.53 / 1.50, no copies; from noise: FD 30.8 (60 steps), 28.0 (200),
  68.1 (1000: the long chains from noise collapse onto a few round digits, see samples from
  `--config.model.sample_init=noise`). Fresh short-run chains are what training never does: 95%
  of its negatives continue the buffer, which is why the persistent chains are the sampler.
Evaluate another sampler of the same weights: `gdl-jax evaluate RUN --config.model.sample_init=noise
--config.model.sample_steps=1000` (writes metrics_<overrides>.json).
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments._common import base_config, shrink
from gdl_jax.configs import FRACTION, NON_NEGATIVE, POSITIVE, POSITIVE_INT, ConfigError, Needs, OneOf
from gdl_jax.data.info import DatasetInfo, from_signed, to_signed
from gdl_jax.models.ebm import EnergyCNN
from gdl_jax.objectives.ebm import cd_loss, init_buffer
from gdl_jax.optim import make_optimizer
from gdl_jax.samplers.langevin import langevin
from gdl_jax.train.state import TrainState
from gdl_jax.train.step import make_train_step
from gdl_jax.train.task import Task


# Runs saved before model.sample_init existed sampled fresh chains from noise: `gdl-jax evaluate`
# reads the missing key as that, also when other options are overridden (not as today's "buffer").
KEYS_ADDED = {"model.sample_init": "noise"}

# What the config may hold (checked before anything is built; gdl_jax.configs has the common rules).
NEEDS = Needs("image", levels=True)
RULES = {
    "model.kernels": POSITIVE_INT, "model.strides": POSITIVE_INT, "model.dense": POSITIVE_INT,
    "model.alpha": NON_NEGATIVE, "model.langevin_steps": POSITIVE_INT, "model.step_size": POSITIVE,
    "model.noise_scale": NON_NEGATIVE, "model.grad_clip": NON_NEGATIVE,
    "model.buffer_size": POSITIVE_INT, "model.reinit_prob": FRACTION, "model.data_noise": NON_NEGATIVE,
    "model.sample_init": OneOf("noise", "buffer"), "model.sample_steps": POSITIVE_INT,
    "model.chain_steps": POSITIVE_INT,
}


def check(config, info: DatasetInfo) -> None:
  """Constraints between keys (the single values are in RULES)."""
  mc = config.model
  if not len(mc.features) == len(mc.kernels) == len(mc.strides):
    raise ConfigError(f"config model.features {tuple(mc.features)}, model.kernels {tuple(mc.kernels)} and "
                      f"model.strides {tuple(mc.strides)} must have one entry per conv layer (same length).")
  if int(mc.buffer_size) < int(config.batch_size):
    raise ConfigError(f"config model.buffer_size={mc.buffer_size} is smaller than batch_size="
                      f"{config.batch_size} (each step pushes a batch of chains); pass "
                      f"--config.model.buffer_size={config.batch_size} or more.")


def model_config(**kw) -> ml_collections.ConfigDict:
  """Energy network, Langevin and buffer hyper-parameters (the book's values where they apply)."""
  m = ml_collections.ConfigDict(dict(
      features=(16, 32, 64), kernels=(5, 3, 3), strides=(2, 2, 2), dense=64,
      alpha=0.1, langevin_steps=60, step_size=10.0, noise_scale=0.005, grad_clip=0.03,
      buffer_size=8192, reinit_prob=0.05, data_noise=0.005,
      sample_init="buffer", sample_steps=60, chain_steps=1000, chain_columns=11))
  m.update(kw)
  return m


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  c = base_config("digits", steps=1500, batch_size=128, lr=1e-4, b1=0.0, b2=0.999)
  c.model = model_config()
  if variant == "tiny":
    shrink(c, steps=4, batch_size=8)
    c.model.update(features=(4, 8), kernels=(3, 3), strides=(2, 2), dense=8, langevin_steps=3,
                   buffer_size=32, sample_steps=4, chain_steps=4, chain_columns=3)
  elif variant != "default":
    raise ValueError(f"unknown variant {variant!r}; use 'default' or 'tiny'.")
  return c


def make_model(mc) -> EnergyCNN:
  return EnergyCNN(features=tuple(int(f) for f in mc.features),
                   kernels=tuple(int(k) for k in mc.kernels),
                   strides=tuple(int(s) for s in mc.strides), dense=int(mc.dense))


def build(config: ml_collections.ConfigDict, info: DatasetInfo) -> Task:
  """The EBM Task for any image dataset with levels."""
  if (problem := NEEDS.problem(info)):
    raise ConfigError(f"ebm experiments {problem}")
  check(config, info)
  mc = config.model
  model = make_model(mc)
  optimizer = make_optimizer(config.optimizer, int(config.steps))
  levels, shape = int(info.levels), tuple(info.shape)
  chain_kw = dict(step_size=float(mc.step_size), noise_scale=float(mc.noise_scale),
                  grad_clip=float(mc.grad_clip) if mc.grad_clip else None)

  def energy_fn(params, x):
    return model.apply({"params": params}, x)  # [B]

  def init(key, batch):
    k_init, k_buf = jax.random.split(key)
    params = model.init(k_init, to_signed(batch["image"], levels))["params"]
    extra = init_buffer(k_buf, int(mc.buffer_size), shape)
    return TrainState.create(params, optimizer, extra=extra)

  def loss_fn(params, extra, batch, key):
    return cd_loss(energy_fn, params, extra, to_signed(batch["image"], levels), key,
                   alpha=float(mc.alpha), reinit_prob=float(mc.reinit_prob),
                   steps=int(mc.langevin_steps), data_noise=float(mc.data_noise), **chain_kw)

  step = make_train_step(loss_fn, optimizer)

  @jax.jit
  def eval_step(state, batch, key):
    x = to_signed(batch["image"], levels)
    e_real = energy_fn(state.params, x)  # [B]
    e_noise = energy_fn(state.params, jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0))  # [B]
    rank = jnp.mean((e_real[:, None] < e_noise[None, :]).astype(jnp.float32))  # over all pairs
    return {"energy_test": e_real.mean(), "energy_noise": e_noise.mean(), "rank_vs_noise": rank}

  sample_init = mc.get("sample_init", "noise")
  if sample_init not in ("noise", "buffer"):
    raise ConfigError(f"model.sample_init={sample_init!r}; use 'noise' (fresh chains from uniform "
                     "noise) or 'buffer' (continue the replay buffer's persistent chains).")

  def sample_signed(state, key, n, steps=None, return_chain=False, init=None):
    k0, k_chain = jax.random.split(key)
    if (init or sample_init) == "buffer":  # persistent chains: started from noise, never from data
      buf = state.extra["buffer"]
      x0 = buf[jax.random.choice(k0, buf.shape[0], (n,), replace=n > buf.shape[0])]
    else:
      x0 = jax.random.uniform(k0, (n,) + shape, jnp.float32, -1.0, 1.0)
    return langevin(energy_fn, state.params, x0, k_chain,
                    steps=int(mc.sample_steps if steps is None else steps),
                    return_chain=return_chain, **chain_kw)

  def sample(state, key, n):
    return from_signed(sample_signed(state, key, int(n)).x, levels)  # [n, H, W, C] int32

  def write_artifacts(state, data, workdir, key):
    from gdl_jax.evaluation.grids import save_grid
    n = int(config.num_samples)
    buf = np.asarray(state.extra["buffer"][:n])
    save_grid(np.asarray(from_signed(buf, levels)), os.path.join(workdir, "buffer.png"),
              levels=levels)
    rows = min(8, n)
    res = sample_signed(state, key, rows, steps=int(mc.get("chain_steps", mc.sample_steps)),
                        return_chain=True, init="noise")  # the book's figure: noise -> digits
    chain = np.asarray(res.chain)  # [S, rows, H, W, C]
    cols = np.linspace(0, chain.shape[0] - 1, int(mc.chain_columns)).round().astype(int)
    grid = np.swapaxes(chain[cols], 0, 1).reshape((-1,) + shape)  # row = one chain
    save_grid(np.asarray(from_signed(grid, levels)), os.path.join(workdir, "chain.png"),
              nrow=len(cols), levels=levels)
    save_energy_plot(np.asarray(res.energies), os.path.join(workdir, "chain_energy.png"),
                     reference=np.asarray(energy_fn(state.params,
                                                    to_signed(data.test["image"][:256], levels))))

  return Task(init=init, step=step, eval_step=eval_step, sample=sample,
              write_artifacts=write_artifacts)


def save_energy_plot(energies: np.ndarray, path: str, reference=None) -> str:
  """Mean and 10-90% band of E(x) [steps, B] over Langevin steps; a line at mean E(held-out)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(6, 4))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  steps = np.arange(1, energies.shape[0] + 1)
  ax.plot(steps, energies.mean(1), label="Langevin chains (mean)")
  ax.fill_between(steps, np.percentile(energies, 10, 1), np.percentile(energies, 90, 1), alpha=0.3)
  if reference is not None:
    ax.axhline(float(np.mean(reference)), color="k", ls="--", label="held-out images (mean)")
  ax.set_xlabel("Langevin step")
  ax.set_ylabel("energy E(x)")
  ax.legend()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100, bbox_inches="tight")
  return path


if __name__ == "__main__":
  from gdl_jax.cli import main
  sys.exit(main(["train", "ebm_digits", *sys.argv[1:]]))
