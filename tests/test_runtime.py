"""gdl_jax.runtime: the entry points' XLA:CPU defaults (fresh processes: XLA reads its flags once)."""

import json
import os
import subprocess
import sys

from gdl_jax import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = ("import json, os; from gdl_jax import runtime; added = runtime.apply_xla_defaults(); "
         "import jax.numpy as jnp; float(jnp.ones(3).sum()); "  # XLA aborts on a flag it does not know
         "print(json.dumps([added, os.environ.get('XLA_FLAGS', '')]))")


def _probe(**env):
  e = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", runtime.SWITCH)}
  e.update(env, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, "-c", PROBE], env=e, capture_output=True, text=True, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_defaults_are_added_accepted_by_xla_and_can_be_switched_off():
  added, flags = _probe()
  assert added == ["--xla_cpu_experimental_ynn_fusion_type="] and flags == added[0]
  added, flags = _probe(XLA_FLAGS="--xla_cpu_enable_fast_math=false")
  assert flags == "--xla_cpu_enable_fast_math=false --xla_cpu_experimental_ynn_fusion_type="
  assert _probe(GDL_JAX_XLA_DEFAULTS="0") == [[], ""]
  # A value the user chose for the same flag is kept.
  assert _probe(XLA_FLAGS="--xla_cpu_experimental_ynn_fusion_type=")[0] == []


def test_no_change_once_the_backend_runs():
  import jax.numpy as jnp
  float(jnp.ones(2).sum())
  before = os.environ.get("XLA_FLAGS")
  assert runtime.apply_xla_defaults() == [] and os.environ.get("XLA_FLAGS") == before
