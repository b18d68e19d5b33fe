"""The music harness: in-key ratio, pitch-class distance, shared-run novelty, n-gram baselines.

All of it works on note arrays (gdl_jax.music_io: float [n, 3] of pitch, onset, duration, one per
voice) or on integer event sequences (the n-grams), so every music family is measured the same way.

    in_key_ratio(notes)                   # share of notes in the key music21 estimates for them
    pitch_class_distance(samples, held)   # total variation between key-relative PC histograms
    idx = RunIndex(train_pitch_sequences); idx.longest(pitches)   # longest run shared with train
    NGram(order=4, vocab_size=V).fit(train_seqs); ng.log_prob(test_seqs)   # nats per sequence
"""

from __future__ import annotations

import collections
import math
from typing import Iterable, Sequence

import numpy as np

from gdl_jax.data.music_common import require_music21

COPY_RUN = 32  # a sample that shares this many consecutive pitches with a training piece is a copy


# ----------------------------------------------------------------------------------------------
# Key and pitch classes.

def _flat_notes(voices) -> np.ndarray:
  """All voices' notes as one [n, 3] array (a single note array passes through)."""
  if isinstance(voices, np.ndarray) and voices.ndim == 2:
    return voices.reshape(-1, 3)
  arrs = [np.asarray(v, np.float64).reshape(-1, 3) for v in voices]
  return np.concatenate(arrs) if arrs else np.zeros((0, 3))


def estimate_key(voices):
  """music21's key estimate (Krumhansl-Schmuckler on the duration-weighted pitch classes)."""
  m21 = require_music21()
  notes = _flat_notes(voices)
  s = m21.stream.Stream()
  for p, o, d in notes:
    n = m21.note.Note(midi=int(round(p)))
    n.duration = m21.duration.Duration(max(float(d), 0.25))
    s.insert(float(o), n)
  return s.analyze("key")


def key_pitch_classes(key) -> set[int]:
  """The 7 pitch classes of a music21 Key's scale (natural minor for minor keys)."""
  return {p.pitchClass for p in key.getScale().getPitches()}


def in_key_ratio(voices) -> float:
  """Share of the notes whose pitch class is in the key music21 estimates for them (nan if empty)."""
  notes = _flat_notes(voices)
  if not len(notes):
    return float("nan")
  pcs = key_pitch_classes(estimate_key(notes))
  return float(np.mean([int(round(p)) % 12 in pcs for p in notes[:, 0]]))


def pitch_class_histogram(voices, tonic: int | None = None) -> np.ndarray:
  """Counts of the 12 pitch classes, rotated so that `tonic` (default: the estimated key's) is 0."""
  notes = _flat_notes(voices)
  if tonic is None:
    tonic = estimate_key(notes).tonic.pitchClass if len(notes) else 0
  pcs = (np.round(notes[:, 0]).astype(int) - int(tonic)) % 12
  return np.bincount(pcs, minlength=12).astype(np.float64)


def pitch_class_distance(pieces_a: Sequence, pieces_b: Sequence) -> float:
  """Total variation (0..1) between the pooled key-relative pitch-class distributions of two sets."""
  ha = sum((pitch_class_histogram(p) for p in pieces_a), np.zeros(12))
  hb = sum((pitch_class_histogram(p) for p in pieces_b), np.zeros(12))
  if ha.sum() == 0 or hb.sum() == 0:
    return float("nan")
  return float(0.5 * np.abs(ha / ha.sum() - hb / hb.sum()).sum())


# ----------------------------------------------------------------------------------------------
# Rule 2: runs shared with the training set.

def pitch_sequence(notes) -> np.ndarray:
  """The pitches of one voice in time order (ties by pitch), as ints."""
  x = np.asarray(notes, np.float64).reshape(-1, 3)
  return np.round(x[np.lexsort((x[:, 0], x[:, 1])), 0]).astype(np.int64)


