"""Multi-host for real: `gdl-jax train --distributed` as 2 processes on localhost (CPU, gloo).

Three CLI runs of the tiny RealNVP on moons (6 steps, checkpoints at 3 and 6), each in fresh
processes with one CPU device:
  A  2 processes (--distributed --coordinator_address 127.0.0.1:PORT --num_processes 2
     --process_id i), each feeding its half of every global batch;
  B  1 process, the same config, uninterrupted;
  C  a copy of A's run dir with its step-6 checkpoint removed (a kill after step 3), resumed by
     1 process.
Checks: A's and C's losses equal B's to 1e-5; in A only process 0 writes the run's files (an audit
hook records every path each process opens for writing), process 1's only writes being orbax's
per-process checkpoint parts; C restored A's step-3 checkpoint (3 steps this call) and continued
exactly as B did. The slow test resumes a killed 2-process run in 2 processes (multi-host restore).
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from gdl_jax import cli
from tests.helpers import ROOT

ARGS = ["train", "realnvp_moons", "--variant", "tiny", "--steps", "6", "--quiet",
        "--config.ckpt_every=3", "--config.keep_checkpoints=4"]

# Runs the CLI with an audit hook that records every path under the run dir this process opens for
# writing, renames, removes or creates (Python-level I/O: our files, orbax's metadata; not
# tensorstore's C++ writes of array chunks).
_AUDITED = r"""
import json, os, sys
root, log = os.path.realpath(sys.argv[1]), sys.argv[2]
seen, busy = set(), [False]
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def hook(event, args):
  if busy[0]:
    return
  if event == "open":
    path, mode, flags = args
    if not ((isinstance(mode, str) and any(c in mode for c in "wax+")) or
            (mode is None and isinstance(flags, int) and flags & WRITE_FLAGS)):
      return
  elif event in ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "shutil.rmtree"):
    path = args[1] if event == "os.rename" else args[0]
  else:
    return
  if isinstance(path, (str, bytes, os.PathLike)):
    busy[0] = True
    try:
      p = os.path.realpath(os.fsdecode(path))
      if p == root or p.startswith(root + os.sep):
        seen.add(os.path.relpath(p, root))
    finally:
      busy[0] = False

sys.addaudithook(hook)
from gdl_jax.cli import main
rc = main(sys.argv[3:])
with open(log, "w") as f:
  json.dump(sorted(seen), f)
sys.exit(rc)
"""


def _env() -> dict:
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "1"}
  env.pop("XLA_FLAGS", None)  # one device per process, whatever the caller forced
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _cli(args, log):
  return subprocess.Popen([sys.executable, "-m", "gdl_jax.cli", *args], env=_env(), cwd=ROOT,
                          stdout=log, stderr=subprocess.STDOUT)


def _wait(procs, logs, timeout=240):
  for p in procs:
    try:
      p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
  for p, log in zip(procs, logs):
    with open(log.name) as f:
      assert p.returncode == 0, f"{' '.join(p.args[-12:])} exited {p.returncode}:\n{f.read()[-3000:]}"


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f if l.strip()]


def _assert_same_rows(got, want):
  assert [(r["step"], r["split"]) for r in got] == [(r["step"], r["split"]) for r in want]
  for g, w in zip(got, want):
    assert g.keys() == w.keys()
    for k in g.keys() - {"step", "split"}:  # the loss to 1e-5; other metrics to 1e-5 relative
      tol = dict(rtol=0, atol=1e-5) if k == "loss" else dict(rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(g[k], w[k], **tol, err_msg=f"{g['split']} {k} at {g['step']}")


def _two_processes(workdir, tmp_path, tag):
  """(Popen, log) of the 2 audited processes of `gdl-jax train ARGS --distributed` on localhost;
  process i's writes go to tmp_path/writes_{tag}{i}.json."""
  port = _free_port()
  logs = [open(tmp_path / f"log_{tag}{i}", "w") for i in range(2)]
  procs = [subprocess.Popen(
      [sys.executable, "-c", _AUDITED, workdir, str(tmp_path / f"writes_{tag}{i}.json"), *ARGS,
       "--workdir", workdir, "--distributed", "--coordinator_address", f"127.0.0.1:{port}",
       "--num_processes", "2", "--process_id", str(i)],
      env=_env(), cwd=ROOT, stdout=logs[i], stderr=subprocess.STDOUT) for i in range(2)]
  return procs, logs


def _kill_after_step_3(src, dst):
  """A copy of run `src` as a run killed after its step-3 checkpoint."""
  shutil.copytree(src, dst)
  shutil.rmtree(os.path.join(dst, "checkpoints", "6"))


def _steps_this_call(workdir):
  with open(os.path.join(workdir, "train_time.json")) as f:
    return json.load(f)["steps_this_call"]


