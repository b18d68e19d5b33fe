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
# Settings and small helpers (gdl_jax/notebook.py, shared by every chapter notebook).
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
from gdl_jax.notebook import (FULL, WORKDIR, baselines, features, harness_metrics,
                              last_test_metrics, over_all_devices, show, show_png)
from gdl_jax.train import loop

print(f"jax {jax.__version__}: {jax.device_count()} {jax.default_backend()} device(s); FULL={FULL}")

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
