"""Piano-roll metrics and files (MuseGAN) on real chorale windows."""

import os

import numpy as np
import pytest

pytest.importorskip("music21", reason='the music metrics need the [music] extra: pip install -e ".[music]"')

from gdl_jax.data import music_grid as MG  # noqa: E402
from gdl_jax.evaluation import pianoroll as P  # noqa: E402


@pytest.fixture(scope="module")
def grid_ds():
  from tests.data.test_music_grid import PIECES
  return MG.load_grid(os.environ["GDL_DATA_DIR"], PIECES)


def _runs(track_bins):
  """Pitches of the runs of one track's bins (independent of bins_to_notes)."""
  out, prev = [], None
  for b in track_bins:
    if b != prev and b != MG.REST:
      out.append(int(b))
    prev = b
  return out


def test_range_compliance_against_a_hand_count(grid_ds):
  rolls = grid_ds.test["roll"][:6]
  ranges = MG.voice_ranges(grid_ds.train["bins"])
  np.testing.assert_array_equal(P.range_compliance(rolls, ranges) >= 0, True)
  narrow = ranges.copy()
  narrow[:, 0] += 4
  narrow[:, 1] -= 4                                                     # some notes now fall outside
  got = P.range_compliance(rolls, narrow)
  for k in range(4):
    pitches = [p for r in grid_ds.test["bins"][:6] for p in _runs(r[..., k].reshape(-1))]
    want = np.mean([(narrow[k, 0] <= p <= narrow[k, 1]) for p in pitches])
    np.testing.assert_allclose(got[k], want)
  assert np.nanmin(got) < 1.0
  with pytest.raises(ValueError, match="ranges"):
    P.range_compliance(rolls, ranges[:3])


def test_metrics_on_held_out_windows_and_files(grid_ds, tmp_path):
  held = grid_ds.test["roll"]
  m = P.pianoroll_metrics(held[:8], grid_ds, max_pieces=8)
  for key in ("range_soprano", "range_bass", "range_min", "in_key", "pc_distance",
              "heldout_in_key", "heldout_range_min", "heldout_pc_distance"):
    assert np.isfinite(m[key]), key
  assert m["in_key"] > 0.8 and 0 <= m["pc_distance"] <= 1
  paths = P.save_rolls(held[:2], str(tmp_path / "s"))
  assert sorted(os.path.basename(p) for p in paths) == [f"sample_{i}.{e}" for i in (0, 1)
                                                         for e in ("mid", "png", "wav")]
  from gdl_jax import music_io
  back = music_io.read_midi(str(tmp_path / "s" / "sample_0.mid"))
  assert len(back) == 4                      # the MIDI holds the same grid (a note read back split
  np.testing.assert_array_equal(MG.notes_to_grid(back), held[0])   # in two at a bar line fills it too)
  fig = P.save_latent_figure(held[np.arange(9) % len(held)], str(tmp_path / "latents.png"),
                             row_names=("chords", "style", "melody", "groove"))
  assert os.path.getsize(fig) > 1000
  with pytest.raises(ValueError, match=r"1 \+ 4 \* m"):
    P.save_latent_figure(held[:4], str(tmp_path / "bad.png"))
