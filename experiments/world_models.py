"""World Models (Ha & Schmidhuber 2018; the book's Ch12, first edition Ch8) on CarRacing-v3.

Run:  gdl-jax world run --workdir runs/world_models --variant cpu          (needs the `world` extra)
      gdl-jax world replay runs/world_models --seed 1000000 --gif replay.gif
      gdl-jax world collect --rollouts DIR --episodes 200 --max_steps 1000  (stage 1 alone)
Variants: default (the paper's sizes: a GPU/TPU recipe, see README), cpu (a CPU budget), tiny (tests).

Stages (each resumable: re-running `world run` on the same --workdir skips what is done):
1. Collect: `collect.episodes` episodes of the Brownian random policy (gdl_jax/world/collect.py),
   64x64 frames, actions, rewards, dones as array_record shards, in `collect.workers` processes,
   into `rollouts` (default: $GDL_DATA_DIR/world_models/carracing_<episodes>x<max_steps>_seed<seed>).
2. V: the Chapter 3 conv VAE (gdl_jax/models/vae.py, experiments/vae_digits.py's Task; z = 32,
   Gaussian decoder, the paper's MSE with a learned scale) on the frames, trained by the project's loop in <workdir>/vae.
3. M: the MDN-RNN (gdl_jax/models/world.py; LSTM, `mdn.num_mixtures` Gaussians per latent dim)
   on V's latent sequences (z drawn from V's posterior, as the paper), predicting z_{t+1}, r_t and
   done_t, in <workdir>/mdn; the same model with one Gaussian (<workdir>/mdn_gaussian) and "next z
   = this z" (a Gaussian around z_t with per-dim spread fitted on the training sequences) are the
   baselines of its held-out NLL (nats per latent dimension, on the episodes V and M never saw).
4. C: the linear controller tanh(W [z, h] + b) -> (steer, gas, brake) by evosax's CMA-ES, in the
   real environment (population rollouts in `controller.workers` processes) and/or inside M's dream
   (fully jitted and vmapped, at temperature `controller.temperature`). Each is then evaluated on
   `eval.seeds` held-out tracks next to the random policy.
Outputs in the workdir: metrics.json, reconstructions.png, real_rollout.gif (frame | V's
reconstruction), dream_rollout.gif (M's dream decoded by V), returns.png, agent.msgpack +
controller_{real,dream}.npy (what `gdl-jax world replay` drives).

MEASURED: see README ("World Models") for the CPU budget's numbers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import ml_collections
import numpy as np

from gdl_jax.configs import ConfigError, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, OneOf, Range

VARIANTS = ("default", "cpu", "tiny")
MODES = ("real", "dream", "both")
RULES = {
    "collect.episodes": POSITIVE_INT, "collect.max_steps": POSITIVE_INT,
    "collect.shard_size": POSITIVE_INT, "collect.workers": POSITIVE_INT,
    "test_fraction": Range(0.0, 0.5, lo_open=True),
    "vae.frame_stride": POSITIVE_INT, "vae.steps": POSITIVE_INT, "vae.batch_size": POSITIVE_INT,
    "vae.latent_dim": POSITIVE_INT, "vae.hidden": POSITIVE_INT, "vae.features": POSITIVE_INT,
    "vae.lr": POSITIVE, "vae.likelihood": OneOf(("logistic", "gaussian")),
    "mdn.hidden": POSITIVE_INT, "mdn.num_mixtures": POSITIVE_INT, "mdn.seq_len": POSITIVE_INT,
    "mdn.steps": POSITIVE_INT, "mdn.batch_size": POSITIVE_INT, "mdn.lr": POSITIVE,
    "mdn.reward_weight": NON_NEGATIVE, "mdn.done_weight": NON_NEGATIVE,
    "controller.mode": OneOf(MODES), "controller.population": Range(2, integer=True),
    "controller.sigma0": POSITIVE, "controller.generations": NON_NEGATIVE_INT,
    "controller.trials": POSITIVE_INT, "controller.max_steps": POSITIVE_INT,
    "controller.workers": POSITIVE_INT, "controller.patience": NON_NEGATIVE_INT, "controller.dream_generations": NON_NEGATIVE_INT,
    "controller.dream_trials": POSITIVE_INT, "controller.dream_steps": POSITIVE_INT,
    "controller.temperature": POSITIVE, "controller.restart": NON_NEGATIVE_INT,
    "eval.seeds": POSITIVE_INT, "eval.max_steps": POSITIVE_INT, "eval.gif_steps": POSITIVE_INT,
}


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  """The paper's sizes (default), a CPU budget (cpu), or seconds (tiny)."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; use one of {VARIANTS}.")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.rollouts = ""   # "" -> $GDL_DATA_DIR/world_models/carracing_<episodes>x<max_steps>_seed<seed>
  c.test_fraction = 0.1
  c.collect = ml_collections.ConfigDict(dict(episodes=10000, max_steps=1000, shard_size=16, workers=2))
  c.vae = ml_collections.ConfigDict(dict(
      frame_stride=10, steps=20000, batch_size=100, lr=1e-3, latent_dim=32,
      features=(32, 64, 128, 256), hidden=1024,
      # gaussian (the paper's MSE, learned scale): the discretized logistic went non-finite twice
      # on CarRacing's flat colours (cpu runs, steps 128 and 201, clip norm 100 and 1)
      likelihood="gaussian"))
  c.mdn = ml_collections.ConfigDict(dict(
      hidden=256, num_mixtures=5, seq_len=100, steps=20000, batch_size=100, lr=1e-3,
      reward_weight=1.0, done_weight=1.0))
  c.controller = ml_collections.ConfigDict(dict(
      mode="both", population=64, sigma0=0.1, generations=300, trials=16, max_steps=1000, workers=64,
      # patience: real-environment fitness rollouts end after this many steps without a new tile,
      # booking -0.1 per remaining step (0 = off, the paper; evaluation never cuts)
      patience=0, dream_generations=300, dream_trials=16, dream_steps=1000, temperature=1.15,
      # restart: 0 = the run's own CMA-ES random stream; k > 0 = an independent k-th stream, to
      # restart C on the same V and M (a copy of the run without es_*.msgpack / controller_*.npy)
      restart=0))
  c.eval = ml_collections.ConfigDict(dict(seeds=100, max_steps=1000, gif_steps=300))
  if variant == "cpu":  # what 2 shared CPU cores finish in about an hour and a quarter (see README)
    # 200 episodes and M 4000 x 32 windows: with 40 episodes and 1500 x 16 the MDN did not beat
    # the unimodal RNN (-1.084 vs -1.095); here -1.316 vs -1.308 (README, World Models)
    c.collect.update(episodes=200, max_steps=1000, shard_size=4, workers=2)
    c.vae.update(frame_stride=4, steps=2000, batch_size=64, features=(16, 32, 64, 128), hidden=256,
                 lr=5e-4)
    c.mdn.update(hidden=128, seq_len=100, steps=4000, batch_size=32)
    c.controller.update(mode="both", population=16, generations=60, trials=1, max_steps=1000,
                        patience=100, workers=2, dream_generations=60, dream_trials=8,
                        dream_steps=1000)
    c.eval.update(seeds=16, max_steps=1000, gif_steps=200)
  elif variant == "tiny":
    c.collect.update(episodes=2, max_steps=12, shard_size=1, workers=1)
    c.test_fraction = 0.5
    c.vae.update(frame_stride=1, steps=2, batch_size=4, features=(4, 8), hidden=16, latent_dim=4)
    c.mdn.update(hidden=8, num_mixtures=2, seq_len=4, steps=2, batch_size=2)
    c.controller.update(mode="both", population=4, generations=1, trials=1, max_steps=5, workers=1,
                        dream_generations=2, dream_trials=2, dream_steps=5)
    c.eval.update(seeds=2, max_steps=5, gif_steps=4)
  return c


