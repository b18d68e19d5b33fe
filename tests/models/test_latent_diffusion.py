"""Latent diffusion: autoencoder shapes, the scale factor, the round trip after an overfit, the
sampling FLOP count, two-stage sampling, bad geometry -> one clear error."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import latent_diffusion as ld
from gdl_jax.configs import ConfigError
from gdl_jax.data.info import to_signed
from gdl_jax.evaluation.flops import compiled_flops
from gdl_jax.models.latent_diffusion import KLAutoencoder, latent_geometry


def test_autoencoder_shapes():
  ae = KLAutoencoder(image_shape=(8, 8, 1), levels=17, features=(4,), res_blocks=1, res_hidden=4,
                     latent_channels=3)
  assert ae.latent_shape == (4, 4, 3)
  image = jax.random.randint(jax.random.key(0), (2, 8, 8, 1), 0, 17)
  v = ae.init(jax.random.key(1), image, jax.random.key(2))
  out = ae.apply(v, image, jax.random.key(3))
  assert out.posterior.mean.shape == out.posterior.logvar.shape == out.z.shape == (2, 4, 4, 3)
  assert out.recon.shape == (2, 8, 8, 1)
  assert np.all(np.asarray(out.posterior.logvar) >= -30.0)
  x = ae.apply(v, out.posterior.mean, method=ae.decode)
  assert x.shape == (2, 8, 8, 1)
  with pytest.raises(ValueError, match=r"decodes latents \(4, 4, 3\)"):
    ae.apply(v, jnp.zeros((2, 2, 2, 3)), method=ae.decode)


def test_latent_that_does_not_divide_the_image_is_one_clear_error(digits):
  assert latent_geometry((28, 28, 1), 2) == (7, 7)
  with pytest.raises(ValueError, match=r"28x28 are not divisible by 2\^len\(autoencoder.features\) = 8"):
    latent_geometry((28, 28, 1), 3)
  c = ld.get_config("tiny")
  c.autoencoder.features = (4, 8, 8, 8)  # 8x8 digits / 16
  with pytest.raises(ConfigError, match=r"8x8 are not divisible by .* = 16"):
    ld.build(c, digits.info)
  c = ld.get_config("tiny")
  c.ae_steps = 4
  with pytest.raises(ConfigError, match=r"ae_steps=4 must be in \[1, steps=4\)"):
    ld.build(c, digits.info)


def test_sampling_flops_are_counted_and_the_latent_ones_are_fewer(digits):
  """XLA's count: positive, steps x one step + the decode, and (tiny config, equal steps) below the pixel DDPM's."""
  c = ld.get_config("tiny")
  f = ld.sampling_flops(c, digits.info, 5)
  assert f["sampling_flops_denoiser_step"] > 0 and f["sampling_flops_decode"] > 0
  np.testing.assert_allclose(f["sampling_flops"],
                             5 * f["sampling_flops_denoiser_step"] + f["sampling_flops_decode"])
  assert f["pixel_ddpm_sampling_flops"] > f["sampling_flops"]
  assert 0 < f["flops_ratio_vs_pixel_ddpm"] < 1
  # the counter itself, against a matmul's 2 m n k
  a, b = jax.ShapeDtypeStruct((8, 16), jnp.float32), jax.ShapeDtypeStruct((16, 32), jnp.float32)
  assert compiled_flops(jnp.matmul, a, b) == 2 * 8 * 16 * 32


@pytest.fixture(scope="module")
def tiny_task(digits):
  c = ld.get_config("tiny")
  return c, ld.build(c, digits.info)


@pytest.mark.slow  # compiles both stages, the sampler and eval_step: ~3/4 of this file's time
def test_two_stages_scale_factor_and_sampling(tiny_task, digits):
  """Stage 1 then stage 2 by state.step; the scale is 1/std of the first stage-2 batch's latents
  (recomputed here from the same key), then frozen; samples are levels of the image shape."""
  c, task = tiny_task
  batch = {"image": jnp.asarray(digits.train["image"][:8])}
  state = task.init(jax.random.key(0), batch)
  key = jax.random.key(1)
  stages = []
  for i in range(4):                                                       # ae_steps = 2
    if i == 2:
      ae = ld.make_autoencoder(c.autoencoder, digits.info)
      k_z = jax.random.split(jax.random.fold_in(key, 2))[0]
      z = ae.apply({"params": state.params["autoencoder"]}, batch["image"], k_z).z
      want = 1.0 / float(jnp.std(z))
    state, m = task.step(state, batch, key)
    stages.append(float(m["stage"]))
    if i >= 2:
      np.testing.assert_allclose(float(state.extra["latent_scale"]), want, rtol=1e-5)
  assert stages == [1.0, 1.0, 2.0, 2.0]
  x = np.asarray(task.sample(state, jax.random.key(2), 3))
  assert x.shape == (3, 8, 8, 1) and x.dtype == np.int32 and x.min() >= 0 and x.max() < 17
  ev = task.eval_step(state, batch, jax.random.key(3))
  assert np.isfinite(float(ev["diffusion_loss"])) and np.isfinite(float(ev["recon_mse"]))


def test_autoencoder_overfits_and_round_trips(digits, test_seed, record_property):
  """Stage 1 on 16 digits: decode(encode(x)) (posterior mean) far below predicting the mean image."""
  c = ld.get_config("tiny")
  c.autoencoder.update(features=(16,), res_hidden=16, latent_channels=4)
  c.steps, c.ae_steps = 400, 300
  c.optimizer.lr = 3e-3
  task = ld.build(c, digits.info)
  batch = {"image": jnp.asarray(digits.train["image"][:16])}
  state = task.init(jax.random.key(test_seed), batch)
  for _ in range(120):
    state, m = task.step(state, batch, jax.random.key(1))
  ae = ld.make_autoencoder(c.autoencoder, digits.info)
  v = {"params": state.params["autoencoder"]}
  recon = ae.apply(v, ae.apply(v, batch["image"], method=ae.encode).mean, method=ae.decode)
  x = np.asarray(to_signed(batch["image"], 17))
  mse, baseline = float(np.mean((np.asarray(recon) - x) ** 2)), float(np.mean((x - x.mean(0)) ** 2))
  record_property("round_trip_mse", mse)
  record_property("threshold", 0.2 * baseline)
  assert mse < 0.2 * baseline, (mse, baseline)


@pytest.mark.slow
def test_cli_train_sample_evaluate_tiny(tmp_path):
  import json
  import os
  from gdl_jax import cli
  wd = str(tmp_path / "run")
  assert cli.main(["train", "latent_diffusion", "--variant", "tiny", "--workdir", wd, "--quiet"]) == 0
  for f in ("samples.png", "reconstructions.png", "metrics.jsonl"):
    assert os.path.exists(os.path.join(wd, f)), f
  assert cli.main(["sample", wd, "--num", "4"]) == 0
  assert cli.main(["evaluate", wd, "--num_samples", "16", "--no_features"]) == 0
  metrics = json.load(open(os.path.join(wd, "metrics.json")))
  assert metrics["experiment"] == "latent_diffusion" and metrics["step"] == 4
  assert 0 < metrics["flops_ratio_vs_pixel_ddpm"] < 1 and np.isfinite(metrics["novelty_ratio"])
