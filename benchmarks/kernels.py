"""Alternative lowerings of the 28x28 steps' convolutions and BatchNorm, each against the plain op.

    python benchmarks/kernels.py [--rounds 9] [--reps 3] [--out benchmarks/results] [--quick]
    python benchmarks/kernels.py --only_steps --out benchmarks/results     # -> kernels_steps.md

Issue 20's levers, measured per layer shape before any is adopted (a kernel goes into gdl_jax
only where it wins at the shapes the models use):

* **Convolution** (3x3, SAME), forward + the gradients a train step takes (the kernel's, plus the
  input's except for a first layer, whose input is data), jitted, against `lax.conv_general_dilated`
  (what flax's Conv lowers to):
  - `patches`: `lax.conv_general_dilated_patches` + one matmul (im2col by XLA's own op);
  - `slices`: im2col by kh*kw strided slices concatenated on the channel axis, + one matmul;
  - `accum`: kh*kw matmuls of the shifted slices, summed (no im2col buffer).
* **BatchNorm** (training mode, statistics over [B, H, W]), value and gradient of a loss through it,
  against flax's `nn.BatchNorm` (one pass in the source: mean and mean of squares, which XLA:CPU
  compiles into two reduce fusions); each alternative is gdl_jax.nn.norm's `jax.custom_vjp` with the closed-form
  backward (dx = scale / std * (g - mean(g) - xhat * mean(g * xhat))):
  - `two_sums`: the statistics and the backward's two sums as separate `jnp.sum`s;
  - `variadic`: each pair of sums as ONE variadic `lax.reduce` (one fusion, one read);
  - `dots`: each sum as a ones-vector matmul over [B*H*W, C] (XLA:CPU's dot path).

* **Whole train steps** (`--steps`): the speed table's models whose steps hold BatchNorm, built
  twice in one process, with flax's `nn.BatchNorm` patched into the model modules and with
  `gdl_jax.nn.norm.BatchNorm` (what they use), timed in interleaved windows.

Rows: median milliseconds over interleaved rounds (each round times every variant back to back,
`--reps` calls each), the speed-up over the plain op (median of the per-round ratios), and the
largest error of the value and gradients relative to the plain op's largest magnitude. No timing is
asserted anywhere; tests/test_benchmarks_smoke.py checks every variant's values against the plain op.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")

# (batch, h, w, cin, cout, k, stride, first): the Fashion-MNIST CNN's four convs at batch 128 (the
# speed table's cnn_fashion), the Fashion VAE encoder's first conv and decoder's output conv at 64.
CONV_SHAPES = (
    (128, 28, 28, 1, 32, 3, 1, True), (128, 28, 28, 32, 32, 3, 2, False),
    (128, 14, 14, 32, 64, 3, 1, False), (128, 14, 14, 64, 64, 3, 2, False),
    (64, 28, 28, 1, 32, 3, 2, True), (64, 28, 28, 32, 1, 3, 1, False),
)
# the BatchNorm inputs of the Fashion CNN's step (after each conv) and a batch-64 one
BN_SHAPES = ((128, 28, 28, 32), (128, 14, 14, 32), (128, 14, 14, 64), (128, 7, 7, 64), (64, 14, 14, 32))
QUICK_CONV = ((4, 8, 8, 1, 4, 3, 1, True), (4, 8, 8, 3, 5, 3, 2, False))
QUICK_BN = ((4, 5, 5, 3),)


# ---------------------------------------------------------------------------------------------
# Convolutions: x [B, H, W, Cin], kernel [kh, kw, Cin, Cout] (HWIO), SAME padding

def conv_plain(x, k, s):
  return lax.conv_general_dilated(x, k, (s, s), "SAME", dimension_numbers=_DN)


def conv_patches(x, k, s):
  kh, kw, ci, co = k.shape
  p = lax.conv_general_dilated_patches(x, (kh, kw), (s, s), "SAME", dimension_numbers=_DN)
  # the patches' feature axis is ordered (Cin, kh, kw)
  return jnp.einsum("bhwf,fo->bhwo", p, jnp.transpose(k, (2, 0, 1, 3)).reshape(ci * kh * kw, co))


def _shifted(x, kh, kw, s):
  """The kh*kw strided slices of the SAME-padded input that meet each kernel tap, in (i, j) order."""
  b, h, w, c = x.shape
  pads, outs = [], []
  for n, k in ((h, kh), (w, kw)):
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    pads.append((total // 2, total - total // 2))
    outs.append(out)
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  oh, ow = outs
  return [lax.slice(xp, (0, i, j, 0), (b, i + (oh - 1) * s + 1, j + (ow - 1) * s + 1, c), (1, s, s, 1))
          for i in range(kh) for j in range(kw)]


def conv_slices(x, k, s):
  kh, kw, ci, co = k.shape
  p = jnp.concatenate(_shifted(x, kh, kw, s), axis=-1)          # features ordered (kh, kw, Cin)
  return jnp.einsum("bhwf,fo->bhwo", p, k.reshape(kh * kw * ci, co))


def conv_accum(x, k, s):
  kh, kw = k.shape[:2]
  taps = _shifted(x, kh, kw, s)
  return sum(jnp.einsum("bhwc,co->bhwo", t, k[i // kw, i % kw]) for i, t in enumerate(taps))


CONV_IMPLS = {"plain": conv_plain, "patches": conv_patches, "slices": conv_slices, "accum": conv_accum}


# ---------------------------------------------------------------------------------------------
# BatchNorm, training mode: statistics over every axis but the last

EPS = 1e-5


def bn_plain(x, scale, bias):
  import flax.linen as nn
  bn = nn.BatchNorm(use_running_average=False, epsilon=EPS)
  stats = {"mean": jnp.zeros_like(scale), "var": jnp.ones_like(scale)}
  y, _ = bn.apply({"params": {"scale": scale, "bias": bias}, "batch_stats": stats}, x,
                  mutable=["batch_stats"])
  return y


def _sums_separate(a, b):
  axes = tuple(range(a.ndim - 1))
  return jnp.sum(a, axes), jnp.sum(b, axes)


def _sums_variadic(a, b):
  z = jnp.zeros((), a.dtype)
  return lax.reduce((a, b), (z, z), lambda p, q: (p[0] + q[0], p[1] + q[1]), tuple(range(a.ndim - 1)))


def _sums_dots(a, b):
  c = a.shape[-1]
  ones = jnp.ones((a.size // c,), a.dtype)
  return ones @ a.reshape(-1, c), ones @ b.reshape(-1, c)


def _custom_bn(sums):
  """gdl_jax.nn.norm's training-mode BatchNorm (closed-form custom VJP) with its sums taken by `sums`."""
  from gdl_jax.nn.norm import batch_norm_train
  return lambda x, scale, bias: batch_norm_train(x, scale, bias, EPS, sums=sums)[0]


