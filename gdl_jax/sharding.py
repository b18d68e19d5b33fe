"""Data parallelism: one Mesh over all devices, batches split on the batch axis, params replicated.

Multi-host (one process per host, after `jax.distributed.initialize()`): the mesh spans every
process's devices, ordered by process, so process p holds the p-th contiguous block of rows of a
global batch; each process loads only that block (`process_rows`) and `shard_batch` assembles the
global array from the blocks. Files are written by one process (`is_writer()`, process 0).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def is_writer() -> bool:
  """True in the one process that writes run files (process 0; the only one without multi-host)."""
  return jax.process_index() == 0


def make_mesh(devices=None) -> Mesh:
  """A 1-D ("data",) mesh over the given devices (default: all devices of all hosts), ordered by
  (process, device id) so that each process's devices hold one contiguous block of the batch."""
  devices = jax.devices() if devices is None else devices
  devices = sorted(devices, key=lambda d: (d.process_index, d.id))
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


def process_rows(global_rows: int, mesh: Mesh) -> slice:
  """The rows of a global batch of `global_rows` rows that this process's devices hold (all of
  them in a single process): the part of the batch this process loads."""
  index_map = data_sharding(mesh).addressable_devices_indices_map((global_rows,))
  spans = sorted({(idx[0].start or 0, global_rows if idx[0].stop is None else idx[0].stop)
                  for idx in index_map.values()})
  for (_, stop), (start, _) in zip(spans, spans[1:]):
    if stop != start:
      raise ValueError(f"this process's devices hold rows {spans} of the batch, not one contiguous "
                       "block; build the mesh with sharding.make_mesh() (devices ordered by process).")
  return slice(spans[0][0], spans[-1][1])


def local_part(batch, mesh: Mesh):
  """This process's rows (`process_rows`) of a global host batch; the batch itself in one process."""
  if jax.process_count() == 1:
    return batch
  rows = process_rows(len(jax.tree.leaves(batch)[0]), mesh)
  return jax.tree.map(lambda x: x[rows], batch)


def shard_batch(batch, mesh: Mesh, *, stacked: bool = False):
  """This process's rows of a batch (host numpy) -> global jax arrays split on axis 0 over the mesh.

  In one process `batch` is the whole batch; under multi-host each process passes its own block
  (`process_rows` / `local_part`, or `data.batch_at(..., process_index=, process_count=)`) and the
  global batch is the blocks in process order. stacked=True: k batches stacked on a leading axis
  (`loop.multi_step`'s input), split on axis 1, the batch axis; axis 0 stays whole on every device.
  """
  sharding = NamedSharding(mesh, P(None, DATA_AXIS)) if stacked else data_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def fetch(tree):
  """Device arrays -> host numpy, on every process: replicated or process-local arrays are read
  locally, arrays sharded over several processes are gathered (`process_allgather`) first."""
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
      from jax.experimental import multihost_utils
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x)) if isinstance(x, jax.Array) else x
  return jax.tree.map(get, tree)


def host_local(tree):
  """A copy of a replicated (global) pytree on this process's first device, made without the other
  processes (no collective), for work one process does alone (sample grids, artifacts, evaluation);
  the tree itself in one process."""
  if jax.process_count() == 1:
    return tree
  device = jax.local_devices()[0]

  def copy(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return x
    if not x.is_fully_replicated:
      raise ValueError(f"host_local needs replicated arrays; got one of shape {x.shape} sharded as "
                       f"{x.sharding} (gather it on every process with sharding.fetch first).")
    return jax.device_put(x.addressable_shards[0].data, device)
  return jax.tree.map(copy, tree)


def sync(name: str) -> None:
  """Waits until every process reaches this point (a no-op in one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
