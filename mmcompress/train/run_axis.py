"""The run axis: R runs of one (method, setting) trained as one jitted program.

Every run is a point on a leading axis: a (seed, variant) pair (`mmcompress.train.variants`).
Every leaf of a `TrainState` gains that leading axis (`stack`): the model, both optimizers'
states (with the variant's learning-rate scale and clip, and the masks), the task weighting's
state and the RNG of each run. One `jax.vmap` of the one-run step
(`mmcompress.train.step.train_step_fn`) over that axis, jitted once, trains all of them, each
on its own seed's batch (the batches stacked on a leading axis, each drawn as a run alone
draws it: two variants of a seed see the same batches). Compilation, dispatch and host round
trips are paid once for R runs, and the device gets work R times larger. A single run is
the axis of length 1 (its step is the one-run step, without a vmap: a vmapped MTAN compiles
about twice as long for the same work).

A run whose losses or parameters stop being finite is **frozen**: its state stays at the
last finite step (its ``step`` stops counting, so it records where it stopped) and its
``alive`` flag turns False, while the others go on.

Placement on a mesh: the batch axis of every run's batch split over the ``data`` axis
(``sharded=False``, the state replicated), or the run axis itself split over the devices
(``sharded=True``: each device trains R / D whole runs, for a model small enough that one
run's batch does not need splitting; one process only). Across processes each process
places only its own devices' shards of the stacked batches.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from mmcompress.problems import Problem
from mmcompress.train import parallel
from mmcompress.train.step import TrainState, train_step_fn
from mmcompress.weighting import TaskWeighting

__all__ = ["batch_sharding", "can_shard", "make_runs_train_step", "over_runs", "stack",
           "stacked_batches", "state_sharding", "unstack"]


def stack(trees: Sequence[Any]) -> Any:
  """The trees of R runs as one tree whose leaves have a leading run axis of size R, on
  the host (NumPy: stacking compiles nothing; place it with `jax.device_put`)."""
  return jax.tree.map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *trees)


def unstack(tree: Any, index: int) -> Any:
  """Run `index` of a stacked tree (its leaves without the run axis). Index a host copy
  (`jax.device_get`) to compile nothing; a device array's index compiles per shape."""
  return jax.tree.map(lambda leaf: leaf[index], tree)


def state_sharding(mesh: jax.sharding.Mesh, sharded: bool) -> NamedSharding:
  """Where a stacked state lives: replicated, or split along its run axis."""
  return NamedSharding(mesh, P(parallel.DATA_AXIS) if sharded else P())


def batch_sharding(mesh: jax.sharding.Mesh, batch_axis: int, sharded: bool) -> NamedSharding:
  """Where stacked batches live: split along the run axis, or along each run's batch axis
  (`batch_axis` of one run's batch, one further in the stack)."""
  if sharded:
    return NamedSharding(mesh, P(parallel.DATA_AXIS))
  return NamedSharding(mesh, P(*([None] * (batch_axis + 1)), parallel.DATA_AXIS))


def can_shard(num_runs: int, mesh: jax.sharding.Mesh) -> bool:
  """Whether `num_runs` runs can be split over the devices: evenly, in one process (across
  processes the runs' results would not all be on the process that writes them)."""
  return jax.process_count() == 1 and num_runs % mesh.devices.size == 0


def _all_finite(tree: Any) -> jax.Array:
  return jax.tree.reduce(jnp.logical_and, jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)), tree),
                         jnp.asarray(True))


def over_runs(fn: Callable[..., Any], in_axes: tuple[int | None, ...], num_runs: int
              ) -> Callable[..., Any]:
  """`fn` of one run applied to an axis of `num_runs` runs: `jax.vmap(fn, in_axes)`, or for
  one run `fn` itself on the run's share (the arguments with in-axis 0 unstacked, the outputs
  stacked again): no vmap, whose programs compile slower (see the module's docstring)."""
  if num_runs != 1:
    return jax.vmap(fn, in_axes=in_axes)

  def one(*args):
    out = fn(*(a if axis is None else unstack(a, 0) for a, axis in zip(args, in_axes)))
    return jax.tree.map(lambda x: x[None], out)

  return one


def make_runs_train_step(problem: Problem, model: nn.Module, weighting: TaskWeighting,
                         tx: optax.GradientTransformation, mesh: jax.sharding.Mesh,
                         per_task: bool = False, sharded: bool = False, num_runs: int = 2
                         ) -> Callable[[TrainState, jax.Array, Any],
                                       tuple[TrainState, jax.Array, jax.Array]]:
  """The jitted, donated step of R runs ``(states, alive, batches) -> (states, alive,
  task_losses)``.

  Args:
    problem, model, weighting, tx, per_task: as for `mmcompress.train.step.make_train_step`,
      the same for every run (`tx` differs between runs only in what its ``init`` put in the
      state: masks, growth seed, the variant's values).
    mesh: the data mesh.
    sharded: split the run axis over the devices instead of each run's batch.
    num_runs: R (1 takes the one-run step without a vmap).

  Returns:
    A function of `states` (a `TrainState` stacked over R runs, `stack`), `alive` ((R,)
    bool, False for a frozen run) and `batches` (the runs' batches stacked on a leading
    axis); it returns the states after one step of every live run, the runs still live
    (those whose losses and new parameters are all finite), and the (R, K) task losses of
    the step (a frozen run's are those of its frozen state, not used).
  """
  one_run = train_step_fn(problem, model, weighting, tx, per_task)
  step = over_runs(one_run, (0, 0), num_runs)

  def runs_step(states: TrainState, alive: jax.Array, batches: Any
                ) -> tuple[TrainState, jax.Array, jax.Array]:
    new, losses = step(states, batches)
    finite = jnp.all(jnp.isfinite(losses), axis=-1) & jax.vmap(_all_finite)(new.params)
    keep = alive & finite

    def choose(new_leaf, old_leaf):
      return jnp.where(keep.reshape((-1,) + (1,) * (new_leaf.ndim - 1)), new_leaf, old_leaf)

    return jax.tree.map(choose, new, states), keep, losses

  states = state_sharding(mesh, sharded)
  return jax.jit(runs_step,
                 in_shardings=(states, states, batch_sharding(mesh, problem.batch_axis, sharded)),
                 out_shardings=(states, states, states), donate_argnums=0)


def stacked_batches(problem: Problem, seeds: Sequence[int], stage_index: int, step: int,
                    batch_size: int) -> Any:
  """The training batches of `step` of runs of these `seeds` (a seed per run), each exactly
  a run alone's, stacked."""
  by_seed = {seed: problem.train_batch(seed, stage_index, step, batch_size)
             for seed in dict.fromkeys(seeds)}
  batches = [by_seed[seed] for seed in seeds]
  return jax.tree.map(lambda *leaves: np.stack(leaves), *batches)

