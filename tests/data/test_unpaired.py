"""Two unpaired domains (gdl_jax.data.unpaired): what each split holds, disjointness, bad names."""

import numpy as np
import pytest

from gdl_jax import data
from gdl_jax.data import unpaired


def _rows(x):
  return {im.tobytes() for im in x}


def test_known_mapping_digits_inverted(digits):
  ds = data.load("digits_inverted")
  info = ds.info
  assert info.kind == "unpaired" and info.shape == (8, 8, 1) and info.levels == 17
  assert info.mapping == "invert" and info.base == "digits" and ds.x_key == "a"
  n = len(digits.train["image"]) // 2
  assert ds.train["a"].shape == ds.train["b"].shape == (n, 8, 8, 1)
  # A is one half of the training images, B the inversion of the other half: disjoint indices
  train = digits.train["image"]
  perm = np.random.default_rng(0).permutation(len(train))
  assert _rows(ds.train["a"]) == _rows(train[perm[:n]])
  assert _rows(16 - ds.train["b"].astype(int)) == _rows(train[perm[n:2 * n]].astype(int))
  # held out: a_mapped = f(a), b = f(b_mapped) (invert is its own inverse)
  np.testing.assert_array_equal(ds.test["a"], digits.test["image"])
  np.testing.assert_array_equal(ds.test["a_mapped"].astype(int), 16 - ds.test["a"].astype(int))
  np.testing.assert_array_equal(ds.test["b"].astype(int), 16 - ds.test["b_mapped"].astype(int))
  assert ds.test["b"].dtype == digits.test["image"].dtype


def test_class_pair_from_digits(digits):
  ds = data.load("pair:digits:3:8")
  assert ds.info.domains == ("3", "8") and ds.info.domain_classes == (3, 8) and ds.info.base == "digits"
  for split in ("train", "test"):
    src = getattr(digits, split)
    a3, a8 = src["image"][src["label"] == 3], src["image"][src["label"] == 8]
    n = min(len(a3), len(a8))
    assert len(getattr(ds, split)["a"]) == len(getattr(ds, split)["b"]) == n
    assert _rows(getattr(ds, split)["a"]) <= _rows(a3) and _rows(getattr(ds, split)["b"]) <= _rows(a8)
  assert "a_mapped" not in ds.test


def test_transpose_and_class_names():
  x = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3, 1)
  np.testing.assert_array_equal(unpaired.apply_mapping("transpose", x, 256)[1, 0, 2, 0], x[1, 2, 0, 0])
  np.testing.assert_array_equal(unpaired.apply_mapping("invert", x, 256), 255 - x)
  assert unpaired.class_key("Ankle boot") == "ankle_boot" and unpaired.class_key("T-shirt/top") == "t_shirt_top"


@pytest.mark.parametrize("name, message", [
    ("pair:digits:3:12", "class index 12 is out of range for 'digits', which has 10 classes"),
    ("pair:digits:3:sneaker", "'digits' has no class 'sneaker'"),
    ("pair:digits:4:4", "must be different classes"),
    ("map:digits:swap_rb", "needs RGB images; 'digits' has 1 channel"),
    ("map:digits:rotate", "mapping 'rotate' is unknown"),
    ("pair:moons:0:1", "'moons' is a points dataset"),
    ("pair:digits:3", "is not a domain pair"),
])
def test_bad_domain_names_raise_one_clear_error(name, message):
  with pytest.raises(data.DataError, match=message):
    data.load(name)


def test_dataset_without_classes_cannot_be_paired(digits):
  no_labels = data.Dataset(data.DatasetInfo("nolabels", "image", (8, 8, 1), levels=17),
                           {"image": digits.train["image"]}, {"image": digits.test["image"]})
  with pytest.raises(data.DataError, match="has no class labels"):
    unpaired.class_pair(no_labels, 0, 1, "pair:nolabels:0:1")


def test_class_without_images_is_refused(digits):
  x, y = digits.train["image"], digits.train["label"]
  info = data.DatasetInfo("some", "image", (8, 8, 1), levels=17, num_classes=10,
                          class_names=tuple(str(i) for i in range(10)))
  ds = data.Dataset(info, {"image": x[y < 5], "label": y[y < 5]}, {"image": x[y < 5], "label": y[y < 5]})
  with pytest.raises(data.DataError, match="has 0 images of '7'"):
    unpaired.class_pair(ds, 7, 1, "pair:some:7:1")
