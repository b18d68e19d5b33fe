"""Music as token sequences: Bach chorales, Essen folk tunes, a folder of MIDI files.

    ds = gdl_jax.data.load("chorales")   # Dataset(kind="music"), splits {"tokens": int32 [N, T, 2]}
    notes = events_to_notes(ds.info, ds.test["tokens"][0])   # -> a note array (gdl_jax.music_io)

The recipe is the second edition's (notebooks/11_music/01_transformer): every piece is
**chordified and its top line kept** (the highest pitch sounding at each chord change, so a held
soprano note under moving lower voices repeats), and becomes a stream of events, each a pair
(note token, duration token): "START" (duration 0) begins a piece, "key:G:minor" / "ks:-2" and
"ts:3/4" (duration 0) mark keys and time signatures, "rest" and MIDI pitch numbers ("67") carry
their duration in quarter notes ("1/2", "1", "3/2"). The same (pitch, duration) pairs are the first
edition's LSTM view; both models read the two streams as token[..., 0] and token[..., 1].

Pieces are split by piece (gdl_jax.data.music_common.split_by_piece, seed 0: 80/10/10), each
split's pieces concatenated in order and cut into windows of T events (training windows every
`stride` events, validation and test windows without overlap). Parsing happens once (music21,
a process pool over the CPUs for long lists, a progress bar), into array_record under the data dir;
the vocabularies are the sorted sets of tokens in all pieces (as the char-level text sets do).

Sources: "chorales" (music21's Bach chorales, 350 distinct files), "folk" (music21's Essen
collection, 8514 tunes in 31 ABC files; parsed tune by tune), "midi:PATH" (every file under PATH
must be a MIDI file; one that is not, or a folder with none, is a DataError naming it, before
anything is written).

Transposition augmentation (the Music Transformer's, Huang et al. 2018): `random_transpose(tokens,
key, transposition_table(vocab, K))` moves each training window by a random k in [-K, K] semitones,
pitch and key tokens together (rests, durations and time signatures stay), drawing only shifts that
keep every token in the vocabulary; pure and jittable, applied inside the experiments' train step
(config `data.transpose`), never to the validation or test windows.
"""

from __future__ import annotations

import concurrent.futures
import fractions
import hashlib
import multiprocessing
import os
import re
from typing import Optional, Sequence

import numpy as np

from gdl_jax import progress
from gdl_jax.data.info import DataError, Dataset, DatasetInfo
from gdl_jax.data.music_common import chorale_names, require_music21, split_by_piece

WINDOW, STRIDE = 64, 16
META_PREFIXES = ("START", "key:", "ks:", "ts:")
TINY_CHORALES = 8
POOL_MIN = 16  # lists shorter than this are parsed in-process (a worker's music21 import costs seconds)


# ----------------------------------------------------------------------------------------------
# Tokenizer: music21 score <-> (note token, duration token) events <-> note arrays.

def duration_token(quarter_length) -> str:
  """'1', '1/2', '3/2', '1/3': the quarter-length as an exact fraction."""
  return str(fractions.Fraction(float(quarter_length)).limit_denominator(48))


def score_events(score) -> tuple[list[str], list[str]]:
  """A music21 score -> (notes, durations) of its chordified top line, starting with START."""
  m21 = require_music21()
  notes, durs = ["START"], ["0"]
  top = score.chordify() if hasattr(score, "parts") and len(score.parts) > 1 else score
  for el in top.flatten():
    if isinstance(el, m21.key.Key):
      notes.append(f"key:{el.tonic.name}:{el.mode}")
      durs.append("0")
    elif isinstance(el, m21.key.KeySignature):
      notes.append(f"ks:{el.sharps}")
      durs.append("0")
    elif isinstance(el, m21.meter.TimeSignature):
      notes.append(f"ts:{el.ratioString}")
      durs.append("0")
    elif isinstance(el, (m21.note.Note, m21.chord.Chord, m21.note.Rest)):
      ql = el.duration.quarterLength
      if ql <= 0:   # grace notes take no time
        continue
      if isinstance(el, m21.note.Rest):
        notes.append("rest")
      else:
        notes.append(str(max(p.midi for p in el.pitches)))
      durs.append(duration_token(ql))
  return notes, durs


def is_pitch(token: str) -> bool:
  return token.isdigit()


