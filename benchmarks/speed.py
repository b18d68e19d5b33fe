"""Train-step speed of every family in JAX vs the same model in PyTorch (eager, torch.compile) and Keras 3.

    python benchmarks/speed.py                         # the full table (minutes)
    python benchmarks/speed.py --quick                 # tiny models, few windows (the smoke test)
    python benchmarks/speed.py --models cnn,vae --frameworks jax,torch --out benchmarks/results

Per model: the experiment's own config (`experiments/<name>.get_config()`), its Task's jitted
train step on one real batch of the dataset, and mirrors of the same architecture, loss,
optimizer and batch in benchmarks/baselines/ (each framework in its own subprocess). All
runners are timed in the same command, round-robin: each round times one window of k steps of
every runner, so the shared machine's load hits them alike; steps/s is the median over rounds,
ratios are the median of the per-round ratios. Also reported: compile time, XLA's FLOPs per
step and the achieved share of this machine's measured float32 matmul rate, k steps per call
with lax.scan, the data pipeline's images/s, samplers, and data-parallel scaling on 1/2/4/8
forced CPU devices. Writes <out>/speed.json and <out>/speed.md; prints the markdown.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]
import _timing  # noqa: E402

_CALLER_XLA_FLAGS = os.environ.get("XLA_FLAGS", "")  # before gdl_jax.runtime's defaults

# name -> (experiment module, dataset, family); get_config(variant, dataset=...) where accepted
MODELS = {
    "cnn_digits": ("experiments.classifier", "digits", "cnn"),
    "cnn_fashion": ("experiments.classifier", "fashion_mnist", "cnn"),
    "vae_digits": ("experiments.vae_digits", "digits", "vae"),
    "vae_fashion": ("experiments.vae_fashion_mnist", "fashion_mnist", "vae"),
    "dcgan_digits": ("experiments.dcgan_digits", "digits", "dcgan"),
    "dcgan_fashion": ("experiments.dcgan_digits", "fashion_mnist", "dcgan"),
    "pixelcnn_digits": ("experiments.pixelcnn_digits", "digits", "pixelcnn"),
    "ddpm_digits": ("experiments.ddpm_digits", "digits", "ddpm"),
}
FRAMEWORKS = ("jax", "torch", "torch_compile", "keras_torch", "keras_tf")
QUICK_MODELS = ("cnn_digits",)
SCAN_MODELS = ("cnn_digits", "vae_digits", "dcgan_digits")  # small: per-call overhead matters
SCALING_MODELS = ("cnn_digits",)
# The main table's columns (the smoke test checks these).
COLUMNS = ("model", "batch", "JAX steps/s", "compile s", "GFLOP/step", "GFLOP/s", "% peak",
           "torch steps/s", "JAX/torch", "torch.compile steps/s", "JAX/compile",
           "Keras steps/s", "JAX/Keras", "goal")
GOALS = {"torch": 1.5, "torch_compile": 1.0, "keras": 2.0}


def log(*a):
  print(*a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Configs -> JAX task and the baselines' spec

def expand_models(names: str | None, quick: bool) -> list[str]:
  if not names:
    return list(QUICK_MODELS if quick else MODELS)
  out = []
  for n in names.split(","):
    n = n.strip()
    hits = [m for m in MODELS if m == n or MODELS[m][2] == n or m.startswith(n + "_")]
    if not hits:
      raise SystemExit(f"unknown model {n!r}; use names from {sorted(MODELS)} or families "
                       f"{sorted({f for _, _, f in MODELS.values()})}.")
    out += [h for h in hits if h not in out]
  return out


def load_config(name: str, quick: bool):
  mod_name, dataset, _ = MODELS[name]
  mod = importlib.import_module(mod_name)
  variant = "tiny" if quick else "default"
  try:
    config = mod.get_config(variant, dataset=dataset)
  except TypeError:
    config = mod.get_config(variant)
  config.dataset = dataset
  return mod, config


def baseline_spec(name: str, config, info) -> dict:
  """The architecture, loss and optimizer of the JAX step as plain JSON for the mirrors."""
  fam = MODELS[name][2]
  o, m = config.optimizer, config.model
  spec = dict(family=fam, shape=list(info.shape), levels=int(info.levels),
              num_classes=int(info.num_classes or 0), batch=int(config.batch_size), lr=float(o.lr),
              b1=float(o.b1), b2=float(o.b2), eps=float(o.eps), clip_norm=float(o.clip_norm or 0.0))
  if o.name != "adam" or o.clip_value:
    raise ValueError(f"{name}: the mirrors implement Adam (+ global-norm clipping) only.")
  if fam == "cnn":
    if m.arch != "cnn":
      raise ValueError(f"{name}: only model.arch='cnn' is mirrored.")
    spec.update(channels=list(m.channels), dense=int(m.dense), dropout=float(m.dropout))
  elif fam == "vae":
    if m.family != "vae" or m.likelihood != "logistic" or m.num_mixtures != 1 or m.ema_decay:
      raise ValueError(f"{name}: only the VAE with a 1-component logistic decoder is mirrored.")
    spec.update(latent_dim=int(m.latent_dim), features=list(m.features), hidden=int(m.hidden))
  elif fam == "dcgan":
    if (m.loss, m.n_critic, m.gen_norm, m.disc_norm, m.conditional) != ("nsgan", 1, "batch", "batch", False):
      raise ValueError(f"{name}: only the unconditional DCGAN (nsgan, BatchNorm, n_critic=1) is mirrored.")
    spec.update(latent_dim=int(m.latent_dim), gen_features=list(m.gen_features),
                disc_features=list(m.disc_features), kernel_size=int(m.kernel_size),
                dropout=float(m.dropout), label_noise=float(m.label_noise),
                bn_momentum=float(m.bn_momentum), disc_lr_mult=float(m.disc_lr_mult),
                ema_decay=float(m.ema_decay))
  elif fam == "pixelcnn":
    if (m.arch, m.head) != ("gated", "logistic_mixture") or m.ema_decay or info.shape[-1] != 1:
      raise ValueError(f"{name}: only the gated PixelCNN with a logistic-mixture head is mirrored.")
    spec.update(features=int(m.features), num_layers=int(m.num_layers), kernel_size=int(m.kernel_size),
                first_kernel_size=int(m.first_kernel_size), head_features=int(m.head_features),
                num_mixtures=int(m.num_mixtures), dropout=float(m.dropout))
  elif fam == "ddpm":
    if m.prediction not in ("eps", "v") or m.schedule != "cosine" or m.dtype != "float32":
      raise ValueError(f"{name}: only the float32 eps/v-prediction cosine-schedule DDPM is mirrored.")
    spec.update(base_channels=int(m.base_channels), channel_mults=list(m.channel_mults),
                num_res_blocks=int(m.num_res_blocks), attention_levels=list(m.attention_levels),
                num_heads=int(m.num_heads), groups=int(m.groups), dropout=float(m.dropout),
                num_timesteps=int(m.num_timesteps), ema_decay=float(m.ema_decay),
                prediction=str(m.prediction))
  return spec


# ---------------------------------------------------------------------------------------------
# JAX runners (in this process)

class JaxRunner:
  """The Task's jitted train step on a device-resident batch; `window(k)` runs k steps."""

  def __init__(self, mod, config, info, batch):
    import jax
    self.jax = jax
    self.task = mod.build(config, info)
    key = jax.random.key(int(config.seed))
    self.key = key
    self.state = self.task.init(key, batch)
    self.batch = jax.device_put(batch)
    t0 = time.perf_counter()
    lowered = self.task.step.lower(self.state, self.batch, key)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    self.flops = _timing.cost_flops(compiled)
    self.params = int(sum(x.size for x in jax.tree.leaves(self.state.params)))
    self.lower_s, self.compile_s = t1 - t0, t2 - t1
    self.first_step_s = _timing.timed(self._one)  # dispatch cache fill; the executable is reused
    self.second_step_s = _timing.timed(self._one)

  def _one(self):
    self.state, _ = self.task.step(self.state, self.batch, self.key)
    self.jax.block_until_ready(self.state)

  def window(self, k: int) -> float:
    def run():
      for _ in range(k):
        self.state, _ = self.task.step(self.state, self.batch, self.key)
      self.jax.block_until_ready(self.state)
    return _timing.timed(run)


