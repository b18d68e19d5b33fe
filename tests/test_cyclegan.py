"""experiments/cyclegan.py: the Task's step (pool, both players), a small overfit, translate,
the translation harness against independent computations, and bad input."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdl_jax import data
from gdl_jax.configs import ConfigError
from gdl_jax.train import Task


@pytest.fixture(scope="module")
def inverted():
  return data.load("digits_inverted")


def _task(ds, steps=None, **model):
  from experiments import cyclegan
  c = cyclegan.get_config("tiny", ds.info.name)
  if steps is not None:   # the linear decay reaches lr 0 at config.steps
    c.steps = steps
  c.model.update(model)
  return c, cyclegan.build(c, ds.info)


def test_step_fills_the_history_and_updates_all_four_networks(inverted):
  c, task = _task(inverted, pool_size=12, identity_weight=5.0)  # the known-map preset has 0
  batch = data.batch_at(inverted.train, 0, 8, 0)
  state = jax.jit(task.init)(jax.random.key(0), batch)
  before = jax.tree.map(np.asarray, state.params)
  state, m = task.step(state, batch, jax.random.key(1))
  assert int(state.step) == 1 and all(np.isfinite(float(v)) for v in m.values())
  for player, nets in (("gen", ("g", "f")), ("disc", ("a", "b"))):
    for net in nets:
      changed = jax.tree.map(lambda x, y: not np.allclose(x, y), before[player][net],
                             jax.tree.map(np.asarray, state.params[player][net]))
      assert any(jax.tree.leaves(changed)), (player, net)
  for d in ("a", "b"):
    assert int(state.extra["pool"][d]["count"]) == 8                 # the first 8 fakes are stored
  state, m = task.step(state, data.batch_at(inverted.train, 1, 8, 0), jax.random.key(1))
  assert int(state.extra["pool"]["a"]["count"]) == 12                # capacity
  # total = adversarial + 10 * cycle + 5 * identity
  total = m["g_adv_a"] + m["g_adv_b"] + 10 * (m["cycle_a"] + m["cycle_b"]) + 5 * (m["identity_a"] + m["identity_b"])
  assert float(m["g_loss"]) == pytest.approx(float(total), rel=1e-5)


def test_overfit_a_small_batch(inverted, test_seed, record_property):
  """60 steps on 8 fixed pairs: the cycle error falls to well under half its start."""
  c, task = _task(inverted, steps=60, gen_features=8, pool_size=0)
  batch = data.batch_at(inverted.train, 0, 8, test_seed)
  state = jax.jit(task.init)(jax.random.key(test_seed), batch)
  cyc = []
  for _ in range(60):
    state, m = task.step(state, batch, jax.random.key(test_seed))
    cyc.append(float(m["cycle_a"] + m["cycle_b"]))
  best = min(cyc[-5:])
  record_property("cycle_best_last5_over_first", best / cyc[0])
  assert best < 0.5 * cyc[0], cyc[::10]


def test_translate_shapes_and_errors(inverted):
  c, task = _task(inverted)
  state = jax.jit(task.init)(jax.random.key(0), data.batch_at(inverted.train, 0, 8, 0))
  y = task.translate(state, inverted.test["a"][:5], "ab")
  assert y.shape == (5, 8, 8, 1) and y.dtype == jnp.uint8 and int(y.max()) <= 16
  with pytest.raises(ValueError, match="direction must be 'ab'"):
    task.translate(state, inverted.test["a"][:5], "xy")
  with pytest.raises(ValueError, match="takes \\[N, 8, 8, 1\\] images"):
    task.translate(state, np.zeros((2, 28, 28, 1), np.uint8), "ab")


def test_build_refuses_a_single_domain_dataset_and_bad_sizes(digits, inverted):
  from experiments import cyclegan
  with pytest.raises(ConfigError, match="needs an unpaired dataset .* 'digits' is an image dataset"):
    cyclegan.build(cyclegan.get_config("tiny", "digits"), digits.info)
  c = cyclegan.get_config("tiny", "digits_inverted")
  c.model.n_down = 4
  with pytest.raises(ConfigError, match="divisible by 2\\^4"):
    cyclegan.build(c, inverted.info)


def test_translation_metrics_of_fixed_maps(inverted, monkeypatch):
  """The harness against hand computations: the identity map (cycle error 0, MSE = the identity's,
  ratio 1) and the true inversion (MSE 0); on a class pair, the identity map's target share equals
  the untranslated one and its FD the untranslated FD (classifier faked: label = a pixel's value)."""
  from gdl_jax.evaluation import classifier, tasks
  keys = {"sample": jax.random.key(0)}
  ident = Task(init=None, step=None, translate=lambda s, x, d: np.asarray(x))
  m = tasks.evaluate_task(ident, None, inverted, None, keys, use_log_prob=False)
  a, am = inverted.test["a"].astype(float) / 16, inverted.test["a_mapped"].astype(float) / 16
  assert m["cycle_mae"] == 0.0 and m["mse_ab"] == pytest.approx(np.mean((a - am) ** 2))
  assert m["mse_identity_ab"] == m["mse_ab"] and m["mse_ratio_ab"] == 1.0
  invert = Task(init=None, step=None, translate=lambda s, x, d: 16 - np.asarray(x))
  m = tasks.evaluate_task(invert, None, inverted, None, keys, use_log_prob=False)
  assert m["mse_ab"] == 0.0 and m["mse_ba"] == 0.0 and m["cycle_mae"] == 0.0

  monkeypatch.setattr(classifier, "feature_fn", lambda ds, **kw: lambda im: im.reshape(len(im), -1)[:, 20:28].astype(np.float32))
  monkeypatch.setattr(classifier, "label_fn", lambda ds, **kw: lambda im: (im[:, 3, 3, 0] > 8) * 5 + 3)
  pair = data.load("pair:digits:3:8")
  m = tasks.evaluate_task(ident, None, pair, None, keys, use_log_prob=False)
  share = np.mean(pair.test["a"][:, 3, 3, 0] > 8)                  # a's the fake classifier calls '8'
  assert m["target_accuracy_ab"] == pytest.approx(share) == m["untranslated_target_share_ab"]
  assert m["fd_ab"] == pytest.approx(m["fd_ab_untranslated"]) and m["fd_ab"] > 0
  swap = Task(init=None, step=None, translate=lambda s, x, d: np.asarray(pair.test["b" if d == "ab" else "a"][:len(x)]))
  m = tasks.evaluate_task(swap, None, pair, None, keys, use_log_prob=False)
  assert m["fd_ab"] == pytest.approx(0.0, abs=1e-6)                 # translations = the target set
  assert m["target_accuracy_ab"] == pytest.approx(np.mean(pair.test["b"][:, 3, 3, 0] > 8))


def test_cli_train_tiny_writes_translation_grids(tmp_path):
  from gdl_jax import cli
  wd = str(tmp_path / "run")
  assert cli.main(["train", "cyclegan", "--dataset", "digits_inverted", "--variant", "tiny",
                   "--workdir", wd, "--quiet"]) == 0
  assert os.path.exists(os.path.join(wd, "translations_ab.png"))
  assert os.path.exists(os.path.join(wd, "translations_ba.png"))
  assert cli.main(["evaluate", wd]) == 0                           # the harness's translation metrics
  import json
  with open(os.path.join(wd, "metrics.json")) as f:
    m = json.load(f)
  assert m["experiment"] == "cyclegan" and 0 <= m["cycle_mae"] <= 1 and m["mse_identity_ab"] > 0
  assert cli.main(["sample", wd]) == 2                             # no sampler: says where the grids are


@pytest.mark.parametrize("dataset, message", [
    ("pair:digits:3:12", "class index 12 is out of range"),
    ("digits", "cyclegan needs an unpaired dataset"),
    ("map:digits:swap_rb", "needs RGB images"),
])
def test_cli_bad_domains_are_one_line(dataset, message, capsys):
  from gdl_jax import cli
  assert cli.main(["train", "cyclegan", "--dataset", dataset, "--variant", "tiny", "--check"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and message in err[0], err


def test_known_maps_drop_the_identity_term_class_pairs_keep_it():
  """For a known map f (f(b) != b) the identity loss |G(b) - b| pulls G away from f; the presets
  turn it off there and keep the book's 5 for unpaired class/photo domains (overridable)."""
  from experiments import cyclegan
  for name in ("digits_inverted", "fashion_mnist_inverted", "digits_transposed", "map:digits:swap_rb"):
    assert cyclegan.get_config("small", name).model.identity_weight == 0.0, name
  for name in ("fashion_sneaker_boot", "photos_cat_coffee", "pair:fashion_mnist:sandal:sneaker"):
    assert cyclegan.get_config("small", name).model.identity_weight == 5.0, name
