"""Note arrays -> MIDI -> note arrays; the WAV and piano-roll writers."""

import wave

import numpy as np
import pytest

pytest.importorskip("music21", reason="music I/O needs the [music] extra (music21)")

from gdl_jax import music_io  # noqa: E402


def test_midi_round_trip_two_voices(tmp_path):
  soprano = np.asarray([[72, 0, 1], [74, 1, 0.5], [76, 1.5, 0.5], [77, 2, 1 / 3], [79, 7 / 3, 2 / 3],
                        [79, 3, 1]], np.float64)   # a repeated note, a triplet
  bass = np.asarray([[48, 0, 2], [43, 2.5, 1.5]], np.float64)   # a rest in between
  paths = music_io.write_sample([soprano, bass], str(tmp_path / "s"))
  back = music_io.read_midi(paths[0])
  assert len(back) == 2
  np.testing.assert_allclose(back[0], soprano, atol=1e-3)
  np.testing.assert_allclose(back[1], bass, atol=1e-3)
  with wave.open(paths[1]) as w:
    assert w.getframerate() == music_io.SAMPLE_RATE and w.getnframes() > 4 * music_io.SAMPLE_RATE * 0.6
  with open(paths[2], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_bad_note_arrays_are_refused():
  with pytest.raises(ValueError, match="pitch, onset, duration"):
    music_io.as_notes(np.zeros((3, 2)))
  with pytest.raises(ValueError, match="durations > 0"):
    music_io.as_notes([[60, 0, 0]])
