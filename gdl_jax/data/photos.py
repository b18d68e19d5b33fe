"""Photo datasets that ship inside scikit-image (offline): faces and 32x32 RGB crops.

- "lfw_subset": `skimage.data.lfw_subset()`, 100 LFW faces (label 1) + 100 non-face crops (label 0),
  25x25 grey, a seeded 160/40 split: the offline stand-in for CelebA (Chapter 3's face VAE).
- "photo_crops": 32x32 RGB crops of scikit-image's seven colour photographs at two scales, label =
  which photo: the offline stand-in for CIFAR-10 / Oxford flowers (Chapters 4 and 8). Train crops
  come from the left 70% of every scaled photo and test crops from the right 30%, so no test
  pixel is ever seen in training.
- "photo_crops_64": the same photos and split at three larger scales, 64x64 crops: big enough to
  carry a painting's brush strokes (the feed-forward style network of experiments/style_net.py).
- "photo_crops_128": the same photos and split at two scales, 128x128 crops: the size at which the
  style network is compared with the optimisation (a net trained on 64x64 crops does worse on
  bigger images: its style loss on a whole 128-pixel photo is ~1.7x that on a 64-pixel one).

Both need `pip install scikit-image` (the `faces` extra).
"""

from __future__ import annotations

import numpy as np

from gdl_jax.data import _STATUS, DataError, register
from gdl_jax.data.info import Dataset, DatasetInfo

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
          "retina")
CROP = 32
SCALES = (128, 192)  # the shorter side of each photo is resized to these before cropping
TRAIN_PER, TEST_PER = 300, 60  # crops per photo and scale
TRAIN_FRACTION = 0.7  # of the columns


def _skimage_data():
  try:
    import skimage.data
    import skimage.transform
  except ImportError as e:
    raise DataError("this dataset ships in scikit-image: `pip install scikit-image` "
                    "(or `pip install -e \".[faces]\"`).") from e
  return skimage.data, skimage.transform


@register("lfw_subset", "LFW subset 25x25 grey, 256 levels, 100 faces + 100 non-faces, "
          "160/40 split (scikit-image, offline)")
def load_lfw_subset(data_dir: str = "") -> Dataset:
  """skimage.data.lfw_subset() as a Dataset (label 1 = face, 0 = non-face)."""
  del data_dir  # shipped inside scikit-image
  sk_data, _ = _skimage_data()
  x = sk_data.lfw_subset()                                                        # [200, 25, 25] in [0, 1]
  images = np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)[..., None]
  labels = np.concatenate([np.ones(100), np.zeros(100)]).astype(np.int32)  # skimage: faces first
  perm = np.random.default_rng(0).permutation(len(images))
  test, train = np.sort(perm[:40]), np.sort(perm[40:])
  info = DatasetInfo(name="lfw_subset", kind="image", shape=(25, 25, 1), levels=256, num_classes=2,
                     class_names=("non-face", "face"), source="skimage.data.lfw_subset (LFW)")
  return Dataset(info, {"image": images[train], "label": labels[train]},
                 {"image": images[test], "label": labels[test]})


def _crops(image: np.ndarray, n: int, rng: np.random.Generator, crop: int = CROP) -> np.ndarray:
  """n random crop x crop windows of image [H, W, 3] -> [n, crop, crop, 3]."""
  h, w = image.shape[:2]
  if h < crop or w < crop:
    raise ValueError(f"region {h}x{w} is smaller than a {crop}x{crop} crop.")
  ys, xs = rng.integers(0, h - crop + 1, n), rng.integers(0, w - crop + 1, n)
  return np.stack([image[y:y + crop, x:x + crop] for y, x in zip(ys, xs)])


