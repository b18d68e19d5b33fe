"""GAN sampling: standing BatchNorm statistics reproduce batch statistics; labels; shapes."""

import jax
import jax.numpy as jnp
import numpy as np

from gdl_jax.models.gan import Generator
from gdl_jax.samplers import gan as S


def test_standing_stats_equal_the_batch_statistics():
  gen = Generator((8, 8, 1), (8, 4))
  v = gen.init(jax.random.key(0), jnp.zeros((2, 5)), train=False)
  key, n = jax.random.key(1), 64
  stats = S.standing_batch_stats(gen, v["params"], v["batch_stats"], key, n, latent_dim=5)
  z = jax.random.normal(key, (n, 5))                       # the latents standing_batch_stats drew
  train_out, _ = gen.apply(v, z, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(S.decode(gen, v["params"], stats, z), train_out, atol=2e-5)
  # ...and differ from the (initial, untrained) running averages.
  assert float(jnp.abs(S.decode(gen, v["params"], v["batch_stats"], z) - train_out).max()) > 1e-3


def test_sample_labels_round_robin_and_shapes():
  np.testing.assert_array_equal(S.round_robin_labels(7, 3), [0, 1, 2, 0, 1, 2, 0])
  gen = Generator((8, 8, 1), (8, 4), num_classes=3)
  v = gen.init(jax.random.key(0), jnp.zeros((2, 5)), jnp.zeros((2,), jnp.int32), train=False)
  x = S.sample(gen, v["params"], v["batch_stats"], jax.random.key(1), 6, latent_dim=5, standing_stats=32)
  z = jax.random.normal(jax.random.split(jax.random.key(1))[0], (6, 5))
  stats = S.standing_batch_stats(gen, v["params"], v["batch_stats"],
                                 jax.random.split(jax.random.key(1))[1], 32, latent_dim=5)
  np.testing.assert_allclose(x, S.decode(gen, v["params"], stats, z, S.round_robin_labels(6, 3)),
                             atol=1e-6)
  assert x.shape == (6, 8, 8, 1)


def test_truncation_scales_the_sampling_latents(digits):
  """model.truncation=0 collapses every sample onto G(0); 1 keeps them distinct (training unchanged)."""
  from experiments import dcgan_digits
  c = dcgan_digits.get_config("tiny", dataset="digits")
  batch = {"image": digits.train["image"][:8], "label": digits.train["label"][:8]}
  for trunc, all_same in ((0.0, True), (1.0, False)):
    c.model.truncation = trunc
    task = dcgan_digits.build(c, digits.info)
    x = np.asarray(task.sample(task.init(jax.random.key(0), batch), jax.random.key(1), 6))
    assert bool(np.all(x == x[:1])) == all_same
