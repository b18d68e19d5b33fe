"""The quality table: every trained run x dataset, with the classical baselines, by the one harness.

    python benchmarks/quality.py --dataset digits --runs runs/vae_digits runs/pixelcnn_digits ...
    python benchmarks/quality.py --dataset digits --train vae pixelcnn ddpm   # trains them first
    python benchmarks/quality.py --dataset fashion_mnist --reuse_metrics --runs runs/*_fm \
        --mixture_ks 10,30 --gmm_components 1,5 --fit_subset 5000   # saved metrics, cheaper baselines

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


def _saved(run: str, name: str, n) -> dict | None:
  """A run's saved metrics file, if it exists (and, for n not None, used n samples)."""
  path = os.path.join(run, name)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    m = json.load(f)
  return m if n is None or m.get("num_samples", n) == n else None  # no samples: bits/dim only


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--dataset", default="digits")
  p.add_argument("--runs", nargs="*", default=[], help="run directories of `gdl-jax train`")
  p.add_argument("--train", nargs="*", default=[], help="models to train first (default configs)")
  p.add_argument("--workdir", default="runs", help="where --train puts its runs")
  p.add_argument("--num_samples", type=int, default=None)
  p.add_argument("--no_baselines", action="store_true")
  p.add_argument("--baselines_from", default=None,
                 help="take the baseline rows from an earlier quality_<dataset>.json (same dataset "
                      "and number of samples) instead of fitting them again")
  p.add_argument("--reuse_metrics", action="store_true",
                 help="take RUN/metrics.json (and metrics_<tag>.json: other samplers) when it was "
                      "computed with the same number of samples, instead of evaluating again")
  p.add_argument("--mixture_ks", default="10,20,30,50", help="mixture sizes tried on validation")
  p.add_argument("--gmm_components", default="1,2,5,10", help="GaussianMixture sizes tried")
  p.add_argument("--em_iters", type=int, default=50)
  p.add_argument("--baselines", default="independent,mixture,gmm,kde", help="which baselines to fit")
  p.add_argument("--fit_subset", type=int, default=10000, help="training images for GMM/KDE")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  args = p.parse_args(argv)

  from gdl_jax import cli, data
  from gdl_jax.evaluation import harness
  from gdl_jax.evaluation.classifier import feature_fn, trained_classifier

  ds = data.load(args.dataset)
  n = args.num_samples or min(1000, ds.num_examples("test"))
  rows: dict = {}
  t0 = time.time()
  _, clf_state = trained_classifier(ds)
  feats = feature_fn(ds)
  if args.baselines_from:
    with open(args.baselines_from) as f:
      old = json.load(f)
    old = {k: v for k, v in old.items() if "experiment" not in v}  # run rows carry "experiment"
    if not old or any(v.get("num_samples") not in (None, n) for v in old.values()):
      print(f"{args.baselines_from}: no baseline rows with {n} samples; pass a file written with "
            "the same --num_samples, or drop --baselines_from", file=sys.stderr)
      return 2
    rows.update(old)
  elif not args.no_baselines:
    ints = lambda text: tuple(int(v) for v in text.split(","))
    rows.update(harness.baseline_table(ds, feats, key=jax.random.key(0), num_samples=n, verbose=True,
                                       mixture_ks=ints(args.mixture_ks), em_iters=args.em_iters,
                                       gmm_components=ints(args.gmm_components),
                                       fit_subset=args.fit_subset,
                                       which=tuple(args.baselines.split(","))))
  runs = list(args.runs)
  for model in args.train:
    wd = os.path.join(args.workdir, f"{model}_{args.dataset}")
    if cli.main(["train", model, "--dataset", args.dataset, "--workdir", wd]) != 0:
      print(f"training {model} failed; skipped", file=sys.stderr)
      continue
    runs.append(wd)
  for run in runs:
    if not (args.reuse_metrics and _saved(run, "metrics.json", n)):
      if cli.main(["evaluate", run, "--num_samples", str(n)]) != 0:
        print(f"evaluating {run} failed; skipped", file=sys.stderr)
        continue
    names = ["metrics.json"] + (sorted(f for f in os.listdir(run) if f.startswith("metrics_")
                                       and f.endswith(".json")) if args.reuse_metrics else [])
    for name in names:
      m = _saved(run, name, None)
      tag = f" [{name[len('metrics_'):-len('.json')]}]" if name != "metrics.json" else ""
      exp = m["experiment"] + ("" if m["experiment"].endswith(m["dataset"]) else f" on {m['dataset']}")
      n_s = f"{m['num_samples']} samples" if "num_samples" in m else "no samples"
      # The run directory is in the name: two runs of one experiment (other config) stay two rows.
      rows[f"{exp}{tag} ({os.path.basename(os.path.normpath(run))}: {m['step']} steps, {n_s})"] = m
  table = harness.markdown_table(rows)
  print(table)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, f"quality_{args.dataset}.md"), "w") as f:
    source = f"; baseline rows from {os.path.basename(args.baselines_from)}" if args.baselines_from else ""
    f.write(f"# Quality on {args.dataset} ({n} samples, held-out split; "
            f"{time.time() - t0:.0f}s{source})\n\n{table}\n")
  with open(os.path.join(args.out, f"quality_{args.dataset}.json"), "w") as f:
    json.dump(rows, f, indent=2, default=str)
  return 0


if __name__ == "__main__":
  sys.exit(main())
