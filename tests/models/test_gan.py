"""GAN players: shapes on 8x8x1 / 28x28x1 / 32x32x3, conditioning, norms, dtypes, errors; and the
four Chapter 4 experiments' tiny configs end to end (init, a step, samples, artefacts)."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdl_jax.data.info import DatasetInfo
from gdl_jax.models.gan import Discriminator, Generator


@pytest.mark.parametrize("shape, gen_features, num_classes, label_dim", [
    ((8, 8, 1), (8, 4), 0, 0), ((28, 28, 1), (8, 4), 10, 0), ((32, 32, 3), (8, 4, 4), 10, 3)])
def test_shapes_and_ranges(shape, gen_features, num_classes, label_dim):
  b = 3
  kw = dict(num_classes=num_classes, label_dim=label_dim)
  gen = Generator(shape, gen_features, **kw)
  disc = Discriminator((4, 8), norm="batch", **kw)
  z = jax.random.normal(jax.random.key(0), (b, 5))
  labels = jnp.array([0, 3, 9]) if num_classes else None
  gv = gen.init(jax.random.key(1), z, labels, train=False)
  x = gen.apply(gv, z, labels, train=False)
  assert x.shape == (b, *shape) and x.dtype == jnp.float32
  assert float(jnp.abs(x).max()) <= 1.0 and float(jnp.std(x)) > 0
  dv = disc.init(jax.random.key(2), x, labels, train=False)
  out = disc.apply(dv, x, labels, train=False)
  assert out.shape == (b,) and bool(jnp.all(jnp.isfinite(out)))


def test_labels_condition_both_players():
  gen = Generator((8, 8, 1), (8, 4), num_classes=10)
  disc = Discriminator((4, 8), norm="none", num_classes=10)
  z = jnp.tile(jax.random.normal(jax.random.key(0), (1, 5)), (2, 1))               # same z twice
  labels = jnp.array([1, 7])
  x = gen.apply(gen.init(jax.random.key(1), z, labels, train=False), z, labels, train=False)
  assert float(jnp.abs(x[0] - x[1]).max()) > 1e-4
  xx = jnp.tile(x[:1], (2, 1, 1, 1))                                               # same image twice
  s = disc.apply(disc.init(jax.random.key(2), xx, labels, train=False), xx, labels, train=False)
  assert abs(float(s[0] - s[1])) > 1e-6
  with pytest.raises(ValueError, match="pass labels"):
    gen.init(jax.random.key(1), z, None, train=False)


def test_auxiliary_class_head_is_a_second_output_of_the_same_critic():
  x = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))
  labels = jnp.array([0, 4, 9])
  plain = Discriminator((4, 8), norm="none")
  aux = Discriminator((4, 8), norm="none", aux_classes=10)
  v = aux.init(jax.random.key(1), x, labels, train=False)
  assert set(v["params"]) == set(plain.init(jax.random.key(1), x, labels, train=False)["params"]) | {"aux"}
  score = aux.apply(v, x, labels, train=False)
  score2, logits = aux.apply(v, x, labels, train=False, with_aux=True)
  assert score.shape == (3,) and logits.shape == (3, 10) and logits.dtype == jnp.float32
  np.testing.assert_array_equal(score, score2)
  # Without the head's parameters the same critic gives the same scores: the head only adds logits.
  no_head = {"params": {k: p for k, p in v["params"].items() if k != "aux"}}
  np.testing.assert_allclose(plain.apply(no_head, x, labels, train=False), score, rtol=1e-6)
  with pytest.raises(ValueError, match="aux_classes > 0"):
    plain.apply(no_head, x, labels, train=False, with_aux=True)
  with pytest.raises(ValueError, match="must not take the label as input"):
    Discriminator((4, 8), num_classes=10, aux_classes=10).init(jax.random.key(1), x, labels, train=False)


def test_norm_variables():
  x = jnp.zeros((2, 8, 8, 1))
  kinds = {}
  for norm in ("batch", "layer", "none"):
    v = Discriminator((4, 8), norm=norm).init(jax.random.key(0), x, train=False)
    kinds[norm] = ("batch_stats" in v, any("LayerNorm" in k for k in jax.tree_util.keystr(
        jax.tree_util.tree_flatten_with_path(v)[0]).split("'")))
  assert kinds == {"batch": (True, False), "layer": (False, True), "none": (False, False)}
  with pytest.raises(ValueError, match="norm='group' is unknown"):
    Discriminator((4,), norm="group").init(jax.random.key(0), x, train=False)


def test_bad_image_size_names_the_fix():
  with pytest.raises(ValueError, match="not divisible by 2\\^len\\(features\\) = 8.*at most 2"):
    Generator((28, 28, 1), (8, 8, 8)).init(jax.random.key(0), jnp.zeros((1, 4)), train=False)


def test_bfloat16_compute_float32_params_and_outputs():
  z = jax.random.normal(jax.random.key(0), (4, 5))
  g32 = Generator((8, 8, 1), (8, 4))
  g16 = Generator((8, 8, 1), (8, 4), dtype=jnp.bfloat16)
  v = g32.init(jax.random.key(1), z, train=False)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(v))
  y32, y16 = g32.apply(v, z, train=False), g16.apply(v, z, train=False)
  assert y16.dtype == jnp.float32
  np.testing.assert_allclose(y16, y32, atol=0.05)
  assert float(jnp.abs(y16 - y32).max()) > 0  # really computed in bfloat16


DIGITS = DatasetInfo(name="digits", kind="image", shape=(8, 8, 1), levels=17, num_classes=10)


@pytest.mark.parametrize("name", ["dcgan_digits", "cgan_digits", "wgan_digits", "wgan_gp_fashion_mnist"])
def test_experiment_tiny_end_to_end(name, tmp_path):
  mod = importlib.import_module(f"experiments.{name}")
  config = mod.get_config("tiny", dataset="digits")
  for key in ("dataset", "seed", "batch_size", "steps", "log_every", "eval_every", "ckpt_every",
              "keep_checkpoints", "num_samples", "optimizer", "model"):
    assert key in config
  task = mod.build(config, DIGITS)
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 17, (8, 8, 8, 1)).astype(np.uint8),
           "label": rng.integers(0, 10, (8,)).astype(np.int32)}
  state = task.init(jax.random.key(0), batch)
  assert set(state.params) == {"gen", "disc"} and set(state.ema_params) == {"gen"}
  if name != "cgan_digits":
    return  # one compiled run keeps this file fast; the glue is shared, the losses and steps of
    #         every variant are covered in tests/objectives/test_gan.py
  state, metrics = task.step(state, batch, jax.random.key(1))
  assert int(state.step) == 1 and all(np.isfinite(float(v)) for v in metrics.values())
  x = np.asarray(task.sample(state, jax.random.key(2), 10))
  assert x.shape == (10, 8, 8, 1) and x.dtype == np.uint8 and x.max() <= 16
  np.testing.assert_array_equal(x, np.asarray(task.sample(state, jax.random.key(2), 10)))  # fixed key
  task.write_artifacts(state, None, str(tmp_path), jax.random.key(3))
  from PIL import Image
  cell = 8 * 8 + 1                                        # 8x8 digits drawn 8x larger, 1 px gaps
  assert Image.open(tmp_path / "interpolations.png").size == (10 * cell + 1, 8 * cell + 1)
  assert Image.open(tmp_path / "samples_by_class.png").size == (10 * cell + 1, 10 * cell + 1)


def test_cgan_experiment_with_the_auxiliary_classifier():
  """--config.model.aux_weight: the critic drops the label input and gets the class head."""
  from experiments import cgan_digits
  config = cgan_digits.get_config("tiny", dataset="digits")
  config.model.aux_weight, config.model.aux_gen_weight = 1.0, 1.0
  task = cgan_digits.build(config, DIGITS)
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 17, (8, 8, 8, 1)).astype(np.uint8),
           "label": rng.integers(0, 10, (8,)).astype(np.int32)}
  state = task.init(jax.random.key(0), batch)
  assert state.params["disc"]["aux"]["kernel"].shape[-1] == 10
  assert "embed" not in state.params["disc"]
  state, metrics = task.step(state, batch, jax.random.key(1))
  assert {"aux_real", "aux_fake", "aux_acc_real", "aux_acc_fake"} <= set(metrics)
  assert all(np.isfinite(float(v)) for v in metrics.values())
  config.model.conditional = False
  with pytest.raises(ValueError, match="needs model.conditional=True"):
    cgan_digits.build(config, DIGITS)
