"""MuseGAN (Dong et al. 2018; the book's Chapter 11): a multi-track piano-roll generator and critic.

Shapes: a piano roll is [B, bars, steps, pitches, tracks] (gdl_jax.data.music_grid: 2 x 16 x 84 x 4),
in [-1, 1] (the one-hot grid through `to_signed`, levels 2).

The generator's input is four latents, each of size z_dim, packed into one flat vector so the
project's GAN step can draw it as z ~ N(0, I) [B, (2 + 2 * tracks) * z_dim]:
  chords  [B, Z]          shared by all tracks, through a temporal network -> one vector per bar;
  style   [B, Z]          shared by all tracks and bars;
  melody  [B, tracks, Z]  per track, through that track's temporal network -> one vector per bar;
  groove  [B, tracks, Z]  per track, the same for all bars.
Bar b of track k comes from track k's bar generator on concat(chords[b], style, melody[k, b],
groove[k]) [4Z]. `pack_latents` / `split_latents` convert between the flat vector and the parts
(the figure that changes one input at a time builds its latents with them).

The critic: 3-D convolutions over (bars, steps, pitches) with the tracks as channels, LeakyReLU,
no normalisation (WGAN-GP needs a critic that treats examples independently), then two dense layers
to one unbounded score per example [B].

How it is computed (the same functions as the book's layers, not a different model): every
convolution of both players has kernel == stride and VALID padding (non-overlapping patches), so
`PatchConv` / `PatchConvTranspose` (gdl_jax/nn/patch_conv.py) compute it as a reshape and one matmul (einsum) with the same
parameters, names, shapes and initialisers as nn.Conv / nn.ConvTranspose (tests check them equal).
XLA:CPU has no fast path for strided 3-D convolutions nor for transposed (lhs-dilated) ones: their
programs, with the gradient penalty's double backward, compiled for ~20 CPU-minutes and ran ~9 s a
step at the small size. The per-track networks (melody temporal networks, bar generators) are one
nn.vmap over the tracks (params stacked on a leading track axis; each track's BatchNorm sees only
its own examples, as K separate modules would) instead of a Python loop of K modules; the bars stay
a loop (each bar generator call normalises over its own bar, as the book's per-bar calls do).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from gdl_jax.nn.norm import BatchNorm
from gdl_jax.nn.patch_conv import PatchConv, PatchConvTranspose  # noqa: F401 (tests use M.PatchConv)

LATENTS = ("chords", "style", "melody", "groove")


class Latents(NamedTuple):
  chords: jax.Array   # [B, Z]
  style: jax.Array    # [B, Z]
  melody: jax.Array   # [B, K, Z]
  groove: jax.Array   # [B, K, Z]


def latent_dim(z_dim: int, n_tracks: int) -> int:
  """The flat latent's size: chords + style + melody and groove per track."""
  return (2 + 2 * n_tracks) * z_dim


def split_latents(z_BxD: jax.Array, z_dim: int, n_tracks: int) -> Latents:
  """Flat [B, (2 + 2K) Z] -> Latents (chords, style, melody, groove)."""
  if z_BxD.ndim != 2 or z_BxD.shape[-1] != latent_dim(z_dim, n_tracks):
    raise ValueError(f"MuseGAN latents are [B, {latent_dim(z_dim, n_tracks)}] (z_dim={z_dim}, "
                     f"{n_tracks} tracks); got {z_BxD.shape}.")
  b, kz = z_BxD.shape[0], n_tracks * z_dim
  chords, style = z_BxD[:, :z_dim], z_BxD[:, z_dim:2 * z_dim]
  melody = z_BxD[:, 2 * z_dim:2 * z_dim + kz].reshape(b, n_tracks, z_dim)
  groove = z_BxD[:, 2 * z_dim + kz:].reshape(b, n_tracks, z_dim)
  return Latents(chords, style, melody, groove)


def pack_latents(lat: Latents) -> jax.Array:
  """Latents -> the flat [B, (2 + 2K) Z] vector (the inverse of split_latents)."""
  b = lat.chords.shape[0]
  return jnp.concatenate([lat.chords, lat.style, lat.melody.reshape(b, -1),
                          lat.groove.reshape(b, -1)], axis=-1)


class TemporalNetwork(nn.Module):
  """z [B, Z] -> one vector per bar [B, bars, Z] (two transposed convs over the bar axis)."""

  n_bars: int
  z_dim: int
  features: int = 1024
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, z_BxZ, train: bool):
    bn = lambda: BatchNorm(use_running_average=not train, momentum=self.bn_momentum)
    h = z_BxZ[:, None, :]                                                           # [B, 1, Z]
    h = nn.relu(bn()(PatchConvTranspose(self.features, (2,), name="ConvTranspose_0")(h)))  # [B, 2, F]
    if self.n_bars > 2:
      h = nn.ConvTranspose(self.z_dim, (self.n_bars - 1,), padding="VALID",
                           name="ConvTranspose_1")(h)                               # [B, bars, Z]
    else:
      h = nn.Dense(self.z_dim)(h)
    h = nn.relu(bn()(h))
    return h[:, :self.n_bars]                                                       # [B, bars, Z]


