"""Multi-track piano rolls (MuseGAN): range compliance, the music harness on rolls, files, figures.

    pianoroll_metrics(sample_rolls, dataset)   # range compliance + in-key + PC distance, with the
                                               # held-out windows' own values beside them
    save_rolls(rolls, "out/")                  # .mid, .wav, piano-roll .png per roll (music_io)

Rolls are one-hot uint8 [n, bars, steps, 84, tracks] (gdl_jax.data.music_grid); each roll is read
as one note array per track with `grid_to_notes` (a run of one pitch = one note).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from gdl_jax.data.music_grid import REST, VOICES, grid_to_bins, grid_to_notes, voice_ranges


def range_compliance(rolls: np.ndarray, ranges: np.ndarray) -> np.ndarray:
  """Per track, the share of notes whose pitch lies inside [low, high] of `ranges` [K, 2] -> [K].

  A note is a run of one pitch in a track (rests are not notes); nan for a track with no notes.
  """
  rolls = np.asarray(rolls)
  ranges = np.asarray(ranges)
  if rolls.ndim != 5 or ranges.shape != (rolls.shape[-1], 2):
    raise ValueError(f"range_compliance takes rolls [n, bars, steps, bins, K] and ranges [K, 2]; "
                     f"got {rolls.shape} and {ranges.shape}.")
  inside = np.zeros(rolls.shape[-1])
  total = np.zeros(rolls.shape[-1])
  for roll in rolls:
    for k, notes in enumerate(grid_to_notes(roll)):
      p = notes[:, 0]
      inside[k] += np.sum((p >= ranges[k, 0]) & (p <= ranges[k, 1]))
      total[k] += len(p)
  with np.errstate(invalid="ignore", divide="ignore"):
    return inside / total


def rolls_to_pieces(rolls: np.ndarray) -> list[list[np.ndarray]]:
  """Rolls [n, ...] -> n pieces, each a list of note arrays (one per track)."""
  return [grid_to_notes(r) for r in np.asarray(rolls)]


def pianoroll_metrics(samples: np.ndarray, dataset, *, max_pieces: Optional[int] = 200,
                      seed: int = 0) -> dict:
  """Range compliance per voice (S, A, T, B; ranges from the training split), the in-key ratio and
  the pitch-class-histogram distance to held-out windows (gdl_jax.evaluation.music), each with the
  held-out windows' own value ("heldout_" keys; their PC distance is to another half of held-out).

  max_pieces: at most this many samples and held-out windows (music21's key estimate is ~10 ms each).
  """
  from gdl_jax.evaluation import music
  samples = np.asarray(samples)
  train_bins = dataset.train["bins"] if "bins" in dataset.train else grid_to_bins(dataset.train["roll"])
  ranges = voice_ranges(train_bins)
  test = np.asarray(dataset.test["roll"])
  rng = np.random.default_rng(seed)
  n = len(samples) if max_pieces is None else min(len(samples), max_pieces)
  samples = samples[:n]
  held = test[np.sort(rng.choice(len(test), min(len(test), max(n, 2)), replace=False))]
  out: dict = {}
  names = [v.lower() for v in VOICES] if samples.shape[-1] == len(VOICES) else \
      [str(k) for k in range(samples.shape[-1])]
  for prefix, rolls in (("", samples), ("heldout_", held)):
    comp = range_compliance(rolls, ranges)
    for name, c in zip(names, comp):
      out[f"{prefix}range_{name}"] = float(c)
    out[f"{prefix}range_min"] = float(np.nanmin(comp)) if np.any(np.isfinite(comp)) else float("nan")
    pieces = rolls_to_pieces(rolls)
    keys = [music.in_key_ratio(p) for p in pieces if sum(len(v) for v in p)]
    out[f"{prefix}in_key"] = float(np.mean(keys)) if keys else float("nan")
    out[f"{prefix}rest_share"] = float(np.mean(grid_to_bins(rolls) == REST))
  sample_pieces, held_pieces = rolls_to_pieces(samples), rolls_to_pieces(held)
  out["pc_distance"] = music.pitch_class_distance(sample_pieces, held_pieces)
  half = len(held_pieces) // 2
  out["heldout_pc_distance"] = music.pitch_class_distance(held_pieces[:half], held_pieces[half:]) \
      if half else float("nan")
  out["range_low_high"] = ranges.tolist()
  return out


def save_rolls(rolls: np.ndarray, directory: str, prefix: str = "sample") -> list[str]:
  """Each roll as directory/{prefix}_{i}.mid, .wav and .png (gdl_jax.music_io); returns the paths."""
  from gdl_jax import music_io
  return music_io.write_samples(rolls_to_pieces(rolls), directory, prefix=prefix)


def save_latent_figure(rolls: np.ndarray, path: str, row_names: Sequence[str] = ("chords", "style",
                                                                                "melody", "groove"),
                       title: str = "") -> str:
  """The book's figure: the base roll, then one row per latent input with only that input redrawn.

  rolls: [1 + len(row_names) * m, bars, steps, bins, K] as `experiments.musegan.latent_sweep`
  returns them. Each panel draws every track's notes (a colour per track) over the two bars.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rolls = np.asarray(rolls)
  m = (len(rolls) - 1) // len(row_names)
  if m < 1 or 1 + m * len(row_names) != len(rolls):
    raise ValueError(f"expected 1 + {len(row_names)} * m rolls, got {len(rolls)}.")
  colors = plt.get_cmap("tab10")
  fig, axes = plt.subplots(len(row_names), m + 1, figsize=(2.6 * (m + 1), 1.7 * len(row_names)),
                           sharey=True, squeeze=False)
  pieces = rolls_to_pieces(rolls)
  pitches = [v[:, 0] for p in pieces for v in p if len(v)]
  lo, hi = (min(p.min() for p in pitches) - 2, max(p.max() for p in pitches) + 2) if pitches else (36, 82)
  length = rolls.shape[1] * rolls.shape[2] / 4.0
  for r, name in enumerate(row_names):
    for c in range(m + 1):
      ax = axes[r, c]
      piece = pieces[0] if c == 0 else pieces[1 + r * m + (c - 1)]
      for k, notes in enumerate(piece):
        for p, o, d in notes:
          ax.add_patch(matplotlib.patches.Rectangle((o, p - 0.4), d, 0.8, color=colors(k % 10)))
      ax.set_xlim(0, length)
      ax.set_ylim(lo, hi)
      ax.set_xticks([0, length / 2, length])
      ax.tick_params(labelsize=6)
      if c == 0:
        ax.set_ylabel(f"{name}\n(MIDI pitch)", fontsize=7)
      if r == 0:
        ax.set_title("base" if c == 0 else f"variation {c}", fontsize=8)
  handles = [matplotlib.patches.Patch(color=colors(k), label=VOICES[k] if k < len(VOICES) else str(k))
             for k in range(rolls.shape[-1])]
  fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7)
  fig.suptitle(title or "MuseGAN: one latent input redrawn per row (base sample left)", fontsize=9)
  fig.tight_layout(rect=(0, 0.05, 1, 0.97))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
