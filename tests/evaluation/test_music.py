"""The music harness: in-key ratio, n-gram probabilities, shared runs (against brute force)."""

import itertools

import numpy as np
import pytest

pytest.importorskip("music21", reason="the music harness needs the [music] extra (music21)")

from gdl_jax.evaluation import music as M  # noqa: E402


def _line(pitches, dur=1.0):
  return np.asarray([(p, i * dur, dur) for i, p in enumerate(pitches)], np.float64)


def test_in_key_of_a_c_major_scale_is_one():
  assert M.in_key_ratio(_line([60, 62, 64, 65, 67, 69, 71, 72])) == 1.0
  assert M.in_key_ratio([_line([60, 64, 67]), _line([48, 55, 52])]) == 1.0  # voices pooled


def test_in_key_of_random_chromatic_notes_is_about_7_of_12():
  rng = np.random.default_rng(0)
  ratios = [M.in_key_ratio(_line(rng.integers(48, 84, 64))) for _ in range(12)]
  assert 0.5 < np.mean(ratios) < 0.68, ratios   # 7/12 = 0.583, a little more: the best-fitting key


def test_pitch_class_distance():
  c = [_line([60, 62, 64, 65, 67])]
  d = [_line([62, 64, 66, 67, 69])]  # the same melody in D: key-relative histograms match
  assert M.pitch_class_distance([c], [d]) == pytest.approx(0.0)
  assert M.pitch_class_distance([c], [[_line([60, 61, 66, 66, 70])]]) > 0.2


@pytest.mark.parametrize("order", [1, 2, 4])
def test_ngram_probabilities_sum_to_one(order):
  rng = np.random.default_rng(order)
  train = [rng.integers(0, 7, 30) for _ in range(5)]
  m = M.NGram(order, 7, discount=0.6, alpha=0.5).fit(train)
  contexts = [(), (3,), (1, 2, 3), (6, 6, 6), tuple(train[0][:3]), (0, 1, 2, 3, 4)]
  for ctx in contexts:
    assert m.distribution(ctx).sum() == pytest.approx(1.0, abs=1e-12)
  # log_prob is the sum of the conditionals along the sequence
  seq = train[1][:6]
  want = sum(np.log(m.prob(tuple(seq[:t]), int(seq[t]))) for t in range(len(seq)))
  assert m.log_prob([seq])[0] == pytest.approx(want)


def test_ngram_baselines_order_and_tuning():
  rng = np.random.default_rng(0)
  base = rng.integers(0, 9, 12)
  seqs = [np.roll(base, rng.integers(0, 12)) for _ in range(40)]  # a repeated cycle: context helps
  rows = M.ngram_baselines(seqs[:30], seqs[30:35], seqs[35:], 9)
  bits = [r["bits_per_note"] for r in rows.values()]
  assert bits[0] > bits[1] > bits[2] - 1e-9 and bits[2] < 1.0, rows


def _brute_longest(query, seqs):
  best = 0
  for s in seqs:
    for i, j in itertools.product(range(len(query)), range(len(s))):
      n = 0
      while i + n < len(query) and j + n < len(s) and query[i + n] == s[j + n]:
        n += 1
      best = max(best, n)
  return best


def test_run_index_matches_brute_force():
  rng = np.random.default_rng(1)
  train = [rng.integers(60, 64, rng.integers(5, 40)) for _ in range(6)]
  idx = M.RunIndex(train, k=4)
  for t in range(30):
    q = rng.integers(60, 64, 25) if t % 2 else np.concatenate([rng.integers(60, 64, 3), train[t % 6][2:20]])
    assert idx.longest(q) == _brute_longest(list(q), [list(s) for s in train])


def test_music_metrics_copy_share():
  rng = np.random.default_rng(2)
  train = [rng.integers(55, 80, 80) for _ in range(4)]
  idx = M.RunIndex(train)
  copy = [_line(train[0][5:45])]
  fresh = [_line(rng.integers(55, 80, 40))]
  m = M.music_metrics([copy, fresh], [fresh], idx)
  assert m["copy_share"] == 0.5 and m["heldout_copy_share"] == 0.0
  assert m["shared_run_median"] >= 20


def test_window_stride():
  stream = np.arange(100)
  w = np.stack([stream[i:i + 16] for i in range(0, 80, 4)])
  assert M.window_stride(w) == 4
  assert M.window_stride(np.stack([stream[i:i + 16] for i in range(0, 80, 16)])) == 16