def check(config) -> None:
  """Values (RULES, with gdl_jax.configs) and constraints between keys; each error names the fix."""
  from gdl_jax.configs import check_config
  check_config(config, None, rules=RULES, experiment="world_models")
  if int(config.collect.episodes) < 2:
    raise ConfigError(f"collect.episodes={config.collect.episodes}: at least 2 are needed (one is "
                      "held out for M's NLL); pass --config.collect.episodes=2 or more.")


# ---------------------------------------------------------------------------------------------
# helpers

def rollouts_dir(config) -> str:
  if config.rollouts:
    return str(config.rollouts)
  from gdl_jax.data import default_data_dir
  c = config.collect
  return os.path.join(default_data_dir(), "world_models",
                      f"carracing_{int(c.episodes)}x{int(c.max_steps)}_seed{int(config.seed)}")


def _split(n: int, test_fraction: float) -> int:
  """Number of training episodes: the last ones (at least one) are held out."""
  n_test = min(max(int(round(n * test_fraction)), 1), n - 1)
  return n - n_test


def _vae_config(config) -> ml_collections.ConfigDict:
  from experiments.vae_digits import model_config
  from gdl_jax.configs import base_config
  v = config.vae
  c = base_config("carracing_frames", steps=int(v.steps), batch_size=int(v.batch_size), lr=float(v.lr),
                  seed=int(config.seed), schedule="cosine", warmup_steps=min(100, int(v.steps) // 10),
                  final_lr_frac=0.05, clip_norm=1.0)  # 100 (vae_digits'): non-finite at step 128 of the cpu run
  c.eval_batches = 4
  c.model = model_config(latent_dim=int(v.latent_dim), features=tuple(v.features), hidden=int(v.hidden),
                         likelihood=str(v.likelihood), eval_step_k=0, eval_k=4, iwae_chunk=4)
  return c


def _mdn_config(config, num_mixtures: int) -> ml_collections.ConfigDict:
  from gdl_jax.configs import base_config
  m = config.mdn
  c = base_config("carracing_latents", steps=int(m.steps), batch_size=int(m.batch_size), lr=float(m.lr),
                  seed=int(config.seed), schedule="cosine", warmup_steps=min(100, int(m.steps) // 10),
                  final_lr_frac=0.05, clip_norm=1.0)
  c.eval_batches = 4
  c.model = ml_collections.ConfigDict(dict(hidden=int(m.hidden), num_mixtures=int(num_mixtures),
                                           reward_weight=float(m.reward_weight),
                                           done_weight=float(m.done_weight)))
  return c


def vae_kwargs(config) -> dict:
  v = config.vae
  return dict(image_shape=(64, 64, 3), levels=256, latent_dim=int(v.latent_dim),
              features=tuple(int(f) for f in v.features), hidden=int(v.hidden),
              likelihood=str(v.likelihood))


def mdn_kwargs(config, num_mixtures: int | None = None) -> dict:
  return dict(latent_dim=int(config.vae.latent_dim), action_dim=3, hidden=int(config.mdn.hidden),
              num_mixtures=int(config.mdn.num_mixtures if num_mixtures is None else num_mixtures))


def _save_tree(path: str, tree) -> None:
  import flax.serialization
  from gdl_jax.train import rundir
  rundir.atomic_write(path, flax.serialization.msgpack_serialize(
      flax.serialization.to_state_dict(_to_numpy(tree))))


def _load_tree(path: str):
  import flax.serialization
  with open(path, "rb") as f:
    return flax.serialization.msgpack_restore(f.read())


def _to_numpy(tree):
  import jax
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _write_json(path: str, obj) -> None:
  from gdl_jax.train import rundir
  rundir.atomic_write(path, json.dumps(obj, indent=1, sort_keys=True, default=float))


# ---------------------------------------------------------------------------------------------
# stage 2: V

def mdn_task(config, num_mixtures: int):
  """M as a Task for the project's loop: batches of latent windows (DatasetInfo kind "latents")."""
  import jax
  from gdl_jax.models.world import MDNRNN
  from gdl_jax.objectives.mdn import mdn_loss
  from gdl_jax.optim import make_optimizer
  from gdl_jax.train.state import TrainState
  from gdl_jax.train.step import make_train_step
  from gdl_jax.train.task import Task
  mc = _mdn_config(config, num_mixtures)
  model = MDNRNN(**mdn_kwargs(config, num_mixtures))
  optimizer = make_optimizer(mc.optimizer, int(mc.steps))
  rw, dw = float(mc.model.reward_weight), float(mc.model.done_weight)

  def init(key, batch):
    B = batch["mu"].shape[0]
    params = model.init(key, model.initial_carry((B,)), batch["mu"][:, 0], batch["action"][:, 0])
    return TrainState.create(params["params"], optimizer)

  def loss_fn(params, extra, batch, key):
    loss, terms = mdn_loss(model, params, batch, key, reward_weight=rw, done_weight=dw)
    return loss, (extra, terms)

  @jax.jit
  def eval_step(state, batch, key):
    return mdn_loss(model, state.params, batch, key, reward_weight=rw, done_weight=dw)[1]

  return Task(init=init, step=make_train_step(loss_fn, optimizer), eval_step=eval_step), mc, model


def windows(latents: list[dict], seq_len: int) -> dict:
  """Episodes' latents -> windows of seq_len + 1 steps (stride seq_len, the last one padded and
  masked): {"mu", "logvar" [N, L+1, Z], "action" [N, L+1, 3], "reward", "done", "mask" [N, L+1]}."""
  L = int(seq_len) + 1
  out = {k: [] for k in ("mu", "logvar", "action", "reward", "done", "mask")}
  for ep in latents:
    T = len(ep["mu"])
    for s in range(0, max(T - 1, 1), int(seq_len)):
      e = min(s + L, T)
      pad = L - (e - s)
      for k, src in (("mu", "mu"), ("logvar", "logvar"), ("action", "actions"), ("reward", "rewards"),
                     ("done", "dones")):
        x = ep[src][s:e]
        out[k].append(np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)]))
      out["mask"].append(np.concatenate([np.ones(e - s, np.float32), np.zeros(pad, np.float32)]))
  return {k: np.stack(v).astype(np.float32) for k, v in out.items()}


