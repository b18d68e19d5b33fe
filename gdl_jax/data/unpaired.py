"""Two unpaired image domains (CycleGAN's data), made offline from the labelled image datasets.

    ds = gdl_jax.data.load("fashion_sneaker_boot")   # ds.train = {"a": sneakers, "b": ankle boots}
    batch = gdl_jax.data.batch_at(ds.train, step, 16, seed=0)        # {"a": [16, ...], "b": [16, ...]}

A dataset of kind "unpaired" holds "a" and "b" images of one shape, the same number of each, in
independently shuffled orders (a batch's i-th a and i-th b have nothing to do with each other).
Names (`gdl-jax train cyclegan --dataset NAME`):
  pair:<base>:<class A>:<class B>   A = the base's images of one class, B = another's (class names as
                                    in `gdl-jax datasets` lower-cased with "_" for other characters,
                                    e.g. ankle_boot, or indices); test = the base's test split;
  map:<base>:<f>                    a known mapping f in invert (level L-1-x), transpose (H <-> W,
                                    square images), swap_rb (red <-> blue, RGB only): A = the base's
                                    training images of one random half, B = f of the other half, so no
                                    b is the image of any a; the test split also holds a_mapped = f(a)
                                    and b_mapped = f(b) (each f is its own inverse) for the MSE to f;
  fashion_sneaker_boot   = pair:fashion_mnist:sneaker:ankle_boot   (the Fashion-MNIST pair)
  digits_inverted        = map:digits:invert                       (the known mapping)
  fashion_mnist_inverted = map:fashion_mnist:invert
  digits_transposed      = map:digits:transpose
  photos_cat_coffee      = pair:photo_crops:chelsea:coffee         (32x32 crops of two photos)
  apple2orange           the book's: tfds `cycle_gan/apple2orange` resized to 64x64, only when
                         prepared in the data dir (online: `tfds build cycle_gan/apple2orange
                         --data_dir DIR --file_format array_record`); never downloaded here.
"""

from __future__ import annotations

import os
import re

import numpy as np

from gdl_jax.data import _STATUS, DataError, _load_cached, register
from gdl_jax.data.info import Dataset, DatasetInfo

SHORTCUTS = {
    "fashion_sneaker_boot": "pair:fashion_mnist:sneaker:ankle_boot",
    "digits_inverted": "map:digits:invert",
    "fashion_mnist_inverted": "map:fashion_mnist:invert",
    "digits_transposed": "map:digits:transpose",
    "photos_cat_coffee": "pair:photo_crops:chelsea:coffee",
}
MAPPINGS = ("invert", "transpose", "swap_rb")
APPLE2ORANGE_SIZE = 64


def class_key(name: str) -> str:
  """A class name as a --dataset token: lower case, runs of other characters -> "_"."""
  return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def apply_mapping(mapping: str, images: np.ndarray, levels: int) -> np.ndarray:
  """f(images) for a known mapping (NHWC integer levels); every f here is its own inverse."""
  if mapping == "invert":
    return (levels - 1 - images.astype(np.int64)).astype(images.dtype)
  if mapping == "transpose":
    return np.swapaxes(images, 1, 2)
  if mapping == "swap_rb":
    return images[..., ::-1]
  raise DataError(f"mapping {mapping!r} is unknown; use one of {MAPPINGS} (e.g. map:digits:invert).")


def _base_images(base: Dataset, spec: str) -> None:
  info = base.info
  if info.kind != "image" or info.levels is None:
    raise DataError(f"{spec}: {info.name!r} is a {info.kind} dataset; two image domains need an image "
                    "dataset with integer levels (e.g. fashion_mnist, digits, photo_crops).")


