"""Run-directory safety: corrupt latest checkpoint, one writer, torn metrics, kills between writes,
full / read-only disks. Each case ends in a directory every verb accepts, or in one error line."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from experiments import classifier
from gdl_jax import cli
from gdl_jax.train import checkpoint as ckpt
from gdl_jax.train import loop, rundir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tiny(steps=6):
  c = classifier.get_config("tiny")
  c.steps = steps
  c.log_every = 1
  c.eval_every = 2
  c.ckpt_every = 2
  c.keep_checkpoints = 3
  return c


def _fit(digits, wd, c=None, **kw):
  c = c or _tiny()
  return loop.fit(classifier.build(c, digits.info), c, digits, str(wd), progress=False, **kw)


def _same_params(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
               a.params, b.params)


def _corrupt(step_dir, how):
  """Truncates (to half) or overwrites (same length, garbage) every array-data file of a step."""
  files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs
           if os.sep + "d" + os.sep in os.path.join(r, f) or f == "manifest.ocdbt"]
  assert files
  for f in files:
    size = os.path.getsize(f)
    if how == "truncate":
      os.truncate(f, size // 2)
    else:
      with open(f, "r+b") as fh:
        fh.write(bytes((i * 37 + 11) % 256 for i in range(size)))
  return files


@pytest.fixture(scope="module")
def full_run(digits, tmp_path_factory):
  """An uninterrupted 6-step run (checkpoints 2, 4, 6), the reference for every resume."""
  wd = tmp_path_factory.mktemp("full")
  return wd, _fit(digits, wd)


def _final_rows(wd, step=6):
  return {r["split"]: r for r in loop.read_metrics(str(wd)) if r["step"] == step}


@pytest.mark.parametrize("how", ["truncate", "overwrite"])
def test_corrupt_latest_checkpoint_resumes_from_intact_one_identically(digits, tmp_path, full_run,
                                                                      capfd, monkeypatch, how):
  full_wd, full = full_run
  wd = tmp_path / "run"
  _fit(digits, wd)
  _corrupt(wd / "checkpoints" / "6", how)
  capfd.readouterr()
  unraisable = []  # where tensorstore's closed-event-loop callbacks would land
  monkeypatch.setattr(sys, "unraisablehook", lambda u: unraisable.append(u.exc_value))
  resumed = _fit(digits, wd)
  time.sleep(0.5)
  assert not unraisable, unraisable
  err = capfd.readouterr().err
  assert "skipped checkpoint step 6" in err and "resuming from step 4" in err, err
  assert "Traceback" not in err and "Event loop is closed" not in err, err
  assert err.strip().count("\n") == 0, err  # one line
  # The corrupt step is kept, out of orbax's way; the run re-saved step 6.
  assert sorted(os.listdir(wd / "checkpoints_corrupt")) == ["6"]
  assert sorted(os.listdir(wd / "checkpoints")) == ["2", "4", "6"]
  assert json.load(open(wd / "train_time.json"))["steps_this_call"] == 2
  _same_params(full, resumed)
  assert _final_rows(wd) == _final_rows(full_wd)
  assert len(loop.read_metrics(str(wd))) == len(loop.read_metrics(str(full_wd)))


def test_no_intact_checkpoint_is_refused_and_nothing_moved(digits, tmp_path, capfd):
  wd = tmp_path / "run"
  _fit(digits, wd, _tiny(4))
  for s in ("2", "4"):
    _corrupt(wd / "checkpoints" / s, "truncate")
  capfd.readouterr()
  with pytest.raises(ckpt.CheckpointError, match=r"no checkpoint .* can be restored .*steps 4, 2"):
    _fit(digits, wd, _tiny(4))
  assert "Traceback" not in capfd.readouterr().err
  assert sorted(os.listdir(wd / "checkpoints")) == ["2", "4"]
  assert not (wd / "checkpoints_corrupt").exists()


def test_evaluate_and_sample_name_intact_steps_and_take_step(tmp_path, capfd):
  wd = str(tmp_path / "flow")
  base = ["--variant", "tiny", "--workdir", wd, "--quiet", "--config.steps=6",
          "--config.ckpt_every=2", "--config.keep_checkpoints=3"]
  assert cli.main(["train", "realnvp", "--dataset", "moons"] + base) == 0
  _corrupt(os.path.join(wd, "checkpoints", "6"), "overwrite")
  capfd.readouterr()
  for verb in (["sample", wd, "--num", "4"], ["evaluate", wd, "--no_features"]):
    assert cli.main(verb) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gdl-jax: error:"), err
    assert "checkpoints/6 cannot be restored" in err[0] and "Intact steps: 4, 2" in err[0] and \
        "--step 4" in err[0], err
  assert cli.main(["sample", wd, "--num", "4", "--step", "4", "--out", str(tmp_path / "s4")]) == 0
  assert np.load(tmp_path / "s4.npy").shape == (4, 2)
  assert cli.main(["evaluate", wd, "--no_features", "--step", "2"]) == 0
  assert json.load(open(os.path.join(wd, "metrics_s2.json")))["step"] == 2
  assert not os.path.exists(os.path.join(wd, "metrics.json"))     # the plain file is the latest's
  assert cli.main(["evaluate", wd, "--no_features", "--step", "4", "--seed", "3"]) == 0
  assert json.load(open(os.path.join(wd, "metrics_s4,seed3.json")))["step"] == 4
  capfd.readouterr()
  assert cli.main(["sample", wd, "--step", "5"]) == 2
  err = capfd.readouterr().err
  assert "no checkpoint at step 5" in err and "the saved steps are 2, 4, 6" in err, err
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["2", "4", "6"]  # readers move nothing


# ---------------------------------------------------------------------------------------------
# one writer per run directory

_HOLDER = textwrap.dedent("""
    import sys, time
    from gdl_jax.train import rundir
    with rundir.lock(sys.argv[1]):
      print("held", flush=True)
      time.sleep(600)
