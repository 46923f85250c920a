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

from mmcompress import _checks

DATA_AXIS = "data"


def maybe_initialize_distributed(enabled: bool) -> None:
  """Joins a multi-host job (Cloud TPU pods) when `enabled`; a no-op otherwise.

  On Cloud TPU VMs `jax.distributed.initialize()` discovers the coordinator itself. Call it
  before anything touches the devices.
  """
  if enabled:
    jax.distributed.initialize()


def data_mesh() -> Mesh:
  """A 1-D mesh over every device of every host, axis ``data``.

  The axis is `AxisType.Auto`: XLA's partitioner decides the layout of intermediates (a
  vmapped per-task batch is reshaped inside the model), as jit has always done.
  """
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def check_batch_size(batch_size: int, mesh: Mesh, name: str = "batch_size") -> None:
  """Raises a `UserError` unless the global batch splits evenly over the mesh's devices."""
  devices = mesh.devices.size
  if batch_size % devices:
    raise _checks.UserError(
        f"{name}={batch_size} is not divisible by the {devices} devices of the data mesh: "
        f"use a multiple of {devices} (e.g. {devices * max(1, batch_size // devices)}).")


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh, axis: int = 0) -> NamedSharding:
  """Arrays split along `axis` over the mesh, replicated along the others."""
  return NamedSharding(mesh, P(*([None] * axis), DATA_AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf of `tree` on every device of `mesh`."""
  return jax.device_put(tree, replicated(mesh))


def is_primary() -> bool:
  """Whether this process writes the files (results, exports, reports) of a multi-host run."""
  return jax.process_index() == 0


def shard_batch(batch: Any, mesh: Mesh, axis: int = 0) -> Any:
  """Places a global host batch on the mesh, split along `axis`.

  Every process computes the same global batch (a pure function of the step), so each
  device's shard is simply cut from it, wherever the device sits in the mesh.
  """
  sharding = batch_sharded(mesh, axis)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return jax.tree.map(
      lambda x: jax.make_array_from_callback(np.shape(x), sharding,
                                             lambda index: np.asarray(x)[index]), batch)