def events_to_notes(note_tokens: Sequence[str], dur_tokens: Sequence[str]) -> np.ndarray:
  """Events -> a note array [n, 3] (pitch, onset, duration); meta tokens take no time."""
  t, rows = 0.0, []
  for n, d in zip(note_tokens, dur_tokens):
    if n.startswith(META_PREFIXES):
      continue
    dur = float(fractions.Fraction(d))
    if is_pitch(n) and dur > 0:
      rows.append((float(n), t, dur))
    t += dur
  return np.asarray(rows, np.float64).reshape(-1, 3)


def decode_tokens(info: DatasetInfo, tokens) -> np.ndarray:
  """Token ids [T, 2] of a music dataset -> a note array (a START in the middle continues the piece)."""
  tokens = np.asarray(tokens).reshape(-1, 2)
  return events_to_notes([info.vocab[int(i)] for i in tokens[:, 0]],
                         [info.duration_vocab[int(i)] for i in tokens[:, 1]])


# ----------------------------------------------------------------------------------------------
# Transposition augmentation (training windows only): every pitch and key token moves by k semitones.

MAX_TRANSPOSE = 12
_STEP_PC = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def _tonic_pc(name: str) -> int:
  """'F#' / 'B-' / 'E--' (music21's spelling) -> pitch class 0..11."""
  if not name or name[0] not in _STEP_PC or any(c not in "#-" for c in name[1:]):
    raise ValueError(f"not a note name: {name!r}")
  return (_STEP_PC[name[0]] + name.count("#") - name.count("-")) % 12


def transposed_token(token: str, k: int, vocab: Sequence[str]) -> Optional[str]:
  """`token` moved up k semitones, as a token of `vocab`; None where the vocab has no such token.

  Pitches: str(int + k). Keys "key:T:mode": the vocab's key of the same mode whose tonic is k
  semitones up (any spelling: the models read tokens, not names). Key signatures "ks:s" (s sharps,
  negative flats; major tonic 7s mod 12): the vocab's ks:s' with 7s' = 7s + k (mod 12), the fewest
  accidentals first. START, rests and time signatures are unchanged.
  """
  if is_pitch(token):
    out = str(int(token) + k)
    return out if out in vocab else None
  if token.startswith("key:"):
    _, tonic, mode = token.split(":")
    want = (_tonic_pc(tonic) + k) % 12
    for t in vocab:
      if t.startswith("key:") and t.split(":")[2] == mode and _tonic_pc(t.split(":")[1]) == want:
        return t
    return None
  if token.startswith("ks:"):
    want = (7 * int(token[3:]) + k) % 12
    found = sorted((abs(int(t[3:])), int(t[3:]), t) for t in vocab
                   if t.startswith("ks:") and (7 * int(t[3:])) % 12 == want)
    return found[0][2] if found else None
  return token


def transposition_table(vocab: Sequence[str], max_shift: int) -> np.ndarray:
  """int32 [2 max_shift + 1, V]: row max_shift + k maps each note id to its id k semitones up, -1
  where that token is not in the vocab (a window holding one cannot move by k)."""
  if isinstance(max_shift, bool) or not isinstance(max_shift, (int, np.integer)) or \
      not 0 <= max_shift <= MAX_TRANSPOSE:
    raise ValueError(f"transpose={max_shift!r} must be an integer number of semitones in "
                     f"[0, {MAX_TRANSPOSE}] (0 = no augmentation), e.g. 6.")
  ids = {t: i for i, t in enumerate(vocab)}
  rows = [[ids.get(transposed_token(t, k, vocab), -1) for t in vocab]
          for k in range(-max_shift, max_shift + 1)]
  return np.asarray(rows, np.int32).reshape(2 * max_shift + 1, len(vocab))


def transpose_windows(tokens, shifts, table):
  """Events [B, T, 2] moved by `shifts` [B] semitones (|k| <= max_shift of `table`) -> (events,
  ok [B]); a window some of whose tokens leave the vocab comes back unchanged with ok False.
  Durations never change. Pure jnp: jittable."""
  import jax.numpy as jnp
  table = jnp.asarray(table)
  k0 = (table.shape[0] - 1) // 2
  notes = tokens[..., 0]
  moved = table[shifts[:, None] + k0, notes]                       # [B, T]
  ok = jnp.all(moved >= 0, axis=1)
  notes = jnp.where(ok[:, None], moved, notes).astype(tokens.dtype)
  return jnp.stack([notes, tokens[..., 1]], axis=-1), ok


