"""The MuseGAN view of the Bach chorales: four voices on a 16th-note grid, 2-bar piano rolls.

    ds = gdl_jax.data.load("chorales_grid")   # Dataset(info(kind="pianoroll"), {"roll", "bins"})
    ds.train["roll"]    # uint8 [N, 2, 16, 84, 4]: bars x 16th steps x pitch bins x tracks, one-hot
    voices = grid_to_notes(ds.test["roll"][0])   # 4 note arrays (S, A, T, B), float (n, 3)

Layout (the second edition's): tracks = the voices Soprano, Alto, Tenor, Bass, in that order; each
bar is 16 sixteenth-note steps (4/4 time only: pieces in another metre are skipped); each step of
each track holds exactly one of 84 bins:
  bin p in 0..82  = the MIDI pitch p sounding at that step (the chorales use 36..81 only; a note
                    outside 36..81 is moved by octaves into that range when parsed);
  bin 83 (REST)   = silence.
A sample starts at a bar line of two consecutive full 4/4 bars (pickups and incomplete bars are
never inside one); samples start every bar (hop 1 bar, so consecutive samples overlap by a bar).
Repeated notes of the same pitch merge into one on the grid (the grid has no onsets), so the note
arrays read back from a grid hold the merged notes.

A note array is float32 (n, 3) = (MIDI pitch, onset in quarter notes, duration in quarter notes),
rests omitted, one per voice (the contract of gdl_jax.music_io and gdl_jax.evaluation.music).

The split is by piece, `music_common.split_by_piece(chorale_names())`, the same pieces as the token
view's: train -> `Dataset.train`, validation -> `Dataset.valid` (None if its pieces hold no
window), test -> `Dataset.test`. The
chorales are parsed with music21 once, in a process pool over the CPU cores, and cached as
array_record under the data dir.
"""

from __future__ import annotations

import hashlib
import os
from typing import Optional, Sequence

import numpy as np

from gdl_jax.data.info import DataError, Dataset, DatasetInfo

VOICES = ("Soprano", "Alto", "Tenor", "Bass")
N_BARS, N_STEPS, N_BINS, N_TRACKS = 2, 16, 84, 4
STEPS_PER_QUARTER = 4
REST = 83
LOW, HIGH = 36, 81
SHAPE = (N_BARS, N_STEPS, N_BINS, N_TRACKS)
_POOL_MIN_PIECES = 16  # fewer pieces parse in this process (no pool start-up)


# ---------------------------------------------------------------------------------------------
# grid <-> note arrays

def fold_pitch(p: int) -> int:
  """MIDI pitch moved by octaves into LOW..HIGH (unchanged when inside)."""
  while p < LOW:
    p += 12
  while p > HIGH:
    p -= 12
  return p


def notes_to_bins(notes: np.ndarray, n_steps: int, start: float = 0.0) -> np.ndarray:
  """One voice's note array -> uint8 bins [n_steps] of the grid starting at `start` quarters.

  Step t covers [start + t/4, start + (t+1)/4); it holds the pitch of the note sounding at its
  start (onsets and ends rounded to the nearest 16th), REST where none sounds.
  """
  notes = np.asarray(notes, np.float64).reshape(-1, 3)
  bins = np.full(n_steps, REST, np.uint8)
  for pitch, onset, dur in notes:
    a = int(round((onset - start) * STEPS_PER_QUARTER))
    b = int(round((onset + dur - start) * STEPS_PER_QUARTER))
    a, b = max(a, 0), min(b, n_steps)
    if b > a:
      p = int(round(pitch))
      if not 0 <= p < REST:
        raise ValueError(f"pitch {p} does not fit the grid's bins 0..{REST - 1}.")
      bins[a:b] = p
  return bins


def bins_to_notes(bins: np.ndarray, start: float = 0.0) -> np.ndarray:
  """uint8 bins [T] of one voice -> its note array (runs of one pitch = one note; rests omitted)."""
  bins = np.asarray(bins).reshape(-1)
  out, t = [], 0
  while t < len(bins):
    u = t
    while u < len(bins) and bins[u] == bins[t]:
      u += 1
    if bins[t] != REST:
      out.append((float(bins[t]), start + t / STEPS_PER_QUARTER, (u - t) / STEPS_PER_QUARTER))
    t = u
  return np.asarray(out, np.float32).reshape(-1, 3)


def bins_to_grid(bins: np.ndarray) -> np.ndarray:
  """Bins [..., bars, steps, tracks] -> one-hot uint8 grid [..., bars, steps, 84, tracks]."""
  bins = np.asarray(bins)
  if bins.size and (bins.min() < 0 or bins.max() >= N_BINS):
    raise ValueError(f"bins span [{bins.min()}, {bins.max()}], outside 0..{N_BINS - 1}.")
  return np.moveaxis(np.eye(N_BINS, dtype=np.uint8)[bins.astype(np.int64)], -1, -2)


