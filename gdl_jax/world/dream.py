"""Rollouts inside M (the "dream"): the controller acts on [z, h], M samples the next z, reward
and done at a temperature tau (Ha & Schmidhuber: mixture logits / tau, sigma * sqrt(tau)).
One rollout is a lax.scan; populations and trials are vmaps of it, all jitted."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from gdl_jax.models.world import MDNOut, controller_action, env_action, hidden_of


def sample_next_z(key: jax.Array, out: MDNOut, temperature: float) -> jax.Array:
  """One draw of z_{t+1} [..., Z]: a component per dimension from softmax(logit / tau), then
  mu_k + sigma_k sqrt(tau) eps."""
  k_pi, k_eps = jax.random.split(key)
  tau = jnp.maximum(jnp.asarray(temperature, jnp.float32), 1e-6)
  comp = jax.random.categorical(k_pi, out.logit_pi / tau, axis=-1)              # [..., Z]
  pick = lambda x: jnp.take_along_axis(x, comp[..., None], -1)[..., 0]
  eps = jax.random.normal(k_eps, comp.shape, jnp.float32)
  return pick(out.mu) + jnp.exp(pick(out.log_sigma)) * jnp.sqrt(tau) * eps


def dream_step(model, m_params, ctrl, state, key, temperature: float):
  """One dream step: state (carry, z, alive) -> (state, (z, reward, alive)). Pure and jittable."""
  carry, z, alive = state
  a = env_action(controller_action(ctrl, z, hidden_of(carry)))
  carry, out = model.apply({"params": m_params}, carry, z, a)
  k_z, k_d = jax.random.split(key)
  z_next = sample_next_z(k_z, out, temperature)
  done = jax.random.bernoulli(k_d, jax.nn.sigmoid(out.done_logit))
  reward = out.reward * alive
  new_alive = alive * (1.0 - done.astype(jnp.float32))
  return (carry, z_next, new_alive), (z, reward, alive)


def dream_rollout(model, m_params, ctrl, z0, key, *, steps: int, temperature: float):
  """A rollout of `steps` from z0 [Z]: (return, zs [steps, Z], alive [steps])."""
  state = (model.initial_carry(()), z0, jnp.ones((), jnp.float32))
  body = lambda s, k: dream_step(model, m_params, ctrl, s, k, temperature)
  _, (zs, rewards, alive) = jax.lax.scan(body, state, jax.random.split(key, steps))
  return jnp.sum(rewards), zs, alive


@functools.partial(jax.jit, static_argnames=("model", "steps", "temperature"))
def population_returns(model, m_params, population, z0s, key, *, steps: int, temperature: float):
  """Mean dream return of each candidate [P, n] over the trials' start latents z0s [N, Z]
  (trial i shares its key across candidates: common random numbers): [P]."""
  keys = jax.random.split(key, z0s.shape[0])
  one = lambda c, z0, k: dream_rollout(model, m_params, c, z0, k, steps=steps,
                                       temperature=temperature)[0]
  per_trial = jax.vmap(jax.vmap(one, (None, 0, 0)), (0, None, None))(population, z0s, keys)
  return jnp.mean(per_trial, -1)
