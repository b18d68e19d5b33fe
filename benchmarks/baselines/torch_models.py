"""PyTorch mirrors of the gdl_jax models and their train steps (eager and torch.compile).

Run as a worker by benchmarks/speed.py (`python benchmarks/baselines/torch_models.py`), one JSON
request per line (see benchmarks/_timing.py). Each `spec` is built by speed.py from the same
experiment config the JAX step uses: the same layers, widths, kernel sizes, strides, norms,
dropout, loss, Adam hyper-parameters, gradient clipping and EMA, the same batch. Differences that
do not change the work: PyTorch's default initialisation (the JAX models use Flax's), symmetric
'SAME' padding for stride 2 (Flax pads the bottom/right only) and NCHW layout (images arrive NHWC
as uint8 levels and are converted inside the step, as in JAX). torch.compile compiles the
forward + loss (and so the backward through AOTAutograd); the optimizer update stays eager.
"""

from __future__ import annotations

import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _timing  # noqa: E402  (benchmarks/_timing.py, numpy-only)


def to_signed(image_u8: torch.Tensor, levels: int) -> torch.Tensor:
  """uint8 levels [B, H, W, C] -> float [B, C, H, W] in [-1, 1]."""
  return (image_u8.float() * (2.0 / (levels - 1)) - 1.0).permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------
# Chapter 2: the CNN classifier

class CNN(nn.Module):
  """[Conv3x3 -> BN -> LeakyReLU(0.2)] x 4 (stride 2 on odd layers), Dense -> BN -> LReLU -> Dropout -> Dense."""

  def __init__(self, shape, channels, dense, dropout, num_classes):
    super().__init__()
    h, w, c = shape
    layers = []
    for i, ch in enumerate(channels):
      stride = 2 if i % 2 == 1 else 1
      layers += [nn.Conv2d(c, ch, 3, stride, padding=1), nn.BatchNorm2d(ch), nn.LeakyReLU(0.2)]
      c, h, w = ch, -(-h // stride), -(-w // stride)
    self.convs = nn.Sequential(*layers)
    self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, dense), nn.BatchNorm1d(dense),
                              nn.LeakyReLU(0.2), nn.Dropout(dropout), nn.Linear(dense, num_classes))

  def forward(self, x):
    return self.head(self.convs(x))


def cnn_loss(model, spec):
  levels = spec["levels"]

  def loss_fn(image, label):
    logits = model(to_signed(image, levels))
    return F.cross_entropy(logits, label.long())

  return loss_fn


# ---------------------------------------------------------------------------------------------
# Chapter 3: the VAE with a discretized-logistic decoder

