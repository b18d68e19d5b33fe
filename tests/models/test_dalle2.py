"""DALL-E 2 (experiments/dalle2.py, gdl_jax/models/dalle2.py): the prior's x0 objective by hand,
guidance at 0 / 1 for both stages, the dropped embedding is ignored, both stages overfit real
digits_captions images, bad input (no CLIP run, a run of another experiment, unknown words)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdl_jax.configs import ConfigError, RunDir
from gdl_jax.models.dalle2 import DiffusionPrior, EmbeddingDecoder
from gdl_jax.models.diffusion import ConditionalPredictor
from gdl_jax.nn.unet import UNet
from gdl_jax.objectives.diffusion import Diffusion, diffusion_loss, predict_x0_eps, q_sample
from gdl_jax.samplers.diffusion import guided


def _random_params(init, seed, *args):
  """Every weight random (zero-initialised layers would hide the condition); shapes abstractly."""
  shapes = jax.eval_shape(init, jax.random.key(0), *args)["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype), shapes)


def _decoder():
  return EmbeddingDecoder(net=UNet(base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                                   attention_levels=(1,)), num_tokens=2, token_dim=8,
                          diffusion=Diffusion(num_timesteps=50, prediction="v"))


def test_prior_x0_objective_matches_a_hand_computation():
  """diffusion_loss(prediction="x0") is |net(x_i, i/T) - x0|^2 with the same (i, eps) draws, and the
  x0 parameterisation's implied eps puts x_t back together exactly."""
  prior = DiffusionPrior(embed_dim=6, hidden=16, depth=1)
  x0 = jax.random.normal(jax.random.key(0), (5, 6))
  text = jax.random.normal(jax.random.key(1), (5, 6))
  use = jnp.asarray([True, False, True, True, False])
  params = _random_params(prior.init, 2, x0, jnp.zeros((5,)), text, use)
  ab = prior.diffusion.alpha_bars()
  denoise = lambda z, t: prior.apply({"params": params}, z, t, text, use)
  key = jax.random.key(3)
  loss, metrics = jax.jit(lambda k: diffusion_loss(denoise, x0, k, ab, "x0", clip_x0=False))(key)
  # by hand: the same draws as diffusion_loss (key -> (k_t, k_eps); i ~ U{1..T})
  k_t, k_eps = jax.random.split(key)
  i = np.asarray(jax.random.randint(k_t, (5,), 1, 1001))
  eps = np.asarray(jax.random.normal(k_eps, (5, 6)))
  a = np.asarray(ab)[i][:, None]
  x_t = np.sqrt(a) * np.asarray(x0) + np.sqrt(1 - a) * eps
  out = np.asarray(denoise(jnp.asarray(x_t, jnp.float32), jnp.asarray(i / 1000.0, jnp.float32)))
  assert out.shape == (5, 6)
  np.testing.assert_allclose(float(loss), np.mean((out - np.asarray(x0)) ** 2), rtol=1e-4)
  np.testing.assert_allclose(float(metrics["mse_x0"]), float(loss), rtol=1e-5)  # x0 is the output
  x0_hat, eps_hat = predict_x0_eps(jnp.asarray(out), jnp.asarray(x_t), jnp.asarray(a[:, 0]), "x0")
  np.testing.assert_allclose(q_sample(x0_hat, jnp.asarray(a[:, 0]), eps_hat), x_t, atol=1e-4)
  with pytest.raises(ValueError, match=r"DiffusionPrior expects"):
    prior.apply({"params": params}, x0[:, :4], jnp.zeros((5,)), text[:, :4], use)


def test_guidance_0_and_1_are_unconditional_and_conditional_for_both_stages():
  e = jax.random.normal(jax.random.key(1), (2, 6))
  t = jnp.asarray([0.2, 0.9])
  yes, no = jnp.ones((2,), bool), jnp.zeros((2,), bool)
  prior, dec = DiffusionPrior(embed_dim=6, hidden=16, depth=1), _decoder()
  x = jax.random.normal(jax.random.key(2), (2, 8, 8, 1))
  cases = ((prior, _random_params(prior.init, 4, e, t, e, yes), jax.random.normal(jax.random.key(5), (2, 6))),
           (dec, _random_params(dec.init, 5, x, t, e, yes), x))
  for module, params, z in cases:
    cond_predict = ConditionalPredictor(module)
    run = jax.jit(cond_predict)
    cond, uncond = run(params, z, t, e, yes), run(params, z, t, e, no)
    assert np.abs(np.asarray(cond - uncond)).max() > 1e-2
    # dropped: the condition's value no longer matters
    np.testing.assert_allclose(run(params, z, t, -3.0 * e, no), uncond, atol=1e-5)
    run_guided = jax.jit(guided(cond_predict))
    for scale, want in ((0.0, uncond), (1.0, cond), (2.5, uncond + 2.5 * (cond - uncond))):
      got = run_guided({"net": params, "cond": e, "scale": jnp.float32(scale)}, z, t)
      np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def digits_captions():
  from gdl_jax import data
  return data.load("digits_captions")


