"""Progressive GAN (Karras et al. 2018) as Linen modules: growing 4 -> 8 -> ... -> R with fade-in.

    ProGenerator(image_shape=(32, 32, C), features=(f4, f8, f16, f32), phase=p)
        z [B, Z] -> images [B, r_p, r_p, C] (r_p = 4 * 2^p), linear output (no tanh)
    ProDiscriminator(image_shape=(32, 32, C), features=(f4, f8, f16, f32), phase=p)
        images [B, r_p, r_p, C] -> critic scores [B]

Both are called as `module(inputs, labels=None, *, train, alpha=1.0)`, the signature of the GAN
step (gdl_jax.objectives.gan_step), which passes `alpha` per step through its `step_kwargs` hook.
`phase` is a static field: one module per resolution, all with the *same* parameter tree (every
resolution's blocks and toRGB / fromRGB heads are created at init whatever the phase), so the train
state never changes shape while the networks grow and a checkpoint of any phase restores into any.

The paper's pieces, each a small public function or module tested on its own:
  EqualizedDense / EqualizedConv  weights stored N(0, 1) and multiplied at run time by He's constant
                                  gain / sqrt(fan_in) (gain sqrt(2); 1 for the toRGB heads and the
                                  critic's output), biases from 0 ("equalised learning rate")
  pixel_norm                      x / sqrt(mean_c x^2 + 1e-8) after every generator conv
  minibatch_stddev                the critic's extra feature map: the mean over features of the
                                  per-group standard deviation over the batch
  fade                            old + alpha * (new - old): the new block's output blended with the
                                  up-/down-sampled old path while alpha rises from 0 to 1
  downsample / upsample           2x2 average pooling / nearest-neighbour doubling
  phase_alpha                     (phase, alpha) as a function of the training step

Generator stage 0: pixel_norm(z) -> Dense to 4 x 4 x f4 -> LeakyReLU(0.2) -> pixel_norm -> conv3x3 ->
LReLU -> PN; stage q >= 1: upsample -> (conv3x3 -> LReLU -> PN) x 2 with f_q channels; toRGB_q is a
1x1 conv. At phase p: out = fade(upsample(toRGB_{p-1}(h_{p-1})), toRGB_p(h_p), alpha).
Critic stage q >= 1 (at resolution r_q): (conv3x3 -> LReLU) to f_q then f_{q-1} channels ->
downsample; fromRGB_q is 1x1 conv -> LReLU; at phase p the stage-p features are faded with
fromRGB_{p-1}(downsample(x)). Stage 0: minibatch_stddev -> conv3x3 -> LReLU -> Dense(f0) (a 4x4 valid
conv) -> LReLU -> Dense(1).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Scalar = Union[float, Array]
HE_GAIN = math.sqrt(2.0)


# ---------------------------------------------------------------------------------------------
# the paper's pieces

def he_scale(fan_in: int, gain: float = HE_GAIN) -> float:
  """He's constant gain / sqrt(fan_in): the run-time multiplier of an equalised-LR weight."""
  return gain / math.sqrt(fan_in)


class EqualizedDense(nn.Module):
  """x @ (W * gain / sqrt(fan_in)) + b with W ~ N(0, 1) stored, b = 0 at init."""

  features: int
  gain: float = HE_GAIN

  @nn.compact
  def __call__(self, x: Array) -> Array:
    fan_in = x.shape[-1]
    w = self.param("kernel", nn.initializers.normal(1.0), (fan_in, self.features))    # [F_in, F]
    b = self.param("bias", nn.initializers.zeros, (self.features,))
    return x @ (w * he_scale(fan_in, self.gain)) + b


