"""Min-max task weights (Guo et al., ISCAS 2024) as a `TaskWeighting`."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from mmcompress import _checks
from mmcompress.transforms import simplex_ascent
from mmcompress.objective import equal_task_weights, saddle_objective
from mmcompress.weighting import base

__all__ = ["AutoScalesState", "minmax", "minmax_auto"]


class AutoScalesState(NamedTuple):
  """The memory of min-max with ``task_scales="auto"``.

  Attributes:
    scales: (K,) the scales c_k = mean(L) / L_k of the stage's first step's losses L (ones
      before it).
    first: bool, True until the stage's first step has been observed.
  """
  scales: jax.Array
  first: jax.Array


def _relative_scales(losses: jax.Array) -> jax.Array:
  """mean(L) / L_k: equal scaled losses, of the raw losses' mean size."""
  return jnp.mean(losses) / losses


def minmax(learning_rate: optax.ScalarOrSchedule = 0.02, *, gamma: float = 5.0,
           task_scales: ArrayLike | str | None = None, geometry: str = "euclidean",
           every: int | str = 1, steps_per_epoch: int | None = None) -> base.TaskWeighting:
  """Min-max task weights (Guo et al., ISCAS 2024): projected descent/ascent on
  `saddle_objective`.

  The task weights start at 1/K and ascend with `simplex_ascent`; see `saddle_objective`
  for what γ and the task scales do. Both players' gradients come from one `jax.grad` at
  the same point (simultaneous updates); the reference alternates its two steps.

  ``task_scales="auto"`` fixes the scales from the losses L of the first step of the stage
  (every stage starts from a fresh task_state): c_k = mean(L) / L_k, so that "worst" means
  "lost most relative to where the stage started". At that first step the objective uses the
  scales of the step's own losses (stop_gradient: every scaled loss is mean(L) there, and the
  objective is the mean loss, as for every weighting) and `observe` stores them; later steps
  use the stored scales. The mean in the numerator keeps the objective's size, and so the
  model's step, that of the raw losses (docs/weightings.md says why c_k = 1 / L_k alone is
  not used). A zero first loss gives an infinite scale.

  Args:
    learning_rate: the ascent step 1/β (reference 0.02, β = 50), or a schedule.
    gamma: γ >= 0 (reference 5).
    task_scales: optional per-task loss scales c_k, or ``"auto"`` (see above).
    geometry: ``"euclidean"`` (APGDA) or ``"entropic"`` (exponentiated gradient).
    every: ascend once per this many steps, on their mean gradient; ``"step"`` is 1 and
      ``"epoch"`` is `steps_per_epoch` (once per epoch as the reference does; the reference
      ascends from the first batch's losses of the epoch instead of a mean).
    steps_per_epoch: the steps of an epoch, for ``every="epoch"``.
  """
  gamma = _checks.non_negative(gamma, "gamma")
  auto = isinstance(task_scales, str)
  if auto:
    _checks.one_of(task_scales, ("auto",), "task_scales")
  scales = None if auto else base.check_task_scales(task_scales)
  every = _ascent_every(every, steps_per_epoch)
  tx = simplex_ascent(learning_rate, geometry=geometry, every=every)

  def init(num_tasks: int) -> tuple[Any, Any]:
    task_weights = equal_task_weights(num_tasks)
    if not auto:
      return task_weights, ()
    return task_weights, AutoScalesState(scales=jnp.ones((num_tasks,), jnp.float32),
                                         first=jnp.ones([], bool))

  def objective(task_losses, task_weights, task_state, key=None):
    del key
    if not auto:
      return saddle_objective(task_losses, task_weights, gamma=gamma, task_scales=scales)
    task_losses = jnp.asarray(task_losses)
    own = _relative_scales(jax.lax.stop_gradient(task_losses))
    return saddle_objective(task_losses, task_weights, gamma=gamma,
                            task_scales=jnp.where(task_state.first, own, task_state.scales))

  def observe(task_state: AutoScalesState, task_losses: jax.Array) -> AutoScalesState:
    own = _relative_scales(jnp.asarray(task_losses, jnp.float32))
    return AutoScalesState(scales=jnp.where(task_state.first, own, task_state.scales),
                           first=jnp.zeros_like(task_state.first))

  def weights(task_weights, task_state):
    del task_state
    return task_weights

  if not auto:
    return base.TaskWeighting("minmax", init, objective, tx, base.no_epoch_memory, weights)
  return base.TaskWeighting("minmax_auto", init, objective, tx, base.no_epoch_memory, weights,
                           observe)


def minmax_auto(learning_rate: optax.ScalarOrSchedule = 0.02, *, gamma: float = 5.0,
                geometry: str = "euclidean", every: int | str = 1,
                steps_per_epoch: int | None = None) -> base.TaskWeighting:
  """`minmax` with ``task_scales="auto"``: the scales are mean(L) / L_k of the stage's
  first-step losses L."""
  return minmax(learning_rate, gamma=gamma, task_scales="auto", geometry=geometry, every=every,
                steps_per_epoch=steps_per_epoch)


def _ascent_every(every: int | str, steps_per_epoch: int | None) -> int:
  """`every` as a number of steps: ``"step"`` is 1, ``"epoch"`` is `steps_per_epoch`."""
  if isinstance(every, str):
    every = _checks.one_of(every, ("step", "epoch"), "minmax.every")
    if every == "step":
      return 1
    if steps_per_epoch is None:
      raise _checks.UserError("minmax.every='epoch' needs steps_per_epoch (the trainer passes "
                              "it); or pass every as a number of steps.")
    return _checks.positive_int(steps_per_epoch, "steps_per_epoch")
  return every
