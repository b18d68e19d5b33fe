"""The same train steps on 1 and 8 (forced CPU) devices give the same losses (one step per call,
then two fused in one call)."""

import json
import os
import subprocess
import sys

import numpy as np

_SCRIPT = r"""
import json, sys, jax
from gdl_jax import data, sharding
from gdl_jax.train import loop
from experiments import classifier
ds = data.load("digits")
c = classifier.get_config("tiny")
c.batch_size = 16
task = classifier.build(c, ds.info)
mesh = sharding.make_mesh()
state, keys = loop.init_state(task, c, ds, mesh)
losses = []
for step in range(3):
  batch = sharding.shard_batch(data.batch_at(ds.train, step, c.batch_size, c.seed), mesh)
  assert len(batch["image"].sharding.device_set) == jax.device_count()
  state, m = task.step(state, batch, keys["step"])
  losses.append(float(m["loss"]))
many = loop.multi_step(task.step, 2)   # steps 3-4 fused in one call, batches split on axis 1
stacked = jax.tree.map(lambda *xs: __import__("numpy").stack(xs),
                       *[data.batch_at(ds.train, s, c.batch_size, c.seed) for s in range(3, 5)])
batches = sharding.shard_batch(stacked, mesh, stacked=True)
assert len(batches["image"].sharding.device_set) == jax.device_count()
state, m = many(state, batches, keys["step"])
losses += [float(v) for v in m["loss"]]
print(json.dumps({"devices": jax.device_count(), "losses": losses}))
"""


def _run(n: int) -> dict:
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True,
                       check=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_one_and_eight_devices_same_loss():
  one, eight = _run(1), _run(8)
  assert one["devices"] == 1 and eight["devices"] == 8
  np.testing.assert_allclose(one["losses"], eight["losses"], atol=1e-5, rtol=0)
