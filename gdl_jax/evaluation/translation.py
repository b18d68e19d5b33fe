"""The harness for image-to-image models on two unpaired domains (CycleGAN; `Task.translate`).

    m = translation_metrics(translate_fn, dataset, num=1000)
    # translate_fn(images, "ab" | "ba") -> images, integer levels in, integer levels out

On the held-out split's first `num` images of each domain (dataset kind "unpaired",
gdl_jax.data.unpaired), with G = A -> B and F = B -> A:
- always: cycle reconstruction mean absolute error on [0, 1] ("cycle_mae_a" = |F(G(a)) - a|,
  "cycle_mae_b" = |G(F(b)) - b|, "cycle_mae" their mean);
- class pairs (info.domain_classes, judged by the base dataset's cached classifier,
  gdl_jax.evaluation.classifier): "target_accuracy_ab" = share of G(a) labelled as B's class
  (and _ba), "untranslated_target_share_ab" = the same share for the untranslated a's (the floor),
  and Fréchet distances in the classifier's features to the held-out images of the target domain:
  "fd_ab" (G(a) vs b) next to "fd_ab_untranslated" (a vs b), and _ba likewise;
- known maps (info.mapping, test split with "a_mapped" = f(a), "b_mapped" = f(b)): "mse_ab" = mean
  squared error of G(a) to f(a) on [0, 1], "mse_identity_ab" = the identity map's (a to f(a)),
  "mse_ratio_ab" = their ratio (and _ba).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from gdl_jax.data.info import Dataset
from gdl_jax.evaluation import metrics as M

TranslateFn = Callable[[np.ndarray, str], object]


def _batched(fn: TranslateFn, x: np.ndarray, direction: str, batch_size: int) -> np.ndarray:
  return np.concatenate([np.asarray(fn(x[i:i + batch_size], direction)) for i in range(0, len(x), batch_size)])


def translation_metrics(translate_fn: TranslateFn, dataset: Dataset, *, num: int = 1000,
                        use_classifier: bool = True, base: Dataset | None = None,
                        classifier_variant: str = "default", batch_size: int = 250) -> dict:
  """Every translation metric that applies to `dataset` (see the module docstring)."""
  info = dataset.info
  if info.kind != "unpaired":
    raise ValueError(f"translation metrics need two unpaired image domains (kind 'unpaired'); "
                     f"{info.name!r} is {info.kind}.")
  n = min(int(num), dataset.num_examples("test"))
  scale = float(int(info.levels) - 1)
  a, b = np.asarray(dataset.test["a"][:n]), np.asarray(dataset.test["b"][:n])
  fake_b = _batched(translate_fn, a, "ab", batch_size)
  fake_a = _batched(translate_fn, b, "ba", batch_size)
  for name, x, y in (("G(a)", a, fake_b), ("F(b)", b, fake_a)):
    if y.shape != x.shape:
      raise ValueError(f"translate_fn must keep the images' shape {x.shape[1:]}; {name} has {y.shape[1:]}.")
  rec_a = _batched(translate_fn, fake_b, "ba", batch_size)
  rec_b = _batched(translate_fn, fake_a, "ab", batch_size)
  f64 = lambda v: np.asarray(v, np.float64) / scale                          # levels -> [0, 1]
  out: dict = {"translation_examples": n,
               "cycle_mae_a": float(np.mean(np.abs(f64(rec_a) - f64(a)))),
               "cycle_mae_b": float(np.mean(np.abs(f64(rec_b) - f64(b))))}
  out["cycle_mae"] = 0.5 * (out["cycle_mae_a"] + out["cycle_mae_b"])
  if info.mapping:
    for d, x, y, target in (("ab", a, fake_b, dataset.test["a_mapped"][:n]),
                            ("ba", b, fake_a, dataset.test["b_mapped"][:n])):
      mse = float(np.mean(np.square(f64(y) - f64(target))))
      ident = float(np.mean(np.square(f64(x) - f64(target))))
      out.update({f"mse_{d}": mse, f"mse_identity_{d}": ident,
                  f"mse_ratio_{d}": mse / ident if ident > 0 else float("nan")})
  if info.domain_classes and info.base and use_classifier:
    from gdl_jax import data
    from gdl_jax.evaluation import classifier
    base = base if base is not None else data.load(info.base)
    if tuple(base.info.shape) != tuple(info.shape):
      raise ValueError(f"the base dataset {base.info.name!r} has images of {base.info.shape}, the domains "
                       f"{info.shape}; its classifier cannot judge them.")
    labels = classifier.label_fn(base, variant=classifier_variant, progress=False)
    feats = classifier.feature_fn(base, variant=classifier_variant, progress=False)
    ca, cb = info.domain_classes
    feat = {k: np.asarray(feats(v), np.float64) for k, v in
            {"a": a, "b": b, "fake_a": fake_a, "fake_b": fake_b}.items()}
    for d, src, fake, target_class, ref in (("ab", a, fake_b, cb, "b"), ("ba", b, fake_a, ca, "a")):
      out[f"target_accuracy_{d}"] = float(np.mean(np.asarray(labels(fake)) == target_class))
      out[f"untranslated_target_share_{d}"] = float(np.mean(np.asarray(labels(src)) == target_class))
      out[f"fd_{d}"] = M.frechet_distance(feat["fake_" + ref], feat[ref])
      out[f"fd_{d}_untranslated"] = M.frechet_distance(feat["a" if ref == "b" else "b"], feat[ref])
  return out
