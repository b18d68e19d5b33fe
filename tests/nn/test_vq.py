"""Vector quantiser: nearest codes, straight-through gradient, losses, EMA update, dead-code restarts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdl_jax.nn import vq as V

K, D = 6, 3


def _z(n=40, seed=0):
  return jax.random.normal(jax.random.key(seed), (n, D))


def _module(**kw):
  m = V.VectorQuantizer(num_codes=K, code_dim=D, **kw)
  return m, m.init(jax.random.key(1), _z())


def test_nearest_codes_match_brute_force():
  z = np.asarray(jax.random.normal(jax.random.key(0), (5, 7, D)), np.float64)
  codebook = np.asarray(jax.random.normal(jax.random.key(1), (K, D)), np.float64)
  want = np.argmin(((z[..., None, :] - codebook) ** 2).sum(-1), axis=-1)          # [5, 7]
  got = np.asarray(jax.jit(V.nearest_codes)(jnp.asarray(z, jnp.float32),
                                            jnp.asarray(codebook, jnp.float32)))
  assert got.dtype == np.int32 and got.shape == (5, 7)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_allclose(V.squared_distances(z.reshape(-1, D), codebook),
                             ((z.reshape(-1, 1, D) - codebook) ** 2).sum(-1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ema", [True, False])
def test_straight_through_gradient_is_the_identity(ema):
  """d loss / d z through the quantiser equals d loss / d (quantised output), at the output."""
  m, variables = _module(ema=ema)
  z = _z().reshape(5, 8, D)
  c = jax.random.normal(jax.random.key(3), z.shape)
  f = lambda q: jnp.sum(jnp.sin(q) * c)  # noqa: E731: a nonlinear loss of the quantised output
  q = m.apply(variables, z).quantized
  g_z = jax.grad(lambda z: f(m.apply(variables, z).quantized))(z)
  np.testing.assert_allclose(g_z, jax.grad(f)(q), rtol=1e-6)
  codebook = variables["vq"]["stats"]["embedding"] if ema else variables["params"]["codebook"]
  # forward = the codes (z + (e - z) rounds to e within an ulp)
  np.testing.assert_allclose(q, codebook[V.nearest_codes(z, codebook)], rtol=0, atol=1e-6)


def test_commitment_gradient_reaches_only_the_encoder_and_codebook_loss_only_the_codes():
  m, variables = _module(ema=False)
  z = _z()

  def term(name):
    return jax.grad(lambda p, z: m.apply({"params": p}, z).metrics[name], argnums=(0, 1))(
        variables["params"], z)

  g_codes, g_z = term("commitment_loss")
  assert np.all(np.asarray(g_codes["codebook"]) == 0) and np.abs(g_z).sum() > 0
  g_codes, g_z = term("codebook_loss")
  assert np.all(np.asarray(g_z) == 0) and np.abs(g_codes["codebook"]).sum() > 0
  # The total loss: codebook loss + beta * commitment, as the functions say.
  out = m.apply(variables, z)
  np.testing.assert_allclose(out.loss, out.metrics["codebook_loss"]
                             + 0.25 * out.metrics["commitment_loss"], rtol=1e-6)
  e = np.asarray(variables["params"]["codebook"])[np.asarray(out.indices)]
  np.testing.assert_allclose(out.metrics["commitment_loss"], np.mean((np.asarray(z) - e) ** 2),
                             rtol=1e-5)


def test_usage_and_perplexity_match_numpy():
  idx = np.array([0, 0, 1, 3, 3, 3, 5, 0])
  usage, ppl = V.codebook_usage(jnp.asarray(idx), K)
  p = np.bincount(idx, minlength=K) / len(idx)
  nz = p[p > 0]
  np.testing.assert_allclose(usage, 4 / 6, rtol=1e-6)
  np.testing.assert_allclose(ppl, np.exp(-np.sum(nz * np.log(nz))), rtol=1e-6)
  _, ppl_uniform = V.codebook_usage(jnp.arange(K), K)
  np.testing.assert_allclose(ppl_uniform, K, rtol=1e-5)                        # all codes equally


def _numpy_ema(state, z, idx, decay, eps):
  """Van den Oord et al. App. A.1 with zero-debiasing, written code by code."""
  emb = state["embedding"].copy()
  count = state["count"] + 1
  size, total = state["cluster_size"].copy(), state["embed_sum"].copy()
  for k in range(K):
    members = z[idx == k]
    size[k] = decay * size[k] + (1 - decay) * len(members)
    total[k] = decay * total[k] + (1 - decay) * members.sum(0)
  bias = 1 - decay ** count
  n_k, m_k = size / bias, total / bias
  n = n_k.sum()
  for k in range(K):
    emb[k] = m_k[k] / ((n_k[k] + eps) / (n + K * eps) * n)
  age = np.where(np.bincount(idx, minlength=K) > 0, 0, state["age"] + 1)
  return dict(embedding=emb, cluster_size=size, embed_sum=total, count=count, age=age)


def test_ema_update_matches_a_hand_computation():
  state = jax.device_get(V.init_codebook_state(jax.random.key(0), K, D))
  ref = {k: np.asarray(v, np.float64) for k, v in state.items()}
  ref["count"], ref["age"] = 0, np.zeros(K, int)
  update = jax.jit(lambda s, z, i: V.ema_update(s, z, i, decay=0.9, eps=1e-3))
  for seed in range(3):  # three steps: the debiasing and the accumulators both matter
    z = _z(seed=seed)
    idx = V.nearest_codes(z, state["embedding"])
    state = update(state, z, idx)
    ref = _numpy_ema(ref, np.asarray(z, np.float64), np.asarray(idx), 0.9, 1e-3)
    for k in ("embedding", "cluster_size", "embed_sum"):
      np.testing.assert_allclose(state[k], ref[k], rtol=2e-5, atol=1e-6, err_msg=k)
    assert int(state["count"]) == ref["count"]
    np.testing.assert_array_equal(state["age"], ref["age"])
  # After one step from zero accumulators a used code sits at the (smoothed) mean of its vectors.
  s1 = V.ema_update(V.init_codebook_state(jax.random.key(0), K, D), _z(), jnp.zeros(40, jnp.int32),
                    decay=0.99, eps=0.0)
  np.testing.assert_allclose(s1["embedding"][0], jnp.mean(_z(), 0), rtol=1e-5)


def test_restart_reinitialises_exactly_the_dead_codes():
  state = V.init_codebook_state(jax.random.key(0), K, D)
  z = _z()
  state = V.ema_update(state, z, jnp.where(z[:, 0] > 0, 1, 4).astype(jnp.int32), decay=0.99)
  state["age"] = jnp.array([0, 0, 5, 1, 0, 7], jnp.int32)  # codes 1 and 4 were used
  dead = V.dead_codes(state, decay=0.99, dead_after=5)
  np.testing.assert_array_equal(dead, [False, False, True, False, False, True])
  dead_t = V.dead_codes(state, decay=0.99, dead_threshold=0.5)  # never-used codes have size 0
  np.testing.assert_array_equal(dead_t, [True, False, True, True, False, True])
  new = V.restart_codes(state, z, dead, jax.random.key(5), decay=0.99)
  for k in range(K):
    if dead[k]:
      assert any(np.array_equal(new["embedding"][k], row) for row in np.asarray(z)), k
      assert int(new["age"][k]) == 0
      np.testing.assert_allclose(V.debiased_cluster_size(new, 0.99)[k], 1.0, rtol=1e-5)
    else:
      for name in ("embedding", "cluster_size", "embed_sum", "age"):
        np.testing.assert_array_equal(new[name][k], state[name][k], err_msg=f"{name}[{k}]")
  restarted = np.asarray(new["embedding"])[np.asarray(dead)]
  assert len({tuple(r) for r in restarted}) == len(restarted)          # distinct rows (N >= K)
  again = V.restart_codes(state, z, dead, jax.random.key(5), decay=0.99)
  np.testing.assert_array_equal(again["embedding"], new["embedding"])   # deterministic per key
  other = V.restart_codes(state, z, dead, jax.random.key(6), decay=0.99)
  assert not np.array_equal(other["embedding"], new["embedding"])


def test_module_update_is_the_ema_step_then_restarts_of_unused_codes():
  m, variables = _module(dead_after=1)
  z = 0.1 * _z() + 2.0  # far from most codes: only a few are used
  out, upd = jax.jit(lambda v, z, k: m.apply(v, z, update=True, rngs={"vq": k}, mutable=["vq"]))(
      variables, z, jax.random.key(9))
  stats = variables["vq"]["stats"]
  expect = V.ema_update(stats, z, out.indices, decay=0.99, eps=1e-5)
  used = np.bincount(np.asarray(out.indices), minlength=K) > 0
  assert 0 < used.sum() < K
  new = upd["vq"]["stats"]
  np.testing.assert_allclose(new["embedding"][used], expect["embedding"][used], rtol=1e-6)
  assert float(out.metrics["restarted"]) == K - used.sum()
  for k in np.flatnonzero(~used):
    assert any(np.allclose(new["embedding"][k], row) for row in np.asarray(z))
  # The pass itself quantised with the codebook before the update.
  np.testing.assert_array_equal(out.indices, V.nearest_codes(z, stats["embedding"]))


def test_bad_vectors_are_refused():
  m, variables = _module()
  with pytest.raises(ValueError, match="code_dim"):
    m.apply(variables, jnp.zeros((4, D + 1)))
  with pytest.raises(ValueError, match="ema=False"):
    V.VectorQuantizer(K, D, ema=False, dead_after=3).init(jax.random.key(0), _z())
