"""Keras 3 mirrors of the gdl_jax models (the book's framework), timed through `model.train_on_batch`.

Run as a worker by benchmarks/speed.py with KERAS_BACKEND=torch (or tensorflow when TensorFlow is
importable), one JSON request per line (see benchmarks/_timing.py). The classifier is compiled
the book's way (`compile(Adam, SparseCategoricalCrossentropy)`); the VAE, DCGAN, PixelCNN and
DDPM override `train_step` as the book does, with the gradient code of the active backend (the
Keras guide's PyTorch pattern: `loss.backward()` + `optimizer.apply`; TensorFlow: GradientTape).
Same layers, widths, kernels, strides, norms, dropout, loss, Adam (+ global-norm clipping, + EMA
via the optimizer's `use_ema`) and batch as the JAX step; layout is Keras's channels_last.
"""

from __future__ import annotations

import math
import os
import sys
import time

import numpy as np

BACKEND = os.environ.setdefault("KERAS_BACKEND", "torch")
import keras  # noqa: E402
from keras import layers, ops  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _timing  # noqa: E402

if BACKEND == "torch":
  import torch
elif BACKEND == "tensorflow":
  import tensorflow as tf
else:
  raise SystemExit(f"KERAS_BACKEND={BACKEND!r}: the Keras baseline supports 'torch' and 'tensorflow'.")


def to_signed(x, levels):
  return ops.cast(x, "float32") * (2.0 / (levels - 1)) - 1.0


def _adam(spec, lr, ema=0.0):
  kw = dict(learning_rate=lr, beta_1=spec["b1"], beta_2=spec["b2"], epsilon=spec["eps"])
  if spec.get("clip_norm"):
    kw["global_clipnorm"] = spec["clip_norm"]
  if ema:
    kw.update(use_ema=True, ema_momentum=ema, ema_overwrite_frequency=None)
  return keras.optimizers.Adam(**kw)


def _x(data):
  return data[0] if isinstance(data, (tuple, list)) else data


class LossModel(keras.Model):
  """A Model whose train_step minimises `self.loss_value(x)` over its trainable weights."""

  def loss_value(self, x):  # pragma: no cover - overridden
    raise NotImplementedError

  def call(self, x, training=False):
    return self.loss_value(x)  # one eager call builds every layer

  def train_step(self, data):
    x = _x(data)
    weights = self.trainable_weights
    if BACKEND == "torch":
      self.zero_grad()
      loss = self.loss_value(x)
      loss.backward()
      grads = [v.value.grad for v in weights]
      with torch.no_grad():
        self.optimizer.apply(grads, weights)
    else:
      with tf.GradientTape() as tape:
        loss = self.loss_value(x)
      self.optimizer.apply(tape.gradient(loss, weights), weights)
    return {"loss": loss}


# ---------------------------------------------------------------------------------------------
# Chapter 2: the CNN classifier (compiled the book's way)