def grid_to_bins(grid: np.ndarray) -> np.ndarray:
  """A grid [..., bars, steps, 84, tracks] (one-hot, or scores: the argmax bin) -> bins."""
  grid = np.asarray(grid)
  if grid.ndim < 4 or grid.shape[-2] != N_BINS:
    raise ValueError(f"a grid has shape [..., bars, steps, {N_BINS}, tracks]; got {grid.shape}.")
  return np.argmax(grid, axis=-2).astype(np.uint8)


def grid_to_notes(grid: np.ndarray) -> list[np.ndarray]:
  """One grid [bars, steps, 84, tracks] (one-hot or scores) -> a note array per track (S, A, T, B)."""
  grid = np.asarray(grid)
  if grid.ndim != 4:
    raise ValueError(f"grid_to_notes takes one grid [bars, steps, {N_BINS}, tracks]; got {grid.shape}.")
  bins = grid_to_bins(grid)                                                         # [bars, steps, K]
  flat = bins.reshape(-1, bins.shape[-1])                                           # [bars*steps, K]
  return [bins_to_notes(flat[:, k]) for k in range(flat.shape[-1])]


def notes_to_grid(voices: Sequence[np.ndarray], n_bars: int = N_BARS, start: float = 0.0) -> np.ndarray:
  """A note array per track -> the one-hot grid [n_bars, 16, 84, len(voices)] from `start`."""
  if not len(voices):
    raise ValueError("notes_to_grid needs at least one voice's note array.")
  n = n_bars * N_STEPS
  bins = np.stack([notes_to_bins(v, n, start) for v in voices], -1)                 # [T, K]
  return bins_to_grid(bins.reshape(n_bars, N_STEPS, len(voices)))


# ---------------------------------------------------------------------------------------------
# parsing

def parse_piece(name: str) -> dict:
  """One chorale -> {"voices": 4 note arrays, "bars": offsets of its full 4/4 bars, "skip": reason}.

  Pitches are folded into LOW..HIGH; a chord inside a voice keeps its top note.
  """
  from gdl_jax.data.music_common import require_music21
  music21 = require_music21()
  score = music21.corpus.parse(name)
  parts = {}
  for part in score.parts:
    label = f"{part.id} {part.partName or ''}".lower()
    for v in VOICES:
      if v.lower() in label and v not in parts:
        parts[v] = part
        break
  if len(parts) != 4:
    return {"name": name, "skip": f"voices {sorted(parts)} (needs S, A, T, B)"}
  voices = []
  for v in VOICES:
    rows = []
    for n in parts[v].flatten().notes:
      dur = float(n.quarterLength)
      if dur <= 0:
        continue  # grace notes
      pitch = max(p.midi for p in n.pitches)
      rows.append((fold_pitch(pitch), float(n.offset), dur))
    voices.append(np.asarray(rows, np.float32).reshape(-1, 3))
  bars = [float(m.offset) for m in parts["Soprano"].getElementsByClass("Measure")
          if float(m.duration.quarterLength) == 4.0 and float(m.barDuration.quarterLength) == 4.0]
  if not bars:
    return {"name": name, "skip": "no full 4/4 bars"}
  return {"name": name, "voices": voices, "bars": np.asarray(bars, np.float64), "skip": ""}


def piece_windows(parsed: dict) -> np.ndarray:
  """A parsed piece -> bins [n, 2, 16, 4]: one sample per bar line followed by two full bars."""
  if parsed.get("skip"):
    return np.zeros((0, N_BARS, N_STEPS, N_TRACKS), np.uint8)
  bars = parsed["bars"]
  full = set(np.round(bars * STEPS_PER_QUARTER).astype(int).tolist())
  out = []
  for b in bars:
    s = int(round(b * STEPS_PER_QUARTER))
    if all(s + i * N_STEPS in full for i in range(N_BARS)):
      n = N_BARS * N_STEPS
      track = np.stack([notes_to_bins(v, n, float(b)) for v in parsed["voices"]], -1)
      out.append(track.reshape(N_BARS, N_STEPS, N_TRACKS))
  return np.asarray(out, np.uint8).reshape(-1, N_BARS, N_STEPS, N_TRACKS)


