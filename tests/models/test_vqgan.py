"""VQ-GAN (experiments/vqgan.py over experiments/vqvae.py): Esser et al.'s adaptive weight against
autodiff of the two losses, the critic's disc_start switch, the PatchGAN grid, LPIPS at a perfect
reconstruction, a tiny CLI run on photo_crops, and refused configs."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import vqgan, vqvae
from gdl_jax import cli, data
from gdl_jax.configs import ConfigError
from gdl_jax.data.info import to_signed
from gdl_jax.models.patchgan import PatchDiscriminator
from gdl_jax.nn import vgg
from gdl_jax.objectives import vqgan as L

needs_lpips = pytest.mark.skipif(not vgg.available(), reason=f"needs the perceptual extra: {vgg.INSTALL_HINT}")


@pytest.fixture(scope="module")
def photos():
  return data.load("photo_crops")


def _config(**gan):
  c = vqgan.get_config("tiny", "photo_crops")
  c.gan.update(gan)
  return c


def _batch(photos, n=8):
  return {"image": photos.train["image"][:n]}


def _host(tree):
  return jax.tree.map(np.array, jax.device_get(tree))


def test_patchgan_emits_one_logit_per_patch():
  for hw, features, grid in (((28, 28), (4, 8), (7, 7)), ((30, 18), (4, 8, 8), (4, 3))):
    disc = PatchDiscriminator(features)
    x = jnp.zeros((2, *hw, 3))
    out = disc.apply(disc.init(jax.random.PRNGKey(0), x), x)
    assert out.shape == (2, *grid), (hw, features, out.shape)
  with pytest.raises(ValueError, match="NHWC"):
    disc.apply(disc.init(jax.random.PRNGKey(0), x), x[0])


def test_gan_losses_against_their_formulas():
  real, fake = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4, 4)) * 2
  r, f = np.asarray(real, np.float64), np.asarray(fake, np.float64)
  np.testing.assert_allclose(L.disc_loss(real, fake, "hinge"),
                             0.5 * (np.maximum(0, 1 - r).mean() + np.maximum(0, 1 + f).mean()), rtol=1e-6)
  np.testing.assert_allclose(L.disc_loss(real, fake, "non_saturating"),
                             0.5 * (np.log1p(np.exp(-r)).mean() + np.log1p(np.exp(f)).mean()), rtol=1e-6)
  np.testing.assert_allclose(L.gen_loss(fake, "hinge"), -f.mean(), rtol=1e-6)
  np.testing.assert_allclose(L.gen_loss(fake, "non_saturating"), -np.log(1 / (1 + np.exp(-f))).mean(),
                             rtol=1e-6)
  a, b = np.full((3, 3), 3.0), np.full((3, 3), 1e-9)
  assert float(L.adaptive_weight(a, b)) == 1e4                      # clipped
  assert float(L.adaptive_weight(np.zeros(3), np.ones(3))) == 0.0
  with pytest.raises(ValueError, match="unknown GAN loss 'wgan'"):
    L.gen_loss(fake, "wgan")


@needs_lpips
def test_adaptive_weight_matches_autodiff_at_the_last_layer(photos):
  """lambda reported by the step = ||d L_rec / d K|| / (||d L_adv / d K|| + 1e-4), K the decoder's
  to_pixels kernel, L_rec = MSE + lpips_weight * LPIPS: both gradients by jax.grad of the losses
  recomputed from scratch, norms in numpy (float64)."""
  from gdl_jax.objectives.perceptual import load_lpips_params, lpips
  c = _config(lpips_weight=0.7)
  task = vqgan.build(c, photos.info)
  batch = _batch(photos, 4)
  state = task.init(jax.random.PRNGKey(3), batch)
  host = _host(state)
  _, metrics = task.step(state, batch, jax.random.PRNGKey(4))
  model, disc = vqvae.make_model(c.model, photos.info), PatchDiscriminator(tuple(c.gan.disc_features))
  target = to_signed(batch["image"], 256)
  variables = lambda p: {"params": p, "vq": host.extra["vq"]}
  lp = load_lpips_params()

  def rec(p):
    r = model.apply(variables(p), batch["image"]).recon
    return jnp.mean((r - target) ** 2) + 0.7 * jnp.mean(lpips(lp, r, target))

  def adv(p):
    r = model.apply(variables(p), batch["image"]).recon
    return -jnp.mean(disc.apply({"params": host.params["disc"]}, r))

  last = lambda f: lambda p: jax.grad(f)(p)["decoder"]["to_pixels"]["kernel"]
  grads = jax.jit(lambda p: (last(rec)(p), last(adv)(p)))(host.params["vqvae"])
  norms = [np.linalg.norm(np.asarray(g, np.float64)) for g in grads]
  expected = min(max(norms[0] / (norms[1] + 1e-4), 0.0), 1e4)
  assert norms[1] > 0 and 1e-3 < expected < 1e3
  np.testing.assert_allclose(float(metrics["adaptive_weight"]), expected, rtol=2e-4)


def test_critic_is_off_before_disc_start_and_on_after(photos):
  """Two runs of one task that differ only in the critic's initial params: before disc_start the
  generator's update is the same bit for bit (the adversarial term adds exactly nothing) and the
  critic and its optimizer state stay put; from disc_start the generators part and the critics move."""
  batch = _batch(photos)
  task = vqgan.build(_config(weight=1.0, lpips_weight=0.0, disc_start=1), photos.info)
  first = _host(task.init(jax.random.PRNGKey(0), batch))
  other = task.init(jax.random.PRNGKey(1), batch).params["disc"]
  second = first.replace(params={**first.params, "disc": _host(other)})
  runs = []
  for start in (first, second):
    state, states, metrics = jax.tree.map(jnp.asarray, start), [start], []
    for _ in range(2):
      state, m = task.step(state, batch, jax.random.PRNGKey(1))
      states.append(_host(state))
      metrics.append(jax.device_get(m))
    runs.append((states, metrics))
  (a, ma), (b, mb) = runs
  assert [float(m["disc_on"]) for m in ma] == [0.0, 1.0]
  assert float(ma[0]["gen_adv_loss"]) != float(mb[0]["gen_adv_loss"])   # the critics do differ
  # Step 0 (off): the same generator update, the critics untouched.
  jax.tree.map(np.testing.assert_array_equal, a[1].params["vqvae"], b[1].params["vqvae"])
  for run in (a, b):
    jax.tree.map(np.testing.assert_array_equal, run[1].params["disc"], run[0].params["disc"])
    jax.tree.map(np.testing.assert_array_equal, run[1].opt_state["disc"], run[0].opt_state["disc"])
  np.testing.assert_allclose(ma[0]["loss"], ma[0]["recon_mse"] + 0.25 * ma[0]["commitment_loss"],
                             rtol=1e-5)
  # Step 1 (on): the adversarial term moves the generator, the critic trains.
  diff = jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a[2].params["vqvae"], b[2].params["vqvae"])
  assert diff["decoder"]["to_pixels"]["kernel"] > 0
  moved = jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a[2].params["disc"], a[1].params["disc"])
  assert min(jax.tree.leaves(moved)) > 0
  lam, adv = float(ma[1]["adaptive_weight"]), float(ma[1]["gen_adv_loss"])
  np.testing.assert_allclose(ma[1]["loss"], ma[1]["recon_mse"] + 0.25 * ma[1]["commitment_loss"]
                             + 1.0 * lam * adv, rtol=1e-5, atol=1e-6)


@needs_lpips
def test_lpips_term_is_zero_for_a_perfect_reconstruction(photos):
  from gdl_jax.objectives.perceptual import load_lpips_params, lpips
  lp = load_lpips_params()
  x = to_signed(photos.train["image"][:4], 256)
  np.testing.assert_allclose(lpips(lp, x, x), 0.0, atol=1e-6)
  assert float(jnp.min(lpips(lp, x, x[::-1]))) > 0.01                    # and not zero otherwise


@needs_lpips
def test_heldout_metrics_add_the_reconstructions_lpips(photos):
  """The plain VQ-VAE (no LPIPS in its loss) reports held-out recon_lpips too, so VQ-VAE and VQ-GAN
  compare on it: the mean LPIPS of the decoded reconstructions against the images."""
  from gdl_jax.objectives.perceptual import load_lpips_params, lpips
  c = vqvae.get_config("tiny", "photo_crops")
  task = vqvae.build(c, photos.info)
  batch = _batch(photos, 4)
  state = task.init(jax.random.PRNGKey(0), batch)
  m = task.eval_step(state, batch, jax.random.PRNGKey(1))
  recon = vqvae.make_model(c.model, photos.info).apply(
      {"params": state.params["vqvae"], "vq": state.extra["vq"]}, batch["image"]).recon
  want = lpips(load_lpips_params(), recon, to_signed(batch["image"], 256))
  np.testing.assert_allclose(m["recon_lpips"], np.mean(want), rtol=1e-4)
  assert float(m["recon_lpips"]) > 0.0


def test_cli_train_both_stages_and_sample_tiny(tmp_path):
  """End to end through the CLI (LPIPS off to keep VGG16's compile out of it: the step with LPIPS is
  compiled by test_adaptive_weight_matches_autodiff_at_the_last_layer)."""
  wd = str(tmp_path / "run")
  assert cli.main(["train", "vqgan", "--dataset", "photo_crops", "--variant", "tiny", "--workdir",
                   wd, "--quiet", "--config.gan.lpips_weight=0"]) == 0
  from gdl_jax.train import loop
  rows = [r for r in loop.read_metrics(wd) if r["split"] == "train"]
  assert {r["step"]: r["stage"] for r in rows} == {2: 1.0, 4: 2.0}
  assert rows[0]["lpips"] == 0 and rows[0]["adaptive_weight"] > 0 and rows[0]["disc_on"] == 0.5  # steps 0, 1
  for f in ("samples.png", "reconstructions.png"):
    assert os.path.exists(os.path.join(wd, f)), f
  assert cli.main(["sample", wd, "--num", "4"]) == 0
  assert os.path.exists(os.path.join(wd, "samples_seed0.png"))


def test_configs_that_cannot_work_are_refused(photos, digits, tmp_path, capsys):
  c = vqvae.get_config("tiny", "digits")
  c.gan.lpips_weight = 1.0
  with pytest.raises(ConfigError, match=r"LPIPS needs images of at least 16x16.*8x8.*"
                                        r"--config.gan.lpips_weight=0"):
    vqvae.build(c, digits.info)
  with pytest.raises(ValueError, match="vqgan has no preset for dataset 'digits'.*gdl-jax train vqvae"):
    vqgan.get_config("tiny", "digits")
  for key, value, match in (("disc_start", 2, r"disc_start=2 must be in \[0, vq_steps=2\)"),
                            ("loss", "wgan", "gan.loss='wgan' is not a GAN loss"),
                            ("weight", -1.0, "gan.weight=-1.0 must be >= 0"),
                            ("lpips_weight", -0.5, "gan.lpips_weight=-0.5 must be >= 0"),
                            ("disc_features", (0, 4), "disc_features=\\(0, 4\\)")):
    with pytest.raises(ConfigError, match=match):
      vqgan.build(_config(**{key: value}), photos.info)
  # Through the CLI: one line, exit 2, nothing written.
  wd = tmp_path / "w"
  assert cli.main(["train", "vqvae", "--dataset", "digits", "--variant", "tiny", "--workdir",
                   str(wd), "--quiet", "--config.gan.lpips_weight=1.0"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "LPIPS needs images of at least 16x16" in err[0], err
  assert not wd.exists()
