"""The evaluation harness: one `evaluate` for every family, and the classical baselines' table.

Rule 1 (looks drawn from p_data): held-out bits/dim from `log_prob_fn`, classifier Fréchet distance
from `feature_fn` on samples vs held-out images (and more Fréchet distances, e.g. in ImageNet VGG16
features, from `extra_feature_fns`). Rule 2 (not a copy): novelty ratio and exact-copy
share of the samples against the training set.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Iterable, Mapping, Optional, Sequence

import jax
import numpy as np

from gdl_jax import progress
from gdl_jax.data.info import Dataset
from gdl_jax.evaluation import metrics as M

# log_prob_fn(batch_dict, key) -> [B] nats; sample_fn(key, n) -> [n, *shape] in the dataset's format;
# feature_fn(images_uint8 [B, H, W, C]) -> [B, F].
LogProbFn = Callable[[dict, jax.Array], object]
SampleFn = Callable[[jax.Array, int], object]
FeatureFn = Callable[[np.ndarray], object]

DEFAULT_COLUMNS = (("bits/dim", "bits_per_dim", "{:.3f}"), ("FD", "frechet_distance", "{:.2f}"),
                   ("novelty ratio", "novelty_ratio", "{:.3f}"), ("copy share", "copy_share", "{:.3f}"),
                   ("nll (nats)", "nll", "{:.4g}"))
# Shown only when some row has them.
OPTIONAL_COLUMNS = (("bits/note", "bits_per_note", "{:.3f}"),
                    # music (gdl_jax.evaluation.music): copy share there = samples sharing >= 32 notes
                    ("copy share held-out", "heldout_copy_share", "{:.3f}"),
                    ("in-key", "in_key", "{:.3f}"), ("in-key held-out", "heldout_in_key", "{:.3f}"),
                    ("PC distance", "pc_distance", "{:.3f}"),
                    ("shared run", "shared_run_median", "{:.1f}"),
                    ("shared run held-out", "heldout_shared_run_median", "{:.1f}"),
                    ("FD VGG16", "fd_vgg16", "{:.2f}"),
                    ("label accuracy", "conditional_accuracy", "{:.3f}"),
                    # image-to-image translation (gdl_jax.evaluation.translation)
                    ("cycle MAE", "cycle_mae", "{:.4f}"),
                    ("target class A->B", "target_accuracy_ab", "{:.3f}"),
                    ("target class B->A", "target_accuracy_ba", "{:.3f}"),
                    ("FD A->B", "fd_ab", "{:.2f}"),
                    ("FD A->B untranslated", "fd_ab_untranslated", "{:.2f}"),
                    ("MSE to f", "mse_ab", "{:.4f}"),
                    ("MSE identity", "mse_identity_ab", "{:.4f}"))


def _slice(split: dict, idx) -> dict:
  return {k: np.asarray(v)[idx] for k, v in split.items()}


def held_out_nll(dataset: Dataset, log_prob_fn: LogProbFn, key: jax.Array, *,
                 batch_size: int = 256) -> np.ndarray:
  """-log p(x) in nats for every test example [N_test], in fixed-size batches (last one padded)."""
  n = dataset.num_examples("test")
  out = []
  starts = range(0, n, batch_size)
  for b, start in enumerate(progress.bar(starts, desc="held-out log-likelihood", unit="batch")):
    idx = np.arange(start, start + batch_size)
    valid = int(np.sum(idx < n))
    batch = _slice(dataset.test, np.minimum(idx, n - 1))   # pad with the last example: one shape
    lp = np.asarray(log_prob_fn(batch, jax.random.fold_in(key, b)), np.float64)
    if lp.shape != (batch_size,):
      raise ValueError(f"log_prob_fn must return [B] = ({batch_size},) nats per example, got {lp.shape}.")
    out.append(-lp[:valid])
  return np.concatenate(out)


def _check_samples(dataset: Dataset, samples, n: int) -> np.ndarray:
  x = np.asarray(samples)
  info = dataset.info
  if x.shape != (n, *info.shape):
    raise ValueError(f"sample_fn(key, {n}) must return shape {(n, *info.shape)}, got {x.shape}.")
  if info.kind == "music" and not np.issubdtype(x.dtype, np.integer):
    raise ValueError(f"music samples must be integer (note, duration) token ids, got {x.dtype}.")
  if info.kind in ("image", "text"):
    if not np.issubdtype(x.dtype, np.integer):
      raise ValueError(f"{info.kind} samples must be integer levels/tokens, got {x.dtype}; "
                       "convert [-1, 1] floats with gdl_jax.data.from_signed(y, levels).")
    hi = info.levels if info.kind == "image" else (len(info.vocab) or None)
    if x.min() < 0 or (hi is not None and x.max() >= hi):
      raise ValueError(f"sample values span [{x.min()}, {x.max()}], outside 0..{hi - 1 if hi else '?'}.")
    if info.kind == "image" and info.levels <= 256:
      x = x.astype(np.uint8)                     # the dataset's own format, what feature_fn expects
  return x


def _features(feature_fn: FeatureFn, x: np.ndarray, batch_size: int, desc: str = "features") -> np.ndarray:
  starts = range(0, len(x), batch_size)
  return np.concatenate([np.asarray(feature_fn(x[i:i + batch_size]), np.float64)
                         for i in progress.bar(starts, desc=desc, unit="batch")])


def evaluate(dataset: Dataset, *, sample_fn: Optional[SampleFn] = None,
             log_prob_fn: Optional[LogProbFn] = None, feature_fn: Optional[FeatureFn] = None,
             num_samples: int = 500, key: jax.Array, train_subset: Optional[int] = 10000,
             batch_size: int = 256, samples=None,
             extra_feature_fns: Optional[Mapping[str, FeatureFn]] = None) -> dict:
  """Every metric that applies, as a flat dict of floats.

  - log_prob_fn -> "nll" (mean nats per test example) and, for images/text, "bits_per_dim".
  - sample_fn (or precomputed `samples`) -> with feature_fn (images): "frechet_distance" between
    features of num_samples samples and as many random held-out images; likewise one Fréchet
    distance per entry of `extra_feature_fns` {metrics key: FeatureFn} (e.g. "fd_vgg16",
    ImageNet VGG16 features: gdl_jax.evaluation.perceptual), on the same images; for images/points:
    "novelty_ratio", "sample_nn_median", "test_nn_median" (NN distances to a random
    `train_subset` of the training set, None = all) and "copy_share" (exact copies of any
    training example, against the full training set).
  """
  t0 = time.time()
  info = dataset.info
  k_lp, k_s, k_real, k_train = jax.random.split(key, 4)
  out: dict = {}
  if log_prob_fn is not None:
    nll = held_out_nll(dataset, log_prob_fn, k_lp, batch_size=batch_size)
    out["nll"] = float(np.mean(nll))
    if info.kind in ("image", "text"):
      out["bits_per_dim"] = float(M.bits_per_dim(np.mean(nll), info.dims))
    if info.kind == "music":   # windows of (note, duration) events: bits per event
      out["bits_per_note"] = float(np.mean(nll) / info.shape[0] / math.log(2))
  if sample_fn is not None or samples is not None:
    if samples is None:
      with progress.ticker(f"drawing {num_samples} samples"):
        x = _check_samples(dataset, sample_fn(k_s, num_samples), num_samples)
    else:
      x = _check_samples(dataset, samples, len(np.asarray(samples)))
    xkey = dataset.x_key
    test_x, train_x = np.asarray(dataset.test[xkey]), np.asarray(dataset.train[xkey])
    n_real = min(len(x), len(test_x))
    real = test_x[np.sort(M.numpy_rng(k_real).choice(len(test_x), n_real, replace=False))]
    if feature_fn is not None and info.kind == "image":
      out["frechet_distance"] = M.frechet_distance(
          _features(feature_fn, x, batch_size, "classifier features (samples)"),
          _features(feature_fn, real, batch_size, "classifier features (held-out)"))
    if info.kind == "image":
      for name, fn in (extra_feature_fns or {}).items():
        out[name] = M.frechet_distance(_features(fn, x, batch_size, f"{name} features (samples)"),
                                       _features(fn, real, batch_size, f"{name} features (held-out)"))
    if info.kind in ("image", "points"):
      ref = train_x
      if train_subset is not None and train_subset < len(train_x):
        ref = train_x[np.sort(M.numpy_rng(k_train).choice(len(train_x), train_subset, replace=False))]
      with progress.ticker(f"nearest neighbours in {len(ref)} training examples (novelty)"):
        out.update(M.novelty(x, ref, real, batch=batch_size))
    if info.kind == "music":   # in-key, pitch classes, runs shared with the training windows
      from gdl_jax.evaluation import music
      with progress.ticker(f"music metrics of {len(x)} samples (keys, shared runs)"):
        out.update(music.token_music_metrics(dataset, x))
    else:
      out["copy_share"] = M.exact_copy_share(x, train_x)
    out["num_samples"] = int(len(x))
  out["eval_seconds"] = time.time() - t0
  return out


# ----------------------------------------------------------------------------------------------
# The classical baselines, fitted on dataset.train and evaluated with the same harness.


def _pick_mixture_k(x, levels, ks, iters, key, val_fraction):
  from gdl_jax.models import baselines as B
  if len(ks) == 1:
    return ks[0], {}
  perm = M.numpy_rng(key).permutation(len(x))
  n_val = max(1, int(round(len(x) * val_fraction)))
  tr, va = x[perm[n_val:]], x[perm[:n_val]]
  scores = {}
  for k in progress.bar(ks, desc=f"EM mixtures ({iters} iterations), k on validation", unit="k"):
    params, _ = B.fit_mixture(tr, levels, k, iters, jax.random.fold_in(key, k))
    scores[k] = float(np.mean(B.mixture_log_prob(params, va)))
  return max(scores, key=scores.get), scores


def baseline_table(dataset: Dataset, feature_fn: Optional[FeatureFn] = None, *, key: jax.Array,
                   num_samples: int = 500, mixture_ks: Sequence[int] = (10, 20, 30, 50),
                   em_iters: int = 50, gmm_components: Sequence[int] = (1, 2, 5, 10),
                   kde_bandwidths: Optional[Sequence[float]] = None,
                   fit_subset: Optional[int] = 10000, val_fraction: float = 0.2,
                   train_subset: Optional[int] = 10000, which: Iterable[str] = (
                       "independent", "mixture", "gmm", "kde"), verbose: bool = False,
                   extra_feature_fns: Optional[Mapping[str, FeatureFn]] = None) -> dict:
  """Fits the four baselines on dataset.train and evaluates each: {name: metrics}.

  independent categorical (add-alpha ML), mixture of independent categoricals (EM; k picked on a
  validation split of train), sklearn GaussianMixture (components picked on validation) and
  gaussian KernelDensity (bandwidth picked on validation; default grid in fit_kde), the last two
  on dequantized signed pixels and fit on at most `fit_subset` training images.
  """
  from gdl_jax.models import baselines as B
  info = dataset.info
  if info.kind != "image" or info.levels is None:
    raise ValueError(f"baselines need a discrete image dataset, got kind={info.kind!r}, levels={info.levels}.")
  levels, shape = int(info.levels), tuple(info.shape)
  x = np.asarray(dataset.train["image"])
  x_fit = x
  if fit_subset is not None and fit_subset < len(x):
    x_fit = x[np.sort(M.numpy_rng(jax.random.fold_in(key, 99)).choice(len(x), fit_subset, replace=False))]
  common = dict(feature_fn=feature_fn, num_samples=num_samples, train_subset=train_subset,
                extra_feature_fns=extra_feature_fns)
  rows: dict = {}

  def run(name, log_prob_fn, sample_fn, k, **extra):
    t = time.time()
    m = evaluate(dataset, sample_fn=sample_fn, log_prob_fn=log_prob_fn, key=k, **common)
    m.update(extra)
    rows[name] = m
    if verbose:
      print(markdown_row(name, m), f"(eval {time.time() - t:.1f}s)", flush=True)

  keys = jax.random.split(key, 8)
  which = set(which)
  progress.note(f"fitting the baselines {', '.join(sorted(which))} on {info.name} and evaluating each")
  if "independent" in which:
    t = time.time()
    p = B.fit_independent(x, levels)
    run("independent categorical", lambda b, k: B.independent_log_prob(p, b["image"]),
        lambda k, n: B.independent_sample(p, k, n), keys[0], fit_seconds=time.time() - t)
  if "mixture" in which:
    t = time.time()
    best_k, _ = _pick_mixture_k(x, levels, tuple(mixture_ks), em_iters, keys[1], val_fraction)
    with progress.ticker(f"EM mixture k={best_k} on all {len(x)} training images"):
      pm, _ = B.fit_mixture(x, levels, best_k, em_iters, keys[2])
    run(f"mixture of categoricals (k={best_k})", lambda b, k: B.mixture_log_prob(pm, b["image"]),
        lambda k, n: B.mixture_sample(pm, k, n), keys[3], fit_seconds=time.time() - t)
  if "gmm" in which:
    t = time.time()
    g = B.fit_gmm(x_fit, levels, keys[4], n_components=tuple(gmm_components), val_fraction=val_fraction)
    run(f"sklearn GaussianMixture (k={g.selection_['best']})",
        lambda b, k: B.sklearn_log_prob(g, b["image"], levels, k),
        lambda k, n: B.sklearn_sample(g, k, n, shape, levels), keys[5], fit_seconds=time.time() - t)
  if "kde" in which:
    t = time.time()
    kde = B.fit_kde(x_fit, levels, keys[6], bandwidths=kde_bandwidths, val_fraction=val_fraction)
    run(f"sklearn KernelDensity (h={kde.selection_['best']:.3g})",
        lambda b, k: B.sklearn_log_prob(kde, b["image"], levels, k),
        lambda k, n: B.sklearn_sample(kde, k, n, shape, levels), keys[7], fit_seconds=time.time() - t)
  return rows


# ----------------------------------------------------------------------------------------------
# Markdown.


def _fmt(v, spec: str) -> str:
  if v is None:
    return "–"
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)
  try:
    return spec.format(v)
  except (TypeError, ValueError):
    return str(v)


def markdown_row(name: str, metrics: Mapping, columns=DEFAULT_COLUMNS) -> str:
  """One table row: | name | bits/dim | FD | novelty ratio | copy share | nll | ('–' where absent)."""
  return "| " + " | ".join([name] + [_fmt(metrics.get(key), spec) for _, key, spec in columns]) + " |"


def markdown_table(rows, columns=None) -> str:
  """A markdown table from {name: metrics} or [(name, metrics), ...] (default columns: the
  DEFAULT_COLUMNS, plus each OPTIONAL_COLUMNS entry that some row has)."""
  items = list(rows.items() if isinstance(rows, Mapping) else rows)
  if columns is None:
    columns = DEFAULT_COLUMNS + tuple(c for c in OPTIONAL_COLUMNS if any(c[1] in m for _, m in items))
  head = "| model | " + " | ".join(title for title, _, _ in columns) + " |"
  sep = "|" + "---|" * (len(columns) + 1)
  return "\n".join([head, sep] + [markdown_row(n, m, columns) for n, m in items])
