"""VQ-GAN's adversarial pieces (Esser et al. 2021): patch-logit GAN losses and the adaptive weight.

    d = disc_loss(real_logits, fake_logits, "hinge")        # the critic minimises this
    g = gen_loss(fake_logits)                                # the generator's adversarial term
    lam = adaptive_weight(grad_rec_last, grad_gan_last)      # ||g_rec|| / (||g_gan|| + 1e-4)

Logits are any shape (a PatchGAN's [B, h, w] grid): every loss is a mean over all entries.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

GAN_LOSSES = ("hinge", "non_saturating")


def disc_loss(real: jax.Array, fake: jax.Array, kind: str = "hinge") -> jax.Array:
  """The critic's loss on real / fake logits.

  hinge:          (mean relu(1 - real) + mean relu(1 + fake)) / 2     (the VQ-GAN's)
  non_saturating: (mean softplus(-real) + mean softplus(fake)) / 2    (binary cross-entropy)
  """
  if kind == "hinge":
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake)))
  if kind == "non_saturating":
    return 0.5 * (jnp.mean(jax.nn.softplus(-real)) + jnp.mean(jax.nn.softplus(fake)))
  raise ValueError(f"unknown GAN loss {kind!r}; use one of {GAN_LOSSES}.")


def gen_loss(fake: jax.Array, kind: str = "hinge") -> jax.Array:
  """The generator's adversarial loss on the critic's logits of its outputs.

  hinge: -mean(fake) (the VQ-GAN's); non_saturating: mean softplus(-fake) = -mean log sigmoid(fake).
  """
  if kind == "hinge":
    return -jnp.mean(fake)
  if kind == "non_saturating":
    return jnp.mean(jax.nn.softplus(-fake))
  raise ValueError(f"unknown GAN loss {kind!r}; use one of {GAN_LOSSES}.")


def adaptive_weight(grad_rec: jax.Array, grad_gan: jax.Array, *, eps: float = 1e-4,
                    max_weight: float = 1e4) -> jax.Array:
  """Esser et al.'s lambda = ||grad_rec|| / (||grad_gan|| + eps), clipped to [0, max_weight], with
  a stopped gradient. grad_rec / grad_gan: the gradients of the reconstruction (MSE + LPIPS) and the
  adversarial loss w.r.t. the decoder's last layer (any shape; Frobenius norms)."""
  g_rec = jnp.sqrt(jnp.sum(jnp.square(grad_rec.astype(jnp.float32))))
  g_gan = jnp.sqrt(jnp.sum(jnp.square(grad_gan.astype(jnp.float32))))
  return jax.lax.stop_gradient(jnp.clip(g_rec / (g_gan + eps), 0.0, max_weight))