def _tiny(**kw):
  from experiments import dalle2
  c = dalle2.get_config("tiny", "digits_captions")
  c.update(kw)
  return c


def test_prior_overfits_two_real_captioned_images(digits_captions, test_seed):
  """The prior alone on the (random tiny) CLIP embeddings of two real digits_captions images and
  their captions: its x0 loss falls well below the start, and each caption's text embedding
  predicts its own image's embedding better than the other caption's does."""
  import optax
  from experiments import dalle2
  from gdl_jax.data.info import to_signed
  from gdl_jax.models.clip import CLIP
  ds = digits_captions
  clip_model, clip_params = dalle2.load_clip(_tiny(), ds.info)
  idx = [int(np.flatnonzero(ds.train["label"] == k)[0]) for k in (0, 1)]
  img = clip_model.apply({"params": clip_params}, to_signed(jnp.asarray(ds.train["image"][idx]), ds.info.levels),
                         method=CLIP.encode_image)
  txt = clip_model.apply({"params": clip_params}, jnp.asarray(ds.train["caption"][idx, 0]),
                         method=CLIP.encode_text)
  e = img.shape[-1]
  img, txt = img * np.sqrt(e), txt * np.sqrt(e)
  prior = DiffusionPrior(embed_dim=e, hidden=32, depth=1,
                         diffusion=Diffusion(num_timesteps=100, prediction="x0"))
  ab = prior.diffusion.alpha_bars()
  use = jnp.ones((32,), bool)
  x0s = jnp.tile(img, (16, 1))
  params = jax.jit(prior.init)(jax.random.key(test_seed), x0s, jnp.zeros((32,)), x0s, use)["params"]
  opt = optax.adam(3e-3)
  state = opt.init(params)

  def loss(p, key, t):
    return diffusion_loss(lambda z, s: prior.apply({"params": p}, z, s, jnp.tile(t, (16, 1)), use),
                          x0s, key, ab, "x0", clip_x0=False)[0]

  @jax.jit
  def step(p, s, key):
    val, g = jax.value_and_grad(loss)(p, key, txt)
    u, s = opt.update(g, s)
    return optax.apply_updates(p, u), s, val

  loss_at = jax.jit(loss)
  start = float(loss_at(params, jax.random.key(99), txt))
  for i in range(300):
    params, state, _ = step(params, state, jax.random.fold_in(jax.random.key(test_seed), i))
  end, swapped = float(loss_at(params, jax.random.key(99), txt)), float(loss_at(params, jax.random.key(99), txt[::-1]))
  assert end < 0.5 * start, (start, end)
  assert end < swapped, (end, swapped)


@pytest.mark.slow  # the experiment's whole train step (CLIP, prior, U-Net): minutes on a loaded CPU
def test_both_stages_overfit_two_real_images(digits_captions, test_seed):
  """The experiment's own train step on two digits_captions images (a zero and a one, two captions
  each): the prior's and the decoder's held-out-style losses both fall well below their start; the
  prior maps each caption's CLIP text embedding towards its own image's embedding."""
  from experiments import dalle2
  ds = digits_captions
  idx = [int(np.flatnonzero(ds.train["label"] == k)[0]) for k in (0, 1)] * 4
  batch = {"image": jnp.asarray(ds.train["image"][idx]), "caption": jnp.asarray(ds.train["caption"][idx, :2]),
           "label": jnp.asarray(ds.train["label"][idx])}
  c = _tiny()
  c.optimizer.update(lr=3e-3, warmup_steps=0, schedule="constant")
  c.model.update(p_uncond=0.0, ema_decay=0.0)
  c.prior.update(p_uncond=0.0)
  c.steps = 200
  task = dalle2.build(c, ds.info)
  key = jax.random.key(test_seed)
  state = task.init(key, batch)
  ev = lambda s: task.eval_step(s, batch, jax.random.key(99))  # caption[:, 0], conditions kept
  start = ev(state)
  for _ in range(150):
    state, _ = task.step(state, batch, key)
  end = ev(state)
  for name in ("prior_loss", "decoder_loss"):
    assert float(end[name]) < 0.5 * float(start[name]), (name, start[name], end[name])


