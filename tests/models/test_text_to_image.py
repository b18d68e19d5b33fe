"""Text-to-image diffusion: cross-attention masks padding, guidance at 0 / 1, overfit, the CLI."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdl_jax.data import captions
from gdl_jax.models.clip import TextEncoder
from gdl_jax.models.diffusion import TextToImageModel
from gdl_jax.nn.unet import UNet
from gdl_jax.objectives.diffusion import Diffusion
from gdl_jax.samplers.diffusion import guide, guided


def _unet():
  return UNet(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,))


def _random_params(init, seed, *args, **kw):
  """Params of `init`'s shapes with every weight random (the zero-initialised output convs/attention
  would hide the context): shapes by abstract evaluation and numpy draws, so neither the
  initialisers nor a random draw per shape is compiled (the invariants below hold for any params)."""
  shapes = jax.eval_shape(init, jax.random.key(0), *args, **kw)["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype), shapes)


def test_cross_attention_masks_padding_tokens():
  net = _unet()
  k1, k2 = jax.random.split(jax.random.key(0), 2)
  x, t = jax.random.normal(k1, (2, 8, 8, 1)), jnp.asarray([0.3, 0.7])
  ctx = jax.random.normal(k2, (2, 5, 6))
  mask = jnp.asarray([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], bool)
  params = _random_params(net.init, 4, x, t, context=ctx, context_mask=mask)
  apply = jax.jit(lambda c, m: net.apply({"params": params}, x, t, context=c, context_mask=m))
  out = apply(ctx, mask)
  junk = jnp.where(mask[..., None], ctx, 100.0 * jax.random.normal(k1, ctx.shape))  # padding changed
  np.testing.assert_allclose(apply(junk, mask), out, atol=1e-4)
  real = ctx.at[:, 0].add(1.0)  # a real token changed: the output follows
  assert np.abs(np.asarray(apply(real, mask) - out)).max() > 1e-2
  # every token masked (a dropped caption) is finite and ignores the context entirely
  none = jnp.zeros_like(mask)
  a, b = apply(ctx, none), apply(-ctx, none)
  assert np.isfinite(np.asarray(a)).all()
  np.testing.assert_allclose(a, b, atol=1e-4)


def test_unet_without_context_is_unchanged():
  net = _unet()
  x, t = jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,))
  plain = jax.eval_shape(net.init, jax.random.key(0), x, t)["params"]            # the tree, no compile
  with_ctx = jax.eval_shape(net.init, jax.random.key(0), x, t, context=jnp.zeros((1, 3, 4)))["params"]
  assert not any("Cross" in k for k in plain) and any("Cross" in k for k in with_ctx)
  assert set(plain) <= set(with_ctx)


def _tiny_model(vocab):
  return TextToImageModel(net=_unet(), text=TextEncoder(vocab, 16, 8, 1, 2, embed_dim=8),
                          diffusion=Diffusion(num_timesteps=50, prediction="v"))


def test_guidance_scale_0_and_1_are_the_unconditional_and_conditional_predictions():
  vocab = captions.vocabulary("digits")
  tok = captions.Tokenizer(vocab)
  model = _tiny_model(len(vocab))
  tokens = jnp.asarray(tok.encode_batch(["a seven", "the thick digit 3"]))
  x, t = jax.random.normal(jax.random.key(1), (2, 8, 8, 1)), jnp.asarray([0.2, 0.9])
  yes, no = jnp.ones((2,), bool), jnp.zeros((2,), bool)
  params = _random_params(model.init, 3, x, t, tokens, yes)
  cond_predict = model.predictor()
  run = jax.jit(cond_predict)
  cond, uncond = run(params, x, t, tokens, yes), run(params, x, t, tokens, no)
  assert np.abs(np.asarray(cond - uncond)).max() > 1e-2
  predict = guided(cond_predict)
  run_guided = jax.jit(predict)
  for scale, want in ((0.0, uncond), (1.0, cond), (3.0, uncond + 3.0 * (cond - uncond))):
    got = run_guided({"net": params, "cond": tokens, "scale": jnp.float32(scale)}, x, t)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(guide(jnp.asarray(2.0), jnp.asarray(1.0), 4.0), 5.0)
  assert guided(cond_predict) == predict  # hashable by value: one jit cache entry per model


def test_overfits_two_captioned_images(digits, test_seed):
  """Two images, two captions: the conditional loss falls well below its start, and the caption
  matters (the right caption predicts better than the swapped one)."""
  import optax
  from gdl_jax.objectives.diffusion import diffusion_loss
  vocab = captions.vocabulary("digits")
  tok = captions.Tokenizer(vocab)
  idx = [int(np.flatnonzero(digits.train["label"] == k)[0]) for k in (0, 1)]
  x = jnp.asarray(digits.train["image"][idx], jnp.float32) / 8.0 - 1.0
  tokens = jnp.asarray(tok.encode_batch(["a zero", "a one"]))
  model = _tiny_model(len(vocab))
  diff = model.diffusion
  yes = jnp.ones((2,), bool)
  # one compiled init: eagerly every initialiser op compiles on its own (this model, one process:
  # jitted 33.4 CPU-s, eager 39.1 CPU-s, the same params to the bit)
  params = jax.jit(model.init)(jax.random.key(test_seed), x, jnp.zeros((2,)), tokens, yes)["params"]
  opt = optax.adam(3e-3)
  state = opt.init(params)

  def loss(p, key, toks):
    xs, ts = jnp.tile(x, (16, 1, 1, 1)), jnp.tile(toks, (16, 1))
    return diffusion_loss(lambda a, t: model.apply({"params": p}, a, t, ts, jnp.ones((32,), bool)),
                          xs, key, diff.alpha_bars(), diff.prediction)[0]

  @jax.jit
  def step(p, s, key):
    val, g = jax.value_and_grad(loss)(p, key, tokens)
    u, s = opt.update(g, s)
    return optax.apply_updates(p, u), s, val

  eval_key = jax.random.key(99)
  loss_at = jax.jit(loss)  # one compiled forward for the three evaluations (eagerly, every op compiles)
  start = float(loss_at(params, eval_key, tokens))
  for i in range(300):
    params, state, _ = step(params, state, jax.random.fold_in(jax.random.key(test_seed), i))
  end, swapped = float(loss_at(params, eval_key, tokens)), float(loss_at(params, eval_key, tokens[::-1]))
  assert end < 0.5 * start, (start, end)
  assert end < swapped, (end, swapped)


@pytest.mark.slow  # several compiles: minutes on a loaded CPU (the default suite keeps the unit tests)
def test_cli_train_prompt_sample_and_unknown_words(tmp_path, capsys):
  from gdl_jax import cli
  wd = str(tmp_path / "t2i")
  assert cli.main(["train", "text_to_image", "--dataset", "digits_captions", "--variant", "tiny",
                   "--workdir", wd, "--quiet"]) == 0
  out = str(tmp_path / "seven.npy")
  assert cli.main(["sample", wd, "--prompt", "a thick seven", "--num", "3", "--guidance", "3",
                   "--out", str(tmp_path / "seven.png"), "--quiet"]) == 0
  assert os.path.exists(tmp_path / "seven.png")
  capsys.readouterr()
  assert cli.main(["sample", wd, "--prompt", "a purple sevn", "--num", "2", "--quiet"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "'purple'" in err and "did you mean seven" in err
  assert cli.main(["sample", wd, "--guidance", "2", "--quiet"]) == 2
  assert cli.main(["evaluate", wd, "--no_features", "--num_samples", "8", "--quiet"]) == 0
  m = json.load(open(os.path.join(wd, "metrics.json")))
  assert {"guidance_0_novelty", "guidance_3_novelty", "attribute_control"} <= set(m)
  assert m["attribute"] == "ink" and 0.0 <= m["attribute_control"] <= 1.0
  del out