def random_transpose(tokens, key, table):
  """Each window [B, T, 2] moved by a shift drawn uniformly from those (in [-K, K]) that keep all
  its tokens in the vocab (k = 0 always does). Pure and jittable; for training batches only."""
  import jax
  import jax.numpy as jnp
  table = jnp.asarray(table)
  k0 = (table.shape[0] - 1) // 2
  valid = jnp.all(table[:, tokens[..., 0]] >= 0, axis=2).T        # [B, 2K + 1]
  idx = jax.random.categorical(key, jnp.where(valid, 0.0, -jnp.inf), axis=-1)
  return transpose_windows(tokens, idx - k0, table)[0]


# ----------------------------------------------------------------------------------------------
# Sources: lists of piece specs, each parsed by `parse_piece` (a module-level function: picklable).

def _abc_tunes(path: str) -> list[tuple[str, str]]:
  """(name, text) of every tune in an ABC file, each with the file's header lines before it."""
  with open(path, encoding="latin-1") as f:
    text = f.read()
  parts = re.split(r"(?m)^(?=X:)", text)
  header = parts[0] if not parts[0].startswith("X:") else ""
  base = os.path.basename(path)
  return [(f"essenFolksong/{base}#{i}", header + p) for i, p in enumerate(parts) if p.startswith("X:")]


def folk_specs() -> list[tuple]:
  """('abc', name, text) for each of the Essen tunes in music21's corpus."""
  m21 = require_music21()
  paths = sorted(str(p) for p in m21.corpus.getComposer("essenFolksong"))
  return [("abc", name, text) for p in paths for name, text in _abc_tunes(p)]


def midi_specs(path: str) -> list[tuple]:
  """('midi', path) for every file under `path`, each checked to be MIDI (DataError otherwise)."""
  if not os.path.isdir(path):
    raise DataError(f"midi:{path}: not a directory; pass midi:FOLDER with your .mid files in it.")
  files = sorted(os.path.join(root, f) for root, _, fs in os.walk(path) for f in fs
                 if not f.startswith("."))
  for f in files:
    with open(f, "rb") as fh:
      head = fh.read(4)
    if head != b"MThd":
      raise DataError(f"midi:{path}: {f} is not a MIDI file (a MIDI file starts with 'MThd'); "
                      "remove it from the folder or convert it to MIDI.")
  if not files:
    raise DataError(f"midi:{path}: the folder holds no MIDI files; put .mid files in it.")
  if len(files) < 3:
    raise DataError(f"midi:{path}: {len(files)} MIDI file(s); a split by piece needs at least 3.")
  return [("midi", f) for f in files]


def spec_name(spec) -> str:
  return spec[1]


def parse_piece(spec) -> tuple[str, str]:
  """One piece spec -> its events as space-joined (notes, durations) strings."""
  m21 = require_music21()
  kind = spec[0]
  if kind == "corpus":
    score = m21.corpus.parse(spec[1])
  elif kind == "abc":
    score = m21.converter.parse(spec[2], format="abc")
    if hasattr(score, "scores"):  # an Opus of one
      score = score.scores[0]
  elif kind == "midi":
    try:
      score = m21.converter.parse(spec[1], format="midi")
    except Exception as e:
      raise DataError(f"{spec[1]}: music21 cannot read this MIDI file ({type(e).__name__}: {e}); "
                      "remove it from the folder.") from None
  else:
    raise ValueError(f"unknown piece spec {spec!r}")
  notes, durs = score_events(score)
  return " ".join(notes), " ".join(durs)