class JaxScanRunner:
  """k train steps in one call: lax.scan of the step over k stacked batches (per-call overhead / k).

  unroll=True unrolls the k steps into straight-line code; unroll=1 keeps an XLA while loop
  (on XLA:CPU the rolled loop's body runs many times slower: see the README); unroll="loop" is
  `gdl_jax.train.loop.multi_step` (a Python loop of k steps inside one jit: `--steps_per_call`).
  """

  def __init__(self, base: JaxRunner, batches: list[dict], unroll=True):
    import jax
    self.jax, self.k = jax, len(batches)
    step, key = base.task.step, base.key

    def multi(state, stacked):
      def body(s, b):
        s, metrics = step(s, b, key)
        return s, metrics["loss"]
      return jax.lax.scan(body, state, stacked, unroll=unroll)

    if unroll == "loop":  # what `gdl-jax train --steps_per_call k` runs: k steps traced in one jit
      from gdl_jax.train.loop import multi_step
      fused = multi_step(step, self.k)
      self.fn = lambda state, stacked: fused(state, stacked, key)
    else:
      self.fn = jax.jit(multi, donate_argnums=0)
    self.stacked = jax.device_put(jax.tree.map(lambda *xs: np.stack(xs), *batches))
    self.state = jax.tree.map(jax.numpy.copy, base.state)
    t0 = time.perf_counter()
    self.state, _ = self.fn(self.state, self.stacked)
    jax.block_until_ready(self.state)
    self.compile_s = time.perf_counter() - t0

  def window(self, k: int) -> float:
    calls = max(1, round(k / self.k))
    def run():
      for _ in range(calls):
        self.state, _ = self.fn(self.state, self.stacked)
      self.jax.block_until_ready(self.state)
    return _timing.timed(run) * k / (calls * self.k)  # seconds for k steps


class WorkerRunner:
  """One model in a baseline worker subprocess."""

  def __init__(self, worker: _timing.Worker, rid: str, spec: dict, data: str, variant: str):
    self.worker, self.id = worker, rid
    r = worker.request(cmd="build", id=rid, spec=spec, data=data, variant=variant)
    if "error" in r:
      raise RuntimeError(r["error"] + "\n" + r.get("traceback", ""))
    self.build = r

  def window(self, k: int) -> float:
    r = self.worker.request(cmd="window", id=self.id, k=k)
    if "error" in r:
      raise RuntimeError(r["error"])
    return r["seconds"]


# ---------------------------------------------------------------------------------------------
# Workers

def start_workers(frameworks, tf_path: str | None) -> dict:
  """framework -> (Worker, info); a framework that cannot start is reported and skipped."""
  workers = {}
  want = {"torch": "torch", "torch_compile": "torch", "keras_torch": "keras_torch", "keras_tf": "keras_tf"}
  for fw in frameworks:
    kind = want.get(fw)
    if kind is None or kind in workers:
      continue
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    if kind == "torch":
      argv = [sys.executable, os.path.join(HERE, "baselines", "torch_models.py")]
    else:
      argv = [sys.executable, os.path.join(HERE, "baselines", "keras_models.py")]
      env["KERAS_BACKEND"] = "torch" if kind == "keras_torch" else "tensorflow"
      if kind == "keras_tf":
        if not tf_path:
          log("keras_tf: skipped (no TensorFlow: pass --tf-path DIR holding tensorflow-cpu, or set "
              "GDL_BENCH_TF_PATH)")
          continue
        env["PYTHONPATH"] = tf_path + os.pathsep + env.get("PYTHONPATH", "")
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    w = _timing.Worker(argv, env=env, name=kind)
    info = w.request(cmd="info")
    if "error" in info:
      log(f"{kind}: unavailable ({info['error']})")
      w.close()
      continue
    workers[kind] = (w, info)
  return workers


