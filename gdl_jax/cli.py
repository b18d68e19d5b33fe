"""`gdl-jax`: datasets / train / evaluate / sample / report / paint / experiments.

    gdl-jax datasets
    gdl-jax train vae --dataset digits --workdir runs/vae_digits --config.optimizer.lr=3e-4
    gdl-jax evaluate runs/vae_digits
    gdl-jax sample runs/vae_digits --num 64 --out samples.png
    gdl-jax sample runs/t2i_fashion_mnist --prompt "a dark ankle boot" --num 16 --guidance 3
    gdl-jax report runs/* --out report    # one static HTML page: open report/index.html
    gdl-jax paint --content photo.jpg --style painting.jpg --out painted.png   (Gatys et al.)
    gdl-jax paint --model runs/style_net --content photo.jpg --out painted.png (a trained style net)
    gdl-jax world run --workdir runs/world_models --variant cpu   (World Models: collect, V, M, C)
    gdl-jax world replay runs/world_models --seed 1000000 --gif replay.gif

Bad input (unknown verb/dataset/experiment/config key, a value of the wrong type or out of range,
data of the wrong kind, a model too big for the machine, a bad path, an unreadable checkpoint, a run
directory of another config) prints one `gdl-jax: error: ...` line and exits 2, before anything
trains: every config passes gdl_jax.configs.check_config (the common rules and the experiment's
RULES / NEEDS / check) and a shape-only trace of its init. `gdl-jax train ... --check` runs those
checks, prints the resolved config and exits 0 (or 2). Anything else that fails is a bug and keeps
its traceback.
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

from gdl_jax.configs import ConfigError

__all__ = ["ConfigError", "UsageError", "main"]

SEED_LIMIT = 2**32  # jax.random.key takes a seed in [0, 2**32) on every backend
INT32_MAX = 2**31 - 1


class UsageError(ValueError):
  """Any other bad command-line input (flags, paths, names)."""


class _Parser(argparse.ArgumentParser):
  """argparse whose mistakes (unknown verb or flag, a flag's bad type) raise UsageError, so they are
  one `gdl-jax: error:` line like every other bad input (argparse prints the usage and exits)."""

  def error(self, message: str):
    raise UsageError(f"{message} (see `{self.prog} --help`).")


# ---------------------------------------------------------------------------------------------
# experiments and config overrides

# Experiments that are pipelines of several models with their own verb, not one `train` Task.
PIPELINES = {"world_models": "gdl-jax world run --workdir DIR [--variant cpu]"}


def experiment_names() -> list[str]:
  """The experiments `train` runs (the pipelines of PIPELINES have their own verb)."""
  import experiments
  return sorted(m.name for m in pkgutil.iter_modules(experiments.__path__)
                if not m.name.startswith("_") and m.name not in PIPELINES)


def resolve_experiment(model: str, dataset: str | None) -> str:
  """`vae` + `digits` -> `vae_digits` if that module exists, else `vae`."""
  if model in PIPELINES:
    raise UsageError(f"{model} is a pipeline of several models, not one `train` run: use "
                     f"`{PIPELINES[model]}`.")
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


def _tuple_like(key: str, text: str, value, current) -> list:
  """`value`'s elements with the default's element type (ints for int tuples; ints or floats for
  float tuples, as floats), non-empty where the default is."""
  if current and not value:
    raise ConfigError(f"--config.{key}={text!r}: expected a non-empty tuple like {tuple(current)!r}.")
  elem = type(current[0]) if current else None
  out = []
  for v in value:
    if elem is float and isinstance(v, int) and not isinstance(v, bool):
      v = float(v)
    if (elem is not None and type(v) is not elem) or isinstance(v, (tuple, list, dict, set)):
      raise ConfigError(f"--config.{key}={text!r}: expected a tuple of "
                        f"{elem.__name__ if elem else 'numbers'} like {tuple(current)!r}.")
    out.append(v)
  return out


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
      return kind(_tuple_like(key, text, value, current))  # ConfigError: not caught below
    if current is None:
      return ast.literal_eval(text)
  except ConfigError:
    raise
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
    pass
  raise ConfigError(f"--config.{key}={text!r}: expected a value of type {kind.__name__} "
                    f"(current value {current!r}).")


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> None:
  """Applies `key.path=value` strings, checking the key exists and the type fits (the values'
  ranges and choices are check_run's)."""
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


def check_run(module, name: str, config: ml_collections.ConfigDict, dataset,
              defaults: ml_collections.ConfigDict | None = None) -> None:
  """Every check a config passes before it runs: the common rules and the experiment module's RULES,
  NEEDS (the kind of data) and check(config, info) (gdl_jax.configs.check_config), the batch against
  the training split and the devices; dataset=None checks the values alone (before loading data).
  Raises ConfigError naming the key and the fix (suggesting the value in `defaults`, the
  experiment's own config, where it has one)."""
  import jax
  from gdl_jax.configs import check_config
  check_config(config, dataset, rules=getattr(module, "RULES", {}), needs=getattr(module, "NEEDS", None),
               check=getattr(module, "check", None), experiment=name, defaults=defaults)
  if dataset is None:
    return
  n = jax.device_count()
  if int(config.batch_size) % n:
    raise ConfigError(f"config batch_size={config.batch_size} does not divide over the {n} devices; pass "
                      f"--config.batch_size={max(n, int(config.batch_size) // n * n)} (a multiple of {n}).")


def _size(nbytes: float) -> str:
  for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
    if nbytes < 1024 or unit == "PB":
      return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
    nbytes /= 1024


def memory_limit() -> int | None:
  """Bytes the first local device can hold: the accelerator's limit, or the host's RAM on CPU."""
  import jax
  dev = jax.local_devices()[0]
  try:
    stats = dev.memory_stats() or {}
  except Exception:  # backends without memory stats
    stats = {}
  if stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  if dev.platform == "cpu":
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  return None


def state_size(task, config, dataset) -> tuple[int, int, object]:
  """(parameter count, bytes of the whole train state, the abstract state) from a shape-only trace
  of task.init on the first batch: nothing is allocated."""
  import jax
  import numpy as np
  from gdl_jax import data
  batch = data.batch_at(dataset.train, 0, int(config.batch_size), int(config.seed))
  try:
    shapes = jax.eval_shape(task.init, jax.random.key(0), batch)
  except ValueError as e:  # a module's own check of its settings (Linen setup), met at init
    if isinstance(e, ConfigError):
      raise
    raise ConfigError(f"{config.get('dataset', '?')}: the model refuses this config at init: "
                      f"{str(e).splitlines()[0]}") from e

  def nbytes(tree) -> int:
    total = 0
    for leaf in jax.tree.leaves(tree):
      try:
        item = np.dtype(leaf.dtype).itemsize
      except TypeError:  # typed PRNG keys
        item = 8
      total += int(np.prod(leaf.shape, dtype=np.float64)) * item
    return total

  params = getattr(shapes, "params", shapes)
  count = sum(int(np.prod(x.shape, dtype=np.float64)) for x in jax.tree.leaves(params))
  return count, nbytes(shapes), shapes


def check_memory(count: int, nbytes: int) -> None:
  """Refuses a train state (params, optimizer state, EMA, buffers; gradients come on top) that
  alone exceeds the device's memory."""
  limit = memory_limit()
  if limit is not None and nbytes > limit:
    raise ConfigError(f"this config's train state needs {_size(nbytes)} ({count:,} parameters plus "
                      f"optimizer state) but the device holds {_size(limit)}; make the model smaller "
                      "(e.g. --config.model.hidden, features, latent_dim, dim).")


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

def _check_int_flag(flag: str, value: int | None, lo: int, hi: int = INT32_MAX) -> None:
  if value is not None and not lo <= value <= hi:
    raise UsageError(f"{flag} {value} is out of range; pass an integer in [{lo}, {hi}].")


def _check_dir_flag(flag: str, path: str | None) -> None:
  if path is not None and not os.path.isdir(path):
    raise UsageError(f"{flag} {path!r} is not an existing directory; create it or pass another path.")


def _check_new_path(flag: str, path: str, *, directory: bool) -> None:
  """A path we will write: not empty, not under a file, and (a directory) not a file itself."""
  if not path.strip():
    raise UsageError(f"{flag} must not be empty; pass a path.")
  if directory and os.path.exists(path) and not os.path.isdir(path):
    raise UsageError(f"{flag} {path!r} is a file, not a directory; pass a new path or a run directory.")
  if not directory and os.path.isdir(path):
    raise UsageError(f"{flag} {path!r} is a directory; pass a file path "
                     f"(e.g. {os.path.join(path, 'samples.png')}).")
  parent = os.path.dirname(os.path.abspath(path))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise UsageError(f"{flag} {path!r} lies under {parent!r}, which is a file; pass another path.")
  if not os.access(parent, os.W_OK):
    raise UsageError(f"{flag} {path!r}: {parent!r} is not writable; pass another path.")


def _has_checkpoint(workdir: str) -> bool:
  from gdl_jax.train import checkpoint as ckpt
  return bool(ckpt.saved_steps(os.path.join(workdir, "checkpoints")))


def _check_init_from(run: str | None, workdir: str) -> None:
  """--init_from: another run directory with a checkpoint (its fit to this model is checked when
  it is read); a workdir that has its own checkpoint resumes from it (said once, not an error)."""
  if run is None:
    return
  if not run.strip() or not os.path.isdir(run):
    raise UsageError(f"--init_from {run!r} is not a run directory; pass the --workdir of a finished "
                     "`gdl-jax train` run.")
  if os.path.abspath(run) == os.path.abspath(workdir):
    raise UsageError(f"--init_from {run!r} is this run's own --workdir; re-running the command "
                     "resumes it without --init_from, or pass a new --workdir to fine-tune into.")
  if not _has_checkpoint(run):
    raise UsageError(f"--init_from {run!r} has no checkpoint (checkpoints/ is missing or empty); "
                     "train that run first.")
  if _has_checkpoint(workdir):
    print(f"gdl-jax: {workdir} has its own checkpoint: resuming it (--init_from is used when a run "
          "starts).", file=sys.stderr, flush=True)


def cmd_datasets(args) -> int:
  from gdl_jax import data
  _check_dir_flag("--data_dir", args.data_dir)
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
  for name, how in PIPELINES.items():
    print(f"{name:<28} (pipeline) {how}")
  return 0


def cmd_world(args, overrides) -> int:
  """World Models: `run` (collect, V, M, C into a run dir), `collect` (rollouts alone), `replay`."""
  from experiments import world_models as wm
  if args.world_command == "replay":
    _check_int_flag("--seed", args.seed, 0, SEED_LIMIT - 1)
    if args.max_steps is not None:
      _check_int_flag("--max_steps", args.max_steps, 1)
    if not os.path.isdir(args.run):
      raise UsageError(f"run directory {args.run!r} does not exist; pass a `gdl-jax world run` --workdir.")
    if args.gif:
      _check_new_path("--gif", args.gif, directory=False)
    out = wm.replay(args.run, args.seed, controller=args.controller, max_steps=args.max_steps,
                    gif=args.gif)
    print(json.dumps({"seed": args.seed, "controller": args.controller, **out}))
    return 0
  try:
    config = wm.get_config(args.variant)
  except ValueError as e:
    raise UsageError(str(e)) from e
  if args.world_command == "collect":
    for flag in ("episodes", "max_steps", "workers", "shard_size"):
      if getattr(args, flag) is not None:
        _check_int_flag(f"--{flag}", getattr(args, flag), 1)
        overrides = [f"collect.{flag}={getattr(args, flag)}"] + list(overrides)
  if args.rollouts:
    overrides = [f"rollouts={args.rollouts}"] + list(overrides)
  apply_overrides(config, overrides)
  wm.check(config)
  if args.world_command == "collect":
    from gdl_jax.world import collect
    c = config.collect
    out = collect.collect(wm.rollouts_dir(config), episodes=int(c.episodes), max_steps=int(c.max_steps),
                          seed=int(config.seed), shard_size=int(c.shard_size), workers=int(c.workers))
    print(json.dumps({"rollouts": wm.rollouts_dir(config), **out}))
    return 0
  workdir = args.workdir or os.path.join("runs", "world_models")
  _check_new_path("--workdir", workdir, directory=True)
  metrics = wm.run(config, workdir, quiet=args.quiet)
  keys = ("mdn_heldout_nll", "mdn_gaussian_heldout_nll", "persistence_heldout_nll", "random_mean",
          "real_eval_mean", "dream_eval_mean")
  print(json.dumps({k: metrics[k] for k in keys if k in metrics}))
  print(f"run written to {workdir}: metrics.json, returns.png, real_rollout.gif, dream_rollout.gif, "
        "controller_*.npy")
  return 0


def _run_context(workdir: str):
  """(module, name, config, dataset) of an existing run directory.

  A run killed before its config.json (run.json alone), or one left by older versions without
  run.json and without checkpoints, is reported as having no checkpoint yet.
  """
  from gdl_jax import data
  from gdl_jax.train import loop
  from gdl_jax.train.checkpoint import CheckpointError, saved_steps
  run = loop.read_json(os.path.join(workdir, "run.json"))
  cfg = loop.read_json(os.path.join(workdir, "config.json"))
  if (run is None) != (cfg is None) and not saved_steps(os.path.join(workdir, "checkpoints")):
    raise CheckpointError(f"no checkpoint in {workdir} yet (its training stopped before the first "
                          f"one); re-run `gdl-jax train` with --workdir {workdir} to train it.")
  for f, content in (("config.json", cfg), ("run.json", run)):
    if not isinstance(content, dict):
      raise UsageError(f"{workdir!r} is not a gdl-jax run directory (no readable {f}); pass the "
                       "--workdir of a `gdl-jax train` run.")
  if "experiment" not in run:
    raise UsageError(f"{workdir}/run.json names no experiment (the run was not started by "
                     "`gdl-jax train`); pass the --workdir of a `gdl-jax train` run.")
  try:
    config = ml_collections.ConfigDict(cfg)
    name = run["experiment"]
    dataset_name = config.dataset
  except (ValueError, TypeError, KeyError, AttributeError) as e:
    raise UsageError(f"{workdir!r} holds an unreadable config.json or run.json ({type(e).__name__}: "
                     f"{e}); pass the --workdir of a complete `gdl-jax train` run.") from e
  if not isinstance(name, str) or name not in experiment_names():
    raise UsageError(f"{workdir!r} is a run of experiment {name!r}, which this gdl-jax does not have; "
                     f"experiments are: {', '.join(experiment_names())}.")
  module = load_experiment(name)
  dataset = data.load(dataset_name, run.get("data_dir"))
  return module, name, config, dataset


def _tuples(config):
  """JSON turns tuples into lists; experiments expect tuples back."""
  for k, v in list(config.items()):
    if isinstance(v, ml_collections.ConfigDict):
      _tuples(v)
    elif isinstance(v, list):
      config[k] = tuple(v)
  return config


def init_distributed(args) -> None:
  """`jax.distributed.initialize` for `train --distributed`: the explicit coordinator flags when
  given (all three), else jax's cluster auto-detection (TPU pod slices, SLURM, Open MPI, ...).
  Must run before the first jax computation; afterwards one Mesh spans every host's devices."""
  explicit = {"coordinator_address": args.coordinator_address, "num_processes": args.num_processes,
              "process_id": args.process_id}
  given = {k: v for k, v in explicit.items() if v is not None}
  if not args.distributed:
    if given:
      raise UsageError(f"{', '.join(f'--{k}' for k in given)} only appl{'y' if len(given) > 1 else 'ies'}"
                       " with --distributed (multi-host training); add --distributed or drop them.")
    return
  if given and len(given) < len(explicit):
    missing = ", ".join(f"--{k}" for k in explicit if k not in given)
    raise UsageError(f"--distributed with {', '.join(f'--{k}' for k in given)} also needs {missing} "
                     "(give all three, or none to let jax detect the cluster).")
  if given and not 0 <= args.process_id < args.num_processes:
    raise UsageError(f"--process_id={args.process_id} must be in [0, --num_processes="
                     f"{args.num_processes}).")
  import jax
  try:
    jax.distributed.initialize(**given)
  except (ValueError, RuntimeError) as e:
    raise UsageError(f"jax.distributed.initialize failed ({type(e).__name__}: "
                     f"{str(e).splitlines()[0][:300]}). Outside a TPU pod / SLURM / Open MPI job "
                     "pass --coordinator_address HOST:PORT --num_processes N --process_id I.") from e


def _load_dataset(name: str, data_dir: str | None):
  """data.load; under multi-host process 0 loads (and prepares, the first time) before the others,
  so that no two processes build the same dataset files at once. An error of process 0 still lets
  the others through the barrier, to fail the same way on their own instead of waiting."""
  from gdl_jax import data, sharding
  if sharding.is_writer():
    try:
      dataset = data.load(name, data_dir)
    except Exception:
      sharding.sync("gdl_jax.data.load")
      raise
  sharding.sync("gdl_jax.data.load")
  return dataset if sharding.is_writer() else data.load(name, data_dir)


def _build(module, config, info):
  """module.build(config, info); a ValueError there (a config value the experiment refuses) becomes
  one clear CLI error (exit 2) instead of a traceback."""
  try:
    return module.build(config, info)
  except ValueError as e:
    if isinstance(e, ConfigError):
      raise
    raise ConfigError(f"{module.__name__.rsplit('.', 1)[-1]}: {e}") from e


def cmd_train(args, overrides) -> int:
  from gdl_jax import sharding
  from gdl_jax.train import loop
  init_distributed(args)  # multi-host (--distributed); checks the coordinator flags otherwise
  if args.dataset is not None and not args.dataset.strip():
    raise UsageError("--dataset must not be empty; pass a name from `gdl-jax datasets` or leave it out.")
  name = resolve_experiment(args.model, args.dataset)
  module = load_experiment(name)
  config = get_config(module, args.variant, args.dataset)
  if args.steps is not None:
    overrides = [f"steps={args.steps}"] + overrides
  apply_overrides(config, overrides)
  if args.steps is not None and args.steps > 0 and \
      not any(o.split("=", 1)[0] == "log_every" for o in overrides):
    steps = config.steps
    config.log_every = min(config.log_every, max(steps // 20, 1))
    config.eval_every = min(config.eval_every, steps)
    config.ckpt_every = min(config.ckpt_every, steps)
  workdir = args.workdir if args.workdir is not None else os.path.join(
      "runs", f"{name}" + (f"_{config.dataset}" if not name.endswith(config.dataset) else ""))
  defaults = get_config(module, args.variant, args.dataset)
  check_run(module, name, config, None, defaults=defaults)  # the values, before any data is read
  _check_new_path("--workdir", workdir, directory=True)
  _check_init_from(args.init_from, workdir)
  dataset = _load_dataset(config.dataset, args.data_dir)
  check_run(module, name, config, dataset, defaults=defaults)
  task = _build(module, config, dataset.info)
  count, nbytes, abstract = state_size(task, config, dataset)
  check_memory(count, nbytes)
  loop.check_steps_per_call(args.steps_per_call)
  if args.init_from is not None and not _has_checkpoint(workdir):   # its fit, before any dir is made
    loop.check_warm_start(abstract, args.init_from)
  if args.check:
    print(loop.config_to_json(config))
    print(f"ok: {name} on {config.dataset} ({dataset.num_examples('train')} training examples): "
          f"{count:,} parameters, train state {_size(nbytes)}; {config.steps} steps of batch "
          f"{config.batch_size} would " +
          ("resume (if the config matches) " if os.path.exists(os.path.join(workdir, "config.json"))
           else "write ") + workdir)
    return 0
  loop.fit(task, config, dataset, workdir, experiment=name, progress=not args.quiet,
           run_info={"data_dir": os.path.abspath(args.data_dir)} if args.data_dir else None,
           steps_per_call=args.steps_per_call, init_from=args.init_from)
  if args.distributed:
    import jax
    if jax.process_count() > 1:  # evaluation is single-process: run it afterwards on one host
      if sharding.is_writer():
        print(f"run written to {workdir} by process 0 of {jax.process_count()}" +
              (f"; --evaluate is skipped in a multi-host run: evaluate on one host with "
               f"`gdl-jax evaluate {workdir}`" if args.evaluate else ""))
      return 0
  print(f"run written to {workdir}: config.json, metrics.jsonl, checkpoints/" +
        (", samples.png" if task.sample is not None else ""))
  if args.evaluate:
    return cmd_evaluate(argparse.Namespace(run=workdir, num_samples=None, seed=0, no_features=False,
                                           no_log_prob=False, no_samples=False, no_vgg=False, vgg=False, tag=None,
                                           step=None, quiet=args.quiet))
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
  """'' for a plain evaluation, else the suffix of metrics_<tag>.json: --tag, or the overrides, the
  step (--step N: sN) and the sample seed (--seed S: seedS), so an evaluation of an older checkpoint
  or another draw never replaces the plain metrics.json (nor another step's or seed's file)."""
  parts = list(overrides) + ([f"s{args.step}"] if getattr(args, "step", None) is not None else []) + \
      ([f"seed{args.seed}"] if getattr(args, "seed", 0) else [])
  tag = args.tag if args.tag is not None else ",".join(parts)
  tag = re.sub(r"[^A-Za-z0-9_.=,-]+", "_", tag).replace("model.", "")
  if parts and not tag:
    raise UsageError("--tag must not be empty with --config overrides, --step or --seed (it would "
                     "replace the plain metrics.json); pass a name, or leave --tag out.")
  return tag


def cmd_evaluate(args, overrides=()) -> int:
  from gdl_jax.evaluation import harness
  from gdl_jax.evaluation.tasks import evaluate_task
  from gdl_jax.train import loop, rundir
  _check_int_flag("--num_samples", args.num_samples, 1)
  _check_int_flag("--seed", args.seed, 0, SEED_LIMIT - 1)
  _check_int_flag("--step", args.step, 0)
  if getattr(args, "vgg", False) and (args.no_vgg or args.no_features):
    raise UsageError("--vgg asks for the VGG16 Fréchet distance that --no_vgg / --no_features skip; "
                     "give one of them.")
  module, name, config, dataset = _run_context(args.run)
  config = _tuples(config)
  _fill_added_keys(config, module)
  if overrides:  # other options added to the experiment after this run was made: their defaults
    _add_missing(config, get_config(module, "default", config.dataset))
  tag = _evaluation_tag(args, list(overrides))
  apply_overrides(config, list(overrides))  # sampler settings etc.; the checkpoint must still fit
  if overrides:
    check_run(module, name, config, dataset, defaults=get_config(module, "default", config.dataset))
  task = _build(module, config, dataset.info)
  state, keys = loop.latest_state(task, config, dataset, args.run, step=args.step)
  if args.seed:  # another draw of the samples (and of any stochastic bound)
    import jax
    keys = {k: jax.random.fold_in(v, args.seed) for k, v in keys.items()}
  metrics = evaluate_task(task, state, dataset, config, keys, num_samples=args.num_samples,
                         use_features=not args.no_features, use_log_prob=not args.no_log_prob,
                         use_samples=not args.no_samples,
                         use_vgg=False if args.no_vgg else (True if getattr(args, 'vgg', False) else None))
  metrics = {"experiment": name, "dataset": config.dataset, "step": int(state.step),
             **({"overrides": list(overrides)} if overrides else {}), **metrics}
  suffix = f"_{tag}" if tag else ""
  fix = "copy the run directory to a writable disk and evaluate it there."
  rundir.atomic_write(os.path.join(args.run, f"metrics{suffix}.json"), json.dumps(metrics, indent=2),
                      fix=fix)
  row = harness.markdown_table([(name + (f" [{tag}]" if tag else ""), metrics)] +
                               list(metrics.get("baselines", {}).items()))
  rundir.atomic_write(os.path.join(args.run, f"metrics{suffix}.md"), row + "\n", fix=fix)
  if not getattr(args, "quiet", False):
    print(row)
  print(f"metrics written to {os.path.join(args.run, f'metrics{suffix}.json')} (and .md)")
  return 0


def cmd_sample(args, overrides=()) -> int:
  import jax
  import numpy as np
  from gdl_jax.evaluation.grids import save_grid
  from gdl_jax.train import loop, rundir
  _check_int_flag("--num", args.num, 1)
  _check_int_flag("--seed", args.seed, 0, SEED_LIMIT - 1)
  _check_int_flag("--step", args.step, 0)
  if args.out is not None:   # a file, or (music) a folder: checked again once the run is open
    _check_new_path("--out", args.out, directory=True)
  module, name, config, dataset = _run_context(args.run)
  folder = dataset.info.kind in ("music", "pianoroll")   # a folder of .mid/.wav/.png per sample
  if args.out is not None and not folder:
    _check_new_path("--out", args.out, directory=False)
  config = _tuples(config)
  if overrides:  # sampler settings (e.g. --config.model.truncation=0.7), as in `evaluate`
    _fill_added_keys(config, module)
    _add_missing(config, get_config(module, "default", config.dataset))
    apply_overrides(config, list(overrides))
    check_run(module, name, config, dataset, defaults=get_config(module, "default", config.dataset))
  task = _build(module, config, dataset.info)
  if task.sample is None and task.translate is not None:
    raise UsageError(f"experiment {name!r} translates images between two domains rather than sampling: "
                     f"its grids are translations_ab.png / translations_ba.png in {args.run}, its "
                     f"metrics come from `gdl-jax evaluate {args.run}`.")
  if task.sample is None:
    raise UsageError(f"experiment {name!r} has no sampler (it is not a generative model).")
  prompt = getattr(args, "prompt", None)
  guidance = getattr(args, "guidance", None)
  if guidance is not None:
    _check_float_flag("--guidance", guidance)
    if prompt is None:
      raise UsageError("--guidance applies to --prompt samples; pass --prompt TEXT too (or "
                       "--config.model.guidance=G for the default samples).")
  if prompt is not None and task.sample_prompt is None:
    raise UsageError(f"experiment {name!r} is not text-conditioned; --prompt needs a text-to-image "
                     "run (e.g. `gdl-jax train text_to_image --dataset fashion_mnist_captions`).")
  state, _ = loop.latest_state(task, config, dataset, args.run, step=args.step)
  if prompt is not None:
    samples = np.asarray(task.sample_prompt(state, jax.random.key(args.seed), [prompt] * args.num,
                                            guidance))
  else:
    samples = np.asarray(task.sample(state, jax.random.key(args.seed), args.num))
  if folder:   # a folder of .mid, .wav and piano-roll .png files
    from gdl_jax.evaluation.music import write_music_samples
    out = args.out or os.path.join(args.run, f"samples_seed{args.seed}")
    if os.path.exists(out) and os.listdir(out) and not args.force:
      raise UsageError(f"{out} exists and is not empty; pass --force to overwrite or --out another folder.")
    try:
      paths = task.save_samples(samples, out) if task.save_samples is not None else \
          write_music_samples(dataset.info, samples, out)
    except OSError as e:
      err = rundir.write_error(e, os.path.abspath(out), fix="pass --out with a folder on a writable disk.")
      if err is e:
        raise
      raise err from None
    print(f"wrote {len(paths)} files (.mid, .wav, .png per sample) to {out}")
    return 0
  out = args.out or os.path.join(args.run, f"samples_seed{args.seed}.png")
  if os.path.exists(out) and not args.force:
    raise UsageError(f"{out} exists; pass --force to overwrite it or --out another path.")
  try:
    if dataset.info.kind == "image":
      save_grid(samples, out, levels=dataset.info.levels)
    else:
      np.save(out if out.endswith(".npy") else out + ".npy", samples)
  except OSError as e:
    err = rundir.write_error(e, os.path.dirname(os.path.abspath(out)),
                             fix="pass --out with a path on a writable disk.")
    if err is e:
      raise
    raise err from None
  print(f"wrote {out}")
  return 0


QUIET_HELP = "for scripts: no progress bars or notes, only errors and the paths written"


def cmd_report(args) -> int:
  from gdl_jax import report
  try:
    page = report.write_report(args.runs, args.out, baselines=args.baselines)
  except report.ReportError as e:
    raise UsageError(str(e)) from e
  print(f"wrote {page} (open it in a browser; the folder {args.out} can be moved as a whole)")
  return 0


PAINT_CONTENT = "skimage:chelsea"
PAINT_STYLE = "skimage:immunohistochemistry"


def _check_float_flag(flag: str, value: float, *, positive: bool = False) -> None:
  import math
  if not math.isfinite(value) or value < 0 or (positive and value == 0):
    raise UsageError(f"{flag} {value} must be a finite number {'> 0' if positive else '>= 0'}.")


def cmd_paint(args) -> int:
  """Neural style transfer: Gatys et al.'s optimisation of the image (default), or one pass of a
  trained style network (--model RUN, a `gdl-jax train style_net` run)."""
  import time
  import jax
  import jax.numpy as jnp
  import numpy as np
  from gdl_jax.data.images import WRITE_FORMATS, read_image, write_image
  from gdl_jax.train import rundir
  _check_int_flag("--size", args.size, 16, 8192)
  _check_int_flag("--style_size", args.style_size, 16, 8192)
  _check_int_flag("--steps", args.steps, 1, 100_000)
  _check_int_flag("--seed", args.seed, 0, SEED_LIMIT - 1)
  for flag in ("content_weight", "style_weight", "tv_weight"):
    _check_float_flag(f"--{flag}", getattr(args, flag))
  _check_float_flag("--lr", args.lr, positive=True)
  _check_new_path("--out", args.out, directory=False)
  if os.path.splitext(args.out)[1].lower() not in WRITE_FORMATS:
    raise UsageError(f"--out {args.out!r}: the extension must be one of {', '.join(WRITE_FORMATS)} "
                     "(e.g. painted.png).")
  if os.path.exists(args.out) and not args.force:
    raise UsageError(f"{args.out} exists; pass --force to overwrite it or --out another path.")
  content = read_image(args.content, args.size, min_side=16, what="content image (--content)")
  if args.model is not None:
    given = [f for f in ("style", "style_size", "optimizer", "init")
             if getattr(args, f) is not None] + [f for f, d in (("steps", 100), ("lr", 0.02),
                 ("content_weight", 1.0), ("style_weight", 1e3), ("tv_weight", 1e-3))
                 if getattr(args, f) != d]
    if given:
      raise UsageError(f"--model runs a trained style network (its style and weights are the run's); "
                       f"{', '.join('--' + f for f in given)} only apply without --model.")
    from gdl_jax.train import loop
    module, name, config, dataset = _run_context(args.model)
    if not hasattr(module, "stylizer"):
      raise UsageError(f"{args.model!r} is a run of {name!r}, not of a style network; pass the "
                       "--workdir of a `gdl-jax train style_net` run.")
    config = _tuples(config)
    task = _build(module, config, dataset.info)
    state, _ = loop.latest_state(task, config, dataset, args.model)
    run = module.stylizer(config)
    x = jnp.asarray(content)[None]
    jax.block_until_ready(run(state.params, x))                  # compile once
    t0 = time.perf_counter()
    image = np.asarray(jax.block_until_ready(run(state.params, x))[0])
    seconds = time.perf_counter() - t0
    how = f"style network {args.model} (one pass, {seconds:.3f} s after compiling)"
  else:
    from gdl_jax.nn.vgg import load_vgg16_params
    from gdl_jax.objectives.style_transfer import StyleWeights
    from gdl_jax.samplers.style_transfer import stylize
    style = read_image(args.style or PAINT_STYLE, args.style_size or args.size, min_side=16,
                       what="style image (--style)")
    weights = StyleWeights(content=args.content_weight, style=args.style_weight, tv=args.tv_weight)
    vgg = load_vgg16_params()
    t0 = time.perf_counter()
    out = stylize(jnp.asarray(content), jnp.asarray(style), vgg, weights=weights, steps=args.steps,
                  optimizer=args.optimizer or "lbfgs", lr=args.lr, init=args.init or "content",
                  key=jax.random.key(args.seed))
    image = np.asarray(jax.block_until_ready(out.image)[0])
    seconds = time.perf_counter() - t0
    losses = np.asarray(out.losses)
    if not np.all(np.isfinite(losses)):
      raise UsageError(f"the optimisation diverged (non-finite loss); lower --lr or the weights.")
    how = (f"{args.optimizer or 'lbfgs'}, {args.steps} steps in {seconds:.1f} s (with compiling); "
           f"objective {losses[0]:.4g} -> {float(out.losses[-1]):.4g}, final style loss "
           f"{float(out.terms['style'][0]):.4g}, content loss {float(out.terms['content'][0]):.4g}")
  try:
    write_image(args.out, image)
  except OSError as e:
    err = rundir.write_error(e, os.path.dirname(os.path.abspath(args.out)),
                             fix="pass --out with a path on a writable disk.")
    if err is e:
      raise
    raise err from None
  print(f"wrote {args.out} ({image.shape[1]}x{image.shape[0]}): {how}")
  return 0


def build_parser() -> argparse.ArgumentParser:
  p = _Parser(prog="gdl-jax", description=__doc__.split("\n\n")[0])
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
  t.add_argument("--quiet", action="store_true", help=QUIET_HELP)
  t.add_argument("--check", action="store_true",
                 help="validate the config, data and paths (and the model's size against the "
                      "device's memory) without training: print the resolved config, exit 0 or 2")
  t.add_argument("--evaluate", action="store_true", help="run `evaluate` on the run afterwards")
  t.add_argument("--steps_per_call", type=int, default=1,
                 help="k train steps per jitted call between log/eval/checkpoint points (the same "
                      "steps and rows; less dispatch on an accelerator; default 1)")
  t.add_argument("--init_from", default=None, metavar="RUN",
                 help="start a new run from run RUN's newest parameters (fine-tuning: the same "
                      "experiment and model sizes; the dataset, schedule and steps may differ; a "
                      "fresh optimiser); a run that has its own checkpoint resumes from it instead")
  t.add_argument("--distributed", action="store_true",
                 help="multi-host: run this on every host; jax.distributed.initialize() detects "
                      "TPU pod slices / SLURM / Open MPI, or takes the three flags below")
  t.add_argument("--coordinator_address", default=None,
                 help="with --distributed: HOST:PORT of process 0 (same on every host)")
  t.add_argument("--num_processes", type=int, default=None, help="with --distributed: processes in all")
  t.add_argument("--process_id", type=int, default=None, help="with --distributed: this process, 0..N-1")
  e = sub.add_parser("evaluate", help="the harness on a run: bits/dim, Fréchet distance, novelty")
  e.add_argument("run")
  e.add_argument("--num_samples", type=int, default=None)
  e.add_argument("--seed", type=int, default=0,
                 help="another draw of the samples (S > 0 writes metrics_seedS.json)")
  e.add_argument("--no_features", action="store_true",
                 help="skip the Fréchet distances (classifier and VGG16 features)")
  e.add_argument("--no_vgg", action="store_true",
                 help="skip only the Fréchet distance in ImageNet VGG16 features (fd_vgg16; computed "
                      "by default when the `perceptual` extra is installed, for RGB images of >= 16x16)")
  e.add_argument("--vgg", action="store_true",
                 help="also fd_vgg16 for a grey image set (>= 16x16; e.g. fashion_mnist: minutes on a "
                      "CPU); needs the `perceptual` extra")
  e.add_argument("--no_log_prob", action="store_true", help="skip held-out bits/dim")
  e.add_argument("--no_samples", action="store_true",
                 help="skip sampling (Fréchet distance, novelty): e.g. a PixelCNN on 28x28 draws "
                      "784 sequential network passes per image")
  e.add_argument("--tag", default=None,
                 help="write metrics_<tag>.json/.md (default with --config overrides, --step or "
                      "--seed: e.g. truncation=0.7,s2000,seed1)")
  e.add_argument("--step", type=int, default=None,
                 help="evaluate the checkpoint of this step (default: the latest; writes metrics_sN.json)")
  e.add_argument("--quiet", action="store_true", help=QUIET_HELP)
  s = sub.add_parser("sample", help="write a grid of samples from a run's latest checkpoint; "
                     "--config.KEY=VALUE overrides sampler settings (e.g. model.truncation)")
  s.add_argument("run")
  s.add_argument("--num", type=int, default=64)
  s.add_argument("--seed", type=int, default=0)
  s.add_argument("--out", default=None,
                 help="the grid's path (images), a .npy (points), or a directory of .mid/.wav/.png "
                      "files per sample (music: experiments with save_samples)")
  s.add_argument("--force", action="store_true")
  s.add_argument("--step", type=int, default=None,
                 help="sample the checkpoint of this step (default: the latest)")
  s.add_argument("--prompt", default=None,
                 help="text-to-image runs: draw --num images of this caption (its words must be in "
                      "the captions' vocabulary; unknown words are named in the error)")
  s.add_argument("--guidance", type=float, default=None,
                 help="classifier-free guidance scale for --prompt (0 = unconditional, 1 = "
                      "conditional, > 1 stronger; default: the run's model.guidance)")
  s.add_argument("--quiet", action="store_true", help=QUIET_HELP)
  r = sub.add_parser("report", help="one static HTML page of runs: samples, GIFs, figures, training "
                     "curves, metrics beside the baselines, audio/MIDI links")
  r.add_argument("runs", nargs="+", help="run directories (or folders of them, e.g. runs)")
  r.add_argument("--out", required=True,
                 help="a new or empty directory (or an earlier report's, which is replaced)")
  r.add_argument("--baselines", nargs="*", default=None,
                 help="quality_<dataset>.json files of benchmarks/quality.py (default: the "
                      "checkout's benchmarks/results)")
  r.add_argument("--quiet", action="store_true", help=QUIET_HELP)
  pt = sub.add_parser("paint", help="neural style transfer of one image: Gatys et al.'s optimisation "
                      "(L-BFGS or Adam), or a trained style network (--model RUN)")
  pt.add_argument("--content", default=PAINT_CONTENT,
                  help=f"content image file, or skimage:NAME (default {PAINT_CONTENT})")
  pt.add_argument("--style", default=None,
                  help=f"style image file, or skimage:NAME (default {PAINT_STYLE})")
  pt.add_argument("--out", default="painted.png", help="output image (.png, .jpg, ...)")
  pt.add_argument("--force", action="store_true", help="overwrite --out")
  pt.add_argument("--size", type=int, default=256,
                  help="longer side of the content image and the output, pixels (default 256)")
  pt.add_argument("--style_size", type=int, default=None,
                  help="longer side the style image is resized to (default: --size); larger "
                       "makes the brush strokes smaller")
  pt.add_argument("--steps", type=int, default=100, help="optimisation steps (default 100)")
  pt.add_argument("--optimizer", choices=("lbfgs", "adam"), default=None, help="default lbfgs")
  pt.add_argument("--lr", type=float, default=0.02, help="Adam's learning rate (default 0.02)")
  pt.add_argument("--content_weight", type=float, default=1.0)
  pt.add_argument("--style_weight", type=float, default=1e3)
  pt.add_argument("--tv_weight", type=float, default=1e-3)
  pt.add_argument("--init", choices=("content", "noise"), default=None,
                  help="start from the content image (default) or uniform noise")
  pt.add_argument("--seed", type=int, default=0, help="the noise of --init noise")
  pt.add_argument("--model", default=None,
                  help="a `gdl-jax train style_net` run directory: stylise in one network pass")
  pt.add_argument("--quiet", action="store_true", help=QUIET_HELP)
  w = sub.add_parser("world", help="World Models on CarRacing-v3 (the `world` extra): run the "
                     "pipeline, collect rollouts, or replay a trained controller")
  wsub = w.add_subparsers(dest="world_command", required=True)
  for verb, text in (("run", "collect, V, M, C and their evaluation into --workdir (resumable); "
                      "--config.KEY=VALUE overrides"), ("collect", "random-policy rollouts alone")):
    wp = wsub.add_parser(verb, help=text)
    wp.add_argument("--variant", default="default", help="default (paper sizes), cpu, tiny")
    wp.add_argument("--rollouts", default=None, help="rollout directory (default: under the data dir)")
    wp.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    if verb == "run":
      wp.add_argument("--workdir", default=None)
    else:
      for flag in ("episodes", "max_steps", "workers", "shard_size"):
        wp.add_argument(f"--{flag}", type=int, default=None)
  wr = wsub.add_parser("replay", help="drive a run's saved controller on one track seed")
  wr.add_argument("run")
  wr.add_argument("--seed", type=int, default=1_000_000, help="track seed (held-out ones: 1000000+)")
  wr.add_argument("--controller", choices=("real", "dream"), default="real")
  wr.add_argument("--max_steps", type=int, default=None)
  wr.add_argument("--gif", default=None, help="also write the rollout (frame | V's reconstruction)")
  wr.add_argument("--quiet", action="store_true", help=QUIET_HELP)
  return p


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).split())


def _out_of_memory(e: BaseException) -> bool:
  """XLA's allocation failure (an accelerator, or a CPU allocation it could refuse)."""
  import jax
  return isinstance(e, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" in str(e)


def main(argv: list[str] | None = None) -> int:
  from gdl_jax import progress, runtime
  runtime.apply_xla_defaults()  # before the first computation; a no-op once a backend is running
  from gdl_jax.data.info import DataError
  from gdl_jax.nn.vgg import PerceptualWeightsError
  from gdl_jax.train.checkpoint import CheckpointError
  from gdl_jax.train.loop import NonFiniteLossError, RunDirError
  argv = sys.argv[1:] if argv is None else argv
  try:
    rest, overrides = _split_config_args(argv)
    args = build_parser().parse_args(rest)
    if overrides and args.command not in ("train", "evaluate", "sample", "world"):
      raise UsageError("--config.KEY=VALUE overrides only apply to `train`, `evaluate`, `sample` "
                       "and `world run`.")
    with progress.quiet(getattr(args, "quiet", False)):
      if args.command == "datasets":
        return cmd_datasets(args)
      if args.command == "experiments":
        return cmd_experiments(args)
      if args.command == "train":
        return cmd_train(args, overrides)
      if args.command == "evaluate":
        return cmd_evaluate(args, overrides)
      if args.command == "sample":
        return cmd_sample(args, overrides)
      if args.command == "report":
        return cmd_report(args)
      if args.command == "paint":
        return cmd_paint(args)
      if args.command == "world":
        return cmd_world(args, overrides)
  except (DataError, ConfigError, UsageError, RunDirError, CheckpointError,
          PerceptualWeightsError) as e:
    print(f"gdl-jax: error: {_one_line(e)}", file=sys.stderr)
    return 2
  except NonFiniteLossError as e:
    print(f"gdl-jax: error: {_one_line(e)}", file=sys.stderr)
    return 3
  except Exception as e:  # noqa: BLE001 - only XLA's out-of-memory is turned into a line
    if not _out_of_memory(e):
      raise
    print(f"gdl-jax: error: out of device memory ({_one_line(e)[:300]}); lower --config.batch_size or "
          "the model's sizes (`gdl-jax train ... --check` prints the train state's size).", file=sys.stderr)
    return 2
  return 1


if __name__ == "__main__":
  sys.exit(main())