def parse_pieces(specs: Sequence, *, strict: bool, workers: Optional[int] = None) -> dict:
  """{name: (notes, durations)} of every spec, with a progress bar; a process pool for long lists.

  strict: a piece that fails raises (user files); otherwise it is skipped with a note (corpus).
  Pieces without a single note are dropped.
  """
  out, failed = {}, []
  workers = workers or min(len(os.sched_getaffinity(0)), 8)
  desc = f"parsing {len(specs)} pieces with music21"

  def take(spec, result):
    if len(result[0].split()) > 1 and any(is_pitch(t) for t in result[0].split()):
      out[spec_name(spec)] = result

  if len(specs) < POOL_MIN or workers < 2:
    for spec in progress.bar(specs, desc=desc, unit="piece"):
      try:
        take(spec, parse_piece(spec))
      except DataError:
        raise
      except Exception as e:
        if strict:
          raise DataError(f"{spec_name(spec)}: cannot be parsed ({type(e).__name__}: {e})") from None
        failed.append(spec_name(spec))
  else:
    ctx = multiprocessing.get_context("spawn")   # never fork a process that has started JAX threads
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
      futures = {pool.submit(parse_piece, s): s for s in specs}
      for fut in progress.bar(concurrent.futures.as_completed(futures), total=len(futures),
                              desc=desc, unit="piece"):
        spec = futures[fut]
        try:
          take(spec, fut.result())
        except DataError:
          for f in futures:
            f.cancel()
          raise
        except Exception as e:
          if strict:
            raise DataError(f"{spec_name(spec)}: cannot be parsed ({type(e).__name__}: {e})") from None
          failed.append(spec_name(spec))
  if failed:
    progress.note(f"skipped {len(failed)} piece(s) music21 could not parse, e.g. {failed[:3]}")
  return out


# ----------------------------------------------------------------------------------------------
# The array_record cache: one example per piece (its split, name and event strings).

_CLASSES: dict = {}


def _builder_class(tag: str):
  if tag not in _CLASSES:
    _CLASSES[tag] = _make_builder_class(tag)
  return _CLASSES[tag]


