"""Single images from files (any format Pillow reads) or from scikit-image's bundled photos.

    x = read_image("photo.jpg", size=256)           # [H, W, 3] float32 in [-1, 1], longer side 256
    x = read_image("skimage:astronaut", size=256)   # a scikit-image photo, offline
    write_image("out.png", x)                       # [H, W, 3] in [-1, 1] -> 8-bit PNG / JPEG / ...

Every image comes back as RGB: grey (L, I;16, ...) is replicated to three channels, palette images
are expanded, an alpha channel is dropped (composited on white). Problems (a missing or unreadable
file, a directory, a file that is not an image, an unknown scikit-image name, an image too small)
raise DataError naming the fix; the CLI prints it as one `gdl-jax: error:` line.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from gdl_jax.data.info import DataError

SKIMAGE_PREFIX = "skimage:"
# scikit-image photos bundled with the package (no download): colour photos and grey textures.
SKIMAGE_IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
                  "immunohistochemistry", "retina", "colorwheel", "camera", "brick", "grass", "gravel",
                  "text", "moon", "page", "coins", "clock")
WRITE_FORMATS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _to_float(rgb: np.ndarray) -> np.ndarray:
  return (rgb.astype(np.float32) / 127.5 - 1.0).astype(np.float32)


def _skimage(name: str) -> np.ndarray:
  if name not in SKIMAGE_IMAGES:
    raise DataError(f"{SKIMAGE_PREFIX}{name}: not one of the bundled scikit-image photos; use one of "
                    f"{', '.join(SKIMAGE_PREFIX + n for n in SKIMAGE_IMAGES)}, or an image file.")
  try:
    import skimage.data
  except ImportError as e:
    raise DataError(f"{SKIMAGE_PREFIX}{name} needs scikit-image: `pip install scikit-image`, or pass "
                    "an image file.") from e
  im = np.asarray(getattr(skimage.data, name)())
  if im.dtype == bool:
    im = im.astype(np.uint8) * 255
  if im.ndim == 2:
    im = np.repeat(im[..., None], 3, axis=-1)
  return im[..., :3].astype(np.uint8)


def _file(path: str) -> np.ndarray:
  from PIL import Image, UnidentifiedImageError
  if not os.path.exists(path):
    raise DataError(f"image file {path!r} does not exist; pass an existing image file (or "
                    f"{SKIMAGE_PREFIX}NAME, e.g. {SKIMAGE_PREFIX}astronaut).")
  if os.path.isdir(path):
    raise DataError(f"{path!r} is a directory; pass an image file.")
  try:
    with Image.open(path) as img:
      img.load()
      if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
      elif img.mode.startswith("I;16") or img.mode in ("I", "F"):
        a = np.asarray(img, np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo) * 255.0
        return np.repeat(np.round(a).astype(np.uint8)[..., None], 3, axis=-1)
      return np.asarray(img.convert("RGB"), np.uint8)
  except UnidentifiedImageError as e:
    raise DataError(f"{path!r} is not an image file Pillow can read; pass a PNG, JPEG, BMP, TIFF, "
                    "WebP, ... image.") from e
  except Image.DecompressionBombError as e:
    raise DataError(f"{path!r}: {e}; pass a smaller image.") from e
  except (OSError, ValueError, SyntaxError) as e:  # truncated / corrupt data, unreadable file
    raise DataError(f"cannot read the image {path!r} ({type(e).__name__}: {e}); pass a readable, "
                    "complete image file.") from e


def resize_longer(image: np.ndarray, size: int) -> np.ndarray:
  """Resizes [H, W, C] (any dtype) so that its longer side is `size` pixels (aspect kept), with
  anti-aliasing when shrinking; float32 out, in the input's value range."""
  import skimage.transform
  h, w = image.shape[:2]
  f = size / max(h, w)
  shape = (max(1, round(h * f)), max(1, round(w * f)))
  if shape == (h, w):
    return image.astype(np.float32)
  return skimage.transform.resize(image.astype(np.float32), shape + image.shape[2:], order=1,
                                  anti_aliasing=f < 1, preserve_range=True).astype(np.float32)


def read_image(source: str, size: Optional[int] = None, *, min_side: int = 1,
               what: str = "image") -> np.ndarray:
  """[H, W, 3] float32 in [-1, 1] from a file path or `skimage:NAME`; size: resize so the longer side
  is `size` (None keeps the file's size). The shorter side must reach `min_side` after resizing."""
  if not isinstance(source, str) or not source.strip():
    raise DataError(f"the {what} path is empty; pass an image file or {SKIMAGE_PREFIX}NAME.")
  rgb = _skimage(source[len(SKIMAGE_PREFIX):]) if source.startswith(SKIMAGE_PREFIX) else _file(source)
  if rgb.ndim != 3 or min(rgb.shape[:2]) < 1:
    raise DataError(f"{source!r} holds an empty image (shape {rgb.shape}); pass another image.")
  x = _to_float(rgb) if size is None else np.clip(resize_longer(rgb, size) / 127.5 - 1.0, -1.0, 1.0)
  if min(x.shape[:2]) < min_side:
    raise DataError(f"the {what} {source!r} is {x.shape[0]}x{x.shape[1]} pixels" +
                    (f" at longer side {size}" if size is not None else "") + f"; its shorter side "
                    f"must be at least {min_side} pixels: pass a larger size or a less elongated image.")
  return x.astype(np.float32)


def to_uint8(x: np.ndarray) -> np.ndarray:
  """[-1, 1] floats -> uint8 levels 0..255 (rounded, clipped)."""
  return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def write_image(path: str, x: np.ndarray) -> None:
  """Writes [H, W, 3] (or [H, W, 1]) in [-1, 1] as an 8-bit image; the format follows the extension
  (one of WRITE_FORMATS). Raises OSError from the file system as it is."""
  from PIL import Image
  ext = os.path.splitext(path)[1].lower()
  if ext not in WRITE_FORMATS:
    raise DataError(f"{path!r}: unknown image extension {ext or '(none)'!r}; end the path with one "
                    f"of {', '.join(WRITE_FORMATS)}.")
  a = to_uint8(x)
  if a.ndim == 3 and a.shape[-1] == 1:
    a = a[..., 0]
  Image.fromarray(a).save(path)
