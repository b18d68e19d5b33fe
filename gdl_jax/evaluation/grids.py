"""Pictures of a run: image grids (PNG, GIF) and 2-D scatter / density plots (matplotlib Agg)."""

from __future__ import annotations

import math
import os
from typing import Callable, Optional, Sequence

import numpy as np

_MIN_CELL = 64          # small images (8x8 digits) are upscaled so a cell is at least this many pixels


def _infer_levels(x: np.ndarray) -> int:
  """Integer images without `levels`: the smallest of 2, 17 (digits), 256 that covers the maximum."""
  hi = int(x.max()) if x.size else 0
  for levels in (2, 17, 256):
    if hi < levels:
      return levels
  raise ValueError(f"integer images reach {hi} > 255; pass levels= to save_grid.")


def to_uint8(images, levels: Optional[int] = None) -> np.ndarray:
  """NHWC integer levels (0..levels-1) or floats in [-1, 1] -> uint8 0..255, same shape."""
  x = np.asarray(images)
  if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
    levels = levels or _infer_levels(x)
    return np.clip(np.round(x.astype(np.float64) * (255.0 / (levels - 1))), 0, 255).astype(np.uint8)
  if np.issubdtype(x.dtype, np.floating):
    return np.clip(np.round((x.astype(np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)
  raise ValueError(f"images must be integer levels or floats in [-1, 1], got dtype {x.dtype}.")


def make_grid(images, nrow: Optional[int] = None, levels: Optional[int] = None,
              pad: int = 1) -> np.ndarray:
  """Tiles images [N, H, W, C] (C = 1 or 3; or [N, H, W]) into one uint8 image [H', W', C]."""
  x = np.asarray(images)
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4 or x.shape[-1] not in (1, 3) or x.shape[0] == 0:
    raise ValueError(f"images must be [N, H, W, C] with N >= 1 and C in (1, 3), got {x.shape}.")
  x = to_uint8(x, levels)
  n, h, w, c = x.shape
  scale = max(1, math.ceil(_MIN_CELL / max(h, w)))
  if scale > 1:
    x = np.repeat(np.repeat(x, scale, axis=1), scale, axis=2)
    h, w = h * scale, w * scale
  ncol = nrow or max(1, math.ceil(math.sqrt(n)))    # nrow = images per row, as in torchvision
  rows = math.ceil(n / ncol)
  grid = np.full((rows * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, np.uint8)
  for i in range(n):
    r, q = divmod(i, ncol)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = x[i]
  return grid


def _pil(grid: np.ndarray):
  from PIL import Image
  return Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)   # uint8 -> "L" / "RGB"


def _ensure_dir(path: str):
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)


def save_grid(images, path: str, nrow: Optional[int] = None, levels: Optional[int] = None) -> str:
  """Writes images (integer levels or [-1, 1] floats, NHWC) as one PNG grid; returns the path.

  nrow: images per row (default: a square grid). levels: number of integer levels (default: the
  smallest of 2, 17, 256 covering the data).
  """
  _ensure_dir(path)
  _pil(make_grid(images, nrow, levels)).save(path)
  return path


def save_gif(frames: Sequence, path: str, nrow: Optional[int] = None, levels: Optional[int] = None,
             duration_ms: int = 120) -> str:
  """Writes an animated GIF; a frame is a batch [N, H, W, C] (tiled) or one grid [H, W(, C)]."""
  if not frames:
    raise ValueError("save_gif needs at least one frame.")
  grids = []
  for f in frames:
    f = np.asarray(f)
    if f.ndim == 2:                              # a greyscale grid read back from a PNG
      f = f[..., None]
    if f.ndim == 4:
      grids.append(make_grid(f, nrow, levels))
    elif f.ndim == 3 and f.shape[-1] in (1, 3):
      grids.append(to_uint8(f[None], levels)[0])
    else:
      raise ValueError(f"a frame must be a batch [N, H, W, C] or a grid [H, W, C], got {f.shape}.")
  images = [_pil(g) for g in grids]
  _ensure_dir(path)
  images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
  return path


def _figure(figsize=(5, 5)):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=figsize)
  FigureCanvasAgg(fig)                         # Agg, without touching pyplot's global backend
  return fig, fig.add_subplot(1, 1, 1)


def save_scatter(points, labels=None, path: str = "scatter.png", title: str = "",
                 size: float = 4.0) -> str:
  """Scatter plot of 2-D points [N, 2] (e.g. latents), coloured by integer labels [N] if given."""
  p = np.asarray(points, np.float64)
  if p.ndim != 2 or p.shape[1] != 2:
    raise ValueError(f"points must be [N, 2], got {p.shape}; project to 2-D first.")
  fig, ax = _figure()
  if labels is None:
    ax.scatter(p[:, 0], p[:, 1], s=size)
  else:
    lab = np.asarray(labels)
    sc = ax.scatter(p[:, 0], p[:, 1], c=lab, s=size, cmap="tab10")
    fig.colorbar(sc, ax=ax)
  ax.set_title(title)
  _ensure_dir(path)
  fig.savefig(path, dpi=100, bbox_inches="tight")
  return path


def save_density(log_prob_fn: Callable, path: str, bounds=((-2.0, 3.0), (-1.5, 2.0)),
                 resolution: int = 100, points=None, title: str = "") -> str:
  """Heat map of exp(log_prob_fn(xy [M, 2]) -> [M]) over bounds ((xmin, xmax), (ymin, ymax))."""
  (x0, x1), (y0, y1) = bounds
  xs, ys = np.linspace(x0, x1, resolution), np.linspace(y0, y1, resolution)
  xx, yy = np.meshgrid(xs, ys)
  xy = np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float32)        # [M, 2]
  lp = np.asarray(log_prob_fn(xy), np.float64).reshape(resolution, resolution)
  fig, ax = _figure()
  im = ax.imshow(np.exp(lp), origin="lower", extent=(x0, x1, y0, y1), aspect="auto", cmap="viridis")
  fig.colorbar(im, ax=ax)
  if points is not None:
    p = np.asarray(points)
    ax.scatter(p[:, 0], p[:, 1], s=2, c="white", alpha=0.5)
  ax.set_title(title)
  _ensure_dir(path)
  fig.savefig(path, dpi=100, bbox_inches="tight")
  return path
