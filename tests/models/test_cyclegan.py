"""CycleGAN's generators and the PatchGAN critic: shapes, ranges, size checks, per-image independence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdl_jax.models.cyclegan import ResnetGenerator, UnetGenerator, make_generator
from gdl_jax.models.patchgan import PatchDiscriminator


@pytest.mark.parametrize("kind, shape, n_down", [("resnet", (28, 28, 1), 2), ("unet", (28, 28, 1), 2),
                                                 ("resnet", (32, 32, 3), 2), ("unet", (32, 32, 3), 3),
                                                 ("resnet", (8, 8, 1), 1)])
def test_generators_keep_the_image_shape_and_range(kind, shape, n_down):
  gen = make_generator(kind, shape[-1], features=4, n_down=n_down, n_blocks=2)
  x = jax.random.uniform(jax.random.key(0), (3, *shape), minval=-1, maxval=1)
  params = gen.init(jax.random.key(1), x)
  y = gen.apply(params, x)
  assert y.shape == x.shape and y.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(y))) < 1.0                       # tanh output
  # instance norm: an image's translation does not depend on the rest of the batch
  np.testing.assert_allclose(gen.apply(params, x[:1]), y[:1], atol=1e-5)


def test_resnet_generator_layout():
  """c7s1-k, d2k, d4k, n_blocks residual blocks of 4k, u2k, uk, c7s1-C: the conv kernels' shapes."""
  gen = ResnetGenerator(channels=1, features=8, n_down=2, n_blocks=3)
  p = gen.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
  assert p["c7s1_in"]["kernel"].shape == (7, 7, 1, 8)
  assert p["down_0"]["kernel"].shape == (3, 3, 8, 16) and p["down_1"]["kernel"].shape == (3, 3, 16, 32)
  assert sorted(k for k in p if k.startswith("res_")) == ["res_0", "res_1", "res_2"]
  assert p["res_0"]["Conv_0"]["kernel"].shape == (3, 3, 32, 32)
  assert p["up_0"]["kernel"].shape == (3, 3, 32, 16) and p["up_1"]["kernel"].shape == (3, 3, 16, 8)
  assert p["c7s1_out"]["kernel"].shape == (7, 7, 8, 1)


@pytest.mark.parametrize("gen", [ResnetGenerator(1, n_down=3), UnetGenerator(1, depth=3)])
def test_generators_refuse_sizes_the_downsampling_does_not_divide(gen):
  with pytest.raises(ValueError, match=r"divisible by 2\^3 = 8; these are 28x28"):
    gen.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))


@pytest.mark.parametrize("hw, features, grid", [((28, 28), (8, 16), (7, 7)), ((32, 32), (8, 8, 8), (4, 4)),
                                                ((8, 8), (4, 8), (2, 2)), ((28, 20), (8,), (14, 10))])
def test_patchgan_logit_grid_size(hw, features, grid):
  """SAME padding: ceil(H / 2^n) x ceil(W / 2^n) logits for n stride-2 layers."""
  disc = PatchDiscriminator(features)
  x = jnp.zeros((2, *hw, 1))
  out = disc.apply(disc.init(jax.random.key(0), x), x)
  assert out.shape == (2, *grid)
  assert grid == tuple(int(np.ceil(s / 2 ** len(features))) for s in hw)
