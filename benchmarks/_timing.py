"""Timing plumbing shared by benchmarks/speed.py and the baseline workers (numpy + stdlib only).

A baseline worker is a subprocess (its own framework, its own threads) that answers JSON lines
on stdin/stdout, so speed.py can interleave JAX, PyTorch and Keras windows in one command:

    {"cmd": "build", "id": ..., "spec": {...}, "data": "batch.npz"}  -> {"build_s", "first_step_s", ...}
    {"cmd": "window", "id": ..., "k": 20}                             -> {"seconds": ...}
    {"cmd": "info"} -> framework versions and thread counts;  {"cmd": "exit"}
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from typing import Callable


def timed(fn: Callable[[], object]) -> float:
  """Wall seconds of one call."""
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def rate_summary(seconds: list[float], k: int) -> dict:
  """Median and spread of k/t over timed windows of k steps (steps per second)."""
  rates = sorted(k / s for s in seconds)
  q = lambda p: rates[min(int(p * len(rates)), len(rates) - 1)]
  return {"steps_per_s": statistics.median(rates), "p25": q(0.25), "p75": q(0.75),
          "windows": len(rates), "steps_per_window": k}


def median_ratio(a: list[float], b: list[float]) -> float:
  """Median over rounds of (b's window seconds / a's window seconds): a's speed-up over b.

  Windows of a and b from the same round ran back to back, so the shared machine's load cancels
  better in each per-round ratio than in a ratio of two medians.
  """
  return statistics.median(tb / ta for ta, tb in zip(a, b))


# ---------------------------------------------------------------------------------------------
# JSON-lines worker protocol

def serve(handlers: dict[str, Callable[[dict], dict]]) -> None:
  """Worker main loop: one JSON request per stdin line -> one JSON reply on the original stdout.

  Anything the frameworks print goes to stderr (fd 1 is pointed there), so it cannot corrupt the
  protocol. An exception in a handler is returned as {"error": ...} and the worker keeps serving.
  """
  proto = os.fdopen(os.dup(1), "w", buffering=1)
  os.dup2(2, 1)
  sys.stdout = sys.stderr
  for line in sys.stdin:
    if not line.strip():
      continue
    req = json.loads(line)
    if req.get("cmd") == "exit":
      proto.write(json.dumps({"ok": True}) + "\n")
      break
    try:
      reply = handlers[req["cmd"]](req)
    except Exception as e:  # reported to the parent, which marks that runner as failed
      reply = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
    proto.write(json.dumps(reply) + "\n")


class Worker:
  """A baseline subprocess speaking the protocol above."""

  def __init__(self, argv: list[str], env: dict | None = None, name: str = "worker"):
    self.name = name
    self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env, bufsize=1)
    self._stderr: list[str] = []
    import threading
    threading.Thread(target=self._drain, daemon=True).start()

  def _drain(self):
    for line in self.proc.stderr:
      self._stderr.append(line)
      del self._stderr[:-200]

  def stderr_tail(self, n: int = 20) -> str:
    return "".join(self._stderr[-n:])

  def request(self, **req) -> dict:
    if self.proc.poll() is not None:
      return {"error": f"{self.name} exited ({self.proc.returncode}): {self.stderr_tail()}"}
    self.proc.stdin.write(json.dumps(req) + "\n")
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      return {"error": f"{self.name} died: {self.stderr_tail()}"}
    return json.loads(line)

  def close(self):
    if self.proc.poll() is None:
      try:
        self.request(cmd="exit")
        self.proc.wait(timeout=30)
      except Exception:
        self.proc.kill()


# ---------------------------------------------------------------------------------------------
# JAX-side measurements (jax imported lazily: the workers never import it)

def cost_flops(compiled) -> float | None:
  """FLOPs per call from XLA's cost analysis (a dict, or a list of dicts in older jax)."""
  try:
    ca = compiled.cost_analysis()
  except Exception:
    return None
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else None
  if not ca or "flops" not in ca:
    return None
  return float(ca["flops"])


def matmul_peak_gflops(n: int = 2048, repeats: int = 7) -> dict:
  """This machine's measured float32 matmul rate (jnp.dot of n x n, median of repeats)."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  dot(a, b).block_until_ready()
  times = [timed(lambda: dot(a, b).block_until_ready()) for _ in range(repeats)]
  t = statistics.median(times)
  return {"n": n, "seconds": t, "gflops": 2.0 * n ** 3 / t / 1e9,
          "best_gflops": 2.0 * n ** 3 / min(times) / 1e9}
