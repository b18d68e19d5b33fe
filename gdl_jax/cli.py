"""`gdl-jax`: datasets / train / evaluate / sample / experiments.

    gdl-jax datasets
    gdl-jax train vae --dataset digits --workdir runs/vae_digits --config.optimizer.lr=3e-4
    gdl-jax evaluate runs/vae_digits
    gdl-jax sample runs/vae_digits --num 64 --out samples.png

Bad input (unknown dataset/experiment/config key, wrong value type, missing directory, unreadable
checkpoint, a run directory of another config) prints one `gdl-jax: error: ...` line and exits 2.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import json
import os
import re
import pkgutil
import sys

import ml_collections


class ConfigError(ValueError):
  """A --config override names no key or has a value of the wrong type."""


class UsageError(ValueError):
  """Any other bad command-line input."""


# ---------------------------------------------------------------------------------------------
# experiments and config overrides

def experiment_names() -> list[str]:
  import experiments
  return sorted(m.name for m in pkgutil.iter_modules(experiments.__path__) if not m.name.startswith("_"))


def resolve_experiment(model: str, dataset: str | None) -> str:
  """`vae` + `digits` -> `vae_digits` if that module exists, else `vae`."""
  names = experiment_names()
  if dataset and f"{model}_{dataset}" in names:
    return f"{model}_{dataset}"
  if model in names:
    return model
  family = [n for n in names if n.startswith(model + "_")]
  if dataset and family:  # the family's experiment on another dataset: its config, --dataset swapped
    return next((n for n in family if n.endswith("_digits")), family[0])
  near = [n for n in names if n.startswith(model)]
  raise UsageError(f"unknown model {model!r}" + (f" for dataset {dataset!r}" if dataset else "") +
                   f"; experiments are: {', '.join(names)}" +
                   (f" (did you mean {near[0]!r}?)" if near else "") + ". See `gdl-jax experiments`.")


def load_experiment(name: str):
  return importlib.import_module(f"experiments.{name}")


def get_config(module, variant: str, dataset: str | None) -> ml_collections.ConfigDict:
  kwargs = {}
  if dataset and "dataset" in inspect.signature(module.get_config).parameters:
    kwargs["dataset"] = dataset
  try:
    config = module.get_config(variant, **kwargs)
  except ValueError as e:
    raise UsageError(str(e)) from e
  if dataset:
    config.dataset = dataset
  return config


def _parse_value(key: str, text: str, current):
  kind = type(current)
  try:
    if isinstance(current, bool):
      low = text.lower()
      if low not in ("true", "false", "1", "0"):
        raise ValueError
      return low in ("true", "1")
    if isinstance(current, int):
      return int(text)
    if isinstance(current, float):
      return float(text)
    if isinstance(current, str):
      return text
    if isinstance(current, (tuple, list)):
      value = ast.literal_eval(text)
      value = value if isinstance(value, (tuple, list)) else (value,)
      return kind(value)
    if current is None:
      return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    pass
  raise ConfigError(f"--config.{key}={text!r}: expected a value of type {kind.__name__} "
                    f"(current value {current!r}).")


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> None:
  """Applies `key.path=value` strings, checking the key exists and the type fits."""
  for item in overrides:
    if "=" not in item:
      raise ConfigError(f"--config.{item}: expected --config.KEY=VALUE.")
    key, text = item.split("=", 1)
    node, parts = config, key.split(".")
    for i, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        raise ConfigError(f"unknown config key {key!r}" + (f" ({'.'.join(parts[:i]) or 'top level'}"
                          f" has: {', '.join(valid)})" if valid else "") + ".")
      if i < len(parts) - 1:
        node = node[part]
    last = parts[-1]
    if isinstance(node[last], ml_collections.ConfigDict):
      raise ConfigError(f"--config.{key} is a group; set one of its keys: {', '.join(sorted(node[last].keys()))}.")
    node[last] = _parse_value(key, text, node[last])
  _validate(config)


def _validate(config):
  for key in ("batch_size", "steps", "log_every", "eval_every", "ckpt_every", "keep_checkpoints"):
    if key in config and int(config[key]) <= 0:
      raise ConfigError(f"--config.{key}={config[key]} must be a positive integer.")


def _split_config_args(argv: list[str]) -> tuple[list[str], list[str]]:
  rest, overrides = [], []
  it = iter(argv)
  for a in it:
    if a.startswith("--config."):
      body = a[len("--config."):]
      if "=" not in body:
        body = f"{body}={next(it, '')}"
      overrides.append(body)
    else:
      rest.append(a)
  return rest, overrides


# ---------------------------------------------------------------------------------------------
# commands

def cmd_datasets(args) -> int:
  from gdl_jax import data
  rows = data.available(args.data_dir)
  width = max(len(r[0]) for r in rows)
  for name, status, desc in rows:
    print(f"{name:<{width}}  {status:<40}  {desc}")
  print("\nAny other tfds dataset works once prepared: "
        "tfds build NAME --data_dir DIR --file_format array_record; then --data_dir DIR.")
  return 0


def cmd_experiments(args) -> int:
  for name in experiment_names():
    doc = (load_experiment(name).__doc__ or "").strip().splitlines()
    print(f"{name:<28} {doc[0] if doc else ''}")
  return 0


def _run_context(workdir: str):
  """(module, name, config, dataset) of an existing run directory."""
  from gdl_jax import data
  for f in ("config.json", "run.json"):
    if not os.path.exists(os.path.join(workdir, f)):
      raise UsageError(f"{workdir!r} is not a gdl-jax run directory (no {f}); pass the --workdir "
                       "of a `gdl-jax train` run.")
  with open(os.path.join(workdir, "run.json")) as f:
    run = json.load(f)
  with open(os.path.join(workdir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  module = load_experiment(run["experiment"])
  dataset = data.load(config.dataset, run.get("data_dir"))
  return module, run["experiment"], config, dataset


def _tuples(config):
  """JSON turns tuples into lists; experiments expect tuples back."""
  for k, v in list(config.items()):
    if isinstance(v, ml_collections.ConfigDict):
      _tuples(v)
    elif isinstance(v, list):
      config[k] = tuple(v)
  return config


def build_task(module, name: str, config, info):
  """module.build(config, info); a ValueError there (a config that does not fit the data) becomes
  a UsageError, so it prints as one `gdl-jax: error:` line like any other bad input."""
  try:
    return module.build(config, info)
  except ValueError as e:
    raise UsageError(f"{name}: {e}") from e


def cmd_train(args, overrides) -> int:
  from gdl_jax import data
  from gdl_jax.train import loop
  if args.distributed:
    import jax
    jax.distributed.initialize()  # cluster auto-detection; then one Mesh spans every host's devices
  name = resolve_experiment(args.model, args.dataset)
  module = load_experiment(name)
  config = get_config(module, args.variant, args.dataset)
  if args.steps is not None:
    overrides = [f"steps={args.steps}"] + overrides
  apply_overrides(config, overrides)
  if args.steps is not None and "--config.log_every" not in " ".join(sys.argv):
    steps = config.steps
    config.log_every = min(config.log_every, max(steps // 20, 1))
    config.eval_every = min(config.eval_every, steps)
    config.ckpt_every = min(config.ckpt_every, steps)
  dataset = data.load(config.dataset, args.data_dir)
  workdir = args.workdir or os.path.join("runs", f"{name}" + (f"_{config.dataset}" if not name.endswith(config.dataset) else ""))
  task = build_task(module, name, config, dataset.info)
  loop.fit(task, config, dataset, workdir, experiment=name, progress=not args.quiet)
  if args.data_dir:
    with open(os.path.join(workdir, "run.json")) as f:
      run = json.load(f)
    run["data_dir"] = os.path.abspath(args.data_dir)
    with open(os.path.join(workdir, "run.json"), "w") as f:
      json.dump(run, f)
  print(f"run written to {workdir}: config.json, metrics.jsonl, checkpoints/" +
        (", samples.png" if task.sample is not None else ""))
  if args.evaluate:
    return cmd_evaluate(argparse.Namespace(run=workdir, num_samples=None, seed=0, no_features=False,
                                           no_log_prob=False, no_samples=False, tag=None))
  return 0


def _add_missing(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict) -> None:
  """Copies keys of `defaults` that `config` lacks (recursively); existing values are kept."""
  for k, v in defaults.items():
    if k not in config:
      with config.unlocked():
        config[k] = v
    elif isinstance(v, ml_collections.ConfigDict) and isinstance(config[k], ml_collections.ConfigDict):
      _add_missing(config[k], v)


def _fill_added_keys(config: ml_collections.ConfigDict, module) -> None:
  """Keys an experiment added after runs were saved, set to the values that reproduce those runs
  (the module's KEYS_ADDED {"model.key": value}) where the saved config lacks them, so a later
  default (e.g. the cGAN's class head) never changes the model an old checkpoint was trained as."""
  legacy: dict = {}
  for dotted, value in getattr(module, "KEYS_ADDED", {}).items():
    *parents, leaf = dotted.split(".")
    node = legacy
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  _add_missing(config, ml_collections.ConfigDict(legacy))


def _evaluation_tag(args, overrides) -> str:
  """'' for a plain evaluation, else the suffix of metrics_<tag>.json (--tag, or the overrides)."""
  tag = args.tag if args.tag is not None else ",".join(overrides)
  tag = re.sub(r"[^A-Za-z0-9_.=,-]+", "_", tag).replace("model.", "")
  if overrides and not tag:
    raise UsageError("--tag must not be empty when --config overrides are given.")
  return tag


def cmd_evaluate(args, overrides=()) -> int:
  from gdl_jax.evaluation import harness
  from gdl_jax.evaluation.tasks import evaluate_task
  from gdl_jax.train import loop
  module, name, config, dataset = _run_context(args.run)
  config = _tuples(config)
  _fill_added_keys(config, module)
  if overrides:  # other options added to the experiment after this run was made: their defaults
    _add_missing(config, get_config(module, "default", config.dataset))
  tag = _evaluation_tag(args, list(overrides))
  apply_overrides(config, list(overrides))  # sampler settings etc.; the checkpoint must still fit
  task = build_task(module, name, config, dataset.info)
  state, keys = loop.latest_state(task, config, dataset, args.run)
  if args.seed:  # another draw of the samples (and of any stochastic bound)
    import jax
    keys = {k: jax.random.fold_in(v, args.seed) for k, v in keys.items()}
  metrics = evaluate_task(task, state, dataset, config, keys, num_samples=args.num_samples,
                         use_features=not args.no_features, use_log_prob=not args.no_log_prob,
                         use_samples=not args.no_samples)
  metrics = {"experiment": name, "dataset": config.dataset, "step": int(state.step),
             **({"overrides": list(overrides)} if overrides else {}), **metrics}
  suffix = f"_{tag}" if tag else ""
  with open(os.path.join(args.run, f"metrics{suffix}.json"), "w") as f:
    json.dump(metrics, f, indent=2)
  row = harness.markdown_table([(name + (f" [{tag}]" if tag else ""), metrics)])
  with open(os.path.join(args.run, f"metrics{suffix}.md"), "w") as f:
    f.write(row + "\n")
  print(row)
  return 0


def cmd_sample(args) -> int:
  import jax
  import numpy as np
  from gdl_jax.evaluation.grids import save_grid
  from gdl_jax.train import loop
  module, name, config, dataset = _run_context(args.run)
  config = _tuples(config)
  task = build_task(module, name, config, dataset.info)
  if task.sample is None:
    raise UsageError(f"experiment {name!r} has no sampler (it is not a generative model).")
  state, _ = loop.latest_state(task, config, dataset, args.run)
  samples = np.asarray(task.sample(state, jax.random.key(args.seed), args.num))
  out = args.out or os.path.join(args.run, f"samples_seed{args.seed}.png")
  if os.path.exists(out) and not args.force:
    raise UsageError(f"{out} exists; pass --force to overwrite it or --out another path.")
  if dataset.info.kind == "image":
    save_grid(samples, out, levels=dataset.info.levels)
  else:
    np.save(out if out.endswith(".npy") else out + ".npy", samples)
  print(f"wrote {out}")
  return 0


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="gdl-jax", description=__doc__.split("\n\n")[0])
  sub = p.add_subparsers(dest="command", required=True)
  d = sub.add_parser("datasets", help="datasets available offline / prepared")
  d.add_argument("--data_dir", default=None)
  sub.add_parser("experiments", help="list the experiments (models x datasets)")
  t = sub.add_parser("train", help="train an experiment; --config.KEY=VALUE overrides its config")
  t.add_argument("model")
  t.add_argument("--dataset", default=None)
  t.add_argument("--variant", default="default", help="config variant, e.g. default or tiny")
  t.add_argument("--steps", type=int, default=None)
  t.add_argument("--workdir", default=None)
  t.add_argument("--data_dir", default=None)
  t.add_argument("--quiet", action="store_true", help="no progress bar")
  t.add_argument("--evaluate", action="store_true", help="run `evaluate` on the run afterwards")
  t.add_argument("--distributed", action="store_true",
                 help="multi-host: call jax.distributed.initialize() (TPU pods / SLURM / env vars)")
  e = sub.add_parser("evaluate", help="the harness on a run: bits/dim, Fréchet distance, novelty")
  e.add_argument("run")
  e.add_argument("--num_samples", type=int, default=None)
  e.add_argument("--seed", type=int, default=0)
  e.add_argument("--no_features", action="store_true", help="skip the classifier Fréchet distance")
  e.add_argument("--no_log_prob", action="store_true", help="skip held-out bits/dim")
  e.add_argument("--no_samples", action="store_true",
                 help="skip sampling (Fréchet distance, novelty): e.g. a PixelCNN on 28x28 draws "
                      "784 sequential network passes per image")
  e.add_argument("--tag", default=None,
                 help="write metrics_<tag>.json/.md (default with --config overrides: the overrides)")
  s = sub.add_parser("sample", help="write a grid of samples from a run's latest checkpoint")
  s.add_argument("run")
  s.add_argument("--num", type=int, default=64)
  s.add_argument("--seed", type=int, default=0)
  s.add_argument("--out", default=None)
  s.add_argument("--force", action="store_true")
  return p


def main(argv: list[str] | None = None) -> int:
  from gdl_jax import runtime
  runtime.apply_xla_defaults()  # before the first computation; a no-op once a backend is running
  from gdl_jax.data.info import DataError
  from gdl_jax.train.checkpoint import CheckpointError
  from gdl_jax.train.loop import NonFiniteLossError, RunDirError
  argv = sys.argv[1:] if argv is None else argv
  rest, overrides = _split_config_args(argv)
  parser = build_parser()
  args = parser.parse_args(rest)
  if overrides and args.command not in ("train", "evaluate"):
    parser.error("--config.KEY=VALUE overrides only apply to `train` and `evaluate`.")
  try:
    if args.command == "datasets":
      return cmd_datasets(args)
    if args.command == "experiments":
      return cmd_experiments(args)
    if args.command == "train":
      return cmd_train(args, overrides)
    if args.command == "evaluate":
      return cmd_evaluate(args, overrides)
    if args.command == "sample":
      return cmd_sample(args)
  except (DataError, ConfigError, UsageError, RunDirError, CheckpointError) as e:
    print(f"gdl-jax: error: {e}", file=sys.stderr)
    return 2
  except NonFiniteLossError as e:
    print(f"gdl-jax: error: {e}", file=sys.stderr)
    return 3
  return 1


if __name__ == "__main__":
  sys.exit(main())
