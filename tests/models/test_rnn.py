"""Recurrent LMs and the bidirectional encoder; the text source (tokenizers, windows, split)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gdl_jax.data import text
from gdl_jax.models.rnn import RNNEncoder, RNNLM
from gdl_jax.objectives.autoregressive import sequence_log_prob
from gdl_jax.samplers.autoregressive import decode_cached, decode_uncached

V, T = 6, 9


@pytest.fixture(scope="module", params=["lstm", "gru"])
def lm(request):
  model = RNNLM(vocab_size=V, embed_dim=8, hidden=12, num_layers=2, cell=request.param)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((2, T), jnp.int32))
  return model, params


def test_shapes_and_one_token_change(lm):
  model, params = lm
  a = jax.random.randint(jax.random.key(1), (3, T), 0, V)
  s = 4
  b = a.at[:, s].set((a[:, s] + 1) % V)
  la, lb = (np.asarray(jax.jit(model.apply)(params, z)) for z in (a, b))
  assert la.shape == (3, T, V)
  np.testing.assert_array_equal(la[:, :s + 1], lb[:, :s + 1])  # p(x_t | x_<t), t <= s: untouched
  assert (np.abs(la[:, s + 1:] - lb[:, s + 1:]).max(-1) > 1e-7).all()


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=1.2, top_p=0.8)])
def test_stepwise_decoding_gives_the_full_sequence_tokens(lm, sampling):
  model, params = lm
  prompt = jnp.asarray([[model.bos, 2], [model.bos, 5]], jnp.int32)
  step = lambda c, x, i: model.apply(params, c, x, i, method=model.decode)  # noqa: E731
  full = lambda x: model.apply(params, x, method=model.logits)  # noqa: E731
  key = jax.random.key(2)
  a = jax.jit(lambda k: decode_cached(step, model.init_carry(2), k, prompt, T, **sampling))(key)
  b = jax.jit(lambda k: decode_uncached(full, k, prompt, T, **sampling))(key)
  assert a.shape == (2, T + 2)
  np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_bidirectional_encoder_sees_the_future(bidirectional):
  enc = RNNEncoder(vocab_size=V, embed_dim=4, hidden=5, cell="gru", bidirectional=bidirectional)
  a = jnp.asarray([[1, 2, 3, 4, 5, 0]], jnp.int32)
  params = enc.init(jax.random.key(0), a)
  ya, yb = enc.apply(params, a), enc.apply(params, a.at[0, 4].set(1))
  assert ya.shape == (1, 6, 10 if bidirectional else 5)
  changed_before = bool(np.abs(np.asarray(ya - yb))[0, :4].max() > 0)
  assert changed_before == bidirectional


def test_unknown_cell_is_refused():
  with pytest.raises(ValueError, match="cell"):
    RNNLM(vocab_size=V, cell="rnn").init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))


def test_lstm_overfits_two_sequences(test_seed, record_property):
  model = RNNLM(vocab_size=V, embed_dim=8, hidden=32, cell="lstm")
  x = jnp.asarray([[1, 2, 3, 4, 5, 0, 1, 2, 3], [5, 4, 3, 2, 1, 0, 5, 4, 3]], jnp.int32)
  params = jax.jit(model.init)(jax.random.key(test_seed), x)
  opt = optax.adam(3e-2)
  nll = lambda p: -jnp.mean(sequence_log_prob(model.apply(p, x), x)) / T  # noqa: E731

  @jax.jit
  def train(p):
    def body(carry, _):
      p, s = carry
      loss, g = jax.value_and_grad(nll)(p)
      u, s = opt.update(g, s, p)
      return (optax.apply_updates(p, u), s), loss
    return jax.lax.scan(body, (p, opt.init(p)), None, length=60)[1]

  hist = np.asarray(train(params))
  assert hist[0] > 1.5, hist[::10]  # log(6) = 1.79 nats at init
  # The floor is log(2) / T = 0.077 nats (the first token is 1 or 5, a coin flip); seeds 0-2 reach
  # it within 0.002 by step 30, so the mean of the last 10 of 60 steps has a >10x margin.
  tail = float(np.mean(hist[-10:]))
  record_property("nll_mean_last10", f"{tail:.4g} < {np.log(2) / T:.4g} + 0.03")
  assert tail < np.log(2) / T + 0.03, hist[::10]


def test_char_and_word_tokenizers_round_trip():
  s = "Hello, world!\nHello again."
  ch = text.CharTokenizer.fit(s)
  assert ch.decode(ch.encode(s)) == s and len(ch.vocab) == len(set(s))
  with pytest.raises(ValueError, match="vocabulary"):
    ch.encode("z")
  wt = text.WordTokenizer.fit(s + " hello", min_count=2)
  assert wt.vocab[0] == text.UNK and set(wt.vocab) == {text.UNK, "hello"}
  assert wt.decode(wt.encode("Hello, there")) == "hello <unk> <unk>"
  wt2 = text.WordTokenizer.fit(s, min_count=1)
  assert wt2.decode(wt2.encode(s)) == "hello , world !\nhello again ."


def test_windows_and_contiguous_split():
  ids = np.arange(20, dtype=np.int32)
  np.testing.assert_array_equal(text.windows(ids, 6), [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11],
                                                       [12, 13, 14, 15, 16, 17]])
  assert text.windows(ids, 6, stride=2).shape == (8, 6)
  with pytest.raises(ValueError, match="shorter"):
    text.windows(ids, 30)
  body = "".join(chr(97 + (i * 7) % 26) for i in range(1000))
  ds = text.text_dataset("toy", body, window=16, test_fraction=0.2)
  tok = text.tokenizer_for(ds.info)
  assert ds.info.kind == "text" and ds.info.shape == (16,)
  assert ds.train["tokens"].dtype == np.int32 and ds.train["tokens"].shape == (50, 16)
  assert body[:16] == tok.decode(ds.train["tokens"][0])
  assert body[800:816] == tok.decode(ds.test["tokens"][0])  # the test part starts after the cut


def test_registered_text_sources():
  from gdl_jax import data
  ds = data.load("pydoc_text")
  assert ds.info.kind == "text" and ds.train["tokens"].shape[1] == 128
  assert ds.train["tokens"].max() < len(ds.info.vocab) and len(ds.test["tokens"]) > 100
  names = [r[0] for r in data.available()]
  assert {"pydoc_text", "pydoc_words", "novel_text", "novel_words"} <= set(names)
