"""The Fréchet distance between real images: what a model's FD should be read against.

    python benchmarks/reference_fd.py --dataset photo_crops --features vgg16 [--num 840] [--seed 0]
    python benchmarks/reference_fd.py --dataset fashion_mnist --features classifier --num 1000

Prints (JSON) the FD of `num` training images (a seeded draw) against `num` test images, and of the
test set's two halves against each other, in the same features the harness uses: "vgg16" (the
`fd_vgg16` column: ImageNet VGG16 relu5_3, `perceptual` extra) or "classifier" (the dataset's cached
Chapter 2 CNN, trained on first use). A model's FD at or below the train-vs-test value cannot be told
from real data at this sample size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--dataset", required=True)
  p.add_argument("--features", choices=("vgg16", "classifier"), default="classifier")
  p.add_argument("--num", type=int, default=None, help="images per side (default: the test set's size)")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)

  from gdl_jax import data
  from gdl_jax.evaluation import metrics
  t0 = time.perf_counter()
  ds = data.load(args.dataset)
  if args.features == "vgg16":
    from gdl_jax.evaluation import perceptual
    fn = perceptual.vgg16_feature_fn(ds.info.levels)
  else:
    from gdl_jax.evaluation import classifier
    fn = classifier.feature_fn(ds)
  x_key = ds.x_key
  test, train = ds.test[x_key], ds.train[x_key]
  num = args.num or len(test)
  if not 2 <= num <= min(len(test), len(train)):
    print(f"reference_fd: --num must be in [2, {min(len(test), len(train))}] for {args.dataset}, "
          f"got {num}", file=sys.stderr)
    return 2
  rng = np.random.default_rng(args.seed)
  te = np.asarray(fn(test[:num]))
  tr = np.asarray(fn(train[rng.choice(len(train), num, replace=False)]))
  half = num // 2
  print(json.dumps({
      "dataset": args.dataset, "features": args.features, "num": num, "seed": args.seed,
      "fd_train_vs_test": metrics.frechet_distance(tr, te),
      "fd_test_half_vs_half": metrics.frechet_distance(te[:half], te[half:2 * half]),
      "seconds": round(time.perf_counter() - t0, 1)}, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
