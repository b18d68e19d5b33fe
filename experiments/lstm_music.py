"""Chapter 7 (first edition): an LSTM with additive attention over the last notes, on Bach chorales.

Run:  python -m gdl_jax.cli train lstm_music --dataset chorales --workdir runs/lstm_chorales
      python -m gdl_jax.cli evaluate runs/lstm_chorales
      python -m gdl_jax.cli sample runs/lstm_chorales --num 4 --out samples_dir
(pitch, duration) embeddings -> LSTM -> additive attention over the last `window` states -> a pitch
head and a duration head; the same events, Task and metrics as music_transformer, and the figure of
the attention weights (figure.png) on a held-out window.

MEASURED: see README (music section); nothing here beyond what was run.
"""

from __future__ import annotations

import sys

import ml_collections
import numpy as np

from experiments._common import base_config, shrink
from experiments.music_transformer import NEEDS, RULES as MT_RULES, music_task
from gdl_jax.configs import POSITIVE, POSITIVE_INT, ConfigError
from gdl_jax.data.info import DatasetInfo
from gdl_jax.models.music_lstm import MusicLSTM
from gdl_jax.train.task import Task

TEST_DATASET = "chorales_tiny"   # the CLI fuzz's dataset (8 chorales; all 350 take minutes to parse)
RULES = {"model.hidden": POSITIVE_INT, "model.window": POSITIVE_INT, "model.temperature": POSITIVE,
         "data.transpose": MT_RULES["data.transpose"]}


def get_config(variant: str = "default", dataset: str = "chorales") -> ml_collections.ConfigDict:
  # chosen on the validation pieces: without augmentation 500 steps were best (2.60; the LSTM
  # overfits fast: 2000 steps gave 4.5); with data.transpose=6 it still improves at 1500 (2.42)
  c = base_config(dataset, steps=1500, batch_size=32, lr=2e-3, schedule="cosine", warmup_steps=100,
                  final_lr_frac=0.05, clip_norm=1.0)
  c.model = ml_collections.ConfigDict(dict(embed_dim=64, hidden=256, attn_dim=64, window=32,
                                           temperature=1.0))
  c.data = ml_collections.ConfigDict(dict(transpose=6))   # as music_transformer's (0 = off)
  c.num_samples = 64
  if variant == "tiny":
    shrink(c, steps=4, batch_size=8)
    c.model.update(embed_dim=8, hidden=16, attn_dim=8)
  elif variant != "default":
    raise ValueError(f"unknown variant {variant!r}; use 'default' or 'tiny'.")
  return c


def attention_figure(model, params, tokens, path, info):
  """The attention weights of one held-out window: row t = the step predicting event t."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  w = np.asarray(model.apply({"params": params}, tokens, method=model.attention))[0]
  fig, ax = plt.subplots(figsize=(6, 5.5), dpi=100)
  ax.imshow(w, cmap="Greys", vmin=0, vmax=max(float(w.max()), 1e-6))
  labels = [info.vocab[int(i)] for i in np.asarray(tokens[0, :, 0])]
  ax.set_xticks(range(len(labels)))
  ax.set_xticklabels(["BOS"] + labels[:-1], rotation=90, fontsize=5)
  ax.set_yticks(range(len(labels)))
  ax.set_yticklabels(labels, fontsize=5)
  ax.set_xlabel("input event (attended)")
  ax.set_ylabel("predicted event")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def build(config: ml_collections.ConfigDict, info: DatasetInfo) -> Task:
  if (problem := NEEDS.problem(info)):
    raise ConfigError(f"lstm_music {problem}")
  mc = config.model
  model = MusicLSTM(note_vocab=len(info.vocab), duration_vocab=len(info.duration_vocab),
                    max_len=info.shape[0], embed_dim=int(mc.embed_dim), hidden=int(mc.hidden),
                    attn_dim=int(mc.attn_dim), window=int(mc.window))
  return music_task(model, config, info, figure=attention_figure)


if __name__ == "__main__":
  from gdl_jax.cli import main
  sys.exit(main(["train", "lstm_music", *sys.argv[1:]]))