def _make_builder_class(tag: str):
  import tensorflow_datasets as tfds

  class _MusicPieces(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")
    pieces: dict = {}   # split -> [(name, notes, durations)]

    def _info(self):
      f = tfds.features
      return tfds.core.DatasetInfo(builder=self, description=f"music pieces ({tag})",
                                   features=f.FeaturesDict({"name": f.Text(), "notes": f.Text(),
                                                            "durations": f.Text()}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(split) for split in ("train", "valid", "test")}

    def _generate_examples(self, split):
      for i, (name, notes, durs) in enumerate(self.pieces[split]):
        yield i, {"name": name, "notes": notes, "durations": durs}

  # tfds names a builder after its class: one class (and directory) per source and piece list
  return type(f"GdlMusic{tag}", (_MusicPieces,), {"__module__": __name__}, skip_registration=True)


def _read_pieces(builder, split: str) -> list[tuple[str, list[str], list[str]]]:
  source = builder.as_data_source(split=split)
  rows = source.__getitems__(list(range(len(source)))) if len(source) else []
  dec = lambda b: b.decode() if isinstance(b, bytes) else str(b)  # noqa: E731
  # tfds shuffles examples when writing: sorted by name, each split's pieces are in a fixed order
  return sorted((dec(r["name"]), dec(r["notes"]).split(), dec(r["durations"]).split()) for r in rows)


def _sort_vocab(tokens) -> tuple[str, ...]:
  meta = sorted(t for t in tokens if not is_pitch(t) and t != "rest")
  meta = ["START"] + [t for t in meta if t != "START"] if "START" in tokens else meta
  return tuple(meta + (["rest"] if "rest" in tokens else []) +
               sorted((t for t in tokens if is_pitch(t)), key=int))


def _windows(stream: np.ndarray, window: int, stride: int) -> np.ndarray:
  n = (len(stream) - window) // stride + 1
  if n < 1:
    return np.zeros((0, window, 2), np.int32)
  idx = np.arange(n)[:, None] * stride + np.arange(window)[None, :]
  return stream[idx].astype(np.int32)


def load_music(source: str, data_dir: str, *, pieces: Optional[Sequence[str]] = None,
               window: int = WINDOW, stride: int = STRIDE, name: Optional[str] = None) -> Dataset:
  """The token dataset of `source` ("chorales", "folk" or "midi:PATH"), prepared on first use.

  pieces: a subset of the source's piece names (tests: a dozen chorales), split the same way.
  """
  if window < 2 or stride < 1:
    raise DataError(f"window={window} must be >= 2 and stride={stride} >= 1")
  if source == "chorales":
    specs = [("corpus", n) for n in chorale_names()]
  elif source == "folk":
    specs = folk_specs()
  elif source.startswith("midi:"):
    specs = midi_specs(os.path.abspath(os.path.expanduser(source[5:])))
  else:
    raise DataError(f"unknown music source {source!r}; use 'chorales', 'folk' or 'midi:FOLDER'.")
  if pieces is not None:
    known = {spec_name(s): s for s in specs}
    missing = [p for p in pieces if p not in known]
    if missing:
      raise DataError(f"{source}: no pieces named {missing[:3]}; names look like {list(known)[:2]}")
    specs = [known[p] for p in pieces]
  key = "\n".join(spec_name(s) for s in specs)
  if source.startswith("midi:"):   # the folder's contents, so an edited folder is parsed again
    key += "".join(f"{os.path.getsize(s[1])}:{os.path.getmtime(s[1])}" for s in specs)
  tag = re.sub(r"[^A-Za-z0-9]", "", source.split(":")[0].title()) + \
      ("" if pieces is None and source in ("chorales", "folk") else
       hashlib.sha1(key.encode()).hexdigest()[:10])
  cls = _builder_class(tag)
  builder = cls(data_dir=data_dir, file_format="array_record")
  if not builder.is_prepared():
    # Parse (and fail) before anything is written; then the locked writer of gdl_jax.data.
    parsed = parse_pieces(specs, strict=source.startswith("midi:"))
    if len(parsed) < 3:
      raise DataError(f"{source}: only {len(parsed)} piece(s) with notes; a split needs at least 3.")
    splits = dict(zip(("train", "valid", "test"), split_by_piece(list(parsed))))
    from gdl_jax import data as data_lib
    os.makedirs(data_dir, exist_ok=True)
    builder = data_lib._prepared(cls, data_dir, pieces={
        s: [(n, *parsed[n]) for n in names] for s, names in splits.items()})
  split_pieces = {s: _read_pieces(builder, s) for s in ("train", "valid", "test")}
  tokens = {t for rows in split_pieces.values() for _, notes, _ in rows for t in notes}
  durs = {t for rows in split_pieces.values() for _, _, ds in rows for t in ds}
  vocab = _sort_vocab(tokens)
  dvocab = tuple(sorted(durs, key=lambda d: fractions.Fraction(d)))
  nid, did = {t: i for i, t in enumerate(vocab)}, {t: i for i, t in enumerate(dvocab)}

  def split_windows(split, stride_):
    rows = split_pieces[split]
    stream = np.asarray([(nid[n], did[d]) for _, notes, ds in rows for n, d in zip(notes, ds)],
                        np.int32).reshape(-1, 2)
    return {"tokens": _windows(stream, window, stride_)}

  train = split_windows("train", stride)
  valid, test = split_windows("valid", window), split_windows("test", window)
  for split, arrays in (("test", test), ("train", train)):
    if not len(arrays["tokens"]):
      raise DataError(f"{source}: the {split} pieces hold fewer than window={window} events; "
                      "use a shorter window or more pieces.")
  counts = {s: len(r) for s, r in split_pieces.items()}
  info = DatasetInfo(name=name or source, kind="music", shape=(window, 2), vocab=vocab,
                     duration_vocab=dvocab,
                     source=f"{source}: {counts['train']}/{counts['valid']}/{counts['test']} pieces "
                            f"(train/valid/test, split by piece), chordified top line, windows of "
                            f"{window} events")
  return Dataset(info, train, test, valid=valid)


def _register():
  from gdl_jax import data as data_lib
  data_lib.register("chorales", "Bach chorales (music21), top-line note + duration tokens, "
                    f"windows of {WINDOW} events")(lambda d: load_music("chorales", d))
  data_lib.register("folk", "Essen folk tunes (music21, 8514 tunes), note + duration tokens, "
                    f"windows of {WINDOW} events")(lambda d: load_music("folk", d))
  data_lib.register("chorales_tiny", f"the first {TINY_CHORALES} Bach chorales, windows of 32 events "
                    "(tests and the CLI fuzz)")(lambda d: load_music(
                        "chorales", d, pieces=chorale_names()[:TINY_CHORALES], window=32, stride=8,
                        name="chorales_tiny"))
  for n in ("chorales", "folk", "chorales_tiny"):
    data_lib._STATUS[n] = _status


def _status(data_dir: str) -> str:
  del data_dir
  try:
    require_music21()
    return "offline (music21)"
  except DataError:
    return 'missing: pip install -e ".[music]"'


_register()
