"""Note arrays <-> music21 streams <-> MIDI files; offline WAV rendering and piano-roll PNGs.

The shared contract of every music model: a **note array** is a float array [n, 3] of
(MIDI pitch, onset in quarter notes, duration in quarter notes), rests omitted, sorted by onset
then pitch; a piece is a list of note arrays, one per voice (a monophonic line is a list of one).

    write_midi([soprano, alto], "x.mid")        # music21 writes the MIDI bytes, one part per voice
    voices = read_midi("x.mid")                  # -> list of note arrays (empty parts dropped)
    render_wav(voices, "x.wav")                  # a small additive synthesizer: no soundfont needed
    piano_roll_png(voices, "x.png")
    write_sample(voices, "out/sample_0")         # .mid, .wav and .png side by side
"""

from __future__ import annotations

import os
import wave
from typing import Sequence

import numpy as np

from gdl_jax.data.music_common import require_music21

DEFAULT_BPM = 100.0
SAMPLE_RATE = 22050


def as_notes(notes) -> np.ndarray:
  """A (copy of a) note array, checked: float64 [n, 3], sorted by (onset, pitch)."""
  x = np.asarray(notes, np.float64)
  if x.size == 0:
    x = np.zeros((0, 3))
  if x.ndim != 2 or x.shape[1] != 3:
    raise ValueError(f"a note array is [n, 3] = (pitch, onset, duration); got shape {x.shape}")
  if len(x) and (x[:, 0].min() < 0 or x[:, 0].max() > 127 or x[:, 2].min() <= 0 or x[:, 1].min() < 0):
    raise ValueError("a note array needs MIDI pitches in 0..127, onsets >= 0 and durations > 0")
  return x[np.lexsort((x[:, 0], x[:, 1]))]


def _voices(voices) -> list[np.ndarray]:
  """A single note array or a list of them -> a list of checked note arrays."""
  if isinstance(voices, np.ndarray) and voices.ndim == 2:
    voices = [voices]
  return [as_notes(v) for v in voices]


def to_stream(voices, bpm: float = DEFAULT_BPM):
  """A music21 Score with one Part per voice (notes inserted at their onsets)."""
  m21 = require_music21()
  score = m21.stream.Score()
  for i, v in enumerate(_voices(voices)):
    part = m21.stream.Part(id=f"voice{i}")
    if i == 0:
      part.insert(0, m21.tempo.MetronomeMark(number=bpm))
    for pitch, onset, dur in v:
      n = m21.note.Note(midi=int(round(pitch)))
      n.duration = m21.duration.Duration(float(dur))
      part.insert(float(onset), n)
    score.insert(0, part)
  return score


def from_stream(score) -> list[np.ndarray]:
  """Note arrays of a music21 stream, one per part with notes (chords become their notes)."""
  parts = list(score.parts) if hasattr(score, "parts") and len(score.parts) else [score]
  out = []
  for part in parts:
    rows = []
    for el in part.flatten().notes:
      dur = float(el.duration.quarterLength)
      if dur <= 0:  # grace notes carry no time
        continue
      for p in el.pitches:
        rows.append((float(p.midi), float(el.offset), dur))
    if rows:
      out.append(as_notes(rows))
  return out


def write_midi(voices, path: str, bpm: float = DEFAULT_BPM) -> str:
  """Writes the voices as a type-1 MIDI file (music21's writer); returns the path."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  to_stream(voices, bpm).write("midi", fp=path)
  return path


def read_midi(path: str) -> list[np.ndarray]:
  """The note arrays of a MIDI file, one per track with notes (onsets as written, unquantized)."""
  m21 = require_music21()
  score = m21.converter.parse(path, format="midi", quantizePost=False)
  return from_stream(score)


def render_wav(voices, path: str, bpm: float = DEFAULT_BPM, sample_rate: int = SAMPLE_RATE) -> str:
  """16-bit mono WAV from an additive synthesizer (3 harmonics, exponential decay, 5 ms fades)."""
  voices = _voices(voices)
  sec = 60.0 / bpm
  end = max([float(np.max(v[:, 1] + v[:, 2])) for v in voices if len(v)] or [0.0])
  audio = np.zeros(int((end * sec + 0.5) * sample_rate) + 1, np.float64)
  fade = int(0.005 * sample_rate)
  for v in voices:
    for pitch, onset, dur in v:
      n = max(int(dur * sec * sample_rate), 2 * fade + 1)
      t = np.arange(n) / sample_rate
      f = 440.0 * 2.0 ** ((pitch - 69.0) / 12.0)
      tone = sum(a * np.sin(2 * np.pi * f * h * t) for h, a in ((1, 1.0), (2, 0.4), (3, 0.2)))
      env = np.exp(-2.5 * t)
      env[:fade] *= np.linspace(0, 1, fade)
      env[-fade:] *= np.linspace(1, 0, fade)
      start = int(onset * sec * sample_rate)
      audio[start:start + n] += (tone * env)[:len(audio) - start]
  peak = np.max(np.abs(audio)) if len(audio) else 0.0
  pcm = (audio / peak * 0.8 * 32767).astype("<i2") if peak > 0 else audio.astype("<i2")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with wave.open(path, "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(sample_rate)
    w.writeframes(pcm.tobytes())
  return path


def piano_roll_png(voices, path: str, title: str = "") -> str:
  """A piano roll: one coloured bar per note (x: quarter notes, y: MIDI pitch), a colour per voice."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  voices = _voices(voices)
  fig, ax = plt.subplots(figsize=(8, 3), dpi=100)
  colors = plt.get_cmap("tab10")
  for i, v in enumerate(voices):
    if len(v):
      for p, o, d in v:
        ax.add_patch(matplotlib.patches.Rectangle((o, p - 0.4), d, 0.8, color=colors(i % 10)))
  allv = [v for v in voices if len(v)]
  if allv:
    stacked = np.concatenate(allv)
    ax.set_xlim(0, float(np.max(stacked[:, 1] + stacked[:, 2])))
    ax.set_ylim(stacked[:, 0].min() - 2, stacked[:, 0].max() + 2)
  ax.set_xlabel("quarter notes")
  ax.set_ylabel("MIDI pitch")
  if title:
    ax.set_title(title)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path)
  plt.close(fig)
  return path


def write_sample(voices, stem: str, bpm: float = DEFAULT_BPM, title: str = "") -> list[str]:
  """stem.mid, stem.wav and stem.png for one piece; returns the three paths."""
  return [write_midi(voices, stem + ".mid", bpm), render_wav(voices, stem + ".wav", bpm),
          piano_roll_png(voices, stem + ".png", title)]


def write_samples(pieces: Sequence, out_dir: str, prefix: str = "sample", bpm: float = DEFAULT_BPM
                  ) -> list[str]:
  """write_sample for each piece as out_dir/{prefix}_{i}.*; returns every path written."""
  paths = []
  for i, voices in enumerate(pieces):
    paths += write_sample(voices, os.path.join(out_dir, f"{prefix}_{i}"), bpm, f"{prefix} {i}")
  return paths
