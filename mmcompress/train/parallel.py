"""Data parallelism with current JAX: a 1-D ``data`` mesh, replicated state, sharded batches.

One jitted step whose inputs carry `NamedSharding`s is partitioned by XLA over every device
of the mesh: the batch is split along its first axis, the state is replicated, and the
per-task loss means (sums over the global batch) become all-reduces. This is what
``jax.pmap`` did by hand, without a leading device axis on every array.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed(enabled: bool) -> None:
  """Joins a multi-host job (Cloud TPU pods) when `enabled`; a no-op otherwise.

  On Cloud TPU VMs `jax.distributed.initialize()` discovers the coordinator itself. Call it
  before anything touches the devices.
  """
  if enabled:
    jax.distributed.initialize()


def data_mesh() -> Mesh:
  """A 1-D mesh over every device of every host, axis ``data``."""
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,))


def check_batch_size(batch_size: int, mesh: Mesh, name: str = "batch_size") -> None:
  """Raises unless the global batch splits evenly over the mesh's devices."""
  devices = mesh.devices.size
  if batch_size % devices:
    raise ValueError(
        f"{name}={batch_size} is not divisible by the {devices} devices of the data mesh: "
        f"use a multiple of {devices} (e.g. {devices * max(1, batch_size // devices)}).")


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf of `tree` on every device of `mesh`."""
  return jax.device_put(tree, replicated(mesh))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Splits every leaf of a host batch along its first axis over the mesh.

  Single host: the arrays are the global batch. Multi-host: each process passes its own
  slice of the global batch (``global / process_count`` rows), and the global array is
  assembled from the per-process pieces.
  """
  sharding = batch_sharded(mesh)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)
