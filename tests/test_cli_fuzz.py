"""Fuzzing the CLI's boundary: malformed invocations generated for every experiment and every key of
its config (wrong types, out of range, negative, zero, empty, huge, non-finite), bad paths, verbs,
flags and dataset names. Each must end in exit 2 with one `gdl-jax: error:` line and no traceback,
before anything trains (`train --check` validates only); valid overrides must still pass.

The values are generated from the key's default type and the rule that gdl_jax.configs applies to it
(COMMON_RULES plus the experiment's RULES), so only values that must be refused are produced: an
int where a float is expected is accepted and is never generated.
"""

import json
import os
import random
import subprocess
import sys

import pytest

from gdl_jax import cli, configs

SEED = 0


def _experiments():
  return cli.experiment_names()


def _dataset_flag(module) -> list[str]:
  """Point every experiment at a small offline dataset of its kind (no tfds builds in tests); a module's
  TEST_DATASET names its own (e.g. vqgan: LPIPS needs >= 16x16, so not the 8x8 digits)."""
  if getattr(module, "TEST_DATASET", None):
    return ["--dataset", module.TEST_DATASET]
  needs = getattr(module, "NEEDS", None)
  if needs is not None and needs.kind == "points":
    return ["--dataset", "moons"]
  if needs is not None and needs.kind == "text":
    return []
  return ["--dataset", "digits"]


def _num(v) -> str:
  return str(int(v)) if isinstance(v, int) or float(v).is_integer() and abs(v) < 2**53 else repr(float(v))


def _out_of_range(rule, integer: bool) -> list[str]:
  """Texts just outside a Range (and far outside it)."""
  out = []
  if rule.lo is not None:
    lo = rule.lo if rule.lo_open else (rule.lo - 1 if integer or rule.integer else rule.lo - 0.5)
    out.append(_num(int(lo) if integer else float(lo)))
    out.append(_num(int(rule.lo) - 10**6 if integer else float(rule.lo) - 1e6))
  if rule.hi is not None:
    hi = rule.hi if rule.hi_open else (rule.hi + 1 if integer else rule.hi + 0.5)
    out.append(_num(int(hi) if integer else float(hi)))
  elif integer:
    out += [str(2**31), str(10**23)]
  return out


def refused_texts(key: str, value, rule) -> list[str]:
  """Override texts for `key` (default `value`, rule `rule`) that the CLI must refuse."""
  out: list[str] = []
  if isinstance(value, bool):
    out += ["maybe", "2", "", "yes please"]
  elif isinstance(value, int):
    out += ["abc", "1.5", "", "1e3", "(1, 2)"]
    out += _out_of_range(rule, True) if isinstance(rule, configs.Range) else [str(2**40)]
  elif isinstance(value, float):
    out += ["abc", "", "nan", "inf", "-inf", "1,5"]
    if isinstance(rule, configs.Range):
      out += [t for t in _out_of_range(rule, False) if t not in ("inf", "-inf")]
  elif isinstance(rule, configs.RunDir):  # a run directory: missing, or not a run of its experiment
    out += ["/no/such/run", "zzz", "/"]
  elif isinstance(value, str):  # every string key is a choice (a key with no OneOf rule fails here)
    out += ["no_such_dataset", ""] if key == "dataset" else ["zzz", "", value.upper() + "_x"]
  elif isinstance(value, tuple):
    out += ["(", "[1,", "((1, 2),)", '("a", "b")', "None"]
    if value:
      out += ["()", "[]"]
      if isinstance(value[0], int):
        out += ["(1.5,)", "(True,)"]
    if isinstance(rule, configs.Range):
      out += [f"({t},)" for t in _out_of_range(rule, bool(value) and isinstance(value[0], int))]
    out.append("(1e999,)")  # literal_eval reads inf: refused as non-finite
  return out


