"""Chapter 2 classifiers: shapes, train/eval modes, features, a small overfit."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gdl_jax.models.classifiers import CNN, MLP, classifier_loss, predict
from gdl_jax.train import TrainState, make_train_step


def _init(model, x, seed=0):
  variables = model.init(jax.random.key(seed), jnp.zeros(x.shape, jnp.float32))
  params = variables.pop("params")
  return params, dict(variables)


def test_shapes_and_features():
  x = jnp.zeros((4, 8, 8, 1))
  for model, feat in ((CNN(10, channels=(4, 4, 8, 8), dense=16), 16), (MLP(10, hidden=(12,)), 12)):
    params, extra = _init(model, x)
    out = model.apply({"params": params, **extra}, x)
    assert out.logits.shape == (4, 10) and out.features.shape == (4, feat)


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout():
  model = MLP(10, hidden=(32,), dropout=0.5)
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
  params, extra = _init(model, x)
  v = {"params": params, **extra}
  a = model.apply(v, x).logits
  np.testing.assert_array_equal(a, model.apply(v, x).logits)
  t1, _ = model.apply(v, x, train=True, rngs={"dropout": jax.random.key(1)}, mutable=["batch_stats"])
  t2, _ = model.apply(v, x, train=True, rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"])
  assert not np.allclose(t1.logits, t2.logits)


def test_cnn_overfits_a_small_batch(digits, test_seed, record_property):
  """32 training digits (the first 32 for seed 0, else drawn by the seed) are learned by heart."""
  model = CNN(10, channels=(8, 8, 16, 16), dense=32, dropout=0.0)
  n = len(digits.train["label"])
  idx = np.arange(32) if test_seed == 0 else np.random.default_rng(test_seed).choice(n, 32, replace=False)
  batch = {"image": jnp.asarray(digits.train["image"][idx]),
           "label": jnp.asarray(digits.train["label"][idx])}
  params, extra = _init(model, batch["image"], test_seed)
  opt = optax.adam(3e-3)
  step = make_train_step(classifier_loss(model, 17), opt)
  state = TrainState.create(params, opt, extra=extra)
  losses = []
  for _ in range(60):
    state, m = step(state, batch, jax.random.key(test_seed))
    losses.append(float(m["loss"]))
  out = predict(model, {"params": state.params, **state.extra}, batch["image"], 17)
  tail = max(losses[-5:])  # ~0.035 for seeds 0-2 (2.3 at init): 0.1 leaves a ~3x margin
  record_property("loss_max_last5", f"{tail:.4g} < 0.1")
  assert tail < 0.1, losses[::10]
  assert float((out.logits.argmax(-1) == batch["label"]).mean()) == 1.0
