# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Chapter 10: ProGAN, StyleGAN2 and VQ-VAE
#
# Progressive growing with fade-in (`experiments/progan.py`), StyleGAN2's mapping network,
# modulated convolutions and style mixing (`experiments/stylegan2.py`), and the two-stage VQ-VAE
# with a GPT prior over its codes (`experiments/vqvae.py`). The tiny runs use the 8x8 digits;
# set `DATASET = "fashion_mnist"` (prepared as in the README's data table) for the book's 28x28
# images (padded to 32x32 inside the models).

# %% [markdown]
# The first part runs the `tiny` variants: seconds of training on a CPU, enough to see every
# call (this is what CI executes). The last section trains the full-size configs on whatever
# `jax.devices()` offers (TPU / GPU), each batch sharded over all devices; it runs when `FULL`
# is true: on an accelerator, or with `GDL_NOTEBOOK_FULL=1` (`=0` skips it anywhere).

# %%
# Install (Colab). Skipped when gdl_jax is already importable (a local checkout, CI).
REPO_URL = "https://github.com/OWNER/gdl_jax"  # <- the git URL of this repository (or your fork)
EXTRAS = "notebooks"
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("gdl_jax") is None:
  if "/OWNER/" in REPO_URL:
    raise RuntimeError("gdl_jax is not installed: set REPO_URL above to the repository's git URL "
                       "(or `pip install -e .` in a checkout) and run this cell again.")
  subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                  f"gdl_jax[{EXTRAS}] @ git+{REPO_URL}"], check=True)
  # If pip upgraded jax itself, restart the runtime (Runtime > Restart session) before going on.

# %%
# Settings and small helpers.
import os

from gdl_jax import runtime

runtime.apply_xla_defaults()  # the CLI's XLA:CPU flag; must come before the first computation

import jax
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

from gdl_jax import data, sharding
from gdl_jax.evaluation import classifier, harness
from gdl_jax.evaluation.grids import make_grid
from gdl_jax.train import loop

# FULL: run the full-size section (default: on an accelerator); GDL_NOTEBOOK_FULL=0/1 overrides.
FULL = {"0": False, "1": True}.get(os.environ.get("GDL_NOTEBOOK_FULL", ""),
                                   jax.default_backend() != "cpu")
WORKDIR = os.environ.get("GDL_NOTEBOOK_WORKDIR", "runs/notebooks")  # re-running resumes a run
print(f"jax {jax.__version__}: {jax.device_count()} {jax.default_backend()} device(s); FULL={FULL}")


def show(images, title="", levels=None, nrow=None, size=5.0):
  """A batch [N, H, W, C] (integer levels or floats in [-1, 1]) as one grid, inline."""
  grid = make_grid(np.asarray(images), nrow=nrow, levels=levels)
  plt.figure(figsize=(size, size))
  plt.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255)
  plt.title(title)
  plt.axis("off")
  plt.show()


def show_png(path, title="", size=6.0):
  """A picture an experiment wrote into its run directory, inline."""
  plt.figure(figsize=(size, size))
  plt.imshow(plt.imread(path), cmap="gray")
  plt.title(title or os.path.basename(path))
  plt.axis("off")
  plt.show()


def features(ds, full):
  """The harness's feature network: the Chapter 2 CNN, trained once per dataset into the cache
  ($GDL_CACHE_DIR); its `tiny` variant (seconds) unless full (the default: minutes on a CPU)."""
  if ds.info.kind != "image" or not ds.info.num_classes:
    return None
  return classifier.feature_fn(ds, variant="default" if full else "tiny")


def harness_metrics(task, state, ds, *, num_samples, full=False, seed=0):
  """The book's two rules for a trained Task: held-out bits/dim (task.log_prob), classifier
  Fréchet distance of num_samples samples vs held-out images, novelty ratio and copies."""
  sample_fn = None if task.sample is None else (
      lambda key, n: np.asarray(task.sample(state, key, n)))
  log_prob_fn = None if task.log_prob is None else (
      lambda batch, key: np.asarray(task.log_prob(state, batch, key)))
  return harness.evaluate(ds, sample_fn=sample_fn, log_prob_fn=log_prob_fn,
                          feature_fn=features(ds, full), num_samples=num_samples,
                          key=jax.random.key(seed))


def baselines(ds, *, num_samples, full=False, seed=1):
  """The classical baselines through the same harness (tiny: the two categorical models only)."""
  kw = {} if full else dict(which=("independent", "mixture"), mixture_ks=(10,), em_iters=10)
  return harness.baseline_table(ds, features(ds, full), key=jax.random.key(seed),
                                num_samples=num_samples, **kw)


