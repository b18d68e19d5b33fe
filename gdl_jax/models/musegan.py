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
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

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
    bn = lambda: nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum)
    h = z_BxZ[:, None, :]                                                           # [B, 1, Z]
    h = nn.relu(bn()(nn.ConvTranspose(self.features, (2,), padding="VALID")(h)))    # [B, 2, F]
    if self.n_bars > 2:
      h = nn.ConvTranspose(self.z_dim, (self.n_bars - 1,), padding="VALID")(h)      # [B, bars, Z]
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
    bn = lambda: nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum)
    s0, f = self.n_steps // 8, self.features
    h = nn.relu(bn()(nn.Dense(s0 * f)(h_BxD)))
    h = h.reshape(h.shape[0], s0, 1, f)                                             # [B, S/8, 1, F]
    for c in (f, f // 2, f // 2):                                                   # steps x 8
      h = nn.relu(bn()(nn.ConvTranspose(c, (2, 1), strides=(2, 1), padding="VALID")(h)))
    for i, p in enumerate(self.pitch_factors):                                      # pitches x 84
      last = i == len(self.pitch_factors) - 1
      h = nn.ConvTranspose(1 if last else f // 2, (1, p), strides=(1, p), padding="VALID")(h)
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
    melody = [temporal(f"melody_temporal_{k}")(lat.melody[:, k], train)             # K x [B, N, Z]
              for k in range(self.n_tracks)]
    tracks = []
    for k in range(self.n_tracks):
      gen = BarGenerator(self.n_steps, self.n_pitches, self.bar_features, self.pitch_factors,
                         self.bn_momentum, name=f"bar_generator_{k}")
      bars = []
      for b in range(self.n_bars):
        h = jnp.concatenate([chords_BxNxZ[:, b], lat.style, melody[k][:, b], lat.groove[:, k]], -1)
        bars.append(gen(h, train))                                                  # [B, S, P]
      tracks.append(jnp.stack(bars, 1))                                             # [B, N, S, P]
    return jnp.stack(tracks, -1)                                                    # [B, N, S, P, K]


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
    h = act(nn.Conv(f[0], (n_bars, 1, 1), padding="VALID")(x))                     # bars -> 1
    h = act(nn.Conv(f[1], (1, 1, 1))(h))
    for c, p in zip(f[2:4], self.pitch_factors):                                   # pitches -> 1
      h = act(nn.Conv(c, (1, 1, p), strides=(1, 1, p), padding="VALID")(h))
    i = 4
    while h.shape[2] > 1:                                                           # steps -> 1
      c = f[min(i, len(f) - 1)]
      h = act(nn.Conv(c, (1, 2, 1), strides=(1, 2, 1), padding="VALID")(h))
      i += 1
    del n_steps
    h = h.reshape(h.shape[0], -1)
    h = act(nn.Dense(self.dense)(h))
    return nn.Dense(1)(h)[:, 0]                                                     # [B]
