"""The second edition's music Transformer: (note, duration) events in, two next-event heads out.

    model = MusicTransformer(note_vocab=Vn, duration_vocab=Vd, max_len=T)
    note_logits, dur_logits = model.apply(params, tokens)      # tokens int [B, T, 2]
    cache = model.init_cache(B)
    (note_logits, dur_logits), cache = model.apply(params, cache, inputs, index, method=model.decode)

The input at each position is the sum of a note embedding, a duration embedding and a sine
position code (the book's; or positions="rotary": relative positions by rotary attention, in the
spirit of Huang et al.'s Music Transformer's relative attention); causal pre-LN blocks (gdl_jax.models.gpt.Block) follow, then one head per stream.
p(event_t | events_<t) = p(note_t | .) p(duration_t | .), the two heads reading the same state (as in
the book). Ids (note_vocab, duration_vocab) form the begin event, so every position is predicted.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from gdl_jax.models.gpt import Block
from gdl_jax.nn.attention import init_kv_cache

Dtype = Any


def sine_positions(positions, dim: int):
  """Transformer sine/cosine codes [S, dim] of integer positions [S] (Vaswani et al. 2017)."""
  half = dim // 2
  freqs = 10000.0 ** (-jnp.arange(half, dtype=jnp.float32) / max(half, 1))
  angles = positions.astype(jnp.float32)[:, None] * freqs[None, :]
  code = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
  return jnp.pad(code, ((0, 0), (0, dim - 2 * half)))


def shift_events(tokens, bos):
  """[B, T, 2] targets -> inputs: the begin event, then events 0 .. T-2."""
  first = jnp.broadcast_to(jnp.asarray(bos, tokens.dtype), tokens[:, :1].shape)
  return jnp.concatenate([first, tokens[:, :-1]], axis=1)


class MusicTransformer(nn.Module):
  """Causal Transformer over (note, duration) events with a note head and a duration head."""

  note_vocab: int
  duration_vocab: int
  max_len: int
  dim: int = 128
  num_heads: int = 4
  num_layers: int = 3
  mlp_ratio: int = 4
  dropout: float = 0.0
  positions: str = "sine"  # "sine": the book's codes added to the input; "rotary": relative (RoPE)
  embed_std: float = 1.0   # token embeddings' init std: the sine codes have RMS 0.71 per dimension
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  @property
  def bos(self) -> tuple[int, int]:
    return (self.note_vocab, self.duration_vocab)

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    # GPT-2's 0.02 would leave the tokens ~35x smaller than the sine codes they are summed with
    # (the first hundreds of steps then go into growing them: chorales valid bits/note 5.5 at step 100)
    init = nn.initializers.normal(self.embed_std)
    self.note_embed = nn.Embed(self.note_vocab + 1, self.dim, embedding_init=init, **kw)
    self.dur_embed = nn.Embed(self.duration_vocab + 1, self.dim, embedding_init=init, **kw)
    if self.positions not in ("sine", "rotary"):
      raise ValueError(f"positions={self.positions!r}; use 'sine' or 'rotary'.")
    self.blocks = [Block(self.num_heads, self.mlp_ratio, rotary=self.positions == "rotary",
                         dropout=self.dropout, **kw)
                   for _ in range(self.num_layers)]
    self.ln_f = nn.LayerNorm(**kw)
    self.note_head = nn.Dense(self.note_vocab, **kw)
    self.dur_head = nn.Dense(self.duration_vocab, **kw)
    self.drop = nn.Dropout(self.dropout)

  def __call__(self, tokens, *, train: bool = False):  # [B, T, 2] -> ([B, T, Vn], [B, T, Vd])
    """Logits of p(note_t | events_<t) and p(duration_t | events_<t) for every t."""
    return self.logits(shift_events(tokens, self.bos), train=train)

  def logits(self, inputs, *, train: bool = False):  # [B, S, 2] inputs, begin event first
    return self._forward(inputs, jnp.asarray(0, jnp.int32), None, train)[0]

  def decode(self, cache, inputs, index):  # inputs [B, S, 2] at positions index..
    """Cached step: keys/values of positions < index come from `cache`; this call's are written."""
    return self._forward(inputs, index, cache, False)

  def init_cache(self, batch: int) -> list:
    dh = self.dim // self.num_heads
    return [init_kv_cache(batch, self.max_len, self.num_heads, dh, self.dtype or jnp.float32)
            for _ in range(self.num_layers)]

  def embed(self, inputs, index):
    """Summed note + duration embeddings (plus sine positions): [B, S, 2] -> [B, S, D]."""
    positions = index + jnp.arange(inputs.shape[1], dtype=jnp.int32)
    x = self.note_embed(inputs[..., 0]) + self.dur_embed(inputs[..., 1])
    if self.positions == "rotary":  # relative: the attention rotates queries and keys instead
      return x, positions
    return x + sine_positions(positions, self.dim)[None].astype(x.dtype), positions

  def _forward(self, inputs, index, cache: Optional[list], train: bool):
    if inputs.shape[1] > self.max_len:
      raise ValueError(f"{inputs.shape[1]} events exceed model.max_len={self.max_len}.")
    x, positions = self.embed(inputs, index)
    x = self.drop(x, deterministic=not train)
    new_cache = []
    for i, block in enumerate(self.blocks):
      x, c = block(x, positions, None if cache is None else cache[i], train=train)
      new_cache.append(c)
    h = self.ln_f(x)
    out = (self.note_head(h).astype(jnp.float32), self.dur_head(h).astype(jnp.float32))
    return out, (None if cache is None else new_cache)
