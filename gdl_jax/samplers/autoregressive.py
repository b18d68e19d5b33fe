"""Autoregressive sampling: temperature / top-k / top-p, and decoding loops with and without a cache.

Everything is a pure function of logits (or a model function) and an explicit key, jit-able. The
token at position t is drawn with `fold_in(key, t)`, so cached and uncached decoding of the same
model with the same key give the same tokens.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def top_k_mask(logits, k: int):
  """Keeps the k largest logits on the last axis (ties with the k-th kept), the rest -> -inf."""
  if k <= 0 or k >= logits.shape[-1]:
    return logits
  kth = jax.lax.top_k(logits, k)[0][..., -1:]  # [..., 1]
  return jnp.where(logits < kth, NEG_INF, logits)


def top_p_mask(logits, p: float):
  """Nucleus filter: keeps the smallest set of largest-probability tokens whose mass reaches p."""
  if p >= 1.0:
    return logits
  if p <= 0.0:
    raise ValueError(f"top_p={p} must be in (0, 1]; use 1.0 to turn it off.")
  sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]  # [..., V] descending
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly larger tokens
  keep = mass_before < p  # the first token is always kept
  n_keep = jnp.sum(keep, axis=-1, keepdims=True)  # [..., 1]
  threshold = jnp.take_along_axis(sorted_logits, n_keep - 1, axis=-1)
  return jnp.where(logits < threshold, NEG_INF, logits)


def filter_logits(logits, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
  """Temperature scaling, then top-k, then top-p (temperature must be > 0 here)."""
  if temperature <= 0:
    raise ValueError(f"temperature={temperature} must be > 0 (use sample_logits with 0 for greedy).")
  logits = logits.astype(jnp.float32) / temperature
  return top_p_mask(top_k_mask(logits, top_k), top_p)


def sample_logits(key, logits, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
  """One draw per row of logits [..., V] -> int32 [...]; temperature 0 is greedy (argmax)."""
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


# step_fn(cache, tokens [B, S], index) -> (logits [B, S, V], cache): tokens sit at positions
# index .. index+S-1; the cache holds whatever the model needs about positions < index.
StepFn = Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, Any]]


def decode_cached(step_fn: StepFn, cache, key, prompt, num_steps: int, **sampling):
  """Extends prompt [B, P] by num_steps tokens, one cached step each -> [B, P + num_steps].

  The prompt is read in one call (prefill); the loop is a lax.scan. `sampling`: temperature,
  top_k, top_p as in `sample_logits`.
  """
  if num_steps < 1:
    raise ValueError(f"num_steps={num_steps} must be >= 1.")
  prompt = jnp.asarray(prompt, jnp.int32)
  p = prompt.shape[1]
  logits, cache = step_fn(cache, prompt, jnp.asarray(0, jnp.int32))
  first = sample_logits(jax.random.fold_in(key, p), logits[:, -1], **sampling)  # [B]

  def body(carry, t):  # feed the token at position t, draw the one at t + 1
    cache, tok = carry
    logits, cache = step_fn(cache, tok[:, None], t)
    nxt = sample_logits(jax.random.fold_in(key, t + 1), logits[:, 0], **sampling)
    return (cache, nxt), nxt

  _, rest = jax.lax.scan(body, (cache, first), p + jnp.arange(num_steps - 1, dtype=jnp.int32))
  return jnp.concatenate([prompt, first[:, None], rest.T], axis=1)


def decode_uncached(logits_fn: Callable[[jax.Array], jax.Array], key, prompt, num_steps: int,
                    **sampling):
  """The same draws as `decode_cached`, recomputing logits_fn(tokens [B, L]) -> [B, L, V] per token.

  The reference for the cache (and the baseline for its speed): O(L) model calls on length L.
  """
  prompt = jnp.asarray(prompt, jnp.int32)
  b, p = prompt.shape
  buf = jnp.zeros((b, p + num_steps), jnp.int32).at[:, :p].set(prompt)

  def body(t, buf):
    logits = jax.lax.dynamic_index_in_dim(logits_fn(buf), t - 1, axis=1, keepdims=False)
    tok = sample_logits(jax.random.fold_in(key, t), logits, **sampling)
    return buf.at[:, t].set(tok)

  return jax.lax.fori_loop(p, p + num_steps, body, buf)


def sample_raster(log_probs_fn: Callable[[jax.Array], jax.Array], key, shape, **sampling):
  """Ancestral sampling of an integer image [B, H, W, C] in raster order, one jitted fori_loop.

  log_probs_fn(x int32 [B, H, W, C]) -> [B, H, W, C, levels] (logits or log-probs); position t of
  the flattened (H, W, C) order is drawn with `fold_in(key, t)`.
  """
  b = shape[0]
  d = math.prod(shape[1:])
  x = jnp.zeros(shape, jnp.int32)

  def body(t, x):
    lp = log_probs_fn(x)
    lp = lp.reshape(b, d, lp.shape[-1])
    tok = sample_logits(jax.random.fold_in(key, t),
                        jax.lax.dynamic_index_in_dim(lp, t, axis=1, keepdims=False), **sampling)
    return x.reshape(b, d).at[:, t].set(tok).reshape(shape)

  return jax.lax.fori_loop(0, d, body, x)


class RasterSteps(NamedTuple):
  """A model's incremental raster computation, for `sample_raster_cached` (single-channel images).

  init(batch) -> cache;  pixel(cache, i, j) -> (logits [B, levels], cache) of pixel (i, j) given
  the pixels before it;  commit(cache, i, j, tok int32 [B]) -> cache once pixel (i, j) is drawn;
  end_row(cache, i) -> cache after row i is complete (not called after the last row).
  """

  init: Callable[[int], Any]
  pixel: Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, Any]]
  commit: Callable[[Any, jax.Array, jax.Array, jax.Array], Any]
  end_row: Callable[[Any, jax.Array], Any]


def sample_raster_cached(steps: RasterSteps, key, shape, **sampling):
  """The same draws as `sample_raster` with cached activations: each pixel costs one position.

  shape (B, H, W, 1); pixel (i, j) is drawn with `fold_in(key, i * W + j)` from the logits
  steps.pixel returns, so with logits equal to log_probs_fn's (up to float reassociation) the
  images are those of `sample_raster`. Two nested lax.fori_loops (rows, columns), jit/vmap-able.
  """
  b, h, w, c = shape
  if c != 1:
    raise ValueError(f"sample_raster_cached draws single-channel images; shape={shape}. "
                     "Use sample_raster for several channels.")

  def row(i, carry):
    def col(j, carry):
      cache, x = carry
      logits, cache = steps.pixel(cache, i, j)
      tok = sample_logits(jax.random.fold_in(key, i * w + j), logits, **sampling)
      x = jax.lax.dynamic_update_slice(x, tok[:, None, None, None], (0, i, j, 0))
      return steps.commit(cache, i, j, tok), x

    cache, x = jax.lax.fori_loop(0, w, col, carry)
    cache = jax.lax.cond(i < h - 1, lambda c: steps.end_row(c, i), lambda c: c, cache)
    return cache, x

  _, x = jax.lax.fori_loop(0, h, row, (steps.init(b), jnp.zeros(shape, jnp.int32)))
  return x
