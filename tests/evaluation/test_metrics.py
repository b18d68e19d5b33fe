"""Evaluation harness: metrics against independent computations, grids, evaluate() and tables."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.stats
from PIL import Image

from gdl_jax.data.info import Dataset, DatasetInfo, from_signed
from gdl_jax.evaluation import grids, harness
from gdl_jax.evaluation import metrics as M


@pytest.fixture(scope="module")
def digit_images():
  from sklearn.datasets import load_digits
  d = load_digits()
  return d.images.astype(np.uint8)[..., None], d.target.astype(np.int32)   # [1797, 8, 8, 1]


# --- bits/dim -------------------------------------------------------------------------------------


def test_bits_per_dim_converts_nats():
  nll = np.array([64 * math.log(2.0), 128 * math.log(2.0)])
  np.testing.assert_allclose(M.bits_per_dim(nll, 64), [1.0, 2.0], rtol=1e-12)
  with pytest.raises(ValueError, match="dims"):
    M.bits_per_dim(nll, 0)


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_dequantized_bits_per_dim_of_uniform_densities(levels):
  dims, w = 64, 2.0 / (levels - 1)
  # Uniform over all bins [-1 - w/2, 1 + w/2]: the discrete uniform, exactly log2(levels) bits/dim.
  nll_all_bins = dims * math.log(levels * w)
  np.testing.assert_allclose(M.dequantized_bits_per_dim(nll_all_bins, dims, levels),
                             math.log2(levels), rtol=1e-12)
  # Uniform over [-1, 1]: density 1/2 per dim, times the bin width -> 1/(levels-1) per bin centre.
  np.testing.assert_allclose(M.dequantized_bits_per_dim(dims * math.log(2.0), dims, levels),
                             math.log2(levels - 1), rtol=1e-12, atol=1e-12)
  lp = M.dequantized_log_prob(-nll_all_bins, dims, levels)
  np.testing.assert_allclose(M.bits_per_dim(-lp, dims), math.log2(levels), rtol=1e-12)


def test_dequantize_stays_in_its_bin():
  levels = 17
  x = jnp.arange(levels, dtype=jnp.int32).repeat(50)
  y = M.dequantize(jax.random.key(0), x, levels)
  w = 2.0 / (levels - 1)
  centre = x.astype(jnp.float32) * w - 1.0
  assert float(jnp.max(jnp.abs(y - centre))) <= 0.5 * w + 1e-6
  assert float(jnp.std(y - centre)) == pytest.approx(w / math.sqrt(12.0), rel=0.1)   # U(-w/2, w/2)
  np.testing.assert_array_equal(np.asarray(from_signed(y, levels)), np.asarray(x))


def test_dequantized_gaussian_bounds_the_exact_discrete_likelihood():
  """E_u[-log p(y+u)] - log w >= -log P(k) (Jensen), and is tight for a smooth density."""
  levels, sigma, mu = 17, 0.6, 0.1
  w = 2.0 / (levels - 1)
  k = np.arange(levels)
  y = k * w - 1.0
  exact = -np.log(scipy.stats.norm.cdf(y + w / 2, mu, sigma) - scipy.stats.norm.cdf(y - w / 2, mu, sigma))
  u = np.asarray(M.dequantize(jax.random.key(1), np.repeat(k, 40000), levels), np.float64)
  nll = -scipy.stats.norm.logpdf(u, mu, sigma).reshape(levels, 40000).mean(axis=1)
  bound = np.asarray(M.dequantized_bits_per_dim(nll, 1, levels)) * math.log(2.0)   # nats
  assert np.all(bound >= exact - 2e-3)           # Monte Carlo slack; the true gap is >= 0
  np.testing.assert_allclose(bound, exact, atol=1e-2)


# --- Fréchet distance ---------------------------------------------------------------------------


def _fd_brute(a, b):
  mu_a, mu_b = a.mean(0), b.mean(0)
  sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  covmean = scipy.linalg.sqrtm(sa @ sb)
  return float(np.sum((mu_a - mu_b) ** 2) + np.trace(sa + sb - 2.0 * np.real(covmean)))


def test_gaussian_fit_matches_definition(digit_images):
  x = digit_images[0][:300].reshape(300, -1).astype(np.float64)
  mu, cov = M.gaussian_fit(x)
  np.testing.assert_allclose(mu, x.sum(0) / 300)
  np.testing.assert_allclose(cov, (x - mu).T @ (x - mu) / 299, atol=1e-10)
  with pytest.raises(ValueError, match="N >= 2"):
    M.gaussian_fit(x[:1])


def test_frechet_distance_matches_scipy_sqrtm(digit_images):
  x, y = digit_images
  feats = x[:, 2:6, 2:6, 0].reshape(len(x), -1).astype(np.float64)      # 16 well-conditioned dims
  a, b = feats[y < 5], feats[y >= 5]
  fd = M.frechet_distance(a, b)
  np.testing.assert_allclose(fd, _fd_brute(a, b), rtol=1e-6)
  assert fd > 1.0


def test_frechet_distance_known_cases(digit_images):
  feats = digit_images[0].reshape(len(digit_images[0]), -1).astype(np.float64)      # singular covariance
  assert M.frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-7)
  shift = np.linspace(-1.0, 2.0, feats.shape[1])
  np.testing.assert_allclose(M.frechet_distance(feats, feats + shift), shift @ shift, rtol=1e-7)
  # Commuting (diagonal) covariances: |dmu|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
  va, vb = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
  mu_a, mu_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
  expected = 1.0 + 4.0 + (1 - 3) ** 2 + (2 - 1) ** 2
  assert M.frechet_distance_from_stats(mu_a, np.diag(va), mu_b, np.diag(vb)) == pytest.approx(expected)


# --- nearest neighbours and novelty -------------------------------------------------------------


def test_nearest_neighbours_match_brute_force(digit_images):
  x = digit_images[0].reshape(len(digit_images[0]), -1).astype(np.float64)
  train, queries = x[:300], x[1000:1070]
  d, idx = M.nearest_neighbours(queries, train, batch=32)          # 70 = 2 full chunks + a padded one
  brute = np.sqrt(((queries[:, None, :] - train[None]) ** 2).sum(-1))
  np.testing.assert_allclose(d, brute.min(1), rtol=1e-6)
  np.testing.assert_allclose(brute[np.arange(len(idx)), idx], brute.min(1), rtol=1e-6)


def test_exact_copies_are_found_at_large_norms(digit_images):
  # 64x64 images of 0..240: |x|^2 ~ 1e8, where ranking by the float32 matmul expansion alone finds
  # only about a third of the exact copies (candidates=1); the exact re-ranking finds all.
  big = np.kron(digit_images[0][:200, ..., 0].astype(np.int64), np.ones((8, 8), np.int64)) * 15  # [200, 64, 64]
  near = big.copy()
  near[:, 0, 0] += 1                                                 # near-copies at distance 1
  train = np.concatenate([near, big[:100]])
  d, idx = M.nearest_neighbours(big, train)
  flat = lambda a: a.reshape(len(a), -1)
  a, b = flat(big), flat(train)
  d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T   # int64 arithmetic: exact
  exact = np.sqrt(d2.min(1))
  np.testing.assert_array_equal(d, exact)
  np.testing.assert_array_equal(d[:100], 0.0)
  np.testing.assert_array_equal(train[idx[:100]], big[:100])
  assert np.sum(exact[100:] == 1.0) > 90                             # mostly the planted near-copies


def test_novelty_ratio_and_copy_share(digit_images):
  x = digit_images[0]
  train, test = x[:400], x[400:500]
  samples = np.concatenate([train[:5], x[600:615]])                  # 5 copies of 20
  out = M.novelty(samples, train, test, batch=8)
  flat = lambda a: a.reshape(len(a), -1).astype(np.float64)
  nn = lambda q: np.sqrt(((flat(q)[:, None] - flat(train)[None]) ** 2).sum(-1)).min(1)
  assert out["copy_share"] == 0.25
  assert M.exact_copy_share(samples, train) == 0.25
  assert M.exact_copy_share(samples.astype(np.float32), train) == 0.25
  np.testing.assert_allclose(out["sample_nn_median"], np.median(nn(samples)), rtol=1e-6)
  np.testing.assert_allclose(out["test_nn_median"], np.median(nn(test)), rtol=1e-6)
  np.testing.assert_allclose(out["novelty_ratio"], np.median(nn(samples)) / np.median(nn(test)), rtol=1e-6)
  assert M.novelty(train[:50], train, test)["novelty_ratio"] == 0.0


# --- grids ----------------------------------------------------------------------------------------


def test_save_grid_upscales_and_maps_levels(tmp_path, digit_images):
  x = digit_images[0][:10]
  path = grids.save_grid(x, str(tmp_path / "g.png"), nrow=5, levels=17)
  img = np.asarray(Image.open(path))
  assert img.shape == (2 * 65 + 1, 5 * 65 + 1)                       # 8x8 -> 64x64 cells, 1 px pad
  expected = np.round(np.kron(x[0, ..., 0], np.ones((8, 8))) * 255.0 / 16.0)
  np.testing.assert_array_equal(img[1:65, 1:65], expected)
  rgb = grids.make_grid(np.full((3, 16, 16, 3), 1.0, np.float32))  # [-1, 1] floats; 16 -> 64
  assert rgb.shape == (2 * 65 + 1, 2 * 65 + 1, 3) and rgb[1:65, 1:65].min() == 255
  assert grids.to_uint8(np.array([-1.0, 0.0, 1.0])).tolist() == [0, 128, 255]
  with pytest.raises(ValueError, match="C in"):
    grids.save_grid(np.zeros((2, 8, 8, 2), np.uint8), str(tmp_path / "bad.png"))


def test_save_gif_scatter_density(tmp_path, digit_images):
  frames = [digit_images[0][i:i + 4] for i in range(3)]
  gif = Image.open(grids.save_gif(frames, str(tmp_path / "a.gif"), levels=17))
  assert gif.n_frames == 3
  pts = digit_images[0][:50, 0, 2:4, 0].astype(np.float32)
  assert os.path.getsize(grids.save_scatter(pts, digit_images[1][:50], str(tmp_path / "s.png"))) > 0
  lp = lambda xy: -0.5 * np.sum(xy ** 2, axis=1)
  assert os.path.getsize(grids.save_density(lp, str(tmp_path / "d.png"), resolution=20, points=pts)) > 0


# --- evaluate() and tables ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dataset(digit_images):
  x, y = digit_images
  info = DatasetInfo(name="digits", kind="image", shape=(8, 8, 1), levels=17, num_classes=10)
  return Dataset(info, train={"image": x[:300], "label": y[:300]},
                 test={"image": x[300:370], "label": y[300:370]})


def test_evaluate_matches_direct_computation(tiny_dataset):
  from gdl_jax.models import baselines as B
  ds = tiny_dataset
  params = B.fit_independent(ds.train["image"], 17)
  calls = []

  def log_prob_fn(batch, key):
    calls.append(batch["image"].shape[0])
    return B.independent_log_prob(params, batch["image"])

  copies = ds.train["image"][:20]
  feature_fn = lambda im: im.reshape(len(im), -1)[:, 20:28].astype(np.float32)
  out = harness.evaluate(ds, log_prob_fn=log_prob_fn, sample_fn=lambda k, n: copies[:n],
                         feature_fn=feature_fn, num_samples=20, key=jax.random.key(0), batch_size=32)
  assert calls == [32, 32, 32]                                       # 70 examples, padded batches
  nll = -np.asarray(B.independent_log_prob(params, ds.test["image"]), np.float64)
  assert out["nll"] == pytest.approx(nll.mean(), rel=1e-6)
  assert out["bits_per_dim"] == pytest.approx(nll.mean() / (64 * math.log(2.0)), rel=1e-6)
  assert out["copy_share"] == 1.0 and out["novelty_ratio"] == 0.0
  assert out["frechet_distance"] > 0.0
  # FD against the same held-out images the harness draws: identical sets give 0.
  same = harness.evaluate(ds, samples=ds.test["image"], feature_fn=feature_fn, num_samples=70,
                          key=jax.random.key(0))
  assert same["frechet_distance"] == pytest.approx(0.0, abs=1e-7)
  assert same["novelty_ratio"] == pytest.approx(1.0)


def test_evaluate_rejects_float_samples(tiny_dataset):
  with pytest.raises(ValueError, match="from_signed"):
    harness.evaluate(tiny_dataset, sample_fn=lambda k, n: np.zeros((n, 8, 8, 1), np.float32),
                     num_samples=4, key=jax.random.key(0))


def test_markdown():
  row = harness.markdown_row("m", {"bits_per_dim": 2.4226, "novelty_ratio": 1.0, "copy_share": 0.0})
  assert row == "| m | 2.423 | – | 1.000 | 0.000 | – |"
  table = harness.markdown_table([("m", {"bits_per_dim": 2.0, "nll": 88.7214})])
  assert table.splitlines()[0] == "| model | bits/dim | FD | novelty ratio | copy share | nll (nats) |"
  assert table.splitlines()[1] == "|---|---|---|---|---|---|"
  assert table.splitlines()[2] == "| m | 2.000 | – | – | – | 88.72 |"
  assert harness.markdown_table({"a": {}, "b": {}}).count("\n") == 3


def test_baseline_table_runs_the_four_baselines(tiny_dataset):
  from gdl_jax.models import baselines as B
  ds = tiny_dataset
  rows = harness.baseline_table(ds, key=jax.random.key(0), num_samples=16, mixture_ks=(3,),
                                em_iters=3, gmm_components=(1,), kde_bandwidths=(0.2,))
  names = list(rows)
  assert names[0] == "independent categorical"
  assert names[1:] == ["mixture of categoricals (k=3)", "sklearn GaussianMixture (k=1)",
                       "sklearn KernelDensity (h=0.2)"]
  for m in rows.values():
    assert np.isfinite([m["bits_per_dim"], m["novelty_ratio"], m["copy_share"]]).all()
    assert m["num_samples"] == 16
  direct = -np.mean(np.asarray(B.independent_log_prob(B.fit_independent(ds.train["image"], 17),
                                                      ds.test["image"]), np.float64))
  assert rows[names[0]]["bits_per_dim"] == pytest.approx(direct / (64 * math.log(2.0)), rel=1e-6)
  # Continuous densities pay for dequantization: worse than the exact discrete independent model here.
  assert rows[names[2]]["bits_per_dim"] > rows[names[0]]["bits_per_dim"]
  assert len(harness.markdown_table(rows).splitlines()) == 6


def test_markdown_optional_label_accuracy_column():
  table = harness.markdown_table([("cgan", {"frechet_distance": 5.0, "conditional_accuracy": 0.949}),
                                  ("vae", {"frechet_distance": 8.0})])
  assert table.splitlines()[0].endswith("| nll (nats) | label accuracy |")
  assert table.splitlines()[2].endswith("| 0.949 |") and table.splitlines()[3].endswith("| – |")


def test_evaluate_task_reports_conditional_accuracy(digits, monkeypatch):
  """A Task with sample_labeled gets `conditional_accuracy`: the share of samples the dataset's
  classifier labels as the class asked for (classifier faked: it reads the class off the pixels)."""
  from gdl_jax.evaluation import classifier, tasks
  from gdl_jax.train import Task
  monkeypatch.setattr(classifier, "feature_fn", lambda ds, **kw: lambda im: im.reshape(len(im), -1)[:, :8].astype(np.float32))
  monkeypatch.setattr(classifier, "label_fn", lambda ds, **kw: lambda im: im[:, 0, 0, 0] % 10)

  def draw(labels, wrong_every):
    x = np.zeros((len(labels), 8, 8, 1), np.int32) + np.asarray(labels)[:, None, None, None]
    x[::wrong_every, 0, 0, 0] += 1                             # every k-th sample is the wrong class
    return x

  keys = {"sample": jax.random.key(0)}
  for wrong_every, expect in ((1, 0.0), (4, 0.75)):
    task = Task(init=None, step=None, sample=lambda s, k, n: draw(np.arange(n) % 10, 10 ** 6),
                sample_labeled=lambda s, k, labels, w=wrong_every: draw(labels, w))
    m = tasks.evaluate_task(task, None, digits, None, keys, num_samples=40, use_log_prob=False)
    assert m["conditional_accuracy"] == pytest.approx(expect), m
  # Samples 0, 4, ..., 36 are wrong: labels 0, 4, 8, 2, 6, 0, 4, 8, 2, 6 -> even classes 2 of 4 right.
  assert m["conditional_accuracy_per_class"] == [0.5, 1.0] * 5
