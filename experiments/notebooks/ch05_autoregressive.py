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
# # Chapter 5: autoregressive models (PixelCNN, GPT)
#
# A gated PixelCNN with a discretized logistic-mixture head (`experiments/pixelcnn_digits.py`)
# and a GPT over the raster sequence of pixels (`experiments/gpt_digits.py`) on the 8x8 digits.
# Both give the exact likelihood of a held-out image, so bits/dim compares them directly with
# the baselines; samples are drawn one pixel (token) at a time.

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
                              last_test_metrics, over_all_devices, show, show_curves,
                              show_png)
from gdl_jax.train import loop

print(f"jax {jax.__version__}: {jax.device_count()} {jax.default_backend()} device(s); FULL={FULL}")

# %%
from experiments import gpt_digits, pixelcnn_digits

ds = data.load("digits")
levels = ds.info.levels
MODELS = {"gated PixelCNN": pixelcnn_digits, "GPT on pixels": gpt_digits}


def train(module, variant):
  config = module.get_config(variant)
  if variant != "tiny":
    config = over_all_devices(config)
  task = module.build(config, ds.info)
  name = module.__name__.split(".")[-1]
  run_dir = os.path.join(WORKDIR, f"ch05_{name}_{variant}")
  return task, loop.fit(task, config, ds, run_dir, experiment=name), run_dir


# %% [markdown]
# ## Training (tiny) and samples
# `task.log_prob(state, batch, key)` is the exact log-likelihood in nats per image;
# `task.sample` draws 64 pixels in raster order (PixelCNN: a masked-conv pass per pixel;
# GPT: KV-cached decoding).

# %%
trained, run_dirs = {}, {}
for title, module in MODELS.items():
  task, state, run_dir = train(module, "tiny")
  trained[title], run_dirs[title] = (task, state), run_dir
  lp = np.asarray(task.log_prob(state, {k: v[:8] for k, v in ds.test.items()}, jax.random.key(0)))
  print(f"{title}: held-out {last_test_metrics(run_dir)}; log p(x) of 8 test digits: {lp.round(1)}")
  show(task.sample(state, jax.random.key(1), 64), f"{title}: samples", levels=levels)

# %% [markdown]
# The loss each model minimises is its negative log-likelihood (nats per image): the training
# curves, from each run's metrics.jsonl.

# %%
show_curves(run_dirs, "loss")

# %% [markdown]
# ## Metrics next to the baselines

# %%
rows = {title: harness_metrics(task, state, ds, num_samples=64) for title, (task, state) in trained.items()}
rows.update(baselines(ds, num_samples=64))
display(Markdown(harness.markdown_table(rows)))

# %% [markdown]
# ## Full size, on every device
# README (2 CPU cores): PixelCNN 1.771 bits/dim after 1200 steps, GPT 1.870 after 900; the
# mixture of categoricals 2.217.

# %%
if FULL:
  full_rows = {}
  for title, module in MODELS.items():
    task, state, _ = train(module, "default")
    full_rows[title] = harness_metrics(task, state, ds, num_samples=359, full=True)
    show(task.sample(state, jax.random.key(1), 64), f"{title}: samples", levels=levels)
  full_rows.update(baselines(ds, num_samples=359, full=True))
  display(Markdown(harness.markdown_table(full_rows)))
else:
  print("FULL is off: set GDL_NOTEBOOK_FULL=1 (or run on a TPU / GPU) for the full-size run.")