def heldout_nll(model, params, data: dict, key, batch: int = 64) -> float:
  """M's NLL of the next z (nats per latent dim) over the windows, z drawn with `key` per chunk."""
  import jax
  from gdl_jax.objectives.mdn import mdn_loss
  f = jax.jit(lambda p, b, k: mdn_loss(model, p, b, k)[1]["nll_z"])
  tot, cnt = 0.0, 0.0
  for i in range(0, len(data["mu"]), batch):
    b = {k: v[i:i + batch] for k, v in data.items()}
    w = float(b["mask"][:, 1:].sum())
    tot += float(f(params, b, jax.random.fold_in(key, i))) * w
    cnt += w
  return tot / max(cnt, 1.0)


def persistence_nll(train: dict, test: dict, key, batch: int = 64) -> tuple[float, np.ndarray]:
  """The "next z = this z" baseline: sigma per dim fitted (MLE) on the training windows' steps,
  NLL on the test windows with the same posterior draws as `heldout_nll`."""
  import jax
  import jax.numpy as jnp
  from gdl_jax.objectives.mdn import persistence_log_prob

  def draws(data, key):
    for i in range(0, len(data["mu"]), batch):
      b = {k: v[i:i + batch] for k, v in data.items()}
      eps = jax.random.normal(jax.random.fold_in(key, i), b["mu"].shape, jnp.float32)
      z = np.asarray(b["mu"] + np.exp(0.5 * b["logvar"]) * np.asarray(eps))
      yield z, b["mask"][:, 1:]

  sq, n = 0.0, 0.0
  for z, m in draws(train, jax.random.fold_in(key, 1)):
    sq = sq + ((z[:, 1:] - z[:, :-1]) ** 2 * m[..., None]).sum((0, 1))
    n += m.sum()
  log_sigma = 0.5 * np.log(np.maximum(sq / max(n, 1.0), 1e-8))                     # [Z]
  tot, cnt = 0.0, 0.0
  for z, m in draws(test, key):
    lp = np.asarray(persistence_log_prob(z[:, 1:], z[:, :-1], log_sigma)).mean(-1)   # [B, T]
    tot += float(-(lp * m).sum())
    cnt += float(m.sum())
  return tot / max(cnt, 1.0), log_sigma


