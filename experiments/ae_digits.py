"""Chapter 3: the deterministic convolutional autoencoder (2-D code) on the 8x8 digits.

Run:  gdl-jax train ae_digits --workdir runs/ae_digits
      (any image dataset: add --dataset fashion_mnist, as in the book)
The encoder maps an image to a 2-D code z, the decoder gives a discretized logistic per pixel;
the loss is the reconstruction negative log-likelihood (nats/dim; eval: recon_bpd). The AE is
not a density model, so Task.log_prob is None. It has no prior either: Task.sample decodes
z ~ N(m, diag v) with (m, v) a running fit of the training codes kept in state.extra, the
stand-in for the book's "sample the embedding's bounding box" - the pictures show why that gives
poor samples (the code space has gaps and no structure to sample from).
Artifacts: reconstructions, samples (mean and noisy), the 2-D code scatter coloured by label,
the decoded 12x12 code grid, latent arithmetic and morphing.

Expected result (measured, default config, 1500 steps, 2 CPU cores under heavy shared load:
224 s of training): held-out reconstruction 1.952 bits/dim (recon_bpd; not a likelihood: the
code is given). The code scatter shows classes in separate arms spanning about [-20, 25].
Fashion-MNIST (`gdl-jax train ae --dataset fashion_mnist --evaluate`, 1500 steps): held-out
reconstruction 3.917 bits/dim; samples decoded from the Gaussian fit of the codes: FD 31.1 (1000
vs 1000 test images), novelty ratio 0.77 - below 0.8: the decoded codes sit closer to training
images than fresh test images do (rule 2 flags them), the book's point about AE sampling.
"""

from __future__ import annotations

import sys

import ml_collections

from experiments._common import base_config
from experiments.vae_digits import NEEDS, RULES, apply_variant, build, check, model_config

__all__ = ["get_config", "build", "check", "NEEDS", "RULES"]


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  c = base_config("digits", steps=1500, batch_size=64, lr=1e-3, schedule="cosine",
                  warmup_steps=100, final_lr_frac=0.05, clip_norm=100.0)
  c.model = model_config(family="ae", latent_dim=2)
  return apply_variant(c, variant)


if __name__ == "__main__":
  from gdl_jax.cli import main
  sys.exit(main(["train", "ae_digits", *sys.argv[1:]]))
