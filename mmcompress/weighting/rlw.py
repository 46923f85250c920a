"""Random loss weighting (Lin, Ye, Xu, Shi, Zhang & Tsang, "Reasonable Effectiveness of Random
Weighting: A Litmus Test for Multi-Task Learning", TMLR 2022)."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from mmcompress.weighting import base

__all__ = ["draw_weights", "rlw"]


def draw_weights(key: jax.Array, num_tasks: int) -> jax.Array:
  """One step's random task weights: softmax(z) with z ~ N(0, I_K) drawn from `key`."""
  return jax.nn.softmax(jax.random.normal(key, (num_tasks,)))


def rlw(*, task_scales: ArrayLike | None = None) -> base.TaskWeighting:
  """Random loss weighting (RLW, Lin et al., TMLR 2022), with normally distributed logits.

  Every step draws fresh weights w = softmax(z), z ~ N(0, I_K), from the step's `key`, and
  the objective is Σ_k w_k c_k L_k. The weights sum to one, so this is already the mean's
  scale; the reference (LibMTL's ``RLW`` with ``dist="Normal"``) adds the same Σ_k w_k L_k,
  so RLW has no separate ``"reference"`` reduction. The weights are constants for the
  gradient.

  `weights` (for logging) returns 1/K, the expectation of the draws (the softmax of i.i.d.
  logits is exchangeable, so every task's expected weight is the same), not the last draw.

  Args:
    task_scales: optional fixed per-task loss scales c_k.
  """
  scales = base.check_task_scales(task_scales)

  def objective(task_losses, task_params, task_state, key=None):
    del task_params, task_state
    if key is None:
      raise ValueError("rlw draws its task weights at random: its objective needs the step's "
                       "PRNG key (objective(task_losses, task_params, task_state, key)).")
    losses = base.scaled(task_losses, scales)
    w = jax.lax.stop_gradient(draw_weights(key, losses.shape[0]))
    return jnp.dot(w, losses)

  return base.TaskWeighting("rlw", base.counted_tasks, objective, optax.set_to_zero(),
                           base.no_epoch_memory, base.uniform_weights)
