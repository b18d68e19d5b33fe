"""experiments/stylegan2.py: padding, config checks, a learning check on 16 real digits, and the CLI
round trip (train tiny -> artefacts -> sample with truncation -> evaluate)."""

import json
import os

import jax
import numpy as np
import pytest

from experiments import stylegan2 as E
from gdl_jax import cli
from gdl_jax.data.info import DatasetInfo


def test_pad_and_crop_images():
  x = np.arange(2 * 28 * 28).reshape(2, 28, 28, 1).astype(np.uint8) | 1             # no zeros inside
  p = E.pad_images(x, 32)
  assert p.shape == (2, 32, 32, 1)
  np.testing.assert_array_equal(E.crop_images(p, 28, 28), x)
  border = np.ones((32, 32), bool)
  border[2:30, 2:30] = False
  assert np.all(p[:, border] == 0)                                                    # 2 px of level 0
  assert E.pad_images(np.zeros((1, 5, 7, 3)), 8).shape == (1, 8, 8, 3)
  with pytest.raises(ValueError, match="raise model.resolution"):
    E.pad_images(x, 16)


def test_style_ranges_split_the_ws():
  assert E.style_ranges(8) == {"coarse": (0, 3), "middle": (3, 5), "fine": (5, 8)}
  for L in (4, 6, 8, 10):
    r = E.style_ranges(L)
    assert r["coarse"][0] == 0 and r["coarse"][1] == r["middle"][0] < r["middle"][1] == r["fine"][0] < L


@pytest.mark.parametrize("key, value, message", [
    ("gen_channels", (8, 8, 8), "model.gen_channels has 3 entries but resolution 32 needs 4"),
    ("resolution", 30, "must be a power of 2"),
    ("truncation", 1.5, "truncation"),
    ("r1_every", 0, "r1_every"),
])
def test_bad_config_values_are_named(key, value, message):
  c = E.get_config("tiny", "fashion_mnist")
  c.model[key] = value
  info = DatasetInfo(name="fashion_mnist", kind="image", shape=(28, 28, 1), levels=256)
  with pytest.raises(ValueError, match=message):
    E.build(c, info)
  with pytest.raises(ValueError, match="unknown variant"):
    E.get_config("huge")


def test_learns_a_few_real_digits(digits):
  """300 steps on 16 training digits: samples end much nearer their closest training image than the
  untrained generator's (half) and than a constant image at the data's mean level."""
  imgs = {"image": digits.train["image"][:16]}
  c = E.get_config("tiny", "digits")
  c.steps, c.batch_size = 300, 16
  c.model.update(gen_channels=(32, 16), disc_channels=(16, 32), latent_dim=16, w_dim=16, r1_every=4,
                 r1_gamma=0.1, ema_decay=0.99)
  task = E.build(c, digits.info)
  state = task.init(jax.random.key(0), imgs)
  train = np.asarray(imgs["image"], np.float32).reshape(16, -1)

  def nn_dist(s):
    s = np.asarray(s, np.float32).reshape(len(s), -1)
    return np.sqrt(((s[:, None] - train[None]) ** 2).sum(-1)).min(1).mean()

  before = nn_dist(task.sample(state, jax.random.key(9), 64))
  for _ in range(c.steps):
    state, metrics = task.step(state, imgs, jax.random.key(0))
  after = nn_dist(task.sample(state, jax.random.key(9), 64))
  constant = nn_dist(np.full((1, 8, 8, 1), np.round(train.mean())))
  assert np.isfinite(float(metrics["d_loss"]))
  assert after < 0.5 * before and after < 0.9 * constant, (before, after, constant)


def test_cli_tiny_train_sample_truncated_and_evaluate(tmp_path, capsys):
  wd = str(tmp_path / "run")
  assert cli.main(["train", "stylegan2", "--dataset", "digits", "--variant", "tiny", "--workdir", wd,
                   "--quiet"]) == 0
  for name in ("samples.png", "truncation.png", "style_mixing_coarse.png", "style_mixing_middle.png",
               "style_mixing_fine.png"):
    assert os.path.exists(os.path.join(wd, name)), name
  rows = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
  assert any("r1" in r and "reg_applied" in r for r in rows)
  out = str(tmp_path / "psi.png")
  assert cli.main(["sample", wd, "--num", "8", "--out", out, "--config.model.truncation=0.5"]) == 0
  assert os.path.exists(out)
  capsys.readouterr()
  assert cli.main(["sample", wd, "--num", "8", "--out", str(tmp_path / "bad.png"),
                   "--config.model.truncation=2.0"]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("gdl-jax: error:") and "truncation (psi) must be in [0, 1]" in err
  assert cli.main(["evaluate", wd, "--no_features", "--num_samples", "16"]) == 0
  metrics = json.load(open(os.path.join(wd, "metrics.json")))
  assert metrics["experiment"] == "stylegan2" and np.isfinite(metrics["novelty_ratio"])
