"""Chapter 8: a denoising diffusion model on Fashion-MNIST (28x28x1, 256 levels).

Run:  gdl-jax train ddpm --dataset fashion_mnist --workdir runs/ddpm_fashion_mnist
      gdl-jax evaluate runs/ddpm_fashion_mnist
The same Task as experiments/ddpm_digits.py with a larger U-Net: 32-64-64 channels at 28-14-7
(no padding needed), two residual blocks per level, self-attention at 7x7 and in the bottleneck,
dropout 0.1, cosine schedule with T=1000, v-prediction, EMA 0.9995; Task.sample: DDIM-50 with
eta=1 (ancestral sampling of the 50-step chain), integer levels 0..255; log_prob: minus that
chain's variational bound (exact, 50 network calls).

Variants: `default` (1.6M parameters, 20k steps at batch 128) is sized for an accelerator; on the
shared 2-core CPU this was built on, one of its steps took 6.5 s and DDIM-50 drew 1.4 images/s,
so it is NOT measured. `small` (16-32-32 channels, one block per level, 1500 steps at batch 32)
runs in ~13 CPU minutes; `tiny` runs the pipeline in about a minute.

MEASURED, variant small with `--steps 5000 --config.model.ema_decay=0.999` (34 min on 2 CPU cores
shared with 3 other runs): DDIM-50 (eta=1) samples: classifier Fréchet distance 9.59 (1000 samples
vs 1000 test images), novelty ratio 1.08, no exact copies - the lowest FD of the Fashion-MNIST
table (cGAN small 9.98, WGAN-GP small 15.3, VAE 17.7; benchmarks/results/quality_fashion_mnist.md).
Other samplers of the same weights at 200 samples each (FD at 200 samples is biased upwards, so
compare within this line only): DDIM-50 eta=1 17.3, DDIM-1000 eta=0 17.2, DDPM (all 1000
ancestral steps) 17.0 (`gdl-jax evaluate RUN --config.model.sampler_steps=1000
--config.model.sampler_eta=0.0`). The 1500-step `small` default: FD 17.4 on 500 samples, bound
4.00 bits/dim on the first 1000 test images.
"""

from __future__ import annotations

import ml_collections

from experiments._common import base_config, shrink
from experiments.ddpm_digits import build as _build
from experiments.ddpm_digits import NEEDS, RULES, check, model_config  # noqa: F401 (the CLI's checks)


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  c = base_config("fashion_mnist", steps=20000, batch_size=128, lr=2e-4, schedule="cosine",
                  warmup_steps=1000, final_lr_frac=0.1, clip_norm=1.0)
  c.eval_batches = 4
  c.model = model_config(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=2,
                         attention_levels=(2,), dropout=0.1, ema_decay=0.9995,
                         ddpm_artifacts=False)
  if variant == "small":  # a few CPU minutes: a 16-32-32 U-Net, one block per level
    c.steps, c.batch_size = 1500, 32
    c.log_every, c.eval_every, c.ckpt_every = 75, 375, 375
    c.optimizer.update(lr=1e-3, warmup_steps=100)
    c.model.update(base_channels=16, num_res_blocks=1, dropout=0.0, ema_decay=0.995)
  elif variant == "tiny":
    shrink(c, steps=4, batch_size=8)
    c.model.update(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(),
                   dropout=0.0, num_timesteps=50, sampler_steps=5, vlb_chain_steps=10, vlb_steps=4,
                   eval_vlb_steps=2, trajectory_columns=4)
  elif variant != "default":
    raise ValueError(f"unknown variant {variant!r}; use 'default', 'small' or 'tiny'.")
  return c


def build(config: ml_collections.ConfigDict, info) -> "Task":  # noqa: F821
  """The diffusion Task of experiments/ddpm_digits.py (generic over image datasets)."""
  return _build(config, info)
