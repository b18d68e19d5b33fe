"""Neural style transfer: the objective's terms against hand computations (numpy loops), its
invariants (zero style loss for the style image itself, zero content loss for the content image),
its gradient against finite differences, and Gatys et al.'s optimisation (L-BFGS and Adam)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdl_jax.nn import vgg as vgg_lib
from gdl_jax.objectives import perceptual as P
from gdl_jax.objectives import style_transfer as S

pytest.importorskip("skimage")
if not vgg_lib.available():
  pytest.skip(f"needs the perceptual extra: {vgg_lib.INSTALL_HINT}", allow_module_level=True)

# The CLI's end-to-end test (tests/test_paint.py) stylises the same shapes, so the compiled
# optimisation is shared within a test process.
SIZE, STEPS = 32, 3


@pytest.fixture(scope="module")
def vgg():
  return P.load_vgg16_params()


@pytest.fixture(scope="module")
def pair():
  from gdl_jax.cli import PAINT_CONTENT, PAINT_STYLE
  from gdl_jax.data.images import read_image
  return (jnp.asarray(read_image(PAINT_CONTENT, SIZE))[None],
          jnp.asarray(read_image(PAINT_STYLE, SIZE))[None])


def test_gram_matrix_by_hand():
  """G[b, i, j] = sum over pixels of F[p, i] F[p, j] / (h w c), written as explicit loops."""
  f = np.random.default_rng(0).normal(size=(2, 3, 2, 4)).astype(np.float32)
  b, h, w, c = f.shape
  want = np.zeros((b, c, c))
  for n in range(b):
    for i in range(c):
      for j in range(c):
        want[n, i, j] = sum(float(f[n, y, x, i]) * float(f[n, y, x, j])
                            for y in range(h) for x in range(w)) / (h * w * c)
  np.testing.assert_allclose(P.gram_matrix(jnp.asarray(f)), want, rtol=1e-5, atol=1e-7)
  # One 1x1 feature map with channels (1, 2): F^T F / c = [[1, 2], [2, 4]] / 2.
  np.testing.assert_allclose(P.gram_matrix(jnp.asarray([[[[1.0, 2.0]]]])), [[[0.5, 1.0], [1.0, 2.0]]])


def test_total_variation_term_by_hand(vgg, pair):
  """The tv term is sum |neighbour differences|^p / (h w c), here on a 16x16 image by loops."""
  x = np.asarray(jax.random.uniform(jax.random.key(0), (1, 16, 16, 3), minval=-1, maxval=1))
  for p in (1.0, 2.0):
    want = 0.0
    for y in range(16):
      for z in range(16):
        for ch in range(3):
          if y + 1 < 16:
            want += abs(float(x[0, y + 1, z, ch]) - float(x[0, y, z, ch])) ** p
          if z + 1 < 16:
            want += abs(float(x[0, y, z + 1, ch]) - float(x[0, y, z, ch])) ** p
    w = S.StyleWeights(tv_power=p)
    targets = S.style_targets(vgg, jnp.asarray(x), pair[1], w)
    got = S.style_transfer_terms(vgg, jnp.asarray(x), targets, w)["tv"]
    np.testing.assert_allclose(got, [want / (16 * 16 * 3)], rtol=1e-5)


def test_style_loss_is_zero_for_the_style_image_and_content_loss_for_the_content(vgg, pair):
  content, style = pair
  targets = S.style_targets(vgg, content, style)
  at_style = S.style_transfer_terms(vgg, style, S.style_targets(vgg, style, style))  # its own content
  at_content = S.style_transfer_terms(vgg, content, targets)
  assert float(at_content["style"][0]) > 1.0                       # the photo is not the texture
  np.testing.assert_allclose(at_style["style"], [0.0], atol=1e-6 * float(at_content["style"][0]))
  np.testing.assert_allclose(at_content["content"], [0.0], atol=1e-6)
  # The style term equals perceptual.style_loss on the same layers (an independent code path).
  np.testing.assert_allclose(at_content["style"], P.style_loss(vgg, content, style, S.GATYS_STYLE_LAYERS),
                             rtol=1e-5)
  # The loss is the weighted sum of the terms.
  w = S.StyleWeights(content=2.0, style=3.0, tv=5.0)
  loss, terms = S.style_transfer_loss(vgg, content * 0.5, targets, w)
  np.testing.assert_allclose(loss, 2 * terms["content"][0] + 3 * terms["style"][0] + 5 * terms["tv"][0],
                             rtol=1e-6)


def test_style_layer_terms_split_the_style_term_by_layer(vgg, pair):
  """Per layer ||G_l(x) - G_l(style)||^2 against perceptual.style_loss on that one layer (an
  independent code path); the five sum to the style term; missing targets are named."""
  content, style = pair
  targets = S.style_targets(vgg, content, style)
  x = jnp.concatenate([content, 0.5 * content])
  per_layer = S.style_layer_terms(vgg, x, targets.grams)
  assert tuple(per_layer) == S.GATYS_STYLE_LAYERS
  for layer, got in per_layer.items():
    assert got.shape == (2,)
    np.testing.assert_allclose(got[:1], P.style_loss(vgg, content, style, (layer,)), rtol=1e-5)
  np.testing.assert_allclose(sum(per_layer.values()),
                             S.style_transfer_terms(vgg, x, targets)["style"], rtol=1e-5)
  with pytest.raises(ValueError, match="relu4_2"):
    S.style_layer_terms(vgg, content, targets.grams, ("relu4_2",))


def test_objective_gradient_matches_finite_differences(vgg, xla_defaults):
  """Directional derivatives of the full objective at a 16x16 image against central differences
  (tv_power=2 and an image away from the ReLU kinks keep it smooth enough for float32)."""
  keys = jax.random.split(jax.random.key(1), 6)
  content = jax.random.uniform(keys[0], (1, 16, 16, 3), minval=-0.8, maxval=0.8)
  style = jax.random.uniform(keys[1], (1, 16, 16, 3), minval=-0.8, maxval=0.8)
  x = jax.random.uniform(keys[2], (1, 16, 16, 3), minval=-0.8, maxval=0.8)
  w = S.StyleWeights(content=1.0, style=10.0, tv=1.0, tv_power=2.0)
  targets = S.style_targets(vgg, content, style, w)
  f = jax.jit(lambda x, vgg, t: S.style_transfer_loss(vgg, x, t, w)[0])
  g = jax.jit(jax.grad(lambda x, vgg, t: S.style_transfer_loss(vgg, x, t, w)[0]))(x, vgg, targets)
  eps = 1e-3
  for key in keys[3:]:
    v = jax.random.normal(key, x.shape)
    v = v / jnp.linalg.norm(v)
    fd = (float(f(x + eps * v, vgg, targets)) - float(f(x - eps * v, vgg, targets))) / (2 * eps)
    np.testing.assert_allclose(float(jnp.vdot(g, v)), fd, rtol=2e-2)


def test_weights_are_checked():
  for bad in (dict(style=-1.0), dict(tv=float("nan")), dict(tv_power=0.5),
              dict(style_layers=("relu9_9",)), dict(content_layers=())):
    with pytest.raises(ValueError):
      S.StyleWeights(**bad)


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_stylize_lowers_the_style_loss(vgg, pair, optimizer):
  """A few steps from the content image: the objective falls, the style term well below the content
  image's, the image stays in [-1, 1] with the content's shape."""
  from gdl_jax.samplers.style_transfer import stylize
  content, style = pair
  steps = STEPS if optimizer == "lbfgs" else 5
  out = stylize(content[0], style[0], vgg, steps=steps, optimizer=optimizer, lr=0.05)
  start = S.style_transfer_terms(vgg, content, S.style_targets(vgg, content, style))
  assert out.image.shape == content.shape and out.losses.shape == (steps,)
  assert float(jnp.abs(out.image).max()) <= 1.0
  assert float(out.terms["style"][0]) < 0.8 * float(start["style"][0]), (out.terms, start)
  assert float(out.losses[-1]) < float(out.losses[0])
  with pytest.raises(ValueError, match="optimizer"):
    stylize(content, style, vgg, optimizer="sgd")
  with pytest.raises(ValueError, match="key"):
    stylize(content, style, vgg, init="noise")
