"""U-Net and diffusion model: shapes on the book's image sizes, dtypes, time embedding, the
experiment's Task end to end, and an overfit check."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdl_jax.models.diffusion import DiffusionModel
from gdl_jax.nn.unet import UNet, sinusoidal_embedding


def _shape_of(net, shape):
  """Output shape/dtype and param dtypes by abstract evaluation (no compile)."""
  x, t = jnp.zeros(shape), jnp.zeros((shape[0],))
  params = jax.eval_shape(net.init, jax.random.key(0), x, t)
  out = jax.eval_shape(net.apply, params, x, t)
  return out, {p.dtype for p in jax.tree.leaves(params)}


@pytest.mark.parametrize("shape,mults,attn", [
    ((2, 8, 8, 1), (1, 2), (1,)),
    ((2, 28, 28, 1), (1, 2, 2), (2,)),       # 28 -> 14 -> 7, attention at 7x7
    ((2, 32, 32, 3), (1, 2, 2, 2), (2, 3)),
    ((2, 28, 28, 1), (1, 2, 2, 2), (3,)),    # 28 is padded to 32 and cropped back
    ((2, 10, 6, 2), (1, 2), ()),
])
def test_unet_shapes(shape, mults, attn):
  out, _ = _shape_of(UNet(base_channels=8, channel_mults=mults, attention_levels=attn,
                          num_res_blocks=1), shape)
  assert out.shape == shape and out.dtype == jnp.float32


def test_unet_dtype_and_param_dtype():
  out, dtypes = _shape_of(UNet(base_channels=8, channel_mults=(1, 2), attention_levels=(1,), dtype=jnp.bfloat16), (2, 8, 8, 1))
  assert dtypes == {jnp.dtype(jnp.float32)} and out.dtype == jnp.float32
  _, dtypes = _shape_of(UNet(base_channels=8, channel_mults=(1, 2), attention_levels=(1,),
                             param_dtype=jnp.bfloat16),
                        (2, 8, 8, 1))
  assert dtypes == {jnp.dtype(jnp.bfloat16)}


def test_unet_errors_name_the_fix():
  with pytest.raises(ValueError, match="groups"):
    _shape_of(UNet(base_channels=12, groups=8), (1, 8, 8, 1))
  with pytest.raises(ValueError, match="attention_levels"):
    _shape_of(UNet(base_channels=8, channel_mults=(1, 2), attention_levels=(2,)), (1, 8, 8, 1))
  with pytest.raises(ValueError, match="one time per example"):
    net = UNet(base_channels=8)
    jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((2, 8, 8, 1)), jnp.zeros((3,)))


def test_sinusoidal_embedding_matches_numpy():
  t = np.array([0.0, 1.0, 17.5, 999.0], np.float32)
  got = np.asarray(sinusoidal_embedding(jnp.asarray(t), 8))
  freqs = np.exp(-math.log(10000.0) * np.arange(4) / 4)
  want = np.concatenate([np.sin(t[:, None] * freqs), np.cos(t[:, None] * freqs)], axis=1)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_time_changes_the_output_and_examples_are_independent():
  net = UNet(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=())
  x = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))
  # random params of the right shapes (a fresh U-Net's zero-initialised output layer would make
  # every output 0); numpy draws avoid compiling the initialisers
  shapes = jax.eval_shape(net.init, jax.random.key(1), x, jnp.zeros((3,)))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(0.2 * rng.standard_normal(s.shape), s.dtype), shapes)
  f = jax.jit(net.apply)
  a = f(params, x, jnp.array([0.1, 0.5, 0.9]))
  b = f(params, x, jnp.array([0.1, 0.5, 0.2]))
  np.testing.assert_allclose(a[:2], b[:2], rtol=1e-5, atol=1e-5)  # GroupNorm is per example
  assert float(jnp.max(jnp.abs(a[2] - b[2]))) > 1e-3


def test_from_config_rejects_bad_values():
  from experiments.ddpm_digits import get_config
  c = get_config("tiny")
  c.model.dtype = "float64"
  with pytest.raises(ValueError, match="model.dtype"):
    DiffusionModel.from_config(c.model, 1)
  c = get_config("tiny")
  c.model.schedule = "sigmoid"
  with pytest.raises(ValueError, match="schedule"):
    DiffusionModel.from_config(c.model, 1)


def test_experiment_task_overfits_a_batch_and_samples_levels(digits, test_seed, record_property):
  """The tiny ddpm_digits Task: the loss on one fixed batch falls, EMA tracks, samples are
  integer levels, log_prob is a finite negative bound, eval_step reports bits/dim."""
  from experiments.ddpm_digits import build, get_config
  c = get_config("tiny")
  c.steps = 300
  c.optimizer.lr, c.optimizer.warmup_steps = 3e-3, 0
  c.model.ema_decay = 0.9
  # bits/dim: the bound of the 10-step chain at all its steps (the tiny variant's 2 sampled steps
  # give an estimate whose noise alone moved the trained/untrained ratio past 0.6 for some keys)
  c.model.eval_vlb_steps = c.model.vlb_chain_steps
  task = build(c, digits.info)
  n = len(digits.train["label"])
  idx = np.arange(8) if test_seed == 0 else np.random.default_rng(test_seed).choice(n, 8, replace=False)
  batch = {k: v[idx] for k, v in digits.train.items()}
  # an rbg key: the initialisers compile ~3x faster on CPU than with threefry
  state = jax.jit(task.init)(jax.random.key(test_seed, impl="rbg"), batch)
  assert state.ema_params is not None
  key = jax.random.key(test_seed)

  def evaluate(state):  # the mean over 4 keys (32 draws of t and noise); the same keys each time
    evs = [task.eval_step(state, batch, jax.random.fold_in(key, 5 + j)) for j in range(4)]
    return {k: float(np.mean([float(e[k]) for e in evs])) for k in ("loss", "bits_per_dim")}

  ev0 = evaluate(state)
  losses = []
  for _ in range(c.steps):
    state, m = task.step(state, batch, jax.random.fold_in(key, 1))
    losses.append(float(m["loss"]))
  ev1 = evaluate(state)
  # seeds 0-2: the ratios are ~0.33 (train loss), ~0.3-0.45 (eval loss), ~0.42 (bits/dim)
  head, tail = float(np.mean(losses[:10])), float(np.mean(losses[-30:]))
  record_property("loss_mean_last30", f"{tail:.4g} < 0.6 * {head:.4g} = {0.6 * head:.4g}")
  record_property("eval_loss", f"{ev1['loss']:.4g} < 0.6 * {ev0['loss']:.4g} = {0.6 * ev0['loss']:.4g}")
  record_property("eval_bpd", f"{ev1['bits_per_dim']:.4g} < 0.6 * {ev0['bits_per_dim']:.4g} = "
                  f"{0.6 * ev0['bits_per_dim']:.4g}")
  assert tail < 0.6 * head, (losses[:10], losses[-30:])
  assert ev1["loss"] < 0.6 * ev0["loss"], (ev0, ev1)
  assert 0 < ev1["bits_per_dim"] < 0.6 * ev0["bits_per_dim"], (ev0, ev1)
  assert not np.allclose(jax.tree.leaves(state.ema_params)[0], jax.tree.leaves(state.params)[0])

  x = np.asarray(task.sample(state, jax.random.key(2), 5))
  assert x.shape == (5, 8, 8, 1) and np.issubdtype(x.dtype, np.integer)
  assert x.min() >= 0 and x.max() <= 16
  lp = np.asarray(task.log_prob(state, batch, jax.random.key(3)))
  assert lp.shape == (8,) and np.all(np.isfinite(lp)) and np.all(lp < 0)
