"""Chapter 3: VAE on faces - scikit-image's LFW subset (25x25 grey, 256 levels) as the offline
stand-in for CelebA: face arithmetic and morphing.

Run:  gdl-jax train vae_faces --workdir runs/vae_faces      (needs `pip install scikit-image`)
Data: `skimage.data.lfw_subset()`: 100 faces (label 1) and 100 non-face crops (label 0) from LFW,
25x25 floats in [0, 1] quantized to 256 levels; a seeded 160/40 split: the dataset "lfw_subset"
(gdl_jax/data/photos.py). Same Task as vae_digits: loss -ELBO/dim with a discretized-logistic decoder,
log_prob = IWAE(k=64) in nats, samples = decoder mean of z ~ N(0, I).
Artifacts: reconstructions, samples, latent scatter (face vs non-face), latent arithmetic with
the "face" attribute vector (mean latent of faces minus the rest, added to non-face crops, as the
book adds "smiling" to CelebA faces) and morphing between test images.
With 160 training images this is a demonstration of the book's figures, not a face model.

Expected result (measured, default config, 400 steps with random mirroring, 2 CPU cores under
heavy shared load: 327 s): held-out IWAE(k=64) 5.71 bits/dim on the 40 test crops (ELBO 5.81;
train ELBO 5.85 on mirrored batches: no overfitting yet). Without mirroring and at 1500 steps
the model overfits the 160 images badly (test 6.07 bits/dim at step 375, 14.9 at step 1500),
hence the short schedule. Adding the face vector to non-face crops turns them into faces
(latent_arithmetic_class1.png).
"""

from __future__ import annotations

import sys

import ml_collections

from experiments._common import base_config
from experiments.vae_digits import NEEDS, RULES, apply_variant, build, check, model_config
from gdl_jax.data.photos import load_lfw_subset

__all__ = ["get_config", "build", "check", "NEEDS", "RULES", "load_lfw_subset"]


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  c = base_config("lfw_subset", steps=400, batch_size=32, lr=1e-3, schedule="cosine",
                  warmup_steps=50, final_lr_frac=0.05, clip_norm=100.0)
  c.num_samples = 36
  c.eval_batches = 2
  c.model = model_config(latent_dim=16, features=(32, 64), hidden=256, iwae_chunk=8,
                         augment_flip=True, attribute_class=1, morph_steps=8)
  return apply_variant(c, variant, extra=("latent2d",))


if __name__ == "__main__":
  from gdl_jax.cli import main
  sys.exit(main(["train", "vae_faces", *sys.argv[1:]]))
