"""VGG16 feature and LPIPS timings (batch 32, 32x32 and 64x64), with and without the im2col path.

    python benchmarks/perceptual_speed.py [--batch 32] [--sizes 32,64] [--repeats 5]

Prints one line per (size, what): the median wall time of a jitted call after compilation. "lax"
rows set gdl_jax.nn.vgg.IM2COL_MAX_PIXELS = 0 (every 3x3 conv through lax's convolution), the
path XLA:CPU runs ~100x slower on 2x2 maps. Needs the `perceptual` extra.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp


def _time(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))                                   # compile
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--sizes", default="32,64")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--no_lax", action="store_true", help="skip the plain-convolution rows")
  args = p.parse_args(argv)

  from gdl_jax.nn import vgg
  from gdl_jax.objectives.perceptual import lpips
  lp = vgg.load_lpips_params()
  default = vgg.IM2COL_MAX_PIXELS
  print(f"backend {jax.default_backend()}, {jax.device_count()} device(s), batch {args.batch}")
  for size in (int(s) for s in args.sizes.split(",")):
    x = jax.random.uniform(jax.random.key(0), (args.batch, size, size, 3), minval=-1.0, maxval=1.0)
    y = jnp.flip(x, axis=2)
    for path, limit in ((f"im2col<={default}px", default), ("lax", 0))[:1 if args.no_lax else 2]:
      vgg.IM2COL_MAX_PIXELS = limit                                  # read at trace time
      feats = jax.jit(lambda p, x: vgg.vgg16_features(p, x))
      loss_grad = jax.jit(jax.grad(lambda x, p, y: jnp.mean(lpips(p, x, y))))
      t_f = _time(feats, lp["vgg"], x, repeats=args.repeats)
      t_g = _time(loss_grad, x, lp, y, repeats=args.repeats)
      print(f"{size}x{size} [{path}]: VGG16 forward (5 LPIPS taps) {t_f:.3f} s, "
            f"LPIPS gradient wrt x (forward+backward) {t_g:.3f} s", flush=True)
  vgg.IM2COL_MAX_PIXELS = default
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
