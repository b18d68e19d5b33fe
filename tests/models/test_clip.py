"""CLIP: the InfoNCE loss by hand, retrieval recall by hand, padding masked, an overfit batch, the CLI."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdl_jax.data import captions
from gdl_jax.models.clip import CLIP, l2_normalize
from gdl_jax.objectives.clip import info_nce, recall_at_k, zero_shot_predict


def _hand_info_nce(u, v, scale):
  """Two explicit loops over the softmax's rows and columns (float64)."""
  u = u / np.linalg.norm(u, axis=1, keepdims=True)
  v = v / np.linalg.norm(v, axis=1, keepdims=True)
  b = len(u)
  i2t = t2i = 0.0
  for i in range(b):
    row = [scale * float(u[i] @ v[j]) for j in range(b)]
    i2t += -row[i] + np.log(sum(np.exp(r) for r in row))
    col = [scale * float(u[j] @ v[i]) for j in range(b)]
    t2i += -col[i] + np.log(sum(np.exp(c) for c in col))
  return 0.5 * (i2t / b + t2i / b)


def test_info_nce_matches_a_hand_computation():
  rng = np.random.default_rng(0)
  u, v = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
  scale = 7.0
  loss, m = info_nce(l2_normalize(jnp.asarray(u, jnp.float32)), l2_normalize(jnp.asarray(v, jnp.float32)),
                     jnp.log(jnp.float32(scale)))
  np.testing.assert_allclose(float(loss), _hand_info_nce(u, v, scale), rtol=1e-5)
  assert float(m["scale"]) == pytest.approx(scale)
  # the temperature is clipped at 100, and perfectly matched pairs at a high scale cost ~0
  e = jnp.eye(4)
  loss, m = info_nce(e, e, jnp.float32(10.0))
  assert float(m["scale"]) == pytest.approx(100.0) and float(loss) < 1e-6
  assert float(m["acc_i2t"]) == float(m["acc_t2i"]) == 1.0


def test_recall_and_zero_shot_by_hand():
  txt = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
  img = jnp.asarray([[0.8, 0.6], [1.0, 0.0], [0.6, 0.8]])
  # sims of text 0: (0.8, 1, 0.6): own image 2nd; text 1: (0.6, 0, 0.8): 3rd; text 2: (0.96, 0.6, 1): 1st
  assert float(recall_at_k(txt, img, 1)) == pytest.approx(1 / 3)
  assert float(recall_at_k(txt, img, 2)) == pytest.approx(2 / 3)
  assert float(recall_at_k(txt, img, 3)) == 1.0
  np.testing.assert_array_equal(zero_shot_predict(img, txt), [2, 0, 2])  # img 0: (0.8, 0.6, 0.96)


def _tiny(vocab=30):
  return CLIP(vocab_size=vocab, max_len=16, image_features=(8, 16), text_dim=16, text_depth=1,
              text_heads=2, embed_dim=16)


def test_text_padding_is_masked():
  model = _tiny()
  toks = jnp.asarray([[5, 6, 7, captions.EOS, 0, 0, 0, 0], [9, captions.EOS, 0, 0, 0, 0, 0, 0]])
  params = model.init(jax.random.key(0), jnp.zeros((2, 8, 8, 1)), toks)["params"]
  emb8 = model.apply({"params": params}, toks, method=CLIP.encode_text)
  longer = jnp.pad(toks, ((0, 0), (0, 8)))  # the same captions with 8 more padding tokens
  emb16 = model.apply({"params": params}, longer, method=CLIP.encode_text)
  np.testing.assert_allclose(emb8, emb16, atol=1e-5)
  x8, m8 = model.apply({"params": params}, toks, method=CLIP.text_tokens)
  assert x8.shape == (2, 8, 16) and m8.tolist()[1] == [True, True] + [False] * 6
  # and the words do matter
  other = toks.at[0, 1].set(11)
  assert np.abs(np.asarray(model.apply({"params": params}, other, method=CLIP.encode_text)[0] - emb8[0])).max() > 1e-3


def test_overfits_one_batch(digits, test_seed):
  """8 images, 8 different captions: after 150 steps each image picks its own caption."""
  import optax
  vocab = captions.vocabulary("digits")
  tok = captions.Tokenizer(vocab)
  idx = [int(np.flatnonzero(digits.train["label"] == k)[0]) for k in range(8)]
  x = jnp.asarray(digits.train["image"][idx], jnp.float32) / 8.0 - 1.0
  t = jnp.asarray(tok.encode_batch([captions.prompt("digits", k) for k in range(8)]))
  model = _tiny(len(vocab))
  params = model.init(jax.random.key(test_seed), x, t)["params"]
  opt = optax.adam(3e-3)
  state = opt.init(params)

  @jax.jit
  def step(params, state):
    (loss, m), g = jax.value_and_grad(lambda p: info_nce(*model.apply({"params": p}, x, t)), has_aux=True)(params)
    upd, state = opt.update(g, state)
    return optax.apply_updates(params, upd), state, loss, m

  for _ in range(150):
    params, state, loss, m = step(params, state)
  assert float(m["acc_i2t"]) == 1.0 and float(m["acc_t2i"]) == 1.0, m
  assert float(loss) < 0.3, float(loss)


@pytest.mark.slow  # several compiles: minutes on a loaded CPU (the default suite keeps the unit tests)
def test_cli_train_and_evaluate_tiny(tmp_path, capsys):
  from gdl_jax import cli
  wd = str(tmp_path / "clip")
  assert cli.main(["train", "clip", "--dataset", "digits_captions", "--variant", "tiny", "--workdir", wd,
                   "--quiet", "--evaluate"]) == 0
  m = json.load(open(os.path.join(wd, "metrics.json")))
  assert 0.0 <= m["zero_shot_accuracy"] <= 1.0 and 0.0 <= m["recall_at_5"] <= 1.0
  assert m["retrieval_n"] == 32 and len(m["zero_shot_per_class"]) == 10
  # a dataset without captions: one clear line
  assert cli.main(["train", "clip", "--dataset", "digits", "--variant", "tiny", "--workdir",
                   str(tmp_path / "x"), "--quiet"]) == 2
  assert "captions" in capsys.readouterr().err
