"""Offline datasets as tfds builders: array_record files read back with `tfds.data_source`.

Each builder turns arrays from a locally available source (scikit-learn, Debian's idx files, ...)
into a prepared tfds dataset under the data dir, so offline and online datasets are read the same
way and no TensorFlow is imported at run time.
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import tensorflow_datasets as tfds

from gdl_jax.data.info import DataError

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")


class _ArrayBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder whose splits come from `_arrays(split) -> dict of equal-length numpy arrays`."""

  VERSION = tfds.core.Version("1.0.0")
  FEATURES: dict = {}  # name -> (shape, numpy dtype)
  DESCRIPTION = ""

  def _info(self) -> tfds.core.DatasetInfo:
    feats = {k: tfds.features.Tensor(shape=s, dtype=d) for k, (s, d) in self.FEATURES.items()}
    return tfds.core.DatasetInfo(builder=self, description=self.DESCRIPTION,
                                 features=tfds.features.FeaturesDict(feats))

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is local
    return {split: self._generate_examples(split) for split in ("train", "test")}

  def _generate_examples(self, split):
    arrays = self._arrays(split)
    n = len(next(iter(arrays.values())))
    for i in range(n):
      yield i, {k: v[i] for k, v in arrays.items()}

  def _arrays(self, split: str) -> dict:
    raise NotImplementedError


def _seeded_split(n: int, test_fraction: float, seed: int):
  perm = np.random.default_rng(seed).permutation(n)
  n_test = int(round(n * test_fraction))
  return np.sort(perm[n_test:]), np.sort(perm[:n_test])


class GdlDigits(_ArrayBuilder):
  """scikit-learn's 1797 8x8 handwritten digits, 17 grey levels; fixed seeded 80/20 split."""

  FEATURES = {"image": ((8, 8, 1), np.uint8), "label": ((), np.int64)}
  DESCRIPTION = "UCI optical digits via sklearn.datasets.load_digits; split seed 0, 20% test."

  def _arrays(self, split):
    from sklearn.datasets import load_digits
    d = load_digits()
    train, test = _seeded_split(len(d.target), 0.2, seed=0)
    idx = train if split == "train" else test
    return {"image": d.images[idx].astype(np.uint8)[..., None], "label": d.target[idx].astype(np.int64)}


class GdlMoons(_ArrayBuilder):
  """scikit-learn two moons (noise 0.05): 8000 train / 2000 test points."""

  FEATURES = {"x": ((2,), np.float32), "label": ((), np.int64)}
  DESCRIPTION = "sklearn.datasets.make_moons(noise=0.05), seeds 0 (train) and 1 (test)."

  def _arrays(self, split):
    from sklearn.datasets import make_moons
    n, seed = (8000, 0) if split == "train" else (2000, 1)
    x, y = make_moons(n, noise=0.05, random_state=seed)
    return {"x": x.astype(np.float32), "label": y.astype(np.int64)}


def _read_idx(path: str) -> np.ndarray:
  with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as f:
    data = f.read()
  _, dtype_code, ndim = struct.unpack(">HBB", data[:4])
  if dtype_code != 0x08:
    raise DataError(f"{path}: expected an unsigned-byte idx file, got type code {dtype_code:#x}.")
  shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def find_idx_dir(candidates) -> str | None:
  """The first directory holding the four Fashion-MNIST idx files (gzipped or not)."""
  for d in candidates:
    if d and os.path.isdir(d) and all(_idx_path(d, f) for f in ("train-images", "t10k-labels")):
      return d
  return None


def _idx_path(d: str, stem: str) -> str | None:
  for suffix in ("-idx3-ubyte.gz", "-idx1-ubyte.gz", "-idx3-ubyte", "-idx1-ubyte"):
    p = os.path.join(d, stem + suffix)
    if os.path.exists(p):
      return p
  return None


class GdlFashionMnist(_ArrayBuilder):
  """Zalando's Fashion-MNIST from the original idx files (Debian's dataset-fashion-mnist)."""

  FEATURES = {"image": ((28, 28, 1), np.uint8), "label": ((), np.int64)}
  DESCRIPTION = "Fashion-MNIST idx files, 60000 train / 10000 test."
  source_dir: str = ""

  def _arrays(self, split):
    stem = "train" if split == "train" else "t10k"
    images = _read_idx(_idx_path(self.source_dir, f"{stem}-images"))
    labels = _read_idx(_idx_path(self.source_dir, f"{stem}-labels"))
    return {"image": images[..., None], "label": labels.astype(np.int64)}