class VAE(nn.Module):
  """Encoder: [stride-2 conv, residual conv] per stage (swish) -> Dense -> (mean, logvar);
  decoder: Dense -> Dense -> [h0, w0, F0] -> [stride-2 transposed conv, residual conv] -> pixel conv."""

  def __init__(self, shape, latent_dim, features, hidden):
    super().__init__()
    H, W, C = shape
    self.shape = shape
    enc, c, h, w = [], C, H, W
    for f in features:
      enc += [nn.Conv2d(c, f, 3, 2, padding=1), nn.Conv2d(f, f, 3, padding=1)]
      c, h, w = f, -(-h // 2), -(-w // 2)
    self.enc = nn.ModuleList(enc)
    self.enc_dense = nn.Linear(c * h * w, hidden)
    self.mean, self.logvar = nn.Linear(hidden, latent_dim), nn.Linear(hidden, latent_dim)
    rev = list(reversed(features))
    n = len(rev)
    self.h0, self.w0, self.f0 = math.ceil(H / 2 ** n), math.ceil(W / 2 ** n), rev[0]
    self.dec_dense1 = nn.Linear(latent_dim, hidden)
    self.dec_dense2 = nn.Linear(hidden, self.h0 * self.w0 * rev[0])
    dec, c = [], rev[0]
    for f in rev:
      dec += [nn.ConvTranspose2d(c, f, 3, 2, padding=1, output_padding=1), nn.Conv2d(f, f, 3, padding=1)]
      c = f
    self.dec = nn.ModuleList(dec)
    self.pixels = nn.Conv2d(c, C * 2, 3, padding=1)

  def encode(self, x):
    h = x
    for down, refine in zip(self.enc[0::2], self.enc[1::2]):
      h = F.silu(down(h))
      h = h + F.silu(refine(h))
    h = F.silu(self.enc_dense(h.flatten(1)))
    return self.mean(h), self.logvar(h)

  def decode(self, z):
    H, W, C = self.shape
    h = F.silu(self.dec_dense2(F.silu(self.dec_dense1(z))))
    h = h.view(-1, self.f0, self.h0, self.w0)
    for up, refine in zip(self.dec[0::2], self.dec[1::2]):
      h = F.silu(up(h))
      h = h + F.silu(refine(h))
    out = self.pixels(h[:, :, :H, :W])                                  # [B, 2C, H, W]
    return out[:, :C], torch.clamp(out[:, C:], min=-7.0)


def _log1mexp(x):
  x = torch.clamp(x, max=-1e-30)
  return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _log_sigmoid_diff_vae(a, b):
  flip = (a + b) > 0
  hi, lo = torch.where(flip, -b, a), torch.where(flip, -a, b)
  log_hi, log_lo = F.logsigmoid(hi), F.logsigmoid(lo)
  return log_hi + _log1mexp(log_lo - log_hi)


def discretized_logistic_log_prob(x_levels, loc, log_scale, levels):
  """As gdl_jax.objectives.vae.discretized_logistic_log_prob (x: float levels, NCHW)."""
  y = x_levels * (2.0 / (levels - 1)) - 1.0
  half = 1.0 / (levels - 1)
  inv_s = torch.exp(-log_scale)
  plus, minus = inv_s * (y - loc + half), inv_s * (y - loc - half)
  middle = _log_sigmoid_diff_vae(plus, minus)
  return torch.where(x_levels <= 0, F.logsigmoid(plus),
                     torch.where(x_levels >= levels - 1, F.logsigmoid(-minus), middle))


def vae_loss(model, spec):
  levels, dims = spec["levels"], math.prod(spec["shape"])

  def loss_fn(image, label):
    x_levels = image.float().permute(0, 3, 1, 2)
    mean, logvar = model.encode(x_levels * (2.0 / (levels - 1)) - 1.0)
    z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
    loc, log_scale = model.decode(z)
    log_px = discretized_logistic_log_prob(x_levels, loc, log_scale, levels).flatten(1).sum(1)
    kl = 0.5 * (torch.exp(logvar) + mean ** 2 - 1.0 - logvar).sum(-1)
    return -(log_px - kl).mean() / dims

  return loss_fn


# ---------------------------------------------------------------------------------------------
# Chapter 4: DCGAN

class Generator(nn.Module):
  """Dense -> [h0, w0, F0] -> BN -> LReLU -> [4x4 stride-2 transposed conv -> BN -> LReLU] -> tanh."""

  def __init__(self, shape, latent_dim, features, kernel_size, momentum):
    super().__init__()
    H, W, C = shape
    n = len(features)
    self.h0, self.w0, self.f0 = H // 2 ** n, W // 2 ** n, features[0]
    self.dense = nn.Linear(latent_dim, self.h0 * self.w0 * features[0], bias=False)
    self.bn0 = nn.BatchNorm2d(features[0], momentum=1 - momentum)
    k, p = kernel_size, (kernel_size - 1) // 2
    op = 2 + 2 * p - k  # output_padding so that output = 2 * input ('SAME')
    ups, c = [], features[0]
    for f in features[1:]:
      ups += [nn.ConvTranspose2d(c, f, k, 2, padding=p, output_padding=op, bias=False),
              nn.BatchNorm2d(f, momentum=1 - momentum), nn.LeakyReLU(0.2)]
      c = f
    ups += [nn.ConvTranspose2d(c, C, k, 2, padding=p, output_padding=op), nn.Tanh()]
    self.ups = nn.Sequential(*ups)

  def forward(self, z):
    x = self.dense(z).view(-1, self.f0, self.h0, self.w0)
    return self.ups(F.leaky_relu(self.bn0(x), 0.2))


class Discriminator(nn.Module):
  """[4x4 stride-2 conv -> (BN but on the first) -> LReLU -> Dropout] -> Dense(1)."""

  def __init__(self, shape, features, kernel_size, momentum, dropout):
    super().__init__()
    H, W, C = shape
    k, p = kernel_size, (kernel_size - 1) // 2
    layers, c, h, w = [], C, H, W
    for i, f in enumerate(features):
      layers.append(nn.Conv2d(c, f, k, 2, padding=p, bias=i == 0))
      if i > 0:
        layers.append(nn.BatchNorm2d(f, momentum=1 - momentum))
      layers += [nn.LeakyReLU(0.2), nn.Dropout(dropout)]
      c, h, w = f, h // 2, w // 2
    self.convs = nn.Sequential(*layers)
    self.out = nn.Linear(c * h * w, 1)

  def forward(self, x):
    return self.out(self.convs(x).flatten(1))[:, 0]


# ---------------------------------------------------------------------------------------------
# Chapter 5: gated PixelCNN with a discretized mixture-of-logistics head

def _gate(x):
  a, b = x.chunk(2, dim=1)
  return torch.tanh(a) * torch.sigmoid(b)


class GatedMaskedConv(nn.Module):
  """Vertical + horizontal stacks (as gdl_jax.nn.masked.GatedMaskedConv), NCHW."""

  def __init__(self, c_in, f, k, first, dropout):
    super().__init__()
    p = k // 2
    self.p, self.first = p, first
    self.v_conv = nn.Conv2d(c_in, 2 * f, (p + 1, k))
    self.h_conv = nn.Conv2d(c_in, 2 * f, (1, p + 1))
    mask = torch.ones(2 * f, c_in, 1, p + 1)
    if first:
      mask[..., -1] = 0.0
    self.register_buffer("mask", mask)
    self.v_to_h = nn.Conv2d(2 * f, 2 * f, 1)
    self.h_out = nn.Conv2d(f, f, 1)
    self.drop = nn.Dropout(dropout)

  def forward(self, v, h):
    p = self.p
    v_feat = self.v_conv(F.pad(v, (p, p, p, 0)))                        # rows <= i
    h_feat = F.conv2d(F.pad(h, (p, 0, 0, 0)), self.h_conv.weight * self.mask, self.h_conv.bias)
    shifted = F.pad(v_feat, (0, 0, 1, 0))[:, :, :-1]                     # shift down one row
    h_feat = h_feat + self.v_to_h(shifted)
    h_out = self.h_out(self.drop(_gate(h_feat)))
    return _gate(v_feat), (h_out if self.first else h_out + h)


class PixelCNN(nn.Module):
  def __init__(self, shape, features, num_layers, kernel_size, first_kernel_size, head_features,
               num_mixtures, dropout):
    super().__init__()
    c = shape[-1]
    self.layers = nn.ModuleList(
        GatedMaskedConv(c if i == 0 else features, features,
                        first_kernel_size if i == 0 else kernel_size, i == 0, dropout)
        for i in range(num_layers))
    self.head1 = nn.Conv2d(features, head_features, 1)
    self.head2 = nn.Conv2d(head_features, 3 * num_mixtures * c, 1)
    self.k = num_mixtures

  def forward(self, x):                                                  # [B, 1, H, W] in [-1, 1]
    v = h = x
    for layer in self.layers:
      v, h = layer(v, h)
    out = self.head2(F.elu(self.head1(F.elu(h))))                        # [B, 3K, H, W]
    return out.permute(0, 2, 3, 1)                                       # [B, H, W, 3K] (C = 1)


def _log_sigmoid_diff_ar(a, b):
  tiny = -1e-20
  lower = F.logsigmoid(a) + torch.log(-torch.expm1(torch.clamp(F.logsigmoid(b) - F.logsigmoid(a), max=tiny)))
  upper = F.logsigmoid(-b) + torch.log(-torch.expm1(torch.clamp(F.logsigmoid(-a) - F.logsigmoid(-b), max=tiny)))
  return torch.where(a + b > 0, upper, lower)


def mix_logistic_log_probs(out, levels, k):
  """[B, H, W, 3K] -> per-level log-probs [B, H, W, L] (gdl_jax.objectives.autoregressive)."""
  w, mu, log_s = out.split(k, dim=-1)
  centers = torch.linspace(-1.0, 1.0, levels, device=out.device)
  half = 1.0 / (levels - 1)
  inv_s = torch.exp(-torch.clamp(log_s, min=-7.0))[..., None]
  plus = (centers + half - mu[..., None]) * inv_s                       # [B, H, W, K, L]
  minus = (centers - half - mu[..., None]) * inv_s
  mid = _log_sigmoid_diff_ar(plus, minus)
  idx = torch.arange(levels, device=out.device)
  comp = torch.where(idx == 0, F.logsigmoid(plus), torch.where(idx == levels - 1, F.logsigmoid(-minus), mid))
  return torch.logsumexp(comp + F.log_softmax(w, dim=-1)[..., None], dim=-2)


def pixelcnn_loss(model, spec):
  levels, dims, k = spec["levels"], math.prod(spec["shape"]), spec["num_mixtures"]

  def loss_fn(image, label):
    lp = mix_logistic_log_probs(model(to_signed(image, levels)), levels, k)     # [B, H, W, L]
    target = image[..., 0].long()                                                # [B, H, W]
    log_p = torch.gather(lp, -1, target[..., None])[..., 0].flatten(1).sum(1)
    return -log_p.mean() / dims

  return loss_fn


# ---------------------------------------------------------------------------------------------
# Chapter 8: the DDPM U-Net

def sinusoidal_embedding(t, dim, max_period=10000.0):
  half = dim // 2
  freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
  args = t[:, None] * freqs[None]
  return torch.cat([torch.sin(args), torch.cos(args)], -1)


class ResBlock(nn.Module):
  def __init__(self, c_in, f, tdim, groups, dropout):
    super().__init__()
    self.n1, self.c1 = nn.GroupNorm(min(groups, c_in), c_in), nn.Conv2d(c_in, f, 3, padding=1)
    self.t = nn.Linear(tdim, f)
    self.n2, self.c2 = nn.GroupNorm(min(groups, f), f), nn.Conv2d(f, f, 3, padding=1)
    self.drop = nn.Dropout(dropout)
    self.skip = nn.Conv2d(c_in, f, 1) if c_in != f else nn.Identity()

  def forward(self, x, temb):
    h = self.c1(F.silu(self.n1(x)))
    h = h + self.t(F.silu(temb))[:, :, None, None]
    h = self.c2(self.drop(F.silu(self.n2(h))))
    return self.skip(x) + h


class Attention(nn.Module):
  def __init__(self, c, heads, groups):
    super().__init__()
    self.norm = nn.GroupNorm(min(groups, c), c)
    self.attn = nn.MultiheadAttention(c, heads, batch_first=True)

  def forward(self, x):
    b, c, h, w = x.shape
    y = self.norm(x).flatten(2).transpose(1, 2)                          # [B, HW, C]
    y, _ = self.attn(y, y, y, need_weights=False)
    return x + y.transpose(1, 2).reshape(b, c, h, w)


class UNet(nn.Module):
  def __init__(self, shape, base, mults, num_res_blocks, attention_levels, heads, groups, dropout):
    super().__init__()
    C = shape[-1]
    self.base, self.mults, self.nrb, self.attn_levels = base, mults, num_res_blocks, set(attention_levels)
    tdim = 4 * base
    self.t1, self.t2 = nn.Linear(base, tdim), nn.Linear(tdim, tdim)
    self.inc = nn.Conv2d(C, base, 3, padding=1)
    blk = dict(tdim=tdim, groups=groups, dropout=dropout)
    self.down, self.push, chans, c = nn.ModuleList(), [], [base], base
    for level, m in enumerate(mults):
      for _ in range(num_res_blocks):
        attn = level in self.attn_levels
        self.down.append(ResBlock(c, base * m, **blk))
        self.push.append(not attn)
        c = base * m
        if attn:
          self.down.append(Attention(c, heads, groups))
          self.push.append(True)
        chans.append(c)
      if level < len(mults) - 1:
        self.down.append(nn.Conv2d(c, c, 3, 2, padding=1))
        self.push.append(True)
        chans.append(c)
    self.mid = nn.ModuleList([ResBlock(c, c, **blk), Attention(c, heads, groups), ResBlock(c, c, **blk)])
    self.up = nn.ModuleList()
    for level, m in reversed(list(enumerate(mults))):
      for _ in range(num_res_blocks + 1):
        self.up.append(ResBlock(c + chans.pop(), base * m, **blk))
        c = base * m
        if level in self.attn_levels:
          self.up.append(Attention(c, heads, groups))
      if level > 0:
        self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.up.append(nn.Conv2d(c, c, 3, padding=1))
    self.out_norm, self.out = nn.GroupNorm(min(groups, c), c), nn.Conv2d(c, C, 3, padding=1)

  def forward(self, x, t):
    temb = self.t2(F.silu(self.t1(sinusoidal_embedding(t * 1000.0, self.base))))
    h = self.inc(x)
    skips = [h]
    for m, push in zip(self.down, self.push):
      h = m(h, temb) if isinstance(m, ResBlock) else m(h)
      if push:
        skips.append(h)
    h = self.mid[0](h, temb)
    h = self.mid[1](h)
    h = self.mid[2](h, temb)
    for m in self.up:
      if isinstance(m, ResBlock):
        h = m(torch.cat([h, skips.pop()], 1), temb)
      else:
        h = m(h)
    return self.out(F.silu(self.out_norm(h)))


def cosine_alpha_bars(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  f = lambda t: np.cos((t + s) / (1 + s) * np.pi / 2) ** 2
  t = np.arange(num_steps + 1) / num_steps
  ab = f(t) / f(0.0)
  betas = np.clip(1 - ab[1:] / ab[:-1], 0, max_beta)
  return np.concatenate([[1.0], np.cumprod(1 - betas)]).astype(np.float32)


def ddpm_loss(model, spec):
  levels, T = spec["levels"], spec["num_timesteps"]
  ab_table = torch.from_numpy(cosine_alpha_bars(T))

  def loss_fn(image, label):
    x0 = to_signed(image, levels)
    i = torch.randint(1, T + 1, (x0.shape[0],))
    ab = ab_table[i][:, None, None, None]
    eps = torch.randn_like(x0)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    target = eps if spec.get("prediction", "eps") == "eps" else ab.sqrt() * eps - (1 - ab).sqrt() * x0
    return F.mse_loss(model(x_t, i.float() / T), target)

  return loss_fn


# ---------------------------------------------------------------------------------------------
# Train steps

def _count(params) -> int:
  return int(sum(p.numel() for p in params))


def _adam(params, spec, lr):
  return torch.optim.Adam(params, lr=lr, betas=(spec["b1"], spec["b2"]), eps=spec["eps"])


def _single_model(spec):
  """(module, loss builder) of a one-player family."""
  fam, shape = spec["family"], spec["shape"]
  if fam == "cnn":
    return CNN(shape, spec["channels"], spec["dense"], spec["dropout"], spec["num_classes"]), cnn_loss
  if fam == "vae":
    return VAE(shape, spec["latent_dim"], spec["features"], spec["hidden"]), vae_loss
  if fam == "pixelcnn":
    return PixelCNN(shape, spec["features"], spec["num_layers"], spec["kernel_size"],
                    spec["first_kernel_size"], spec["head_features"], spec["num_mixtures"],
                    spec["dropout"]), pixelcnn_loss
  if fam == "ddpm":
    return UNet(shape, spec["base_channels"], spec["channel_mults"], spec["num_res_blocks"],
                spec["attention_levels"], spec["num_heads"], spec["groups"], spec["dropout"]), ddpm_loss
  raise ValueError(f"no PyTorch mirror for family {fam!r}")


def build_step(spec: dict, batch: dict, compiled: bool):
  """-> (step() running one full train step on the fixed batch, number of parameters)."""
  torch.manual_seed(0)
  image, label = torch.from_numpy(batch["image"]), torch.from_numpy(batch["label"])
  decay, clip = spec.get("ema_decay") or 0.0, spec.get("clip_norm") or 0.0
  # dynamic=False: one static graph per model; automatic dynamic shapes (the same loss code seen
  # again with another model's shapes) hits an inductor error on this version.
  maybe_compile = (lambda f: torch.compile(f, dynamic=False)) if compiled else (lambda f: f)
  if spec["family"] == "dcgan":
    return _gan_step(spec, image, maybe_compile)
  model, loss_builder = _single_model(spec)
  model.train()
  params = list(model.parameters())
  loss_fn = maybe_compile(loss_builder(model, spec))
  opt = _adam(params, spec, spec["lr"])
  ema = [p.detach().clone() for p in params] if decay else None

  def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(image, label)
    loss.backward()
    if clip:
      torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    if ema is not None:
      with torch.no_grad():
        torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - decay)
    return loss

  return step, _count(params)


def _gan_step(spec, image, maybe_compile):
  """One critic update then one generator update (as gdl_jax.objectives.gan_step, n_critic=1)."""
  shape, zdim, levels = spec["shape"], spec["latent_dim"], spec["levels"]
  G = Generator(shape, zdim, spec["gen_features"], spec["kernel_size"], spec["bn_momentum"]).train()
  D = Discriminator(shape, spec["disc_features"], spec["kernel_size"], spec["bn_momentum"],
                    spec["dropout"]).train()
  opt_g = _adam(list(G.parameters()), spec, spec["lr"])
  opt_d = _adam(list(D.parameters()), spec, spec["lr"] * spec.get("disc_lr_mult", 1.0))
  noise, decay, b = spec.get("label_noise", 0.0), spec.get("ema_decay") or 0.0, image.shape[0]
  g_params = list(G.parameters())
  ema = [p.detach().clone() for p in g_params] if decay else None

  def d_loss(x_u8, z):
    x = to_signed(x_u8, levels)
    with torch.no_grad():
      fake = G(z)
    real_out, fake_out = D(x), D(fake)
    real_t = 1.0 - noise * torch.rand_like(real_out)
    fake_t = noise * torch.rand_like(fake_out)
    return (F.binary_cross_entropy_with_logits(real_out, real_t)
            + F.binary_cross_entropy_with_logits(fake_out, fake_t))

  def g_loss(z):
    return F.softplus(-D(G(z))).mean()

  d_loss, g_loss = maybe_compile(d_loss), maybe_compile(g_loss)

  def step():
    opt_d.zero_grad(set_to_none=True)
    d_loss(image, torch.randn(b, zdim)).backward()
    opt_d.step()
    D.requires_grad_(False)  # the generator update needs D's input gradients only
    opt_g.zero_grad(set_to_none=True)
    loss = g_loss(torch.randn(b, zdim))
    loss.backward()
    opt_g.step()
    D.requires_grad_(True)
    if ema is not None:
      with torch.no_grad():
        torch._foreach_lerp_(ema, [p.detach() for p in g_params], 1.0 - decay)
    return loss

  return step, _count(g_params) + _count(D.parameters())


# ---------------------------------------------------------------------------------------------
# Worker

_RUNNERS: dict = {}


def _info(req):
  return {"framework": "torch", "version": torch.__version__, "threads": torch.get_num_threads(),
          "mkldnn": bool(torch.backends.mkldnn.is_available())}


def pick_threads(step, setting) -> tuple[int, dict]:
  """The intra-op thread count to time with: `setting` (an int) or "auto" = the faster of 1 and all cores.

  On a loaded shared machine PyTorch's OpenMP barriers can make 2 threads far slower than 1,
  so "auto" gives the baseline its best case; the choice is reported with the results.
  """
  cores = os.cpu_count() or 1
  if setting != "auto":
    torch.set_num_threads(int(setting))
    return int(setting), {}
  tried = {}
  for n in sorted({1, cores}):
    torch.set_num_threads(n)
    step()
    tried[n] = min(_timing.timed(step) for _ in range(3))
  best = min(tried, key=tried.get)
  torch.set_num_threads(best)
  return best, {str(n): t for n, t in tried.items()}


def _build(req):
  batch = dict(np.load(req["data"]))
  t0 = time.perf_counter()
  step, n = build_step(req["spec"], batch, req.get("variant") == "compile")
  build_s = time.perf_counter() - t0
  first = _timing.timed(step)   # torch.compile: tracing + inductor compile of fwd and bwd
  second = _timing.timed(step)  # a recompile here (e.g. requires_grad guards) is part of warm-up
  threads, tried = pick_threads(step, req.get("threads", "auto"))
  _RUNNERS[req["id"]] = (step, threads)
  return {"build_s": build_s, "first_step_s": first, "second_step_s": second, "params": n,
          "threads": threads, "threads_tried_s": tried}


def _window(req):
  (step, threads), k = _RUNNERS[req["id"]], int(req["k"])
  torch.set_num_threads(threads)

  def run():
    for _ in range(k):
      step()

  return {"seconds": _timing.timed(run)}


def _conv_probe(req):
  """Forward + backward of one conv layer (NCHW, as PyTorch users write it): seconds per call."""
  n, h, w, cin, cout, k, s = (int(req[x]) for x in ("n", "h", "w", "cin", "cout", "k", "stride"))
  torch.set_num_threads(int(req.get("threads", torch.get_num_threads())))
  if req.get("transpose"):  # 'SAME' transposed conv: output = stride * input
    p = (k - 1) // 2
    conv = nn.ConvTranspose2d(cin, cout, k, s, padding=p, output_padding=s + 2 * p - k)
  else:
    conv = nn.Conv2d(cin, cout, k, s, padding=k // 2)
  x = torch.randn(n, cin, h, w, requires_grad=True)

  def call():
    conv.zero_grad(set_to_none=True)
    x.grad = None
    conv(x).square().mean().backward()

  call()
  reps = int(req.get("reps", 20))
  return {"seconds": _timing.timed(lambda: [call() for _ in range(reps)]) / reps}


def _matmul(req):
  n = int(req.get("n", 2048))
  a, b = torch.randn(n, n), torch.randn(n, n)
  a @ b
  times = [_timing.timed(lambda: a @ b) for _ in range(int(req.get("repeats", 7)))]
  t = float(np.median(times))
  return {"gflops": 2.0 * n ** 3 / t / 1e9}


if __name__ == "__main__":
  _timing.serve({"info": _info, "build": _build, "window": _window, "conv_probe": _conv_probe,
                 "matmul": _matmul})
