"""Data parallelism with current JAX: a 1-D ``data`` mesh, replicated state, sharded batches.

One jitted step whose inputs carry `NamedSharding`s is partitioned by XLA over every device
of the mesh: the batch is split along its first axis, the state is replicated, and the
per-task loss means (sums over the global batch) become all-reduces. This is what
``jax.pmap`` did by hand, without a leading device axis on every array.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mmcompress import _checks

__all__ = ["batch_sharded", "check_batch_size", "DATA_AXIS", "data_mesh", "default_cache_dir",
           "HEARTBEAT_TIMEOUT_S", "is_primary", "local_launch", "maybe_initialize_distributed",
           "NUM_PROCESSES_ENV", "place", "PROCESS_ID_ENV", "replicate", "replicated", "shard_batch",
           "use_compilation_cache"]

DATA_AXIS = "data"


# A local multi-process run (`experiments.launch_local`) passes the process count and this
# process's id in these variables; the coordinator's address goes in JAX_COORDINATOR_ADDRESS,
# which `jax.distributed.initialize` reads itself. JAX reads a count and an id only from a
# cluster's scheduler (Slurm, Open MPI, Cloud TPU, Kubernetes), none of which a plain
# process on one machine has.
NUM_PROCESSES_ENV = "MMCOMPRESS_NUM_PROCESSES"
PROCESS_ID_ENV = "MMCOMPRESS_PROCESS_ID"
# A process that has sent no heartbeat for this long is dead to the coordination service,
# which then ends every other process of the job (jax's default is 100 s).
HEARTBEAT_TIMEOUT_S = 30


def local_launch() -> tuple[int, int] | None:
  """``(process count, this process's id)`` when started by a local multi-process launch."""
  if NUM_PROCESSES_ENV not in os.environ:
    return None
  return int(os.environ[NUM_PROCESSES_ENV]), int(os.environ[PROCESS_ID_ENV])


def maybe_initialize_distributed(enabled: bool) -> None:
  """Joins a multi-process job when `enabled` or when started by a local launch; a no-op
  otherwise, and when this process has joined already. Call it before anything touches the
  devices.

  On a Cloud TPU slice (``--config.distributed=True``) `jax.distributed.initialize()` finds
  the coordinator, the process count and this process's id itself. A local launch
  (`experiments.launch_local`) gives them in the environment (see `NUM_PROCESSES_ENV`); its
  processes run on the CPU, whose collectives across processes go through gloo.
  """
  launch = local_launch()
  if (not enabled and launch is None) or jax.distributed.is_initialized():
    return
  if set((jax.config.jax_platforms or "").split(",")) == {"cpu"}:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if launch is None:
    jax.distributed.initialize(heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S)
  else:
    num_processes, process_id = launch
    # Everything is given: no cluster detection (it would query a TPU metadata server).
    jax.distributed.initialize(num_processes=num_processes, process_id=process_id,
                               cluster_detection_method="deactivate",
                               heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S)


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


def place(tree: Any, sharding: NamedSharding) -> Any:
  """Places host arrays that every process holds alike (a pure function of the step) with
  `sharding`. Each device's shard is simply cut from them, wherever the device sits in the
  mesh; across processes, each one places only the shards of its own devices (the callback
  is called for those alone): the processes feed disjoint parts of the one global array."""
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  return jax.tree.map(
      lambda x: jax.make_array_from_callback(np.shape(x), sharding,
                                             lambda index: np.asarray(x)[index]), tree)


def shard_batch(batch: Any, mesh: Mesh, axis: int = 0) -> Any:
  """Places a global host batch on the mesh, split along `axis` (`place`)."""
  return place(batch, batch_sharded(mesh, axis))


def use_compilation_cache(directory: str) -> str | None:
  """JAX's persistent compilation cache in `directory` for every program, however quick to
  compile, unless the environment variable JAX_COMPILATION_CACHE_DIR is set: to a folder,
  that one is kept; to the empty string, no cache at all (the way to turn it off).

  A compiled program is read back instead of compiled again when the same program (the same
  shapes, the same JAX and XLA) is compiled again, in this process or a later one; no number
  depends on it. JAX writes an entry in place: a kill during the write leaves it cut short,
  and a later read warns ("Error reading persistent compilation cache entry") and compiles
  that program again.

  Returns:
    The cache folder in use, or None when the environment turned it off.
  """
  chosen = os.environ.get("JAX_COMPILATION_CACHE_DIR")
  if chosen is not None:
    return chosen or None
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return directory


def default_cache_dir() -> str:
  """The user's cache folder for compiled programs: ``$XDG_CACHE_HOME/mmcompress/jax``
  (``~/.cache/mmcompress/jax`` when XDG_CACHE_HOME is not set)."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "mmcompress", "jax")

