"""R1 against independent autodiff (per-example and full Jacobians), and the GAN step's lazy
regularisation schedule: the penalty enters exactly every reg_every-th critic update, times reg_every."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gdl_jax.models.gan import Discriminator, MLPDiscriminator, MLPGenerator
from gdl_jax.models.stylegan import StyleGAN2Discriminator
from gdl_jax.objectives import gan as G
from gdl_jax.objectives.gan_step import init_gan_state, make_gan_step


def test_r1_matches_per_example_gradients_for_an_independent_critic():
  disc = StyleGAN2Discriminator((4, 4), mbstd_group=1)                              # no batch coupling
  x = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))
  p = disc.init(jax.random.key(1), x)["params"]
  f = lambda v: disc.apply({"params": p}, v)
  one = lambda xi: f(xi[None])[0]
  per_example = jax.vmap(jax.grad(one))(x)                                           # [B, 8, 8, 1]
  expected = np.mean(np.sum(np.asarray(per_example, np.float64) ** 2, axis=(1, 2, 3)))
  r1, norms = G.r1_penalty(f, x)
  np.testing.assert_allclose(r1, expected, rtol=1e-5)
  np.testing.assert_allclose(norms ** 2, np.sum(np.asarray(per_example) ** 2, axis=(1, 2, 3)), rtol=1e-5)


def test_r1_with_minibatch_stddev_is_the_gradient_of_the_summed_logits():
  disc = StyleGAN2Discriminator((4, 4), mbstd_group=2)                              # examples interact
  x = jax.random.normal(jax.random.key(2), (4, 8, 8, 1))
  p = disc.init(jax.random.key(3), x)["params"]
  f = lambda v: disc.apply({"params": p}, v)
  jac = jax.jacrev(f)(x)                                                             # [B_out, B, 8, 8, 1]
  g = np.asarray(jac, np.float64).sum(axis=0)                                        # d sum_j f_j / d x_i
  r1, _ = G.r1_penalty(f, x)
  np.testing.assert_allclose(r1, np.mean(np.sum(g ** 2, axis=(1, 2, 3))), rtol=1e-5)


def _players():
  return MLPGenerator(2, (8,)), MLPDiscriminator((8,))


def _state_and_batch(gen, disc, opt):
  x = jax.random.normal(jax.random.key(0), (16, 2))
  state = init_gan_state(gen, disc, opt, opt, jax.random.key(1), x, latent_dim=4, ema=False)
  return state, {"x": x}


@pytest.mark.parametrize("reg_every", [1, 3])
def test_lazy_r1_applies_exactly_every_k_updates_scaled_by_k(reg_every):
  gen, disc = _players()
  lr, gamma = 0.1, 2.0
  opt = optax.sgd(lr)
  state0, batch = _state_and_batch(gen, disc, opt)
  kw = dict(latent_dim=4, levels=None, x_key="x", reg_every=reg_every, jit=False)
  with_r1 = jax.jit(make_gan_step(gen, disc, opt, opt, r1_weight=gamma, **kw))
  without = jax.jit(make_gan_step(gen, disc, opt, opt, r1_weight=0.0, **kw))
  dparams = state0.params["disc"]
  f = lambda p, v: disc.apply({"params": p}, v, train=True)
  grad_r1 = jax.grad(lambda p: G.r1_penalty(lambda v: f(p, v), batch["x"])[0])(dparams)   # independent
  for s in range(7):
    st = state0.replace(step=jnp.asarray(s, jnp.int32))
    a, ma = with_r1(st, batch, jax.random.key(5))
    b, _ = without(st, batch, jax.random.key(5))
    diff = jax.tree.map(lambda u, v: u - v, a.params["disc"], b.params["disc"])
    applied = s % reg_every == 0
    expected = jax.tree.map(lambda g: -lr * (reg_every if applied else 0.0) * 0.5 * gamma * g, grad_r1)
    for d, e in zip(jax.tree.leaves(diff), jax.tree.leaves(expected)):
      np.testing.assert_allclose(d, e, rtol=2e-3, atol=1e-6)
    moved = max(float(jnp.abs(d).max()) for d in jax.tree.leaves(diff))
    assert (moved > 1e-4) == applied, (s, moved)
    if reg_every > 1:
      assert float(ma["reg_applied"]) == float(applied)
      assert (float(ma["r1"]) > 0) == applied


def test_lazy_schedule_counts_critic_updates_across_n_critic():
  gen, disc = _players()
  opt = optax.sgd(0.01)
  state0, batch = _state_and_batch(gen, disc, opt)
  step = jax.jit(make_gan_step(gen, disc, opt, opt, latent_dim=4, levels=None, x_key="x", n_critic=2,
                               r1_weight=1.0, reg_every=4, jit=False))                # no donation
  for s in range(4):
    _, m = step(state0.replace(step=jnp.asarray(s, jnp.int32)), batch, jax.random.key(0))
    # critic updates 2s and 2s + 1: one of every 4 global updates is regularised
    assert float(m["reg_applied"]) == (0.5 if s % 2 == 0 else 0.0), s


def test_r1_and_lazy_bad_input():
  gen, disc = _players()
  opt = optax.sgd(0.01)
  with pytest.raises(ValueError, match="reg_every must be >= 1"):
    make_gan_step(gen, disc, opt, opt, latent_dim=4, r1_weight=1.0, reg_every=0)
  with pytest.raises(ValueError, match="r1_weight and drift_weight must be >= 0"):
    make_gan_step(gen, disc, opt, opt, latent_dim=4, r1_weight=-1.0)
  with pytest.raises(ValueError, match="independently"):
    make_gan_step(gen, Discriminator((8,), norm="batch"), opt, opt, latent_dim=4, r1_weight=1.0)


@pytest.mark.parametrize("n_critic", [1, 2])
def test_host_dispatched_lazy_step_equals_the_traced_schedule(n_critic):
  """The jitted step picks its program (with / without the penalty) on the host from state.step;
  the jit=False step (one program, lax.cond) is the same function: equal states and metrics."""
  gen, disc = _players()
  opt = optax.adam(0.01)
  state0, batch = _state_and_batch(gen, disc, opt)
  kw = dict(latent_dim=4, levels=None, x_key="x", n_critic=n_critic, r1_weight=1.0, reg_every=3)
  host = make_gan_step(gen, disc, opt, opt, **kw)
  traced = jax.jit(make_gan_step(gen, disc, opt, opt, jit=False, **kw))
  with pytest.raises(ValueError, match="lazy_dispatch"):
    make_gan_step(gen, disc, opt, opt, lazy_dispatch="switch", **kw)
  a = b = state0
  for s in range(6):
    b, mb = traced(b, batch, jax.random.key(s))
    a, ma = host(jax.tree.map(jnp.copy, a), batch, jax.random.key(s))        # host donates its input
    assert sorted(ma) == sorted(mb)
    for k in ma:
      np.testing.assert_allclose(ma[k], mb[k], rtol=1e-5, atol=1e-7, err_msg=f"{k} at step {s}")
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-7), a.params, b.params)
