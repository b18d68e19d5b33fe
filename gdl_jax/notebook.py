"""Helpers the chapter notebooks (experiments/notebooks/ch*.py) share: the FULL / WORKDIR settings,
inline sample grids and figures, the harness's two rules for a trained Task, the baseline table,
and a config's batch rounded to the device mesh. Needs matplotlib (`pip install -e ".[notebooks]"`).
Call `gdl_jax.runtime.apply_xla_defaults()` before importing this module (it imports jax)."""

import os

import jax
import matplotlib.pyplot as plt
import numpy as np

from gdl_jax import sharding
from gdl_jax.evaluation import classifier, harness
from gdl_jax.evaluation.grids import make_grid
from gdl_jax.train import loop

# FULL: run the full-size section (default: on an accelerator); GDL_NOTEBOOK_FULL=0/1 overrides.
FULL = {"0": False, "1": True}.get(os.environ.get("GDL_NOTEBOOK_FULL", ""),
                                   jax.default_backend() != "cpu")
WORKDIR = os.environ.get("GDL_NOTEBOOK_WORKDIR", "runs/notebooks")  # re-running resumes a run


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
  rows = [r for r in loop.read_metrics(workdir) if r["split"] in ("test", "valid")]
  return rows[-1] if rows else {}


def show_curves(run_dirs, metric="loss", size=(7.0, 3.5)):
  """Training curves, inline: `metric` against the step for each run ({title: run_dir}), its
  training rows as a line and its held-out rows (validation squares, test dots) as points, read from each run's metrics.jsonl."""
  plt.figure(figsize=size)
  for title, workdir in run_dirs.items():
    rows = [r for r in loop.read_metrics(workdir) if metric in r]
    if not rows:
      raise ValueError(f"{workdir}/metrics.jsonl has no {metric!r}; its keys: "
                       f"{sorted({k for r in loop.read_metrics(workdir) for k in r})}")
    for split, style in (("train", "-"), ("valid", "s"), ("test", "o")):
      pts = [(r["step"], r[metric]) for r in rows if r["split"] == split]
      if pts:
        plt.plot(*zip(*pts), style, label=f"{title} ({split})")
  plt.xlabel("step")
  plt.ylabel(metric)
  plt.legend()
  plt.title(f"{metric} during training")
  plt.show()
