"""The cost of one train step of several experiments, in one process, interleaved: what "the same
compute" means when two models' runs are compared at a budget (e.g. StyleGAN2 vs WGAN-GP steps).

    python benchmarks/step_cost.py stylegan2:small@fashion_mnist wgan_gp_fashion_mnist:small
    python benchmarks/step_cost.py vae:small@fashion_mnist vae:default@fashion_mnist --rounds 9
    python benchmarks/step_cost.py stylegan2:small@fashion_mnist --config.model.mapping_layers=2 \
        stylegan2:small@fashion_mnist

A spec is MODEL[:VARIANT][@DATASET] with the names `gdl-jax train MODEL --variant VARIANT --dataset
DATASET` takes (the same resolution: `vae@fashion_mnist` is experiments/vae_fashion_mnist.py),
followed by any `--config.KEY=VALUE` overrides for that spec alone (checked as `train` checks them).
Each experiment's Task is built exactly as `gdl-jax train` builds it, on a real batch of its dataset;
its `step` is called as the loop calls it (host-dispatched steps, e.g. lazy R1 every k critic
updates, included), the state carried from step to step. A window is `--window` consecutive steps
(default: a multiple of every spec's lazy-regularisation interval, so the occasional penalty step is
counted at its share); each round times one window per spec back to back, and the report gives
the median seconds per step and each spec's median per-round ratio to the first spec's.
Warm-up (compile, and every host-dispatched variant) is not timed. No timing goes into tests.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]
import _timing  # noqa: E402
from speed import JaxRunner  # noqa: E402


def parse_spec(spec: str) -> tuple[str, str, str | None]:
  """'model[:variant][@dataset]' -> (model, variant, dataset or None)."""
  rest, _, dataset = spec.partition("@")
  model, _, variant = rest.partition(":")
  if not model or (":" in spec and not variant) or ("@" in spec and not dataset):
    raise SystemExit(f"step_cost: bad spec {spec!r}; use MODEL[:VARIANT][@DATASET], e.g. "
                     "stylegan2:small@fashion_mnist")
  return model, variant or "default", dataset or None


VALUE_OPTIONS = ("--rounds", "--window", "--data_dir", "--json")


def split_overrides(argv: list[str]) -> tuple[list[str], list[list[str]]]:
  """argv -> (argv without the --config.KEY=VALUE items, each spec's overrides in spec order): an
  override belongs to the spec before it, as `gdl-jax train`'s belong to its model."""
  rest, groups, i = [], [], 0
  while i < len(argv):
    tok = argv[i]
    if tok.startswith("--config."):
      if not groups:
        raise SystemExit(f"step_cost: {tok} comes before any spec; put each --config.KEY=VALUE "
                         "after the MODEL[:VARIANT][@DATASET] it changes.")
      if "=" not in tok:
        raise SystemExit(f"step_cost: {tok}: expected --config.KEY=VALUE.")
      groups[-1].append(tok[len("--config."):])
    else:
      rest.append(tok)
      if tok in VALUE_OPTIONS and i + 1 < len(argv):
        rest.append(argv[i + 1])
        i += 1
      elif not tok.startswith("-"):
        groups.append([])
    i += 1
  return rest, groups


def label(spec: str, overrides: list[str]) -> str:
  return " ".join([spec] + [f"--config.{o}" for o in overrides])


@functools.lru_cache(maxsize=None)
def _load(name: str, data_dir: str | None):
  """data.load once per dataset (several specs often share one)."""
  from gdl_jax import data
  return data.load(name, data_dir)


def default_window(intervals: list[int], least: int = 8) -> int:
  """The smallest multiple of every lazy-regularisation interval that is >= least steps."""
  k = math.lcm(*intervals)
  return k * -(-least // k)


class StepRunner(JaxRunner):
  """One experiment's Task.step on a fixed real batch, state carried across calls (speed.py's
  runner without its ahead-of-time lowering, which a host-dispatched step does not have)."""

  def __init__(self, spec: str, data_dir: str | None = None, overrides: list[str] = ()):
    import jax
    from gdl_jax import cli, data, sharding
    from gdl_jax.train import loop
    model, variant, dataset = parse_spec(spec)
    self.spec, self.jax = label(spec, list(overrides)), jax
    name = cli.resolve_experiment(model, dataset)
    module = cli.load_experiment(name)
    config = cli.get_config(module, variant, dataset)
    defaults = cli.get_config(module, variant, dataset)
    cli.apply_overrides(config, list(overrides))
    ds = _load(config.dataset, data_dir)
    cli.check_run(module, name, config, ds, defaults=defaults)   # the values, as `train` checks them
    self.task = module.build(config, ds.info)
    mesh = sharding.make_mesh()
    self.state, keys = loop.init_state(self.task, config, ds, mesh)   # as `gdl-jax train` does
    self.key = keys["step"]
    self.batch = sharding.shard_batch(data.batch_at(ds.train, 0, int(config.batch_size), int(config.seed)), mesh)
    self.experiment, self.variant, self.dataset = name, variant, config.dataset
    self.batch_size = int(config.batch_size)
    self.reg_every = int(config.model.get("r1_every", 1))   # StyleGAN2's lazy R1 interval
    self.compile_s = _timing.timed(lambda: self.window(self.reg_every + 1))  # every dispatch variant



def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("specs", nargs="+", help="MODEL[:VARIANT][@DATASET], the first is the reference")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--window", type=int, default=None,
                 help="steps per timed window (default: the lcm of the specs' lazy intervals, >= 8)")
  p.add_argument("--data_dir", default=None)
  p.add_argument("--json", default=None, help="also write the report here")
  argv, groups = split_overrides(sys.argv[1:] if argv is None else list(argv))
  args = p.parse_args(argv)
  if args.rounds < 1 or (args.window is not None and args.window < 1):
    raise SystemExit("step_cost: --rounds and --window must be >= 1")
  for s in args.specs:
    parse_spec(s)
  from gdl_jax import runtime
  runtime.apply_xla_defaults()
  runners = []
  labels = [label(s, o) for s, o in zip(args.specs, groups)]
  if len(set(labels)) < len(labels):
    raise SystemExit("step_cost: the same spec twice; give each its own --config overrides or drop one.")
  from gdl_jax.configs import ConfigError
  for s, overrides in zip(args.specs, groups):
    try:
      r = StepRunner(s, args.data_dir, overrides)
    except ConfigError as e:
      raise SystemExit(f"step_cost: {label(s, overrides)}: {e}") from None
    print(f"[{r.spec}] {r.experiment} --variant {r.variant} --dataset {r.dataset}: batch {r.batch_size}, "
          f"lazy interval {r.reg_every}, warm-up {r.compile_s:.1f} s", flush=True)
    runners.append(r)
  k = args.window or default_window([r.reg_every for r in runners])
  times = {r.spec: [] for r in runners}
  for i in range(args.rounds):
    for r in runners:
      times[r.spec].append(r.window(k) / k)
    print(f"round {i + 1}: " + ", ".join(f"{s} {t[-1] * 1e3:.0f} ms" for s, t in times.items()), flush=True)
  ref = runners[0].spec
  rows = [{"spec": s, "ms_per_step": 1e3 * statistics.median(t),
           "ratio_to_first": _timing.median_ratio(times[ref], t) if s != ref else 1.0,
           "ms_per_step_rounds": [1e3 * x for x in t]} for s, t in times.items()]
  print(f"\n{args.rounds} interleaved rounds of {k}-step windows; medians "
        f"(load average {os.getloadavg()[0]:.1f} at the end)\n")
  print("| spec | ms per step | cost / first spec's |\n|---|---|---|")
  for row in rows:
    print(f"| {row['spec']} | {row['ms_per_step']:.1f} | {row['ratio_to_first']:.2f}x |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"window": k, "rounds": args.rounds, "rows": rows}, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
