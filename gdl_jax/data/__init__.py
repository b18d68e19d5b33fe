"""Datasets by name, offline first.

    ds = gdl_jax.data.load("digits")          # Dataset(info, train={"image","label"}, test=...)
    batch = gdl_jax.data.batch_at(ds.train, step, batch_size=128, seed=0)

Offline names are prepared once as tfds array_record datasets under the data dir and read back with
`tfds.data_source` (no TensorFlow). Any other tfds name is read the same way when it is already
prepared in the data dir; it is never downloaded implicitly (offline, tfds retries for minutes).
"""

from __future__ import annotations

import functools
import os
from typing import Callable

import numpy as np

from gdl_jax.data.info import DataError, Dataset, DatasetInfo, from_signed, to_signed
from gdl_jax.data.pipeline import batch_at, steps_per_epoch

__all__ = ["DataError", "Dataset", "DatasetInfo", "available", "batch_at", "default_data_dir",
           "from_signed", "load", "register", "steps_per_epoch", "to_signed"]

_LOADERS: dict[str, Callable[[str], Dataset]] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register(name: str, description: str):
  """Decorator: `loader(data_dir) -> Dataset` becomes available as `load(name)`."""
  def wrap(fn):
    _LOADERS[name] = fn
    _DESCRIPTIONS[name] = description
    return fn
  return wrap


