"""Sampler speed: the PixelCNN's cached raster sampler vs re-running the whole network per pixel.

    python benchmarks/samplers.py                        # batches 1, 64, 256; 5 rounds
    python benchmarks/samplers.py --batches 1,64 --rounds 3 --out benchmarks/results

The digits PixelCNN with `experiments/pixelcnn_digits.get_config()` (gated, logistic mixture,
8x8, 17 levels; parameters from model.init: the speed does not depend on their values). For each
batch: `sample_images(..., cached=False)` (sample_raster: 64 full-network passes) and
`cached=True` (sample_raster_cached: one position per layer per pixel), both jitted and compiled
first; then interleaved rounds, each timing one window of calls of both back to back in a rotating
order (benchmarks/_timing.py). samples/s is the median over rounds, the speed-up the median of the
per-round ratios. Also checks that both drew the same images for the same key. Writes
<out>/samplers.json and <out>/samplers.md; prints the markdown.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]
import _timing  # noqa: E402


def bench_pixelcnn(batches, rounds: int, window_s: float) -> list[dict]:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from experiments.pixelcnn_digits import get_config, make_model, sample_images

  config = get_config()
  model = make_model(config.model, 17)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 1), jnp.int32))["params"]
  rows = []
  for b in batches:
    fns = {name: jax.jit(lambda k, cached=cached, b=b: sample_images(
        model, params, k, (b, 8, 8, 1), cached=cached)) for name, cached in
        (("full", False), ("cached", True))}
    key = jax.random.key(1)
    compile_s, outs, call_s = {}, {}, {}
    for name, fn in fns.items():
      compile_s[name] = _timing.timed(lambda fn=fn: jax.block_until_ready(fn(key)))
      outs[name] = np.asarray(fn(key))
      call_s[name] = _timing.timed(lambda fn=fn: jax.block_until_ready(fn(key)))
    ks = {name: max(1, round(window_s / max(call_s[name], 1e-6))) for name in fns}
    times = {name: [] for name in fns}
    for r in range(rounds):
      order = list(fns) if r % 2 == 0 else list(fns)[::-1]
      for name in order:
        fn, k = fns[name], ks[name]

        def run(fn=fn, k=k):
          for _ in range(k):
            jax.block_until_ready(fn(key))

        times[name].append(_timing.timed(run))
    row = {"model": "pixelcnn_digits", "batch": b, "same_images": bool(
        (outs["full"] == outs["cached"]).all()), "speedup": _timing.median_ratio(
            [t / ks["cached"] for t in times["cached"]], [t / ks["full"] for t in times["full"]])}
    for name in fns:
      s = _timing.rate_summary(times[name], ks[name])
      row[name] = {"samples_per_s": s["steps_per_s"] * b, "p25": s["p25"] * b, "p75": s["p75"] * b,
                   "calls_per_window": ks[name], "windows": s["windows"],
                   "first_call_s": compile_s[name], "window_s": times[name]}
    print(json.dumps(row), flush=True)
    rows.append(row)
  return rows


def markdown(report: dict) -> str:
  lines = [f"# Sampler speed ({report['date']})", "",
           f"Command: `{report['command']}`; {report['machine']}; load average at start "
           f"{report['load_start']}, at end {report['load_end']}; {report['wall_s']:.0f} s wall.", "",
           "PixelCNN digits (gated, logistic mixture, 8x8): `sample_raster` (whole network per "
           "pixel) vs `sample_raster_cached` (activation cache, one position per layer per pixel). "
           "Medians over interleaved rounds; speed-up = median of per-round ratios.", "",
           "| batch | full samples/s | cached samples/s | speed-up | same images | first call s (full / cached) |",
           "|---|---|---|---|---|---|"]
  for r in report["rows"]:
    lines.append(f"| {r['batch']} | {r['full']['samples_per_s']:,.1f} | "
                 f"{r['cached']['samples_per_s']:,.1f} | {r['speedup']:.1f}x | {r['same_images']} | "
                 f"{r['full']['first_call_s']:.2f} / {r['cached']['first_call_s']:.2f} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--batches", default="1,64,256")
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--window-s", type=float, default=1.0, help="seconds per timed window (about)")
  ap.add_argument("--out", default=os.path.join(HERE, "results"))
  args = ap.parse_args(argv)
  t0 = time.time()
  load_start = [round(x, 2) for x in os.getloadavg()]
  rows = bench_pixelcnn([int(b) for b in args.batches.split(",")], args.rounds, args.window_s)
  report = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python benchmarks/samplers.py " + " ".join(argv if argv is not None
                                                                  else sys.argv[1:]),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "load_start": load_start, "load_end": [round(x, 2) for x in os.getloadavg()],
            "wall_s": time.time() - t0, "rows": rows}
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "samplers.json"), "w") as f:
    json.dump(report, f, indent=1)
  md = markdown(report)
  with open(os.path.join(args.out, "samplers.md"), "w") as f:
    f.write(md)
  print(md)
  return 0


if __name__ == "__main__":
  sys.exit(main())
