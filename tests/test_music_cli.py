"""`gdl-jax train / evaluate / sample` on music: a tiny Transformer on a folder of real chorale MIDI."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("music21", reason="the music experiments need the [music] extra (music21)")

from gdl_jax import music_io  # noqa: E402
from gdl_jax.cli import main  # noqa: E402
from gdl_jax.data import music  # noqa: E402


@pytest.mark.slow   # ~5 min on the loaded 2-core machine (train + evaluate + sample, compiles)
def test_train_evaluate_sample_on_a_midi_folder(chorales_small, tmp_path):
  folder = tmp_path / "midi"
  train = chorales_small.train["tokens"]   # windows of 32 events every 8: 4 apart are contiguous
  for i in range(4):   # 4 files of 96 real events each (a window of 64 needs that many)
    events = np.concatenate([train[i * 12 + 4 * k] for k in range(3)])
    music_io.write_midi([music.decode_tokens(chorales_small.info, events)], str(folder / f"c{i}.mid"))
  run = tmp_path / "run"
  assert main(["train", "music_transformer", "--dataset", f"midi:{folder}", "--variant", "tiny",
               "--workdir", str(run), "--data_dir", str(tmp_path), "--quiet", "--evaluate"]) == 0
  metrics = json.loads((run / "metrics.json").read_text())
  for key in ("bits_per_note", "in_key", "heldout_in_key", "copy_share", "pc_distance"):
    assert np.isfinite(metrics[key]), key
  assert {"unigram", "bigram"} <= {k.split(" ")[0] for k in metrics["baselines"]}
  table = (run / "metrics.md").read_text()
  assert "bits/note" in table and "unigram" in table and "4-gram" in table
  assert (run / "figure.png").exists() and (run / "samples" / "sample_0.mid").exists()
  out = tmp_path / "drawn"
  assert main(["sample", str(run), "--num", "2", "--out", str(out), "--quiet"]) == 0
  assert sorted(os.listdir(out)) == [f"sample_{i}.{e}" for i in range(2) for e in ("mid", "png", "wav")]
