"""Test config: 2 CPU devices (so sharding is exercised), a private data dir and cache per session.

Seeds: the overfit / learning tests take their init and data keys from the `test_seed` fixture,
read from the env var GDL_TEST_SEED (default 0). Their assertions hold with a margin for seeds
0, 1, 2 (other CPUs round differently, so a test must not depend on one seed's exact curve); to
check that on a new machine:  GDL_TEST_SEED=1 python -m pytest -q tests/models ...
Each such test records its asserted value and threshold with `record_property`, so
`--junitxml=out.xml` lists the margins.
"""

import os
import tempfile

import jax

jax.config.update("jax_num_cpu_devices", 2)

_TMP = tempfile.mkdtemp(prefix="gdl_jax_tests_")
# One data dir and one cache per session, shared by the pytest-xdist workers (they inherit the
# environment): two workers preparing one dataset wait on its lock (gdl_jax.data._prepared), and
# the classifier cache's trainer waits on its run-dir lock. A GDL_DATA_DIR the user set is kept.
os.environ.setdefault("GDL_DATA_DIR", os.path.join(_TMP, "data"))
os.environ.setdefault("GDL_CACHE_DIR", os.path.join(_TMP, "cache"))
os.makedirs(os.environ["GDL_DATA_DIR"], exist_ok=True)
# One persistent XLA compilation cache per session, shared by the workers: the CLI tests compile the
# same tiny programs again in `evaluate` / `sample` (new jit objects, the same HLO); a hit loads the
# executable instead of compiling it (measured: one test_cli test, 127 -> 89 s of CPU, cold cache).
os.environ.setdefault("GDL_TEST_JAX_CACHE", os.path.join(_TMP, "jax_cache"))
jax.config.update("jax_compilation_cache_dir", os.environ["GDL_TEST_JAX_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
# Most of the suite's CPU time is XLA:CPU compiling many small programs (tiny models run a few
# steps), so the session asks XLA for little optimisation work (backend optimisation level 0, no
# expensive LLVM passes): test_diffusion.py + models/test_gan.py, one process, cold cache, 134 ->
# 83 s user CPU; the 300-step diffusion overfit test got faster too. In this process only: the
# subprocesses the tests start (CLI runs, notebooks) keep XLA's defaults. GDL_TEST_XLA_OPT=1 keeps
# the defaults here too (e.g. to time a step as a user gets it).
if os.environ.get("GDL_TEST_XLA_OPT", "0") != "1":
  jax.config.update("jax_disable_most_optimizations", True)

import pytest  # noqa: E402


def _seed_from_env() -> int:
  raw = os.environ.get("GDL_TEST_SEED", "0")
  try:
    return int(raw)
  except ValueError:
    raise ValueError(f"GDL_TEST_SEED={raw!r} is not an integer; set it to e.g. 0, 1 or 2") from None


TEST_SEED = _seed_from_env()


@pytest.fixture
def xla_defaults():
  """XLA's default optimisation for the programs this test compiles (the session otherwise asks for
  little: see above), for float32 checks whose rounding was tuned on optimised programs."""
  before = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", False)
  yield
  jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture(scope="session")
def test_seed() -> int:
  """The seed (GDL_TEST_SEED, default 0) of the overfit / learning tests' init and data keys."""
  return TEST_SEED


@pytest.fixture(scope="session")
def digits():
  from gdl_jax import data
  return data.load("digits")


@pytest.fixture(scope="session")
def moons():
  from gdl_jax import data
  return data.load("moons")


# The music tests' chorales: 8 real pieces (all 350 take minutes to parse), parsed once per session
# (the CLI fuzz's `chorales_tiny` too: the same pieces, the same cache).


@pytest.fixture(scope="session")
def chorales_small():
  pytest.importorskip("music21", reason="the music datasets need the [music] extra (music21)")
  from gdl_jax import data
  return data.load("chorales_tiny")
