"""EBM: energy network, contrastive divergence, the replay buffer, and a short run that ranks digits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import ebm_digits
from gdl_jax import data
from gdl_jax.data.info import to_signed
from gdl_jax.models.ebm import EnergyCNN
from gdl_jax.objectives.ebm import (buffer_push, buffer_starts, cd_loss, contrastive_divergence,
                                    init_buffer)


def test_energy_cnn_shapes_and_errors():
  model = EnergyCNN(features=(4, 8, 8), kernels=(5, 3, 3), dense=8)
  x = jnp.zeros((3, 8, 8, 1))
  params = jax.jit(model.init)(jax.random.key(0), x)
  e = jax.jit(model.apply)(params, x)
  assert e.shape == (3,) and e.dtype == jnp.float32
  book = EnergyCNN(features=(16, 32, 64, 64), kernels=(5, 3, 3, 3), dense=64)  # 32x32 MNIST
  shapes = jax.eval_shape(book.init, jax.random.key(0), jnp.zeros((2, 32, 32, 1)))
  assert shapes["params"]["Dense_0"]["kernel"].shape == (2 * 2 * 64, 64)  # 32 -> 2 after 4 strides
  with pytest.raises(ValueError, match="same length"):
    jax.eval_shape(EnergyCNN(features=(4, 8), kernels=(3,)).init, jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
    model.apply(params, jnp.zeros((3, 64)))


def test_contrastive_divergence_by_hand():
  e_real, e_fake = jnp.array([-1.0, 0.5]), jnp.array([2.0, 1.0])
  loss, m = contrastive_divergence(e_real, e_fake, alpha=0.1)
  np.testing.assert_allclose(m["cd"], -0.25 - 1.5, rtol=1e-6)
  np.testing.assert_allclose(m["reg"], 0.1 * np.mean([1.0 + 4.0, 0.25 + 1.0]), rtol=1e-6)
  np.testing.assert_allclose(loss, -1.75 + 0.3125, rtol=1e-6)


def test_buffer_is_a_fifo_ring():
  state = init_buffer(jax.random.key(0), 5, (2,))
  assert state["buffer"].shape == (5, 2) and float(jnp.abs(state["buffer"]).max()) <= 1.0
  ref = np.asarray(state["buffer"]).copy()
  ptr = 0
  for i in range(4):  # pushes of 3 wrap around a buffer of 5
    new = np.full((3, 2), 10.0 + i, np.float32)
    state = buffer_push(state, jnp.asarray(new))
    for j in range(3):
      ref[(ptr + j) % 5] = new[j]
    ptr = (ptr + 3) % 5
    np.testing.assert_array_equal(state["buffer"], ref)
    assert int(state["ptr"]) == ptr
  with pytest.raises(ValueError, match="larger than the replay buffer"):
    buffer_push(state, jnp.zeros((6, 2)))


def test_buffer_starts_mix_buffer_and_noise():
  buf = {"buffer": jnp.asarray(np.linspace(-0.5, 0.5, 64, dtype=np.float32).reshape(16, 4)),
         "ptr": jnp.zeros((), jnp.int32)}
  rows = {tuple(r) for r in np.asarray(buf["buffer"])}
  for p, lo, hi in ((0.0, 1.0, 1.0), (1.0, 0.0, 0.0), (0.05, 0.93, 0.97)):
    x = np.asarray(buffer_starts(jax.random.key(1), buf, 4000, p))
    from_buffer = np.mean([tuple(r) in rows for r in x])
    assert lo <= from_buffer <= hi, (p, from_buffer)
    assert x.min() >= -1.0 and x.max() <= 1.0


def test_cd_loss_gradient_treats_negatives_as_constants(digits):
  model = EnergyCNN(features=(4, 8), kernels=(3, 3), dense=8)
  x = to_signed(jnp.asarray(digits.train["image"][:6]), 17)
  params = jax.jit(model.init)(jax.random.key(0), x)["params"]
  energy = lambda p, v: model.apply({"params": p}, v)
  buf = init_buffer(jax.random.key(1), 32, (8, 8, 1))
  kw = dict(alpha=0.1, reinit_prob=0.05, steps=4, step_size=10.0, noise_scale=0.005,
            grad_clip=0.03)
  key = jax.random.key(2)
  (loss, (new_buf, m)), g = jax.jit(jax.value_and_grad(
      lambda p: cd_loss(energy, p, buf, x, key, **kw), has_aux=True))(params)
  fake = new_buf["buffer"][:6]  # the chains' end points were pushed at ptr 0..5
  assert int(new_buf["ptr"]) == 6
  np.testing.assert_array_equal(new_buf["buffer"][6:], buf["buffer"][6:])
  ref = lambda p: contrastive_divergence(energy(p, x), energy(p, fake), 0.1)[0]
  ref_loss, ref_g = jax.jit(jax.value_and_grad(ref))(params)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g, ref_g)
  assert m["chain_energy_end"] <= m["chain_energy_start"] + 1e-3  # the chains walk downhill


def test_short_training_ranks_held_out_digits_below_noise(digits, test_seed, record_property):
  c = ebm_digits.get_config("tiny")
  c.batch_size = 32
  c.optimizer.lr = 1e-3
  c.model.update(features=(8, 16), kernels=(3, 3), strides=(2, 2), dense=16, langevin_steps=5,
                 buffer_size=256)
  task = ebm_digits.build(c, digits.info)
  state = jax.jit(task.init)(jax.random.key(test_seed), data.batch_at(digits.train, 0, 32, test_seed))
  key = jax.random.key(test_seed + 1)
  test = {"image": digits.test["image"][:128]}
  before = float(task.eval_step(state, test, key)["rank_vs_noise"])
  for i in range(80):
    state, m = task.step(state, data.batch_at(digits.train, i, 32, test_seed), key)
  after = task.eval_step(state, test, key)
  assert np.isfinite(float(m["loss"]))
  assert int(state.extra["ptr"]) == 80 * 32 % 256  # buffer written every step, in the jitted step
  rank = float(after["rank_vs_noise"])
  record_property("rank_vs_noise", f"{rank:.4g} > 0.95 (before {before:.3g})")
  assert rank > 0.95, (before, after)
  assert float(after["energy_test"]) < float(after["energy_noise"])


@pytest.mark.slow
def test_ebm_digits_ranks_held_out_below_noise(digits, tmp_path):
  """The default experiment: held-out digits get lower energy than uniform noise on >= 99% of
  pairs; Langevin samples beat the independent-pixel baseline's FD (rule 1) and copy nothing (rule 2)."""
  import json
  from gdl_jax.evaluation import harness
  from gdl_jax.evaluation.classifier import feature_fn
  from tests.helpers import train_in_subprocess
  m = train_in_subprocess(["ebm", "--dataset", "digits"], tmp_path / "run")
  wd = tmp_path / "run"
  evals = [json.loads(line) for line in open(wd / "metrics.jsonl")]
  rank = [e["rank_vs_noise"] for e in evals if e.get("split") == "test"][-1]
  assert rank >= 0.99, rank
  for name in ("samples.png", "chain.png", "chain_energy.png", "buffer.png"):
    assert (wd / name).exists()
  base = harness.baseline_table(digits, feature_fn(digits, progress=False), key=jax.random.key(0),
                                num_samples=m["num_samples"], which=("independent",))
  assert m["frechet_distance"] < base["independent categorical"]["frechet_distance"], (m, base)
  assert m["novelty_ratio"] >= 0.8 and m["copy_share"] == 0.0, m

