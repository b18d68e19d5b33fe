"""World Models' M objective: the MDN's log-likelihood of the next latent, reward and done terms,
and the two baselines its held-out NLL is compared with (a unimodal Gaussian RNN is the same
model with K = 1; "next z = this z" is `persistence_log_prob`)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from gdl_jax.models.world import MDNOut

LOG_2PI = math.log(2.0 * math.pi)


def mixture_log_prob(x: jax.Array, logit_pi: jax.Array, mu: jax.Array,
                     log_sigma: jax.Array) -> jax.Array:
  """log sum_k pi_k N(x; mu_k, sigma_k^2) per dimension: x [...], params [..., K] -> [...]."""
  x = x[..., None]
  log_n = -0.5 * (LOG_2PI + 2.0 * log_sigma + ((x - mu) * jnp.exp(-log_sigma)) ** 2)
  return jax.nn.logsumexp(jax.nn.log_softmax(logit_pi, -1) + log_n, axis=-1)


def persistence_log_prob(z_next: jax.Array, z: jax.Array, log_sigma: jax.Array) -> jax.Array:
  """The "next z = this z" baseline: log N(z_next; z, sigma^2) per dimension ([..., Z])."""
  return -0.5 * (LOG_2PI + 2.0 * log_sigma + ((z_next - z) * jnp.exp(-log_sigma)) ** 2)


def scan_sequence(model, params, z: jax.Array, a: jax.Array):
  """M over a batch of sequences: z [B, T, Z], a [B, T, A] -> MDNOut with [B, T, ...] fields
  (output t predicts z_{t+1}, r_t, d_t from z_0..t and a_0..t), and the final carry."""
  carry = model.initial_carry((z.shape[0],))

  def body(carry, za):
    return model.apply({"params": params}, carry, *za)

  carry, out = jax.lax.scan(body, carry, (jnp.swapaxes(z, 0, 1), jnp.swapaxes(a, 0, 1)))
  return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), out), carry


def mdn_terms(out: MDNOut, z_next: jax.Array, reward: jax.Array, done: jax.Array,
              mask: jax.Array | None = None) -> dict:
  """Per-step terms, averaged over [B, T] (and the mask): nll_z nats per latent dimension,
  reward MSE, done binary cross-entropy."""
  lp = mixture_log_prob(z_next, out.logit_pi, out.mu, out.log_sigma)            # [B, T, Z]
  nll = -jnp.mean(lp, -1)                                                        # [B, T]
  mse = (out.reward - reward) ** 2
  d = done.astype(jnp.float32)
  bce = -(d * jax.nn.log_sigmoid(out.done_logit) + (1 - d) * jax.nn.log_sigmoid(-out.done_logit))
  m = jnp.ones_like(nll) if mask is None else mask.astype(jnp.float32)
  denom = jnp.maximum(jnp.sum(m), 1.0)
  avg = lambda v: jnp.sum(v * m) / denom
  return {"nll_z": avg(nll), "reward_mse": avg(mse), "done_bce": avg(bce)}


def mdn_loss(model, params, batch: dict, key: jax.Array, *, reward_weight: float = 1.0,
             done_weight: float = 1.0) -> tuple[jax.Array, dict]:
  """M's training loss on latent sequences: batch "mu", "logvar" [B, T+1, Z] (V's posteriors),
  "action" [B, T+1, A], "reward", "done" [B, T+1]. z is drawn from the posterior (as the paper),
  inputs are steps 0..T-1, targets z_1..T with the reward and done that followed a_0..T-1."""
  eps = jax.random.normal(key, batch["mu"].shape, jnp.float32)
  z = batch["mu"] + jnp.exp(0.5 * batch["logvar"]) * eps                        # [B, T+1, Z]
  out, _ = scan_sequence(model, params, z[:, :-1], batch["action"][:, :-1])
  mask = batch.get("mask")                                                       # [B, T+1] valid steps
  t = mdn_terms(out, z[:, 1:], batch["reward"][:, :-1], batch["done"][:, :-1],
                None if mask is None else mask[:, 1:])
  loss = t["nll_z"] + reward_weight * t["reward_mse"] + done_weight * t["done_bce"]
  return loss, t
