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
# # Chapter 7: energy-based models
#
# A CNN energy E(x) trained by contrastive divergence with Langevin dynamics and a replay buffer
# of persistent chains (`experiments/ebm_digits.py`). Sampling runs Langevin steps on E from
# noise; the harness scores the samples (an EBM has no tractable likelihood).

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
from experiments import ebm_digits

ds = data.load("digits")
levels = ds.info.levels


def train(variant):
  config = ebm_digits.get_config(variant)
  if variant != "tiny":
    config = over_all_devices(config)
  task = ebm_digits.build(config, ds.info)
  run_dir = os.path.join(WORKDIR, f"ch07_ebm_digits_{variant}")
  return task, loop.fit(task, config, ds, run_dir, experiment="ebm_digits"), run_dir


def pictures(task, state, run_dir):
  show(task.sample(state, jax.random.key(0), 64), "Langevin samples", levels=levels)
  show_png(os.path.join(run_dir, "chain.png"), "Langevin chains from noise (left to right)")
  show_png(os.path.join(run_dir, "chain_energy.png"), "energy along the chains")
  show_png(os.path.join(run_dir, "buffer.png"), "the replay buffer")


# %% [markdown]
# ## Training (tiny)
# Held-out metrics: mean energy of test digits vs uniform noise, and the share of (test, noise)
# pairs where the test digit has the lower energy (`rank_vs_noise`).

# %%
task, state, run_dir = train("tiny")
print("held-out:", last_test_metrics(run_dir))
pictures(task, state, run_dir)

# %%
rows = {"EBM + Langevin": harness_metrics(task, state, ds, num_samples=64),
        **baselines(ds, num_samples=64)}
display(Markdown(harness.markdown_table(rows)))

# %% [markdown]
# ## Full size, on every device
# README (2 CPU cores): FD 14.4 after 1500 steps, test energy below noise on 100% of pairs.

# %%
if FULL:
  task, state, run_dir = train("default")
  print("held-out:", last_test_metrics(run_dir))
  pictures(task, state, run_dir)
  display(Markdown(harness.markdown_table(
      {"EBM + Langevin": harness_metrics(task, state, ds, num_samples=359, full=True),
       **baselines(ds, num_samples=359, full=True)})))
else:
  print("FULL is off: set GDL_NOTEBOOK_FULL=1 (or run on a TPU / GPU) for the full-size run.")