class BarGenerator(nn.Module):
  """One track's bar: [B, 4Z] -> [B, steps, pitches] in [-1, 1] (tanh).

  Dense to [B, steps/8, 1, C], then transposed convs doubling the steps three times and growing the
  pitch axis by pitch_factors (84 = 7 * 12)."""

  n_steps: int
  n_pitches: int
  features: int = 512
  pitch_factors: tuple[int, ...] = (7, 12)
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, h_BxD, train: bool):
    bn = lambda: BatchNorm(use_running_average=not train, momentum=self.bn_momentum)
    s0, f = self.n_steps // 8, self.features
    h = nn.relu(bn()(nn.Dense(s0 * f)(h_BxD)))
    h = h.reshape(h.shape[0], s0, 1, f)                                             # [B, S/8, 1, F]
    conv_t = lambda c, k: PatchConvTranspose(c, k, name=f"ConvTranspose_{next(ids)}")
    ids = iter(range(8))
    for c in (f, f // 2, f // 2):                                                   # steps x 8
      h = nn.relu(bn()(conv_t(c, (2, 1))(h)))
    for i, p in enumerate(self.pitch_factors):                                      # pitches x 84
      last = i == len(self.pitch_factors) - 1
      h = conv_t(1 if last else f // 2, (1, p))(h)
      h = jnp.tanh(h) if last else nn.relu(bn()(h))
    return h[..., 0]                                                                # [B, S, P]


class MuseGenerator(nn.Module):
  """Flat latents [B, (2 + 2K) Z] -> piano rolls [B, bars, steps, pitches, K] in [-1, 1]."""

  n_bars: int = 2
  n_steps: int = 16
  n_pitches: int = 84
  n_tracks: int = 4
  z_dim: int = 32
  temporal_features: int = 1024
  bar_features: int = 512
  pitch_factors: tuple[int, ...] = (7, 12)
  bn_momentum: float = 0.9
  num_classes: int = 0      # the GAN step's interface: unconditional

  def latent_dim(self) -> int:
    return latent_dim(self.z_dim, self.n_tracks)

  @nn.compact
  def __call__(self, z, labels=None, train: bool = True):
    del labels
    if self.n_steps % 8:
      raise ValueError(f"MuseGAN's bar generator doubles the steps three times: n_steps={self.n_steps} "
                       "must be a multiple of 8.")
    prod = 1
    for p in self.pitch_factors:
      prod *= p
    if prod != self.n_pitches:
      raise ValueError(f"pitch_factors {self.pitch_factors} multiply to {prod}, not n_pitches={self.n_pitches}.")
    lat = split_latents(z, self.z_dim, self.n_tracks)
    temporal = lambda name: TemporalNetwork(self.n_bars, self.z_dim, self.temporal_features,
                                            self.bn_momentum, name=name)
    chords_BxNxZ = temporal("chords_temporal")(lat.chords, train)
    # One network per track, as K modules would be: params (and BatchNorm stats) stacked on axis 0.
    per_track = lambda cls: nn.vmap(cls, variable_axes={"params": 0, "batch_stats": 0},
                                    split_rngs={"params": True}, in_axes=(0, None), out_axes=0,
                                    axis_size=self.n_tracks)
    melody_KxBxNxZ = per_track(TemporalNetwork)(
        self.n_bars, self.z_dim, self.temporal_features, self.bn_momentum,
        name="melody_temporal")(jnp.moveaxis(lat.melody, 1, 0), train)
    gen = per_track(BarGenerator)(self.n_steps, self.n_pitches, self.bar_features, self.pitch_factors,
                                  self.bn_momentum, name="bar_generator")
    b, k = z.shape[0], self.n_tracks
    bars = []
    for n in range(self.n_bars):       # a loop: each call's BatchNorm normalises over one bar only
      shared = jnp.concatenate([chords_BxNxZ[:, n], lat.style], -1)                # [B, 2Z]
      h = jnp.concatenate([jnp.broadcast_to(shared, (k, *shared.shape)), melody_KxBxNxZ[:, :, n],
                           jnp.moveaxis(lat.groove, 1, 0)], -1)                     # [K, B, 4Z]
      bars.append(gen(h, train))                                                    # [K, B, S, P]
    tracks = jnp.stack(bars, 2)                                                     # [K, B, N, S, P]
    return jnp.moveaxis(tracks, 0, -1)                                              # [B, N, S, P, K]


class MuseCritic(nn.Module):
  """Piano rolls [B, bars, steps, pitches, K] -> scores [B] (3-D convs, LeakyReLU, no norm)."""

  features: tuple[int, ...] = (128, 128, 128, 128, 128, 256, 512)
  dense: int = 1024
  pitch_factors: tuple[int, ...] = (12, 7)
  norm: str = "none"        # the GAN step's check: no BatchNorm with the gradient penalty
  num_classes: int = 0

  @nn.compact
  def __call__(self, x, labels=None, train: bool = True):
    del labels, train
    if x.ndim != 5:
      raise ValueError(f"MuseCritic takes piano rolls [B, bars, steps, pitches, tracks]; got {x.shape}.")
    act = lambda h: nn.leaky_relu(h, 0.2)
    f = list(self.features)
    n_bars, n_steps = x.shape[1], x.shape[2]
    conv = lambda c, k: PatchConv(c, k, name=f"Conv_{next(ids)}")
    ids = iter(range(len(f) + 16))
    h = act(conv(f[0], (n_bars, 1, 1))(x))                                          # bars -> 1
    h = act(conv(f[1], (1, 1, 1))(h))
    for c, p in zip(f[2:4], self.pitch_factors):                                   # pitches -> 1
      h = act(conv(c, (1, 1, p))(h))
    i = 4
    while h.shape[2] > 1:                                                           # steps -> 1
      c = f[min(i, len(f) - 1)]
      h = act(conv(c, (1, 2, 1))(h))
      i += 1
    del n_steps
    h = h.reshape(h.shape[0], -1)
    h = act(nn.Dense(self.dense)(h))
    return nn.Dense(1)(h)[:, 0]                                                     # [B]
