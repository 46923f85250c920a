"""Geometric loss strategy (Chennupati, Sistu, Yogamani & Rawashdeh, "MultiNet++", CVPR
Workshops 2019)."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from mmcompress import _checks
from mmcompress.weighting import base

__all__ = ["geometric_mean", "gls"]


def geometric_mean(values: jax.Array) -> jax.Array:
  """(Π_k v_k)^(1/K) of positive `values`, as exp(mean(log v)) (no overflow of the product)."""
  return jnp.exp(jnp.mean(jnp.log(values)))


def gls(*, task_scales: ArrayLike | None = None) -> base.TaskWeighting:
  """Geometric loss strategy (GLS, Chennupati et al., CVPR-W 2019).

  The objective is the geometric mean of the scaled losses, (Π_k c_k L_k)^(1/K), computed as
  exp(mean_k log(c_k L_k)). Its gradient with respect to L_k is G / (K L_k) (G the
  objective's value): every task's gradient is divided by its own loss. The scales c_k
  leave the direction alone (they cancel from the ratios between tasks, and from `weights`)
  but not the length: G, and so the whole gradient, carries the factor (Π_k c_k)^(1/K).
  The reference (LibMTL's ``GLS``) minimises the same K-th root, so GLS has
  no separate ``"reference"`` reduction. A zero loss makes the gradient non-finite (the
  trainer stops with the task's name).

  `weights` (for logging) is that gradient normalised to sum to one, (1/L_k) / Σ_j 1/L_j,
  from the last step's losses, which `observe` keeps in task_state (1/K before any step).

  Args:
    task_scales: optional fixed per-task loss scales c_k.
  """
  scales = base.check_task_scales(task_scales)

  def init(num_tasks: int) -> tuple[Any, Any]:
    _checks.positive_int(num_tasks, "num_tasks")
    return {}, jnp.ones((num_tasks,), jnp.float32)  # the last step's losses; 1/K weights

  def objective(task_losses, task_params, task_state, key=None):
    del task_params, task_state, key
    return geometric_mean(base.scaled(task_losses, scales))

  def observe(task_state, task_losses):
    del task_state
    return jnp.asarray(task_losses, jnp.float32)

  def weights(task_params, last_losses):
    del task_params
    inverse = 1.0 / last_losses
    return inverse / jnp.sum(inverse)

  return base.TaskWeighting("gls", init, objective, optax.set_to_zero(), base.no_epoch_memory,
                           weights, observe)