def _photo_crops(name: str, crop: int, scales: tuple, train_per: int, test_per: int) -> Dataset:
  """Seeded crop x crop crops of PHOTOS at each scale (shorter side in pixels); label = the photo."""
  sk_data, transform = _skimage_data()
  rng = np.random.default_rng(0)
  split = {"train": ([], []), "test": ([], [])}
  for label, photo_name in enumerate(PHOTOS):
    photo = np.asarray(getattr(sk_data, photo_name)())[..., :3]                    # [H, W, 3] uint8
    for side in scales:
      f = side / min(photo.shape[:2])
      size = (round(photo.shape[0] * f), round(photo.shape[1] * f))
      small = transform.resize(photo, size, anti_aliasing=True, preserve_range=True)
      small = np.clip(np.round(small), 0, 255).astype(np.uint8)
      cut = int(size[1] * TRAIN_FRACTION)
      for part, region, n in (("train", small[:, :cut], train_per), ("test", small[:, cut:], test_per)):
        split[part][0].append(_crops(region, n, rng, crop))
        split[part][1].append(np.full(n, label, np.int32))
  arrays = {part: {"image": np.concatenate(x), "label": np.concatenate(y)} for part, (x, y) in split.items()}
  info = DatasetInfo(name=name, kind="image", shape=(crop, crop, 3), levels=256,
                     num_classes=len(PHOTOS), class_names=PHOTOS,
                     source=f"skimage.data colour photographs, {crop}x{crop} crops")
  return Dataset(info, arrays["train"], arrays["test"])


@register("photo_crops", f"32x32 RGB crops of scikit-image's {len(PHOTOS)} colour photos, 256 "
          f"levels, {len(PHOTOS) * len(SCALES) * TRAIN_PER}/{len(PHOTOS) * len(SCALES) * TEST_PER} "
          "split by image region (offline CIFAR/flowers stand-in)")
def load_photo_crops(data_dir: str = "") -> Dataset:
  """Seeded crops; label = the photo (PHOTOS order)."""
  del data_dir
  return _photo_crops("photo_crops", CROP, SCALES, TRAIN_PER, TEST_PER)


CROP_64, SCALES_64, TRAIN_PER_64, TEST_PER_64 = 64, (224, 288, 352), 200, 30


@register("photo_crops_64", f"64x64 RGB crops of scikit-image's {len(PHOTOS)} colour photos, 256 "
          f"levels, {len(PHOTOS) * len(SCALES_64) * TRAIN_PER_64}/"
          f"{len(PHOTOS) * len(SCALES_64) * TEST_PER_64} split by image region (style transfer)")
def load_photo_crops_64(data_dir: str = "") -> Dataset:
  """Seeded 64x64 crops at shorter sides 224, 288, 352 (the 30% test strip of a square photo must
  hold a 64-pixel crop); label = the photo (PHOTOS order)."""
  del data_dir
  return _photo_crops("photo_crops_64", CROP_64, SCALES_64, TRAIN_PER_64, TEST_PER_64)


CROP_128, SCALES_128, TRAIN_PER_128, TEST_PER_128 = 128, (448, 576), 150, 20


@register("photo_crops_128", f"128x128 RGB crops of scikit-image's {len(PHOTOS)} colour photos, 256 "
          f"levels, {len(PHOTOS) * len(SCALES_128) * TRAIN_PER_128}/"
          f"{len(PHOTOS) * len(SCALES_128) * TEST_PER_128} split by image region (style transfer)")
def load_photo_crops_128(data_dir: str = "") -> Dataset:
  """Seeded 128x128 crops at shorter sides 448, 576 (the 30% test strip of a square photo must hold
  a 128-pixel crop); label = the photo (PHOTOS order)."""
  del data_dir
  return _photo_crops("photo_crops_128", CROP_128, SCALES_128, TRAIN_PER_128, TEST_PER_128)


def _status(_data_dir: str) -> str:
  try:
    import skimage  # noqa: F401
  except ImportError:
    return "needs `pip install scikit-image`"
  return "offline"


for _name in ("lfw_subset", "photo_crops", "photo_crops_64", "photo_crops_128"):
  _STATUS[_name] = _status
