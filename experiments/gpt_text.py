"""Chapter 9: a GPT (decoder-only Transformer) character language model on the Python docs text.

Run:  gdl-jax train gpt_text --workdir runs/gpt_text      (--dataset novel_text for Austen)
      python -m experiments.gpt_text bench                 (cached vs uncached decoding speed)
A pre-LN Transformer (causal self-attention, learned or rotary positions) predicts every character
of a 128-character window from the ones before it (a begin token starts each window), so log_prob
is the exact log p(window) and bits_per_dim is bits per character. Samples are decoded with a
key/value cache (lax.scan), with temperature / top-k / top-p from the model config.
`sequence_task` is the Task shared with lstm_text and gpt_digits.

MEASURED (default config, 171,623 params, 1000 steps of 16 x 128 characters in 491 s on 2 shared
CPU cores): held-out 2.167 bits per character on all 363 test windows of pydoc_text
(`gdl-jax evaluate RUN --no_features`); lstm_text at the same parameter count, data and steps:
2.302 (in 211 s). Decoding 128 tokens for 8 sequences (`python -m experiments.gpt_text bench 128`):
cached 0.22 s vs uncached 2.56 s, x11.8, identical tokens.
"""

from __future__ import annotations

import functools
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from experiments._common import base_config, shrink
from gdl_jax.configs import NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, ConfigError, Needs, OneOf, Range
from gdl_jax.data.info import DatasetInfo
from gdl_jax.models.gpt import GPT, POSITIONS
from gdl_jax.objectives.autoregressive import bits_per_dim, make_nll_loss, sequence_log_prob
from gdl_jax.optim import make_optimizer
from gdl_jax.samplers.autoregressive import decode_cached, decode_uncached
from gdl_jax.train.state import TrainState
from gdl_jax.train.step import make_train_step
from gdl_jax.train.task import Task


# What a sequence model's config may hold (gpt_digits and lstm_text use these too).
SAMPLING_RULES = {"model.temperature": POSITIVE, "model.top_k": NON_NEGATIVE_INT,
                  "model.top_p": Range(0, 1, lo_open=True)}
NEEDS = Needs("text", hint="for images use gpt_digits")
RULES = {"model.dim": POSITIVE_INT, "model.mlp_ratio": POSITIVE_INT, "model.positions": OneOf(POSITIONS),
         **SAMPLING_RULES}


