"""Data parallelism: one Mesh over all devices, batches split on the batch axis, params replicated."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  """A 1-D ("data",) mesh over the given devices (default: all devices of all hosts)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise ValueError(f"batch_size={batch_size} does not divide over {n} devices; "
                     f"use a multiple of {n} (e.g. --config.batch_size={max(n, batch_size // n * n)}).")


def shard_batch(batch, mesh: Mesh):
  """Host numpy batch -> global jax arrays split on axis 0 over the mesh (multi-host aware)."""
  sharding = data_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def replicate(tree, mesh: Mesh):
  """Place a pytree fully replicated on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))
