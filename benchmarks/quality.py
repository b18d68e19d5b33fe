"""The quality table: every trained run x dataset, with the classical baselines, by the one harness.

    python benchmarks/quality.py --dataset digits --runs runs/vae_digits runs/pixelcnn_digits ...
    python benchmarks/quality.py --dataset digits --train vae pixelcnn ddpm   # trains them first

Writes benchmarks/results/quality_<dataset>.{md,json}. Every row uses the same test split, the same
number of samples and the same cached Chapter 2 CNN for the Fréchet distance.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--dataset", default="digits")
  p.add_argument("--runs", nargs="*", default=[], help="run directories of `gdl-jax train`")
  p.add_argument("--train", nargs="*", default=[], help="models to train first (default configs)")
  p.add_argument("--workdir", default="runs", help="where --train puts its runs")
  p.add_argument("--num_samples", type=int, default=None)
  p.add_argument("--no_baselines", action="store_true")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  args = p.parse_args(argv)

  from gdl_jax import cli, data
  from gdl_jax.evaluation import harness
  from gdl_jax.evaluation.classifier import feature_fn, trained_classifier

  ds = data.load(args.dataset)
  n = args.num_samples or min(1000, ds.num_examples("test"))
  rows: dict = {}
  t0 = time.time()
  _, clf_state = trained_classifier(ds, progress=False)
  feats = feature_fn(ds, progress=False)
  if not args.no_baselines:
    rows.update(harness.baseline_table(ds, feats, key=jax.random.key(0), num_samples=n, verbose=True))
  runs = list(args.runs)
  for model in args.train:
    wd = os.path.join(args.workdir, f"{model}_{args.dataset}")
    if cli.main(["train", model, "--dataset", args.dataset, "--workdir", wd]) != 0:
      print(f"training {model} failed; skipped", file=sys.stderr)
      continue
    runs.append(wd)
  for run in runs:
    if cli.main(["evaluate", run] + (["--num_samples", str(n)] if args.num_samples else [])) != 0:
      print(f"evaluating {run} failed; skipped", file=sys.stderr)
      continue
    with open(os.path.join(run, "metrics.json")) as f:
      m = json.load(f)
    rows[f"{m['experiment']} ({m['step']} steps)"] = m
  table = harness.markdown_table(rows)
  print(table)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, f"quality_{args.dataset}.md"), "w") as f:
    f.write(f"# Quality on {args.dataset} ({n} samples, held-out split; "
            f"{time.time() - t0:.0f}s)\n\n{table}\n")
  with open(os.path.join(args.out, f"quality_{args.dataset}.json"), "w") as f:
    json.dump(rows, f, indent=2, default=str)
  return 0


if __name__ == "__main__":
  sys.exit(main())
