"""Shared test helpers."""

import json
import os
import subprocess
import sys

import numpy as np

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


def photos(size: int, names=("astronaut", "coffee", "chelsea")) -> np.ndarray:
  """Real photographs (scikit-image), centre-cropped square and resized: [N, size, size, 3] in [-1, 1]."""
  import skimage.data
  import skimage.transform
  out = []
  for name in names:
    im = np.asarray(getattr(skimage.data, name)())[..., :3]
    s = min(im.shape[:2])
    y, x = (im.shape[0] - s) // 2, (im.shape[1] - s) // 2
    im = skimage.transform.resize(im[y:y + s, x:x + s], (size, size), anti_aliasing=True)
    out.append(im * 2.0 - 1.0)
  return np.stack(out).astype(np.float32)