# ---------------------------------------------------------------------------------------------
# One model: build every runner, then interleaved rounds

def window_size(step_s: float, target_s: float, lo: int = 1, hi: int = 200) -> int:
  return int(min(max(round(target_s / max(step_s, 1e-6)), lo), hi))


def bench_model(name, frameworks, workers, args, peak) -> dict:
  import jax
  from gdl_jax import data
  mod, config = load_config(name, args.quick)
  ds = data.load(config.dataset)
  info, bsz = ds.info, int(config.batch_size)
  batch = data.batch_at(ds.train, 0, bsz, int(config.seed))
  row = {"model": name, "dataset": config.dataset, "family": MODELS[name][2], "batch": bsz,
         "experiment": MODELS[name][0], "variant": "tiny" if args.quick else "default",
         "runners": {}, "errors": {}}
  log(f"[{name}] building JAX step (batch {bsz}, {info.shape})")
  jr = JaxRunner(mod, config, info, batch)
  row.update(params=jr.params, flops_per_step=jr.flops)
  row["runners"]["jax"] = {"lower_s": jr.lower_s, "compile_s": jr.compile_s,
                           "first_step_s": jr.first_step_s, "second_step_s": jr.second_step_s}
  runners = {"jax": jr}
  if name in SCAN_MODELS and not args.no_scan:
    k = args.scan_k
    batches = [data.batch_at(ds.train, i, bsz, int(config.seed)) for i in range(k)]
    for rid, unroll in (("jax_scan", True), ("jax_scan_rolled", 1), ("jax_multi", "loop")):
      try:
        sr = JaxScanRunner(jr, batches, unroll)
        runners[rid] = sr
        row["runners"][rid] = {"compile_s": sr.compile_s, "steps_per_call": k, "unroll": unroll}
      except Exception as e:  # noqa: BLE001  (reported in the table, the others still run)
        row["errors"][rid] = f"{type(e).__name__}: {e}"
  try:
    spec = baseline_spec(name, config, info)
  except ValueError as e:
    spec = None
    row["errors"]["baselines"] = str(e)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "batch.npz")
    np.savez(path, image=batch["image"], label=batch["label"])
    for fw in frameworks:
      if fw == "jax" or spec is None:
        continue
      kind = "torch" if fw.startswith("torch") else fw
      if kind not in workers:
        continue
      log(f"[{name}] building {fw}")
      try:
        r = WorkerRunner(workers[kind][0], f"{name}/{fw}", spec, path,
                         "compile" if fw == "torch_compile" else "eager")
        runners[fw] = r
        row["runners"][fw] = dict(r.build)
      except Exception as e:  # noqa: BLE001
        row["errors"][fw] = str(e)[-2000:]
        log(f"[{name}] {fw} failed: {str(e)[:300]}")
    # window sizes from the warm second step, about args.window_s seconds each
    step_s = {n: row["runners"][n].get("second_step_s") for n in runners}
    ks = {}
    base_k = window_size(step_s["jax"], args.window_s)
    for n in runners:
      ks[n] = base_k if n.startswith(("jax_scan", "jax_multi")) else window_size(step_s[n] or step_s["jax"], args.window_s)
    times = {n: [] for n in runners}  # seconds per step, one per round
    order = list(runners)
    for rnd in range(args.rounds):
      for n in order[rnd % len(order):] + order[:rnd % len(order)]:
        try:
          times[n].append(runners[n].window(ks[n]) / ks[n])
        except Exception as e:  # noqa: BLE001
          row["errors"][n] = str(e)[-2000:]
      log(f"[{name}] round {rnd + 1}/{args.rounds}: " +
          ", ".join(f"{n} {1 / t[-1]:.1f}/s" for n, t in times.items() if t))
  for n, t in times.items():
    if len(t) != args.rounds:
      continue
    s = _timing.rate_summary([x * ks[n] for x in t], ks[n])
    if jr.flops and not n.startswith(("jax_scan", "jax_multi")):
      s["gflops"] = jr.flops * s["steps_per_s"] / 1e9
      s["peak_share"] = s["gflops"] / peak["gflops"]
    s["per_step_s"] = t
    row["runners"][n].update(s)
  ratios = {}
  for n in times:
    if n != "jax" and len(times[n]) == args.rounds == len(times["jax"]):
      ratios[n] = _timing.median_ratio(times["jax"], times[n])  # > 1: JAX faster
  row["ratios"] = ratios
  row["pipeline"] = bench_pipeline(ds, bsz, int(config.seed), args.quick)
  if not args.no_samplers:
    row["sampler"] = bench_sampler(jr, config, args.quick)
  return row


def bench_pipeline(ds, bsz: int, seed: int, quick: bool) -> dict:
  """gdl_jax.data.batch_at + gdl_jax.sharding.shard_batch: images/s into device arrays."""
  import jax
  from gdl_jax import data, sharding
  mesh = sharding.make_mesh()
  n = 20 if quick else 200
  def run():
    for i in range(n):
      jax.block_until_ready(sharding.shard_batch(data.batch_at(ds.train, i, bsz, seed), mesh))
  run()
  t = statistics.median(_timing.timed(run) for _ in range(3))
  return {"images_per_s": n * bsz / t, "batches": n, "seconds": t}


def bench_sampler(jr: JaxRunner, config, quick: bool) -> dict | None:
  """The Task's sampler: first call (compile) and the median of later calls, n = config.num_samples."""
  import jax
  if jr.task.sample is None:
    return None
  n = int(config.num_samples)
  key = jax.random.key(1)
  try:
    first = _timing.timed(lambda: jax.block_until_ready(jr.task.sample(jr.state, key, n)))
    reps = [_timing.timed(lambda: jax.block_until_ready(jr.task.sample(jr.state, key, n)))
            for _ in range(2 if quick else 3)]
  except Exception as e:  # noqa: BLE001
    return {"error": f"{type(e).__name__}: {e}"}
  t = statistics.median(reps)
  return {"n": n, "first_call_s": first, "seconds": t, "samples_per_s": n / t}


