"""Chapter 2: MLP and CNN classifiers; the CNN is also the harness's feature network.

Run:  gdl-jax train classifier --dataset digits --workdir runs/cnn_digits
      gdl-jax train classifier --dataset fashion_mnist --config.model.arch=mlp --workdir runs/mlp_fm
Measured test accuracies are in README.md (CNN >= 97% on digits, >= 91% on Fashion-MNIST).
"""

from __future__ import annotations

from gdl_jax.configs import POSITIVE_INT, Needs, OneOf
from gdl_jax.evaluation.classifier import classifier_config, classifier_task

# What the config may hold (checked before anything is built; gdl_jax.configs has the common rules).
NEEDS = Needs("image", labels=True)
RULES = {"model.arch": OneOf("cnn", "mlp"), "model.channels": POSITIVE_INT, "model.dense": POSITIVE_INT}


def get_config(variant: str = "default", dataset: str = "digits"):
  return classifier_config(variant, dataset)


def build(config, info):
  return classifier_task(config, info)