def cnn(spec):
  h, w, c = spec["shape"]
  x_in = keras.Input((h, w, c))
  x = layers.Rescaling(2.0 / (spec["levels"] - 1), offset=-1.0)(x_in)
  for i, ch in enumerate(spec["channels"]):
    x = layers.Conv2D(ch, 3, strides=2 if i % 2 == 1 else 1, padding="same")(x)
    x = layers.BatchNormalization()(x)
    x = layers.LeakyReLU(0.2)(x)
  x = layers.Flatten()(x)
  x = layers.LeakyReLU(0.2)(layers.BatchNormalization()(layers.Dense(spec["dense"])(x)))
  x = layers.Dropout(spec["dropout"])(x)
  model = keras.Model(x_in, layers.Dense(spec["num_classes"])(x))
  model.compile(optimizer=_adam(spec, spec["lr"]),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  return model


# ---------------------------------------------------------------------------------------------
# Chapter 3: the VAE

def _log1mexp(x):
  x = ops.minimum(x, -1e-30)
  return ops.where(x > -math.log(2.0), ops.log(-ops.expm1(x)), ops.log1p(-ops.exp(x)))


def _log_sigmoid_diff(a, b):
  flip = (a + b) > 0
  hi, lo = ops.where(flip, -b, a), ops.where(flip, -a, b)
  log_hi, log_lo = ops.log_sigmoid(hi), ops.log_sigmoid(lo)
  return log_hi + _log1mexp(log_lo - log_hi)


class VAE(LossModel):
  def __init__(self, spec):
    super().__init__()
    H, W, C = spec["shape"]
    self.spec, self.levels, self.dims = spec, spec["levels"], H * W * C
    self.enc = [(layers.Conv2D(f, 3, strides=2, padding="same", activation="swish"),
                 layers.Conv2D(f, 3, padding="same", activation="swish")) for f in spec["features"]]
    self.enc_dense = layers.Dense(spec["hidden"], activation="swish")
    self.mean, self.logvar = layers.Dense(spec["latent_dim"]), layers.Dense(spec["latent_dim"])
    rev = list(reversed(spec["features"]))
    n = len(rev)
    self.h0, self.w0, self.f0 = math.ceil(H / 2 ** n), math.ceil(W / 2 ** n), rev[0]
    self.d1 = layers.Dense(spec["hidden"], activation="swish")
    self.d2 = layers.Dense(self.h0 * self.w0 * rev[0], activation="swish")
    self.dec = [(layers.Conv2DTranspose(f, 3, strides=2, padding="same", activation="swish"),
                 layers.Conv2D(f, 3, padding="same", activation="swish")) for f in rev]
    self.pixels = layers.Conv2D(C * 2, 3, padding="same")
    self.seed = keras.random.SeedGenerator(0)

  def loss_value(self, image):
    H, W, C = self.spec["shape"]
    levels = self.levels
    x_levels = ops.cast(image, "float32")
    h = x_levels * (2.0 / (levels - 1)) - 1.0
    for down, refine in self.enc:
      h = down(h)
      h = h + refine(h)
    h = self.enc_dense(ops.reshape(h, (ops.shape(h)[0], -1)))
    mean, logvar = self.mean(h), self.logvar(h)
    z = mean + ops.exp(0.5 * logvar) * keras.random.normal(ops.shape(mean), seed=self.seed)
    h = ops.reshape(self.d2(self.d1(z)), (-1, self.h0, self.w0, self.f0))
    for up, refine in self.dec:
      h = up(h)
      h = h + refine(h)
    out = self.pixels(h[:, :H, :W])
    loc, log_scale = out[..., :C], ops.maximum(out[..., C:], -7.0)
    y = x_levels * (2.0 / (levels - 1)) - 1.0
    half, inv_s = 1.0 / (levels - 1), ops.exp(-log_scale)
    plus, minus = inv_s * (y - loc + half), inv_s * (y - loc - half)
    lp = ops.where(x_levels <= 0, ops.log_sigmoid(plus),
                   ops.where(x_levels >= levels - 1, ops.log_sigmoid(-minus), _log_sigmoid_diff(plus, minus)))
    log_px = ops.sum(ops.reshape(lp, (ops.shape(lp)[0], -1)), axis=1)
    kl = 0.5 * ops.sum(ops.exp(logvar) + mean ** 2 - 1.0 - logvar, axis=-1)
    return -ops.mean(log_px - kl) / self.dims


# ---------------------------------------------------------------------------------------------
# Chapter 4: DCGAN

def generator(spec):
  H, W, C = spec["shape"]
  feats, k, mom = spec["gen_features"], spec["kernel_size"], spec["bn_momentum"]
  n = len(feats)
  z = keras.Input((spec["latent_dim"],))
  x = layers.Dense((H // 2 ** n) * (W // 2 ** n) * feats[0], use_bias=False)(z)
  x = layers.Reshape((H // 2 ** n, W // 2 ** n, feats[0]))(x)
  x = layers.LeakyReLU(0.2)(layers.BatchNormalization(momentum=mom)(x))
  for f in feats[1:]:
    x = layers.Conv2DTranspose(f, k, strides=2, padding="same", use_bias=False)(x)
    x = layers.LeakyReLU(0.2)(layers.BatchNormalization(momentum=mom)(x))
  x = layers.Conv2DTranspose(C, k, strides=2, padding="same", activation="tanh")(x)
  return keras.Model(z, x)


def discriminator(spec):
  x_in = keras.Input(tuple(spec["shape"]))
  x = x_in
  for i, f in enumerate(spec["disc_features"]):
    x = layers.Conv2D(f, spec["kernel_size"], strides=2, padding="same", use_bias=i == 0)(x)
    if i > 0:
      x = layers.BatchNormalization(momentum=spec["bn_momentum"])(x)
    x = layers.Dropout(spec["dropout"])(layers.LeakyReLU(0.2)(x))
  return keras.Model(x_in, layers.Dense(1)(layers.Flatten()(x)))


class DCGAN(keras.Model):
  """The book's DCGAN train_step: one discriminator update, then one generator update."""

  def __init__(self, spec):
    super().__init__()
    self.spec = spec
    self.gen, self.disc = generator(spec), discriminator(spec)
    self.seed = keras.random.SeedGenerator(0)

  def compile(self, **kw):
    super().compile(**kw)
    s = self.spec
    self.g_opt = _adam(s, s["lr"], s.get("ema_decay") or 0.0)
    self.d_opt = _adam(s, s["lr"] * s.get("disc_lr_mult", 1.0))
    self.g_opt.build(self.gen.trainable_weights)
    self.d_opt.build(self.disc.trainable_weights)

  def call(self, x, training=False):
    z = ops.zeros((ops.shape(x)[0], self.spec["latent_dim"]))
    return self.disc(self.gen(z))  # builds both players

  def _d_loss(self, x, z):
    fake = ops.stop_gradient(self.gen(z, training=True))
    real_out, fake_out = self.disc(x, training=True), self.disc(fake, training=True)
    noise = self.spec["label_noise"]
    real_t = 1.0 - noise * keras.random.uniform(ops.shape(real_out), seed=self.seed)
    fake_t = noise * keras.random.uniform(ops.shape(fake_out), seed=self.seed)
    bce = lambda t, o: ops.mean(ops.binary_crossentropy(t, o, from_logits=True))
    return bce(real_t, real_out) + bce(fake_t, fake_out)

  def _g_loss(self, z):
    return ops.mean(ops.softplus(-self.disc(self.gen(z, training=True), training=True)))

  def train_step(self, data):
    x = to_signed(_x(data), self.spec["levels"])
    b, zdim = ops.shape(x)[0], self.spec["latent_dim"]
    z1 = keras.random.normal((b, zdim), seed=self.seed)
    z2 = keras.random.normal((b, zdim), seed=self.seed)
    dw, gw = self.disc.trainable_weights, self.gen.trainable_weights
    if BACKEND == "torch":
      self.zero_grad()
      self._d_loss(x, z1).backward()
      with torch.no_grad():
        self.d_opt.apply([v.value.grad for v in dw], dw)
      self.zero_grad()
      g_loss = self._g_loss(z2)
      g_loss.backward()
      with torch.no_grad():
        self.g_opt.apply([v.value.grad for v in gw], gw)
    else:
      with tf.GradientTape() as tape:
        d_loss = self._d_loss(x, z1)
      self.d_opt.apply(tape.gradient(d_loss, dw), dw)
      with tf.GradientTape() as tape:
        g_loss = self._g_loss(z2)
      self.g_opt.apply(tape.gradient(g_loss, gw), gw)
    return {"g_loss": g_loss}


# ---------------------------------------------------------------------------------------------
# Chapter 5: gated PixelCNN

class MaskedConv(layers.Layer):
  """A conv whose kernel is multiplied by a fixed 0/1 mask, on an explicitly padded input."""

  def __init__(self, features, kernel, pad, mask=None, **kw):
    super().__init__(**kw)
    self.features, self.kernel_hw, self.pad, self.mask = features, kernel, pad, mask

  def build(self, shape):
    kh, kw = self.kernel_hw
    self.kernel = self.add_weight((kh, kw, shape[-1], self.features), initializer="glorot_uniform")
    self.bias = self.add_weight((self.features,), initializer="zeros")

  def call(self, x):
    (top, bottom), (left, right) = self.pad
    x = ops.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    k = self.kernel if self.mask is None else self.kernel * ops.convert_to_tensor(self.mask)
    return ops.conv(x, k, padding="valid") + self.bias


def _gate(x):
  a, b = ops.split(x, 2, axis=-1)
  return ops.tanh(a) * ops.sigmoid(b)


class PixelCNN(LossModel):
  def __init__(self, spec):
    super().__init__()
    self.spec = spec
    f, L = spec["features"], spec["num_layers"]
    self.blocks = []
    for i in range(L):
      k = spec["first_kernel_size"] if i == 0 else spec["kernel_size"]
      p = k // 2
      c_in = spec["shape"][-1] if i == 0 else f
      mask = np.ones((1, p + 1, c_in, 2 * f), np.float32)
      if i == 0:
        mask[:, -1] = 0.0
      self.blocks.append((MaskedConv(2 * f, (p + 1, k), ((p, 0), (p, p))),
                          MaskedConv(2 * f, (1, p + 1), ((0, 0), (p, 0)), mask),
                          layers.Conv2D(2 * f, 1), layers.Dropout(spec["dropout"]), layers.Conv2D(f, 1)))
    self.head1 = layers.Conv2D(spec["head_features"], 1)
    self.head2 = layers.Conv2D(3 * spec["num_mixtures"] * spec["shape"][-1], 1)

  def loss_value(self, image):
    s = self.spec
    levels, K = s["levels"], s["num_mixtures"]
    v = h = to_signed(image, levels)
    for i, (v_conv, h_conv, v_to_h, drop, h_out) in enumerate(self.blocks):
      v_feat = v_conv(v)
      shifted = ops.pad(v_feat, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]
      h_new = h_out(drop(_gate(h_conv(h) + v_to_h(shifted)), training=True))
      v, h = _gate(v_feat), (h_new if i == 0 else h_new + h)
    out = self.head2(ops.elu(self.head1(ops.elu(h))))                        # [B, H, W, 3K]
    w, mu, log_s = out[..., :K], out[..., K:2 * K], out[..., 2 * K:]
    centers = ops.linspace(-1.0, 1.0, levels)
    half = 1.0 / (levels - 1)
    inv_s = ops.exp(-ops.maximum(log_s, -7.0))[..., None]
    plus = (centers + half - mu[..., None]) * inv_s                          # [B, H, W, K, L]
    minus = (centers - half - mu[..., None]) * inv_s
    tiny = -1e-20
    lower = ops.log_sigmoid(plus) + ops.log(-ops.expm1(ops.minimum(ops.log_sigmoid(minus) - ops.log_sigmoid(plus), tiny)))
    upper = ops.log_sigmoid(-minus) + ops.log(-ops.expm1(ops.minimum(ops.log_sigmoid(-plus) - ops.log_sigmoid(-minus), tiny)))
    mid = ops.where(plus + minus > 0, upper, lower)
    idx = ops.arange(levels)
    comp = ops.where(idx == 0, ops.log_sigmoid(plus), ops.where(idx == levels - 1, ops.log_sigmoid(-minus), mid))
    lp = ops.logsumexp(comp + ops.log_softmax(w, axis=-1)[..., None], axis=-2)   # [B, H, W, L]
    onehot = ops.one_hot(ops.cast(image[..., 0], "int32"), levels)
    log_p = ops.sum(ops.reshape(lp * onehot, (ops.shape(lp)[0], -1)), axis=1)
    return -ops.mean(log_p) / math.prod(s["shape"])


# ---------------------------------------------------------------------------------------------
# Chapter 8: the DDPM U-Net

class ResBlock(layers.Layer):
  def __init__(self, f, groups, dropout, **kw):
    super().__init__(**kw)
    self.f, self.groups, self.dropout = f, groups, dropout

  def build(self, shapes):
    c = shapes[0][-1]
    self.n1, self.c1 = layers.GroupNormalization(min(self.groups, c)), layers.Conv2D(self.f, 3, padding="same")
    self.t = layers.Dense(self.f)
    self.n2, self.c2 = layers.GroupNormalization(min(self.groups, self.f)), layers.Conv2D(self.f, 3, padding="same")
    self.drop = layers.Dropout(self.dropout)
    self.skip = layers.Conv2D(self.f, 1) if c != self.f else None

  def call(self, inputs, training=None):
    x, temb = inputs
    h = self.c1(ops.silu(self.n1(x)))
    h = h + self.t(ops.silu(temb))[:, None, None, :]
    h = self.c2(self.drop(ops.silu(self.n2(h)), training=training))
    return (x if self.skip is None else self.skip(x)) + h


class Attention(layers.Layer):
  def __init__(self, heads, groups, **kw):
    super().__init__(**kw)
    self.heads, self.groups = heads, groups

  def build(self, shape):
    c = shape[-1]
    self.norm = layers.GroupNormalization(min(self.groups, c))
    self.attn = layers.MultiHeadAttention(self.heads, c // self.heads)

  def call(self, x):
    b, h, w, c = ops.shape(x)
    y = ops.reshape(self.norm(x), (b, h * w, c))
    return x + ops.reshape(self.attn(y, y), (b, h, w, c))


class DDPM(LossModel):
  def __init__(self, spec):
    super().__init__()
    s = self.spec = spec
    base, mults = s["base_channels"], s["channel_mults"]
    self.t1, self.t2 = layers.Dense(4 * base), layers.Dense(4 * base)
    self.inc = layers.Conv2D(base, 3, padding="same")
    blk = dict(groups=s["groups"], dropout=s["dropout"])
    attn = set(s["attention_levels"])
    self.down = []  # (layer, push skip after it)
    for level, m in enumerate(mults):
      for _ in range(s["num_res_blocks"]):
        self.down.append((ResBlock(base * m, **blk), level not in attn))
        if level in attn:
          self.down.append((Attention(s["num_heads"], s["groups"]), True))
      if level < len(mults) - 1:
        self.down.append((layers.Conv2D(base * m, 3, strides=2, padding="same"), True))
    c = base * mults[-1]
    self.mid = [ResBlock(c, **blk), Attention(s["num_heads"], s["groups"]), ResBlock(c, **blk)]
    self.up = []
    for level, m in reversed(list(enumerate(mults))):
      for _ in range(s["num_res_blocks"] + 1):
        self.up.append(ResBlock(base * m, **blk))
        if level in attn:
          self.up.append(Attention(s["num_heads"], s["groups"]))
      if level > 0:
        self.up += [layers.UpSampling2D(2), layers.Conv2D(base * m, 3, padding="same")]
    self.out_norm = layers.GroupNormalization(min(s["groups"], base * mults[0]))
    self.out = layers.Conv2D(spec["shape"][-1], 3, padding="same")
    T = s["num_timesteps"]
    sc = 0.008
    f = lambda t: np.cos((t + sc) / (1 + sc) * np.pi / 2) ** 2
    ab = f(np.arange(T + 1) / T) / f(0.0)
    betas = np.clip(1 - ab[1:] / ab[:-1], 0, 0.999)
    self.ab = np.concatenate([[1.0], np.cumprod(1 - betas)]).astype(np.float32)
    self.seed = keras.random.SeedGenerator(0)

  def net(self, x, t):
    base = self.spec["base_channels"]
    half = base // 2
    freqs = ops.exp(-math.log(10000.0) * ops.arange(half, dtype="float32") / half)
    args = (t * 1000.0)[:, None] * freqs[None]
    temb = self.t2(ops.silu(self.t1(ops.concatenate([ops.sin(args), ops.cos(args)], -1))))
    h = self.inc(x)
    skips = [h]
    for layer, push in self.down:
      h = layer((h, temb), training=True) if isinstance(layer, ResBlock) else layer(h)
      if push:
        skips.append(h)
    h = self.mid[2]((self.mid[1](self.mid[0]((h, temb), training=True)), temb), training=True)
    for layer in self.up:
      if isinstance(layer, ResBlock):
        h = layer((ops.concatenate([h, skips.pop()], -1), temb), training=True)
      else:
        h = layer(h)
    return self.out(ops.silu(self.out_norm(h)))

  def loss_value(self, image):
    T = self.spec["num_timesteps"]
    x0 = to_signed(image, self.spec["levels"])
    b = ops.shape(x0)[0]
    i = keras.random.randint((b,), 1, T + 1, seed=self.seed)
    ab = ops.take(ops.convert_to_tensor(self.ab), i)[:, None, None, None]
    eps = keras.random.normal(ops.shape(x0), seed=self.seed)
    x_t = ops.sqrt(ab) * x0 + ops.sqrt(1.0 - ab) * eps
    out = self.net(x_t, ops.cast(i, "float32") / T)
    target = eps if self.spec.get("prediction", "eps") == "eps" else ops.sqrt(ab) * eps - ops.sqrt(1.0 - ab) * x0
    return ops.mean(ops.square(out - target))


# ---------------------------------------------------------------------------------------------
# Worker

_RUNNERS: dict = {}


def build_model(spec, image):
  """The compiled Keras model, built on the batch `image` (a backend tensor of levels)."""
  fam = spec["family"]
  if fam == "cnn":
    return cnn(spec)
  cls = {"vae": VAE, "dcgan": DCGAN, "pixelcnn": PixelCNN, "ddpm": DDPM}.get(fam)
  if cls is None:
    raise ValueError(f"no Keras mirror for family {fam!r}")
  model = cls(spec)
  ema = spec.get("ema_decay") or 0.0
  model.compile(optimizer=_adam(spec, spec["lr"], ema if fam != "dcgan" else 0.0))
  model(image)
  model.optimizer.build(model.trainable_weights)
  return model


def _info(req):
  out = {"framework": f"keras-{BACKEND}", "version": keras.__version__}
  if BACKEND == "torch":
    out.update(threads=torch.get_num_threads(), backend_version=torch.__version__)
  else:
    out.update(backend_version=tf.__version__)
  return out


def _build(req):
  spec, batch = req["spec"], dict(np.load(req["data"]))
  keras.utils.set_random_seed(0)
  t0 = time.perf_counter()
  image = ops.convert_to_tensor(batch["image"].astype(np.float32))
  model = build_model(spec, image)
  label = ops.convert_to_tensor(batch["label"])
  args = (image, label) if spec["family"] == "cnn" else (image,)
  step = lambda: model.train_on_batch(*args)
  build_s = time.perf_counter() - t0
  first = _timing.timed(step)
  second = _timing.timed(step)
  threads, tried = 0, {}
  if BACKEND == "torch":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from torch_models import pick_threads
    threads, tried = pick_threads(step, req.get("threads", "auto"))
  _RUNNERS[req["id"]] = (step, threads)
  return {"build_s": build_s, "first_step_s": first, "second_step_s": second,
          "params": int(sum(math.prod(v.shape) for v in model.trainable_weights)),
          "threads": threads, "threads_tried_s": tried, "jit_compile": bool(getattr(model, "jit_compile", False))}


def _window(req):
  (step, threads), k = _RUNNERS[req["id"]], int(req["k"])
  if BACKEND == "torch" and threads:
    torch.set_num_threads(threads)

  def run():
    for _ in range(k):
      step()

  return {"seconds": _timing.timed(run)}


if __name__ == "__main__":
  _timing.serve({"info": _info, "build": _build, "window": _window})
