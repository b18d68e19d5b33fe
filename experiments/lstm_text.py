"""Chapter 5: an LSTM (or GRU) character language model on the Python docs text.

Run:  gdl-jax train lstm_text --workdir runs/lstm_text    (--dataset novel_text for Austen;
      --config.model.cell=gru; pydoc_words for the word-level model)
Embedding -> stacked LSTM layers -> softmax over the vocabulary; every character of a 128-character
window is predicted from the ones before it (a begin token starts each window), so log_prob is the
exact log p(window) and bits_per_dim is bits per character. Samples carry the RNN state through a
lax.scan (temperature / top-k / top-p from the model config). The Task is gpt_text.sequence_task.

MEASURED (default config, 171,525 params, 1000 steps of 16 x 128 characters in 211 s on 2 shared
CPU cores): held-out 2.302 bits per character on all 363 test windows of pydoc_text
(`gdl-jax evaluate RUN --no_features`). gpt_text at the same parameter count, data and steps: 2.167.
"""

from __future__ import annotations

import sys

import ml_collections

from experiments._common import base_config, shrink
from experiments.gpt_text import SAMPLING_RULES, check, sampling_config, sequence_task  # noqa: F401
from gdl_jax.configs import POSITIVE_INT, ConfigError, Needs, OneOf
from gdl_jax.data.info import DatasetInfo
from gdl_jax.models.rnn import CELLS, RNNLM
from gdl_jax.train.task import Task


# What the config may hold (check: gpt_text's, for top_k against the vocabulary).
NEEDS = Needs("text")
RULES = {"model.embed_dim": POSITIVE_INT, "model.cell": OneOf(sorted(CELLS)), **SAMPLING_RULES}


def model_config(**kw) -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict(dict(embed_dim=48, hidden=170, num_layers=1, cell="lstm",
                                     dropout=0.0, **sampling_config()))
  m.update(kw)
  return m


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  c = base_config("pydoc_text", steps=1000, batch_size=16, lr=3e-3, schedule="cosine",
                  warmup_steps=100, final_lr_frac=0.05, clip_norm=1.0)
  c.model = model_config()
  c.num_samples = 8
  if variant == "tiny":
    shrink(c, steps=4, batch_size=8)
    c.model.update(embed_dim=8, hidden=16, dropout=0.0)
  elif variant != "default":
    raise ValueError(f"unknown variant {variant!r}; use 'default' or 'tiny'.")
  return c


def build(config: ml_collections.ConfigDict, info: DatasetInfo) -> Task:
  if (problem := NEEDS.problem(info)):
    raise ConfigError(f"lstm_text {problem}")
  mc = config.model
  model = RNNLM(vocab_size=len(info.vocab), embed_dim=int(mc.embed_dim), hidden=int(mc.hidden),
                num_layers=int(mc.num_layers), cell=str(mc.cell), dropout=float(mc.dropout))
  return sequence_task(model, config, info, length=info.shape[0])


if __name__ == "__main__":
  from gdl_jax.cli import main
  sys.exit(main(["train", "lstm_text", *sys.argv[1:]]))