# ---------------------------------------------------------------------------------------------
# stage 4: C

def _es_path(workdir: str, mode: str) -> str:
  return os.path.join(workdir, f"es_{mode}.msgpack")


def train_controller(mode: str, config, agent, workdir: str, z0s: np.ndarray) -> tuple[np.ndarray, list]:
  """CMA-ES on the controller, in the real environment or in M's dream; resumable per generation
  (<workdir>/es_<mode>.msgpack). Returns (the distribution's mean, history rows)."""
  import flax.serialization
  import jax
  import jax.numpy as jnp
  from gdl_jax import progress
  from gdl_jax.models.world import controller_size
  from gdl_jax.world import dream, env as env_lib
  from gdl_jax.world.es import CMAES
  from gdl_jax.world.rollout import RolloutPool
  cc = config.controller
  Z, H = int(config.vae.latent_dim), int(config.mdn.hidden)
  n = controller_size(Z, H)
  es = CMAES(n, int(cc.population), float(cc.sigma0))
  key = jax.random.fold_in(jax.random.key(int(config.seed)), {"real": 1, "dream": 2}[mode])
  if int(cc.get("restart", 0)):
    key = jax.random.fold_in(key, 1000 + int(cc.restart))
  state = es.init(jax.random.fold_in(key, 0), jnp.zeros((n,)))
  history: list = []
  gens = int(cc.generations if mode == "real" else cc.dream_generations)
  path = _es_path(workdir, mode)
  if os.path.exists(path):
    saved = _load_tree(path)
    state = flax.serialization.from_state_dict(state, saved["es"])
    history = json.loads(bytes(saved["history"]).decode())
  if len(history) >= gens:
    return np.asarray(es.mean(state)), history
  _, mdn = agent.modules()
  pool = (RolloutPool(agent, int(cc.max_steps), int(cc.workers), int(cc.get("patience", 0)))
          if mode == "real" else None)
  trials = int(cc.trials if mode == "real" else cc.dream_trials)
  bar = progress.bar(desc=f"CMA-ES ({mode})", total=gens, unit="gen")
  bar.update(len(history))
  try:
    for g in range(len(history), gens):
      k_ask, k_tell, k_eval = jax.random.split(jax.random.fold_in(key, g + 1), 3)
      pop, state = es.ask(k_ask, state)
      t0 = time.time()
      if mode == "real":
        seeds = [env_lib.TRAIN_SEED_BASE + g * trials + j for j in range(trials)]
        R = pool.returns(np.asarray(pop), seeds).mean(1)
      else:
        idx = np.asarray(jax.random.choice(k_eval, len(z0s), (trials,)))
        R = np.asarray(dream.population_returns(
            mdn, agent.mdn_params, pop, jnp.asarray(z0s[idx]), k_eval, steps=int(cc.dream_steps),
            temperature=float(cc.temperature)))
      state = es.tell(k_tell, pop, -jnp.asarray(R), state)
      history.append({"generation": g + 1, "mean": float(np.mean(R)), "max": float(np.max(R)),
                      "min": float(np.min(R)), "seconds": time.time() - t0})
      _save_tree(path, {"es": flax.serialization.to_state_dict(state),
                        "history": np.frombuffer(json.dumps(history).encode(), np.uint8)})
      bar.update(1)
      bar.set_postfix({"mean": f"{np.mean(R):.1f}", "max": f"{np.max(R):.1f}"})
  finally:
    bar.close()
    if pool is not None:
      pool.close()
  return np.asarray(es.mean(state)), history