# ---------------------------------------------------------------------------------------------
# Data-parallel scaling (one subprocess per device count)

def scaling_worker(name: str, rounds: int, window_s: float) -> None:
  """Runs inside a subprocess with --xla_force_host_platform_device_count=N; prints one JSON line."""
  import jax
  from gdl_jax import data, sharding
  from gdl_jax.train import loop
  mod, config = load_config(name, False)
  ds = data.load(config.dataset)
  bsz = int(config.batch_size)
  mesh = sharding.make_mesh()
  sharding.check_batch_size(bsz, mesh)
  task = mod.build(config, ds.info)
  state, keys = loop.init_state(task, config, ds, mesh)
  key = keys["step"]
  gbatch = sharding.shard_batch(data.batch_at(ds.train, 0, bsz, int(config.seed)), mesh)
  t0 = time.perf_counter()
  state, _ = task.step(state, gbatch, key)
  jax.block_until_ready(state)
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  state, _ = task.step(state, gbatch, key)
  jax.block_until_ready(state)
  k = window_size(time.perf_counter() - t0, window_s)
  secs = []
  for _ in range(rounds):
    def run():
      nonlocal state
      for _ in range(k):
        state, _ = task.step(state, gbatch, key)
      jax.block_until_ready(state)
    secs.append(_timing.timed(run))
  out = _timing.rate_summary(secs, k)
  out.update(devices=len(jax.devices()), compile_s=compile_s, global_batch=bsz)
  print(json.dumps(out))


def _run_step_worker(name: str, xla_flags: str, rounds: int, window_s: float, plain: bool = False) -> dict:
  """The model's JAX step timed in a fresh process under the given XLA_FLAGS (plain: without
  gdl_jax.runtime's defaults)."""
  from gdl_jax import runtime
  env = dict(os.environ)
  base = _CALLER_XLA_FLAGS if plain else env.get("XLA_FLAGS", "")
  env["XLA_FLAGS"] = (base + " " + xla_flags).strip()
  if plain:
    env[runtime.SWITCH] = "0"
  env["JAX_PLATFORMS"] = "cpu"
  p = subprocess.run([sys.executable, os.path.abspath(__file__), "--scaling-worker", name,
                      "--rounds", str(rounds), "--window-s", str(window_s)],
                     capture_output=True, text=True, env=env, cwd=ROOT)
  if p.returncode:
    return {"model": name, "error": p.stderr[-1500:]}
  r = json.loads(p.stdout.strip().splitlines()[-1])
  r["model"] = name
  return r


def bench_scaling(models, counts, rounds, window_s) -> list[dict]:
  rows = []
  for name in models:
    for n in counts:
      log(f"[scaling] {name} on {n} CPU devices")
      r = _run_step_worker(name, f"--xla_force_host_platform_device_count={n}", rounds, window_s)
      r.setdefault("devices", n)
      rows.append(r)
  for r in rows:
    one = next((x for x in rows if x["model"] == r["model"] and x.get("devices") == 1
                and "steps_per_s" in x), None)
    if one and "steps_per_s" in r:
      r["speedup_vs_1"] = r["steps_per_s"] / one["steps_per_s"]
  return rows


# XLA:CPU with oneDNN thunks for convolutions and matmuls, vs the default (Eigen) emitters
# "default" is how the JAX column runs: XLA_FLAGS plus gdl_jax.runtime's defaults; "plain XLA" drops
# those (GDL_JAX_XLA_DEFAULTS=0, the caller's XLA_FLAGS only).
PLAIN_XLA = "plain XLA"
XLA_VARIANTS = {"default": "", PLAIN_XLA: "", "onednn": "--xla_cpu_use_onednn=true",
                "1 thread": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}
XLA_VARIANT_MODELS = ("cnn_digits", "cnn_fashion", "vae_fashion", "dcgan_digits", "dcgan_fashion",
                      "pixelcnn_digits", "ddpm_digits")


def bench_xla_variants(models, rounds, window_s) -> list[dict]:
  """Each model's JAX step in one process per XLA_FLAGS variant, back to back (default first)."""
  rows = []
  for name in models:
    row = {"model": name}
    for variant, flags in XLA_VARIANTS.items():
      log(f"[xla flags] {name}: {variant} {flags}")
      row[variant] = _run_step_worker(name, flags, rounds, window_s, plain=variant == PLAIN_XLA)
    a = row["default"].get("steps_per_s")
    row["speedup"] = {v: row[v]["steps_per_s"] / a for v in XLA_VARIANTS
                      if v != "default" and a and row[v].get("steps_per_s")}
    rows.append(row)
  return rows


# ---------------------------------------------------------------------------------------------
# Conv probe: why a conv-heavy step is slower (XLA CPU's conv vs PyTorch's oneDNN)