""")


def _hold_lock(wd):
  p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(wd)], stdout=subprocess.PIPE, text=True,
                       env={**os.environ, "PYTHONPATH": ROOT})
  assert p.stdout.readline().strip() == "held"
  return p


def test_second_writer_refused_naming_holder_and_killed_holder_does_not_block(tmp_path, capfd):
  wd = tmp_path / "run"
  wd.mkdir()
  holder = _hold_lock(wd)
  try:
    argv = ["train", "classifier", "--variant", "tiny", "--workdir", str(wd), "--quiet"]
    assert cli.main(argv) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"pid {holder.pid} on host " in err[0] and "started 20" in err[0], err
    assert "being written by another gdl-jax process" in err[0]
    assert sorted(os.listdir(wd)) == [".lock"]  # the refused run wrote nothing
  finally:
    holder.send_signal(signal.SIGKILL)  # a kill -9: the kernel releases the flock
    holder.wait()
  assert json.load(open(wd / rundir.LOCK_FILE))["pid"] == holder.pid  # the stale file stays...
  with rundir.lock(str(wd)):  # ...and does not block
    assert json.load(open(wd / rundir.LOCK_FILE))["pid"] == os.getpid()
    with pytest.raises(rundir.RunDirBusyError, match=f"pid {os.getpid()}"):
      with rundir.lock(str(wd)):  # another open file description: refused, also in-process
        pass


# ---------------------------------------------------------------------------------------------
# metrics.jsonl and atomic files

def test_metrics_read_dedups_and_skips_torn_lines(tmp_path):
  rows = [{"step": 1, "split": "train", "loss": 3.0}, {"step": 2, "split": "train", "loss": 2.0},
          {"step": 2, "split": "test", "loss": 2.5}, {"step": 2, "split": "train", "loss": 1.5},
          {"step": 3, "split": "train", "loss": 1.0}]
  text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "split": "tr'  # torn by a kill
  (tmp_path / "metrics.jsonl").write_text(text)
  got = loop.read_metrics(str(tmp_path))
  assert [(r["step"], r["split"], r["loss"]) for r in got] == \
      [(1, "train", 3.0), (2, "test", 2.5), (2, "train", 1.5), (3, "train", 1.0)]
  w = loop.MetricsWriter(str(tmp_path), tensorboard=False)
  w.truncate_after(2)
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(l)["step"] for l in lines] == [1, 2, 2]  # one row per (step, split), no torn
  w.write(3, "train", {"loss": 0.5})
  assert loop.read_metrics(str(tmp_path))[-1] == {"step": 3, "split": "train", "loss": 0.5}


def test_atomic_write_keeps_old_file_when_the_write_fails(tmp_path, monkeypatch):
  p = tmp_path / "run.json"
  rundir.atomic_write(str(p), '{"a": 1}')
  def no_space(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(os, "replace", no_space)
  with pytest.raises(rundir.RunDirWriteError, match=f"no space left writing to {tmp_path}"):
    rundir.atomic_write(str(p), '{"a": 2}')
  assert p.read_text() == '{"a": 1}' and os.listdir(tmp_path) == ["run.json"]  # no tmp left


def test_kill_between_run_json_and_config_json(digits, tmp_path, monkeypatch, capfd):
  """run.json is written first: a kill before config.json leaves a directory that evaluate calls
  'no checkpoint yet' and train completes; an old config.json without run.json gets one."""
  wd = tmp_path / "run"
  real = rundir.atomic_write

  def killed_at_config(path, data, **kw):
    if path.endswith("config.json"):
      raise KeyboardInterrupt  # the kill
    real(path, data, **kw)

  monkeypatch.setattr(rundir, "atomic_write", killed_at_config)
  c = _tiny(2)
  with pytest.raises(KeyboardInterrupt):
    loop.fit(classifier.build(c, digits.info), c, digits, str(wd), experiment="classifier",
             progress=False)
  monkeypatch.setattr(rundir, "atomic_write", real)
  assert sorted(os.listdir(wd)) == [".lock", "run.json"]
  capfd.readouterr()
  assert cli.main(["evaluate", str(wd)]) == 2
  assert "no checkpoint in" in capfd.readouterr().err
  # The older half state: config.json without run.json (from before this order).
  (wd / "run.json").unlink()
  (wd / "config.json").write_text(loop.config_to_json(c))
  assert cli.main(["evaluate", str(wd)]) == 2
  assert "yet" in capfd.readouterr().err
  loop.fit(classifier.build(c, digits.info), c, digits, str(wd), experiment="classifier",
           progress=False)
  assert json.load(open(wd / "run.json")) == {"experiment": "classifier"}
  assert cli.main(["evaluate", str(wd), "--no_features"]) == 0


# ---------------------------------------------------------------------------------------------
# full disk, read-only directory

def _one_error_line(capfd):
  err = capfd.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("gdl-jax: error:"), err
  return err[0]


def test_full_disk_before_a_save_is_one_error_and_the_run_resumes(digits, tmp_path, full_run,
                                                                  monkeypatch, capfd):
  full_wd, full = full_run
  wd = tmp_path / "run"
  real_free = rundir.free_bytes
  monkeypatch.setattr(rundir, "free_bytes", lambda p: 1000 if "checkpoints" in p and
                      os.listdir(p) else real_free(p))  # full once step 2 is written
  argv = ["train", "classifier", "--variant", "tiny", "--workdir", str(wd), "--quiet",
          "--config.steps=6", "--config.log_every=1", "--config.eval_every=2",
          "--config.ckpt_every=2", "--config.keep_checkpoints=3"]
  assert cli.main(argv) == 2
  msg = _one_error_line(capfd)
  assert f"no space left writing to {wd}/checkpoints (1000 B free, a checkpoint needs about " in msg
  assert "up to step 2 are intact" in msg and "re-run the same command to resume" in msg
  assert sorted(os.listdir(wd / "checkpoints")) == ["2"]
  monkeypatch.setattr(rundir, "free_bytes", real_free)  # space freed: the same command resumes
  assert cli.main(argv) == 0
  resumed = loop.latest_state(classifier.build(_tiny(), digits.info), _tiny(), digits, str(wd))[0]
  _same_params(full, resumed)
  assert _final_rows(wd) == _final_rows(full_wd)


def test_full_disk_inside_orbax_or_metrics_is_one_error(digits, tmp_path, monkeypatch, capfd):
  import orbax.checkpoint as ocp
  wd = tmp_path / "run"
  _fit(digits, wd, _tiny(4), stop_after=2)
  real_save = ocp.CheckpointManager.save

  def failing_save(self, step, *a, **k):
    raise ValueError('RESOURCE_EXHAUSTED: Error writing local file "x": Failed to write 5256 '
                     "bytes to file 17: No space left on device [os_error_code='28']")

  monkeypatch.setattr(ocp.CheckpointManager, "save", failing_save)
  with pytest.raises(rundir.RunDirWriteError, match=r"no space left .*needs about .*up to step 2"):
    _fit(digits, wd, _tiny(4))
  monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)

  def failing_write(self, *a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(loop.MetricsWriter, "write", failing_write)
  with pytest.raises(rundir.RunDirWriteError, match=f"no space left writing to {wd}"):
    _fit(digits, wd, _tiny(4))
  assert sorted(os.listdir(wd / "checkpoints")) == ["2"]
  assert "Traceback" not in capfd.readouterr().err


def test_read_only_directory_is_one_error(digits, tmp_path, monkeypatch, capfd):
  """Root ignores chmod, so the read-only filesystem is simulated where the loop first writes."""
  wd = tmp_path / "run"
  _fit(digits, wd, _tiny(2))
  before = sorted(os.listdir(wd / "checkpoints"))
  real_open = os.open

  def ro_open(path, flags, *a, **k):
    if str(path).startswith(str(wd)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
      raise OSError(errno.EROFS, "Read-only file system", str(path))
    return real_open(path, flags, *a, **k)

  monkeypatch.setattr(os, "open", ro_open)
  capfd.readouterr()
  assert cli.main(["train", "classifier", "--variant", "tiny", "--workdir", str(wd), "--quiet",
                   "--config.steps=4"]) == 2
  assert f"cannot write to {wd}: read-only file system" in _one_error_line(capfd)
  monkeypatch.setattr(os, "open", real_open)
  assert sorted(os.listdir(wd / "checkpoints")) == before


def _mount_tmpfs(path, size):
  path.mkdir()
  try:
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, timeout=20)
  except (OSError, subprocess.SubprocessError):
    return False
  return r.returncode == 0


def test_real_small_tmpfs_full_then_read_only(digits, tmp_path, full_run, capfd, monkeypatch):
  """Where tmpfs can be mounted (root with CAP_SYS_ADMIN): a real full disk, a real read-only one."""
  unraisable = []  # tensorstore's closed-event-loop callbacks of the failed save would land here
  monkeypatch.setattr(sys, "unraisablehook", lambda u: unraisable.append(u.exc_value))
  mnt = tmp_path / "mnt"
  if not _mount_tmpfs(mnt, "300k"):  # room for about one checkpoint of the tiny classifier
    pytest.skip("cannot mount a tmpfs here")
  try:
    wd = mnt / "run"
    argv = ["train", "classifier", "--variant", "tiny", "--workdir", str(wd), "--quiet",
            "--config.steps=6", "--config.log_every=1", "--config.eval_every=2",
            "--config.ckpt_every=2", "--config.keep_checkpoints=3"]
    capfd.readouterr()
    assert cli.main(argv) == 2
    msg = _one_error_line(capfd)
    assert f"no space left writing to {wd}" in msg and "a checkpoint needs about" in msg, msg
    time.sleep(0.5)
    assert not unraisable, unraisable
    kept = {s: sorted(os.listdir(wd / "checkpoints" / s)) for s in os.listdir(wd / "checkpoints")
            if s.isdigit()}
    subprocess.run(["mount", "-o", "remount,size=4m", str(mnt)], check=True)
    assert cli.main(argv) == 0
    resumed = loop.latest_state(classifier.build(_tiny(), digits.info), _tiny(), digits, str(wd))[0]
    _same_params(full_run[1], resumed)
    assert set(kept) <= {"2", "4"}  # what the full disk held survived (until rotation)
    # Read-only (where this process holds no file there open for writing; else "busy", and the
    # monkeypatched test above covers it).
    if subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True).returncode == 0:
      capfd.readouterr()
      assert cli.main(argv[:-5] + ["--config.steps=8"] + argv[-4:]) == 2
      line = _one_error_line(capfd)  # the CLI's path check (before anything loads) or the loop's
      assert (f"cannot write to {wd}: read-only file system" in line or
              f"--workdir {str(wd)!r}: {str(mnt)!r} is not writable" in line), line
  finally:
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.slow
def test_kill_9_mid_run_resumes_to_identical_metrics_and_params(digits, tmp_path):
  """Real processes: `gdl-jax train` killed with SIGKILL once a checkpoint exists (maybe mid-save),
  then the same command again: metrics.jsonl and the final params equal an uninterrupted run's."""
  env = {**os.environ, "PYTHONPATH": ROOT}

  def cmd(wd):
    return [sys.executable, "-m", "gdl_jax.cli", "train", "classifier", "--variant", "tiny",
            "--workdir", str(wd), "--quiet", "--config.steps=40", "--config.log_every=1",
            "--config.eval_every=4", "--config.ckpt_every=4", "--config.keep_checkpoints=3"]

  subprocess.run(cmd(tmp_path / "full"), check=True, env=env, cwd=ROOT, timeout=900)
  wd = tmp_path / "cut"
  p = subprocess.Popen(cmd(wd), env=env, cwd=ROOT)
  deadline = time.time() + 600
  while time.time() < deadline and p.poll() is None:
    ck = wd / "checkpoints"
    if ck.exists() and any(s.isdigit() and int(s) >= 8 for s in os.listdir(ck)):
      break
    time.sleep(0.05)
  p.send_signal(signal.SIGKILL)
  p.wait()
  assert p.returncode == -signal.SIGKILL, "the run finished before it could be killed"
  subprocess.run(cmd(wd), check=True, env=env, cwd=ROOT, timeout=900)
  assert loop.read_metrics(str(wd)) == loop.read_metrics(str(tmp_path / "full"))
  lines = (wd / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == len(loop.read_metrics(str(wd)))  # no step written twice
  c = classifier.get_config("tiny")
  c.steps, c.log_every, c.eval_every, c.ckpt_every, c.keep_checkpoints = 40, 1, 4, 4, 3
  task = classifier.build(c, digits.info)
  _same_params(loop.latest_state(task, c, digits, str(tmp_path / "full"))[0],
               loop.latest_state(task, c, digits, str(wd))[0])
