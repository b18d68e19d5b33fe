"""Chapter 4: the original WGAN (weight clipping to [-0.01, 0.01], RMSprop) on the 8x8 digits.

Run:  gdl-jax train wgan_digits --workdir runs/wgan_digits
      gdl-jax train wgan_digits --dataset fashion_mnist --workdir runs/wgan_fashion
      gdl-jax evaluate runs/wgan_digits
Arjovsky et al.'s Algorithm 1: 5 critic updates per generator update, RMSprop(5e-5), every critic
parameter projected into [-c, c] after each update (gdl_jax.objectives.gan.clip_params); the critic
has no BatchNorm. Here the 5 critic updates reuse the batch with fresh latents
(--config.model.critic_batches=split gives each its own fifth of the batch, as in the paper).
Artifacts: samples.png, progress.gif (one fixed latent batch over training), interpolations.png
(see experiments/_gan.py).

Expected result (measured, digits, the default 4000 steps, 175 s on a shared 2-core CPU):
classifier Fréchet distance 14.8 (359 EMA samples vs 359 held-out images), novelty ratio 1.62, no
exact copies; noisy, partly recognisable digits. Same protocol, references: the DCGAN (2000 steps)
9.7; independent categorical pixels 27.9. Clipping learns more slowly than the DCGAN or WGAN-GP, as
Gulrajani et al. report. Weight clipping keeping every critic parameter in [-0.01, 0.01] after
each update is tested in tests/objectives/test_gan.py.
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
  c = base_config(dataset, steps=8000 if big else 4000, batch_size=64, lr=5e-5, name="rmsprop")
  c.model = gan_model_config(loss="wgan", latent_dim=100 if big else 32,
                             gen_features=(256, 128) if big else (64, 32),
                             disc_features=(64, 128) if big else (32, 64),
                             gen_norm="batch", disc_norm="none", n_critic=5, clip_value=0.01)
  return apply_gan_variant(c, variant, latent_dim=8, gen_features=(16, 8), disc_features=(8, 16), n_critic=2)


def build(config: ml_collections.ConfigDict, info: DatasetInfo) -> Task:
  return build_gan_task(config, info, name="wgan_digits")


if __name__ == "__main__":
  from gdl_jax.cli import main
  sys.exit(main(["train", "wgan_digits", *sys.argv[1:]]))
