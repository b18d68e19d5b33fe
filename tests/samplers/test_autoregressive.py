"""Sampling filters (temperature / top-k / top-p) and the decoding loops, against brute force."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdl_jax.samplers import autoregressive as ar


def _logits(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * 2.0, jnp.float32)


def _nucleus_numpy(logits, p):
  """Brute force: the smallest set of most probable tokens with total mass >= p."""
  probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
  order = np.argsort(-probs)
  keep = set()
  mass = 0.0
  for i in order:
    keep.add(int(i))
    mass += probs[i]
    if mass >= p:
      break
  return keep


def test_top_k_keeps_the_k_largest():
  logits = _logits((5, 11))
  for k in (1, 3, 10):
    kept = np.isfinite(np.asarray(ar.top_k_mask(logits, k)))
    want = np.zeros_like(kept)
    np.put_along_axis(want, np.argsort(-np.asarray(logits), axis=-1)[:, :k], True, axis=-1)
    np.testing.assert_array_equal(kept, want)
  np.testing.assert_array_equal(ar.top_k_mask(logits, 0), logits)  # 0 = off


@pytest.mark.parametrize("p", [0.05, 0.3, 0.6, 0.9, 0.999])
def test_top_p_keeps_the_smallest_set_reaching_p(p):
  logits = _logits((6, 9), seed=1)
  kept = np.isfinite(np.asarray(jax.jit(lambda l: ar.top_p_mask(l, p))(logits)))
  for row, k in zip(np.asarray(logits, np.float64), kept):
    assert set(np.flatnonzero(k).tolist()) == _nucleus_numpy(row, p)


def test_filters_reject_bad_values():
  with pytest.raises(ValueError, match="top_p"):
    ar.top_p_mask(_logits((2, 3)), 0.0)
  with pytest.raises(ValueError, match="temperature"):
    ar.filter_logits(_logits((2, 3)), temperature=-1.0)


def test_samples_follow_the_filtered_distribution():
  logits = jnp.log(jnp.asarray([0.4, 0.3, 0.15, 0.1, 0.05]))
  draw = jax.jit(lambda k: ar.sample_logits(k, jnp.broadcast_to(logits, (20000, 5)), temperature=0.5,
                                            top_k=3))
  x = np.asarray(draw(jax.random.key(0)))
  freq = np.bincount(x, minlength=5) / len(x)
  p = np.array([0.4, 0.3, 0.15]) ** 2  # temperature 0.5 squares probabilities, then renormalize
  np.testing.assert_allclose(freq[:3], p / p.sum(), atol=0.015)
  assert freq[3:].sum() == 0
  greedy = ar.sample_logits(jax.random.key(1), _logits((4, 7)), temperature=0.0)
  np.testing.assert_array_equal(greedy, np.argmax(np.asarray(_logits((4, 7))), -1))


# A toy autoregressive "model": logits at t depend on the running sum of tokens <= t.
V = 5
W = jnp.asarray(np.random.default_rng(2).normal(size=(V, V)) * 3.0, jnp.float32)


def _toy_logits(tokens):  # [B, L] -> [B, L, V]
  s = jnp.cumsum(tokens, axis=1) % V
  return W[s]


def _toy_step(carry, tokens, index):  # carry: running sum [B]
  del index
  s = (carry[:, None] + jnp.cumsum(tokens, axis=1)) % V
  return W[s], s[:, -1]


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=1.0),
                                      dict(temperature=0.8, top_k=3, top_p=0.9)])
def test_cached_and_uncached_decoding_agree(sampling):
  prompt = jnp.asarray([[1, 2], [3, 0], [4, 4]], jnp.int32)
  key = jax.random.key(3)
  a = jax.jit(lambda k: ar.decode_cached(_toy_step, jnp.zeros(3, jnp.int32), k, prompt, 9,
                                         **sampling))(key)
  b = jax.jit(lambda k: ar.decode_uncached(_toy_logits, k, prompt, 9, **sampling))(key)
  assert a.shape == (3, 11)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(a[:, :2], prompt)
  if sampling["temperature"] == 0.0:  # greedy: every token is the argmax given its past
    np.testing.assert_array_equal(a[:, 2:], np.argmax(np.asarray(_toy_logits(a))[:, 1:-1], -1))


def test_sample_raster_fills_pixels_in_order():
  """Greedy raster sampling of x_t = (sum of earlier sub-pixels + 1) mod L, checked by brute force."""
  levels, shape = 4, (2, 3, 2, 2)

  def log_probs(x):  # [B, H, W, C] -> [B, H, W, C, L]; depends only on earlier sub-pixels
    flat = x.reshape(x.shape[0], -1)
    before = jnp.cumsum(flat, axis=1) - flat
    target = (before + 1) % levels
    return jax.nn.one_hot(target, levels).reshape(x.shape + (levels,)) * 10.0

  x = np.asarray(jax.jit(lambda k: ar.sample_raster(log_probs, k, shape, temperature=0.0))(
      jax.random.key(0))).reshape(2, -1)
  want = np.zeros_like(x)
  for t in range(x.shape[1]):
    want[:, t] = (want[:, :t].sum(1) + 1) % levels
  np.testing.assert_array_equal(x, want)


def test_sample_raster_cached_draws_what_sample_raster_draws():
  """A toy model whose logits depend on the running sum of earlier pixels, written both ways
  (whole image per pixel; a cached running sum): the same key gives the same random images."""
  levels, shape = 5, (3, 3, 4, 1)

  def logits_of(before):  # [...] -> [..., L]
    return jnp.stack([jnp.cos(before * (k + 1.0)) * 2.0 for k in range(levels)], -1)

  def log_probs(x):
    flat = x.reshape(x.shape[0], -1).astype(jnp.float32)
    return logits_of(jnp.cumsum(flat, axis=1) - flat).reshape(x.shape + (levels,))

  steps = ar.RasterSteps(init=lambda b: jnp.zeros(b, jnp.float32),
                         pixel=lambda c, i, j: (logits_of(c), c),
                         commit=lambda c, i, j, tok: c + tok, end_row=lambda c, i: c)
  key = jax.random.key(3)
  a = np.asarray(jax.jit(lambda k: ar.sample_raster(log_probs, k, shape))(key))
  b = np.asarray(jax.jit(lambda k: ar.sample_raster_cached(steps, k, shape))(key))
  np.testing.assert_array_equal(a, b)
  assert len(np.unique(a)) > 2
