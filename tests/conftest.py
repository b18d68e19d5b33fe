"""Test config: 2 CPU devices (so sharding is exercised), a private data dir and cache per session."""

import os
import tempfile

import jax

jax.config.update("jax_num_cpu_devices", 2)

_TMP = tempfile.mkdtemp(prefix="gdl_jax_tests_")
os.environ.setdefault("GDL_DATA_DIR", os.path.join(_TMP, "data"))
os.environ.setdefault("GDL_CACHE_DIR", os.path.join(_TMP, "cache"))
os.makedirs(os.environ["GDL_DATA_DIR"], exist_ok=True)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def digits():
  from gdl_jax import data
  return data.load("digits")


@pytest.fixture(scope="session")
def moons():
  from gdl_jax import data
  return data.load("moons")