def parse_pieces(names: Sequence[str], workers: Optional[int] = None) -> list[dict]:
  """parse_piece over names (a process pool over the cores for many pieces), with a progress bar."""
  from gdl_jax import progress
  names = list(names)
  workers = workers or min(os.cpu_count() or 1, 8)
  bar = progress.bar(total=len(names), desc="parsing chorales (music21)", unit="piece")
  try:
    if len(names) < _POOL_MIN_PIECES or workers == 1:
      out = []
      for n in names:
        out.append(parse_piece(n))
        bar.update(1)
      return out
    import concurrent.futures
    import multiprocessing
    # spawn: the parent usually has JAX's threads running, which fork does not copy safely
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
      out = []
      for r in pool.map(parse_piece, names, chunksize=4):
        out.append(r)
        bar.update(1)
      return out
  finally:
    bar.close()


# ---------------------------------------------------------------------------------------------
# the tfds builder and the loader

def _builder_cls():
  import tensorflow_datasets as tfds

  from gdl_jax.data.builders import _ArrayBuilder

  class GdlChoralesGrid(_ArrayBuilder, skip_registration=True):
    """music21's Bach chorales as 2-bar, 4-track piano-roll bins (see gdl_jax.data.music_grid)."""

    VERSION = tfds.core.Version("1.0.0")
    FEATURES = {"bins": ((N_BARS, N_STEPS, N_TRACKS), np.uint8), "piece": ((), np.int64)}
    DESCRIPTION = "Bach chorales (music21 corpus), S/A/T/B on a 16th grid, 2-bar windows, hop 1 bar."
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="all")]
    splits: dict = {}   # split -> piece names (set before preparing)

    def _split_generators(self, dl_manager):
      del dl_manager
      return {s: self._generate_examples(s) for s in ("train", "validation", "test")}

    def _arrays(self, split):
      if not hasattr(self, "_parsed"):
        order = [n for s in ("train", "validation", "test") for n in self.splits[s]]
        self._parsed = dict(zip(order, parse_pieces(order)))
        skipped = [(n, p["skip"]) for n, p in self._parsed.items() if p["skip"]]
        if skipped:
          from gdl_jax import progress
          progress.note(f"chorales_grid: skipped {len(skipped)} of {len(order)} pieces "
                        f"(e.g. {skipped[0][0]}: {skipped[0][1]})")
      names = self.splits[split]
      bins, piece = [], []
      for i, n in enumerate(names):
        w = piece_windows(self._parsed[n])
        bins.append(w)
        piece.append(np.full(len(w), i, np.int64))
      return {"bins": np.concatenate(bins), "piece": np.concatenate(piece)}

  return GdlChoralesGrid


def load_grid(data_dir: str, pieces: Optional[Sequence[str]] = None, seed: int = 0,
              name: str = "chorales_grid") -> Dataset:
  """The chorales_grid Dataset from `pieces` (default: all of music21's chorales), prepared once.

  A list of pieces (tests: a few) is split the same seeded way and cached under its own config.
  """
  from gdl_jax.data import _prepared, _read_split
  from gdl_jax.data.music_common import chorale_names, require_music21, split_by_piece
  import tensorflow_datasets as tfds
  require_music21()
  everything = pieces is None
  names = sorted(dict.fromkeys(chorale_names() if everything else pieces))
  train, valid, test = split_by_piece(names, seed=seed)
  tag = "all" if everything and seed == 0 else \
      "p" + hashlib.sha1(("\n".join(names) + f"|{seed}").encode()).hexdigest()[:12]
  cls = _builder_cls()
  b = _prepared(cls, data_dir, builder_kwargs={"config": tag if tag == "all" else tfds.core.BuilderConfig(name=tag)},
                splits={"train": train, "validation": valid, "test": test})
  splits = {}
  for s, names_s in (("train", train), ("validation", valid), ("test", test)):
    d = _read_split(b, s)
    if not len(d.get("bins", ())):
      if s == "validation":
        splits[s] = None
        continue
      raise DataError(f"chorales_grid: the {s} split has no 2-bar 4/4 windows (pieces "
                      f"{names_s}); pass more pieces.")
    splits[s] = {"bins": d["bins"].astype(np.uint8), "piece": d["piece"].astype(np.int32),
                 "roll": bins_to_grid(d["bins"])}
  info = DatasetInfo(name=name, kind="pianoroll", shape=SHAPE, levels=2,
                     source=f"music21 Bach chorales ({len(train)}/{len(valid)}/{len(test)} pieces "
                            "train/valid/test)")
  return Dataset(info, splits["train"], splits["test"], valid=splits["validation"])


def voice_ranges(bins: np.ndarray) -> np.ndarray:
  """Per track (lowest, highest) MIDI pitch in bins [..., tracks] (rests ignored) -> int [K, 2]."""
  bins = np.asarray(bins).reshape(-1, np.asarray(bins).shape[-1])
  out = []
  for k in range(bins.shape[-1]):
    p = bins[:, k][bins[:, k] != REST]
    out.append((int(p.min()), int(p.max())) if p.size else (REST, -1))
  return np.asarray(out, np.int64)
