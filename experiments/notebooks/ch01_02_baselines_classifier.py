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
# # Chapters 1–2: classical baselines and the CNN classifier
#
# Chapter 1's generative models without deep learning (independent categorical pixels, a mixture of
# them fitted by EM, scikit-learn's GaussianMixture and KernelDensity) and Chapter 2's classifier
# (`experiments/classifier.py`), which is also the evaluation harness's feature network: every
# other notebook scores its samples by the Fréchet distance in this CNN's penultimate features.

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

# %% [markdown]
# ## Data
# `data.load` gives both splits in memory: the 8x8 digits as integer levels 0..16, with labels.

# %%
ds = data.load("digits")
print(ds.info)
print({split: {k: v.shape for k, v in getattr(ds, split).items()} for split in ("train", "test")})
show(ds.train["image"][:64], "training digits", levels=ds.info.levels)

# %% [markdown]
# ## Chapter 1: generative models of pixels
# Independent categorical pixels (closed form) and a mixture of them (EM) are pure functions in
# `gdl_jax.models.baselines`: fit -> params, log_prob(params, x) in nats, sample(params, key, n).

# %%
from gdl_jax.models import baselines as B

levels = ds.info.levels
indep = B.fit_independent(ds.train["image"], levels)
mix, history = B.fit_mixture(ds.train["image"], levels, k=10, iters=30 if FULL else 10,
                             key=jax.random.key(0))
nll = {name: -float(np.mean(lp(p, ds.test["image"])))
       for name, lp, p in (("independent", B.independent_log_prob, indep),
                           ("mixture of 10", B.mixture_log_prob, mix))}
print("held-out nats per image:", nll)
plt.plot(np.asarray(history))
plt.xlabel("EM iteration")
plt.ylabel("MAP objective")
plt.title("EM never decreases its objective")
plt.show()
show(B.independent_sample(indep, jax.random.key(1), 32), "independent pixels: samples", levels=levels)
show(B.mixture_sample(mix, jax.random.key(2), 32), "mixture of 10: samples", levels=levels)
# The mixture's components: the expected level of every pixel under each component.
means = np.sum(np.exp(np.asarray(mix["log_probs"])) * np.arange(levels), axis=-1)  # [K, H, W, C]
show(means / (levels - 1) * 2 - 1, "mixture components (mean image)", nrow=10)

# %% [markdown]
# ## Chapter 2: the CNN classifier through `fit`
# `get_config(variant, dataset)` + `build(config, info)` give a `Task` (pure init / step /
# eval_step / features); `loop.fit` trains it in a run directory (orbax checkpoints,
# metrics.jsonl, TensorBoard events) and returns the final `TrainState`.

# %%
from experiments import classifier as classifier_experiment

config = classifier_experiment.get_config("tiny", "digits")
task = classifier_experiment.build(config, ds.info)
run_dir = os.path.join(WORKDIR, "ch02_classifier_tiny")
state = loop.fit(task, config, ds, run_dir, experiment="classifier")
print("held-out:", last_test_metrics(run_dir))

# %% [markdown]
# What `fit` does at every step, by hand: one mesh over all devices, the batch sharded on its
# batch axis, the parameters replicated, one jitted and donated optax update.

# %%
mesh = sharding.make_mesh()
batch = data.batch_at(ds.train, 0, config.batch_size, seed=0)      # a function of (seed, step)
s = jax.jit(task.init, out_shardings=sharding.replicated(mesh))(jax.random.key(0), batch)
s, m = task.step(s, sharding.shard_batch(batch, mesh), jax.random.key(1))
print(f"{mesh.devices.size} device(s); step {int(s.step)}: {sharding.fetch(m)}")

# %%
images = ds.test["image"][:16]
feats = np.asarray(task.features(state, images))                   # [16, F] penultimate features
print("features:", feats.shape)
from gdl_jax.evaluation.classifier import make_model
from gdl_jax.models.classifiers import predict

model = make_model(config, ds.info)
pred = np.asarray(predict(model, {"params": state.params, **state.extra}, images, levels).logits).argmax(-1)
show(images, f"predicted {pred.tolist()}\ntrue      {ds.test['label'][:16].tolist()}", levels=levels)

# %% [markdown]
# ## The baseline table (the harness)
# All four baselines fitted on the training split and scored by the same harness as every model:
# bits/dim, the Fréchet distance in the classifier's features, novelty ratio and exact copies.
# (The tiny run uses the two categorical models and the tiny classifier's features.)

# %%
rows = baselines(ds, num_samples=64)
display(Markdown(harness.markdown_table(rows)))

# %% [markdown]
# ## Full size, on every device
# The default CNN and MLP (README: 99.16% / 98.33% test accuracy on digits) and all four
# baselines, with the default classifier's features and all 359 test images.

# %%
if FULL:
  accuracy = {}
  for variant in ("default", "mlp"):
    cfg = over_all_devices(classifier_experiment.get_config(variant, "digits"))
    full_dir = os.path.join(WORKDIR, f"ch02_classifier_{variant}")
    loop.fit(classifier_experiment.build(cfg, ds.info), cfg, ds, full_dir, experiment="classifier")
    accuracy[variant] = last_test_metrics(full_dir).get("accuracy")
  print("test accuracy:", accuracy)
  display(Markdown(harness.markdown_table(baselines(ds, num_samples=359, full=True))))
else:
  print("FULL is off: set GDL_NOTEBOOK_FULL=1 (or run on a TPU / GPU) for the full-size run.")
