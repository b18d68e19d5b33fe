"""Chapter 3 modules: shapes on 8x8x1 / 28x28x1 / 32x32x3, reparameterisation, errors, overfitting."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gdl_jax.models.vae import VAE, AutoEncoder, Decoder, Encoder, binarize
from gdl_jax.objectives import vae as O


def _digits(n=8, seed=0):
  """n sklearn digits [n, 8, 8, 1], levels 0..16: the first n for seed 0, else n drawn by the seed."""
  from sklearn.datasets import load_digits
  images = load_digits().images.astype(np.int32)[..., None]
  idx = np.arange(n) if seed == 0 else np.random.default_rng(seed).choice(len(images), n, replace=False)
  return jnp.asarray(images[idx])


def _rbg(seed):
  # rbg keys for init only: threefry-initialised params take ~20 s to compile on a loaded CPU.
  return jax.random.key(seed, impl="rbg")


@pytest.mark.parametrize("shape,levels,likelihood,k", [
    ((8, 8, 1), 17, "logistic", 1), ((28, 28, 1), 256, "logistic", 3),
    ((32, 32, 3), 256, "gaussian", 1), ((25, 25, 1), 256, "bernoulli", 1)])
def test_vae_shapes(shape, levels, likelihood, k):
  model = VAE(shape, levels, latent_dim=3, features=(4, 8), hidden=8, likelihood=likelihood, num_mixtures=k)
  image = jnp.zeros((2,) + shape, jnp.int32)

  @jax.jit
  def run(key):
    params = model.init(_rbg(0), image, key)["params"]
    out = model.apply({"params": params}, image, key)
    gen = model.apply({"params": params}, key, 5, method=model.sample)
    return out, gen

  out, gen = run(jax.random.key(1))
  assert out.posterior.mean.shape == out.posterior.logvar.shape == out.z.shape == (2, 3)
  assert out.pixels.loc.shape == (2,) + shape + (k,)
  assert gen.z.shape == (5, 3) and gen.pixels.loc.shape == (5,) + shape + (k,)
  assert (out.pixels.log_scale is None) == (likelihood == "bernoulli")
  assert (out.pixels.logit_probs is None) == (k == 1)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(out))


def test_autoencoder_shapes_and_bfloat16():
  model = AutoEncoder((8, 8, 1), 17, latent_dim=2, features=(4, 8), hidden=8, dtype=jnp.bfloat16)
  image = _digits(2)

  @jax.jit
  def run():
    params = model.init(_rbg(0), image)["params"]
    return params, model.apply({"params": params}, image)

  params, out = run()
  assert out.z.shape == (2, 2) and out.pixels.loc.shape == (2, 8, 8, 1, 1)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))       # param_dtype stays f32
  assert out.pixels.loc.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out.pixels.loc)))


def test_reparameterisation_uses_the_key_and_carries_gradients_to_the_encoder():
  model = VAE((8, 8, 1), 17, latent_dim=2, features=(4, 8), hidden=8)
  image = _digits(3)
  params = jax.jit(model.init)(_rbg(0), image, jax.random.key(0))["params"]
  key = jax.random.key(9)

  @jax.jit
  def run(params):
    out = model.apply({"params": params}, image, key)
    q = model.apply({"params": params}, image, method=model.encode)
    eps = jax.random.normal(key, q.mean.shape)
    return out.z, q.mean + jnp.exp(0.5 * q.logvar) * eps

  z, want = run(params)
  np.testing.assert_allclose(z, want, rtol=1e-6)
  g = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, image, key).z)))(params)
  assert float(optax.global_norm(g["encoder"]["logvar"])) > 0  # the noise path is differentiable


def test_encoder_and_decoder_modules_standalone():
  enc, dec = Encoder(4, (4, 8), 8, variational=False), Decoder((28, 28, 1), (8, 4), 8, "bernoulli")
  x = jnp.zeros((2, 28, 28, 1))

  @jax.jit
  def run():
    q = enc.apply(enc.init(_rbg(0), x), x)
    px = dec.apply(dec.init(_rbg(1), q.mean), q.mean)
    return q, px

  q, px = run()
  assert q.logvar is None and q.mean.shape == (2, 4)
  assert px.loc.shape == (2, 28, 28, 1, 1) and px.log_scale is None


def test_boundary_errors_name_the_fix():
  with pytest.raises(ValueError, match="likelihood"):
    VAE((8, 8, 1), 17, likelihood="poisson").init(_rbg(0), jnp.zeros((1, 8, 8, 1), jnp.int32), _rbg(1))
  with pytest.raises(ValueError, match="num_mixtures"):
    VAE((8, 8, 1), 17, likelihood="gaussian", num_mixtures=3).init(
        _rbg(0), jnp.zeros((1, 8, 8, 1), jnp.int32), _rbg(1))
  with pytest.raises(ValueError, match="image_shape"):
    VAE((8, 8, 1), 17, features=(4,), hidden=4).init(_rbg(0), jnp.zeros((1, 9, 8, 1), jnp.int32), _rbg(1))


def test_binarize_threshold():
  np.testing.assert_array_equal(binarize(jnp.arange(17), 17), (np.arange(17) > 8).astype(np.int32))
  np.testing.assert_array_equal(binarize(jnp.array([0, 127, 128, 255]), 256), [0, 0, 1, 1])


def _overfit(model, loss_fn, params, key, steps=200, lr=3e-3):
  opt = optax.adam(lr)

  @jax.jit
  def train(params):
    def body(carry, i):
      params, opt_state = carry
      loss, g = jax.value_and_grad(loss_fn)(params, jax.random.fold_in(key, i))
      updates, opt_state = opt.update(g, opt_state)
      return (optax.apply_updates(params, updates), opt_state), loss
    _, losses = jax.lax.scan(body, (params, opt.init(params)), jnp.arange(steps))
    return losses

  return np.asarray(train(params))


def _falls(losses, ratio, record_property):
  """The mean of the last 10 losses is below `ratio` x the mean of the first 5 (nats/dim). Seeds
  0-2 reach 0.39-0.43 (VAE) and 0.36-0.55 (AE, 2-d latent): "halves" was too thin for both."""
  assert np.all(np.isfinite(losses))
  head, tail = float(losses[:5].mean()), float(losses[-10:].mean())
  record_property("loss_mean_last10", f"{tail:.4g} < {ratio} * {head:.4g} = {ratio * head:.4g}")
  assert tail < ratio * head, (losses[:5], losses[-10:])


def test_vae_overfits_one_batch(test_seed, record_property):
  model = VAE((8, 8, 1), 17, latent_dim=4, features=(8, 16), hidden=32)
  image = _digits(8, test_seed)
  params = jax.jit(model.init)(_rbg(test_seed), image, jax.random.key(0))["params"]
  losses = _overfit(model, lambda p, k: O.vae_loss(model, p, image, k)[0], params,
                    jax.random.key(test_seed))
  # nats/dim: starts near 2.2, reaches ~0.9 (VAE) / ~0.8-1.2 (AE) after 200 steps
  _falls(losses, 0.6, record_property)


def test_autoencoder_overfits_one_batch(test_seed, record_property):
  model = AutoEncoder((8, 8, 1), 17, latent_dim=2, features=(8, 16), hidden=32)
  image = _digits(8, test_seed)
  params = jax.jit(model.init)(_rbg(test_seed), image)["params"]
  losses = _overfit(model, lambda p, k: O.autoencoder_loss(model, p, image, k)[0], params,
                    jax.random.key(test_seed))
  _falls(losses, 0.7, record_property)


@pytest.mark.slow
def test_vae_digits_quality_by_the_harness(digits, tmp_path):
  """The default digits VAE (the README's main job): IWAE bits/dim below the mixture-of-categoricals
  baseline, Fréchet distance below the independent-pixel baseline's, novelty ratio >= 0.8."""
  from gdl_jax.evaluation import harness
  from gdl_jax.evaluation.classifier import feature_fn
  from tests.helpers import train_in_subprocess
  m = train_in_subprocess(["vae", "--dataset", "digits"], tmp_path / "run")
  base = harness.baseline_table(digits, feature_fn(digits, progress=False), key=jax.random.key(0),
                                num_samples=m["num_samples"], which=("independent", "mixture"),
                                mixture_ks=(10,))
  mixture = next(v for k, v in base.items() if k.startswith("mixture of categoricals"))
  assert m["bits_per_dim"] < mixture["bits_per_dim"], (m, base)
  assert m["frechet_distance"] < base["independent categorical"]["frechet_distance"], (m, base)
  assert m["novelty_ratio"] >= 0.8 and m["copy_share"] < 0.01, m
