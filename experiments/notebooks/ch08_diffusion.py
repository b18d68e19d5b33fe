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
# # Chapter 8: diffusion models (DDPM / DDIM)
#
# A U-Net denoiser with v-prediction (`experiments/ddpm_digits.py`), sampled with DDIM or the
# ancestral DDPM chain. The sampler is part of the config, not of the weights: the same trained
# state is sampled with another `model.sampler_steps` / `model.sampler_eta` by building a second
# Task from the changed config (what `gdl-jax evaluate RUN --config.model.sampler_eta=0.0` does).

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
import dataclasses

from experiments import ddpm_digits

ds = data.load("digits")
levels = ds.info.levels


def train(variant):
  config = ddpm_digits.get_config(variant)
  if variant != "tiny":
    config = over_all_devices(config)
  task = ddpm_digits.build(config, ds.info)
  run_dir = os.path.join(WORKDIR, f"ch08_ddpm_digits_{variant}")
  return config, task, loop.fit(task, config, ds, run_dir, experiment="ddpm_digits"), run_dir


def sampler_variants(config, settings):
  """{label: Task} for the same weights under other sampler settings [(steps, eta), ...] (their
  log_prob dropped: the bound does not depend on the sampler)."""
  out = {}
  for steps, eta in settings:
    c = config.copy_and_resolve_references()
    c.model.sampler_steps, c.model.sampler_eta = steps, eta
    out[f"DDIM-{steps} eta={eta}"] = dataclasses.replace(ddpm_digits.build(c, ds.info), log_prob=None)
  return out


# %% [markdown]
# ## Training (tiny)
# `write_artifacts` draws the reverse trajectory x_t and the predicted x_0 along it.

# %%
config, task, state, run_dir = train("tiny")
print("held-out:", last_test_metrics(run_dir))
show(task.sample(state, jax.random.key(0), 64), "DDIM samples", levels=levels)
show_png(os.path.join(run_dir, "trajectory.png"), "x_t from noise (left) to x_0 (right)")
show_png(os.path.join(run_dir, "trajectory_x0.png"), "the predicted x_0 along the way")

# %% [markdown]
# ## Other samplers of the same weights, and the baselines
# `task.log_prob` is the variational bound of a `model.vlb_chain_steps`-step chain (nats).

# %%
rows = {"DDPM U-Net (config's sampler)": harness_metrics(task, state, ds, num_samples=64)}
for label, t in sampler_variants(config, [(10, 0.0)]).items():
  show(t.sample(state, jax.random.key(0), 64), label, levels=levels)
  rows[label] = harness_metrics(t, state, ds, num_samples=64)
rows.update(baselines(ds, num_samples=64))
display(Markdown(harness.markdown_table(rows)))

# %% [markdown]
# ## Full size, on every device
# README (2 CPU cores, 2500 steps): DDIM-50 eta=1 FD 3.97 (the best on digits), bound 2.405
# bits/dim; the same weights with DDIM-50 eta=0 5.91, DDIM-1000 eta=0 6.01.

# %%
if FULL:
  config, task, state, run_dir = train("default")
  full_rows = {"DDPM U-Net, DDIM-50 eta=1": harness_metrics(task, state, ds, num_samples=359, full=True)}
  for label, t in sampler_variants(config, [(50, 0.0), (1000, 0.0)]).items():
    full_rows[label] = harness_metrics(t, state, ds, num_samples=359, full=True)
  show(task.sample(state, jax.random.key(0), 64), "DDIM-50 samples", levels=levels)
  show_png(os.path.join(run_dir, "trajectory_x0.png"), "the predicted x_0 along the way")
  full_rows.update(baselines(ds, num_samples=359, full=True))
  display(Markdown(harness.markdown_table(full_rows)))
else:
  print("FULL is off: set GDL_NOTEBOOK_FULL=1 (or run on a TPU / GPU) for the full-size run.")
