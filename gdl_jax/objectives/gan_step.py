"""The two-player GAN step: n_critic critic updates then one generator update, in one jitted call.

State layout (gdl_jax.train.state.TrainState):
  params     {"gen": ..., "disc": ...}
  opt_state  {"gen": ..., "disc": ...}        (two optimizers, built outside the step)
  extra      {"gen": batch_stats, "disc": batch_stats}   ({} for a player without BatchNorm)
  ema_params {"gen": EMA of the generator's params} or None;
             so `state.eval_params()["gen"]` is the generator to sample with, EMA or not.

Batch handling for n_critic > 1 (`critic_batches`):
  "reuse" (default, the book's WGAN-GP loop): every critic update sees the whole batch, each with
          fresh latents, fresh interpolation weights and fresh dropout.
  "split": the batch [B, ...] is cut into n_critic micro-batches of B / n_critic, one per critic
          update (the original WGAN algorithm: fresh real data per critic iteration); the
          generator update then uses B / n_critic latents (and the first micro-batch's labels).
Auxiliary classifier (aux_weight > 0, AC-GAN; the critic needs aux_classes = the number of classes
and no label input):
  the critic also minimises aux_weight * cross-entropy of its class head on the real images' labels,
  the generator aux_gen_weight * cross-entropy on its fakes for the labels it was asked for.
Regularisers of the critic (on the critic's own examples, so BatchNorm critics are refused):
  gp_weight  WGAN-GP's (||grad f(x_hat)|| - 1)^2 on random interpolates;
  r1_weight  R1 (Mescheder et al. 2018): r1_weight / 2 * mean_i ||grad_{x_i} sum_j f(x_j)||^2 on the
             real images (StyleGAN2's gamma / 2 convention);
  reg_every  lazy regularisation (Karras et al. 2020): both penalties enter only the critic updates
             whose global index (step * n_critic + i) is a multiple of reg_every, multiplied by
             reg_every (1: every update, the plain form). Skipped updates do not compute them, so
             lazy R1 costs about 1 / reg_every of its double backward pass. lazy_dispatch="host"
             (the default for a jitted step) reads state.step on the host and runs one of two
             compiled programs, with or without the penalty; "cond" (and any jit=False step, which
             must stay traceable) picks it with a lax.cond inside one program - the same numbers,
             but XLA:CPU runs the convolutions inside a conditional far slower (the StyleGAN2
             Fashion-MNIST R1 update: ~30 s in the cond vs ~1 s for a plain step).
Generator randomness (gen_rngs): the names of Linen rng streams the generator draws from in
training (StyleGAN2: ("noise", "mixing")); each gets a fresh key per generator call.
Growing networks (ProGAN; step_kwargs / x_transform): the step passes step_kwargs(state.step)
(e.g. {"alpha": fade-in weight}) as extra keyword arguments to every apply of both players, and
feeds the critic x_transform(x, state.step) instead of the real images x (e.g. average-pooled to
the current resolution); both default to nothing. drift_weight > 0 adds Karras et al.'s drift term
drift_weight * mean(D(x_real)^2) to the critic's loss (keeps WGAN critic scores near 0).
Several generators and critics, other inputs than latents (CycleGAN; `make_two_player_step`): the
same state layout, each player's params a dict of its networks ({"gen": {"g", "f"}, "disc": {"a",
"b"}}), the losses supplied by the experiment; the generator updates first and hands the critic
what it made (e.g. fakes through an image history kept in state.extra).
Batch-norm statistics: the critic's running stats are updated by its own updates only (real and
fake halves pass separately, as in DCGAN); the generator's by the generator update only.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

from gdl_jax.data.info import to_signed
from gdl_jax.objectives import gan as losses
from gdl_jax.train.state import TrainState, ema_update

LOSSES = ("nsgan", "wgan")
CRITIC_BATCHES = ("reuse", "split")


def _tree_l2(tree) -> jax.Array:
  return optax.global_norm(tree) if jax.tree.leaves(tree) else jnp.zeros(())


def apply_player(module, params, stats, *args, train: bool, rngs=None, **kwargs):
  """module.apply with optional batch_stats; returns (output, new batch_stats or the old ones)."""
  variables = {"params": params, **({"batch_stats": stats} if stats else {})}
  if train and stats:
    out, upd = module.apply(variables, *args, train=True, rngs=rngs, mutable=["batch_stats"], **kwargs)
    return out, upd["batch_stats"]
  return module.apply(variables, *args, train=train, rngs=rngs, **kwargs), stats


def init_gan_state(generator, discriminator, gen_optimizer: optax.GradientTransformation,
                   disc_optimizer: optax.GradientTransformation, key: jax.Array, x: jax.Array,
                   labels: Optional[jax.Array] = None, *, latent_dim: int, ema: bool = True) -> TrainState:
  """A step-0 two-player state; x is one example batch in the models' input format ([-1, 1])."""
  kg, kd = jax.random.split(key)
  z = jnp.zeros((x.shape[0], latent_dim), jnp.float32)
  gvars = generator.init(kg, z, labels, train=False)
  dvars = discriminator.init({"params": kd, "dropout": kd}, x, labels, train=False)
  params = {"gen": gvars["params"], "disc": dvars["params"]}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state={"gen": gen_optimizer.init(params["gen"]),
                               "disc": disc_optimizer.init(params["disc"])},
                    extra={"gen": gvars.get("batch_stats", {}), "disc": dvars.get("batch_stats", {})},
                    ema_params={"gen": jax.tree.map(jnp.copy, params["gen"])} if ema else None)


