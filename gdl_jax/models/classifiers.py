"""Chapter 2: MLP and CNN classifiers (BatchNorm, Dropout, LeakyReLU).

The CNN is also the evaluation harness's feature network: `features` returns its penultimate layer.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gdl_jax.nn.norm import BatchNorm


class ClassifierOutput(NamedTuple):
  logits: jax.Array    # [B, num_classes]
  features: jax.Array  # [B, F] penultimate activations (after the last hidden layer)


class MLP(nn.Module):
  """Flatten -> [Dense -> BatchNorm -> LeakyReLU -> Dropout] x n -> Dense (the book's first model)."""

  num_classes: int
  hidden: Sequence[int] = (200, 150)
  dropout: float = 0.25
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False) -> ClassifierOutput:
    h = x.reshape((x.shape[0], -1)).astype(self.dtype)  # [B, H*W*C]
    for width in self.hidden:
      h = nn.Dense(width, dtype=self.dtype, param_dtype=self.param_dtype)(h)
      h = BatchNorm(use_running_average=not train, dtype=self.dtype,
                    param_dtype=self.param_dtype)(h)
      h = nn.leaky_relu(h, 0.2)
      h = nn.Dropout(self.dropout, deterministic=not train)(h)
    logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=self.param_dtype)(h)
    return ClassifierOutput(logits, h)


class CNN(nn.Module):
  """[Conv -> BN -> LeakyReLU] blocks with stride-2 downsampling, Dense head (the book's CNN)."""

  num_classes: int
  channels: Sequence[int] = (32, 32, 64, 64)
  dense: int = 128
  dropout: float = 0.5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False) -> ClassifierOutput:
    h = x.astype(self.dtype)  # [B, H, W, C]
    for i, ch in enumerate(self.channels):
      stride = 2 if i % 2 == 1 else 1
      h = nn.Conv(ch, (3, 3), strides=stride, padding="SAME", dtype=self.dtype,
                  param_dtype=self.param_dtype)(h)
      h = BatchNorm(use_running_average=not train, dtype=self.dtype,
                    param_dtype=self.param_dtype)(h)
      h = nn.leaky_relu(h, 0.2)
    h = h.reshape((h.shape[0], -1))  # [B, h*w*c]
    h = nn.Dense(self.dense, dtype=self.dtype, param_dtype=self.param_dtype)(h)
    h = BatchNorm(use_running_average=not train, dtype=self.dtype,
                  param_dtype=self.param_dtype)(h)
    h = nn.leaky_relu(h, 0.2)
    feats = h
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=self.param_dtype)(h)
    return ClassifierOutput(logits, feats)


def classifier_loss(model: nn.Module, levels: int):
  """loss_fn(params, extra, batch, key) for make_train_step: softmax cross-entropy on integer labels."""
  import optax
  from gdl_jax.data.info import to_signed

  def loss_fn(params, extra, batch, key):
    x = to_signed(batch["image"], levels)
    out, mutated = model.apply({"params": params, **extra}, x, train=True,
                               rngs={"dropout": key}, mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(out.logits, batch["label"]).mean()
    acc = (out.logits.argmax(-1) == batch["label"]).mean()
    return loss, (dict(mutated), {"accuracy": acc})

  return loss_fn


def predict(model: nn.Module, variables, images, levels: int) -> ClassifierOutput:
  """Eval-mode forward pass on integer-level images."""
  from gdl_jax.data.info import to_signed
  return model.apply(variables, to_signed(images, levels), train=False)
