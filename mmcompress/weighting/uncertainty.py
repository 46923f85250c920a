"""Homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018)."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from mmcompress import _checks
from mmcompress.weighting import base

__all__ = ["uncertainty"]


def uncertainty(learning_rate: optax.ScalarOrSchedule = 1e-2, *,
                optimizer: optax.GradientTransformation | None = None,
                task_scales: ArrayLike | None = None, reduction: str = "mean",
                init_log_var: float = 0.0) -> base.TaskWeighting:
  """Homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

  Learns one log-variance s_k per task and minimises (1/K) Σ_k (exp(−s_k) L_k + s_k), the
  σ² parameterisation used by LibMTL scaled by 2/K; at s = 0 it is the mean loss, and its
  minimiser over s_k is log L_k. With ``reduction="reference"`` it minimises the reference's
  Σ_k (½ exp(−s_k) L_k + s_k / 2) instead (the same minimiser). The log-variances start at
  `init_log_var` (the reference: −0.5 in its pruning code, −0.7 in its dynamic sparse
  training code) and descend with `optimizer` (default ``optax.adam(learning_rate)``).

  Args:
    learning_rate: the log-variances' Adam step, used when `optimizer` is None.
    optimizer: any optax transform for the log-variances instead.
    task_scales: optional fixed per-task loss scales.
    reduction: ``"mean"`` or ``"reference"`` (see `mmcompress.weighting`).
    init_log_var: the starting value of every s_k.
  """
  scales = base.check_task_scales(task_scales)
  factor = 0.5 if base.check_reduction(reduction) == "reference" else None
  init_log_var = _checks.finite(init_log_var, "init_log_var")
  if optimizer is None:
    optimizer = optax.adam(_checks.learning_rate(learning_rate))

  def init(num_tasks: int) -> tuple[Any, Any]:
    _checks.positive_int(num_tasks, "num_tasks")
    return jnp.full((num_tasks,), init_log_var, jnp.float32), ()

  def objective(task_losses, log_vars, task_state, key=None):
    del key, task_state
    terms = jnp.exp(-log_vars) * base.scaled(task_losses, scales) + log_vars
    return jnp.mean(terms) if factor is None else factor * jnp.sum(terms)

  def weights(log_vars, task_state):
    del task_state
    return jax.nn.softmax(-log_vars)

  return base.TaskWeighting("uncertainty", init, objective, optimizer, base.no_epoch_memory,
                           weights)
