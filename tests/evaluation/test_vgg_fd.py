"""The Fréchet distance in ImageNet VGG16 features ("fd_vgg16"): its features, its behaviour on real
photo crops, and the harness reporting it beside the classifier FD."""

import dataclasses

import jax
import numpy as np
import pytest

from gdl_jax import data
from gdl_jax.evaluation import harness, perceptual
from gdl_jax.evaluation import metrics as M
from gdl_jax.evaluation.tasks import evaluate_task
from gdl_jax.nn import vgg
from gdl_jax.train.task import Task

pytest.importorskip("skimage")
if not vgg.available():
  pytest.skip(f"needs the perceptual extra: {vgg.INSTALL_HINT}", allow_module_level=True)


@pytest.fixture(scope="module")
def crops():
  return data.load("photo_crops")


def noisy(x: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
  """uint8 images plus Gaussian noise of `sigma` levels, rounded and clipped."""
  if sigma == 0:
    return x
  noise = np.random.default_rng(seed).normal(0.0, sigma, x.shape)
  return np.clip(np.round(x + noise), 0, 255).astype(np.uint8)


def test_fd_of_a_set_with_itself_is_zero_and_grows_with_noise(crops):
  real = crops.test["image"][::13][:64]                              # 64 crops of all 7 photos
  fn = perceptual.vgg16_feature_fn(256, size=32)
  f_real = fn(real)
  assert f_real.shape == (64, 512) and f_real.dtype == np.float64
  assert M.frechet_distance(f_real, f_real) < 1e-6
  fds = [M.frechet_distance(f_real, fn(noisy(real, s))) for s in (4, 16, 48)]
  assert fds[0] > 1e-3 and np.all(np.diff(fds) > 0), fds


def test_features_do_not_depend_on_batching_and_grey_is_accepted(crops):
  real = crops.test["image"][:9]
  a = perceptual.vgg16_feature_fn(256, size=32, batch_size=4)(real)   # 4 + 4 + 1 (padded)
  b = perceptual.vgg16_feature_fn(256, size=32, batch_size=16)(real)
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  faces = data.load("lfw_subset").test["image"][:4]                   # 25x25 grey
  assert perceptual.vgg16_feature_fn(256, size=32)(faces).shape == (4, 512)
  with pytest.raises(ValueError, match="1 or 3"):
    perceptual.vgg16_feature_fn(256)(np.zeros((2, 32, 32, 2), np.uint8))


def test_which_datasets_get_it(digits, crops):
  assert perceptual.vgg_fd_applies(crops.info)
  assert perceptual.vgg_fd_applies(data.load("lfw_subset").info)       # grey faces, 25x25
  assert not perceptual.vgg_fd_applies(digits.info)                     # 8x8: too small
  assert perceptual.vgg_fd_applies(data.DatasetInfo("fm", "image", (28, 28, 1), levels=256))
  assert not perceptual.vgg_fd_applies(data.DatasetInfo("m", "points", (2,)))


def _sampling_task(images: np.ndarray) -> Task:
  """A 'model' whose samples are given images (no training): all the harness needs."""
  return Task(init=lambda key, batch: None, step=lambda state, batch, key: (state, {}),
              sample=lambda state, key, n: images[:n])


def test_harness_reports_fd_vgg16_beside_the_other_metrics(crops, digits, monkeypatch):
  info = dataclasses.replace(crops.info, num_classes=None)   # no classifier FD (no training here)
  ds = data.Dataset(info, {"image": crops.train["image"][::20]}, {"image": crops.test["image"][::7]})
  keys = {"sample": jax.random.key(0)}
  out = evaluate_task(_sampling_task(noisy(ds.test["image"], 24.0)), None, ds, None, keys,
                      num_samples=32)
  assert out["fd_vgg16"] > 0 and "novelty_ratio" in out and "frechet_distance" not in out
  assert "| FD VGG16 |" in harness.markdown_table({"noisy crops": out})
  off = evaluate_task(_sampling_task(noisy(ds.test["image"], 24.0)), None, ds, None, keys,
                      num_samples=32, use_vgg=False)
  assert "fd_vgg16" not in off and off["novelty_ratio"] == out["novelty_ratio"]
  with pytest.raises(ValueError, match="at least 16x16"):
    evaluate_task(_sampling_task(digits.test["image"]), None, dataclasses.replace(
        digits, info=dataclasses.replace(digits.info, num_classes=None)), None, keys,
        num_samples=8, use_vgg=True, use_log_prob=False)
  # Without the extra: silently absent by default, one clear error when asked for.
  monkeypatch.setattr(vgg.importlib.util, "find_spec", lambda name, *a: None)
  quiet = evaluate_task(_sampling_task(ds.test["image"]), None, ds, None, keys, num_samples=32)
  assert "fd_vgg16" not in quiet
  with pytest.raises(vgg.PerceptualWeightsError, match="perceptual"):
    evaluate_task(_sampling_task(ds.test["image"]), None, ds, None, keys, num_samples=32,
                  use_vgg=True)
