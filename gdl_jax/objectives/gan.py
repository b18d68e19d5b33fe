"""Chapter 4 GAN objectives as pure functions: non-saturating, Wasserstein, gradient penalty, clipping.

Discriminator outputs are raw logits (non-saturating GAN) or unbounded critic scores (WGAN), one
per example [B]. All losses are means over the batch.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax


def nonsaturating_disc_loss(real_logits: jax.Array, fake_logits: jax.Array, *,
                            label_noise: float = 0.0, key: jax.Array | None = None) -> jax.Array:
  """Binary cross-entropy of D: real -> 1, fake -> 0 (logits, numerically stable).

  label_noise > 0 draws noisy targets, real 1 - label_noise * u and fake label_noise * u with
  u ~ U[0, 1) per example: the book's label noise kept inside [0, 1] (the book's Keras code
  pushes targets outside [0, 1], which makes cross-entropy unbounded below).
  """
  real_t = jnp.ones_like(real_logits)
  fake_t = jnp.zeros_like(fake_logits)
  if label_noise:
    if key is None:
      raise ValueError("label_noise > 0 needs a key.")
    k_real, k_fake = jax.random.split(key)
    real_t = real_t - label_noise * jax.random.uniform(k_real, real_logits.shape)
    fake_t = fake_t + label_noise * jax.random.uniform(k_fake, fake_logits.shape)
  return (optax.sigmoid_binary_cross_entropy(real_logits, real_t).mean()
          + optax.sigmoid_binary_cross_entropy(fake_logits, fake_t).mean())


def nonsaturating_gen_loss(fake_logits: jax.Array) -> jax.Array:
  """G maximises log D(G(z)) (Goodfellow's non-saturating form): mean softplus(-logit)."""
  return jax.nn.softplus(-fake_logits).mean()


def wasserstein_critic_loss(real_scores: jax.Array, fake_scores: jax.Array) -> jax.Array:
  """The critic maximises E[f(x)] - E[f(G(z))]; this is the negative, to minimise."""
  return fake_scores.mean() - real_scores.mean()


def wasserstein_gen_loss(fake_scores: jax.Array) -> jax.Array:
  """The generator maximises E[f(G(z))]."""
  return -fake_scores.mean()


def drift_penalty(real_scores: jax.Array) -> jax.Array:
  """ProGAN's drift term mean(D(x_real)^2) (Karras et al. 2018, weight epsilon_drift = 1e-3): keeps
  the Wasserstein critic's scores from drifting far from 0."""
  return jnp.mean(jnp.square(real_scores))


def auxiliary_class_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """AC-GAN's class term: mean cross-entropy of class logits [B, K] against integer labels [B]."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def random_interpolates(real: jax.Array, fake: jax.Array, key: jax.Array) -> jax.Array:
  """x_hat = e * real + (1 - e) * fake, e ~ U[0, 1] per example (Gulrajani et al. 2017)."""
  if real.shape != fake.shape:
    raise ValueError(f"real {real.shape} and fake {fake.shape} must have the same shape.")
  eps = jax.random.uniform(key, (real.shape[0],) + (1,) * (real.ndim - 1), real.dtype)  # [B, 1, ..]
  return eps * real + (1.0 - eps) * fake


def critic_input_grad_norms(critic_fn: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
  """Per-example ||d f(x_i) / d x_i||_2 [B] for a critic f: [B, ...] -> [B].

  Computed as the gradient of sum_i f(x_i), which equals the per-example gradients exactly when
  the critic treats examples independently (no BatchNorm); `make_gan_step` refuses BatchNorm here.
  """
  grads = jax.grad(lambda v: critic_fn(v).sum())(x)                                  # [B, ...]
  sq = jnp.sum(jnp.square(grads).reshape(grads.shape[0], -1), axis=-1)               # [B]
  return jnp.sqrt(sq + 1e-12)  # the epsilon keeps the penalty's own gradient finite at 0


def gradient_penalty(critic_fn: Callable[[jax.Array], jax.Array], x: jax.Array,
                     target: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """WGAN-GP's two-sided penalty mean_i (||grad f(x_i)|| - target)^2 at points x; also the norms."""
  norms = critic_input_grad_norms(critic_fn, x)                                      # [B]
  return jnp.mean(jnp.square(norms - target)), norms


def r1_penalty(critic_fn: Callable[[jax.Array], jax.Array], x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """R1 (Mescheder et al. 2018): mean_i ||grad_{x_i} sum_j f(x_j)||^2 at real images x; also the
  per-example norms [B]. For a critic that mixes examples (minibatch stddev) this is the gradient
  of the summed logits, as in StyleGAN2's code; the loss term is gamma / 2 times this."""
  grads = jax.grad(lambda v: critic_fn(v).sum())(x)                                  # [B, ...]
  sq = jnp.sum(jnp.square(grads).reshape(grads.shape[0], -1), axis=-1)               # [B]
  return jnp.mean(sq), jnp.sqrt(sq)


def clip_params(params, clip_value: float):
  """WGAN weight clipping: project every parameter leaf into [-clip_value, clip_value].

  This is the form `make_gan_step` uses: it is applied to the critic's params right after each
  optax update, so the stored params are inside the box exactly (not up to rounding).
  """
  if clip_value <= 0:
    raise ValueError(f"clip_value must be > 0 (WGAN uses 0.01); got {clip_value}.")
  return jax.tree.map(lambda p: jnp.clip(p, -clip_value, clip_value), params)


def weight_clipping(clip_value: float) -> optax.GradientTransformation:
  """The same constraint as an optax transformation, for chaining last onto a critic optimizer.

  It returns updates u' = clip(p + u) - p, so `optax.apply_updates(p, u')` lands inside
  [-clip_value, clip_value] (up to one float rounding of p + u'). Needs `params` in `update`.
  """
  if clip_value <= 0:
    raise ValueError(f"clip_value must be > 0 (WGAN uses 0.01); got {clip_value}.")

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("weight_clipping needs params: call optimizer.update(grads, state, params).")
    new = jax.tree.map(lambda p, u: jnp.clip(p + u, -clip_value, clip_value) - p, params, updates)
    return new, state

  return optax.GradientTransformation(init_fn, update_fn)
