"""FLOPs of compiled programs from XLA's cost analysis, and of a whole DDIM sampling run.

XLA's cost analysis counts a `while` body (a lax.scan) once, whatever its trip count (checked:
a 10-step scan of a matmul reports the FLOPs of one). So a sampler's count is assembled from
programs without loops: one DDIM step (the denoiser call + the update, compiled as a 1-step
`ddim_sample`, which also draws x_T) times the number of steps, plus the decoder where there is one.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp


def compiled_flops(fn: Callable, *args: Any) -> float:
  """FLOPs of one call of jit(fn) on args (arrays or jax.ShapeDtypeStruct), per XLA's cost analysis."""
  ca = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(ca, (list, tuple)):  # older jax: a list with one dict per program
    ca = ca[0] if ca else None
  if not ca or "flops" not in ca:
    raise RuntimeError(f"XLA's cost analysis gave no 'flops' on {jax.default_backend()} ({ca!r}).")
  return float(ca["flops"])


def ddim_sampling_flops(predict, params, alpha_bars: jax.Array, shape: tuple[int, ...], steps: int, *,
                        prediction: str, clip: bool, decode: Optional[Callable] = None,
                        decode_params: Any = None) -> dict:
  """FLOPs of one `ddim_sample` run of `steps` steps on `shape` (batch included), plus decode(z).

  Returns {"per_step", "decode", "total"} with total = steps * per_step + decode. `params` may be
  abstract (jax.eval_shape output); nothing is executed, only compiled.
  """
  from gdl_jax.samplers.diffusion import ddim_sample

  def one_step(p, key):
    return ddim_sample(predict, p, key, alpha_bars, shape=tuple(shape), steps=1, eta=1.0,
                       prediction=prediction, clip=clip)

  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
  per_step = compiled_flops(one_step, params, key)
  dec = 0.0
  if decode is not None:
    dec = compiled_flops(decode, decode_params, jax.ShapeDtypeStruct(tuple(shape), jnp.float32))
  return {"per_step": per_step, "decode": dec, "total": int(steps) * per_step + dec}
