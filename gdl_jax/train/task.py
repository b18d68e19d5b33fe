"""`Task`: what an experiment hands the loop and the evaluation harness.

An experiment module (experiments/<name>.py) exposes

    get_config(variant="default") -> ml_collections.ConfigDict   # variants: "default", "tiny", ...
    build(config, info: gdl_jax.data.DatasetInfo) -> Task

and everything else (the loop, checkpoints, evaluation, CLI) is generic over the Task.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax

from gdl_jax.train.state import TrainState

Batch = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Task:
  """The pure functions of one experiment.

  init(key, batch) -> TrainState                     (batch: one example batch, for shapes)
  step(state, batch, key) -> (state, metrics)        (jitted, state donated; key is the run's base
                                                      key, the step folds in state.step itself)
  eval_step(state, batch, key) -> metrics            (optional; jitted; per-batch held-out metrics,
                                                      averaged by the loop, e.g. loss or accuracy)
  sample(state, key, n) -> array                     (optional; n samples in the dataset's own
                                                      format: integer levels for images, points,
                                                      token ids for text)
  log_prob(state, batch, key) -> [B] nats            (optional; log p(x) of the discrete data, or
                                                      a lower bound such as IWAE, per example)
  features(state, images) -> [B, F]                  (optional; classifiers only: penultimate
                                                      features for the Fréchet distance)
  sample_labeled(state, key, labels [n]) -> array    (optional; class-conditional models: one
                                                      sample of each requested class; the harness
                                                      reports how often the classifier agrees)
  translate(state, images, direction) -> images      (optional; image-to-image models on two
                                                      domains, CycleGAN: images of domain A as
                                                      integer levels -> B's for direction "ab",
                                                      B -> A for "ba"; the harness scores them)
  save_samples(samples, directory) -> [paths]        (optional; samples that are not images or
                                                      text, e.g. music: writes each of `sample`'s
                                                      outputs as files under directory (.mid,
                                                      .wav, piano-roll .png); the loop's
                                                      samples/ and `gdl-jax sample --out DIR`)
  metrics(state, dataset, key, *, use_features,      (optional; the family's own held-out metrics,
          use_samples) -> dict
                                                      added to `gdl-jax evaluate`'s: CLIP's zero-shot
                                                      accuracy and retrieval recall, a text-to-image
                                                      model's prompt fidelity per guidance scale)
  sample_prompt(state, key, prompts, guidance)       (optional; text-conditioned models: one image
    -> array                                          per prompt (a list of strings; unknown words
                                                      raise CaptionError), at classifier-free
                                                      guidance scale `guidance` (None: the config's);
                                                      `gdl-jax sample RUN --prompt TEXT` calls it)
  """

  init: Callable[[jax.Array, Batch], TrainState]
  step: Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict]]
  eval_step: Optional[Callable[[TrainState, Batch, jax.Array], dict]] = None
  sample: Optional[Callable[[TrainState, jax.Array, int], jax.Array]] = None
  log_prob: Optional[Callable[[TrainState, Batch, jax.Array], jax.Array]] = None
  features: Optional[Callable[[TrainState, jax.Array], jax.Array]] = None
  sample_labeled: Optional[Callable[[TrainState, jax.Array, jax.Array], jax.Array]] = None
  translate: Optional[Callable[[TrainState, jax.Array, str], jax.Array]] = None
  save_samples: Optional[Callable[[Any, str], list]] = None
  metrics: Optional[Callable[..., dict]] = None
  sample_prompt: Optional[Callable[..., jax.Array]] = None
  # Extra artefacts an experiment writes after training (reconstructions, latent plots, ...):
  # write_artifacts(state, data, workdir, key) -> None
  write_artifacts: Optional[Callable[..., None]] = None
