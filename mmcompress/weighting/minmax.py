"""Min-max task weights (Guo et al., ISCAS 2024) as a `TaskWeighting`."""
from __future__ import annotations

from typing import Any

import optax
from jax.typing import ArrayLike

from mmcompress import _checks
from mmcompress.minmax import simplex_ascent
from mmcompress.objective import equal_task_weights, saddle_objective
from mmcompress.weighting import base


def minmax(learning_rate: optax.ScalarOrSchedule = 0.02, *, gamma: float = 5.0,
           task_scales: ArrayLike | None = None, geometry: str = "euclidean",
           every: int = 1) -> base.TaskWeighting:
  """Min-max task weights (Guo et al., ISCAS 2024): projected descent/ascent on
  `saddle_objective`.

  The task weights start at 1/K and ascend with `simplex_ascent`; see `saddle_objective`
  for what γ and the task scales do. Both players' gradients come from one `jax.grad` at
  the same point (simultaneous updates); the reference alternates its two steps.

  Args:
    learning_rate: the ascent step 1/β (reference 0.02, β = 50), or a schedule.
    gamma: γ >= 0 (reference 5).
    task_scales: optional per-task loss scales c_k.
    geometry: ``"euclidean"`` (APGDA) or ``"entropic"`` (exponentiated gradient).
    every: ascend once per this many steps, on their mean gradient (pass the steps per
      epoch to ascend once per epoch as the reference does; the reference ascends from the
      first batch's losses of the epoch instead of a mean).
  """
  gamma = _checks.non_negative(gamma, "gamma")
  scales = base.check_task_scales(task_scales)
  tx = simplex_ascent(learning_rate, geometry=geometry, every=every)

  def init(num_tasks: int) -> tuple[Any, Any]:
    return equal_task_weights(num_tasks), ()

  def objective(task_losses, task_weights, task_state, key=None):
    del key, task_state
    return saddle_objective(task_losses, task_weights, gamma=gamma, task_scales=scales)

  def weights(task_weights, task_state):
    del task_state
    return task_weights

  return base.TaskWeighting("minmax", init, objective, tx, base.no_epoch_memory, weights)


def from_config(config: Any, *, steps_per_epoch: int, task_scales: ArrayLike | None,
                reduction: str) -> base.TaskWeighting:
  """`minmax` with ``config.minmax.{learning_rate, gamma, geometry, every}``.

  ``every`` is ``"step"`` or ``"epoch"`` (ascend once per `steps_per_epoch` steps). Min-max
  has no loss reduction: its weights stay on the simplex, so `reduction` is not used.

  The arguments are those of `mmcompress.weighting.from_config`.
  """
  del reduction
  mm = config.minmax
  every = _checks.one_of(mm.every, ("step", "epoch"), "minmax.every")
  return minmax(mm.learning_rate, gamma=mm.gamma, task_scales=task_scales,
                geometry=mm.geometry, every=steps_per_epoch if every == "epoch" else 1)
