"""GPT: a decoder-only Transformer (pre-LayerNorm, causal self-attention, learned or rotary positions).

    model = GPT(vocab_size=V, max_len=T)
    logits = model.apply(params, tokens)              # [B, T] -> [B, T, V]: p(x_t | x_<t), all t
    cache = model.init_cache(B)
    logits, cache = model.apply(params, cache, inputs, index, method=model.decode)

Token id `vocab_size` is the begin-of-sequence token: `__call__` shifts the targets right behind
it, so every position (the first included) is predicted. `decode` takes the model's *inputs*
(bos first) at positions index.. and keeps keys/values of earlier positions in the cache.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from gdl_jax.nn.attention import CausalSelfAttention, init_kv_cache
from gdl_jax.objectives.autoregressive import shift_right

Dtype = Any
POSITIONS = ("learned", "rotary")


class Block(nn.Module):
  """Pre-LN Transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

  num_heads: int
  mlp_ratio: int = 4
  rotary: bool = False
  dropout: float = 0.0
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, positions, cache=None, *, train: bool = False):  # [B, S, D]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y, cache = CausalSelfAttention(self.num_heads, rotary=self.rotary, **kw)(
        nn.LayerNorm(**kw)(x), positions, cache)
    x = x + nn.Dropout(self.dropout, deterministic=not train)(y)
    d = x.shape[-1]
    y = nn.Dense(self.mlp_ratio * d, **kw)(nn.LayerNorm(**kw)(x))
    y = nn.Dense(d, **kw)(nn.gelu(y))
    return x + nn.Dropout(self.dropout, deterministic=not train)(y), cache


class GPT(nn.Module):
  """Autoregressive Transformer language model over `vocab_size` tokens (+1 begin token)."""

  vocab_size: int
  max_len: int
  dim: int = 128
  num_heads: int = 4
  num_layers: int = 4
  mlp_ratio: int = 4
  positions: str = "learned"
  dropout: float = 0.0
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  @property
  def bos(self) -> int:
    return self.vocab_size

  def setup(self):
    if self.positions not in POSITIONS:
      raise ValueError(f"model.positions={self.positions!r}; use one of {POSITIONS}.")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.embed = nn.Embed(self.vocab_size + 1, self.dim, embedding_init=nn.initializers.normal(0.02),
                          **kw)
    if self.positions == "learned":
      self.pos_embed = self.param("pos_embed", nn.initializers.normal(0.02),
                                  (self.max_len, self.dim), self.param_dtype)
    self.blocks = [Block(self.num_heads, self.mlp_ratio, rotary=self.positions == "rotary",
                         dropout=self.dropout, **kw) for _ in range(self.num_layers)]
    self.ln_f = nn.LayerNorm(**kw)
    self.head = nn.Dense(self.vocab_size, **kw)
    self.drop = nn.Dropout(self.dropout)

  def __call__(self, tokens, *, train: bool = False):  # [B, T] -> [B, T, V]
    """Logits of p(tokens_t | tokens_<t) for every t (the begin token is added here)."""
    return self.logits(shift_right(tokens, self.bos), train=train)

  def logits(self, inputs, *, train: bool = False):  # [B, S] model inputs -> [B, S, V]
    """Next-token logits after each input token (inputs already start with the begin token)."""
    logits, _ = self._forward(inputs, jnp.asarray(0, jnp.int32), None, train)
    return logits

  def decode(self, cache, inputs, index):  # inputs [B, S] at positions index.. -> ([B, S, V], cache)
    """Cached step: reads keys/values of positions < index from `cache`, writes this call's."""
    return self._forward(inputs, index, cache, False)

  def init_cache(self, batch: int) -> list:
    """An empty key/value cache (one entry per layer) for `decode`; needs no parameters."""
    dh = self.dim // self.num_heads
    return [init_kv_cache(batch, self.max_len, self.num_heads, dh, self.dtype or jnp.float32)
            for _ in range(self.num_layers)]

  def _forward(self, inputs, index, cache: Optional[list], train: bool):
    s = inputs.shape[1]
    if s > self.max_len:
      raise ValueError(f"sequence length {s} exceeds model.max_len={self.max_len}; raise max_len.")
    positions = index + jnp.arange(s, dtype=jnp.int32)  # [S]
    x = self.embed(inputs)  # [B, S, D]
    if self.positions == "learned":
      x = x + jax.lax.dynamic_slice_in_dim(self.pos_embed, index, s, axis=0)[None].astype(x.dtype)
    x = self.drop(x, deterministic=not train)
    new_cache = []
    for i, block in enumerate(self.blocks):
      x, c = block(x, positions, None if cache is None else cache[i], train=train)
      new_cache.append(c)
    logits = self.head(self.ln_f(x)).astype(jnp.float32)
    return logits, (None if cache is None else new_cache)
