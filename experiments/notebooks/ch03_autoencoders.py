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
# # Chapter 3: autoencoders and variational autoencoders
#
# The deterministic autoencoder with a 2-D code (`experiments/ae_digits.py`) and the VAE with a
# discretized-logistic decoder (`experiments/vae_digits.py`) on the 8x8 digits: reconstructions,
# the latent space, samples from the prior, and the held-out IWAE bound in bits/dim next to the
# classical baselines.

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
from experiments import ae_digits, vae_digits
from gdl_jax.samplers import vae as vae_samplers

ds = data.load("digits")
levels = ds.info.levels


def latent_scatter(config, state, title):
  """Posterior means (VAE) / codes (AE) of the test digits, projected to 2-D, by label."""
  model = vae_digits.make_model(config.model, ds.info)   # the Linen module the Task trains
  z = np.asarray(jax.jit(lambda p, x: vae_samplers.encode_mean(model, p, x))(
      state.eval_params(), ds.test["image"]))                     # [N, latent_dim]
  pts, how = vae_samplers.project_2d(z)
  plt.figure(figsize=(5, 4))
  plt.scatter(pts[:, 0], pts[:, 1], c=ds.test["label"], cmap="tab10", s=6)
  plt.colorbar(label="digit")
  plt.title(f"{title}: {z.shape[1]}-D latents of the test set ({how})")
  plt.show()


# %% [markdown]
# ## The autoencoder (tiny)
# `fit` trains in a run directory and, at the end, calls the Task's `write_artifacts`:
# reconstructions, the code scatter, latent arithmetic and morphs as PNGs beside the checkpoints.

# %%
ae_config = ae_digits.get_config("tiny")
ae_task = ae_digits.build(ae_config, ds.info)
ae_dir = os.path.join(WORKDIR, "ch03_ae_tiny")
ae_state = loop.fit(ae_task, ae_config, ds, ae_dir, experiment="ae_digits")
print("held-out:", last_test_metrics(ae_dir))
show_png(os.path.join(ae_dir, "reconstructions.png"), "test digits (top), reconstructions (bottom)")
latent_scatter(ae_config, ae_state, "autoencoder")

# %% [markdown]
# ## The VAE (tiny)
# The same calls; the VAE has a prior to sample from and a likelihood bound (`task.log_prob`:
# IWAE with `model.eval_k` importance samples, nats per image).

# %%
vae_config = vae_digits.get_config("tiny")
vae_task = vae_digits.build(vae_config, ds.info)
vae_dir = os.path.join(WORKDIR, "ch03_vae_tiny")
vae_state = loop.fit(vae_task, vae_config, ds, vae_dir, experiment="vae_digits")
print("held-out:", last_test_metrics(vae_dir))
show(vae_task.sample(vae_state, jax.random.key(0), 64), "VAE: samples from the prior (decoder mean)",
     levels=levels)
show(vae_task.sample(vae_state, jax.random.key(0), 64, "sample"), "VAE: samples with pixel noise",
     levels=levels)
latent_scatter(vae_config, vae_state, "VAE")
show_png(os.path.join(vae_dir, "morph.png"), "morphing between test digits (decoded latent lines)")

# %% [markdown]
# ## Metrics next to the baselines

# %%
rows = {"autoencoder (samples from a Gaussian fit of the codes)":
        harness_metrics(ae_task, ae_state, ds, num_samples=64),
        "VAE": harness_metrics(vae_task, vae_state, ds, num_samples=64),
        **baselines(ds, num_samples=64)}
display(Markdown(harness.markdown_table(rows)))

# %% [markdown]
# ## Full size, on every device
# The default configs (README, 2 CPU cores: VAE 1.788 bits/dim IWAE k=64, FD 8.04 after 2000
# steps), plus the 2-D-latent VAE for the book's latent grid.

# %%
if FULL:
  full_rows = {}
  for name, module, variant in (("VAE", vae_digits, "default"), ("VAE, 2-D latent", vae_digits, "latent2d"),
                                ("autoencoder", ae_digits, "default")):
    cfg = over_all_devices(module.get_config(variant))
    full_dir = os.path.join(WORKDIR, f"ch03_{module.__name__.split('.')[-1]}_{variant}")
    full_task = module.build(cfg, ds.info)
    full_state = loop.fit(full_task, cfg, ds, full_dir, experiment=module.__name__.split(".")[-1])
    full_rows[name] = harness_metrics(full_task, full_state, ds, num_samples=359, full=True)
    show(full_task.sample(full_state, jax.random.key(0), 64), f"{name}: samples", levels=levels)
    latent_scatter(cfg, full_state, name)
  show_png(os.path.join(WORKDIR, "ch03_vae_digits_latent2d", "latent_grid.png"), "2-D latent grid")
  full_rows.update(baselines(ds, num_samples=359, full=True))
  display(Markdown(harness.markdown_table(full_rows)))
else:
  print("FULL is off: set GDL_NOTEBOOK_FULL=1 (or run on a TPU / GPU) for the full-size run.")
