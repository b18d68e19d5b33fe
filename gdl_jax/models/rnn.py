"""Recurrent language models (the book's LSTM text generator) and a bidirectional RNN encoder.

    model = RNNLM(vocab_size=V, cell="lstm", num_layers=2)
    logits = model.apply(params, tokens)                 # [B, T] -> [B, T, V]: p(x_t | x_<t)
    carry = model.init_carry(B)
    logits, carry = model.apply(params, carry, inputs, index, method=model.decode)

Token id `vocab_size` is the begin-of-sequence token (as in gdl_jax.models.gpt), so `decode` has
the same signature as GPT.decode and both plug into gdl_jax.samplers.autoregressive.decode_cached
(the RNN state is the "cache").
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from gdl_jax.objectives.autoregressive import shift_right

Dtype = Any
CELLS = {"lstm": nn.LSTMCell, "gru": nn.GRUCell}


def _cell(name: str, features: int, **kw):
  if name not in CELLS:
    raise ValueError(f"model.cell={name!r}; use one of {sorted(CELLS)}.")
  return CELLS[name](features, **kw)


class RNNLM(nn.Module):
  """Embedding -> stacked LSTM/GRU layers -> logits over the vocabulary."""

  vocab_size: int
  embed_dim: int = 64
  hidden: int = 256
  num_layers: int = 1
  cell: str = "lstm"
  dropout: float = 0.0
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  @property
  def bos(self) -> int:
    return self.vocab_size

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.embed = nn.Embed(self.vocab_size + 1, self.embed_dim, **kw)
    self.rnns = [nn.RNN(_cell(self.cell, self.hidden, **kw)) for _ in range(self.num_layers)]
    self.drop = nn.Dropout(self.dropout)
    self.head = nn.Dense(self.vocab_size, **kw)

  def __call__(self, tokens, *, train: bool = False):  # [B, T] -> [B, T, V]
    """Logits of p(tokens_t | tokens_<t) for every t (the begin token is added here)."""
    logits, _ = self._forward(shift_right(tokens, self.bos), self.init_carry(tokens.shape[0]), train)
    return logits

  def logits(self, inputs, *, train: bool = False):  # [B, S] inputs (begin token first)
    return self._forward(inputs, self.init_carry(inputs.shape[0]), train)[0]

  def decode(self, carry, inputs, index):  # [B, S] -> ([B, S, V], carry)
    """Continues from `carry` (the state after the tokens before `index`) over `inputs`."""
    del index  # the state already knows where it is
    return self._forward(inputs, carry, False)

  def init_carry(self, batch: int) -> list:
    """Zero states, one per layer ((c, h) for LSTM, h for GRU); needs no parameters."""
    z = jnp.zeros((batch, self.hidden), self.dtype or jnp.float32)
    return [(z, z) if self.cell == "lstm" else z for _ in range(self.num_layers)]

  def _forward(self, inputs, carry, train: bool):
    x = self.embed(inputs)  # [B, S, E]
    new_carry = []
    for rnn, c in zip(self.rnns, carry):
      c, x = rnn(x, initial_carry=c, return_carry=True)  # x: [B, S, hidden]
      x = self.drop(x, deterministic=not train)
      new_carry.append(c)
    return self.head(x).astype(jnp.float32), new_carry


class RNNEncoder(nn.Module):
  """Token ids [B, T] -> per-step features [B, T, hidden * (2 if bidirectional else 1)].

  Bidirectional layers read the sequence both ways (nn.Bidirectional), so step t sees the whole
  sequence: an encoder (classification, seq2seq), never an autoregressive model.
  """

  vocab_size: int
  embed_dim: int = 64
  hidden: int = 128
  num_layers: int = 1
  cell: str = "lstm"
  bidirectional: bool = True
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.Embed(self.vocab_size, self.embed_dim, **kw)(tokens)
    for _ in range(self.num_layers):
      fwd = nn.RNN(_cell(self.cell, self.hidden, **kw))
      if self.bidirectional:
        x = nn.Bidirectional(fwd, nn.RNN(_cell(self.cell, self.hidden, **kw)))(x)
      else:
        x = fwd(x)
    return x