def _shuffled_equal(a: np.ndarray, b: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  n = min(len(a), len(b))
  return a[rng.permutation(len(a))[:n]], b[rng.permutation(len(b))[:n]]


def class_pair(base: Dataset, class_a, class_b, name: str) -> Dataset:
  """Domain A = the base's images of class_a, B = of class_b (names or indices), both splits."""
  info = base.info
  _base_images(base, name)
  if not info.num_classes or "label" not in base.train:
    raise DataError(f"{name}: {info.name!r} has no class labels, so it has no classes to pair; use a "
                    "labelled dataset (fashion_mnist, digits, photo_crops) or map:<base>:<f>.")
  keys = [class_key(c) for c in info.class_names] or [str(i) for i in range(info.num_classes)]

  def index(c) -> int:
    c = str(c)
    if c.lstrip("-").isdigit():
      k = int(c)
      if not 0 <= k < info.num_classes:
        raise DataError(f"{name}: class index {k} is out of range for {info.name!r}, which has "
                        f"{info.num_classes} classes (0..{info.num_classes - 1}: {', '.join(keys)}).")
      return k
    if class_key(c) not in keys:
      raise DataError(f"{name}: {info.name!r} has no class {c!r}; its classes are {', '.join(keys)} "
                      "(or their indices).")
    return keys.index(class_key(c))

  ka, kb = index(class_a), index(class_b)
  if ka == kb:
    raise DataError(f"{name}: the two domains must be different classes; both are {keys[ka]!r}.")
  splits = {}
  for split, seed in (("train", 0), ("test", 1)):
    arrays = getattr(base, split)
    a, b = arrays["image"][arrays["label"] == ka], arrays["image"][arrays["label"] == kb]
    if not len(a) or not len(b):
      raise DataError(f"{name}: the {split} split of {info.name!r} has {len(a)} images of "
                      f"{keys[ka]!r} and {len(b)} of {keys[kb]!r}; both domains need images.")
    a, b = _shuffled_equal(a, b, seed)
    splits[split] = {"a": a, "b": b}
  out = DatasetInfo(name=name, kind="unpaired", shape=info.shape, levels=info.levels,
                    domains=(keys[ka], keys[kb]), base=info.name, domain_classes=(ka, kb),
                    source=f"classes {keys[ka]} and {keys[kb]} of {info.name}")
  return Dataset(out, splits["train"], splits["test"])


def known_mapping(base: Dataset, mapping: str, name: str) -> Dataset:
  """Domain A = one random half of the base's training images, B = f(the other half)."""
  info = base.info
  _base_images(base, name)
  if mapping not in MAPPINGS:
    raise DataError(f"{name}: mapping {mapping!r} is unknown; use one of {MAPPINGS}.")
  h, w, c = info.shape
  if mapping == "swap_rb" and c != 3:
    raise DataError(f"{name}: swap_rb swaps the red and blue channels, so it needs RGB images; "
                    f"{info.name!r} has {c} channel(s). Use invert or transpose on it.")
  if mapping == "transpose" and h != w:
    raise DataError(f"{name}: transpose needs square images; {info.name!r} is {h}x{w}.")
  levels = int(info.levels)
  x = base.train["image"]
  perm = np.random.default_rng(0).permutation(len(x))
  half = len(x) // 2
  a, b = x[np.sort(perm[:half])], apply_mapping(mapping, x[np.sort(perm[half:2 * half])], levels)
  a, b = _shuffled_equal(a, b, 0)
  t = base.test["image"]
  t_b = t[np.random.default_rng(1).permutation(len(t))]
  test = {"a": t, "b": apply_mapping(mapping, t_b, levels), "a_mapped": apply_mapping(mapping, t, levels),
          "b_mapped": t_b}
  out = DatasetInfo(name=name, kind="unpaired", shape=info.shape, levels=levels,
                    domains=(info.name, f"{mapping}({info.name})"), base=info.name, mapping=mapping,
                    source=f"{info.name} and {mapping} of its other half")
  return Dataset(out, {"a": a, "b": b}, test)


def load_spec(spec: str, data_dir: str) -> Dataset:
  """pair:<base>:<a>:<b> or map:<base>:<f> (see the module docstring)."""
  parts = spec.split(":")
  if parts[0] == "pair" and len(parts) == 4 and all(parts[1:]):
    return class_pair(_load_cached(parts[1], data_dir), parts[2], parts[3], spec)
  if parts[0] == "map" and len(parts) == 3 and all(parts[1:]):
    return known_mapping(_load_cached(parts[1], data_dir), parts[2], spec)
  raise DataError(f"dataset {spec!r} is not a domain pair: write pair:<base>:<class A>:<class B> "
                  f"(e.g. pair:fashion_mnist:sneaker:ankle_boot) or map:<base>:<f> with f in "
                  f"{MAPPINGS} (e.g. map:digits:invert).")


def _shortcut(name: str, spec: str):
  def load(data_dir: str) -> Dataset:
    ds = load_spec(spec, data_dir)
    return Dataset(_renamed(ds.info, name), ds.train, ds.test)
  return load


def _renamed(info: DatasetInfo, name: str) -> DatasetInfo:
  import dataclasses
  return dataclasses.replace(info, name=name)


for _name, _spec in SHORTCUTS.items():
  register(_name, f"two unpaired domains: {_spec} (CycleGAN)")(_shortcut(_name, _spec))


def _resize(images: np.ndarray, size: int) -> np.ndarray:
  from PIL import Image
  return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in images])


def _apple2orange_prepared(data_dir: str) -> bool:
  return os.path.isdir(os.path.join(data_dir, "cycle_gan", "apple2orange"))


@register("apple2orange", f"the book's apples <-> oranges (tfds cycle_gan/apple2orange, resized to "
          f"{APPLE2ORANGE_SIZE}x{APPLE2ORANGE_SIZE}); only when prepared, never downloaded")
def load_apple2orange(data_dir: str) -> Dataset:
  """tfds `cycle_gan/apple2orange` (trainA/trainB/testA/testB) when already prepared in data_dir."""
  if not _apple2orange_prepared(data_dir):
    raise DataError(f"apple2orange is not prepared in {data_dir}; online, prepare it once with "
                    f"`tfds build cycle_gan/apple2orange --data_dir {data_dir} --file_format "
                    "array_record` (about 75 MB), then pass --data_dir. Offline, use "
                    "fashion_sneaker_boot or photos_cat_coffee.")
  import tensorflow_datasets as tfds
  from gdl_jax.data import _read_split
  builder = tfds.builder("cycle_gan/apple2orange", data_dir=data_dir)
  splits = {}
  for split, seed in (("train", 0), ("test", 1)):
    a = _resize(_read_split(builder, f"{split}A")["image"], APPLE2ORANGE_SIZE)
    b = _resize(_read_split(builder, f"{split}B")["image"], APPLE2ORANGE_SIZE)
    a, b = _shuffled_equal(a, b, seed)
    splits[split] = {"a": a, "b": b}
  info = DatasetInfo(name="apple2orange", kind="unpaired", shape=(APPLE2ORANGE_SIZE, APPLE2ORANGE_SIZE, 3),
                     levels=256, domains=("apple", "orange"), source=f"tfds cycle_gan/apple2orange in {data_dir}")
  return Dataset(info, splits["train"], splits["test"])


_STATUS["apple2orange"] = lambda d: "prepared (tfds)" if _apple2orange_prepared(d) else \
    "missing: tfds build cycle_gan/apple2orange (online, once)"
