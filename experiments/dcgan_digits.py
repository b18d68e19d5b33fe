"""Chapter 4: DCGAN (BatchNorm in both players, non-saturating loss) on the 8x8 digits.

Run:  gdl-jax train dcgan_digits --workdir runs/dcgan_digits
      gdl-jax train dcgan_digits --dataset fashion_mnist --workdir runs/dcgan_fashion   (28x28)
      gdl-jax evaluate runs/dcgan_digits          (classifier Fréchet distance, novelty ratio)
The book's recipe: G = Dense -> [stride-2 transposed conv, BatchNorm, LeakyReLU(0.2)] -> tanh;
D = [stride-2 conv, BatchNorm (not on the first), LeakyReLU(0.2), Dropout(0.3)] -> Dense logit;
Adam(2e-4, b1=0.5), noisy labels (NOISE_PARAM = 0.1, kept inside [0, 1]). Samples come from an EMA
of the generator with re-estimated ("standing") BatchNorm statistics.
Artifacts: samples.png, progress.gif (one fixed latent batch over training), interpolations.png
(see experiments/_gan.py).

Expected result (measured, digits, --config.steps=2000, 248 s on a shared 2-core CPU): classifier
Fréchet distance 9.7 (360 EMA samples vs 360 held-out images), novelty ratio 1.45, no exact copies;
recognisable but blurry digits. Same protocol, references: 360 training images 2.45; independent categorical pixels 27.9;
mixture of 10 categoricals 11.8 (gdl_jax.evaluation.harness.baseline_table).
fashion_mnist: not measured yet.
"""

from __future__ import annotations

import sys

import ml_collections

from experiments._common import base_config
from experiments._gan import (NEEDS, RULES, apply_gan_variant, build_gan_task,  # noqa: F401
                            check, gan_model_config)  # NEEDS, RULES, check: the CLI's checks
from gdl_jax.data.info import DatasetInfo
from gdl_jax.train.task import Task


def get_config(variant: str = "default", dataset: str = "digits") -> ml_collections.ConfigDict:
  big = dataset != "digits"
  c = base_config(dataset, steps=8000 if big else 3000,
                  batch_size=128 if big else 64, lr=2e-4, b1=0.5, b2=0.999)
  c.model = gan_model_config(loss="nsgan", latent_dim=100 if big else 32,
                             gen_features=(256, 128) if big else (64, 32),
                             disc_features=(64, 128) if big else (32, 64),
                             gen_norm="batch", disc_norm="batch", dropout=0.3, label_noise=0.1)
  return apply_gan_variant(c, variant, latent_dim=8, gen_features=(16, 8), disc_features=(8, 16))


def build(config: ml_collections.ConfigDict, info: DatasetInfo) -> Task:
  return build_gan_task(config, info, name="dcgan_digits")


if __name__ == "__main__":
  from gdl_jax.cli import main
  sys.exit(main(["train", "dcgan_digits", *sys.argv[1:]]))
