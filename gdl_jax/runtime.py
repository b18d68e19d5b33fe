"""Process-level XLA:CPU settings that the entry points (the `gdl-jax` CLI, the benchmarks) apply
before the first computation. Library code never changes them: call `apply_xla_defaults()` at the top
of your own script to get the same, or set GDL_JAX_XLA_DEFAULTS=0 to keep XLA's own defaults.

`--xla_cpu_experimental_ynn_fusion_type=` (an empty list) keeps XLA:CPU's convolutions on its
multi-threaded Eigen kernels instead of YNNPACK fusions. Measured with jax 0.10.2 on 2 CPU cores
(fresh process per setting, 2-4 alternated pairs, median of the paired ratios): the Fashion-MNIST CNN step
1.21x, VAE 1.20x, DDPM digits U-Net 1.23x, PixelCNN digits 1.30x, DCGAN Fashion 1.03x, VAE digits
1.11x, DCGAN digits 0.90x; single 3x3 convs' kernel gradients ~2x (benchmarks/results/speed.md).
The flag is ignored by GPU and TPU backends.
"""

from __future__ import annotations

import os

SWITCH = "GDL_JAX_XLA_DEFAULTS"
CPU_FLAGS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def _initialized() -> bool:
  try:
    from jax._src import xla_bridge
    return bool(xla_bridge.backends_are_initialized())
  except Exception:  # a jax without the helper: assume it may still take effect
    return False


def apply_xla_defaults() -> list[str]:
  """Appends CPU_FLAGS to XLA_FLAGS where the user set neither that flag nor GDL_JAX_XLA_DEFAULTS=0.

  Returns the flags added. Does nothing once a jax backend is initialized (XLA reads XLA_FLAGS when
  the backend starts), so call it before the first jax computation.
  """
  if os.environ.get(SWITCH, "1") == "0" or _initialized():
    return []
  current = os.environ.get("XLA_FLAGS", "")
  added = [f"--{name}={value}" for name, value in CPU_FLAGS.items() if f"--{name}" not in current]
  if added:
    os.environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
  return added
