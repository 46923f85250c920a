"""Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019)."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from mmcompress import _checks
from mmcompress.weighting import base

__all__ = ["dwa", "DWAState"]


class DWAState(NamedTuple):
  """DWA's memory: the mean task losses of the last two epochs (row 1 the latest)."""
  history: jax.Array
  num_epochs: jax.Array


def dwa(temperature: float = 2.0, *, task_scales: ArrayLike | None = None,
        reduction: str = "mean") -> base.TaskWeighting:
  """Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019).

  w_k = softmax_k(r_k / T) with r_k = L̄_k(e−1) / L̄_k(e−2), the ratio of task k's mean
  training loss over the last two epochs; equal weights until two epochs have been seen.
  The objective is Σ_k w_k L_k (``reduction="reference"``: the paper's Σ_k K·w_k L_k).
  The weights are constants for the gradient.

  Args:
    temperature: T > 0 (the paper uses 2).
    task_scales: optional fixed per-task loss scales.
    reduction: ``"mean"`` or ``"reference"`` (see `mmcompress.weighting`).
  """
  temperature = _checks.positive(temperature, "temperature")
  scales = base.check_task_scales(task_scales)
  by_count = base.check_reduction(reduction) == "reference"

  def init(num_tasks: int) -> tuple[Any, Any]:
    _checks.positive_int(num_tasks, "num_tasks")
    return {}, DWAState(history=jnp.ones((2, num_tasks), jnp.float32),
                        num_epochs=jnp.zeros([], jnp.int32))

  def weights(task_params, state: DWAState) -> jax.Array:
    del task_params
    ratio = state.history[1] / state.history[0]
    num_tasks = state.history.shape[1]
    return jnp.where(state.num_epochs >= 2, jax.nn.softmax(ratio / temperature),
                     jnp.full((num_tasks,), 1.0 / num_tasks))

  def objective(task_losses, task_params, state: DWAState, key=None):
    del key
    w = jax.lax.stop_gradient(weights(task_params, state))
    if by_count:
      w = w.shape[0] * w
    return jnp.dot(w, base.scaled(task_losses, scales))

  def end_epoch(state: DWAState, epoch_mean_losses: jax.Array) -> DWAState:
    latest = jnp.asarray(epoch_mean_losses, jnp.float32)
    return DWAState(history=jnp.stack([state.history[1], latest]),
                    num_epochs=state.num_epochs + 1)

  return base.TaskWeighting("dwa", init, objective, optax.set_to_zero(), end_epoch, weights)
