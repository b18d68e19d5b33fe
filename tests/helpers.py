"""Shared test helpers."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_in_subprocess(args, workdir, *, evaluate: bool = True):
  """`gdl-jax train ARGS --workdir WORKDIR [--evaluate]` in a fresh process, with one CPU device
  (with the test session's two virtual devices, XLA:CPU's in-process AllReduce aborted the whole
  session now and then during minutes-long training) -> metrics.json as a dict (evaluate) or None."""
  env = {**os.environ, "PYTHONPATH": ROOT}
  subprocess.run([sys.executable, "-m", "gdl_jax.cli", "train", *args, "--workdir", str(workdir),
                  *(["--evaluate"] if evaluate else []), "--quiet"], check=True, env=env, cwd=ROOT)
  if evaluate:
    with open(os.path.join(workdir, "metrics.json")) as f:
      return json.load(f)
  return None