def conv_probe(workers, shapes, reps: int, rounds: int) -> list[dict]:
  """Forward + backward of single conv layers, JAX (NHWC, jit) vs PyTorch eager (NCHW), interleaved."""
  import jax
  import jax.numpy as jnp
  out = []
  w = workers.get("torch", (None,))[0]
  from gdl_jax.nn.conv import conv_transpose as fast_conv_transpose
  dn = ("NHWC", "HWIO", "NHWC")
  impls = {  # transposed convs twice: flax's op, and gdl_jax.nn.conv's (the models use the latter)
      False: [("conv", lambda x, kern, s: jax.lax.conv_general_dilated(x, kern, (s, s), "SAME",
                                                                       dimension_numbers=dn))],
      True: [("conv transpose (lax, as flax.linen.ConvTranspose)",
              lambda x, kern, s: jax.lax.conv_transpose(x, kern, (s, s), "SAME", dimension_numbers=dn)),
             ("conv transpose (gdl_jax.nn.conv)", lambda x, kern, s: fast_conv_transpose(x, kern, (s, s)))]}
  for (n, h, wd, cin, cout, k, s, transpose), (kind, op) in (
      (shape, impl) for shape in shapes for impl in impls[shape[-1]]):
    x = jax.random.normal(jax.random.key(0), (n, h, wd, cin))
    kern = jax.random.normal(jax.random.key(1), (k, k, cin, cout)) * 0.1

    def loss(kern, x, op=op, s=s):
      return jnp.mean(jnp.square(op(x, kern, s)))

    g = jax.jit(jax.grad(loss, argnums=(0, 1)))
    jax.block_until_ready(g(kern, x))
    flops = _timing.cost_flops(g.lower(kern, x).compile())
    jt, tt = [], []
    for _ in range(rounds):
      jt.append(_timing.timed(lambda: [jax.block_until_ready(g(kern, x)) for _ in range(reps)]) / reps)
      if w is not None:
        r = w.request(cmd="conv_probe", n=n, h=h, w=wd, cin=cin, cout=cout, k=k, stride=s, reps=reps,
                      transpose=transpose, threads=1)
        if "seconds" in r:
          tt.append(r["seconds"])
    row = {"shape": f"{kind} {n}x{h}x{wd}x{cin} -> {cout}, {k}x{k}/{s}", "jax_ms": 1e3 * statistics.median(jt),
           "flops": flops}
    if tt:
      row["torch_ms"] = 1e3 * statistics.median(tt)
      row["jax_over_torch_time"] = statistics.median(a / b for a, b in zip(jt, tt))
    # where the JAX time goes: forward, input gradient, kernel gradient (each jitted alone)
    parts = {"forward": jax.jit(loss), "input_grad": jax.jit(jax.grad(loss, argnums=1)),
             "kernel_grad": jax.jit(jax.grad(loss, argnums=0))}
    for part, fn in parts.items():
      jax.block_until_ready(fn(kern, x))
      row[f"jax_{part}_ms"] = 1e3 * min(_timing.timed(lambda: jax.block_until_ready(fn(kern, x)))
                                        for _ in range(3))
    out.append(row)
  return out


