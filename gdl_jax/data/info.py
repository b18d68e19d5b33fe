"""Dataset metadata and the in-memory dataset every experiment trains on."""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np


class DataError(ValueError):
  """A dataset cannot be found or read; the message says how to get it."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a model needs to know about its data.

  kind: "image" (uint8 levels, NHWC), "points" (float32 vectors), "text" (int32 token windows) or
  "pianoroll" (uint8 one-hot multi-track grids [bars, steps, pitch bins, tracks], levels 2; x key
  "roll"; gdl_jax.data.music_grid).
  shape: one example's shape: (H, W, C), (D,) or (T,).
  levels: number of discrete values per pixel (17 for digits, 256 for 8-bit images); None if continuous.
  vocab: the tokens of a text dataset, index = token id; for a captioned image dataset
  (gdl_jax.data.captions, base = the uncaptioned dataset) the captions' word vocabulary.
  kind "unpaired" (two image domains, gdl_jax.data.unpaired): splits hold "a" and "b" images of
  `shape` (same count, no pairing); domains: the two domains' names; base: the labelled dataset they
  come from (its classifier judges translations); domain_classes: the base's class of A and of B
  (class pairs); mapping: the known map b = f(a) ("invert", "transpose", "swap_rb", each its own
  inverse), whose test split also holds "a_mapped" = f(a) and "b_mapped" = f(b).
  """

  name: str
  kind: str
  shape: tuple[int, ...]
  levels: Optional[int] = None
  num_classes: Optional[int] = None
  class_names: tuple[str, ...] = ()
  source: str = ""
  vocab: tuple[str, ...] = ()
  domains: tuple[str, ...] = ()
  base: str = ""
  domain_classes: tuple[int, ...] = ()
  mapping: str = ""
  duration_vocab: tuple[str, ...] = ()
  # kind "latents" (World Models' M, experiments/world_models.py): windows of a VAE's posterior
  # means "mu" [N, T, Z] with "logvar", "action" [N, T, A], "reward", "done", "mask" [N, T].

  @property
  def dims(self) -> int:
    return int(np.prod(self.shape))


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Train and test splits as dicts of numpy arrays ("image"/"x"/"tokens", optional "label";
  "a"/"b" for two unpaired image domains); `valid`, where a dataset has one (music: split by
  piece), is for choosing hyperparameters such as the n-gram baselines' smoothing."""

  info: DatasetInfo
  train: dict
  test: dict
  valid: Optional[dict] = None

  @property
  def x_key(self) -> str:
    return {"image": "image", "points": "x", "text": "tokens", "unpaired": "a",
            "music": "tokens", "pianoroll": "roll", "latents": "mu"}[self.info.kind]

  def num_examples(self, split: str = "train") -> int:
    return len(getattr(self, split)[self.x_key])


def to_signed(x, levels: int):
  """Integer levels {0..levels-1} -> float32 in [-1, 1] (works on numpy and jax arrays)."""
  return x.astype("float32") * (2.0 / (levels - 1)) - 1.0


def from_signed(y, levels: int):
  """Floats in [-1, 1] -> nearest integer level, clipped (numpy or jax)."""
  import jax.numpy as jnp
  xp = jnp if not isinstance(y, np.ndarray) else np
  return xp.clip(xp.round((y + 1.0) * ((levels - 1) / 2.0)), 0, levels - 1).astype(xp.int32)
