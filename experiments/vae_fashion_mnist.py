"""Chapter 3: convolutional VAE on Fashion-MNIST (28x28, 256 levels), held-out IWAE bits/dim.

Run:  gdl-jax train vae_fashion_mnist --workdir runs/vae_fashion_mnist
Variants: default (16-D latent, discretized-logistic decoder over the 256 levels), latent2d (the
book's 2-D latent, for the scatter and latent grid), bernoulli (binarized images, the book's
binary cross-entropy; Task.log_prob is None because that bound is on binarized data), gaussian,
tiny (tests). Same Task as vae_digits (see its docstring): loss -ELBO/dim, log_prob = IWAE(k=64)
in nats of the discrete images, samples = decoder mean of z ~ N(0, I).
Artifacts: reconstructions, samples, latent scatter by class, latent arithmetic (class vector of
`attribute_class`, default 7 = Sneaker), morphing.

Expected result: the default 4000 steps were NOT run yet. Measured on a shortened run
(--steps 600, same config otherwise; 2 CPU cores under heavy shared load, 710 s of training):
held-out IWAE(k=64) 3.615 bits/dim on the first 1000 test images, held-out ELBO 3.737 bits/dim
(first 256), train ELBO 3.615. Still improving at step 600. A full-test-set IWAE(k=64)
evaluation is 640k decoder passes: minutes on CPU.
"""

from __future__ import annotations

import sys

import ml_collections

from experiments._common import base_config
from experiments.vae_digits import apply_variant, build, model_config

__all__ = ["get_config", "build"]


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  c = base_config("fashion_mnist", steps=4000, batch_size=64, lr=1e-3, schedule="cosine",
                  warmup_steps=100, final_lr_frac=0.05, clip_norm=100.0)
  c.eval_batches = 4
  c.model = model_config(latent_dim=16, features=(32, 64), hidden=256, iwae_chunk=8,
                         attribute_class=7)
  return apply_variant(c, variant, extra=("latent2d", "bernoulli", "gaussian"))


if __name__ == "__main__":
  from gdl_jax.cli import main
  sys.exit(main(["train", "vae_fashion_mnist", *sys.argv[1:]]))