class RunIndex:
  """An index of training pitch sequences: the longest run of consecutive pitches a query shares.

  Hashed k-grams (k = `k`) give the candidate start positions, each extended forward; runs shorter
  than k are found in sets of the shorter j-grams. At most `max_hits` occurrences of a k-gram are
  kept (a repeated-note k-gram is everywhere); the answer is exact unless a k-gram is that common.
  """

  def __init__(self, sequences: Iterable, k: int = 8, max_hits: int = 2000):
    self.k = k
    self.seqs = [np.asarray(s, np.int64) for s in sequences]
    self.table: dict = collections.defaultdict(list)
    self.short = [set() for _ in range(k)]  # short[j]: all j-grams
    for si, s in enumerate(self.seqs):
      t = tuple(int(v) for v in s)
      for j in range(1, k):
        self.short[j].update(t[i:i + j] for i in range(len(t) - j + 1))
      for i in range(len(t) - k + 1):
        hits = self.table[t[i:i + k]]
        if len(hits) < max_hits:
          hits.append((si, i))

  def longest(self, query) -> int:
    """Length of the longest run of `query` (a pitch sequence) found verbatim in a training one."""
    q = tuple(int(v) for v in np.asarray(query).reshape(-1))
    best = 0
    for j in range(1, self.k):
      if any(q[i:i + j] in self.short[j] for i in range(len(q) - j + 1)):
        best = j
      else:
        return best
    for i in range(len(q) - self.k + 1):
      if len(q) - i <= best:
        break
      for si, pos in self.table.get(q[i:i + self.k], ()):
        s = self.seqs[si]
        n = self.k
        while i + n < len(q) and pos + n < len(s) and q[i + n] == s[pos + n]:
          n += 1
        best = max(best, n)
    return best


def shared_runs(index: RunIndex, pieces: Sequence) -> np.ndarray:
  """For each piece (a list of voices), the longest run any of its voices shares with the index."""
  return np.asarray([max([index.longest(pitch_sequence(v)) for v in p if len(v)] or [0])
                     for p in pieces], np.int64)


# ----------------------------------------------------------------------------------------------
# The music metrics of a set of samples, against held-out pieces.

def music_metrics(samples: Sequence, held_out: Sequence, index: RunIndex, *,
                  copy_run: int = COPY_RUN) -> dict:
  """in-key ratio, PC distance and shared runs of samples, with held-out pieces' own values.

  samples, held_out: lists of pieces, each a list of note arrays (one per voice).
  """
  out = {}
  for name, pieces in (("", samples), ("heldout_", held_out)):
    keys = [in_key_ratio(p) for p in pieces]
    runs = shared_runs(index, pieces)
    out[name + "in_key"] = float(np.nanmean(keys)) if len(keys) else float("nan")
    out[name + "shared_run_median"] = float(np.median(runs)) if len(runs) else float("nan")
    out[name + "copy_share"] = float(np.mean(runs >= copy_run)) if len(runs) else float("nan")
  out["pc_distance"] = pitch_class_distance(samples, held_out)
  out["notes_per_sample"] = float(np.mean([sum(len(v) for v in p) for p in samples])) if samples else 0.0
  return out


# ----------------------------------------------------------------------------------------------
# n-gram baselines over integer events (for the chorales: the joint (note, duration) event).

class NGram:
  """An n-gram model with interpolated absolute discounting down to an add-alpha unigram.

  p(w | h) = max(c(h, w) - d, 0) / c(h) + d * T(h) / c(h) * p(w | h')   (c(h) > 0; else p(w | h'))
  with T(h) the number of distinct words after h and h' the context one shorter. Sequences are
  scored from their first token: contexts before the start are padded with a begin symbol, so an
  n-gram sees exactly what a model that starts each window afresh sees.
  """

  BOS = -1

  def __init__(self, order: int, vocab_size: int, discount: float = 0.75, alpha: float = 1.0):
    if order < 1 or vocab_size < 1:
      raise ValueError(f"order={order} and vocab_size={vocab_size} must be >= 1")
    self.order, self.vocab_size, self.discount, self.alpha = order, vocab_size, discount, alpha
    self.counts = [collections.defaultdict(collections.Counter) for _ in range(order)]
    self.unigram = np.zeros(vocab_size, np.float64)

  def _contexts(self, seq):
    pad = (self.BOS,) * (self.order - 1) + tuple(int(v) for v in seq)
    for t in range(len(seq)):
      yield pad[t:t + self.order - 1], pad[t + self.order - 1]

  def fit(self, sequences) -> "NGram":
    for seq in sequences:
      for ctx, w in self._contexts(seq):
        self.unigram[w] += 1
        for j in range(1, self.order):
          self.counts[j][ctx[len(ctx) - j:]][w] += 1
    self._totals = [{h: (sum(c.values()), len(c)) for h, c in self.counts[j].items()}
                    for j in range(self.order)]
    return self

  def _uni(self):
    return (self.unigram + self.alpha) / (self.unigram.sum() + self.alpha * self.vocab_size)

  def prob(self, ctx: tuple, w: int) -> float:
    """p(w | the last order-1 tokens of ctx) (ctx padded with BOS on the left as needed)."""
    ctx = ((self.BOS,) * (self.order - 1) + tuple(ctx))[len(ctx):] if self.order > 1 else ()
    p = (self.unigram[w] + self.alpha) / (self.unigram.sum() + self.alpha * self.vocab_size)
    d = self.discount
    for j in range(1, self.order):
      h = ctx[len(ctx) - j:]
      tot = self._totals[j].get(h)
      if tot is None:
        continue
      c, types = tot
      p = max(self.counts[j][h].get(w, 0) - d, 0.0) / c + d * types / c * p
    return p

  def distribution(self, ctx: tuple) -> np.ndarray:
    """p(. | ctx) over the whole vocabulary [V] (for tests and sampling)."""
    return np.asarray([self.prob(ctx, w) for w in range(self.vocab_size)])

  def log_prob(self, sequences) -> np.ndarray:
    """log p(sequence) in nats for each sequence."""
    out = []
    for seq in sequences:
      out.append(sum(math.log(self.prob(ctx, w)) for ctx, w in self._contexts(seq)))
    return np.asarray(out)


