"""Transposition augmentation of music windows: the same piece k semitones up, keys moved with it."""

import jax
import numpy as np
import pytest

pytest.importorskip("music21", reason="the music datasets need the [music] extra (music21)")

import music21  # noqa: E402

from gdl_jax.data import music  # noqa: E402


def _key_pc(token: str) -> tuple[int, str]:
  """(tonic pitch class, mode) of a key token, by music21 (independent of music._tonic_pc)."""
  if token.startswith("key:"):
    _, tonic, mode = token.split(":")
    return music21.pitch.Pitch(tonic).pitchClass, mode
  return music21.key.KeySignature(int(token[3:])).asKey("major").tonic.pitchClass, "ks"


def test_transposed_windows_decode_to_the_same_piece_shifted(chorales_small):
  """For every k in [-6, 6]: a window that can move decodes to its notes k semitones up at the same
  onsets and durations, keys moved by k (music21's pitch classes), everything else untouched; one
  that cannot (a token would leave the vocab) comes back unchanged."""
  info, k_max = chorales_small.info, 6
  vocab = info.vocab
  table = music.transposition_table(vocab, k_max)
  windows = np.concatenate([chorales_small.train["tokens"], chorales_small.test["tokens"]])
  move = jax.jit(music.transpose_windows)
  keys_moved = 0
  for k in range(-k_max, k_max + 1):
    out, ok = map(np.asarray, move(windows, np.full(len(windows), k, np.int32), table))
    assert ok.any() if k else ok.all()
    np.testing.assert_array_equal(out[..., 1], windows[..., 1])   # durations never move
    np.testing.assert_array_equal(out[~ok], windows[~ok])
    for w, t in zip(windows[ok], out[ok]):
      before, after = music.decode_tokens(info, w), music.decode_tokens(info, t)
      np.testing.assert_array_equal(after[:, 0], before[:, 0] + k)
      np.testing.assert_array_equal(after[:, 1:], before[:, 1:])
      for a, b in zip(w[:, 0], t[:, 0]):
        a, b = vocab[a], vocab[b]
        if a.startswith(("key:", "ks:")):
          (pa, ma), (pb, mb) = _key_pc(a), _key_pc(b)
          assert (pb - pa) % 12 == k % 12 and ma == mb, (a, b, k)
        elif not music.is_pitch(a):
          assert a == b   # START, rests, time signatures
    keys_moved += k != 0 and any(vocab[i].startswith("key:") for i in out[ok][..., 0].ravel())
  assert keys_moved >= 3   # (the 8 pieces hold 5 keys: most shifts cannot move a key window)


def test_key_signatures_move_round_the_circle_of_fifths():
  vocab = ("ks:-1", "ks:0", "ks:1", "ks:6", "ks:-6", "60", "65", "67")
  assert music.transposed_token("ks:0", 5, vocab) == "ks:-1"    # C -> F major: one flat
  assert music.transposed_token("ks:0", 7, vocab) == "ks:1"     # C -> G: one sharp
  assert music.transposed_token("ks:0", 6, vocab) == "ks:-6"    # F#/G-flat: the fewest, flats first
  assert music.transposed_token("ks:1", 2, vocab) is None       # A major (3 sharps) not in the vocab
  assert music.transposed_token("60", 7, vocab) == "67" and music.transposed_token("60", 1, vocab) is None
  for s in ("ks:-1", "ks:0", "ks:1"):
    for k in range(-12, 13):
      t = music.transposed_token(s, k, vocab)
      assert t is None or (_key_pc(t)[0] - _key_pc(s)[0]) % 12 == k % 12


def test_random_transpose_stays_in_vocab_and_is_identity_at_zero(chorales_small):
  info = chorales_small.info
  windows = chorales_small.train["tokens"]
  table = music.transposition_table(info.vocab, 6)
  out = np.asarray(jax.jit(music.random_transpose)(windows, jax.random.key(0), table))
  assert out.dtype == windows.dtype and 0 <= out.min() and out[..., 0].max() < len(info.vocab)
  np.testing.assert_array_equal(out[..., 1], windows[..., 1])
  shifts = []
  for w, t in zip(windows, out):   # each window moved by one k, the same for all its pitches
    a, b = music.decode_tokens(info, w)[:, 0], music.decode_tokens(info, t)[:, 0]
    assert len(set(b - a)) == 1
    shifts.append(int((b - a)[0]))
  assert set(shifts) <= set(range(-6, 7)) and len(set(shifts)) >= 10   # many drawn, none beyond 6
  same = np.asarray(music.random_transpose(windows, jax.random.key(1),
                                           music.transposition_table(info.vocab, 0)))
  np.testing.assert_array_equal(same, windows)


@pytest.mark.parametrize("bad", [-1, 13, 2.5, True, "6"])
def test_bad_transpose_is_one_clear_error(bad):
  with pytest.raises(ValueError, match=r"transpose=.* must be an integer number of semitones in \[0, 12\]"):
    music.transposition_table(("60", "62"), bad)


@pytest.mark.parametrize("experiment", ["music_transformer", "lstm_music"])
def test_transpose_config_is_checked(experiment):
  from gdl_jax.cli import load_experiment
  from gdl_jax.configs import ConfigError, check_config
  module = load_experiment(experiment)
  config = module.get_config("tiny")
  check_config(config, rules=module.RULES)
  config.data.transpose = 13
  with pytest.raises(ConfigError, match=r"data.transpose=13 is invalid: it must be an integer in \[0, 12\]"):
    check_config(config, rules=module.RULES)


@pytest.mark.slow   # ~20 s of compiles (two tiny Transformers: init, step, eval, log_prob each)
def test_only_training_batches_are_transposed(chorales_small):
  """With data.transpose the train step's loss moves (its batch is transposed); held-out metrics and
  log p are those of the same parameters without it."""
  from gdl_jax.cli import load_experiment
  module = load_experiment("music_transformer")
  batch = {"tokens": chorales_small.train["tokens"][:8]}
  key = jax.random.key(0)
  out = {}
  for k in (0, 6):
    config = module.get_config("tiny")
    config.data.transpose = k
    task = module.build(config, chorales_small.info)
    state = task.init(key, batch)
    held = (task.eval_step(state, batch, key)["bits_per_note"], task.log_prob(state, batch, key))
    out[k] = (held, task.step(state, batch, key)[1]["loss"])
  np.testing.assert_allclose(out[6][0][0], out[0][0][0], rtol=1e-6)
  np.testing.assert_allclose(out[6][0][1], out[0][0][1], rtol=1e-6)
  assert abs(float(out[6][1]) - float(out[0][1])) > 1e-4
