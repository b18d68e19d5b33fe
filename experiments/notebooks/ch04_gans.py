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
# # Chapter 4: generative adversarial networks
#
# DCGAN (`experiments/dcgan_digits.py`), the conditional GAN (`experiments/cgan_digits.py`), and
# in the full-size section the WGAN with weight clipping and WGAN-GP, all through the project's
# one two-player step (`gdl_jax.objectives.gan_step`). GANs have no likelihood: the harness
# scores them by the classifier Fréchet distance and the novelty ratio; the conditional GAN also
# by how often the classifier sees the class that was asked for.

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

import jax.numpy as jnp

ds = data.load("digits")
levels = ds.info.levels


def train_gan(name, variant):
  """experiments/<name>.py's Task trained by loop.fit; (task, state, run directory)."""
  module = importlib.import_module(f"experiments.{name}")
  config = module.get_config(variant, "digits")
  if variant != "tiny":
    config = over_all_devices(config)
  task = module.build(config, ds.info)
  run_dir = os.path.join(WORKDIR, f"ch04_{name}_{variant}")
  state = loop.fit(task, config, ds, run_dir, experiment=name)
  return task, state, run_dir


# %% [markdown]
# ## DCGAN (tiny)
# The loop writes a grid of one fixed latent batch every `config.sample_every` steps
# (`progress/*.png` and `progress.gif`); `write_artifacts` adds latent interpolations.

# %%
dcgan_task, dcgan_state, dcgan_dir = train_gan("dcgan_digits", "tiny")
print("held-out critic scores:", last_test_metrics(dcgan_dir))
show(dcgan_task.sample(dcgan_state, jax.random.key(0), 64), "DCGAN samples (EMA generator)",
     levels=levels)
show_png(os.path.join(dcgan_dir, "interpolations.png"), "straight lines between two latents")

# %% [markdown]
# ## Conditional GAN (tiny)
# `task.sample_labeled(state, key, labels)` draws one image of each requested class.

# %%
cgan_task, cgan_state, cgan_dir = train_gan("cgan_digits", "tiny")
labels = jnp.repeat(jnp.arange(10), 6)
show(cgan_task.sample_labeled(cgan_state, jax.random.key(0), labels), "cGAN: row k asks for digit k",
     levels=levels, nrow=6)


# %% [markdown]
# ## Metrics next to the baselines

# %%
def conditional_accuracy(task, state, full, n=200):
  """How often the Chapter 2 classifier predicts the class the generator was asked for."""
  from gdl_jax.evaluation.classifier import label_fn
  asked = np.arange(n) % ds.info.num_classes
  images = np.asarray(task.sample_labeled(state, jax.random.key(3), jnp.asarray(asked)))
  predicted = label_fn(ds, variant="default" if full else "tiny")(images)
  return float(np.mean(predicted == asked))


rows = {"DCGAN": harness_metrics(dcgan_task, dcgan_state, ds, num_samples=64),
        "conditional GAN": {**harness_metrics(cgan_task, cgan_state, ds, num_samples=64),
                            "conditional_accuracy": conditional_accuracy(cgan_task, cgan_state, False)},
        **baselines(ds, num_samples=64)}
display(Markdown(harness.markdown_table(rows)))

# %% [markdown]
# ## Full size, on every device
# README (2 CPU cores): DCGAN FD 9.73 after 2000 steps, WGAN 14.8, WGAN-GP 14.3, cGAN 5.24 with
# 94.9% of its samples classified as asked.

# %%
if FULL:
  full_rows = {}
  for name in ("dcgan_digits", "wgan_digits", "wgan_gp_fashion_mnist", "cgan_digits"):
    task, state, run_dir = train_gan(name, "default")
    full_rows[name] = harness_metrics(task, state, ds, num_samples=359, full=True)
    if task.sample_labeled is not None:
      full_rows[name]["conditional_accuracy"] = conditional_accuracy(task, state, True)
    show(task.sample(state, jax.random.key(0), 64), f"{name} samples", levels=levels)
  full_rows.update(baselines(ds, num_samples=359, full=True))
  display(Markdown(harness.markdown_table(full_rows)))
else:
  print("FULL is off: set GDL_NOTEBOOK_FULL=1 (or run on a TPU / GPU) for the full-size run.")
