"""The offline data layer: real data through tfds array_record, deterministic batches, clear errors."""

import os
import sys

import numpy as np
import pytest

from gdl_jax import data


def test_digits_is_real_and_split(digits):
  assert digits.info.shape == (8, 8, 1) and digits.info.levels == 17
  assert digits.train["image"].dtype == np.uint8 and digits.train["image"].max() == 16
  assert len(digits.train["image"]) + len(digits.test["image"]) == 1797
  assert len(digits.test["image"]) == 359 or len(digits.test["image"]) == 360
  # The split is disjoint: no test image index reused; and all 10 classes on both sides.
  assert set(np.unique(digits.test["label"])) == set(range(10))
  from sklearn.datasets import load_digits
  ref = load_digits().images.astype(np.uint8).reshape(1797, -1)
  got = np.concatenate([digits.train["image"], digits.test["image"]]).reshape(1797, -1)
  assert sorted(map(bytes, ref)) == sorted(map(bytes, got))


def test_loaded_through_tfds_without_tensorflow(digits):
  del digits
  assert "tensorflow" not in sys.modules
  root = os.path.join(os.environ["GDL_DATA_DIR"], "gdl_digits", "1.0.0")
  assert any(f.startswith("gdl_digits-train.array_record") for f in os.listdir(root))


def test_moons(moons):
  assert moons.train["x"].shape == (8000, 2) and moons.info.kind == "points"


def test_fashion_mnist_from_idx():
  """Real Fashion-MNIST where Debian's dataset-fashion-mnist is installed (.ci/run installs it);
  elsewhere the loader must fail at once with the fix."""
  if not os.path.isdir("/usr/share/datasets/fashion-mnist") and not os.environ.get("GDL_FASHION_MNIST_DIR"):
    with pytest.raises(data.DataError, match="apt-get install dataset-fashion-mnist"):
      data.load("fashion_mnist")
    return
  ds = data.load("fashion_mnist")
  assert ds.train["image"].shape == (60000, 28, 28, 1) and ds.test["image"].shape == (10000, 28, 28, 1)
  assert ds.info.levels == 256 and ds.info.num_classes == 10
  assert np.bincount(ds.test["label"]).tolist() == [1000] * 10


def test_batches_are_a_function_of_seed_and_step(digits):
  a = data.batch_at(digits.train, 17, 32, seed=3)
  b = data.batch_at(digits.train, 17, 32, seed=3)
  c = data.batch_at(digits.train, 18, 32, seed=3)
  np.testing.assert_array_equal(a["image"], b["image"])
  assert not np.array_equal(a["image"], c["image"])
  # One epoch visits each example at most once.
  spe = data.steps_per_epoch(len(digits.train["label"]), 32)
  seen = np.concatenate([data.batch_at({"i": np.arange(1437)}, s, 32, 0)["i"] for s in range(spe)])
  assert len(np.unique(seen)) == len(seen) == spe * 32


def test_unknown_dataset_fails_fast_with_fix():
  with pytest.raises(data.DataError, match="tfds build"):
    data.load("no_such_dataset_xyz")


def test_missing_data_dir_is_clear(tmp_path):
  with pytest.raises(data.DataError, match="does not exist"):
    data.load("digits", data_dir=str(tmp_path / "missing"))


def test_fashion_mnist_missing_names_fix(tmp_path, monkeypatch):
  from gdl_jax.data import builders
  monkeypatch.setattr(builders, "FASHION_MNIST_DIRS", ())
  monkeypatch.delenv("GDL_FASHION_MNIST_DIR", raising=False)
  with pytest.raises(data.DataError, match="apt-get install dataset-fashion-mnist"):
    data._load_cached.__wrapped__("fashion_mnist", str(tmp_path))


def test_signed_round_trip():
  x = np.arange(17, dtype=np.uint8)
  y = data.to_signed(x, 17)
  assert y.min() == -1 and y.max() == 1
  np.testing.assert_array_equal(data.from_signed(y, 17), x)


def test_photo_crops_real_split_by_region_and_seeded():
  pytest.importorskip("skimage")
  from gdl_jax.data import photos
  ds = data.load("photo_crops")
  assert ds.info.shape == (32, 32, 3) and ds.info.levels == 256 and ds.info.num_classes == 7
  assert ds.train["image"].shape == (4200, 32, 32, 3) and ds.test["image"].shape == (840, 32, 32, 3)
  assert ds.train["image"].dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(ds.train["label"]), [600] * 7)
  # real photographs: every crop has structure (not a constant patch of noise-free colour)
  assert float(np.mean(ds.train["image"].reshape(4200, -1).std(1) > 2.0)) > 0.9
  # no test crop appears in training (the split is by image region)
  train = {x.tobytes() for x in ds.train["image"]}
  assert not any(x.tobytes() in train for x in ds.test["image"])
  again = photos.load_photo_crops()
  np.testing.assert_array_equal(again.test["image"], ds.test["image"])


def test_photo_crops_128_same_photos_split_by_region():
  pytest.importorskip("skimage")
  ds = data.load("photo_crops_128")
  assert ds.info.shape == (128, 128, 3) and ds.info.num_classes == 7
  assert ds.train["image"].shape == (2100, 128, 128, 3) and ds.test["image"].shape == (280, 128, 128, 3)
  np.testing.assert_array_equal(np.bincount(ds.test["label"]), [40] * 7)
  train = {x.tobytes() for x in ds.train["image"]}
  assert not any(x.tobytes() in train for x in ds.test["image"])


def test_lfw_subset_registered_in_the_library():
  pytest.importorskip("skimage")
  ds = data.load("lfw_subset")
  assert ds.info.shape == (25, 25, 1) and len(ds.train["image"]) == 160 and len(ds.test["image"]) == 40


def _load_digits_into(data_dir, queue):
  try:
    queue.put(data.load("digits", data_dir=data_dir).num_examples("train"))
  except BaseException as e:  # reported to the parent, which fails the test
    queue.put(repr(e))


def test_concurrent_processes_prepare_one_dataset_once(tmp_path):
  """Two processes loading an unprepared dataset into one data dir (pytest-xdist workers, two
  runs started together) both get it: the second waits for the first's lock instead of racing
  on tfds's final rename (FileExistsError)."""
  import multiprocessing as mp
  ctx = mp.get_context("spawn")
  queue = ctx.Queue()
  procs = [ctx.Process(target=_load_digits_into, args=(str(tmp_path), queue)) for _ in range(2)]
  for p in procs:
    p.start()
  results = [queue.get(timeout=300) for _ in procs]
  for p in procs:
    p.join(timeout=60)
  assert results == [1438, 1438], results
  assert len(list((tmp_path / "gdl_digits").iterdir())) == 1   # one prepared version, no leftovers
