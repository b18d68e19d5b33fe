"""chorales_grid: the grid <-> note-array maps on real chorales, the prepared dataset, bad inputs."""

import os

import numpy as np
import pytest

pytest.importorskip("music21", reason='the music datasets need the [music] extra: pip install -e ".[music]"')

from gdl_jax.data import DataError  # noqa: E402
from gdl_jax.data import music_grid as MG  # noqa: E402

# four short 4/4 chorales: split by piece 2 / 1 / 1 (train / valid / test)
PIECES = ["bach/bwv10.7", "bach/bwv101.7", "bach/bwv102.7", "bach/bwv103.6"]


@pytest.fixture(scope="module")
def parsed():
  return [MG.parse_piece(n) for n in PIECES[:2]]


@pytest.fixture(scope="module")
def grid_ds():
  return MG.load_grid(os.environ["GDL_DATA_DIR"], PIECES)


def test_parse_keeps_four_voices_in_range(parsed):
  for p in parsed:
    assert not p["skip"] and len(p["voices"]) == 4
    for v in p["voices"]:
      assert v.dtype == np.float32 and v.shape[1] == 3 and len(v) > 10
      assert v[:, 0].min() >= MG.LOW and v[:, 0].max() <= MG.HIGH
      assert np.all(v[:, 2] > 0) and np.all(np.diff(v[:, 1]) >= 0)     # onsets in time order
  s, a, t, b = (np.median(v[:, 0]) for v in parsed[0]["voices"])
  assert s > a > t > b                                                  # S, A, T, B in order


def test_notes_to_grid_holds_every_notes_pitch_at_every_step(parsed):
  """Independent of notes_to_bins: each real note's pitch is on the grid for each 16th it covers."""
  p = parsed[1]
  start = float(p["bars"][1])
  grid = MG.notes_to_grid(p["voices"], start=start)                     # [2, 16, 84, 4]
  assert grid.shape == MG.SHAPE and grid.dtype == np.uint8
  np.testing.assert_array_equal(grid.sum(axis=2), 1)                    # one bin per step and track
  checked = 0
  for k, v in enumerate(p["voices"]):
    for pitch, onset, dur in v:
      for q in np.arange(onset, onset + dur - 1e-9, 0.25):
        t = int(round((q - start) * 4))
        if 0 <= t < 32:
          assert grid.reshape(32, 84, 4)[t, int(pitch), k] == 1
          checked += 1
  assert checked > 32 * 3                                               # most steps sound


def test_grid_round_trip_on_real_windows(parsed):
  """grid -> note arrays -> grid is exact; notes -> grid -> notes gives the window's notes, merged."""
  windows = np.concatenate([MG.piece_windows(p) for p in parsed])
  assert len(windows) >= 10
  grids = MG.bins_to_grid(windows)
  for g in grids:
    voices = MG.grid_to_notes(g)
    assert len(voices) == 4 and all(v.shape[1] == 3 for v in voices)
    np.testing.assert_array_equal(MG.notes_to_grid(voices), g)
    for v in voices:                                                    # no two touching same pitches
      touching = np.isclose(v[:-1, 1] + v[:-1, 2], v[1:, 1]) & (v[:-1, 0] == v[1:, 0])
      assert not touching.any()
  # the notes of a window read back: every original note inside the window, clipped, is covered
  p = parsed[0]
  start = float(p["bars"][1])
  back = MG.grid_to_notes(MG.notes_to_grid(p["voices"], start=start))
  for v, w in zip(p["voices"], back):
    inside = v[(v[:, 1] >= start) & (v[:, 1] + v[:, 2] <= start + 8)]
    for pitch, onset, dur in inside:
      o = onset - start
      hit = (w[:, 0] == pitch) & (w[:, 1] <= o + 1e-6) & (w[:, 1] + w[:, 2] >= o + dur - 1e-6)
      assert hit.sum() == 1


def test_dataset_shapes_split_and_ranges(grid_ds):
  ds = grid_ds
  assert ds.info.kind == "pianoroll" and ds.info.shape == MG.SHAPE and ds.x_key == "roll"
  for split in (ds.train, ds.test):
    assert split["roll"].shape[1:] == MG.SHAPE and split["roll"].dtype == np.uint8
    np.testing.assert_array_equal(MG.grid_to_bins(split["roll"]), split["bins"])
  from gdl_jax.data.music_common import split_by_piece
  train, _, test = split_by_piece(PIECES)
  assert set(np.unique(ds.train["piece"])) == set(range(len(train)))
  assert set(np.unique(ds.test["piece"])) == set(range(len(test)))
  ranges = MG.voice_ranges(ds.train["bins"])
  assert ranges.shape == (4, 2) and np.all(ranges[:, 0] >= MG.LOW) and np.all(ranges[:, 1] <= MG.HIGH)
  assert ranges[0, 1] > ranges[3, 1]                                    # soprano above bass


def test_registered_loader_and_bad_inputs(tmp_path):
  from gdl_jax import data
  assert "chorales_grid" in [r[0] for r in data.available(str(tmp_path))]
  with pytest.raises(DataError, match="at least 3 pieces"):
    MG.load_grid(str(tmp_path), PIECES[:2])
  with pytest.raises(ValueError, match="one grid"):
    MG.grid_to_notes(np.zeros((3,) + MG.SHAPE))
  with pytest.raises(ValueError, match=r"\[..., bars, steps, 84, tracks\]"):
    MG.grid_to_bins(np.zeros((2, 16, 80, 4)))
  with pytest.raises(ValueError, match="outside 0..83"):
    MG.bins_to_grid(np.full((2, 16, 4), 90))
  with pytest.raises(ValueError, match="does not fit"):
    MG.notes_to_bins(np.array([[90.0, 0.0, 1.0]]), 32)


def test_missing_music21_names_the_extra(monkeypatch):
  import builtins
  real_import = builtins.__import__

  def no_music21(name, *a, **kw):
    if name == "music21":
      raise ImportError("no music21")
    return real_import(name, *a, **kw)

  monkeypatch.setattr(builtins, "__import__", no_music21)
  with pytest.raises(DataError, match=r'pip install -e "\.\[music\]"'):
    MG.parse_piece(PIECES[0])