def check(config, info: DatasetInfo) -> None:
  """Constraints between keys and against the vocabulary (the single values are in RULES)."""
  mc = config.model
  if "dim" in mc:
    if int(mc.dim) % int(mc.num_heads):
      raise ConfigError(f"config model.dim={mc.dim} must be a multiple of model.num_heads={mc.num_heads}; "
                        f"pass --config.model.num_heads=1 or a dim divisible by it.")
    if mc.positions == "rotary" and (int(mc.dim) // int(mc.num_heads)) % 2:
      raise ConfigError(f"config model.positions='rotary' needs an even head size (dim / num_heads = "
                        f"{int(mc.dim) // int(mc.num_heads)}); pass an even --config.model.dim.")
  vocab = len(info.vocab) if info.kind == "text" else int(info.levels or 0)
  if vocab and int(mc.top_k) > vocab:
    raise ConfigError(f"config model.top_k={mc.top_k} is larger than the vocabulary ({vocab} tokens); "
                      f"pass --config.model.top_k=0 (off) or a value <= {vocab}.")


def sampling_config(**kw) -> dict:
  """Sampler settings every sequence experiment carries in config.model."""
  return dict(temperature=1.0, top_k=0, top_p=1.0, **kw)


def model_config(**kw) -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict(dict(dim=64, num_heads=4, num_layers=3, mlp_ratio=4,
                                     positions="learned", dropout=0.0, **sampling_config()))
  m.update(kw)
  return m


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  c = base_config("pydoc_text", steps=1000, batch_size=16, lr=3e-3, schedule="cosine",
                  warmup_steps=100, final_lr_frac=0.05, clip_norm=1.0)
  c.model = model_config()
  c.num_samples = 8
  if variant == "tiny":
    shrink(c, steps=4, batch_size=8)
    c.model.update(dim=16, num_heads=2, num_layers=1, dropout=0.0)
  elif variant != "default":
    raise ValueError(f"unknown variant {variant!r}; use 'default' or 'tiny'.")
  return c


def sampling_kwargs(mc) -> dict:
  return dict(temperature=float(mc.temperature), top_k=int(mc.top_k), top_p=float(mc.top_p))


def sequence_task(model, config, info: DatasetInfo, *, length: int,
                  to_tokens: Callable = lambda batch: batch["tokens"],
                  from_tokens: Callable = lambda tokens: tokens) -> Task:
  """The Task of an autoregressive sequence model with `logits`, `decode` and a cache/carry init.

  to_tokens(batch) -> int [B, length]; from_tokens(int32 [n, length]) -> samples in the dataset's
  format. log_prob is exact: sum_t log p(x_t | x_<t) over all `length` positions, in nats.
  """
  optimizer = make_optimizer(config.optimizer, int(config.steps))
  sampling = sampling_kwargs(config.model)
  init_state_fn = getattr(model, "init_cache", None) or model.init_carry

  def log_prob_fn(params, batch, key, train):
    tokens = to_tokens(batch).astype(jnp.int32)
    logits = model.apply({"params": params}, tokens, train=train, rngs={"dropout": key})
    return sequence_log_prob(logits, tokens)  # [B]

  def init(key, batch):
    params = model.init(key, to_tokens(batch).astype(jnp.int32))["params"]
    return TrainState.create(params, optimizer)

  step = make_train_step(make_nll_loss(log_prob_fn, length), optimizer)

  @jax.jit
  def eval_step(state, batch, key):
    nll = -jnp.mean(log_prob_fn(state.eval_params(), batch, key, False))
    return {"loss": nll / length, "bits_per_dim": bits_per_dim(nll, length)}

  @functools.partial(jax.jit, static_argnums=2)
  def _sample(params, key, n):
    step_fn = lambda cache, x, i: model.apply({"params": params}, cache, x, i, method="decode")
    prompt = jnp.full((n, 1), model.bos, jnp.int32)
    return decode_cached(step_fn, init_state_fn(n), key, prompt, length, **sampling)[:, 1:]

  def sample(state, key, n):
    return from_tokens(_sample(state.eval_params(), key, int(n)))

  log_prob_jit = jax.jit(log_prob_fn, static_argnums=3)

  def log_prob(state, batch, key):
    return log_prob_jit(state.eval_params(), batch, key, False)

  return Task(init=init, step=step, eval_step=eval_step, sample=sample, log_prob=log_prob)


def make_model(mc, vocab_size: int, max_len: int) -> GPT:
  return GPT(vocab_size=vocab_size, max_len=max_len, dim=int(mc.dim), num_heads=int(mc.num_heads),
             num_layers=int(mc.num_layers), mlp_ratio=int(mc.mlp_ratio), positions=str(mc.positions),
             dropout=float(mc.dropout))


def build(config: ml_collections.ConfigDict, info: DatasetInfo) -> Task:
  if (problem := NEEDS.problem(info)):
    raise ConfigError(f"gpt_text {problem}")
  length = info.shape[0]
  return sequence_task(make_model(config.model, len(info.vocab), length), config, info, length=length)


def benchmark_decoding(model, params, *, batch: int = 8, length: int | None = None, repeats: int = 3,
                       key=None) -> dict:
  """Seconds per call of cached vs uncached sampling (temperature 1, same key), after compiling."""
  length = length or model.max_len - 1
  key = jax.random.key(0) if key is None else key
  prompt = jnp.full((batch, 1), model.bos, jnp.int32)
  init_fn = getattr(model, "init_cache", None) or model.init_carry
  cached = jax.jit(lambda p, k: decode_cached(
      lambda c, x, i: model.apply({"params": p}, c, x, i, method="decode"), init_fn(batch), k,
      prompt, length))
  uncached = jax.jit(lambda p, k: decode_uncached(
      lambda x: model.apply({"params": p}, x, method="logits"), k, prompt, length))
  out = {}
  for name, fn in (("cached", cached), ("uncached", uncached)):
    toks = fn(params, key).block_until_ready()  # compile
    t0 = time.perf_counter()
    for _ in range(repeats):
      fn(params, key).block_until_ready()
    out[name + "_s"] = (time.perf_counter() - t0) / repeats
    out[name + "_tokens"] = toks
  out["same_tokens"] = bool(jnp.all(out.pop("cached_tokens") == out.pop("uncached_tokens")))
  out["speedup"] = out["uncached_s"] / out["cached_s"]
  return out


def _bench_main(argv):
  """`python -m experiments.gpt_text bench [length]`: decoding speed of the default-size model."""
  from gdl_jax import data
  length = int(argv[0]) if argv else 128
  info = data.load("pydoc_text").info
  mc = get_config().model
  model = make_model(mc, len(info.vocab), length + 1)
  params = model.init(jax.random.key(0), jnp.zeros((1, length), jnp.int32))["params"]
  r = benchmark_decoding(model, params, batch=8, length=length)
  print(f"GPT dim={mc.dim} layers={mc.num_layers}, batch 8, {length} tokens: cached "
        f"{r['cached_s']:.3f}s, uncached {r['uncached_s']:.3f}s, speedup x{r['speedup']:.1f}, "
        f"same tokens: {r['same_tokens']}")


if __name__ == "__main__":
  if sys.argv[1:2] == ["bench"]:
    _bench_main(sys.argv[2:])
  else:
    from gdl_jax.cli import main
    sys.exit(main(["train", "gpt_text", *sys.argv[1:]]))
