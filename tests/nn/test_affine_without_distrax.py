"""gdl_jax.nn.coupling's own affine maps: against a float64 numpy computation of the masked coupling
and ActNorm (always), and against distrax's ScalarAffine in Block / MaskedCoupling (the dependency
they replace, with its nightly TensorFlow Probability) where distrax is installed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdl_jax.nn import coupling

CASES = [("checkerboard", (3, 4, 4, 2)), ("channel", (3, 4, 4, 2)), ("alternating", (5, 6))]


def _layer_and_conditioner(mask, shape):
  x = jax.random.normal(jax.random.key(0), shape)  # shape test: any values
  net = coupling.MLP((8,)) if len(shape) == 2 else coupling.ConvNet(4, 1)
  layer = coupling.AffineCoupling(mask, 1, net)
  params = layer.init(jax.random.key(1), x)
  # a non-identity conditioner: perturb every parameter (the last layer starts at zero)
  params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(2), p.shape), params)

  def cond(x_kept):
    raw = net.apply({"params": params["params"]["net"]}, x_kept)
    c = x.shape[-1]
    s = params["params"]["s_scale"].reshape((1,) * (x.ndim - 1) + (c,))
    return s * jnp.tanh(raw[..., :c]), raw[..., c:]

  return x, layer, params, cond


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("mask, shape", CASES)
def test_coupling_and_actnorm_match_numpy(mask, shape, reverse):
  """y = m x + (1 - m) (exp(s) x + t), s, t = conditioner(m x), log-det = sum (1 - m) s; reverse
  inverts it with -log-det. ActNorm: y = exp(log_scale) x + shift per channel."""
  x, layer, params, cond = _layer_and_conditioner(mask, shape)
  y, ld = layer.apply(params, x, reverse=reverse)
  m = np.asarray(layer.bind(params).make_mask(x.shape), np.float64)
  s, t = (np.asarray(a, np.float64) for a in cond(jnp.asarray(m * np.asarray(x), jnp.float32)))
  xn = np.asarray(x, np.float64)
  if reverse:
    y_ref, ld_el = m * xn + (1 - m) * np.exp(-s) * (xn - t), -(1 - m) * s
  else:
    y_ref, ld_el = m * xn + (1 - m) * (np.exp(s) * xn + t), (1 - m) * s
  ld_ref = np.broadcast_to(ld_el, xn.shape).sum(axis=tuple(range(1, xn.ndim)))
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ld, ld_ref, rtol=1e-5, atol=1e-4)

  an = coupling.ActNorm()
  p_an = an.init(jax.random.key(3), x)
  y, ld = an.apply(p_an, x, reverse=reverse)
  ls, sh = (np.asarray(p_an["params"][k], np.float64) for k in ("log_scale", "shift"))
  y_ref = np.exp(-ls) * (xn - sh) if reverse else np.exp(ls) * xn + sh
  ld_ref = (-1 if reverse else 1) * np.broadcast_to(ls, xn.shape).sum(axis=tuple(range(1, xn.ndim)))
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ld, ld_ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("mask, shape", CASES)
def test_coupling_and_actnorm_match_distrax(mask, shape, reverse):
  distrax = pytest.importorskip("distrax")
  x = jax.random.normal(jax.random.key(0), shape)  # shape test: any values
  net = coupling.MLP((8,)) if len(shape) == 2 else coupling.ConvNet(4, 1)
  layer = coupling.AffineCoupling(mask, 1, net)
  params = layer.init(jax.random.key(1), x)
  # a non-identity conditioner: perturb every parameter (the last layer starts at zero)
  params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(2), p.shape), params)
  y, ld = layer.apply(params, x, reverse=reverse)

  def cond(x_kept):
    raw = net.apply({"params": params["params"]["net"]}, x_kept)
    c = x.shape[-1]
    s = params["params"]["s_scale"].reshape((1,) * (x.ndim - 1) + (c,))
    return s * jnp.tanh(raw[..., :c]), raw[..., c:]

  ref = distrax.MaskedCoupling(mask=layer.bind(params).make_mask(x.shape), conditioner=cond,
                               bijector=lambda p: distrax.ScalarAffine(shift=p[1], log_scale=p[0]),
                               event_ndims=x.ndim - 1)
  y_ref, ld_ref = ref.inverse_and_log_det(x) if reverse else ref.forward_and_log_det(x)
  np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(ld, ld_ref, rtol=1e-6, atol=1e-5)

  an = coupling.ActNorm()
  p_an = an.init(jax.random.key(3), x)
  y, ld = an.apply(p_an, x, reverse=reverse)
  ls, sh = p_an["params"]["log_scale"], p_an["params"]["shift"]
  block = distrax.Block(distrax.ScalarAffine(shift=sh, log_scale=ls), x.ndim - 1)
  y_ref, ld_ref = block.inverse_and_log_det(x) if reverse else block.forward_and_log_det(x)
  np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(ld, ld_ref, rtol=1e-6, atol=1e-5)
