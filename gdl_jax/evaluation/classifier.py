"""The harness's feature network: the Chapter 2 CNN trained once per dataset and cached.

    feats = feature_fn("digits")(images_uint8)   # [N, F] penultimate CNN features

The first call trains the classifier (a few minutes on CPU for digits) into the cache directory
($GDL_CACHE_DIR/classifiers/<dataset>, default ~/.cache/gdl_jax/...); later calls restore it.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import optax

from gdl_jax.configs import base_config, shrink

from gdl_jax.data.info import DatasetInfo
from gdl_jax.models.classifiers import CNN, MLP, classifier_loss, predict
from gdl_jax.optim import make_optimizer
from gdl_jax.train import Task, TrainState, make_train_step

_DEFAULT_STEPS = {"digits": 1500, "fashion_mnist": 6000}


def classifier_config(variant: str = "default", dataset: str = "digits"):
  c = base_config(dataset, steps=_DEFAULT_STEPS.get(dataset, 4000), batch_size=128, lr=1e-3,
                  schedule="cosine", warmup_steps=100)
  c.model.arch = "cnn"
  c.model.channels = (32, 32, 64, 64)
  c.model.hidden = (200, 150)
  c.model.dense = 128
  c.model.dropout = 0.5
  c.eval_batches = 100
  if variant == "tiny":
    shrink(c)
    c.model.channels = (4, 4, 8, 8)
    c.model.hidden = (16,)
    c.model.dense = 16
  elif variant == "mlp":
    c.model.arch = "mlp"
    c.model.dropout = 0.25
  elif variant != "default":
    raise ValueError(f"unknown variant {variant!r}; use 'default', 'mlp' or 'tiny'.")
  return c


def make_model(config, info: DatasetInfo):
  m = config.model
  if m.arch == "cnn":
    return CNN(info.num_classes, channels=tuple(m.channels), dense=m.dense, dropout=m.dropout)
  if m.arch == "mlp":
    return MLP(info.num_classes, hidden=tuple(m.hidden), dropout=min(m.dropout, 0.25))
  raise ValueError(f"model.arch={m.arch!r} is unknown; use 'cnn' or 'mlp'.")


def classifier_task(config, info: DatasetInfo) -> Task:
  if info.kind != "image" or not info.num_classes:
    raise ValueError(f"the classifier needs a labelled image dataset; {info.name!r} is {info.kind}.")
  model = make_model(config, info)
  optimizer = make_optimizer(config.optimizer, config.steps)
  step = make_train_step(classifier_loss(model, info.levels), optimizer)

  def init(key, batch):
    variables = model.init(key, jnp.zeros(batch["image"].shape, jnp.float32), train=False)
    params = variables.pop("params")
    return TrainState.create(params, optimizer, extra=dict(variables))

  @jax.jit
  def eval_step(state, batch, key):
    del key
    out = predict(model, {"params": state.params, **state.extra}, batch["image"], info.levels)
    loss = optax.softmax_cross_entropy_with_integer_labels(out.logits, batch["label"]).mean()
    return {"loss": loss, "accuracy": (out.logits.argmax(-1) == batch["label"]).mean()}

  @jax.jit
  def features(state, images):
    return predict(model, {"params": state.params, **state.extra}, images, info.levels).features

  return Task(init=init, step=step, eval_step=eval_step, features=features)


def classifier_name(info: DatasetInfo) -> str:
  """The dataset whose classifier judges `info`'s images: an image dataset derived from another
  with the same images (e.g. fashion_mnist_captions, `info.base`) shares its base's classifier."""
  return info.base if info.kind == "image" and info.base else info.name


def cache_dir() -> str:
  import os
  return os.environ.get("GDL_CACHE_DIR") or os.path.expanduser("~/.cache/gdl_jax")


_RESTORED: dict = {}  # (directory, dataset, variant) -> (task, state), per process


def trained_classifier(dataset, *, directory: str | None = None, variant: str = "default",
                       progress: bool | None = None):
  """(task, state) of the dataset's CNN, trained into the cache on first use (saying so on stderr,
  with a progress bar, unless progress=False or gdl_jax.progress is quiet; None: the latter)."""
  import json
  import os
  from gdl_jax import progress as progress_lib
  from gdl_jax.train import loop
  if progress is None:
    progress = progress_lib.enabled()
  name = classifier_name(dataset.info)
  directory = directory or os.path.join(cache_dir(), "classifiers", f"{name}_{variant}")
  key = (os.path.abspath(directory), name, variant)
  if key in _RESTORED:  # feature_fn and label_fn of one evaluation: restore the checkpoint once
    return _RESTORED[key]
  config = classifier_config(variant, name)
  task = classifier_task(config, dataset.info)
  done = os.path.join(directory, "done.json")
  said = False
  while True:
    if os.path.exists(done):
      state, _ = loop.latest_state(task, config, dataset, directory)
      _RESTORED[key] = task, state
      return task, state
    if progress and said is False:
      said = True
      print(f"training the {dataset.info.name} feature classifier for the Fréchet distance "
            f"({config.steps} steps, once; cached in {directory})", file=sys.stderr, flush=True)
    try:
      state = loop.fit(task, config, dataset, directory, experiment="classifier",
                       progress=progress, write_samples=False)
      break
    except loop.RunDirBusyError:  # another process (e.g. a parallel test) is training it: wait
      import time
      if progress and said is not None:
        said = None
        print(f"another process is training it in {directory}; waiting for it", file=sys.stderr,
              flush=True)
      time.sleep(2.0)
  ev = loop.evaluate_heldout(task, state, dataset, _full_test(config, dataset),
                             loop.sharding.make_mesh(), jax.random.key(0))
  from gdl_jax.train import rundir
  rundir.atomic_write(done, json.dumps({"test_" + k: v for k, v in ev.items()}))
  return task, state


def _full_test(config, dataset):
  c = config.copy_and_resolve_references()
  c.eval_batches = dataset.num_examples("test")  # clipped to whole batches by evaluate_heldout
  return c


def feature_fn(dataset, **kw):
  """images (integer levels, NHWC) -> [N, F] features of the dataset's cached CNN, batched."""
  import numpy as np
  task, state = trained_classifier(dataset, **kw)

  def fn(images, batch_size: int = 500):
    out = [np.asarray(task.features(state, jnp.asarray(images[i:i + batch_size])))
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out)

  return fn


def label_fn(dataset, *, variant: str = "default", **kw):
  """images (integer levels, NHWC) -> [N] labels predicted by the dataset's cached CNN, batched."""
  import numpy as np
  _, state = trained_classifier(dataset, variant=variant, **kw)
  model = make_model(classifier_config(variant, classifier_name(dataset.info)), dataset.info)
  variables = {"params": state.params, **state.extra}
  levels = dataset.info.levels
  logits = jax.jit(lambda images: predict(model, variables, images, levels).logits)

  def fn(images, batch_size: int = 500):
    return np.concatenate([np.asarray(logits(jnp.asarray(images[i:i + batch_size]))).argmax(-1)
                           for i in range(0, len(images), batch_size)])

  return fn
