"""Sampling (note, duration) event sequences from a two-headed model, with and without a cache.

step_fn(cache, inputs [B, S, 2], index) -> ((note_logits [B, S, Vn], dur_logits [B, S, Vd]), cache);
logits_fn(inputs [B, L, 2]) -> the same logits for every position. Event t's note is drawn with
fold_in(key, 2t) and its duration with fold_in(key, 2t + 1), each with the temperature, so cached
and uncached decoding of one model with one key give the same events.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gdl_jax.samplers.autoregressive import sample_logits


def _draw(key, t, note_logits, dur_logits, temperature):
  n = sample_logits(jax.random.fold_in(key, 2 * t), note_logits, temperature=temperature)
  d = sample_logits(jax.random.fold_in(key, 2 * t + 1), dur_logits, temperature=temperature)
  return jnp.stack([n, d], axis=-1)  # [B, 2]


def sample_events_cached(step_fn, cache, key, batch: int, length: int, bos, *,
                         temperature: float = 1.0):
  """`length` events after the begin event, one cached model call each (lax.scan) -> [B, length, 2]."""
  start = jnp.broadcast_to(jnp.asarray(bos, jnp.int32), (batch, 2))

  def body(carry, t):  # feed the input at position t, draw event t
    cache, inp = carry
    (nl, dl), cache = step_fn(cache, inp[:, None], t)
    ev = _draw(key, t, nl[:, 0], dl[:, 0], temperature)
    return (cache, ev), ev

  _, events = jax.lax.scan(body, (cache, start), jnp.arange(length, dtype=jnp.int32))
  return jnp.swapaxes(events, 0, 1)


def sample_events_uncached(logits_fn, key, batch: int, length: int, bos, *,
                           temperature: float = 1.0):
  """The same draws, recomputing the logits of the whole prefix for every event (the reference)."""
  buf = jnp.zeros((batch, length + 1, 2), jnp.int32).at[:, 0].set(jnp.asarray(bos, jnp.int32))

  def body(t, buf):
    nl, dl = logits_fn(buf[:, :length])
    pick = lambda x: jax.lax.dynamic_index_in_dim(x, t, axis=1, keepdims=False)  # noqa: E731
    return buf.at[:, t + 1].set(_draw(key, t, pick(nl), pick(dl), temperature))

  return jax.lax.fori_loop(0, length, body, buf)[:, 1:]