def test_buffer_sampler_continues_replay_buffer_entries(digits):
  """sample_init='buffer' starts chains at replay-buffer entries (with zero step and noise the
  samples are those entries); 'noise' starts elsewhere; a bad value names the choices."""
  c = ebm_digits.get_config("tiny")
  c.model.update(step_size=0.0, noise_scale=0.0)
  task = ebm_digits.build(c, digits.info)
  state = task.init(jax.random.key(0), {"image": digits.train["image"][:8]})
  levels = np.arange(32) % digits.info.levels                                   # one level per entry
  buf = to_signed(jnp.broadcast_to(levels[:, None, None, None], (32, 8, 8, 1)), digits.info.levels)
  state = state.replace(extra={**state.extra, "buffer": buf})
  x = np.asarray(task.sample(state, jax.random.key(1), 16))                      # [16, 8, 8, 1]
  assert all(np.all(img == img.flat[0]) and img.flat[0] in levels for img in x)
  c.model.sample_init = "noise"
  x = np.asarray(ebm_digits.build(c, digits.info).sample(state, jax.random.key(1), 16))
  assert not all(np.all(img == img.flat[0]) for img in x)
  c.model.sample_init = "data"
  with pytest.raises(ValueError, match="'noise'.*'buffer'"):
    ebm_digits.build(c, digits.info)
