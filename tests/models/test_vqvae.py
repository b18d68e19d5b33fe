"""VQ-VAE + GPT prior: padding geometry, overfit, two-stage sampling, causal prior, exact resume, CLI."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import vqvae
from gdl_jax import cli
from gdl_jax.data.info import to_signed
from gdl_jax.models.vqvae import VQVAE
from gdl_jax.train import loop


def _tiny(dataset="digits", **model):
  c = vqvae.get_config("tiny", dataset)
  c.model.update(model)
  return c


def test_padding_covers_the_dataset_pixels_only():
  """28x28 padded to 32 with the background level: 8x8 codes, outputs cropped back to 28x28."""
  m = VQVAE(image_shape=(28, 28, 1), levels=256, pad_to=32, features=(4, 8), res_blocks=1,
            res_hidden=4, num_codes=8, code_dim=4)
  assert m.latent_shape == (8, 8)
  image = jax.random.randint(jax.random.key(0), (2, 28, 28, 1), 0, 256)
  v = m.init(jax.random.key(1), image)
  x = m.apply(v, image, method=m.model_input)
  assert x.shape == (2, 32, 32, 1)
  np.testing.assert_array_equal(x[:, 2:30, 2:30], to_signed(image, 256))
  assert float(jnp.max(x[:, :2])) == -1.0 and float(jnp.max(x[:, :, 30:])) == -1.0
  out = m.apply(v, image)
  assert out.recon.shape == (2, 28, 28, 1) and out.vq.indices.shape == (2, 8, 8)
  assert m.apply(v, image, out.recon, method=m.log_likelihood).shape == (2,)


def test_overfits_a_few_real_digits(digits):
  """Stage 1 on 16 digits: per-pixel MSE far below predicting their mean image (3 seeds: 0.026-0.030
  after 120 steps against a bound of 0.055)."""
  c = _tiny(features=(16,), res_hidden=16, num_codes=16, code_dim=8, dead_after=20)
  c.steps, c.vq_steps = 400, 300
  c.optimizer.lr = 3e-3
  task = vqvae.build(c, digits.info)
  batch = {"image": digits.train["image"][:16]}
  state = task.init(jax.random.key(0), batch)
  mse = []
  for _ in range(120):
    state, m = task.step(state, batch, jax.random.key(1))
    mse.append(float(m["recon_mse"]))
  x = np.asarray(to_signed(batch["image"], 17))
  baseline = float(np.mean((x - x.mean(0)) ** 2))                                # 0.274
  assert min(mse[-10:]) < 0.2 * baseline, (mse[:3], mse[-10:], baseline)
  assert float(m["usage"]) > 0.5 and int(m["stage"]) == 1


@pytest.fixture(scope="module")
def tiny_task(digits):
  c = _tiny()
  return c, vqvae.build(c, digits.info)


def test_two_stage_sampling_shapes_and_levels(tiny_task, digits):
  c, task = tiny_task
  state = task.init(jax.random.key(0), {"image": digits.train["image"][:8]})
  x = np.asarray(task.sample(state, jax.random.key(1), 5))
  assert x.shape == (5, 8, 8, 1) and x.dtype == np.int32
  assert x.min() >= 0 and x.max() < 17
  np.testing.assert_array_equal(x, np.asarray(task.sample(state, jax.random.key(1), 5)))
  lp = np.asarray(task.log_prob(state, {"image": digits.test["image"][:4]}, jax.random.key(2)))
  assert lp.shape == (4,) and np.all(lp < 0)


def test_prior_over_the_codes_is_causal(tiny_task, digits):
  """d logits_t / d position-embedding_s is zero for s > t and nonzero for s <= t (autodiff)."""
  c, task = tiny_task
  state = task.init(jax.random.key(0), {"image": digits.train["image"][:8]})
  model = vqvae.make_model(c.model, digits.info)
  h, w = model.latent_shape
  prior = vqvae.make_gpt(c.prior, int(c.model.num_codes), h * w)
  params = state.params["prior"]
  tokens = jax.random.randint(jax.random.key(3), (1, h * w), 0, int(c.model.num_codes))

  def logits(pos):
    return prior.apply({"params": {**params, "pos_embed": pos}}, tokens)[0]        # [T, V]

  jac = jax.jacrev(logits)(params["pos_embed"])                                   # [T, V, T, D]
  dep = np.abs(np.asarray(jac)).sum(axis=(1, 3)) > 0
  np.testing.assert_array_equal(dep, np.tril(np.ones((h * w, h * w), bool)))


def test_resume_across_the_stage_boundary_is_exact(tiny_task, digits, tmp_path):
  """Killed after step 1 (stage 1) and after step 3 (stage 2), resumed: the same final state."""
  c, task = tiny_task
  whole = loop.fit(task, c, digits, str(tmp_path / "whole"), progress=False, write_samples=False)
  part = str(tmp_path / "part")
  for stop in (1, 2, None):
    resumed = loop.fit(task, c, digits, part, progress=False, write_samples=False, stop_after=stop)
  assert int(resumed.step) == int(whole.step) == 4
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed), jax.device_get(whole))
  rows = loop.read_metrics(str(tmp_path / "whole"))
  stages = {r["step"]: r["stage"] for r in rows if r["split"] == "train"}
  assert stages == {2: 1.0, 4: 2.0}


def test_host_and_cond_dispatch_give_the_same_steps(digits):
  """dispatch="host" (each stage its own jitted step, the default) and "cond" (one program under
  lax.cond, slow on XLA:CPU) are the same function of (state, batch, key), across the boundary."""
  c = _tiny()
  batch = {"image": jnp.asarray(digits.train["image"][:8])}
  runs = {}
  for dispatch in ("host", "cond"):
    c.dispatch = dispatch
    task = vqvae.build(c, digits.info)
    state, rows = task.init(jax.random.PRNGKey(0), batch), []
    for i in range(4):                                                     # vq_steps = 2
      state, m = task.step(state, batch, jax.random.PRNGKey(1))
      rows.append(jax.device_get(m))
    runs[dispatch] = jax.device_get(state), rows
  (s_host, m_host), (s_cond, m_cond) = runs["host"], runs["cond"]
  assert [float(m["stage"]) for m in m_host] == [1.0, 1.0, 2.0, 2.0]
  assert [sorted(m) for m in m_host] == [sorted(m) for m in m_cond]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), s_host, s_cond)
  for a, b in zip(m_host, m_cond):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b)


def test_config_that_does_not_fit_the_data_is_refused(digits, tmp_path, capsys):
  with pytest.raises(ValueError, match=r"image_channels=3 \(RGB config\).*--config.model.image_channels=1"):
    vqvae.build(_tiny(image_channels=3), digits.info)
  with pytest.raises(ValueError, match="pad_to=4 is smaller than the images"):
    vqvae.build(_tiny(pad_to=4), digits.info)
  c = _tiny()
  c.vq_steps = c.steps
  with pytest.raises(ValueError, match="vq_steps=4 must be in"):
    vqvae.build(c, digits.info)
  c = _tiny()
  c.prior_optimizer.warmup_steps = 2
  with pytest.raises(ValueError, match="prior_optimizer.warmup_steps=2 is not shorter than its stage"):
    vqvae.build(c, digits.info)
  with pytest.raises(ValueError, match="no preset for dataset 'moons'"):
    vqvae.get_config("tiny", "moons")
  # Through the CLI: one line, exit 2, nothing written.
  wd = tmp_path / "w"
  assert cli.main(["train", "vqvae", "--dataset", "digits", "--variant", "tiny", "--workdir",
                   str(wd), "--quiet", "--config.model.image_channels=3"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("gdl-jax: error: model.image_channels=3"), err
  assert not wd.exists()


def test_cli_train_sample_evaluate_tiny(tmp_path, capsys):
  wd = str(tmp_path / "run")
  assert cli.main(["train", "vqvae", "--dataset", "digits", "--variant", "tiny", "--workdir", wd,
                   "--quiet"]) == 0
  for f in ("samples.png", "reconstructions.png", "metrics.jsonl"):
    assert os.path.exists(os.path.join(wd, f)), f
  assert cli.main(["sample", wd, "--num", "4"]) == 0
  assert os.path.exists(os.path.join(wd, "samples_seed0.png"))
  # --no_features: the classifier Fréchet distance would train the digits CNN in this session.
  assert cli.main(["evaluate", wd, "--num_samples", "16", "--no_features"]) == 0
  metrics = json.load(open(os.path.join(wd, "metrics.json")))
  assert metrics["experiment"] == "vqvae" and metrics["step"] == 4
  for k in ("bits_per_dim", "novelty_ratio"):
    assert np.isfinite(metrics[k]), k