def over_all_devices(config):
  """The config with batch_size a multiple of the device count: `loop.fit` puts every batch on
  one ("data",) mesh over all devices (params replicated), so each device takes an equal slice."""
  mesh = sharding.make_mesh()
  n = mesh.devices.size
  config.batch_size = -(-int(config.batch_size) // n) * n
  sharding.check_batch_size(config.batch_size, mesh)
  print(f"mesh {dict(mesh.shape)} over {n} {jax.default_backend()} device(s): global batch "
        f"{config.batch_size} = {n} x {config.batch_size // n}")
  return config


def last_test_metrics(workdir):
  """The last held-out row the loop wrote to metrics.jsonl."""
  rows = [r for r in loop.read_metrics(workdir) if r["split"] == "test"]
  return rows[-1] if rows else {}


# %%
import importlib

DATASET = "digits"
ds = data.load(DATASET)
levels = ds.info.levels
NUM = min(359, ds.num_examples("test"))  # full-size harness: samples vs as many test images


def train(name, variant):
  """experiments/<name>.py's Task for DATASET, trained by loop.fit; (task, state, run directory)."""
  module = importlib.import_module(f"experiments.{name}")
  config = module.get_config(variant, DATASET)
  if variant != "tiny":
    config = over_all_devices(config)
  task = module.build(config, ds.info)
  run_dir = os.path.join(WORKDIR, f"ch10_{name}_{DATASET}_{variant}")
  return task, loop.fit(task, config, ds, run_dir, experiment=name), run_dir


def pictures(name, task, state, run_dir):
  show(task.sample(state, jax.random.key(0), 64), f"{name}: samples", levels=levels)
  for png, title in (("resolutions.png", "ProGAN: one row per resolution, same latents"),
                     ("style_mixing_coarse.png", "StyleGAN2: coarse styles from the top row"),
                     ("truncation.png", "StyleGAN2: truncation psi = 1, 0.7, 0.5, 0 (rows)"),
                     ("reconstructions.png", "VQ-VAE: test images (top), reconstructions")):
    if os.path.exists(os.path.join(run_dir, png)):
      show_png(os.path.join(run_dir, png), title)


# %% [markdown]
# ## ProGAN (tiny)
# Every resolution's parameters exist from init, so the TrainState keeps one shape while the
# networks grow (4x4, then 8x8 with a fade-in); the loop's progress grids show the growth.

# %%
progan = train("progan", "tiny")
pictures("ProGAN", *progan)

# %% [markdown]
# ## StyleGAN2 (tiny)

# %%
stylegan2 = train("stylegan2", "tiny")
pictures("StyleGAN2", *stylegan2)

# %% [markdown]
# ## VQ-VAE + GPT prior (tiny)
# Stage 1 (the first `config.vq_steps` steps) trains the VQ-VAE, stage 2 a GPT on the frozen
# codes; `task.sample` draws codes from the GPT and decodes them; `task.log_prob` is a bound.

# %%
vqvae = train("vqvae", "tiny")
print("held-out:", last_test_metrics(vqvae[2]))
pictures("VQ-VAE", *vqvae)

# %% [markdown]
# ## Metrics next to the baselines

# %%
rows = {name: harness_metrics(task, state, ds, num_samples=64)
        for name, (task, state, _) in (("ProGAN", progan), ("StyleGAN2", stylegan2), ("VQ-VAE + GPT prior", vqvae))}
rows.update(baselines(ds, num_samples=64))
display(Markdown(harness.markdown_table(rows)))

# %% [markdown]
# ## Full size, on every device
# The default configs of each experiment for DATASET (README, digits on 2 CPU cores: ProGAN FD
# 27.0 after a short 300-step run; VQ-VAE bound 2.807 bits/dim, FD 14.5).

# %%
if FULL:
  full_rows = {}
  for name in ("progan", "stylegan2", "vqvae"):
    task, state, run_dir = train(name, "default")
    pictures(name, task, state, run_dir)
    full_rows[name] = harness_metrics(task, state, ds, num_samples=NUM, full=True)
  full_rows.update(baselines(ds, num_samples=NUM, full=True))
  display(Markdown(harness.markdown_table(full_rows)))
else:
  print("FULL is off: set GDL_NOTEBOOK_FULL=1 (or run on a TPU / GPU) for the full-size run.")