# ---------------------------------------------------------------------------------------------
# the pipeline

def load_agent(workdir: str):
  """The Agent (V and M) saved in a run directory, and the run's config."""
  from gdl_jax.world.rollout import Agent
  with open(os.path.join(workdir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  saved = _load_tree(os.path.join(workdir, "agent.msgpack"))
  return Agent(vae_kwargs(config), saved["vae"], mdn_kwargs(config), saved["mdn"]), config


def run(config, workdir: str, *, quiet: bool = False) -> dict:
  """All four stages into `workdir` (resuming what is there); returns metrics.json's content."""
  import jax
  from gdl_jax import progress
  from gdl_jax.data.info import Dataset, DatasetInfo
  from gdl_jax.train import loop
  from gdl_jax.world import collect as col
  from gdl_jax.world import env as env_lib
  from gdl_jax.models.world import MDNRNN
  from gdl_jax.world.rollout import Agent, RolloutPool
  check(config)
  env_lib.require("gymnasium")
  env_lib.require("evosax")
  loop.prepare_workdir(workdir, config, experiment="world_models")
  t_start = time.time()
  metrics_path = os.path.join(workdir, "metrics.json")
  metrics = loop.read_json(metrics_path) or {}
  timing = metrics.setdefault("seconds", {})
  key = jax.random.key(int(config.seed))

  # 1. collect
  t0 = time.time()
  rdir = rollouts_dir(config)
  cc = config.collect
  col.collect(rdir, episodes=int(cc.episodes), max_steps=int(cc.max_steps), seed=int(config.seed),
              shard_size=int(cc.shard_size), workers=int(cc.workers))
  n_train = _split(int(cc.episodes), float(config.test_fraction))
  timing.setdefault("collect", time.time() - t0)
  metrics["rollouts"] = rdir

  # 2. V
  agent_path = os.path.join(workdir, "agent.msgpack")
  vcfg = _vae_config(config)
  from experiments import vae_digits
  from gdl_jax.models.vae import VAE
  vae = VAE(**vae_kwargs(config))
  vae_params_path = os.path.join(workdir, "vae_params.msgpack")
  if not os.path.exists(vae_params_path):
    t0 = time.time()
    stride = int(config.vae.frame_stride)
    train_f, test_f = [], []
    for i, ep in enumerate(col.iter_rollouts(rdir)):
      (train_f if i < n_train else test_f).append(ep["frames"][::stride])
    train_f, test_f = np.concatenate(train_f), np.concatenate(test_f)
    info = DatasetInfo(name="carracing_frames", kind="image", shape=(64, 64, 3), levels=256,
                       source=f"CarRacing-v3 random-policy frames in {rdir}")
    frames = Dataset(info, {"image": train_f}, {"image": test_f})
    task = vae_digits.build(vcfg, info)
    task = dataclasses.replace(task, write_artifacts=None, sample=None, log_prob=None)
    state = loop.fit(task, vcfg, frames, os.path.join(workdir, "vae"), experiment="world_models_vae",
                     progress=not quiet)
    vparams = _to_numpy(state.eval_params())
    _write_reconstructions(vae, vparams, test_f, os.path.join(workdir, "reconstructions.png"))
    _save_tree(vae_params_path, vparams)
    timing["vae"] = time.time() - t0
  vparams = _load_tree(vae_params_path)

  # latents of every episode (V's posterior), cached
  lat_path = os.path.join(workdir, "latents.npz")
  if not os.path.exists(lat_path):
    enc = jax.jit(lambda p, x: vae.apply({"params": p}, x, method=vae.encode))
    eps_lat = []
    for ep in progress.bar(col.iter_rollouts(rdir), desc="encoding episodes", total=int(cc.episodes),
                           unit="episode"):
      mus, lvs = [], []
      for i in range(0, len(ep["frames"]), 256):
        q = enc(vparams, ep["frames"][i:i + 256])
        mus.append(np.asarray(q.mean))
        lvs.append(np.asarray(q.logvar))
      eps_lat.append({"mu": np.concatenate(mus), "logvar": np.concatenate(lvs),
                      "actions": ep["actions"], "rewards": ep["rewards"],
                      "dones": ep["dones"].astype(np.float32)})
    lengths = np.asarray([len(e["mu"]) for e in eps_lat])
    from gdl_jax.train import rundir
    import io
    buf = io.BytesIO()
    np.savez(buf, lengths=lengths, **{k: np.concatenate([e[k] for e in eps_lat]) for k in eps_lat[0]})
    rundir.atomic_write(lat_path, buf.getvalue())
  with np.load(lat_path) as f:
    cuts = np.cumsum(f["lengths"])[:-1]
    arrays = {k: np.split(f[k], cuts) for k in ("mu", "logvar", "actions", "rewards", "dones")}
  latents = [{k: arrays[k][i] for k in arrays} for i in range(len(cuts) + 1)]

  # 3. M and its baselines
  seq = int(config.mdn.seq_len)
  w_train, w_test = windows(latents[:n_train], seq), windows(latents[n_train:], seq)
  info = DatasetInfo(name="carracing_latents", kind="latents", shape=w_train["mu"].shape[1:],
                     source=f"V's posteriors of {rdir}")
  lat_ds = Dataset(info, w_train, w_test)
  eval_key = jax.random.fold_in(key, 7)
  mdn_params = {}
  for name, K in (("mdn", int(config.mdn.num_mixtures)), ("mdn_gaussian", 1)):
    p_path = os.path.join(workdir, f"{name}_params.msgpack")
    if not os.path.exists(p_path):
      t0 = time.time()
      task, mc, model = mdn_task(config, K)
      mc.batch_size = min(int(mc.batch_size), len(w_train["mu"]) // jax.device_count() * jax.device_count())
      state = loop.fit(task, mc, lat_ds, os.path.join(workdir, name), experiment=f"world_models_{name}",
                       progress=not quiet)
      _save_tree(p_path, _to_numpy(state.params))
      timing[name] = time.time() - t0
    mdn_params[name] = _load_tree(p_path)
    if f"{name}_heldout_nll" not in metrics:
      model = MDNRNN(**mdn_kwargs(config, K))
      metrics[f"{name}_heldout_nll"] = heldout_nll(model, mdn_params[name], w_test, eval_key)
  metrics["persistence_heldout_nll"], _ = persistence_nll(w_train, w_test, eval_key)
  metrics["m_beats_baselines"] = bool(metrics["mdn_heldout_nll"] < min(
      metrics["mdn_gaussian_heldout_nll"], metrics["persistence_heldout_nll"]))
  agent = Agent(vae_kwargs(config), vparams, mdn_kwargs(config), mdn_params["mdn"])
  if not os.path.exists(agent_path):
    _save_tree(agent_path, {"vae": vparams, "mdn": mdn_params["mdn"]})
  _write_json(metrics_path, metrics)

  # 4. C
  z0s = np.stack([lat["mu"][0] for lat in latents[:n_train]])
  mode = str(config.controller.mode)
  modes = ("real", "dream") if mode == "both" else (mode,)
  ctrls = {}
  for m in modes:
    t0 = time.time()
    ctrl, hist = train_controller(m, config, agent, workdir, z0s)
    np.save(os.path.join(workdir, f"controller_{m}.npy"), ctrl)
    ctrls[m] = ctrl
    metrics[f"{m}_history"] = hist
    timing.setdefault(f"controller_{m}", time.time() - t0)
    _write_json(metrics_path, metrics)

  # evaluation on held-out tracks: the random policy and each controller, in the real environment
  ev = config.eval
  seeds = [env_lib.EVAL_SEED_BASE + j for j in range(int(ev.seeds))]
  t0 = time.time()
  with RolloutPool(agent, int(ev.max_steps), int(config.controller.workers)) as pool:
    if "random_returns" not in metrics:
      metrics["random_returns"] = pool.random_returns(seeds).tolist()
    for m, ctrl in ctrls.items():
      if f"{m}_eval_returns" not in metrics:
        metrics[f"{m}_eval_returns"] = pool.returns(ctrl[None], seeds)[0].tolist()
        _write_json(metrics_path, metrics)
  timing.setdefault("evaluation", time.time() - t0)
  for k in ["random"] + [f"{m}_eval" for m in ctrls]:
    r = np.asarray(metrics[f"{k}_returns"])
    metrics[f"{k}_mean"], metrics[f"{k}_std"] = float(r.mean()), float(r.std())
  metrics["eval_seeds"] = seeds
  metrics["eval_max_steps"] = int(ev.max_steps)
  _write_json(metrics_path, metrics)

  # figures
  main = "real" if "real" in ctrls else "dream"
  write_rollout_gif(agent, ctrls[main], seeds[0], int(ev.gif_steps), os.path.join(workdir, "real_rollout.gif"))
  write_dream_gif(agent, ctrls.get("dream", ctrls[main]), z0s[0], int(ev.gif_steps),
                  float(config.controller.temperature), jax.random.fold_in(key, 9),
                  os.path.join(workdir, "dream_rollout.gif"))
  write_returns_plot(metrics, os.path.join(workdir, "returns.png"))
  timing["total_this_call"] = time.time() - t_start
  _write_json(metrics_path, metrics)
  return metrics


# ---------------------------------------------------------------------------------------------
# figures and replay

def _decode(vae, vparams, z):
  import jax
  from gdl_jax.samplers.vae import decode
  return np.asarray(jax.jit(lambda p, z: decode(vae, p, z))(vparams, np.asarray(z, np.float32)))


def _write_reconstructions(vae, vparams, frames, path):
  import jax
  from gdl_jax.evaluation.grids import save_grid
  from gdl_jax.samplers.vae import reconstruct
  idx = np.linspace(0, len(frames) - 1, min(8, len(frames))).astype(int)
  x = frames[idx]
  recon = np.asarray(jax.jit(lambda p, x: reconstruct(vae, p, x))(vparams, x))
  save_grid(np.concatenate([x, recon]), path, nrow=len(idx), levels=256)


def write_rollout_gif(agent, ctrl, seed: int, steps: int, path: str) -> dict:
  """A real rollout: the frame and V's reconstruction of it side by side."""
  from gdl_jax.evaluation.grids import save_gif
  from gdl_jax.world.rollout import make_policy, real_rollout
  vae, _ = agent.modules()
  out = real_rollout(make_policy(agent), ctrl, seed, steps, record=True)
  recon = _decode(vae, agent.vae_params, out["z"])
  every = max(1, len(recon) // 100)
  frames = [np.concatenate([f, r], 1) for f, r in zip(out["frames"][::every], recon[::every])]
  save_gif(frames, path, levels=256, duration_ms=80)
  return out


def write_dream_gif(agent, ctrl, z0, steps: int, temperature: float, key, path: str) -> None:
  """A dream rollout inside M, decoded by V."""
  import jax.numpy as jnp
  from gdl_jax.evaluation.grids import save_gif
  from gdl_jax.world.dream import dream_rollout
  vae, mdn = agent.modules()
  _, zs, alive = dream_rollout(mdn, agent.mdn_params, jnp.asarray(ctrl), jnp.asarray(z0), key,
                               steps=int(steps), temperature=float(temperature))
  n = max(int(np.asarray(alive).sum()), 1)
  frames = _decode(vae, agent.vae_params, np.asarray(zs)[:n])
  every = max(1, len(frames) // 100)
  save_gif(list(frames[::every]), path, levels=256, duration_ms=80)


def write_returns_plot(metrics: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, m in zip(axes, ("real", "dream")):
    hist = metrics.get(f"{m}_history") or []
    if hist:
      g = [h["generation"] for h in hist]
      ax.plot(g, [h["mean"] for h in hist], label="population mean")
      ax.plot(g, [h["max"] for h in hist], label="population max")
    if "random_mean" in metrics:
      ax.axhline(metrics["random_mean"], color="grey", ls="--", label="random policy (held-out)")
    if f"{m}_eval_mean" in metrics:
      ax.axhline(metrics[f"{m}_eval_mean"], color="k", ls=":", label="controller (held-out)")
    ax.set_xlabel("generation")
    ax.set_ylabel("return" + (" (in M's dream)" if m == "dream" else " (training tracks)"))
    ax.set_title(f"CMA-ES in the {'real environment' if m == 'real' else 'dream'}")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def replay(workdir: str, seed: int, *, controller: str = "real", max_steps: int | None = None,
           gif: str | None = None) -> dict:
  """Drives a run's saved controller on track `seed`: {"return", "steps"} (and a GIF)."""
  from gdl_jax.data.info import DataError
  from gdl_jax.world.rollout import make_policy, real_rollout
  path = os.path.join(workdir, f"controller_{controller}.npy")
  for p in (os.path.join(workdir, "agent.msgpack"), path):
    if not os.path.exists(p):
      raise DataError(f"{p} does not exist: train first (`gdl-jax world run --workdir {workdir}`)"
                      + (f", or pass --controller {'dream' if controller == 'real' else 'real'}"
                         if "controller_" in p else "") + ".")
  agent, config = load_agent(workdir)
  ctrl = np.load(path)
  steps = int(max_steps or config.eval.max_steps)
  if gif:
    out = write_rollout_gif(agent, ctrl, seed, steps, gif)
  else:
    out = real_rollout(make_policy(agent), ctrl, seed, steps)
  return {"return": out["return"], "steps": out["steps"]}


if __name__ == "__main__":
  from gdl_jax.cli import main
  sys.exit(main(["world", "run", *sys.argv[1:]]))