def cnn_conv_shapes(name: str, quick: bool):
  """The conv layers of the CNN classifier's step at the benchmark batch: (n, h, w, cin, cout, k, s)."""
  _, config = load_config(name, quick)
  from gdl_jax import data
  info = data.load(config.dataset).info
  h, w, c = info.shape
  shapes = []
  for i, ch in enumerate(config.model.channels):
    s = 2 if i % 2 == 1 else 1
    shapes.append((int(config.batch_size), h, w, c, int(ch), 3, s, False))
    h, w, c = -(-h // s), -(-w // s), int(ch)
  return shapes


def generator_conv_shapes(name: str):
  """The transposed convs of a DCGAN generator's step: (n, h, w, cin, cout, k, s, True)."""
  _, config = load_config(name, False)
  from gdl_jax import data
  H, W, C = data.load(config.dataset).info.shape
  m, feats = config.model, list(config.model.gen_features)
  h, w = H // 2 ** len(feats), W // 2 ** len(feats)
  outs = feats[1:] + [C]
  shapes = []
  for cin, cout in zip(feats, outs):
    shapes.append((int(config.batch_size), h, w, int(cin), int(cout), int(m.kernel_size), 2, True))
    h, w = 2 * h, 2 * w
  return shapes


PROBE_MODELS = ("cnn_fashion", "dcgan_fashion")


def probe_shapes(models) -> list:
  shapes = []
  for name in models:
    if MODELS[name][2] == "cnn":
      shapes += cnn_conv_shapes(name, False)
    elif MODELS[name][2] == "dcgan":
      shapes += generator_conv_shapes(name)
  return shapes


def add_probe(args, argv) -> int:
  """Adds the conv probe to an existing <out>/speed.json and rewrites the markdown."""
  path = os.path.join(args.out, "speed.json")
  with open(path) as f:
    report = json.load(f)
  workers = start_workers(["torch"], None)
  try:
    report["conv_probe"] = conv_probe(workers, probe_shapes(PROBE_MODELS), reps=1, rounds=3)
  finally:
    for w, _ in workers.values():
      w.close()
  report["command"] += "; then python benchmarks/speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
  print(_write(report, args.out))
  return 0


# ---------------------------------------------------------------------------------------------
# Report

def _f(x, nd=1, pct=False):
  if x is None:
    return "-"
  return f"{100 * x:.{nd}f}%" if pct else f"{x:,.{nd}f}"


def goal_text(row) -> str:
  r = row.get("ratios", {})
  missed = []
  for fw, want in (("torch", GOALS["torch"]), ("torch_compile", GOALS["torch_compile"]),
                   ("keras_torch", GOALS["keras"]), ("keras_tf", GOALS["keras"])):
    if fw in r and r[fw] < want:
      missed.append(f"{fw} {r[fw]:.2f}x<{want}x")
  if not r:
    return "no baseline"
  return "met" if not missed else "MISSED: " + ", ".join(missed)


def markdown(report: dict) -> str:
  m = report["machine"]
  lines = [f"# Train-step speed: JAX vs PyTorch vs Keras ({report['date']})", "",
           f"Machine: {m['cpu']} ({m['cores']} cores; load average {m['loadavg_start']} at start, "
           f"{m.get('loadavg_end', '?')} at end). Measured float32 matmul peak "
           f"(jnp.dot {report['peak']['n']}x{report['peak']['n']}): {report['peak']['gflops']:.1f} GFLOP/s"
           + (f"; torch.matmul: {report['peak']['torch_gflops']:.1f} GFLOP/s" if report['peak'].get('torch_gflops') else "")
           + ".", "",
           "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".", "",
           f"JAX runs with XLA_FLAGS=`{report.get('xla_flags') or '(none)'}`"
           + (f" (added by gdl_jax.runtime.apply_xla_defaults, as the gdl-jax CLI does: "
              f"{' '.join(report['xla_flags_added'])})" if report.get("xla_flags_added") else "") + ".", "",
           f"Command: `{report['command']}`. Each round times one window (~{report['window_s']} s) of every "
           f"runner back to back; {report['rounds']} rounds. steps/s = median over rounds; ratios = "
           "median over rounds of (baseline seconds per step / JAX seconds per step), > 1 means JAX "
           "is faster. Keras column: " + report.get("keras_column", "-") + ".", "",
           "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  for row in report["rows"]:
    rn, ra = row["runners"], row.get("ratios", {})
    j = rn.get("jax", {})
    keras_fw = "keras_tf" if "keras_tf" in rn and "steps_per_s" in rn["keras_tf"] else "keras_torch"
    get = lambda fw: rn.get(fw, {}).get("steps_per_s")
    cells = [row["model"], str(row["batch"]), _f(get("jax")), _f(j.get("compile_s"), 2),
             _f((row.get("flops_per_step") or 0) / 1e9, 3) if row.get("flops_per_step") else "-",
             _f(j.get("gflops")), _f(j.get("peak_share"), 1, pct=True),
             _f(get("torch")), _f(ra.get("torch"), 2), _f(get("torch_compile")), _f(ra.get("torch_compile"), 2),
             _f(get(keras_fw)), _f(ra.get(keras_fw), 2), goal_text(row)]
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", f"Goals: JAX >= {GOALS['torch']}x PyTorch eager, >= {GOALS['keras']}x Keras, >= 1x torch.compile "
            "(same model, batch, optimizer; this CPU).", ""]
  extra = [r for r in report["rows"] if "keras_tf" in r["runners"] and "keras_torch" in r["runners"]]
  if extra:
    lines += ["Both Keras backends:", "", "| model | Keras (torch backend) steps/s | JAX/Keras-torch | "
              "Keras (TF backend) steps/s | JAX/Keras-TF |", "|---|---|---|---|---|"]
    for row in extra:
      rn, ra = row["runners"], row["ratios"]
      lines.append(f"| {row['model']} | {_f(rn['keras_torch'].get('steps_per_s'))} | {_f(ra.get('keras_torch'), 2)} | "
                   f"{_f(rn['keras_tf'].get('steps_per_s'))} | {_f(ra.get('keras_tf'), 2)} |")
    lines.append("")
  lines += ["## Compile / warm-up, and the mirrors' parameter counts", "",
            "| model | params JAX / torch / Keras | JAX trace+lower s | JAX compile s | "
            "torch first step s | torch.compile first step s | Keras first step s | torch, Keras-torch threads |",
            "|---|---|---|---|---|---|---|---|"]
  for row in report["rows"]:
    rn = row["runners"]
    kfw = "keras_tf" if "keras_tf" in rn else "keras_torch"
    pc = lambda fw: f"{rn[fw]['params']:,}" if "params" in rn.get(fw, {}) else "-"
    lines.append(f"| {row['model']} | {row.get('params', 0):,} / {pc('torch')} / {pc(kfw)} | "
                 f"{_f(rn['jax'].get('lower_s'), 2)} | "
                 f"{_f(rn['jax'].get('compile_s'), 2)} | {_f(rn.get('torch', {}).get('first_step_s'), 2)} | "
                 f"{_f(rn.get('torch_compile', {}).get('first_step_s'), 2)} | {_f(rn.get(kfw, {}).get('first_step_s'), 2)} | "
                 f"{rn.get('torch', {}).get('threads', '-')}, "
                 f"{rn.get('keras_torch', {}).get('threads', '-')} (Keras-TF: TF default) |")
  scan_rows = [r for r in report["rows"] if "steps_per_s" in r["runners"].get("jax_scan", {})]
  if scan_rows:
    lines += ["", "## Many steps per call (lax.scan; `--steps_per_call`)", "",
              "| model | steps per call | one step per call, steps/s | scan unrolled, steps/s | speed-up | "
              "scan rolled (while loop), steps/s | speed-up | `loop.multi_step` (train `--steps_per_call`), "
              "steps/s | speed-up | compile s (unrolled, rolled, multi_step) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for row in scan_rows:
      rn, ra = row["runners"], row["ratios"]
      up = lambda rid: _f(1 / ra[rid], 2) + "x" if ra.get(rid) else "-"
      rolled, fused = rn.get("jax_scan_rolled", {}), rn.get("jax_multi", {})
      lines.append(f"| {row['model']} | {rn['jax_scan']['steps_per_call']} | {_f(rn['jax']['steps_per_s'])} | "
                   f"{_f(rn['jax_scan']['steps_per_s'])} | {up('jax_scan')} | {_f(rolled.get('steps_per_s'))} | "
                   f"{up('jax_scan_rolled')} | {_f(fused.get('steps_per_s'))} | {up('jax_multi')} | "
                   f"{_f(rn['jax_scan'].get('compile_s'), 1)}, {_f(rolled.get('compile_s'), 1)}, "
                   f"{_f(fused.get('compile_s'), 1)} |")
  lines += ["", "## Input pipeline (gdl_jax.data.batch_at + gdl_jax.sharding.shard_batch)", "",
            "| model | pipeline images/s | JAX step images/s | headroom |", "|---|---|---|---|"]
  for row in report["rows"]:
    p, sps = row.get("pipeline", {}), row["runners"]["jax"].get("steps_per_s")
    need = sps * row["batch"] if sps else None
    lines.append(f"| {row['model']} | {_f(p.get('images_per_s'), 0)} | {_f(need, 0)} | "
                 f"{_f(p.get('images_per_s') / need if need else None, 1)}x |")
  samp = [r for r in report["rows"] if r.get("sampler") and "samples_per_s" in r["sampler"]]
  if samp:
    lines += ["", "## Samplers (JAX, the Task's `sample`)", "", "| model | n | first call s | s per call | samples/s |",
              "|---|---|---|---|---|"]
    for row in samp:
      s = row["sampler"]
      lines.append(f"| {row['model']} | {s['n']} | {_f(s['first_call_s'], 2)} | {_f(s['seconds'], 3)} | {_f(s['samples_per_s'])} |")
  if report.get("scaling"):
    lines += ["", "## Data-parallel scaling (forced CPU devices, same global batch)", "",
              "| model | devices | steps/s | vs 1 device | compile s |", "|---|---|---|---|---|"]
    for r in report["scaling"]:
      if "error" in r:
        lines.append(f"| {r['model']} | {r['devices']} | error | - | - |")
      else:
        lines.append(f"| {r['model']} | {r['devices']} | {_f(r['steps_per_s'])} | {_f(r.get('speedup_vs_1'), 2)}x | "
                     f"{_f(r['compile_s'], 2)} |")
  if report.get("xla_variants"):
    variants = [v for v in XLA_VARIANTS if v in report["xla_variants"][0]]
    lines += ["", "## The JAX step under other XLA:CPU settings", "",
              "One fresh process per setting (XLA_FLAGS is per process), run back to back, so these are "
              "not interleaved. default: as the main table (gdl_jax.runtime's defaults); plain XLA: without "
              "them; other settings are added to the default: "
              + "; ".join(f"{v}: `{XLA_VARIANTS[v]}`" for v in variants if XLA_VARIANTS[v]) + ".", "",
              "| model | " + " | ".join(f"{v} steps/s" for v in variants) + " | " +
              " | ".join(f"{v} / default" for v in variants[1:]) + " |",
              "|---|" + "---|" * (2 * len(variants) - 1)]
    for r in report["xla_variants"]:
      sp = r.get("speedup") or {}
      sp = sp if isinstance(sp, dict) else {"onednn": sp}
      lines.append(f"| {r['model']} | " + " | ".join(_f(r[v].get("steps_per_s"), 2) for v in variants) + " | " +
                   " | ".join(_f(sp.get(v), 2) + "x" if sp.get(v) else "-" for v in variants[1:]) + " |")
  if report.get("conv_probe"):
    lines += ["", "## Profile: single conv layers, forward + backward (JAX/XLA NHWC vs PyTorch NCHW, 1 thread)", "",
              "The Fashion-MNIST CNN's convs and the Fashion-MNIST DCGAN generator's transposed convs, alone, "
              "interleaved.", "",
              "| layer | JAX ms | torch ms | JAX time / torch time | JAX forward ms | JAX input-grad ms | "
              "JAX kernel-grad ms |", "|---|---|---|---|---|---|---|"]
    for r in report["conv_probe"]:
      lines.append(f"| {r['shape']} | {_f(r['jax_ms'], 2)} | {_f(r.get('torch_ms'), 2)} | "
                   f"{_f(r.get('jax_over_torch_time'), 2)} | {_f(r.get('jax_forward_ms'), 1)} | "
                   f"{_f(r.get('jax_input_grad_ms'), 1)} | {_f(r.get('jax_kernel_grad_ms'), 1)} |")
  errs = [(r["model"], k, v) for r in report["rows"] for k, v in r.get("errors", {}).items()]
  if errs:
    lines += ["", "## Not measured", ""] + [f"- {m} / {k}: {v.splitlines()[0][:300]}" for m, k, v in errs]
  if report.get("notes"):
    lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
  return "\n".join(lines) + "\n"


def machine_info() -> dict:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return {"cpu": cpu, "cores": os.cpu_count(), "loadavg_start": round(os.getloadavg()[0], 1),
          "python": platform.python_version()}


def _write(report: dict, out: str) -> str:
  os.makedirs(out, exist_ok=True)
  md = markdown(report)
  with open(os.path.join(out, "speed.json"), "w") as f:
    json.dump(report, f, indent=1, default=float)
  with open(os.path.join(out, "speed.md"), "w") as f:
    f.write(md)
  return md


def add_section(args, argv, key: str) -> int:
  """(Re)runs one subprocess section ("xla_variants" or "scaling") into an existing
  <out>/speed.json, keeping the rest, and rewrites the markdown."""
  path = os.path.join(args.out, "speed.json")
  with open(path) as f:
    report = json.load(f)
  if key == "xla_variants":
    models = expand_models(args.models, False) if args.models else list(XLA_VARIANT_MODELS)
    report[key] = bench_xla_variants(models, max(3, args.rounds // 2), args.window_s)
  else:
    models = expand_models(args.models, False) if args.models else list(SCALING_MODELS)
    counts = [int(c) for c in (args.scaling or "1,2,4,8").split(",") if c.strip()]
    report[key] = bench_scaling(models, counts, max(3, args.rounds // 2), args.window_s)
  report["command"] += "; then python benchmarks/speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
  print(_write(report, args.out))
  return 0


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="tiny configs, few short windows (< 60 s)")
  p.add_argument("--models", default=None, help=f"comma list of {sorted(MODELS)} or family names")
  p.add_argument("--frameworks", default=None, help=f"comma list of {FRAMEWORKS}")
  p.add_argument("--out", default=os.path.join(HERE, "results"))
  p.add_argument("--rounds", type=int, default=None)
  p.add_argument("--window-s", type=float, default=None, help="target seconds per timed window")
  p.add_argument("--scan-k", type=int, default=None, help="steps per call in the lax.scan variant")
  p.add_argument("--tf-path", default=os.environ.get("GDL_BENCH_TF_PATH"),
                 help="a directory holding tensorflow-cpu (pip install --target DIR) for Keras's TF backend")
  p.add_argument("--scaling", default=None, help="device counts, e.g. 1,2,4,8 ('' to skip)")
  p.add_argument("--no-scan", action="store_true")
  p.add_argument("--no-samplers", action="store_true")
  p.add_argument("--no-probe", action="store_true")
  p.add_argument("--no-xla-variants", action="store_true", help="skip the oneDNN XLA-flag comparison")
  p.add_argument("--merge", action="store_true",
                 help="replace/add these models' rows in an existing <out>/speed.json, keep the rest")
  p.add_argument("--add-probe", action="store_true",
                 help="only run the conv-layer probe (JAX vs PyTorch) and add it to <out>/speed.json (+ .md)")
  p.add_argument("--add-xla-variants", action="store_true",
                 help="only run the oneDNN XLA-flag comparison and add it to <out>/speed.json (+ .md)")
  p.add_argument("--add-scaling", action="store_true",
                 help="only run the data-parallel scaling section (--scaling counts) into <out>/speed.json (+ .md)")
  p.add_argument("--scaling-worker", default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  from gdl_jax import runtime
  added = runtime.apply_xla_defaults()  # as the gdl-jax CLI runs; _CALLER_XLA_FLAGS was read before
  args.rounds = args.rounds or (3 if args.quick else 7)
  args.window_s = args.window_s or (0.05 if args.quick else 0.6)
  args.scan_k = args.scan_k or (2 if args.quick else 4)
  if args.scaling_worker:
    scaling_worker(args.scaling_worker, args.rounds, args.window_s)
    return 0
  if args.add_xla_variants:
    return add_section(args, argv, "xla_variants")
  if args.add_scaling:
    return add_section(args, argv, "scaling")
  if args.add_probe:
    return add_probe(args, argv)

  frameworks = [f.strip() for f in (args.frameworks or ",".join(
      ("jax", "torch", "keras_torch") if args.quick else FRAMEWORKS)).split(",") if f.strip()]
  bad = [f for f in frameworks if f not in FRAMEWORKS]
  if bad:
    raise SystemExit(f"unknown frameworks {bad}; use {FRAMEWORKS}.")
  if "jax" not in frameworks:
    frameworks.insert(0, "jax")
  models = expand_models(args.models, args.quick)
  counts = args.scaling if args.scaling is not None else ("" if args.quick else "1,2,4,8")
  counts = [int(c) for c in counts.split(",") if c.strip()]

  import jax
  report = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine_info(),
            "command": "python benchmarks/speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "quick": args.quick, "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "xla_flags_added": added, "rounds": args.rounds, "window_s": args.window_s, "frameworks": frameworks,
            "versions": {"jax": jax.__version__, "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else "",
                         "numpy": np.__version__}, "notes": []}
  import flax, optax
  report["versions"].update(flax=flax.__version__, optax=optax.__version__)
  log("measuring the float32 matmul peak")
  report["peak"] = _timing.matmul_peak_gflops(1024 if args.quick else 2048, 3 if args.quick else 7)
  workers = start_workers(frameworks, args.tf_path)
  for kind, (w, info) in workers.items():
    report["versions"][kind] = f"{info.get('framework')} {info.get('version')} ({info.get('threads', '?')} threads)"
  if "torch" in workers:
    r = workers["torch"][0].request(cmd="matmul", n=report["peak"]["n"], repeats=5)
    report["peak"]["torch_gflops"] = r.get("gflops")
  report["keras_column"] = ("Keras 3 on its TensorFlow backend (the book's setup)" if "keras_tf" in workers
                            else "Keras 3 on its PyTorch backend" if "keras_torch" in workers else "not measured")
  rows = []
  try:
    for name in models:
      try:
        rows.append(bench_model(name, frameworks, workers, args, report["peak"]))
      except Exception as e:  # noqa: BLE001  (one family failing must not lose the others' numbers)
        log(f"[{name}] failed: {type(e).__name__}: {e}")
        rows.append({"model": name, "batch": 0, "runners": {"jax": {}}, "errors": {"jax": f"{type(e).__name__}: {e}"}})
    report["rows"] = rows
    probe = [m for m in PROBE_MODELS if m in models]
    if not args.no_probe and not args.quick and "torch" in workers and probe:
      log(f"[probe] conv layers of {probe}")
      report["conv_probe"] = conv_probe(workers, probe_shapes(probe), reps=1, rounds=3)
  finally:
    for w, _ in workers.values():
      w.close()
  if counts:
    report["scaling"] = bench_scaling([m for m in SCALING_MODELS if m in models] or models[:1], counts,
                                      max(3, args.rounds // 2), args.window_s)
  for row in rows:
    row["run"] = {"date": report["date"], "command": report["command"], "peak_gflops": report["peak"]["gflops"]}
  old_path = os.path.join(args.out, "speed.json")
  if args.merge and os.path.exists(old_path):
    with open(old_path) as f:
      old = json.load(f)
    names = {r["model"] for r in rows}
    merged = [r for r in old.get("rows", []) if r["model"] not in names]
    report["rows"] = sorted(merged + rows, key=lambda r: list(MODELS).index(r["model"]) if r["model"] in MODELS else 99)
    for key in ("scaling", "conv_probe", "xla_variants"):
      if key not in report and key in old:
        report[key] = old[key]
    report["notes"] = old.get("notes", []) + [
        f"rows {sorted(names)} come from a later run ({report['date']}: `{report['command']}`); "
        f"the other rows from `{old['command']}` ({old['date']})."] + report["notes"]
    report["command"] = old["command"]
    report["date"] = old["date"]
    report["machine"]["loadavg_start"] = old["machine"].get("loadavg_start")
  if not args.quick and not args.no_xla_variants:
    try:
      have = {r["model"] for r in report["rows"]}
      report["xla_variants"] = bench_xla_variants([m for m in XLA_VARIANT_MODELS if m in have],
                                                  max(3, args.rounds // 2), args.window_s)
    except Exception as e:  # noqa: BLE001
      report["notes"].append(f"XLA flag comparison failed: {type(e).__name__}: {e}")
  report["machine"]["loadavg_end"] = round(os.getloadavg()[0], 1)
  print(_write(report, args.out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
