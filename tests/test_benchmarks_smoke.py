"""benchmarks/speed.py: the --quick run writes the table and JSON; the timing helpers' math. No timing asserts."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import _timing  # noqa: E402
import speed  # noqa: E402


def test_rate_summary_and_median_ratio():
  s = _timing.rate_summary([1.0, 0.5, 2.0], k=10)  # rates 10, 20, 5 steps/s
  assert s["steps_per_s"] == 10.0 and s["windows"] == 3 and s["steps_per_window"] == 10
  assert s["p25"] <= s["steps_per_s"] <= s["p75"]
  # per-round ratios b/a: 2, 3, 1 -> median 2
  assert _timing.median_ratio([1.0, 1.0, 2.0], [2.0, 3.0, 2.0]) == 2.0


def test_cost_flops_handles_dict_list_and_missing():
  class C:
    def __init__(self, ca):
      self.ca = ca

    def cost_analysis(self):
      if isinstance(self.ca, Exception):
        raise self.ca
      return self.ca

  assert _timing.cost_flops(C({"flops": 12.0})) == 12.0
  assert _timing.cost_flops(C([{"flops": 7.0}])) == 7.0
  assert _timing.cost_flops(C([])) is None
  assert _timing.cost_flops(C({"bytes accessed": 1.0})) is None
  assert _timing.cost_flops(C(RuntimeError("no cost model"))) is None


def test_cost_flops_of_a_real_matmul():
  import jax
  import jax.numpy as jnp
  a = jnp.ones((16, 32))
  b = jnp.ones((32, 8))
  flops = _timing.cost_flops(jax.jit(jnp.dot).lower(a, b).compile())
  assert flops == pytest.approx(2 * 16 * 32 * 8, rel=0.05)


def test_goal_text_and_model_names():
  assert speed.goal_text({"ratios": {"torch": 2.0, "torch_compile": 1.1, "keras_torch": 3.0}}) == "met"
  missed = speed.goal_text({"ratios": {"torch": 1.2, "keras_torch": 3.0}})
  assert missed.startswith("MISSED") and "torch 1.20x<1.5x" in missed
  assert speed.goal_text({"ratios": {}}) == "no baseline"
  assert speed.expand_models("cnn", False) == ["cnn_digits", "cnn_fashion"]
  with pytest.raises(SystemExit, match="unknown model"):
    speed.expand_models("nope", False)


def test_quick_run_writes_table_and_json(tmp_path):
  """The smoke run: JAX side (plus PyTorch when installed), tiny CNN, a few short windows."""
  try:
    import torch  # noqa: F401
    frameworks = "jax,torch"
  except ImportError:
    frameworks = "jax"
  out = tmp_path / "results"
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("XLA_FLAGS", None)
  p = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "speed.py"), "--quick",
                      "--models", "cnn_digits", "--frameworks", frameworks, "--no-samplers", "--no-scan",
                      "--rounds", "2", "--out", str(out)],
                     capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  md = (out / "speed.md").read_text()
  header = "| " + " | ".join(speed.COLUMNS) + " |"
  assert header in md and header in p.stdout
  assert "| cnn_digits | 8 |" in md
  report = json.loads((out / "speed.json").read_text())
  assert report["quick"] is True and report["peak"]["gflops"] > 0
  (row,) = report["rows"]
  assert row["model"] == "cnn_digits" and row["batch"] == 8 and not row["errors"].get("jax")
  jax_run = row["runners"]["jax"]
  for key in ("steps_per_s", "compile_s", "gflops", "peak_share", "per_step_s"):
    assert key in jax_run, key
  assert len(jax_run["per_step_s"]) == 2
  assert row["flops_per_step"] > 0 and row["params"] > 0
  assert row["pipeline"]["images_per_s"] > 0
  if frameworks == "jax,torch":
    assert "torch" in row["ratios"] and row["runners"]["torch"]["params"] == row["params"]


@pytest.mark.parametrize("shape", [(2, 7, 7, 1, 4, 3, 1, True), (2, 7, 6, 3, 5, 3, 2, False),
                                   (2, 8, 8, 4, 2, 3, 2, False), (1, 5, 5, 2, 3, 1, 1, False)])
def test_every_alternative_conv_lowering_equals_the_plain_conv(shape):
  import kernels
  fns, args = kernels.conv_case(shape)
  ref = fns["plain"](*args)
  assert set(fns) == {"plain", "patches", "slices", "accum"}
  for name, f in fns.items():
    assert kernels.max_rel_error(ref, f(*args)) < 1e-5, name


def test_every_alternative_batchnorm_equals_flax():
  import kernels
  fns, args = kernels.bn_case((3, 4, 5, 6))
  ref = fns["plain"](*args)
  for name, f in fns.items():
    assert kernels.max_rel_error(ref, f(*args)) < 1e-4, name


def test_kernels_quick_run_writes_its_tables(tmp_path):
  import kernels
  assert kernels.main(["--quick", "--out", str(tmp_path)]) == 0
  report = json.loads((tmp_path / "kernels.json").read_text())
  assert [len(report["conv"]), len(report["batchnorm"])] == [len(kernels.QUICK_CONV), len(kernels.QUICK_BN)]
  for row in report["conv"] + report["batchnorm"]:
    assert row["results"]["plain"]["speedup"] == 1.0
    assert all(r["max_rel_error"] < 1e-4 for r in row["results"].values())
  assert "| slices ms (x) |" in (tmp_path / "kernels.md").read_text()


def test_step_cost_specs():
  import step_cost
  assert step_cost.parse_spec("stylegan2:small@fashion_mnist") == ("stylegan2", "small", "fashion_mnist")
  assert step_cost.parse_spec("vae@digits") == ("vae", "default", "digits")
  assert step_cost.parse_spec("wgan_gp_fashion_mnist") == ("wgan_gp_fashion_mnist", "default", None)
  for bad in ("", "vae:", "vae@", ":small"):
    with pytest.raises(SystemExit, match="MODEL\\[:VARIANT\\]\\[@DATASET\\]"):
      step_cost.parse_spec(bad)


def test_step_cost_overrides_belong_to_the_spec_before_them():
  import step_cost
  argv = ["a@digits", "--config.model.x=1", "--rounds", "3", "b", "--json", "o.json", "--config.y=(1, 2)", "a@digits"]
  rest, groups = step_cost.split_overrides(argv)
  assert rest == ["a@digits", "--rounds", "3", "b", "--json", "o.json", "a@digits"]
  assert groups == [["model.x=1"], ["y=(1, 2)"], []]
  with pytest.raises(SystemExit, match="before any spec"):
    step_cost.split_overrides(["--config.steps=3", "vae"])
  with pytest.raises(SystemExit, match="unknown config key 'model.nope'"):
    step_cost.main(["classifier:tiny@digits", "--config.model.nope=1"])
  with pytest.raises(SystemExit, match="the same spec twice"):
    step_cost.main(["classifier:tiny@digits", "classifier:tiny@digits", "--rounds", "1"])


def test_step_cost_window_counts_lazy_steps_at_their_share():
  import step_cost
  assert step_cost.default_window([1, 1]) == 8
  assert step_cost.default_window([1, 16]) == 16      # StyleGAN2 small: one R1 step per window
  assert step_cost.default_window([3, 4]) == 12
  assert step_cost.default_window([5], least=12) == 15


def test_step_cost_times_two_experiments_against_the_first(tmp_path, capsys):
  import step_cost
  out = tmp_path / "cost.json"
  assert step_cost.main(["classifier:tiny@digits", "classifier:mlp@digits", "--config.batch_size=16",
                         "--rounds", "2", "--json", str(out)]) == 0
  report = json.loads(out.read_text())
  assert report["window"] == 8
  first, second = report["rows"]
  assert first["ratio_to_first"] == 1.0 and len(first["ms_per_step_rounds"]) == 2
  assert second["ms_per_step"] > 0 and second["ratio_to_first"] > 0
  assert second["spec"] == "classifier:mlp@digits --config.batch_size=16"
  printed = capsys.readouterr().out
  assert "| classifier:mlp@digits --config.batch_size=16 |" in printed
  assert "--variant mlp --dataset digits: batch 16," in printed


def test_step_worker_runs_the_model_on_a_two_device_mesh():
  """The scaling / XLA-flag sections' subprocess (it once called a removed sharding helper and every
  row of a full run read 'error' while the quick run stayed green)."""
  r = speed._run_step_worker("cnn_digits", "--xla_force_host_platform_device_count=2", 1, 0.05)
  assert "error" not in r, r.get("error")
  assert r["devices"] == 2 and r["steps_per_s"] > 0 and r["global_batch"] == 128
