"""Equal task weights: the mean (or the reference's sum) of the task losses."""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from mmcompress.weighting import base

__all__ = ["equal"]


def equal(*, task_scales: ArrayLike | None = None, reduction: str = "mean") -> base.TaskWeighting:
  """Equal weights: the objective is the mean (``"reference"``: the sum) of the task losses.

  Args:
    task_scales: optional fixed per-task loss scales.
    reduction: ``"mean"`` or ``"reference"`` (see `mmcompress.weighting`).
  """
  scales = base.check_task_scales(task_scales)
  reduce = jnp.sum if base.check_reduction(reduction) == "reference" else jnp.mean

  def objective(task_losses, task_params, task_state, key=None):
    del key, task_params, task_state
    return reduce(base.scaled(task_losses, scales))

  return base.TaskWeighting("equal", base.counted_tasks, objective, optax.set_to_zero(),
                           base.no_epoch_memory, base.uniform_weights)