def generate_cases(per_key: int = 2) -> list[tuple[str, list[str]]]:
  """(label, argv) of malformed invocations, seeded: per_key bad overrides for every config key of
  every experiment, plus bad paths, verbs, flags and names."""
  rng = random.Random(SEED)
  cases = []
  for name in _experiments():
    module = cli.load_experiment(name)
    config = cli.get_config(module, "tiny", None)
    base = ["train", name, "--variant", "tiny", *_dataset_flag(module), "--check"]
    for key, value in configs.leaves(config):
      texts = refused_texts(key, value, configs.rule_for(key, getattr(module, "RULES", {})))
      assert texts, f"no malformed value generated for {name} {key}={value!r}"
      for text in rng.sample(texts, min(per_key, len(texts))):
        cases.append((f"{name} {key}={text!r}", base + [f"--config.{key}={text}"], key))
    cases.append((f"{name} unknown key", base + ["--config.model.no_such_key=1"], "model.no_such_key"))
    cases.append((f"{name} group as value", base + ["--config.optimizer=3"], "optimizer"))
    cases.append((f"{name} bad variant", ["train", name, "--variant", "huge", "--check"], "huge"))
    cases.append((f"{name} steps 0", base + ["--steps", "0"], "steps"))
  tiny = ["train", "classifier", "--variant", "tiny", "--dataset", "digits", "--check"]
  cases += [
      ("no verb", []), ("bad verb", ["trian", "classifier"]), ("verb case", ["TRAIN", "classifier"]),
      ("unknown flag", tiny + ["--no_such_flag"]), ("steps not int", tiny + ["--steps", "abc"]),
      ("steps negative", tiny + ["--steps", "-3"]), ("steps huge", tiny + ["--steps", str(10**12)]),
      ("missing model", ["train"]), ("unknown model", ["train", "no_such_model", "--check"]),
      ("unknown dataset", ["train", "classifier", "--dataset", "no_such_data", "--check"]),
      ("empty dataset", ["train", "classifier", "--dataset=", "--check"]),
      ("points for images", ["train", "vae_digits", "--dataset", "moons", "--check"]),
      ("images for points", ["train", "realnvp_moons", "--dataset", "digits", "--check"]),
      ("images for text", ["train", "lstm_text", "--dataset", "digits", "--check"]),
      ("points for classifier", ["train", "classifier", "--dataset", "moons", "--check"]),
      ("batch over split", tiny + ["--config.batch_size=100000"]),
      ("batch over devices", tiny + ["--config.batch_size=7"]),
      ("config without =", tiny + ["--config.seed"]),
      ("config on sample", ["sample", "/no/run", "--config.seed=1"]),
      ("data_dir missing", tiny + ["--data_dir", "/no/such/dir"]),
      ("init_from missing", tiny + ["--init_from", "/no/such/run"]),
      ("init_from empty", tiny + ["--init_from="]),
      ("init_from a file", tiny + ["--init_from", "/etc/hostname"]),
      ("datasets data_dir missing", ["datasets", "--data_dir", "/no/such/dir"]),
      ("evaluate missing run", ["evaluate", "/no/such/run"]),
      ("evaluate num_samples 0", ["evaluate", "/no/such/run", "--num_samples", "0"]),
      ("evaluate seed negative", ["evaluate", "/no/such/run", "--seed", "-1"]),
      ("sample num 0", ["sample", "/no/such/run", "--num", "0"]),
      ("sample num negative", ["sample", "/no/such/run", "--num", "-4"]),
      ("sample num huge", ["sample", "/no/such/run", "--num", str(2**40)]),
      ("sample seed huge", ["sample", "/no/such/run", "--seed", str(10**23)]),
      ("sample missing run", ["sample", "/no/such/run"]),
      ("eval_k not multiple", ["train", "vae_digits", "--variant", "tiny", "--check", "--config.model.eval_k=3"]),
      ("ddpm groups", ["train", "ddpm_digits", "--variant", "tiny", "--check", "--config.model.groups=3"]),
      ("ddpm sampler_steps > T", ["train", "ddpm_digits", "--variant", "tiny", "--check",
                                  "--config.model.sampler_steps=51"]),
      ("gan too many stages", ["train", "dcgan_digits", "--variant", "tiny", "--check",
                               "--config.model.gen_features=(8, 8, 8, 8)"]),
      ("gan gp with batchnorm", ["train", "wgan_gp_fashion_mnist", "--dataset", "digits", "--variant", "tiny",
                                 "--check", "--config.model.disc_norm=batch"]),
      ("ebm lengths", ["train", "ebm_digits", "--variant", "tiny", "--check", "--config.model.kernels=(3,)"]),
      ("gpt heads", ["train", "gpt_digits", "--variant", "tiny", "--check", "--config.model.num_heads=3"]),
      ("gpt top_k > vocab", ["train", "gpt_digits", "--variant", "tiny", "--check", "--config.model.top_k=18"]),
      ("pixelcnn even kernel", ["train", "pixelcnn_digits", "--variant", "tiny", "--check",
                                "--config.model.kernel_size=4"]),
      ("realnvp scales", ["train", "realnvp_digits", "--variant", "tiny", "--check", "--config.model.num_scales=5"]),
      ("huge model", ["train", "vae_digits", "--variant", "tiny", "--check", "--config.model.hidden=2000000000"]),
  ]
  return [c if len(c) == 3 else (*c, None) for c in cases]


def _run(argv, capsys):
  """main(argv) in-process -> (exit code, stdout, stderr); an exception escaping main fails."""
  capsys.readouterr()
  try:
    rc = cli.main(argv)
  except SystemExit as e:  # --help only
    rc = e.code
  out = capsys.readouterr()
  return rc, out.out, out.err


