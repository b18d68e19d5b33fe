"""RealNVP normalizing flows (Dinh et al. 2017; book ch. 6): a multi-scale image flow and an MLP flow.

Both map data x to a standard-normal latent z of the same size with an exact log-determinant:

    z, logdet = model.apply(params, x)                       # data -> latent, log|det dz/dx|  [B]
    x, logdet = model.apply(params, z, method="inverse")     # latent -> data, log|det dx/dz|  [B]
    log_px    = model.apply(params, x, method="log_prob")    # log N(z; 0, I) + log|det dz/dx| [B]
    samples   = model.apply(params, key, n, method="sample")

`model.init(key, x)` must see a batch of data: the actnorm layers initialise from it.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gdl_jax.nn.coupling import MLP, ActNorm, AffineCoupling, ConvNet, squeeze, unsqueeze

Array = jax.Array


def standard_normal_log_prob(z: Array) -> Array:
  """log N(z; 0, I) summed over all but the batch axis -> [B]."""
  return jax.scipy.stats.norm.logpdf(z).reshape(z.shape[0], -1).sum(-1)


def _run(layers, x: Array, logdet: Array, reverse: bool) -> tuple[Array, Array]:
  for layer in (reversed(layers) if reverse else layers):
    x, ld = layer(x, reverse=reverse)
    logdet = logdet + ld
  return x, logdet


class _Flow(nn.Module):
  """Shared density and sampling methods; subclasses define `__call__` (x -> z) and `inverse`."""

  def log_prob(self, x: Array) -> Array:
    """Exact log-density of x in nats -> [B]."""
    z, logdet = self(x)
    return standard_normal_log_prob(z) + logdet

  def sample(self, key: Array, n: int, temperature: float = 1.0) -> Array:
    """n samples: z ~ N(0, temperature^2 I), x = f^{-1}(z) -> [n, *event_shape]."""
    z = temperature * jax.random.normal(key, (n, self.latent_dims()))
    return self.inverse(z)[0]


class RealNVP2D(_Flow):
  """RealNVP for vectors [B, D] (the book's two-moons model): alternating-mask MLP couplings.

  Each of `num_couplings` steps is [actnorm] + coupling; the first actnorm standardises the data.
  """

  dims: int = 2
  num_couplings: int = 6
  hidden: Sequence[int] = (128, 128)
  actnorm: bool = True

  def setup(self):
    layers = []
    for i in range(self.num_couplings):
      if self.actnorm:
        layers.append(ActNorm())
      layers.append(AffineCoupling("alternating", i % 2, MLP(tuple(self.hidden))))
    self.layers = layers

  def latent_dims(self) -> int:
    return self.dims

  def _check(self, x: Array):
    if x.ndim != 2 or x.shape[1] != self.dims:
      raise ValueError(f"RealNVP2D expects points [B, {self.dims}], got {x.shape}; "
                       f"set model.dims to the data's dimension.")

  def __call__(self, x: Array) -> tuple[Array, Array]:
    """x [B, D] -> z [B, D], log|det dz/dx| [B]."""
    self._check(x)
    return _run(self.layers, x, jnp.zeros(x.shape[:1], x.dtype), reverse=False)

  def inverse(self, z: Array) -> tuple[Array, Array]:
    """z [B, D] -> x [B, D], log|det dx/dz| [B]."""
    self._check(z)
    return _run(self.layers, z, jnp.zeros(z.shape[:1], z.dtype), reverse=True)


def multiscale_shapes(shape: tuple[int, int, int], num_scales: int):
  """Shapes of the factored-out latents per scale and of the final one: ([(h, w, c), ...], (h, w, c))."""
  h, w, c = shape
  if num_scales < 1:
    raise ValueError(f"num_scales={num_scales}; use 1 or more.")
  k = 2 ** (num_scales - 1)
  if h % k or w % k:
    raise ValueError(f"a {num_scales}-scale RealNVP needs height and width divisible by {k}, "
                     f"got {h}x{w}; use model.num_scales <= {1 + _twos(h, w)}.")
  out = []
  for _ in range(num_scales - 1):
    h, w, c = h // 2, w // 2, 4 * c
    c = c // 2
    out.append((h, w, c))
  return out, (h, w, c)


def _twos(h: int, w: int) -> int:
  n = 0
  while h % 2 == 0 and w % 2 == 0:
    h, w, n = h // 2, w // 2, n + 1
  return n


class RealNVP(_Flow):
  """Multi-scale RealNVP for images [B, H, W, C] (Dinh et al. 2017, sec. 3.6).

  Every scale but the last: 3 checkerboard couplings, squeeze, 3 channel couplings, then half the
  channels are factored out (sent straight to the latent). The last scale: 4 checkerboard
  couplings. Each coupling is preceded by an actnorm (Glow's data-initialised replacement for
  RealNVP's batch norm). z is all factored-out parts flattened and concatenated -> [B, H*W*C].
  """

  event_shape: tuple[int, int, int] = (8, 8, 1)
  num_scales: int = 2
  features: int = 32
  num_blocks: int = 2
  actnorm: bool = True

  def _couplings(self, mask: str, n: int):
    layers = []
    for i in range(n):
      if self.actnorm:
        layers.append(ActNorm())
      layers.append(AffineCoupling(mask, i % 2, ConvNet(self.features, self.num_blocks)))
    return layers

  def setup(self):
    multiscale_shapes(tuple(self.event_shape), self.num_scales)  # validates the shape
    self.pre = [self._couplings("checkerboard", 3) for _ in range(self.num_scales - 1)]
    self.post = [self._couplings("channel", 3) for _ in range(self.num_scales - 1)]
    self.final = self._couplings("checkerboard", 4)

  def latent_dims(self) -> int:
    h, w, c = self.event_shape
    return h * w * c

  def __call__(self, x: Array) -> tuple[Array, Array]:
    """x [B, H, W, C] -> z [B, H*W*C], log|det dz/dx| [B]."""
    if tuple(x.shape[1:]) != tuple(self.event_shape):
      raise ValueError(f"RealNVP was built for images {tuple(self.event_shape)}, got "
                       f"{tuple(x.shape[1:])}; set model.event_shape to the dataset's shape.")
    b = x.shape[0]
    logdet = jnp.zeros((b,), x.dtype)
    zs = []
    for s in range(self.num_scales - 1):
      x, logdet = _run(self.pre[s], x, logdet, reverse=False)
      x = squeeze(x)  # [B, H/2, W/2, 4C]
      x, logdet = _run(self.post[s], x, logdet, reverse=False)
      c = x.shape[-1] // 2
      zs.append(x[..., c:].reshape(b, -1))  # factored out
      x = x[..., :c]  # [B, H/2, W/2, 2C]
    x, logdet = _run(self.final, x, logdet, reverse=False)
    zs.append(x.reshape(b, -1))
    return jnp.concatenate(zs, axis=-1), logdet

  def inverse(self, z: Array) -> tuple[Array, Array]:
    """z [B, H*W*C] -> x [B, H, W, C], log|det dx/dz| [B]."""
    if z.ndim != 2 or z.shape[1] != self.latent_dims():
      raise ValueError(f"RealNVP.inverse expects latents [B, {self.latent_dims()}], got {z.shape}.")
    b = z.shape[0]
    factored, last = multiscale_shapes(tuple(self.event_shape), self.num_scales)
    sizes = [h * w * c for h, w, c in factored]
    parts = jnp.split(z, [sum(sizes[:i + 1]) for i in range(len(sizes))], axis=-1)
    logdet = jnp.zeros((b,), z.dtype)
    x, logdet = _run(self.final, parts[-1].reshape(b, *last), logdet, reverse=True)
    for s in reversed(range(self.num_scales - 1)):
      x = jnp.concatenate([x, parts[s].reshape(b, *factored[s])], axis=-1)  # [B, h, w, 4C]
      x, logdet = _run(self.post[s], x, logdet, reverse=True)
      x = unsqueeze(x)
      x, logdet = _run(self.pre[s], x, logdet, reverse=True)
    return x, logdet
