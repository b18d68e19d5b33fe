"""StyleGAN2: modulated convolution against plain convolutions, demodulation's unit norms, equalised lr,
truncation, style mixing, minibatch stddev, bad input, and a small learning check on real digits."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gdl_jax.models.stylegan import (StyleGAN2Discriminator, StyleGAN2Generator, mix_styles,
                                     pixel_norm, truncate)
from gdl_jax.nn.style import (EqualConv, EqualDense, demodulation, downsample2x, minibatch_stddev,
                              modulated_conv, upsample2x)


def _plain_conv(x, kernel):
  """An independent 'SAME' conv through lax.conv (NCHW / OIHW layouts)."""
  y = jax.lax.conv(jnp.transpose(x, (0, 3, 1, 2)), jnp.transpose(kernel, (3, 2, 0, 1)), (1, 1), "SAME")
  return jnp.transpose(y, (0, 2, 3, 1))


def _inputs(b=3, h=6, cin=4, cout=5, k=3, seed=0):
  kx, kw, ks = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(kx, (b, h, h, cin))
  kernel = jax.random.normal(kw, (k, k, cin, cout))
  styles = 1.0 + 0.5 * jax.random.normal(ks, (b, cin))
  return x, kernel, styles


@pytest.mark.parametrize("fused", [False, True])
def test_modulation_without_demodulation_is_a_conv_with_input_channels_scaled(fused):
  x, kernel, styles = _inputs()
  y = modulated_conv(x, kernel, styles, demodulate=False, fused=fused)
  for b in range(x.shape[0]):
    expected = _plain_conv(x[b:b + 1], kernel * styles[b][None, None, :, None])
    np.testing.assert_allclose(y[b:b + 1], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fused", [False, True])
def test_grouped_and_batched_forms_equal_a_per_example_loop(fused):
  x, kernel, styles = _inputs(b=4, seed=1)
  y = modulated_conv(x, kernel, styles, demodulate=True, fused=fused)
  for b in range(x.shape[0]):
    wb = np.asarray(kernel, np.float64) * np.asarray(styles[b], np.float64)[None, None, :, None]
    wb = wb / np.sqrt(np.sum(wb ** 2, axis=(0, 1, 2), keepdims=True) + 1e-8)          # demodulated
    np.testing.assert_allclose(y[b:b + 1], _plain_conv(x[b:b + 1], jnp.asarray(wb, jnp.float32)),
                               rtol=1e-4, atol=1e-4)


def test_demodulated_weights_have_unit_norm_and_outputs_unit_scale():
  x, kernel, styles = _inputs(b=2, h=64, cin=16, cout=8, seed=2)
  d = demodulation(kernel, styles)                                                   # [B, Cout]
  w = kernel[None] * styles[:, None, None, :, None] * d[:, None, None, None, :]      # [B, k, k, Cin, Cout]
  np.testing.assert_allclose(jnp.sum(w ** 2, axis=(1, 2, 3)), 1.0, rtol=1e-5)
  # Unit-variance i.i.d. inputs -> each output feature map has unit variance (interior pixels).
  y = modulated_conv(x, kernel, styles * 7.0)                                        # style scale cancels
  var = jnp.var(y[:, 1:-1, 1:-1], axis=(1, 2))                                       # [B, Cout]
  assert float(jnp.max(jnp.abs(var - 1.0))) < 0.12, var


def test_equalised_dense_scaling_and_lr_multiplier():
  fan_in, lr_mult = 64, 0.01
  layer = EqualDense(32, lr_mult=lr_mult, bias_init=0.5)
  x = jax.random.normal(jax.random.key(0), (5, fan_in))
  p = layer.init(jax.random.key(1), x)["params"]
  assert abs(float(jnp.std(p["kernel"])) * lr_mult - 1.0) < 0.05                   # stored ~ N(0, 1/lr_mult^2)
  np.testing.assert_allclose(p["bias"] * lr_mult, 0.5, rtol=1e-6)                  # effective bias = bias_init
  y = layer.apply({"params": p}, x)
  np.testing.assert_allclose(y, x @ (p["kernel"] * lr_mult / math.sqrt(fan_in)) + p["bias"] * lr_mult,
                             rtol=1e-5, atol=1e-5)
  # Adam's first step moves each stored weight by lr, so the effective weight by lr * lr_mult / sqrt(fan_in).
  opt = optax.adam(1e-2)
  g = jax.grad(lambda q: jnp.sum(layer.apply({"params": q}, x) ** 2))(p)
  upd, _ = opt.update(g, opt.init(p), p)
  change = upd["kernel"] * lr_mult / math.sqrt(fan_in)
  np.testing.assert_allclose(jnp.abs(change)[jnp.abs(g["kernel"]) > 1e-3], 1e-2 * lr_mult / 8.0, rtol=1e-3)


def test_equalised_conv_is_a_conv_with_he_scaled_kernel():
  x = jax.random.normal(jax.random.key(0), (2, 5, 5, 3))
  layer = EqualConv(4, 3)
  p = layer.init(jax.random.key(1), x)["params"]
  np.testing.assert_allclose(layer.apply({"params": p}, x), _plain_conv(x, p["kernel"] / math.sqrt(27.0)) + p["bias"],
                             rtol=1e-5, atol=1e-5)


def test_resampling_and_pixel_norm():
  x = jax.random.normal(jax.random.key(0), (2, 4, 6, 3))
  np.testing.assert_allclose(upsample2x(x), jax.image.resize(x, (2, 8, 12, 3), "bilinear"), atol=1e-5)
  np.testing.assert_allclose(downsample2x(x)[:, 1, 2], x[:, 2:4, 4:6].mean(axis=(1, 2)), rtol=1e-6)
  z = pixel_norm(3.0 * jax.random.normal(jax.random.key(1), (4, 16)))
  np.testing.assert_allclose(jnp.mean(z ** 2, axis=-1), 1.0, rtol=1e-5)


def test_minibatch_stddev_matches_numpy_groups():
  x = np.asarray(jax.random.normal(jax.random.key(0), (8, 4, 4, 6)))
  y = np.asarray(minibatch_stddev(jnp.asarray(x), group_size=4, num_channels=2))
  assert y.shape == (8, 4, 4, 8)
  for n in range(8):
    members = [m for m in range(8) if m % 2 == n % 2]                                # groups: n mod B/G
    for f in range(2):
      sl = x[members][..., 3 * f:3 * f + 3]
      expected = np.sqrt(sl.var(axis=0) + 1e-8).mean()
      np.testing.assert_allclose(y[n, :, :, 6 + f], expected, rtol=1e-5)


def _generator(**kw):
  kw = {"latent_dim": 8, "w_dim": 8, "mapping_layers": 2, "channels": (8, 8), **kw}
  return StyleGAN2Generator((8, 8, 1), **kw)


def test_truncation_psi_zero_gives_one_image_and_psi_one_changes_nothing():
  gen = _generator()
  z = jax.random.normal(jax.random.key(0), (6, 8))
  params = gen.init(jax.random.key(1), z)["params"]
  params = jax.tree.map(lambda p: p + 0.1, params)                                   # noise strengths != 0
  w_avg = gen.apply({"params": params}, jax.random.normal(jax.random.key(2), (256, 8)), method=gen.map_z).mean(0)
  plain = gen.apply({"params": params}, z, noise_mode="const")
  zero = gen.apply({"params": params}, z, psi=0.0, w_avg=w_avg, noise_mode="const")
  one = gen.apply({"params": params}, z, psi=1.0, w_avg=w_avg, noise_mode="const")
  assert float(jnp.std(plain, axis=0).max()) > 1e-3                                  # z matters untruncated
  np.testing.assert_allclose(zero, jnp.broadcast_to(zero[:1], zero.shape), atol=1e-6)
  np.testing.assert_allclose(one, plain, rtol=1e-6, atol=1e-6)
  half = truncate(jnp.ones((2, 3)), jnp.zeros(3), 0.5)
  np.testing.assert_allclose(half, 0.5)
  with pytest.raises(ValueError, match="needs w_avg"):
    gen.apply({"params": params}, z, psi=0.5)


def test_style_mixing_at_layer_zero_or_all_is_the_single_w_generator():
  gen = _generator()
  z1, z2 = jax.random.normal(jax.random.key(0), (2, 4, 8))
  params = gen.init(jax.random.key(1), z1)["params"]
  w1, w2 = (gen.apply({"params": params}, z, method=gen.map_z) for z in (z1, z2))
  L = gen.num_ws
  synth = lambda ws: gen.apply({"params": params}, ws, "const", method=gen.synthesize)
  np.testing.assert_allclose(synth(mix_styles(w1, w2, L, L)), gen.apply({"params": params}, z1, noise_mode="const"),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(synth(mix_styles(w1, w2, 0, L)), gen.apply({"params": params}, z2, noise_mode="const"),
                             rtol=1e-6, atol=1e-6)
  mixed = mix_styles(w1, w2, jnp.array([0, 1, 2, L]), L)
  assert bool(jnp.all(mixed[1, :1] == w1[1])) and bool(jnp.all(mixed[1, 1:] == w2[1]))
  # Training with mixing_prob=0 is the single-w generator; with 1, every example mixes.
  rngs = {"mixing": jax.random.key(3)}
  np.testing.assert_allclose(_generator(mixing_prob=0.0).apply({"params": params}, z1, train=True, rngs=rngs,
                                                               noise_mode="const"),
                             gen.apply({"params": params}, z1, noise_mode="const"), rtol=1e-6, atol=1e-6)
  always = _generator(mixing_prob=1.0).apply({"params": params}, z1, train=True, rngs=rngs, noise_mode="const")
  assert float(jnp.abs(always - gen.apply({"params": params}, z1, noise_mode="const")).max()) > 1e-4
  with pytest.raises(ValueError, match="'mixing' rng"):
    gen.apply({"params": params}, z1, train=True)


def test_noise_modes():
  gen = _generator()
  z = jax.random.normal(jax.random.key(0), (2, 8))
  params = jax.tree.map(lambda p: p + 0.5, gen.init(jax.random.key(1), z)["params"])
  a = gen.apply({"params": params}, z, rngs={"noise": jax.random.key(5)})
  b = gen.apply({"params": params}, z, rngs={"noise": jax.random.key(6)})
  assert float(jnp.abs(a - b).max()) > 1e-4                                          # random by default
  c1, c2 = (gen.apply({"params": params}, z, noise_mode="const") for _ in range(2))
  np.testing.assert_array_equal(c1, c2)
  with pytest.raises(ValueError, match="noise_mode"):
    gen.apply({"params": params}, z, noise_mode="sometimes")


def test_shapes_and_bad_input():
  gen, disc = _generator(), StyleGAN2Discriminator((8, 8))
  z = jnp.zeros((3, 8))
  params = gen.init(jax.random.key(0), z)["params"]
  img = gen.apply({"params": params}, z)
  assert img.shape == (3, 8, 8, 1) and gen.num_ws == 4
  dp = disc.init(jax.random.key(1), img)["params"]
  assert disc.apply({"params": dp}, img).shape == (3,)
  with pytest.raises(ValueError, match="z must be"):
    gen.apply({"params": params}, jnp.zeros((3, 5)))
  with pytest.raises(ValueError, match="one channel entry per"):
    StyleGAN2Generator((28, 28, 1), channels=(8, 8, 8)).init(jax.random.key(0), jnp.zeros((1, 64)))
  with pytest.raises(ValueError, match=r"reads \[B, 8, 8, C\]"):
    disc.apply({"params": dp}, jnp.zeros((3, 16, 16, 1)))
  with pytest.raises(ValueError, match="do not fit"):
    modulated_conv(jnp.zeros((2, 4, 4, 3)), jnp.zeros((3, 3, 4, 5)), jnp.ones((2, 3)))