BN_IMPLS = {"plain": bn_plain, "two_sums": _custom_bn(_sums_separate),
            "variadic": _custom_bn(_sums_variadic), "dots": _custom_bn(_sums_dots)}


# ---------------------------------------------------------------------------------------------
# Measuring

def conv_case(shape):
  """(functions by variant, args): value and the gradients a train step takes through the layer."""
  n, h, w, ci, co, k, s, first = shape
  x = jax.random.normal(jax.random.key(0), (n, h, w, ci))
  kern = jax.random.normal(jax.random.key(1), (k, k, ci, co)) / (k * k * ci) ** 0.5
  target = jax.random.normal(jax.random.key(2), (n, -(-h // s), -(-w // s), co))
  fns = {}
  for name, op in CONV_IMPLS.items():
    def loss(kern, x, op=op):
      return jnp.mean(jnp.square(op(x, kern, s) - target))
    fns[name] = jax.jit(jax.value_and_grad(loss, 0 if first else (0, 1)))
  return fns, (kern, x)


def bn_case(shape):
  x = 2.0 * jax.random.normal(jax.random.key(0), shape) + 1.0
  c = shape[-1]
  scale, bias = jnp.linspace(0.5, 1.5, c), jnp.linspace(-1.0, 1.0, c)
  w = jax.random.normal(jax.random.key(1), shape)
  fns = {}
  for name, op in BN_IMPLS.items():
    def loss(x, scale, bias, op=op):
      return jnp.sum(jnp.tanh(op(x, scale, bias)) * w)
    fns[name] = jax.jit(jax.value_and_grad(loss, (0, 1, 2)))
  return fns, (x, scale, bias)


def max_rel_error(ref, out) -> float:
  """Largest |out - ref| over the value and every gradient, each relative to max |ref|."""
  return max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(a)) + 1e-30))
             for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(out)))


def measure(fns: dict, args: tuple, rounds: int, reps: int) -> dict:
  ref = jax.block_until_ready(fns["plain"](*args))
  errors = {name: max_rel_error(ref, jax.block_until_ready(f(*args))) for name, f in fns.items()}
  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, f in fns.items():
      t = time.perf_counter()
      for _ in range(reps):
        jax.block_until_ready(f(*args))
      times[name].append((time.perf_counter() - t) / reps)
  return {name: {"ms": 1e3 * statistics.median(ts), "max_rel_error": errors[name],
                 "speedup": statistics.median(p / t for p, t in zip(times["plain"], ts))}
          for name, ts in times.items()}


STEP_MODELS = ("cnn_digits", "cnn_fashion", "dcgan_digits", "dcgan_fashion")
BN_MODULES = ("gdl_jax.models.classifiers", "gdl_jax.models.gan", "gdl_jax.models.musegan")


