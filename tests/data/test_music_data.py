"""Music token datasets: the tokenizer's round trip on real chorales, the splits, bad MIDI folders."""

import os
import re

import numpy as np
import pytest

pytest.importorskip("music21", reason="the music datasets need the [music] extra (music21)")

from gdl_jax import music_io  # noqa: E402
from gdl_jax.data import DataError, music, music_common  # noqa: E402


def test_chorale_tokens_round_trip_through_midi(chorales_small, tmp_path):
  """tokens -> note array -> MIDI -> music21 -> the same notes, for every test and valid window."""
  info = chorales_small.info
  assert info.kind == "music" and info.shape == (32, 2) and info.vocab[0] == "START"
  windows = np.concatenate([chorales_small.test["tokens"], chorales_small.valid["tokens"]])
  for i, w in enumerate(windows):
    notes = music.decode_tokens(info, w)
    assert len(notes) > 10
    path = music_io.write_midi([notes], str(tmp_path / f"w{i}.mid"))
    back = music_io.read_midi(path)
    assert len(back) == 1
    np.testing.assert_allclose(back[0], notes, atol=1e-3)


def test_tokens_follow_the_score(chorales_small):
  """The first training piece's events are its chordified top line, time signature and key first."""
  import music21
  name = music_common.split_by_piece(music_common.chorale_names()[:8])[0][0]
  notes, durs = music.score_events(music21.corpus.parse(name))
  assert notes[0] == "START" and any(n.startswith("ts:") for n in notes[:4])
  top = music21.corpus.parse(name).chordify().flatten().notes
  pitches = [int(n) for n in notes if n.isdigit()]
  assert pitches == [max(p.midi for p in c.pitches) for c in top if c.duration.quarterLength > 0]
  info = chorales_small.info
  first = chorales_small.train["tokens"][0]
  assert [info.vocab[i] for i in first[:, 0]] == notes[:32]
  assert [info.duration_vocab[i] for i in first[:, 1]] == durs[:32]


def test_splits_are_by_piece():
  names = music_common.chorale_names()
  assert len(names) == 350
  tr, va, te = music_common.split_by_piece(names)
  assert len(set(tr) | set(va) | set(te)) == 350 and not (set(tr) & set(te))


def test_midi_folder_errors_name_the_file(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  data_dir = tmp_path / "data"
  with pytest.raises(DataError, match="no MIDI files"):
    music.load_music(f"midi:{empty}", str(data_dir))
  mixed = tmp_path / "mixed"
  mixed.mkdir()
  for i in range(3):
    music_io.write_midi([np.asarray([[60 + i, 0, 1], [62, 1, 1]], float)], str(mixed / f"t{i}.mid"))
  (mixed / "notes.txt").write_text("not music")
  with pytest.raises(DataError, match="notes.txt is not a MIDI file"):
    music.load_music(f"midi:{mixed}", str(data_dir))
  (mixed / "notes.txt").unlink()
  (mixed / "bad.mid").write_bytes(b"MThd garbage")
  with pytest.raises(DataError, match="bad.mid"):
    music.load_music(f"midi:{mixed}", str(data_dir))
  assert not data_dir.exists()   # nothing written


def test_midi_folder_dataset(tmp_path):
  folder = tmp_path / "tunes"
  rng = np.random.default_rng(0)
  for i in range(4):
    line = np.asarray([(60 + rng.integers(0, 12), j, 1.0) for j in range(12)], float)
    music_io.write_midi([line], str(folder / f"tune{i}.mid"))
  from gdl_jax import data
  ds = music.load_music(f"midi:{folder}", str(tmp_path), window=8)
  assert ds.info.kind == "music" and ds.train["tokens"].shape[1:] == (8, 2)
  assert os.listdir(tmp_path)  # prepared under the data dir
  del data


def test_folk_tunes_tokenize_and_round_trip_through_midi(tmp_path):
  """A dozen real Essen tunes (music21's ABC files): each ABC file splits into its tunes, tokens
  start with START and the tune's time signature and key, and every window round-trips through MIDI."""
  specs = music.folk_specs()
  assert len(specs) > 8000 and all(s[0] == "abc" and s[2].lstrip().startswith("X:") for s in specs[:50])
  names = [music.spec_name(s) for s in specs[::700]][:12]
  ds = music.load_music("folk", str(tmp_path), pieces=names, window=24, stride=12, name="folk_small")
  assert ds.info.kind == "music" and ds.info.vocab[0] == "START"
  n = [int(x) for x in re.match(r"folk: (\d+)/(\d+)/(\d+) pieces", ds.info.source).groups()]
  assert sum(n) == 12 and min(n) >= 1   # every tune parsed, split by piece
  notes, _ = music.parse_piece(specs[::700][0])
  toks = notes.split()
  assert toks[0] == "START" and toks[1].startswith(("ts:", "key:")) and all(
      t.isdigit() or t == "rest" or ":" in t or t == "START" for t in toks)
  windows = np.concatenate([ds.test["tokens"], ds.valid["tokens"]])
  assert len(windows) >= 2
  for i, w in enumerate(windows[:6]):
    line = music.decode_tokens(ds.info, w)
    path = music_io.write_midi([line], str(tmp_path / f"f{i}.mid"))
    np.testing.assert_allclose(music_io.read_midi(path)[0], line, atol=1e-3)
