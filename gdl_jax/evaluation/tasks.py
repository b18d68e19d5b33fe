"""The harness applied to a trained Task: what `gdl-jax evaluate RUN` and the benchmarks call."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gdl_jax import progress, sharding


def evaluate_task(task, state, dataset, config, keys, *, num_samples: int | None = None,
                  use_features: bool = True, use_log_prob: bool = True,
                  use_samples: bool = True, use_vgg: bool | None = None) -> dict:
  """Held-out bits/dim (if task.log_prob), classifier Fréchet distance and novelty (if task.sample),
  translation metrics (if task.translate, on two unpaired domains: gdl_jax.evaluation.translation),
  the piano-roll music metrics (samples of a "pianoroll" dataset: gdl_jax.evaluation.pianoroll),
  and the family's own (if task.metrics: CLIP's zero-shot accuracy, text-to-image prompt fidelity).

  use_vgg: also the Fréchet distance in ImageNet VGG16 features ("fd_vgg16"). None (default): for
  RGB image sets it applies to (`vgg_fd_applies`: >= 16x16) when the `perceptual` extra is
  installed (grey sets such as Fashion-MNIST have their own classifier's FD; VGG16 on 2000 images
  costs minutes on a CPU, so they take it only when asked); True: required for any image set it
  applies to (1 or 3 channels) (raises with the install command
  when the extra is missing); False: never. use_features=False skips it too.
  """
  from gdl_jax.evaluation import harness
  n = int(num_samples or min(1000, dataset.num_examples("test")))
  mesh = sharding.make_mesh()

  sample_fn = None
  if task.sample is not None and use_samples:
    def sample_fn(key, num):
      return np.asarray(jax.device_get(task.sample(state, key, num)))

  log_prob_fn = None
  if task.log_prob is not None and use_log_prob:
    lp = task.log_prob

    def log_prob_fn(batch, key):
      ndev = mesh.devices.size
      size = len(next(iter(batch.values())))
      keep = size // ndev * ndev
      if keep == 0:
        return np.asarray(jax.device_get(lp(state, batch, key)))
      out = [np.asarray(jax.device_get(lp(state, sharding.shard_batch(
          {k: v[:keep] for k, v in batch.items()}, mesh), key)))]
      if keep < size:
        out.append(np.asarray(jax.device_get(lp(state, {k: v[keep:] for k, v in batch.items()}, key))))
      return np.concatenate(out)

  feature_fn = None
  if use_features and sample_fn is not None and dataset.info.kind == "image" and dataset.info.num_classes:
    from gdl_jax.evaluation.classifier import feature_fn as make_feature_fn
    feature_fn = make_feature_fn(dataset)

  extra = {}
  if use_features and sample_fn is not None and use_vgg is not False:
    from gdl_jax.evaluation import perceptual
    from gdl_jax.nn import vgg
    applies = perceptual.vgg_fd_applies(dataset.info)
    if use_vgg and not applies:
      raise ValueError(f"the VGG16 Fréchet distance needs an image dataset of at least "
                       f"{perceptual.VGG_FD_MIN_SIDE}x{perceptual.VGG_FD_MIN_SIDE} pixels with 1 or 3 "
                       f"channels; {dataset.info.name!r} is {dataset.info.kind} {dataset.info.shape}.")
    if applies and (use_vgg or (dataset.info.shape[-1] == 3 and vgg.available())):
      extra[perceptual.VGG_FD_KEY] = perceptual.vgg16_feature_fn(dataset.info.levels)

  rolls = None
  if sample_fn is not None and dataset.info.kind == "pianoroll":   # MuseGAN: the music metrics too
    k_s = jax.random.split(keys["sample"], 4)[1]                   # the harness's own sample key
    with progress.ticker(f"drawing {n} piano rolls"):
      rolls = sample_fn(k_s, n)
  out = harness.evaluate(dataset, sample_fn=sample_fn if rolls is None else None,
                         samples=rolls, log_prob_fn=log_prob_fn,
                         feature_fn=feature_fn, num_samples=n, key=keys["sample"],
                         extra_feature_fns=extra)
  if rolls is not None:
    from gdl_jax.evaluation.pianoroll import pianoroll_metrics
    with progress.ticker("music metrics (range, in-key, pitch classes)"):
      out.update(pianoroll_metrics(rolls, dataset))
  if feature_fn is not None and task.sample_labeled is not None:
    # class-conditional models: does the classifier see the class that was asked for?
    from gdl_jax.evaluation.classifier import label_fn
    labels = np.arange(n) % int(dataset.info.num_classes)
    with progress.ticker(f"drawing {n} class-conditional samples (label accuracy)"):
      x = np.asarray(jax.device_get(task.sample_labeled(state, jax.random.fold_in(keys["sample"], 1),
                                                        jnp.asarray(labels))))
    hit = np.asarray(label_fn(dataset)(x)) == labels
    out["conditional_accuracy"] = float(np.mean(hit))
    out["conditional_accuracy_per_class"] = [float(np.mean(hit[labels == k]))
                                             for k in range(int(dataset.info.num_classes))]
  if dataset.info.kind == "music" and use_log_prob:
    # the n-gram baselines on the same windows, rows of the same table (gdl-jax evaluate)
    from gdl_jax.evaluation import music
    with progress.ticker("n-gram baselines (smoothing chosen on the validation pieces)"):
      out["baselines"] = music.token_ngram_baselines(dataset)
  if task.metrics is not None:  # the family's own held-out metrics (CLIP zero-shot, prompt fidelity)
    out.update(task.metrics(state, dataset, jax.random.fold_in(keys["sample"], 2),
                            use_features=use_features, use_samples=use_samples))
  if task.translate is not None and dataset.info.kind == "unpaired":
    # image-to-image models: cycle error, the classifier's target-class share and FD, MSE to a known map
    from gdl_jax.evaluation.translation import translation_metrics
    out.update(translation_metrics(lambda x, d: np.asarray(jax.device_get(task.translate(state, x, d))),
                                   dataset, num=n, use_classifier=use_features))
  return out
