"""What every task weighting shares: the `TaskWeighting` interface and its small helpers.

See `mmcompress.weighting` for the interface's contract and the loss reductions.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from mmcompress import _checks

__all__ = ["AggregatorFactory", "check_reduction", "check_task_scales", "counted_tasks", "no_epoch_memory",
           "no_step_memory", "REDUCTIONS", "scaled", "TaskWeighting", "uniform_weights"]


def no_epoch_memory(task_state: Any, epoch_mean_losses: jax.Array) -> Any:
  """The `end_epoch` of a weighting that remembers nothing between epochs."""
  del epoch_mean_losses
  return task_state


def no_step_memory(task_state: Any, task_losses: jax.Array) -> Any:
  """The `observe` of a weighting that remembers nothing between steps."""
  del task_losses
  return task_state


def counted_tasks(num_tasks: int) -> tuple[Any, jax.Array]:
  """The `init` of a weighting with no parameters whose memory only knows K: ({}, zeros(K))."""
  _checks.positive_int(num_tasks, "num_tasks")
  return {}, jnp.zeros((num_tasks,), jnp.float32)


def uniform_weights(task_params: Any, task_state: jax.Array) -> jax.Array:
  """The `weights` of a `counted_tasks` weighting: 1/K for every task."""
  del task_params
  return jnp.full(task_state.shape, 1.0 / task_state.shape[0])


#: A gradient-level weighting's aggregator: ``(num_tasks, seed) -> optax transform`` that turns
#: stacked per-task gradients into one gradient (the seed: for an aggregator that draws).
AggregatorFactory = Callable[[int, int], optax.GradientTransformation]


class TaskWeighting(NamedTuple):
  """A way of weighting task losses; see `mmcompress.weighting` for each field's contract."""
  name: str
  init: Callable[[int], tuple[Any, Any]]
  objective: Callable[..., jax.Array]
  tx: optax.GradientTransformation
  end_epoch: Callable[[Any, jax.Array], Any]
  weights: Callable[[Any, Any], jax.Array]
  observe: Callable[[Any, jax.Array], Any] = no_step_memory
  aggregate: AggregatorFactory | None = None


def scaled(task_losses: ArrayLike, task_scales: np.ndarray | None) -> jax.Array:
  """The task losses times their fixed scales (unchanged when there are none)."""
  task_losses = jnp.asarray(task_losses)
  return task_losses if task_scales is None else task_scales * task_losses


def check_task_scales(task_scales: ArrayLike | None) -> np.ndarray | None:
  """`task_scales` as a float32 NumPy vector of positive numbers (None stays None), or raises."""
  # NumPy, not jax: validating a config must not touch a device (multi-host start-up).
  if task_scales is None:
    return None
  scales = np.asarray(task_scales, np.float32)
  if scales.ndim != 1 or not np.all(scales > 0):
    raise ValueError(f"task_scales must be a vector of positive numbers, got {task_scales!r}.")
  return scales


REDUCTIONS = ("mean", "reference")


def check_reduction(reduction: str) -> str:
  """`reduction` if it is one of `REDUCTIONS`, or raises naming ``loss_reduction``."""
  return _checks.one_of(reduction, REDUCTIONS, "loss_reduction")