def _assert_refused(label, rc, err, names=None):
  """Exit 2, one `gdl-jax: error:` line, no traceback; the line names `names` (the bad key) if given."""
  lines = err.strip().splitlines()
  assert rc == 2, f"{label}: exit {rc}, stderr {err!r}"
  assert "Traceback" not in err, f"{label}: {err}"
  assert len(lines) == 1 and lines[0].startswith("gdl-jax: error: "), f"{label}: {lines}"
  if names is not None:
    assert names in lines[0], f"{label}: the message does not name {names!r}: {lines[0]}"


def test_generated_malformed_invocations_exit_2_with_one_line(tmp_path, capsys):
  cases = generate_cases()
  assert len(cases) >= 100
  assert len({label for label, _, _ in cases}) == len(cases)
  paths = [
      ("workdir is a file", ["--workdir", str(tmp_path / "f")]),
      ("workdir under a file", ["--workdir", str(tmp_path / "f" / "run")]),
      ("workdir empty", ["--workdir="]),
      ("workdir blank", ["--workdir", "   "]),
  ]
  (tmp_path / "f").write_text("a file")
  tiny = ["train", "classifier", "--variant", "tiny", "--dataset", "digits", "--check"]
  cases += [(label, tiny + extra, "--workdir") for label, extra in paths]
  for label, argv, names in cases:
    if argv[:1] == ["train"] and not any(a.startswith("--workdir") for a in argv):
      argv = argv + ["--workdir", str(tmp_path / "never")]
    rc, _, err = _run(argv, capsys)
    _assert_refused(label, rc, err, names)
  assert not (tmp_path / "never").exists()  # nothing was written by a refused (or --check) run


@pytest.mark.parametrize("name", _experiments())
def test_every_experiment_passes_its_own_check(name, tmp_path, capsys):
  """The baseline every generated case breaks: the experiment's tiny run passes --check (on the data
  the fuzz uses), and its default and tiny configs pass the rules (so a refusal is the bad value's)."""
  module = cli.load_experiment(name)
  for variant in ("default", "tiny"):
    configs.check_config(cli.get_config(module, variant, None), rules=getattr(module, "RULES", {}))
  argv = ["train", name, "--variant", "tiny", *_dataset_flag(module), "--check", "--workdir", str(tmp_path / "w")]
  rc, out, err = _run(argv, capsys)
  assert rc == 0, err
  assert out.strip().splitlines()[-1].startswith(f"ok: {name} on ")


def test_every_key_of_every_experiment_gets_a_malformed_case():
  cases = generate_cases(per_key=1)
  labels = " ".join(label for label, _, _ in cases)
  for name in _experiments():
    module = cli.load_experiment(name)
    for key, _ in configs.leaves(cli.get_config(module, "tiny", None)):
      assert f"{name} {key}=" in labels


def test_evaluate_and_sample_refuse_bad_overrides_and_flags(tmp_path, capsys):
  """`evaluate RUN --config...` checks the overrides like train does (before any checkpoint is read);
  sample's --num / --seed / --out are checked before the run is opened; a run directory with broken
  or foreign config.json / run.json is one line too."""
  from gdl_jax.train.loop import config_to_json
  run = tmp_path / "run"
  run.mkdir()
  module = cli.load_experiment("classifier")
  (run / "config.json").write_text(config_to_json(cli.get_config(module, "tiny", "digits")))
  (run / "run.json").write_text(json.dumps({"experiment": "classifier"}))
  (tmp_path / "f").write_text("a file")
  cases = [
      ["evaluate", str(run), "--config.model.arch=zzz"],
      ["evaluate", str(run), "--config.optimizer.lr=-1"],
      ["evaluate", str(run), "--config.model.channels=()"],
      ["evaluate", str(run), "--config.batch_size=100000"],
      ["evaluate", str(run), "--config.no_such=1"],
      ["evaluate", str(run), "--num_samples", "-5"],
      ["sample", str(run), "--num", "0"],
      ["sample", str(run), "--seed", "-2"],
      ["sample", str(run), "--out", str(tmp_path)],
      ["sample", str(run), "--out", str(tmp_path / "f" / "x.png")],
  ]
  broken = {"bad_json": ("{not json", '{"experiment": "classifier"}'),
            "no_experiment": ((run / "config.json").read_text(), "{}"),
            "gone_experiment": ((run / "config.json").read_text(), '{"experiment": "no_such_exp"}'),
            "config_a_list": ("[1, 2]", '{"experiment": "classifier"}')}
  for d, (config_text, run_text) in broken.items():
    (tmp_path / d).mkdir()
    (tmp_path / d / "config.json").write_text(config_text)
    (tmp_path / d / "run.json").write_text(run_text)
    cases += [["evaluate", str(tmp_path / d)], ["sample", str(tmp_path / d)]]
  for argv in cases:
    rc, _, err = _run(argv, capsys)
    _assert_refused(" ".join(argv), rc, err)


