"""The music Transformer and the attention LSTM: causality, cached sampling, overfitting real chorales."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gdl_jax.models.music_lstm import MusicLSTM
from gdl_jax.models.music_transformer import MusicTransformer
from gdl_jax.samplers.music import sample_events_cached, sample_events_uncached

VN, VD, T = 11, 5, 12


def _models():
  return {"transformer": MusicTransformer(VN, VD, T, dim=16, num_heads=2, num_layers=2),
          "transformer_rotary": MusicTransformer(VN, VD, T, dim=16, num_heads=2, num_layers=2,
                                                 positions="rotary"),
          "lstm": MusicLSTM(VN, VD, T, embed_dim=8, hidden=16, attn_dim=8, window=5)}


def _tokens(seed=0, batch=2):
  rng = np.random.default_rng(seed)
  return jnp.asarray(np.stack([rng.integers(0, VN, (batch, T)), rng.integers(0, VD, (batch, T))], -1),
                     jnp.int32)


def _embed_delta(model, params, tokens, delta):
  """The model's logits with `delta` added to its input embeddings (through the `embed` method)."""
  def add(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name != "embed":
      return out
    return (out[0] + delta, *out[1:]) if isinstance(out, tuple) else out + delta
  with nn.intercept_methods(add):
    return model.apply({"params": params}, tokens)


@pytest.mark.parametrize("name", ["transformer", "transformer_rotary", "lstm"])
def test_causality_by_gradients(name):
  model = _models()[name]
  tokens = _tokens()
  params = model.init(jax.random.key(0), tokens)["params"]
  width = 16

  def per_position(delta):  # [T]: the summed logits at each position
    nl, dl = _embed_delta(model, params, tokens, delta)
    return nl.sum(axis=(0, 2)) + dl.sum(axis=(0, 2))

  g = np.abs(np.asarray(jax.jit(jax.jacrev(per_position))(jnp.zeros((2, T, width))))).sum(axis=(1, 3))
  for t in range(T):   # g[t, j]: how much position t's logits move with input j
    assert np.all(g[t, t + 1:] == 0), f"{name}: logits at {t} depend on later inputs"
    assert g[t, t] > 0


@pytest.mark.parametrize("name", ["transformer", "transformer_rotary", "lstm"])
def test_cached_sampling_equals_uncached(name):
  model = _models()[name]
  params = model.init(jax.random.key(1), _tokens())["params"]
  key = jax.random.key(7)
  step_fn = lambda c, x, i: model.apply({"params": params}, c, x, i, method="decode")  # noqa: E731
  logits_fn = lambda x: model.apply({"params": params}, x, method="logits")  # noqa: E731
  for temp in (0.7,):
    a = jax.jit(lambda k: sample_events_cached(step_fn, model.init_cache(3), k, 3, T, model.bos,
                                               temperature=temp))(key)
    b = jax.jit(lambda k: sample_events_uncached(logits_fn, k, 3, T, model.bos, temperature=temp))(key)
    assert a.shape == (3, T, 2)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(a[..., 0].max()) < VN and int(a[..., 1].max()) < VD


def test_rotary_positions_are_relative_sine_ones_absolute():
  """positions="rotary": the same events at positions 3.. instead of 0.. (no cache) give the same
  logits (only offsets enter the attention); with the sine codes they change."""
  tokens = _tokens()
  for name, same in (("transformer_rotary", True), ("transformer", False)):
    model = _models()[name]
    params = model.init(jax.random.key(2), tokens)["params"]
    inputs = tokens[:, :T - 3]
    out = lambda index: model.apply({"params": params}, inputs, jnp.asarray(index, jnp.int32),  # noqa: E731
                                    None, False, method=MusicTransformer._forward)[0][0]
    close = np.allclose(np.asarray(out(0)), np.asarray(out(3)), atol=1e-4)
    assert close == same, name


def test_bad_positions_name_is_clear():
  with pytest.raises(ValueError, match="positions='learned'; use 'sine' or 'rotary'"):
    MusicTransformer(VN, VD, T, dim=16, num_heads=2, positions="learned").init(jax.random.key(0), _tokens())


def test_lstm_attention_weights_are_causal_and_windowed():
  model = _models()["lstm"]
  tokens = _tokens()
  params = model.init(jax.random.key(2), tokens)["params"]
  w = np.asarray(model.apply({"params": params}, tokens, method=model.attention))
  assert w.shape == (2, T, T)
  np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
  i, j = np.indices((T, T))
  assert np.all(w[:, (j > i) | (j <= i - 5)] == 0)


@pytest.mark.parametrize("name", ["transformer", "lstm"])
def test_overfits_a_few_real_chorale_windows(name, chorales_small, test_seed, record_property):
  from experiments.music_transformer import event_log_prob
  info = chorales_small.info
  x = jnp.asarray(chorales_small.train["tokens"][:4], jnp.int32)
  vn, vd, t = len(info.vocab), len(info.duration_vocab), x.shape[1]
  model = (MusicTransformer(vn, vd, t, dim=32, num_heads=2, num_layers=2) if name == "transformer"
           else MusicLSTM(vn, vd, t, embed_dim=16, hidden=64, attn_dim=16))
  params = model.init(jax.random.key(test_seed), x)["params"]
  opt = optax.adam(1e-2)
  state = opt.init(params)

  def bits(p):
    return -jnp.mean(event_log_prob(model.apply({"params": p}, x), x)) / t / np.log(2)

  @jax.jit
  def step(p, s):
    b, g = jax.value_and_grad(bits)(p)
    u, s = opt.update(g, s)
    return optax.apply_updates(p, u), s, b

  first = float(bits(params))
  for _ in range(100):
    params, state, _ = step(params, state)
  last = float(bits(params))
  record_property("bits_per_note", last)
  record_property("threshold", 0.5)
  assert first > 4.0 and last < 0.5, (first, last)
