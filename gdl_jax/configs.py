"""The config block every experiment shares, and the checks every config passes before it runs.

    c = base_config("digits", steps=2000, batch_size=64)     # top-level keys the loop and CLI read
    check_config(c, dataset, rules=RULES, needs=NEEDS)       # ConfigError naming the key and the fix

Checks are declarative: COMMON_RULES hold for every experiment (seed, steps, batch size, intervals,
the optimizer's names and ranges, dtype, feature sizes); an experiment module adds its own with a
module-level `RULES = {"model.key": OneOf(...) / Range(...)}` (which win over the common ones on the
same key), `NEEDS = Needs("image", levels=True)` for the data it trains on, and, for constraints
between keys, `check(config, info)` raising ConfigError. Keys are dotted paths; `*` matches within
a path (fnmatch). Values no rule names are still checked: floats finite, integers within int32,
tuple elements numbers.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import os
from typing import Any, Callable, Mapping, Optional

import ml_collections

from gdl_jax.optim import OPTIMIZERS, SCHEDULES, default_optimizer_config

INT32_MAX = 2**31 - 1
MAX_SAMPLES = 100_000  # config.num_samples: the end-of-run grid is drawn in one call, after training


class ConfigError(ValueError):
  """A config value (an experiment's default or a --config override) that cannot work; the message
  names the key, the value and the fix. The CLI prints it as one `gdl-jax: error:` line, exit 2."""


# ---------------------------------------------------------------------------------------------
# the shared block

def base_config(dataset: str, *, steps: int, batch_size: int, lr: float = 1e-3,
                seed: int = 0, **optimizer_kw) -> ml_collections.ConfigDict:
  """Top-level keys of every experiment (the loop and CLI read these; `model` is the family's)."""
  c = ml_collections.ConfigDict()
  c.dataset = dataset
  c.seed = seed
  c.batch_size = batch_size
  c.steps = steps
  c.log_every = max(steps // 20, 1)
  c.eval_every = max(steps // 4, 1)
  c.ckpt_every = max(steps // 4, 1)
  c.keep_checkpoints = 2
  c.num_samples = 64
  c.sample_every = 0  # > 0: a sample grid of one fixed key every N steps, and a GIF of them
  c.eval_batches = 8
  c.optimizer = default_optimizer_config(lr, **optimizer_kw)
  c.model = ml_collections.ConfigDict()
  return c


def shrink(c: ml_collections.ConfigDict, steps: int = 4, batch_size: int = 8) -> ml_collections.ConfigDict:
  """The `tiny` variant: a few steps on small batches, for tests."""
  c.steps, c.batch_size = steps, batch_size
  c.log_every = c.eval_every = c.ckpt_every = max(steps // 2, 1)
  c.num_samples = 8
  c.eval_batches = 1
  return c


# ---------------------------------------------------------------------------------------------
# rules

def _fmt(x: float) -> str:
  return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


@dataclasses.dataclass(frozen=True)
class Range:
  """A number in [lo, hi] (lo_open / hi_open exclude an end); integer=True asks for an int, and an
  int with no `hi` stays within int32. On a tuple value it holds for every element."""

  lo: Optional[float] = None
  hi: Optional[float] = None
  lo_open: bool = False
  hi_open: bool = False
  integer: bool = False

  def describe(self) -> str:
    if self.integer and self.hi is None and self.lo in (0, 1) and not self.lo_open:
      return "a positive integer" if self.lo == 1 else "a non-negative integer"
    what = "an integer" if self.integer else "a number"
    if self.lo is not None and self.hi is not None:
      return (f"{what} in {'(' if self.lo_open else '['}{_fmt(self.lo)}, {_fmt(self.hi)}"
              f"{')' if self.hi_open else ']'}")
    if self.lo is not None:
      return f"{what} {'>' if self.lo_open else '>='} {_fmt(self.lo)}"
    if self.hi is not None:
      return f"{what} {'<' if self.hi_open else '<='} {_fmt(self.hi)}"
    return what if self.integer else "a finite number"

  def problem(self, value: Any) -> Optional[str]:
    each = " (every element)" if isinstance(value, (tuple, list)) else ""
    for v in (value if isinstance(value, (tuple, list)) else (value,)):
      if isinstance(v, bool) or not isinstance(v, (int, float)) or (self.integer and not isinstance(v, int)):
        return f"must be {self.describe()}{each}"
      if not math.isfinite(v):
        return f"must be {self.describe()}{each}, not {v}"
      if (self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo))) or \
         (self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi))):
        return f"must be {self.describe()}{each}"
      if self.integer and self.hi is None and abs(v) > INT32_MAX:
        return f"must be {self.describe()} of at most {INT32_MAX} (int32){each}"
    return None

  def example(self) -> str:
    if self.lo is None:
      return "VALUE"
    v = self.lo + (1 if self.lo_open and self.integer else 0)
    if self.lo_open and not self.integer:
      v = (self.lo + self.hi) / 2 if self.hi is not None else self.lo + 1
    return _fmt(v)


@dataclasses.dataclass(frozen=True)
class OneOf:
  """One of the listed values."""

  choices: tuple

  def __init__(self, *choices):
    object.__setattr__(self, "choices", tuple(choices[0]) if len(choices) == 1 and
                       isinstance(choices[0], (tuple, list, dict)) else tuple(choices))

  def describe(self) -> str:
    return "one of " + ", ".join(repr(c) for c in self.choices)

  def problem(self, value: Any) -> Optional[str]:
    return None if value in self.choices else f"must be {self.describe()}"

  def example(self) -> str:
    return str(self.choices[0])


@dataclasses.dataclass(frozen=True)
class RunDir:
  """The directory of a finished `gdl-jax train <experiment>` run (a frozen stage that another
  experiment builds on, e.g. DALL-E 2's CLIP); "" = not given (the experiment says what then)."""

  experiment: str

  def describe(self) -> str:
    return (f"must be a `gdl-jax train {self.experiment}` run directory (with config.json, run.json "
            "and checkpoints/)")

  def problem(self, value: Any) -> Optional[str]:
    import json
    if value == "":
      return None
    if not isinstance(value, str):
      return self.describe()
    try:
      with open(os.path.join(value, "run.json")) as f:
        run = json.load(f)
    except (OSError, ValueError):
      return self.describe() + f"; {value!r} has no readable run.json"
    if not isinstance(run, dict) or run.get("experiment") != self.experiment:
      got = run.get("experiment") if isinstance(run, dict) else None
      return self.describe() + f"; {value!r} is a run of {got!r}"
    if not os.path.isdir(os.path.join(value, "checkpoints")):
      return self.describe() + f"; {value!r} has no checkpoints/ (train it first)"
    return None

  def example(self) -> str:
    return "RUNDIR"


Rule = Any  # Range | OneOf | anything with problem(value) -> str | None, describe(), example()

POSITIVE_INT = Range(1, integer=True)
NON_NEGATIVE_INT = Range(0, integer=True)
POSITIVE = Range(0, lo_open=True)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1)                      # [0, 1]
DECAY = Range(0, 1, hi_open=True)           # [0, 1): EMA decays, dropout rates, Adam's betas

def optimizer_rules(prefix: str = "optimizer") -> dict[str, Rule]:
  """The rules of one `default_optimizer_config` sub-config at `prefix` (an experiment with a second
  optimizer, e.g. the VQ prior's `prior_optimizer`, adds `optimizer_rules("prior_optimizer")`)."""
  return {f"{prefix}.{k}": rule for k, rule in {
      "name": OneOf(OPTIMIZERS), "schedule": OneOf(SCHEDULES),
      "lr": POSITIVE, "b1": DECAY, "b2": DECAY, "eps": POSITIVE,
      "weight_decay": NON_NEGATIVE, "clip_norm": NON_NEGATIVE,
      "clip_value": NON_NEGATIVE, "warmup_steps": NON_NEGATIVE_INT,
      "final_lr_frac": FRACTION, "decay_start_frac": FRACTION, "momentum": NON_NEGATIVE}.items()}


COMMON_RULES: dict[str, Rule] = {
    "seed": Range(0, 2**32, hi_open=True, integer=True),
    "batch_size": POSITIVE_INT, "steps": POSITIVE_INT, "log_every": POSITIVE_INT,
    "eval_every": POSITIVE_INT, "ckpt_every": POSITIVE_INT, "keep_checkpoints": POSITIVE_INT,
    "num_samples": Range(1, MAX_SAMPLES, integer=True), "sample_every": NON_NEGATIVE_INT,
    "eval_batches": NON_NEGATIVE_INT,
    **optimizer_rules("optimizer"),
    "model.dtype": OneOf("float32", "bfloat16"),
    "model.*features": POSITIVE_INT, "model.hidden": POSITIVE_INT, "model.latent_dim": POSITIVE_INT,
    "model.num_*": POSITIVE_INT, "model.*_steps": NON_NEGATIVE_INT, "model.dropout": DECAY,
    "model.ema_decay": DECAY, "model.*_columns": Range(1, 1000, integer=True),
}


@dataclasses.dataclass(frozen=True)
class Needs:
  """The data an experiment trains on: kind 'image' / 'points' / 'text', integer pixel levels, class
  labels; hint: where to go instead (e.g. "for points use realnvp_moons")."""

  kind: str
  levels: bool = False
  labels: bool = False
  hint: str = ""

  def problem(self, info) -> Optional[str]:
    ok = info.kind == self.kind and (not self.levels or info.levels is not None) and \
        (not self.labels or bool(info.num_classes)) and (self.kind != "text" or bool(info.vocab))
    if ok:
      return None
    want = ("a labelled " if self.labels else "an " if self.kind[0] in "aeiou" else "a ") + self.kind + \
        " dataset" + (" with integer levels" if self.levels else "")
    have = f"{info.name!r} is a{'n' if info.kind[0] in 'aeiou' else ''} {info.kind} dataset" + \
        (" without labels" if self.labels and info.kind == self.kind else "")
    return f"needs {want}; {have}. Pass --dataset with such a dataset (see `gdl-jax datasets`)" + \
        (f"; {self.hint}" if self.hint else "") + "."


def leaves(config: ml_collections.ConfigDict, prefix: str = ""):
  """(dotted key, value) of every non-group entry, depth first."""
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      yield from leaves(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", v


def rule_for(key: str, rules: Mapping[str, Rule] = ()) -> Optional[Rule]:
  """The experiment's rule for `key` (exact name first, then patterns), else the common one."""
  for table in (rules or {}, COMMON_RULES):
    if key in table:
      return table[key]
    for pattern, rule in table.items():
      if fnmatch.fnmatchcase(key, pattern):
        return rule
  return None


def bad_value(key: str, value: Any, requirement: str, example: str = "VALUE") -> ConfigError:
  """The ConfigError for `key=value`: what it must be and the flag that sets it."""
  return ConfigError(f"config {key}={value!r} is invalid: it {requirement}; pass "
                     f"--config.{key}={example}" + ("" if example != "VALUE" else " with such a value") + ".")


def _generic_problem(value: Any) -> Optional[str]:
  for v in (value if isinstance(value, (tuple, list)) else (value,)):
    if isinstance(v, bool) or v is None or isinstance(v, str):
      continue
    if isinstance(v, float) and not math.isfinite(v):
      return "must be a finite number"
    if isinstance(v, int) and abs(v) > INT32_MAX:
      return f"must be an integer of magnitude <= {INT32_MAX} (int32)"
    if not isinstance(v, (int, float)):
      return "must hold numbers, strings or booleans"
  return None


def _lookup(config: Optional[ml_collections.ConfigDict], key: str):
  node = config
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return None
    node = node[part]
  return node


def _example(key: str, value: Any, rule: Optional[Rule], defaults) -> str:
  """A value to suggest: the experiment's default where the rule accepts it, else the rule's own."""
  default = _lookup(defaults, key)
  if default is not None and not isinstance(default, ml_collections.ConfigDict) and \
      (rule is None or rule.problem(default) is None) and _generic_problem(default) is None:
    return f"'{tuple(default)!r}'" if isinstance(default, (tuple, list)) else str(default)
  if rule is None:
    return "VALUE"
  example = rule.example()
  return f"'({example},)'" if isinstance(value, (tuple, list)) and example != "VALUE" else example


def check_config(config: ml_collections.ConfigDict, dataset=None, *, rules: Mapping[str, Rule] = (),
                 needs: Optional[Needs] = None, check: Optional[Callable] = None,
                 experiment: str = "", defaults: Optional[ml_collections.ConfigDict] = None) -> None:
  """Raises ConfigError for the first value a rule refuses (COMMON_RULES, then `rules`, which win on
  the same key), for a dataset of the wrong kind (`needs`), for a batch larger than the training
  split, and whatever the experiment's `check(config, info)` refuses. dataset: a data.Dataset (or
  None to check the values alone); defaults: the experiment's config, whose values the messages
  suggest."""
  for key, value in leaves(config):
    rule = rule_for(key, rules)
    problem = rule.problem(value) if rule is not None else _generic_problem(value)
    if problem:
      raise bad_value(key, value, problem, _example(key, value, rule, defaults))
  if dataset is None:
    return
  info = dataset.info
  name = experiment or "this experiment"
  if needs is not None and (problem := needs.problem(info)):
    raise ConfigError(f"{name} {problem}")
  n_train = dataset.num_examples("train")
  if int(config.batch_size) > n_train:
    raise ConfigError(f"config batch_size={config.batch_size} is larger than the training split of "
                      f"{info.name!r} ({n_train} examples); pass --config.batch_size={min(n_train, 64)} "
                      f"or another value <= {n_train}.")
  if check is not None:
    check(config, info)
