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