def default_data_dir() -> str:
  """$GDL_DATA_DIR, else tfds's own default (~/tensorflow_datasets) so prepared tfds data is found."""
  return os.environ.get("GDL_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def _resolve_data_dir(data_dir: str | None) -> str:
  if data_dir is None:
    d = default_data_dir()
    os.makedirs(d, exist_ok=True)
    return d
  if not os.path.isdir(data_dir):
    raise DataError(f"data directory {data_dir!r} does not exist; create it or pass an existing "
                    "--data_dir (or unset GDL_DATA_DIR to use ~/tensorflow_datasets).")
  return data_dir


def load(name: str, data_dir: str | None = None) -> Dataset:
  """The dataset `name` with both splits in memory (cached per process)."""
  _import_optional_sources()
  if data_dir is None and os.environ.get("GDL_DATA_DIR"):
    data_dir = os.environ["GDL_DATA_DIR"]
  return _load_cached(name, _resolve_data_dir(data_dir))


@functools.lru_cache(maxsize=16)
def _load_cached(name: str, data_dir: str) -> Dataset:
  if name in _LOADERS:
    return _LOADERS[name](data_dir)
  if name.split(":")[0] in ("pair", "map"):   # two unpaired domains made from a dataset
    from gdl_jax.data import unpaired
    return unpaired.load_spec(name, data_dir)
  if name.startswith("midi:"):   # a folder of the user's MIDI files, as music tokens
    from gdl_jax.data import music
    return music.load_music(name, data_dir)
  return _from_prepared_tfds(name, data_dir)


def available(data_dir: str | None = None) -> list[tuple[str, str, str]]:
  """(name, status, description) of every registered dataset and of tfds datasets prepared here."""
  _import_optional_sources()
  d = data_dir or default_data_dir()
  rows = []
  for name in sorted(_LOADERS):
    try:
      status = _STATUS.get(name, lambda _: "offline")(d)
    except Exception as e:  # a source's check failing must not hide the others
      status = f"unavailable ({e})"
    rows.append((name, status, _DESCRIPTIONS[name]))
  if os.path.isdir(d):
    for entry in sorted(os.listdir(d)):
      if entry not in _LOADERS and not entry.startswith(("gdl_", "downloads")) and \
          os.path.isdir(os.path.join(d, entry)):
        rows.append((entry, "prepared (tfds)", f"tfds dataset prepared in {d}"))
  return rows


_STATUS: dict[str, Callable[[str], str]] = {}


def _import_optional_sources():
  """Text/photo/music/caption sources register themselves on import when their modules exist."""
  for mod in ("gdl_jax.data.text", "gdl_jax.data.photos", "gdl_jax.data.unpaired", "gdl_jax.data.music",
              "gdl_jax.data.captions"):
    try:
      __import__(mod)
    except ImportError:
      pass


# ---------------------------------------------------------------------------------------------
# tfds plumbing

def _read_split(builder, split: str) -> dict:
  """All examples of a prepared split as stacked numpy arrays (via tfds.data_source)."""
  source = builder.as_data_source(split=split)
  n = len(source)
  out: dict[str, list] = {}
  chunk = 4096
  for start in range(0, n, chunk):
    for ex in source.__getitems__(list(range(start, min(start + chunk, n)))):
      for k, v in ex.items():
        out.setdefault(k, []).append(v)
  return {k: np.stack(v) for k, v in out.items()}


def _prepared(builder_cls, data_dir: str, builder_kwargs: dict | None = None, **attrs):
  """The builder, its dataset written first if needed (once: concurrent processes wait on a lock).

  builder_kwargs go to the builder's constructor (e.g. config=tfds.core.BuilderConfig(name=...));
  attrs are set on it before preparing (its source)."""
  def make():
    builder = builder_cls(data_dir=data_dir, file_format="array_record", **(builder_kwargs or {}))
    for k, v in attrs.items():
      setattr(builder, k, v)
    return builder

  builder = make()
  if builder.is_prepared():
    return builder
  import fcntl
  import tensorflow_datasets as tfds
  # Two processes preparing one dataset into one data_dir race on tfds's final rename (seen with
  # pytest-xdist): the second waits for the first's lock, then finds the dataset prepared.
  lock_name = builder.name + (f".{builder.builder_config.name}" if builder.builder_config else "")
  with open(os.path.join(data_dir, f".{lock_name}.prepare.lock"), "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    builder = make()
    if not builder.is_prepared():
      tfds.disable_progress_bar()
      try:
        builder.download_and_prepare(download_config=_offline_download_config())
      finally:
        tfds.enable_progress_bar()
  return builder


def _offline_download_config():
  import tensorflow_datasets as tfds
  return tfds.download.DownloadConfig(try_download_gcs=False)


def _image_dataset(name, builder, levels, classes, source) -> Dataset:
  train, test = _read_split(builder, "train"), _read_split(builder, "test")
  for split in (train, test):
    split["label"] = split["label"].astype(np.int32)
  shape = tuple(train["image"].shape[1:])
  info = DatasetInfo(name=name, kind="image", shape=shape, levels=levels,
                     num_classes=len(classes), class_names=tuple(classes), source=source)
  return Dataset(info, train, test)


@register("digits", "8x8 handwritten digits, 17 levels, 1437/360 split (scikit-learn, offline)")
def _digits(data_dir: str) -> Dataset:
  from gdl_jax.data.builders import GdlDigits
  b = _prepared(GdlDigits, data_dir)
  return _image_dataset("digits", b, 17, [str(i) for i in range(10)],
                        "sklearn.datasets.load_digits (UCI optical digits)")


@register("moons", "two moons, 2-D points, 8000/2000 (scikit-learn, offline)")
def _moons(data_dir: str) -> Dataset:
  from gdl_jax.data.builders import GdlMoons
  b = _prepared(GdlMoons, data_dir)
  train, test = _read_split(b, "train"), _read_split(b, "test")
  for split in (train, test):
    split["label"] = split["label"].astype(np.int32)
  info = DatasetInfo(name="moons", kind="points", shape=(2,), num_classes=2,
                     class_names=("upper", "lower"), source="sklearn.datasets.make_moons")
  return Dataset(info, train, test)


@register("chorales_grid", "Bach chorales as 2-bar S/A/T/B piano rolls, 16th grid, 84 bins (music21)")
def _chorales_grid(data_dir: str) -> Dataset:
  from gdl_jax.data.music_grid import load_grid
  return load_grid(data_dir)


@register("chorales_grid_tiny", "the first 8 Bach chorales as chorales_grid piano rolls (tests and the CLI fuzz)")
def _chorales_grid_tiny(data_dir: str) -> Dataset:
  from gdl_jax.data.music_common import chorale_names
  from gdl_jax.data.music_grid import load_grid
  return load_grid(data_dir, chorale_names()[:8], name="chorales_grid_tiny")


def _chorales_grid_status(data_dir: str) -> str:
  try:
    import music21  # noqa: F401
  except ImportError:
    return 'missing: pip install -e ".[music]"'
  return "offline (music21 corpus)"


_STATUS["chorales_grid"] = _STATUS["chorales_grid_tiny"] = _chorales_grid_status


def _fashion_candidates(data_dir: str):
  return (os.environ.get("GDL_FASHION_MNIST_DIR"), data_dir, os.path.join(data_dir, "fashion-mnist"),
          *__import__("gdl_jax.data.builders", fromlist=["x"]).FASHION_MNIST_DIRS)


@register("fashion_mnist", "Fashion-MNIST 28x28, 256 levels, 60000/10000 (idx files or tfds)")
def _fashion_mnist(data_dir: str) -> Dataset:
  from gdl_jax.data import builders
  if _tfds_prepared("fashion_mnist", data_dir):
    return _from_prepared_tfds("fashion_mnist", data_dir)
  src = builders.find_idx_dir(_fashion_candidates(data_dir))
  if src is None:
    raise DataError(
        "fashion_mnist: no idx files found in GDL_FASHION_MNIST_DIR, the data dir "
        f"({data_dir}) or /usr/share/datasets/fashion-mnist, and no prepared tfds 'fashion_mnist'. "
        "Fix: `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the four "
        "*-ubyte.gz files in a directory and pass --data_dir, or online: "
        f"`tfds build fashion_mnist --data_dir {data_dir}`.")
  b = _prepared(builders.GdlFashionMnist, data_dir, source_dir=src)
  return _image_dataset("fashion_mnist", b, 256, builders.FASHION_CLASSES, f"idx files in {src}")


def _fashion_status(data_dir: str) -> str:
  from gdl_jax.data import builders
  if _tfds_prepared("fashion_mnist", data_dir):
    return "prepared (tfds)"
  src = builders.find_idx_dir(_fashion_candidates(data_dir))
  return f"offline ({src})" if src else "missing: apt-get install dataset-fashion-mnist"


_STATUS["fashion_mnist"] = _fashion_status


def _tfds_prepared(name: str, data_dir: str) -> bool:
  return os.path.isdir(os.path.join(data_dir, name)) and any(
      os.path.exists(os.path.join(root, "dataset_info.json"))
      for root, _, _ in os.walk(os.path.join(data_dir, name)))


def _from_prepared_tfds(name: str, data_dir: str) -> Dataset:
  """A tfds dataset already prepared (array_record) in data_dir; never downloads."""
  import tensorflow_datasets as tfds
  if not _tfds_prepared(name.split(":")[0].split("/")[0], data_dir):
    raise DataError(
        f"unknown dataset {name!r}: not one of the offline datasets {sorted(_LOADERS)} and not a "
        f"tfds dataset prepared in {data_dir}. Online, prepare it first with "
        f"`tfds build {name} --data_dir {data_dir} --file_format array_record`, then pass "
        f"--data_dir {data_dir}.")
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:
    raise DataError(f"tfds dataset {name!r} in {data_dir} cannot be opened: {e}") from e
  feats = builder.info.features
  if "image" not in feats:
    raise DataError(f"tfds dataset {name!r} has no 'image' feature; gdl_jax reads image datasets "
                    f"with 'image' (and optional 'label') features.")
  splits = list(builder.info.splits)
  test_split = "test" if "test" in splits else ("validation" if "validation" in splits else None)
  if "train" not in splits or test_split is None:
    raise DataError(f"tfds dataset {name!r} needs a 'train' and a 'test' (or 'validation') split; "
                    f"it has {splits}.")
  train, test = _read_split(builder, "train"), _read_split(builder, test_split)
  keep = ("image", "label")
  train = {k: v for k, v in train.items() if k in keep}
  test = {k: v for k, v in test.items() if k in keep}
  classes = ()
  if "label" in feats and hasattr(feats["label"], "names"):
    classes = tuple(feats["label"].names)
    for split in (train, test):
      split["label"] = split["label"].astype(np.int32)
  info = DatasetInfo(name=name, kind="image", shape=tuple(train["image"].shape[1:]), levels=256,
                     num_classes=len(classes) or None, class_names=classes,
                     source=f"tfds {name} in {data_dir}")
  return Dataset(info, train, test)