class EqualizedConv(nn.Module):
  """A stride-1 SAME conv with kernel W * gain / sqrt(k * k * C_in), W ~ N(0, 1) stored (HWIO)."""

  features: int
  kernel_size: int = 3
  gain: float = HE_GAIN

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k, c_in = self.kernel_size, x.shape[-1]
    w = self.param("kernel", nn.initializers.normal(1.0), (k, k, c_in, self.features))
    b = self.param("bias", nn.initializers.zeros, (self.features,))
    y = jax.lax.conv_general_dilated(x, w * he_scale(k * k * c_in, self.gain), (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + b


def pixel_norm(x: Array, eps: float = 1e-8) -> Array:
  """Each pixel's feature vector divided by its root mean square over channels (last axis)."""
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def minibatch_stddev(x: Array, group_size: int = 4, eps: float = 1e-8) -> Array:
  """[B, H, W, C] -> [B, H, W, C + 1]: the appended map holds, for each example, the mean over
  (H, W, C) of the standard deviation sqrt(var + eps) over its group of the batch.

  As in the paper's code, groups of G members are interleaved: example i is in group i mod (B / G),
  with G = min(group_size, B), lowered to the largest divisor of B below it when B is not a
  multiple (e.g. a last, smaller eval batch of 39: G = 3); group_size=0 uses the whole batch.
  """
  b = x.shape[0]
  g = b if group_size <= 0 else min(group_size, b)
  while b % g:
    g -= 1
  y = x.reshape((g, b // g) + x.shape[1:]).astype(jnp.float32)                     # [G, M, H, W, C]
  var = jnp.mean(jnp.square(y - y.mean(axis=0)), axis=0)                             # [M, H, W, C]
  s = jnp.mean(jnp.sqrt(var + eps), axis=(1, 2, 3))                                  # [M]
  s = jnp.tile(s, g).astype(x.dtype)                                                 # [B]: i -> s[i % M]
  feat = jnp.broadcast_to(s[:, None, None, None], x.shape[:3] + (1,))
  return jnp.concatenate([x, feat], axis=-1)


def downsample(x: Array, factor: int = 2) -> Array:
  """Average pooling over factor x factor blocks: [B, H, W, C] -> [B, H / f, W / f, C]."""
  if factor == 1:
    return x
  b, h, w, c = x.shape
  if h % factor or w % factor:
    raise ValueError(f"cannot average-pool {h}x{w} by {factor}: the size must be divisible.")
  return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def upsample(x: Array, factor: int = 2) -> Array:
  """Nearest-neighbour enlargement: [B, H, W, C] -> [B, H * f, W * f, C]."""
  if factor == 1:
    return x
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def fade(old: Array, new: Array, alpha: Scalar) -> Array:
  """(1 - alpha) * old + alpha * new, written as old + alpha * (new - old)."""
  return old + alpha * (new - old)


def num_phases(resolution: int) -> int:
  """4 -> 1, 8 -> 2, 16 -> 3, 32 -> 4, ...; a resolution that is not 4 * 2^k is refused."""
  k = math.log2(resolution / 4) if resolution >= 4 else -1.0
  if resolution < 4 or k != int(k):
    raise ValueError(f"ProGAN grows from 4x4 by doubling: the image size must be 4 * 2^k (4, 8, 16, "
                     f"32, 64, ...); got {resolution}. Pad or crop the images (model.resolution), "
                     "e.g. 28x28 Fashion-MNIST is padded to 32.")
  return int(k) + 1


def phase_resolution(phase: int) -> int:
  return 4 * 2 ** int(phase)


def phase_alpha(step, phase_steps: int, phases: int):
  """(phase, alpha) at a training step (Python ints or traced arrays alike).

  The schedule is 2 * phases - 1 segments of phase_steps each: stabilise 4x4, then for every
  further resolution a fade (alpha rises linearly from 0 to (L - 1) / L over its L steps) and a
  stabilise (alpha = 1); after the last segment training stays at the last phase with alpha = 1.
  """
  if phase_steps < 1 or phases < 1:
    raise ValueError(f"phase_steps and phases must be >= 1; got {phase_steps}, {phases}.")
  xp = np if isinstance(step, (int, np.integer)) else jnp
  segment = step // phase_steps
  phase = xp.minimum((segment + 1) // 2, phases - 1)
  fading = (segment % 2 == 1) & (segment < 2 * phases - 1)
  within = (step - segment * phase_steps) / phase_steps
  alpha = xp.where(fading, within, 1.0)
  if xp is np:
    return int(phase), float(alpha)
  return phase.astype(jnp.int32), alpha.astype(jnp.float32)


def _check_shape(image_shape: Sequence[int], features: Sequence[int], phase: int) -> int:
  """The number of phases; refuses non-square, non-4 * 2^k images and mismatched features/phase."""
  h, w = image_shape[0], image_shape[1]
  if h != w:
    raise ValueError(f"ProGAN needs square images; got {h}x{w}.")
  n = num_phases(h)
  if len(features) != n:
    raise ValueError(f"features needs one entry per resolution 4..{h} ({n} entries); got "
                     f"{tuple(features)}.")
  if not -1 <= phase < n:
    raise ValueError(f"phase={phase} is out of range for {h}x{h} images: use 0..{n - 1} (or -1 for "
                     "the last).")
  return n


def _lrelu(x: Array) -> Array:
  return nn.leaky_relu(x, 0.2)


def _is_static_one(alpha: Scalar) -> bool:
  return isinstance(alpha, (int, float)) and float(alpha) == 1.0


# ---------------------------------------------------------------------------------------------
# the players

class _Phased:
  """The phase properties both players share (their fields image_shape, features, phase)."""

  @property
  def last_phase(self) -> int:
    return _check_shape(self.image_shape, self.features, self.phase) - 1

  @property
  def current_phase(self) -> int:
    return self.last_phase if self.phase < 0 else self.phase


class ProGenerator(_Phased, nn.Module):
  """z [B, Z] -> images [B, r_p, r_p, C] at the phase's resolution (see the module docstring)."""

  image_shape: tuple[int, int, int]         # the full resolution (R, R, C)
  features: tuple[int, ...]                 # channels per resolution 4, 8, ..., R
  phase: int = -1                           # 0 = 4x4, ..., -1 = the last (R x R)
  num_classes: int = 0                      # unconditional (read by the GAN step)
  dtype: Any = None

  @nn.compact
  def __call__(self, z: Array, labels: Optional[Array] = None, *, train: bool = False,
               alpha: Scalar = 1.0, all_resolutions: bool = False):
    """Images at this phase; all_resolutions=True instead returns [toRGB_q(h_q) for q <= phase]
    (each at its own resolution 4 * 2^q, no fading): the generator's per-resolution outputs."""
    del train, labels
    p, last = self.current_phase, self.last_phase
    initializing = self.is_initializing()
    stages = last + 1 if initializing else p + 1          # init creates every resolution's params
    c_out = self.image_shape[-1]
    x = pixel_norm(z.astype(self.dtype or jnp.float32))
    h = EqualizedDense(16 * self.features[0], name="dense0")(x)
    h = pixel_norm(_lrelu(h.reshape(z.shape[0], 4, 4, self.features[0])))
    h = pixel_norm(_lrelu(EqualizedConv(self.features[0], name="conv0")(h)))
    hs = [h]
    for q in range(1, stages):
      h = upsample(h)
      for j in range(2):
        h = pixel_norm(_lrelu(EqualizedConv(self.features[q], name=f"conv{q}_{j}")(h)))
      hs.append(h)
    heads = [EqualizedConv(c_out, 1, gain=1.0, name=f"to_rgb{q}") for q in range(last + 1)]
    if initializing:
      for q in range(last + 1):
        heads[q](hs[q])
    if all_resolutions:
      return [heads[q](hs[q]).astype(jnp.float32) for q in range(p + 1)]
    new = heads[p](hs[p])
    if p == 0 or _is_static_one(alpha):
      return new.astype(jnp.float32)
    old = upsample(heads[p - 1](hs[p - 1]))
    return fade(old, new, alpha).astype(jnp.float32)


class ProDiscriminator(_Phased, nn.Module):
  """images [B, r_p, r_p, C] -> critic scores [B] (see the module docstring)."""

  image_shape: tuple[int, int, int]
  features: tuple[int, ...]                 # channels per resolution 4, 8, ..., R
  phase: int = -1
  mbstd_group: int = 4                      # minibatch-stddev group size (0: the whole batch)
  num_classes: int = 0
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, labels: Optional[Array] = None, *, train: bool = False,
               alpha: Scalar = 1.0) -> Array:
    del train, labels
    p, last = self.current_phase, self.last_phase
    r = phase_resolution(p)
    if x.shape[1:] != (r, r, self.image_shape[-1]):
      raise ValueError(f"the phase-{p} critic takes [B, {r}, {r}, {self.image_shape[-1]}] images; "
                       f"got {x.shape}.")
    f = self.features
    from_rgb = [EqualizedConv(f[q], 1, name=f"from_rgb{q}") for q in range(last + 1)]

    def block(q, h):                                      # resolution r_q -> r_{q-1}
      h = _lrelu(EqualizedConv(f[q], name=f"conv{q}_0")(h))
      h = _lrelu(EqualizedConv(f[q - 1], name=f"conv{q}_1")(h))
      return downsample(h)

    x = x.astype(self.dtype or jnp.float32)
    if self.is_initializing():                            # create every resolution's params
      c = self.image_shape[-1]
      for q in range(last + 1):
        if q != p:
          hq = _lrelu(from_rgb[q](jnp.zeros((1, phase_resolution(q), phase_resolution(q), c), x.dtype)))
          if q > p:
            block(q, hq)
    h = _lrelu(from_rgb[p](x))
    if p > 0:
      h = block(p, h)
      if not _is_static_one(alpha):
        h = fade(_lrelu(from_rgb[p - 1](downsample(x))), h, alpha)
    for q in range(p - 1, 0, -1):
      h = block(q, h)
    h = minibatch_stddev(h, self.mbstd_group)                                         # [B, 4, 4, f0+1]
    h = _lrelu(EqualizedConv(f[0], name="conv0")(h))
    h = _lrelu(EqualizedDense(f[0], name="dense0")(h.reshape(h.shape[0], -1)))
    return EqualizedDense(1, gain=1.0, name="out")(h)[:, 0].astype(jnp.float32)