@pytest.mark.parametrize("argv", [
    ["train", "classifier", "--variant", "tiny", "--dataset", "digits"],
    ["train", "vae_digits", "--variant", "tiny", "--config.optimizer.b1=0", "--config.model.features=(8, 16)",
     "--config.optimizer.lr=3e-4", "--config.seed=4294967295", "--config.model.attribute_alphas=(1, 2.5)"],
    ["train", "realnvp_moons", "--variant", "tiny", "--config.model.hidden=(8, 8)", "--steps", "6"],
    ["train", "ddpm_digits", "--variant", "tiny", "--config.model.dtype=float16", "--config.sample_every=0",
     "--config.eval_batches=0", "--config.optimizer.schedule=linear", "--config.model.sampler_steps=50"],
    ["train", "dcgan_digits", "--variant", "tiny", "--config.model.disc_norm=layer",
     "--config.model.truncation=0.5"],
])
def test_valid_invocations_pass_the_check(argv, tmp_path, capsys):
  """--check accepts valid configs (ints where floats go, boundary values), prints the resolved
  config as JSON and a summary, writes nothing."""
  wd = tmp_path / "run"
  rc, out, err = _run(argv + ["--check", "--workdir", str(wd)], capsys)
  assert rc == 0, err
  body, summary = out.rsplit("\n", 2)[0], out.strip().splitlines()[-1]
  config = json.loads(body)
  assert summary.startswith("ok: ") and "parameters" in summary
  if "--config.optimizer.b1=0" in argv:
    assert config["optimizer"]["b1"] == 0.0 and config["model"]["features"] == [8, 16]
    assert config["seed"] == 2**32 - 1
  assert not wd.exists()


def test_non_finite_loss_before_any_checkpoint_says_none_is_kept(tmp_path, capsys):
  """A loss that is NaN before the first checkpoint: the message says that no checkpoint is kept
  (it said 'the last good checkpoint (step None)')."""
  wd = tmp_path / "run"
  rc, _, err = _run(["train", "classifier", "--variant", "tiny", "--dataset", "digits", "--quiet",
                     "--workdir", str(wd), "--config.optimizer.lr=1e30"], capsys)
  assert rc == 3, err
  assert "No checkpoint had been saved yet, so none is kept." in err and "step None" not in err


def test_out_of_memory_is_one_line_and_other_errors_keep_their_traceback(tmp_path, capsys, monkeypatch):
  """XLA's RESOURCE_EXHAUSTED during training becomes one line (exit 2); any other exception is a bug
  and escapes main with its traceback."""
  import jax
  from gdl_jax.train import loop

  def fit(*args, **kwargs):
    raise raised
  monkeypatch.setattr(loop, "fit", fit)
  argv = ["train", "classifier", "--variant", "tiny", "--dataset", "digits", "--quiet",
          "--workdir", str(tmp_path / "run")]
  raised = jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate "
                                      "99999999999 bytes.")
  rc, _, err = _run(argv, capsys)
  _assert_refused("oom", rc, err)
  assert "out of device memory" in err and "lower --config.batch_size" in err
  for raised in (RuntimeError("a bug"), jax.errors.JaxRuntimeError("INTERNAL: a bug"), ValueError("a bug")):
    with pytest.raises(type(raised), match="a bug"):
      cli.main(argv)


@pytest.mark.slow
def test_malformed_real_runs_in_a_subprocess(tmp_path):
  """Without --check: a seeded sample of the malformed cases as real `gdl-jax train` processes of tiny
  variants. Each exits 2 with one error line and no traceback, and trains nothing."""
  rng = random.Random(SEED)
  cases = [c for c in generate_cases(per_key=1) if c[1][:1] == ["train"] and "--check" in c[1]]
  picked = rng.sample(cases, 12) + [c for c in cases if c[0] in ("huge model", "batch over split")]
  env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
  for i, (label, argv, names) in enumerate(picked):
    wd = tmp_path / f"run{i}"
    argv = [a for a in argv if a != "--check"] + ["--quiet", "--workdir", str(wd)]
    proc = subprocess.run([sys.executable, "-m", "gdl_jax.cli", *argv], capture_output=True, text=True,
                          env=env, timeout=300)
    # tfds logs a warning the first time it prepares digits in a fresh data dir: not ours to judge
    err = "\n".join(l for l in proc.stderr.splitlines() if not l.startswith("WARNING:absl:"))
    _assert_refused(label, proc.returncode, err, names)
    assert not (wd / "checkpoints").exists(), label
