"""CycleGAN's generators (Zhu et al. 2017), image -> image in [-1, 1], pure Linen.

    g = ResnetGenerator(channels=1, features=32, n_down=2, n_blocks=6)
    y = g.apply({"params": p}, x)                  # x [B, H, W, C] in [-1, 1] -> [B, H, W, channels]

ResnetGenerator (Johnson et al.'s, the CycleGAN paper's): c7s1-k (7x7 conv, reflection padding),
n_down 3x3 stride-2 convs doubling the features (d2k, d4k), n_blocks residual blocks
(reflection-padded 3x3 convs), n_down 3x3 stride-2 transposed convs back (u2k, uk), c7s1-channels
with tanh. H and W must be divisible by 2^n_down (Fashion-MNIST's 28 with n_down=2: 28 -> 14 -> 7).
UnetGenerator (the book's first edition's): `depth` 4x4 stride-2 convs (LeakyReLU 0.2) down, as
many 4x4 stride-2 transposed convs (ReLU) up, each concatenated with the encoder's features of the
same size, a tanh output; H and W divisible by 2^depth.
Both use instance normalisation (per image and channel), so they keep no batch statistics.
The critics are gdl_jax.models.patchgan.PatchDiscriminator.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def reflect_pad(x: jax.Array, p: int) -> jax.Array:
  """Reflection padding of p pixels on each side of H and W (NHWC)."""
  if p >= min(x.shape[1], x.shape[2]):
    raise ValueError(f"reflection padding of {p} needs feature maps larger than {p}x{p}; got "
                     f"{x.shape[1]}x{x.shape[2]} (use fewer downsamplings, n_down / depth).")
  return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")


def check_size(shape: tuple[int, ...], n_down: int, what: str) -> None:
  """Raises ValueError unless the image's H and W are divisible by 2^n_down."""
  h, w = shape[0], shape[1]
  if n_down < 1 or h % 2 ** n_down or w % 2 ** n_down:
    raise ValueError(f"{what}={n_down} needs images whose height and width are divisible by "
                     f"2^{n_down} = {2 ** n_down}; these are {h}x{w}.")


class ResidualBlock(nn.Module):
  """x + IN(conv3(relu(IN(conv3(x))))), reflection padded."""

  features: int

  @nn.compact
  def __call__(self, x):
    y = nn.Conv(self.features, (3, 3), padding="VALID")(reflect_pad(x, 1))
    y = nn.relu(nn.InstanceNorm()(y))
    y = nn.Conv(self.features, (3, 3), padding="VALID")(reflect_pad(y, 1))
    return x + nn.InstanceNorm()(y)


class ResnetGenerator(nn.Module):
  """[B, H, W, C] in [-1, 1] -> [B, H, W, channels] in (-1, 1) (see the module docstring)."""

  channels: int
  features: int = 32
  n_down: int = 2
  n_blocks: int = 6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 4:
      raise ValueError(f"the generator takes NHWC image batches, got shape {x.shape}.")
    check_size(x.shape[1:3], self.n_down, "n_down")
    x = x.astype(jnp.float32)
    h = nn.Conv(self.features, (7, 7), padding="VALID", name="c7s1_in")(reflect_pad(x, 3))
    h = nn.relu(nn.InstanceNorm()(h))
    f = self.features
    for i in range(self.n_down):
      f *= 2
      h = nn.Conv(f, (3, 3), strides=(2, 2), padding="SAME", name=f"down_{i}")(h)
      h = nn.relu(nn.InstanceNorm()(h))
    for i in range(self.n_blocks):
      h = ResidualBlock(f, name=f"res_{i}")(h)
    for i in range(self.n_down):
      f //= 2
      h = nn.ConvTranspose(f, (3, 3), strides=(2, 2), padding="SAME", name=f"up_{i}")(h)
      h = nn.relu(nn.InstanceNorm()(h))
    h = nn.Conv(self.channels, (7, 7), padding="VALID", name="c7s1_out")(reflect_pad(h, 3))
    return jnp.tanh(h)


class UnetGenerator(nn.Module):
  """[B, H, W, C] in [-1, 1] -> [B, H, W, channels] in (-1, 1), U-Net with skip connections."""

  channels: int
  features: int = 32
  depth: int = 2

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 4:
      raise ValueError(f"the generator takes NHWC image batches, got shape {x.shape}.")
    check_size(x.shape[1:3], self.depth, "depth")
    h = x.astype(jnp.float32)
    skips = []
    for i in range(self.depth):
      h = nn.Conv(self.features * 2 ** i, (4, 4), strides=(2, 2), padding="SAME", name=f"down_{i}")(h)
      h = nn.leaky_relu(nn.InstanceNorm()(h), 0.2)
      skips.append(h)
    for i in reversed(range(self.depth - 1)):
      h = nn.ConvTranspose(self.features * 2 ** i, (4, 4), strides=(2, 2), padding="SAME", name=f"up_{i}")(h)
      h = nn.relu(nn.InstanceNorm()(h))
      h = jnp.concatenate([h, skips[i]], axis=-1)
    h = nn.ConvTranspose(self.features, (4, 4), strides=(2, 2), padding="SAME", name="up_out")(h)
    h = nn.relu(nn.InstanceNorm()(h))
    h = nn.Conv(self.channels, (3, 3), padding="SAME", name="to_image")(h)
    return jnp.tanh(h)


GENERATORS = ("resnet", "unet")


def make_generator(kind: str, channels: int, features: int, n_down: int, n_blocks: int) -> nn.Module:
  """The generator named `kind` ("resnet" or "unet"; for the U-Net, n_down is its depth)."""
  if kind == "resnet":
    return ResnetGenerator(channels, features=features, n_down=n_down, n_blocks=n_blocks)
  if kind == "unet":
    return UnetGenerator(channels, features=features, depth=n_down)
  raise ValueError(f"generator {kind!r} is unknown; use one of {GENERATORS}.")
