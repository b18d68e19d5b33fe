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
# # Chapter 6: normalizing flows (RealNVP)
#
# RealNVP on the two moons (`experiments/realnvp_moons.py`: the density the flow learns, next to a
# Gaussian mixture's) and on the 8x8 digits (`experiments/realnvp_digits.py`: multi-scale
# checkerboard / channel couplings on dequantized pixels, an exact bound in bits/dim).

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
import json

from experiments import realnvp_digits, realnvp_moons


def train(module, ds, variant):
  config = module.get_config(variant)
  if variant != "tiny":
    config = over_all_devices(config)
  task = module.build(config, ds.info)
  name = module.__name__.split(".")[-1]
  run_dir = os.path.join(WORKDIR, f"ch06_{name}_{variant}")
  return task, loop.fit(task, config, ds, run_dir, experiment=name), run_dir


def moons_pictures(task, state, run_dir):
  """Samples over the held-out points, and the flow's density vs a GaussianMixture's."""
  x = moons.test["x"]
  y = np.asarray(task.sample(state, jax.random.key(0), 1000))           # [1000, 2] points
  plt.figure(figsize=(5, 4))
  plt.scatter(x[:, 0], x[:, 1], s=3, label="held-out")
  plt.scatter(y[:, 0], y[:, 1], s=3, label="RealNVP samples")
  plt.legend()
  plt.show()
  print(json.load(open(os.path.join(run_dir, "comparison.json"))))
  show_png(os.path.join(run_dir, "density.png"), size=4.5)
  show_png(os.path.join(run_dir, "gmm_density.png"), size=4.5)


# %% [markdown]
# ## Two moons (tiny)
# `task.log_prob` is the exact change-of-variables log-density in nats; `write_artifacts` draws
# it over the plane and compares it with scikit-learn's GaussianMixture on the same split.

# %%
moons = data.load("moons")
moons_task, moons_state, moons_dir = train(realnvp_moons, moons, "tiny")
print("held-out:", last_test_metrics(moons_dir))
moons_pictures(moons_task, moons_state, moons_dir)

# %% [markdown]
# ## Digits (tiny)
# `task.sample(state, key, n, temperature)`: the base Gaussian scaled by a temperature.

# %%
ds = data.load("digits")
levels = ds.info.levels
flow_task, flow_state, flow_dir = train(realnvp_digits, ds, "tiny")
print("held-out:", last_test_metrics(flow_dir))
for t in (1.0, 0.7):
  show(flow_task.sample(flow_state, jax.random.key(1), 64, t), f"RealNVP samples, T={t}",
       levels=levels)

# %%
rows = {"RealNVP (dequantized)": harness_metrics(flow_task, flow_state, ds, num_samples=64),
        **baselines(ds, num_samples=64)}
display(Markdown(harness.markdown_table(rows)))

# %% [markdown]
# ## Full size, on every device
# README (2 CPU cores): moons -0.379 nats held-out vs -0.459 for GaussianMixture(8); digits
# 2.164 bits/dim, FD 10.7 after 2500 steps.

# %%
if FULL:
  task, state, run_dir = train(realnvp_moons, moons, "default")
  moons_pictures(task, state, run_dir)
  task, state, _ = train(realnvp_digits, ds, "default")
  show(task.sample(state, jax.random.key(1), 64, 0.7), "RealNVP samples, T=0.7", levels=levels)
  display(Markdown(harness.markdown_table(
      {"RealNVP (dequantized)": harness_metrics(task, state, ds, num_samples=359, full=True),
       **baselines(ds, num_samples=359, full=True)})))
else:
  print("FULL is off: set GDL_NOTEBOOK_FULL=1 (or run on a TPU / GPU) for the full-size run.")