def make_gan_step(generator, discriminator, gen_optimizer: optax.GradientTransformation,
                  disc_optimizer: optax.GradientTransformation, *, latent_dim: int,
                  loss: str = "nsgan", n_critic: int = 1, critic_batches: str = "reuse",
                  gp_weight: float = 0.0, clip_value: float = 0.0, label_noise: float = 0.0,
                  aux_weight: float = 0.0, aux_gen_weight: float = 0.0,
                  r1_weight: float = 0.0, reg_every: int = 1, gen_rngs: tuple[str, ...] = (),
                  drift_weight: float = 0.0, ema_decay: Optional[float] = None,
                  levels: Optional[int] = None, x_key: str = "image",
                  step_kwargs: Optional[Callable[[jax.Array], dict]] = None,
                  x_transform: Optional[Callable[[jax.Array, jax.Array], jax.Array]] = None,
                  jit: bool = True, lazy_dispatch: str = "host"):
  """Returns `step(state, batch, key) -> (state, metrics)`, jitted with the state donated.

  loss: "nsgan" (non-saturating BCE on logits, DCGAN) or "wgan" (Wasserstein critic); add
  gp_weight > 0 for WGAN-GP or clip_value > 0 for the original WGAN (critic params are projected
  into [-clip_value, clip_value] after every critic update, see `losses.clip_params`).
  levels: integer image levels, converted with `to_signed`; None for float data such as points.
  Conditional players (num_classes > 0) read batch["label"]. The key is folded with state.step.
  Metrics (scalars): loss (= d_loss, the loop's generic column), d_loss, g_loss, d_real, d_fake
  (mean D outputs), wasserstein (d_real - d_fake), gp and grad_norm (with gp_weight), r1 and
  r1_grad_norm (with r1_weight; 0 on updates the lazy schedule skips, where reg_applied = 0),
  drift (mean D(x_real)^2, with drift_weight), aux_real /
  aux_fake and aux_acc_real / aux_acc_fake (the class head's cross-entropy and accuracy), l2 norms of
  gradients / params / generator updates; critic metrics are means over the n_critic updates.
  """
  if loss not in LOSSES:
    raise ValueError(f"loss={loss!r} is unknown; use one of {LOSSES}.")
  if critic_batches not in CRITIC_BATCHES:
    raise ValueError(f"critic_batches={critic_batches!r} is unknown; use one of {CRITIC_BATCHES}.")
  if n_critic < 1:
    raise ValueError(f"n_critic must be >= 1; got {n_critic}.")
  if reg_every < 1:
    raise ValueError(f"reg_every must be >= 1 (1 = regularise every critic update); got {reg_every}.")
  if lazy_dispatch not in ("host", "cond"):
    raise ValueError(f"lazy_dispatch={lazy_dispatch!r} is unknown; use 'host' or 'cond'.")
  if (gp_weight or r1_weight) and getattr(discriminator, "norm", "none") == "batch":
    raise ValueError("the gradient penalty needs a critic that treats examples independently; "
                     "use the discriminator with norm='layer' or norm='none', not 'batch'.")
  if clip_value < 0 or gp_weight < 0 or r1_weight < 0 or drift_weight < 0:
    raise ValueError("clip_value, gp_weight, r1_weight and drift_weight must be >= 0.")
  conditional = getattr(generator, "num_classes", 0) > 0
  if aux_weight < 0 or aux_gen_weight < 0:
    raise ValueError("aux_weight and aux_gen_weight must be >= 0.")
  use_aux = aux_weight > 0 or aux_gen_weight > 0
  if use_aux and not (conditional and getattr(discriminator, "aux_classes", 0)):
    raise ValueError("the auxiliary class loss needs a conditional generator (num_classes > 0) and a "
                     "critic with the class head (Discriminator(num_classes=0, aux_classes=num_classes)).")
  aux_kw = {"with_aux": True} if use_aux else {}                  # MLP critics take no with_aux

  def prepare(batch, step_count):
    if x_key not in batch:
      raise ValueError(f"batch has no {x_key!r}; keys are {sorted(batch)}.")
    x = batch[x_key]
    x = to_signed(x, levels) if levels is not None else x.astype(jnp.float32)
    if x_transform is not None:
      x = x_transform(x, step_count)
    labels = batch["label"] if conditional else None
    return x, labels

  def generate(gparams, gstats, n, labels, key, train, kw):
    z = jax.random.normal(key, (n, latent_dim))                                      # [B, Z]
    rngs = {name: jax.random.fold_in(key, i + 1) for i, name in enumerate(gen_rngs)} or None
    return apply_player(generator, gparams, gstats, z, labels, train=train, rngs=rngs, **kw)

  def penalties(dparams, x, fake, labels, k_gp, k_d3, kw):
    """reg_every * (gp_weight * gp + r1_weight / 2 * r1) and its metrics (no reg_every factor)."""
    critic = lambda v: discriminator.apply({"params": dparams}, v, labels, train=True,
                                           rngs={"dropout": k_d3}, **kw)
    value, metrics = jnp.zeros(()), {}
    if gp_weight:
      x_hat = losses.random_interpolates(x, fake, k_gp)
      gp, norms = losses.gradient_penalty(critic, x_hat)
      value = value + gp_weight * gp
      metrics.update(gp=gp, grad_norm=norms.mean())
    if r1_weight:
      r1, norms = losses.r1_penalty(critic, x)
      value = value + 0.5 * r1_weight * r1
      metrics.update(r1=r1, r1_grad_norm=norms.mean())
    return reg_every * value, metrics

  def disc_loss(dparams, dstats, gparams, gstats, x, labels, key, regularise, kw):
    k_z, k_d1, k_d2, k_noise, k_gp, k_d3 = jax.random.split(key, 6)
    fake, _ = generate(gparams, gstats, x.shape[0], labels, k_z, True, kw)           # G stats: unchanged
    fake = jax.lax.stop_gradient(fake)
    real_out, dstats = apply_player(discriminator, dparams, dstats, x, labels, train=True,
                                    rngs={"dropout": k_d1}, **aux_kw, **kw)
    fake_out, dstats = apply_player(discriminator, dparams, dstats, fake, labels, train=True,
                                    rngs={"dropout": k_d2}, **kw)
    if use_aux:
      real_out, real_logits = real_out
    if loss == "nsgan":
      value = losses.nonsaturating_disc_loss(real_out, fake_out, label_noise=label_noise, key=k_noise)
    else:
      value = losses.wasserstein_critic_loss(real_out, fake_out)
    metrics = {"d_loss": value, "d_real": real_out.mean(), "d_fake": fake_out.mean(),
               "wasserstein": real_out.mean() - fake_out.mean()}
    if drift_weight:
      drift = losses.drift_penalty(real_out)
      value = value + drift_weight * drift
      metrics["drift"] = drift
    if use_aux:
      aux = losses.auxiliary_class_loss(real_logits, labels)
      value = value + aux_weight * aux
      metrics.update(aux_real=aux, aux_acc_real=jnp.mean(jnp.argmax(real_logits, -1) == labels))
    if gp_weight or r1_weight:
      reg = lambda: penalties(dparams, x, fake, labels, k_gp, k_d3, kw)
      if reg_every == 1:
        reg_value, reg_metrics = reg()
      else:  # lazy: computed only on the scheduled updates (zeros of the same structure otherwise)
        skip = lambda: jax.tree.map(jnp.zeros_like, jax.eval_shape(reg))
        if isinstance(regularise, bool):                    # host dispatch: known when tracing
          reg_value, reg_metrics = reg() if regularise else skip()
        else:
          reg_value, reg_metrics = jax.lax.cond(regularise, reg, skip)
        reg_metrics["reg_applied"] = jnp.asarray(regularise, jnp.float32)
      value = value + reg_value
      metrics.update(reg_metrics)
    return value, (dstats, metrics)

  def gen_loss(gparams, gstats, dparams, dstats, n, labels, key, kw):
    k_z, k_d = jax.random.split(key)
    fake, gstats = generate(gparams, gstats, n, labels, k_z, True, kw)
    fake_out, _ = apply_player(discriminator, dparams, dstats, fake, labels, train=True,
                               rngs={"dropout": k_d}, **aux_kw, **kw)        # D stats: unchanged
    if use_aux:
      fake_out, fake_logits = fake_out
    value = losses.nonsaturating_gen_loss(fake_out) if loss == "nsgan" else losses.wasserstein_gen_loss(fake_out)
    metrics = {"g_loss": value}
    if use_aux:
      aux = losses.auxiliary_class_loss(fake_logits, labels)
      value = value + aux_gen_weight * aux
      metrics.update(aux_fake=aux, aux_acc_fake=jnp.mean(jnp.argmax(fake_logits, -1) == labels))
    return value, (gstats, metrics)

  def step(state: TrainState, batch, key, pattern: Optional[tuple[bool, ...]] = None):
    """pattern: which critic updates regularise (host dispatch), or None: from state.step."""
    key = jax.random.fold_in(key, state.step)
    k_critic, k_gen = jax.random.split(key)
    kw = step_kwargs(state.step) if step_kwargs is not None else {}
    x, labels = prepare(batch, state.step)
    b = x.shape[0]
    if critic_batches == "split":
      if b % n_critic:
        raise ValueError(f"critic_batches='split' needs batch_size divisible by n_critic={n_critic}; "
                         f"got {b} (use --config.batch_size={max(b // n_critic, 1) * n_critic}).")
      xs = x.reshape((n_critic, b // n_critic) + x.shape[1:])
      ls = None if labels is None else labels.reshape(n_critic, b // n_critic)
    gparams, gstats = state.params["gen"], state.extra["gen"]

    def critic_update(carry, k, xi, li, regularise):
      dparams, dopt, dstats = carry
      (_, (dstats, metrics)), grads = jax.value_and_grad(disc_loss, has_aux=True)(
          dparams, dstats, gparams, gstats, xi, li, k, regularise, kw)
      updates, dopt = disc_optimizer.update(grads, dopt, dparams)
      dparams = optax.apply_updates(dparams, updates)
      if clip_value:
        dparams = losses.clip_params(dparams, clip_value)
      metrics["l2_grads_disc"] = _tree_l2(grads)
      return (dparams, dopt, dstats), metrics

    # A Python loop, not lax.scan: n_critic is small, and XLA:CPU runs conv steps inside a while
    # loop several times slower (the DCGAN Fashion-MNIST step: 2150 ms in a scan, 440 ms unrolled;
    # scan(unroll=True) still emits a one-trip while loop).
    carry, per_update = (state.params["disc"], state.opt_state["disc"], state.extra["disc"]), []
    for i, k in enumerate(jax.random.split(k_critic, n_critic)):
      split = critic_batches == "split"
      xi = xs[i] if split else x
      li = None if labels is None else (ls[i] if split else labels)
      if pattern is not None:
        regularise = pattern[i]
      else:
        regularise = (state.step * n_critic + i) % reg_every == 0                   # lazy schedule
      carry, metrics_i = critic_update(carry, k, xi, li, regularise)
      per_update.append(metrics_i)
    dparams, dopt, dstats = carry
    dmetrics = jax.tree.map(lambda *m: jnp.stack(m), *per_update)
    dmetrics = jax.tree.map(jnp.mean, dmetrics)                                      # mean over n_critic

    n_gen = b // n_critic if critic_batches == "split" else b
    g_labels = None if labels is None else (ls[0] if critic_batches == "split" else labels)
    (_, (gstats, gmetrics)), ggrads = jax.value_and_grad(gen_loss, has_aux=True)(
        gparams, gstats, dparams, dstats, n_gen, g_labels, k_gen, kw)
    gupdates, gopt = gen_optimizer.update(ggrads, state.opt_state["gen"], gparams)
    gparams = optax.apply_updates(gparams, gupdates)

    ema = state.ema_params
    if ema is not None and ema_decay is not None:
      ema = {"gen": ema_update(ema["gen"], gparams, state.step, ema_decay)}
    new_state = state.replace(step=state.step + 1, params={"gen": gparams, "disc": dparams},
                              opt_state={"gen": gopt, "disc": dopt},
                              extra={"gen": gstats, "disc": dstats}, ema_params=ema)
    # "loss" (the loop's generic column) is the critic's loss; the two players' losses are separate.
    metrics = {**dmetrics, **gmetrics, "loss": dmetrics["d_loss"],
               "l2_grads_gen": _tree_l2(ggrads), "l2_params_gen": _tree_l2(gparams),
               "l2_params_disc": _tree_l2(dparams), "l2_updates_gen": _tree_l2(gupdates)}
    return new_state, metrics

  if not jit:
    return step
  if reg_every == 1 or not (gp_weight or r1_weight) or lazy_dispatch == "cond":
    return jax.jit(step, donate_argnums=0)
  programs = {}

  def host_step(state: TrainState, batch, key):
    """Pure in (state, batch, key): the lazy schedule is read from state.step on the host."""
    s = int(jax.device_get(state.step))
    pattern = tuple((s * n_critic + i) % reg_every == 0 for i in range(n_critic))
    if pattern not in programs:          # at most two for n_critic = 1 (with / without penalty)
      programs[pattern] = jax.jit(lambda st, b, k, p=pattern: step(st, b, k, p), donate_argnums=0)
    return programs[pattern](state, batch, key)

  return host_step



def make_two_player_step(gen_loss: Callable, disc_loss: Callable,
                         gen_optimizer: optax.GradientTransformation,
                         disc_optimizer: optax.GradientTransformation, *,
                         critic_inputs: Optional[Callable] = None, jit: bool = True):
  """The general two-player step: one generator update, then one critic update on its outputs.

  Each "player" may be several networks (CycleGAN: params["gen"] = {"g": G, "f": F} and
  params["disc"] = {"a": D_A, "b": D_B}, one optimizer over each dict).
    gen_loss(gparams, dparams, batch, key) -> (loss, (outputs, metrics))
        the generators' objective against the current critics (their params are constants here);
        `outputs` (e.g. the fakes, any pytree) go on to the critic, gradient-stopped;
    critic_inputs(extra, outputs, key) -> (extra, inputs)    (default: (extra, outputs))
        between the updates, e.g. fakes through an image history buffer held in state.extra;
    disc_loss(dparams, batch, inputs, key) -> (loss, metrics)
        the critics' objective on real data and those inputs.
  Returns `step(state, batch, key) -> (state, metrics)` (jitted, state donated; the key is folded
  with state.step). Metrics: both losses' metrics, "loss" (= the generators' total, the loop's
  column), l2 norms of both players' gradients / params and of the generator updates.
  """

  def step(state: TrainState, batch, key):
    key = jax.random.fold_in(key, state.step)
    k_gen, k_mid, k_disc = jax.random.split(key, 3)
    gparams, dparams = state.params["gen"], state.params["disc"]
    (g_value, (outputs, gmetrics)), ggrads = jax.value_and_grad(gen_loss, has_aux=True)(
        gparams, dparams, batch, k_gen)
    gupdates, gopt = gen_optimizer.update(ggrads, state.opt_state["gen"], gparams)
    gparams = optax.apply_updates(gparams, gupdates)

    outputs = jax.lax.stop_gradient(outputs)
    extra = state.extra
    if critic_inputs is not None:
      extra, inputs = critic_inputs(extra, outputs, k_mid)
    else:
      inputs = outputs
    (_, dmetrics), dgrads = jax.value_and_grad(disc_loss, has_aux=True)(dparams, batch, inputs, k_disc)
    dupdates, dopt = disc_optimizer.update(dgrads, state.opt_state["disc"], dparams)
    dparams = optax.apply_updates(dparams, dupdates)

    new_state = state.replace(step=state.step + 1, params={"gen": gparams, "disc": dparams},
                              opt_state={"gen": gopt, "disc": dopt}, extra=extra)
    metrics = {**gmetrics, **dmetrics, "loss": g_value,
               "l2_grads_gen": _tree_l2(ggrads), "l2_grads_disc": _tree_l2(dgrads),
               "l2_params_gen": _tree_l2(gparams), "l2_params_disc": _tree_l2(dparams),
               "l2_updates_gen": _tree_l2(gupdates)}
    return new_state, metrics

  return jax.jit(step, donate_argnums=0) if jit else step
