"""Chapter 4: conditional GAN (the book's CGAN: a conditional WGAN-GP) on the 8x8 digits.

Run:  gdl-jax train cgan_digits --workdir runs/cgan_digits
      gdl-jax train cgan_digits --dataset fashion_mnist --workdir runs/cgan_fashion
      gdl-jax evaluate runs/cgan_digits
The label enters the generator as a one-hot vector concatenated to z, and the critic as one-hot
channels broadcast over the image (--config.model.label_dim=16 learns an embedding instead).
Generator updates draw their labels from the real batch, so the label mix follows the data.
sample(state, key, n, labels=None): round-robin labels 0, 1, ..., K-1, 0, ... by default; the
samples_ema.png grid has one column per class.
Artifacts: samples.png, progress.gif (one fixed latent batch over training), interpolations.png,
samples_by_class.png (row k = class k) (see experiments/_gan.py).

Expected result (measured, --config.steps=1000, 331 s on a shared 2-core CPU): the harness's
classifier labels 94.9% of 1000 class-conditional samples (round-robin labels) as the class asked
for (the same CNN: 99.2% on real test digits); classifier Fréchet distance 5.2 (360 samples vs 360
held-out), novelty ratio 1.41, no exact copies. References on the same protocol: 360 training
images 2.45; independent categorical pixels 27.9; mixture of 10 categoricals 11.8.
fashion_mnist, `--variant small` (batch 64, generator (128, 64), 2500 steps; 34 min on 2 CPU cores
shared with 3 other runs): classifier Fréchet distance 9.98 (1000 round-robin samples vs 1000 test
images), novelty ratio 1.23, no copies; the Fashion-MNIST CNN (92.2% on real test images) labels
78.5% of the samples as the class asked for (per class, in a second draw of 1000 with 80.2% overall: trouser 0.98, ankle boot 0.91, dress 0.90,
pullover 0.53, coat 0.66, shirt 0.67 - the upper-body garments the CNN also confuses most). The
truncation trick (--config.model.truncation=0.5 at `gdl-jax evaluate`) raises that to 88.3% at FD
14.8; 0.25 gives 88.0% at FD 29.0. The 90% target is not reached by this short run.
"""

from __future__ import annotations

import sys

import ml_collections

from experiments._common import base_config
from experiments._gan import apply_gan_variant, build_gan_task, gan_model_config
from gdl_jax.data.info import DatasetInfo
from gdl_jax.train.task import Task


def get_config(variant: str = "default", dataset: str = "digits") -> ml_collections.ConfigDict:
  big = dataset != "digits"
  c = base_config(dataset, steps=8000 if big else 3000,
                  batch_size=128 if big else 64, lr=2e-4, b1=0.5, b2=0.9)
  c.model = gan_model_config(loss="wgan", latent_dim=100 if big else 32,
                             gen_features=(256, 128) if big else (64, 32),
                             disc_features=(64, 128) if big else (32, 64),
                             gen_norm="batch", disc_norm="none", n_critic=3, gp_weight=10.0,
                             conditional=True)
  c.num_samples = 100
  apply_gan_variant(c, variant, latent_dim=8, gen_features=(16, 8), disc_features=(8, 16), n_critic=2)
  if variant == "tiny":
    c.num_samples = 20
  return c


def build(config: ml_collections.ConfigDict, info: DatasetInfo) -> Task:
  return build_gan_task(config, info, name="cgan_digits")


if __name__ == "__main__":
  from gdl_jax.cli import main
  sys.exit(main(["train", "cgan_digits", *sys.argv[1:]]))