def step_rows(models, rounds: int) -> list[dict]:
  """Each model's train step with flax's BatchNorm vs gdl_jax.nn.norm's, interleaved windows."""
  import importlib

  import flax.linen as nn
  import speed
  from gdl_jax import data
  mods = [importlib.import_module(m) for m in BN_MODULES]
  ours = mods[0].BatchNorm
  rows = []
  for name in models:
    mod, config = speed.load_config(name, False)
    ds = data.load(config.dataset)
    batch = data.batch_at(ds.train, 0, int(config.batch_size), int(config.seed))
    runners = {}
    try:
      for tag, bn in (("flax", nn.BatchNorm), ("ours", ours)):
        for m in mods:
          m.BatchNorm = bn
        runners[tag] = speed.JaxRunner(mod, config, ds.info, batch)
    finally:
      for m in mods:
        m.BatchNorm = ours
    k = speed.window_size(runners["flax"].second_step_s, 0.5)
    times = {tag: [] for tag in runners}
    for _ in range(rounds):
      for tag, r in runners.items():
        times[tag].append(r.window(k) / k)
    rows.append({"model": name, "batch": int(config.batch_size), "steps_per_window": k,
                 "flax_ms": 1e3 * statistics.median(times["flax"]),
                 "ours_ms": 1e3 * statistics.median(times["ours"]),
                 "speedup": statistics.median(a / b for a, b in zip(times["flax"], times["ours"]))})
    print(rows[-1], file=sys.stderr, flush=True)
  return rows


def conv_label(shape) -> str:
  n, h, w, ci, co, k, s, first = shape
  return f"{n}x{h}x{w}x{ci} -> {co}, {k}x{k}/{s}" + (" (first: kernel grad only)" if first else "")


def markdown(report: dict) -> str:
  lines = [f"# Alternative kernels (benchmarks/kernels.py)", "", f"`{report['command']}`; "
           f"{report['machine']}; speed-up = plain op's time / the variant's (median of per-round "
           "ratios), err = max relative error of value and gradients vs the plain op.", ""]
  for title, key, names in (("Convolution (value + train-step gradients)", "conv", tuple(CONV_IMPLS)),
                            ("BatchNorm, training mode (value + gradients)", "batchnorm", tuple(BN_IMPLS))):
    lines += [f"## {title}", "", "| shape | " + " | ".join(f"{n} ms (x)" for n in names) + " | max err |",
              "|---" * (len(names) + 2) + "|"]
    for row in report[key]:
      r = row["results"]
      cells = [f"{r[n]['ms']:.2f} ({r[n]['speedup']:.2f}x)" for n in names]
      err = max(r[n]["max_rel_error"] for n in names)
      lines.append(f"| {row['shape']} | " + " | ".join(cells) + f" | {err:.1e} |")
    lines.append("")
  if report.get("steps"):
    lines += ["## Whole train steps: flax's BatchNorm vs gdl_jax.nn.norm.BatchNorm", "",
              "| model | batch | flax BN ms/step | ours ms/step | speed-up |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['batch']} | {r['flax_ms']:.1f} | {r['ours_ms']:.1f} | {r['speedup']:.2f}x |"
              for r in report["steps"]]
    lines.append("")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--rounds", type=int, default=9)
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--out", default=None, help="directory for kernels.json / kernels.md")
  p.add_argument("--quick", action="store_true", help="tiny shapes, 2 rounds (a smoke run)")
  p.add_argument("--steps", action="store_true", help="also the whole-step BatchNorm comparison")
  p.add_argument("--only_steps", action="store_true", help="only the whole-step comparison")
  args = p.parse_args(argv)
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from gdl_jax import runtime
  runtime.apply_xla_defaults()
  rounds = 2 if args.quick else args.rounds
  reps = 1 if args.quick else args.reps
  report = {"command": "python benchmarks/kernels.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": f"jax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} CPUs, "
                       f"load {os.getloadavg()[0]:.1f} at start",
            "conv": [], "batchnorm": []}
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  conv_shapes, bn_shapes = (QUICK_CONV, QUICK_BN) if args.quick else (CONV_SHAPES, BN_SHAPES)
  if args.only_steps:
    conv_shapes, bn_shapes = (), ()
  for shape in conv_shapes:
    report["conv"].append({"shape": conv_label(shape), "results": measure(*conv_case(shape), rounds, reps)})
    print(report["conv"][-1]["shape"], {k: round(v["speedup"], 2) for k, v in report["conv"][-1]["results"].items()},
          file=sys.stderr, flush=True)
  for shape in bn_shapes:
    report["batchnorm"].append({"shape": "x".join(map(str, shape)), "results": measure(*bn_case(shape), rounds, reps)})
    print(report["batchnorm"][-1]["shape"], {k: round(v["speedup"], 2) for k, v in report["batchnorm"][-1]["results"].items()},
          file=sys.stderr, flush=True)
  if args.steps or args.only_steps:
    report["steps"] = step_rows(STEP_MODELS, rounds)
  report["machine"] += f", {os.getloadavg()[0]:.1f} at end"
  text = markdown(report)
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    stem = "kernels_steps" if args.only_steps else "kernels"   # --only_steps keeps the kernel tables
    with open(os.path.join(args.out, f"{stem}.json"), "w") as f:
      json.dump(report, f, indent=1)
    with open(os.path.join(args.out, f"{stem}.md"), "w") as f:
      f.write(text + "\n")
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
