"""The first edition's music LSTM: (pitch, duration) embeddings, an LSTM, additive attention over
the last notes, and a pitch head and a duration head.

    model = MusicLSTM(note_vocab=Vn, duration_vocab=Vd, max_len=T)
    note_logits, dur_logits = model.apply(params, tokens)          # tokens int [B, T, 2]
    weights = model.apply(params, tokens, method=model.attention)  # [B, T, T] (the figure)

At step t the LSTM state h_t scores each earlier state h_j (j <= t, at most `window` back) with
additive (Bahdanau) attention e_tj = v . tanh(W h_j + U h_t); the heads read [h_t, sum_j a_tj h_j].
`decode` keeps the LSTM carry and the past states in its cache, so the same samplers drive it as
the Transformer (gdl_jax.samplers.music).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gdl_jax.models.music_transformer import shift_events

Dtype = Any


class MusicLSTM(nn.Module):
  """Embeddings -> LSTM -> additive attention over the last `window` states -> two heads."""

  note_vocab: int
  duration_vocab: int
  max_len: int
  embed_dim: int = 64
  hidden: int = 256
  attn_dim: int = 64
  window: int = 32
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  @property
  def bos(self) -> tuple[int, int]:
    return (self.note_vocab, self.duration_vocab)

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.note_embed = nn.Embed(self.note_vocab + 1, self.embed_dim, **kw)
    self.dur_embed = nn.Embed(self.duration_vocab + 1, self.embed_dim, **kw)
    self.rnn = nn.RNN(nn.OptimizedLSTMCell(self.hidden, **kw))
    self.w_key = nn.Dense(self.attn_dim, use_bias=False, **kw)
    self.w_query = nn.Dense(self.attn_dim, **kw)
    self.v = nn.Dense(1, use_bias=False, **kw)
    self.note_head = nn.Dense(self.note_vocab, **kw)
    self.dur_head = nn.Dense(self.duration_vocab, **kw)

  def __call__(self, tokens, *, train: bool = False):
    return self.logits(shift_events(tokens, self.bos), train=train)

  def logits(self, inputs, *, train: bool = False):  # [B, S, 2], begin event first
    del train
    return self.decode(self.init_cache(inputs.shape[0]), inputs, jnp.asarray(0, jnp.int32))[0]

  def attention(self, tokens):  # [B, T, 2] -> [B, T, T] weights of the inputs' states
    """The attention weights a_tj (rows: the step predicting event t; columns: inputs j)."""
    inputs = shift_events(tokens, self.bos)
    _, _, weights = self._run(self.init_cache(inputs.shape[0]), inputs, jnp.asarray(0, jnp.int32))
    return weights[:, :, :inputs.shape[1]]

  def embed(self, inputs):  # [B, S, 2] -> [B, S, 2E]
    return jnp.concatenate([self.note_embed(inputs[..., 0]), self.dur_embed(inputs[..., 1])], -1)

  def init_cache(self, batch: int) -> dict:
    z = jnp.zeros((batch, self.hidden), self.dtype or jnp.float32)
    return {"carry": (z, z), "states": jnp.zeros((batch, self.max_len, self.hidden), z.dtype)}

  def decode(self, cache, inputs, index):
    """Continues from `cache` (carry and states of positions < index) over inputs at index.."""
    out, cache, _ = self._run(cache, inputs, index)
    return out, cache

  def _run(self, cache, inputs, index):
    s = inputs.shape[1]
    x = self.embed(inputs)
    carry, h = self.rnn(x, initial_carry=cache["carry"], return_carry=True)  # h [B, S, H]
    states = jax.lax.dynamic_update_slice_in_dim(cache["states"], h.astype(cache["states"].dtype),
                                                 index, axis=1)  # [B, L, H]
    q_pos = index + jnp.arange(s)
    k_pos = jnp.arange(self.max_len)
    mask = (k_pos[None, :] <= q_pos[:, None]) & (k_pos[None, :] > q_pos[:, None] - self.window)
    scores = self.v(jnp.tanh(self.w_key(states)[:, None, :, :] +
                             self.w_query(h)[:, :, None, :]))[..., 0]  # [B, S, L]
    scores = jnp.where(mask[None], scores.astype(jnp.float32), -jnp.inf)
    weights = jax.nn.softmax(scores, axis=-1)
    context = jnp.einsum("bsl,blh->bsh", weights.astype(states.dtype), states)
    feats = jnp.concatenate([h, context], axis=-1)
    out = (self.note_head(feats).astype(jnp.float32), self.dur_head(feats).astype(jnp.float32))
    return out, {"carry": carry, "states": states}, weights