def fit_ngram(order: int, vocab_size: int, train, valid, *,
              discounts=(0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95), alphas=(0.01, 0.1, 1.0)) -> NGram:
  """An NGram fitted on `train`, its smoothing (alpha; and d for order > 1) picked on `valid`."""
  m = NGram(order, vocab_size).fit(train)
  best, best_lp = None, -np.inf
  for a in alphas:
    for d in (discounts if order > 1 else (0.0,)):
      m.alpha, m.discount = a, d
      lp = float(np.sum(m.log_prob(valid)))
      if lp > best_lp:
        best, best_lp = (a, d), lp
  m.alpha, m.discount = best
  return m


def ngram_baselines(train, valid, test, vocab_size: int, orders=(1, 2, 4)) -> dict:
  """{name: {"bits_per_note", "alpha", "discount"}} of each order fitted on train, tuned on valid."""
  rows = {}
  n_events = sum(len(s) for s in test)
  for order in orders:
    m = fit_ngram(order, vocab_size, train, valid)
    nats = -float(np.sum(m.log_prob(test)))
    name = {1: "unigram", 2: "bigram"}.get(order, f"{order}-gram")
    rows[f"{name} (d={m.discount:g})" if order > 1 else name] = {
        "bits_per_note": nats / n_events / math.log(2), "alpha": m.alpha, "discount": m.discount,
        "order": order}
  return rows


# ----------------------------------------------------------------------------------------------
# Token datasets (gdl_jax.data.music): windows of (note, duration) events.

def window_pieces(info, tokens) -> list[list[np.ndarray]]:
  """Token windows [N, T, 2] -> pieces (one voice each) as note arrays."""
  from gdl_jax.data.music import decode_tokens
  return [[decode_tokens(info, w)] for w in np.asarray(tokens)]


def joint_events(info, tokens) -> list[np.ndarray]:
  """Windows [N, T, 2] -> joint event ids note * |durations| + duration, one sequence per window."""
  t = np.asarray(tokens).astype(np.int64)
  return list(t[..., 0] * len(info.duration_vocab) + t[..., 1])


def token_music_metrics(dataset, samples) -> dict:
  """music_metrics of sampled windows [n, T, 2] against as many held-out windows; the run index
  holds the pitch sequences of every training window."""
  info = dataset.info
  test = np.asarray(dataset.test["tokens"])
  held = window_pieces(info, test[:min(len(samples), len(test))])
  index = RunIndex(pitch_sequence(p[0]) for p in window_pieces(info, dataset.train["tokens"]))
  return music_metrics(window_pieces(info, samples), held, index)


def window_stride(windows) -> int:
  """The stride of consecutive overlapping windows [N, T, ...] (T when they do not overlap)."""
  w = np.asarray(windows)
  if len(w) < 2:
    return w.shape[1]
  t = w.shape[1]
  return next((s for s in range(1, t) if np.array_equal(w[1][:t - s], w[0][s:])), t)


def token_ngram_baselines(dataset, orders=(1, 2, 4)) -> dict:
  """The n-gram rows (bits per event of the joint (note, duration) event) of a token dataset.

  Overlapping training windows are thinned to non-overlapping ones for the counts (each event
  counted once, so the discounts mean what they say); contexts still restart at each window.
  """
  info = dataset.info
  train = np.asarray(dataset.train["tokens"])
  stride = window_stride(train)
  if train.shape[1] % stride == 0:
    train = train[::train.shape[1] // stride]
  valid = dataset.valid if dataset.valid is not None and len(dataset.valid["tokens"]) else dataset.test
  vocab = len(info.vocab) * len(info.duration_vocab)
  return ngram_baselines(joint_events(info, train), joint_events(info, valid["tokens"]),
                         joint_events(info, dataset.test["tokens"]), vocab, orders)


def write_music_samples(info, tokens, out_dir: str, prefix: str = "sample") -> list[str]:
  """.mid, .wav and piano-roll .png of each sampled window [n, T, 2] in out_dir."""
  from gdl_jax import music_io
  return music_io.write_samples(window_pieces(info, tokens), out_dir, prefix)
