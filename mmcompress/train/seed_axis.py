"""Seeds as a batch axis: S runs of one (method, setting) trained as one jitted program.

Every leaf of a `TrainState` gains a leading seed axis (`stack`): the model, both optimizers'
states, the masks, the task weighting's state and the RNG of each seed. One `jax.vmap` of the
one-seed step (`mmcompress.train.step.train_step_fn`) over that axis, jitted once, trains all
of them, each on its own batch (the batches of the S seeds stacked on a leading axis, each
drawn as the one-seed path draws it). Compilation, dispatch and host round trips are paid once
for S runs, and the device gets work S times larger.

A seed whose losses or parameters stop being finite is **frozen**: its state stays at the
last finite step (its ``step`` stops counting, so it records where it stopped) and its
``alive`` flag turns False, while the others go on. The one-seed path stops such a run with
`NonFiniteLossError`; the seed axis cannot stop one program for one seed.

Placement on a mesh: the batch axis of every seed's batch split over the ``data`` axis
(``seed_sharded=False``, the state replicated, as the one-seed path), or the seed axis
itself split over the devices (``seed_sharded=True``: each device trains S / D whole seeds,
for a model small enough that one seed's batch does not need splitting).
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

from mmcompress import _checks
from mmcompress.problems import Problem
from mmcompress.train import parallel
from mmcompress.train.step import TrainState, train_step_fn
from mmcompress.weighting import TaskWeighting


def stack(trees: Sequence[Any]) -> Any:
  """The trees of S seeds as one tree whose leaves have a leading seed axis of size S, on
  the host (NumPy: stacking compiles nothing; place it with `jax.device_put`)."""
  return jax.tree.map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *trees)


def unstack(tree: Any, index: int) -> Any:
  """Seed `index` of a stacked tree (its leaves without the seed axis). Index a host copy
  (`jax.device_get`) to compile nothing; a device array's index compiles per shape."""
  return jax.tree.map(lambda leaf: leaf[index], tree)


def state_sharding(mesh: jax.sharding.Mesh, seed_sharded: bool) -> NamedSharding:
  """Where a stacked state lives: replicated, or split along its seed axis."""
  return NamedSharding(mesh, P(parallel.DATA_AXIS) if seed_sharded else P())


def batch_sharding(mesh: jax.sharding.Mesh, batch_axis: int, seed_sharded: bool
                   ) -> NamedSharding:
  """Where stacked batches live: split along the seed axis, or along each seed's batch axis
  (`batch_axis` of one seed's batch, one further in the stack)."""
  if seed_sharded:
    return NamedSharding(mesh, P(parallel.DATA_AXIS))
  return NamedSharding(mesh, P(*([None] * (batch_axis + 1)), parallel.DATA_AXIS))


def check_seeds(num_seeds: int, mesh: jax.sharding.Mesh, seed_sharded: bool) -> None:
  """Raises a `UserError` unless the seeds split evenly over the devices when sharded."""
  devices = mesh.devices.size
  if seed_sharded and num_seeds % devices:
    raise _checks.UserError(
        f"{num_seeds} seeds cannot be split over the {devices} devices of the data mesh: "
        f"use a multiple of {devices} seeds, or split each seed's batch instead.")


def _all_finite(tree: Any) -> jax.Array:
  return jax.tree.reduce(jnp.logical_and, jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)), tree),
                         jnp.asarray(True))


def make_seed_train_step(problem: Problem, model: nn.Module, weighting: TaskWeighting,
                         tx: optax.GradientTransformation, mesh: jax.sharding.Mesh,
                         per_task: bool = False, seed_sharded: bool = False
                         ) -> Callable[[TrainState, jax.Array, Any],
                                       tuple[TrainState, jax.Array, jax.Array]]:
  """The jitted, donated step of S seeds ``(states, alive, batches) -> (states, alive,
  task_losses)``.

  Args:
    problem, model, weighting, tx, per_task: as for `mmcompress.train.step.make_train_step`,
      the same for every seed.
    mesh: the data mesh.
    seed_sharded: split the seed axis over the devices instead of each seed's batch.

  Returns:
    A function of `states` (a `TrainState` stacked over S seeds, `stack`), `alive` ((S,)
    bool, False for a frozen seed) and `batches` (the seeds' batches stacked on a leading
    axis); it returns the states after one step of every live seed, the seeds still live
    (those whose losses and new parameters are all finite), and the (S, K) task losses of
    the step (a frozen seed's are those of its frozen state, not used).
  """
  one_seed = train_step_fn(problem, model, weighting, tx, per_task)

  def seeds_step(states: TrainState, alive: jax.Array, batches: Any
                 ) -> tuple[TrainState, jax.Array, jax.Array]:
    new, losses = jax.vmap(one_seed)(states, batches)
    finite = jnp.all(jnp.isfinite(losses), axis=-1) & jax.vmap(_all_finite)(new.params)
    keep = alive & finite

    def choose(new_leaf, old_leaf):
      return jnp.where(keep.reshape((-1,) + (1,) * (new_leaf.ndim - 1)), new_leaf, old_leaf)

    return jax.tree.map(choose, new, states), keep, losses

  states = state_sharding(mesh, seed_sharded)
  return jax.jit(seeds_step,
                 in_shardings=(states, states,
                               batch_sharding(mesh, problem.batch_axis, seed_sharded)),
                 out_shardings=(states, states, states), donate_argnums=0)


def stacked_batches(problem: Problem, seeds: Sequence[int], stage_index: int, step: int,
                    batch_size: int) -> Any:
  """The seeds' training batches of `step`, each exactly the one-seed path's, stacked."""
  batches = [problem.train_batch(seed, stage_index, step, batch_size) for seed in seeds]
  return jax.tree.map(lambda *leaves: np.stack(leaves), *batches)