def test_missing_or_wrong_clip_run_and_unknown_words_are_one_clear_error(digits_captions, tmp_path):
  from experiments import dalle2
  from gdl_jax.data.captions import CaptionError
  info = digits_captions.info
  c = _tiny(clip_random=False)
  with pytest.raises(ConfigError, match=r"--config\.clip_run=RUNDIR.*gdl-jax train clip --dataset digits_captions"):
    dalle2.check(c, info)
  other = tmp_path / "vae_run"
  (other / "checkpoints").mkdir(parents=True)
  (other / "run.json").write_text(json.dumps({"experiment": "vae_digits"}))
  problem = RunDir("clip").problem(str(other))
  assert "is a run of 'vae_digits'" in problem and "gdl-jax train clip" in problem
  assert "no readable run.json" in RunDir("clip").problem(str(tmp_path / "nothing"))
  assert RunDir("clip").problem("") is None
  clip_run = tmp_path / "clip_run"
  (clip_run / "checkpoints").mkdir(parents=True)
  (clip_run / "run.json").write_text(json.dumps({"experiment": "clip"}))
  (clip_run / "config.json").write_text(json.dumps({"dataset": "fashion_mnist_captions"}))
  assert RunDir("clip").problem(str(clip_run)) is None
  with pytest.raises(ConfigError, match=r"trained on 'fashion_mnist_captions', not on 'digits_captions'"):
    dalle2.check(_tiny(clip_run=str(clip_run)), info)
  task = dalle2.build(_tiny(), info)  # clip_random: a random CLIP, enough to reach the tokenizer
  with pytest.raises(CaptionError, match=r"'purple'"):
    task.sample_prompt(None, jax.random.key(0), ["a purple seven"])


@pytest.mark.slow  # several compiles (train, eval, two guided samplers): minutes on a loaded CPU
def test_cli_clip_then_dalle2_train_prompt_sample_evaluate(tmp_path, capsys):
  """A 4-step CLIP run, a 4-step dalle2 run on it (the checkpoint restores), `sample --prompt`,
  unknown words as one line, `evaluate` with the prior's cosine metrics."""
  from gdl_jax import cli
  clip_wd, wd = str(tmp_path / "clip"), str(tmp_path / "dalle2")
  assert cli.main(["train", "clip", "--dataset", "digits_captions", "--variant", "tiny", "--workdir", clip_wd,
                   "--quiet"]) == 0
  assert cli.main(["train", "dalle2", "--dataset", "digits_captions", "--variant", "tiny", "--workdir", wd,
                   f"--config.clip_run={clip_wd}", "--config.clip_random=False", "--quiet"]) == 0
  for f in ("samples.png", "samples_prompts.png", "variations.png"):
    assert os.path.exists(os.path.join(wd, f)), f
  assert cli.main(["sample", wd, "--prompt", "a seven", "--num", "3", "--guidance", "3",
                   "--out", str(tmp_path / "seven.png"), "--quiet"]) == 0
  assert os.path.exists(tmp_path / "seven.png")
  capsys.readouterr()
  assert cli.main(["sample", wd, "--prompt", "a purple sevn", "--num", "2", "--quiet"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "'purple'" in err
  assert cli.main(["evaluate", wd, "--no_features", "--num_samples", "8", "--quiet"]) == 0
  m = json.load(open(os.path.join(wd, "metrics.json")))
  assert {"prior_cosine", "prior_cosine_no_prior", "prior_cosine_chance", "guidance_3_novelty"} <= set(m)
  assert -1.0 <= m["prior_cosine"] <= 1.0
  capsys.readouterr()
  assert cli.main(["train", "dalle2", "--dataset", "digits_captions", "--workdir", str(tmp_path / "x"),
                   "--check"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "gdl-jax train clip" in err
