"""The saddle-point objective of min-max multi-task training, as pure functions.

Guo, Sun, Qin, Yu, Zhang, "A Min-Max Optimization Framework for Multi-task Deep Neural
Network Compression", ISCAS 2024; journal extension, Neurocomputing 650 (2025).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from mmcompress import _checks

__all__ = ["equal_task_weights", "saddle_objective"]


def _as_vector(value: ArrayLike, name: str) -> jax.Array:
  value = jnp.asarray(value)
  if value.ndim != 1 or value.shape[0] < 1:
    raise ValueError(f"{name} must be a vector with one entry per task, got shape {value.shape}.")
  return value


def _concrete(value: jax.Array) -> np.ndarray | None:
  """`value`'s numbers when they are known now (outside any transformation), else None."""
  if isinstance(value, jax.core.Tracer):
    return None
  return np.asarray(value)


# How far from the simplex concrete task weights may be (float32 rounding of a projection).
_SIMPLEX_TOLERANCE = 1e-4


def saddle_objective(task_losses: ArrayLike,
                     task_weights: ArrayLike,
                     *,
                     gamma: float,
                     task_scales: ArrayLike | None = None) -> jax.Array:
  r"""f(W, w) = Σ_k w_k c_k L_k(W) − (γ/2)‖w − 1/K‖², minimised over W, maximised over w.

  The model descends on f; the task weights ascend on it and are projected back onto the
  probability simplex (`simplex_ascent`). Since ∂f/∂w_k = c_k L_k − γ (w_k − 1/K), the
  ascent moves weight toward the task with the largest *scaled* loss c_k L_k, which is not
  necessarily the task that loses most by its own metric: a cross-entropy of 0.3 outweighs a
  mean squared error of 0.01 even when the regression has degraded more. The scales c are
  therefore part of the method, not a detail:

  * the reference NYUv2 code uses c = (1, 1.5, 3) for (segmentation, depth, normals);
  * c_k = 1 / L_k(dense model) makes "worst" mean "lost most relative to the dense model"
    (measured on the digits tasks, this tracks accuracy ratios poorly when dense losses are
    near zero; see docs/method.md §1).

  γ = 0 is the pure worst case (the maximising w is a vertex); γ → ∞ pins w at 1/K, which is
  equal weighting. The reference uses γ = 5.

  Weights off the simplex: where the weights are concrete (outside any JAX transformation:
  jit, grad, vmap) they must lie on it (non-negative, summing to 1 within 1e-4) and the
  scales must be positive, else a ValueError names them. Inside a transformation the values
  cannot be seen and the formula is evaluated as written, a linear function of w plus the quadratic pull: off the simplex it is no longer a
  weighted mean of the losses, and a negative w_k rewards task k's loss. `simplex_ascent`
  keeps the trainer's weights on the simplex.

  Args:
    task_losses: (K,) per-task losses L_k of the shared model (differentiable in W).
    task_weights: (K,) task weights w on the probability simplex.
    gamma: γ >= 0, the strength of the pull toward equal weights.
    task_scales: optional (K,) positive per-task scales c_k; default all ones.

  Returns:
    The scalar objective.

  >>> float(saddle_objective(jnp.array([1.0, 3.0]), jnp.array([0.5, 0.5]), gamma=5.0))
  2.0
  """
  gamma = _checks.non_negative(gamma, "gamma")
  task_losses = _as_vector(task_losses, "task_losses")
  task_weights = _as_vector(task_weights, "task_weights")
  num_tasks = task_losses.shape[0]
  if task_weights.shape != task_losses.shape:
    raise ValueError(
        f"task_weights has {task_weights.shape[0]} entries but task_losses has {num_tasks}: "
        "pass one weight per task.")
  if task_scales is not None:
    task_scales = _as_vector(task_scales, "task_scales")
    if task_scales.shape != task_losses.shape:
      raise ValueError(
          f"task_scales has {task_scales.shape[0]} entries but task_losses has {num_tasks}: "
          "pass one scale per task.")
    task_losses = task_scales * task_losses
  weights = _concrete(task_weights)
  if weights is not None and (np.any(weights < -_SIMPLEX_TOLERANCE)
                              or abs(float(np.sum(weights)) - 1.0) > _SIMPLEX_TOLERANCE):
    raise ValueError(f"task_weights must lie on the probability simplex (non-negative, summing "
                     f"to 1), got {weights.tolist()}; simplex_ascent keeps them there.")
  scales = None if task_scales is None else _concrete(task_scales)
  if scales is not None and not np.all(scales > 0):
    raise ValueError(f"task_scales must be positive, got {scales.tolist()}.")
  spread = task_weights - 1.0 / num_tasks
  return jnp.dot(task_weights, task_losses) - 0.5 * gamma * jnp.dot(spread, spread)


def equal_task_weights(num_tasks: int) -> jax.Array:
  """The centre of the simplex, 1/K for each of `num_tasks` tasks: where min-max starts."""
  num_tasks = _checks.positive_int(num_tasks, "num_tasks")
  return jnp.full((num_tasks,), 1.0 / num_tasks, jnp.float32)
