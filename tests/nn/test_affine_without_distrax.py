"""gdl_jax.nn.coupling's own affine maps equal distrax's ScalarAffine in Block / MaskedCoupling (the
dependency they replace, with its nightly TensorFlow Probability); skipped where distrax is absent."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gdl_jax.nn import coupling

distrax = pytest.importorskip("distrax")


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("mask, shape", [("checkerboard", (3, 4, 4, 2)), ("channel", (3, 4, 4, 2)),
                                         ("alternating", (5, 6))])
def test_coupling_and_actnorm_match_distrax(mask, shape, reverse):
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