def test_two_processes_train_like_one_and_resume_in_one(tmp_path, moons):
  del moons  # prepared once here (GDL_DATA_DIR), so the three runs only read it
  a, b, c = (str(tmp_path / n) for n in "abc")
  procs, logs = _two_processes(a, tmp_path, "a")
  logs.append(open(tmp_path / "log_b", "w"))
  procs.append(_cli([*ARGS, "--workdir", b], logs[2]))
  _wait(procs, logs)

  # (a) 2 processes x half batches = 1 process x whole batches; each row logged once.
  rows_a, rows_b = _rows(a), _rows(b)
  assert [r["step"] for r in rows_b if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
  _assert_same_rows(rows_a, rows_b)

  # (b) process 0 writes the run's files; process 1 only its own parts of orbax checkpoints.
  with open(tmp_path / "writes_a0.json") as f:
    writes0 = set(json.load(f))
  with open(tmp_path / "writes_a1.json") as f:
    writes1 = set(json.load(f))
  for name in ("config.json", "run.json", "metrics.jsonl", "samples.png", "comparison.json",
               "train_time.json"):
    assert name in writes0, f"process 0 did not write {name}: {sorted(writes0)}"
  assert any(w.startswith("tb" + os.sep) for w in writes0)
  assert any(w.startswith("checkpoints" + os.sep) for w in writes0)
  own = [w for w in writes1 if not w.startswith("checkpoints" + os.sep) or "process_1" not in w]
  assert not own, f"process 1 wrote {own}"
  assert len(os.listdir(os.path.join(a, "tb"))) == 1  # one events file
  assert sorted(os.listdir(os.path.join(a, "checkpoints"))) == ["3", "6"]

  # (c) kill after step 3 (drop the step-6 checkpoint), resume in 1 process: B's numbers.
  _kill_after_step_3(a, c)
  log_c = open(tmp_path / "log_c", "w")
  _wait([_cli([*ARGS, "--workdir", c], log_c)], [log_c])
  assert _steps_this_call(c) == 3
  _assert_same_rows(_rows(c), rows_b)


@pytest.mark.slow
def test_two_processes_resume_their_own_checkpoint(tmp_path, moons):
  """Multi-host restore (every process reads its part of the orbax checkpoint): a 2-process run
  killed after step 3 and resumed by 2 processes logs what the uninterrupted 2-process run did."""
  del moons
  a, r = str(tmp_path / "a"), str(tmp_path / "r")
  _wait(*_two_processes(a, tmp_path, "a"))
  _kill_after_step_3(a, r)
  _wait(*_two_processes(r, tmp_path, "r"))
  assert _steps_this_call(r) == 3
  _assert_same_rows(_rows(r), _rows(a))


@pytest.mark.parametrize("flags, message", [
    (["--coordinator_address", "127.0.0.1:1"], "--coordinator_address only applies with --distributed"),
    (["--distributed", "--num_processes", "2"],
     "also needs --coordinator_address, --process_id"),
    (["--distributed", "--coordinator_address", "127.0.0.1:1", "--num_processes", "2",
      "--process_id", "2"], "--process_id=2 must be in [0, --num_processes=2)"),
])
def test_coordinator_flags_checked_before_anything_starts(flags, message, capsys, tmp_path):
  wd = tmp_path / "w"
  assert cli.main(["train", "realnvp_moons", "--variant", "tiny", "--workdir", str(wd), *flags]) == 2
  assert message in capsys.readouterr().err
  assert not wd.exists()


def test_distributed_outside_a_cluster_names_the_flags(tmp_path):
  env = {k: v for k, v in _env().items() if not k.startswith(("SLURM_", "OMPI_", "TPU_", "PMI_"))}
  out = subprocess.run([sys.executable, "-m", "gdl_jax.cli", *ARGS, "--workdir", str(tmp_path / "w"),
                        "--distributed"], env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 2, out.stderr[-2000:]
  assert "pass --coordinator_address HOST:PORT --num_processes N --process_id I" in out.stderr
  assert not (tmp_path / "w").exists()


def test_mesh_orders_devices_by_process_and_single_process_helpers_are_identities():
  import jax
  from gdl_jax import sharding
  devices = jax.devices()
  mesh = sharding.make_mesh(devices[::-1])
  assert [d.id for d in mesh.devices] == sorted(d.id for d in devices)
  n = 4 * len(devices)
  assert sharding.process_rows(n, mesh) == slice(0, n)
  batch = {"x": np.arange(n * 3, dtype=np.float32).reshape(n, 3)}
  assert sharding.local_part(batch, mesh) is batch
  global_batch = sharding.shard_batch(batch, mesh)
  np.testing.assert_array_equal(sharding.fetch(global_batch)["x"], batch["x"])
  assert sharding.host_local(global_batch) is global_batch
  assert sharding.is_writer()
