"""Smooth Tchebycheff scalarisation (Lin, Zhang, Chen, Zhang & Zhang, "Smooth Tchebycheff
Scalarization for Multi-Objective Optimization", ICML 2024)."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from mmcompress import _checks
from mmcompress.weighting import base

__all__ = ["stch", "STCHState"]

_LOG_EPS = 1e-20  # inside every logarithm, as LibMTL's STCH


class STCHState(NamedTuple):
  """STCH's memory (all losses scaled by the task scales).

  Attributes:
    num_epochs: int32, epochs ended so far in the stage.
    loss_sum: (K,) the sum of the current epoch's step losses.
    num_steps: int32, the steps observed in the current epoch.
    nadir: (K,) the nadir point z: the mean loss of the last warm-up epoch (ones before).
    last_losses: (K,) the last step's losses (for `weights`).
  """
  num_epochs: jax.Array
  loss_sum: jax.Array
  num_steps: jax.Array
  nadir: jax.Array
  last_losses: jax.Array


def stch(mu: float = 1.0, warmup_epochs: int = 4, *, task_scales: ArrayLike | None = None,
         reduction: str = "mean") -> base.TaskWeighting:
  """Smooth Tchebycheff scalarisation (STCH, Lin et al., ICML 2024), as LibMTL's ``STCH``.

  During the first `warmup_epochs` epochs of a stage the objective is the mean of the
  log-losses, mean_k log(c_k L_k); the mean training loss of the last warm-up epoch (from
  the step losses `observe` accumulates, fixed by `end_epoch`) becomes the nadir point z.
  After it the objective is the smoothed maximum of the log-ratios to the nadir,
  μ·logsumexp_k(log(c_k L_k / z_k) / μ), whose gradient with respect to the log-losses is
  softmax(log(c L / z) / μ): weights summing to one that favour the task furthest above its
  nadir (μ → 0 is the Tchebycheff max). 1e-20 is added inside every logarithm, as LibMTL
  does. The scales c_k are constants inside logarithms (and z is in scaled units), so they
  change no gradient; they are kept for a uniform interface.

  ``reduction="reference"`` is LibMTL's objective: the sum of the log-losses during the
  warm-up and K·μ·logsumexp(...) after it, K times ``"mean"`` in both phases. ``"mean"``
  drops the K so that the weights on the log-losses sum to one, as they do for the mean
  loss of the other weightings.

  LibMTL counts epochs from 0 and warms up while ``epoch <= STCH_warmup_epoch``, so its
  default ``--STCH_warmup_epoch 4`` warms up for 5 epochs; `warmup_epochs` here is the number
  of warm-up epochs (pass 5 to match it). A fresh stage (a fresh task_state) warms up again.

  `weights` (for logging): softmax(log(c L / z) / μ) of the last step's losses after the
  warm-up (the objective's weights on the log-losses), 1/K during it.

  Args:
    mu: the smoothing μ > 0 (LibMTL's default 1).
    warmup_epochs: the number of warm-up epochs, >= 1 (LibMTL's default 4, see above).
    task_scales: optional fixed per-task loss scales c_k.
    reduction: ``"mean"`` or ``"reference"`` (see above).
  """
  mu = _checks.positive(mu, "stch.mu")
  warmup_epochs = _checks.positive_int(warmup_epochs, "stch.warmup_epochs")
  scales = base.check_task_scales(task_scales)
  by_count = base.check_reduction(reduction) == "reference"

  def init(num_tasks: int) -> tuple[Any, Any]:
    _checks.positive_int(num_tasks, "num_tasks")
    ones = jnp.ones((num_tasks,), jnp.float32)
    return {}, STCHState(num_epochs=jnp.zeros([], jnp.int32), loss_sum=jnp.zeros_like(ones),
                         num_steps=jnp.zeros([], jnp.int32), nadir=ones, last_losses=ones)

  def warmed_up(state: STCHState) -> jax.Array:
    return state.num_epochs >= warmup_epochs

  def objective(task_losses, task_params, state: STCHState, key=None):
    del task_params, key
    losses = base.scaled(task_losses, scales)
    num_tasks = losses.shape[0]
    warmup = jnp.mean(jnp.log(losses + _LOG_EPS))
    smooth_max = mu * jax.nn.logsumexp(jnp.log(losses / state.nadir + _LOG_EPS) / mu)
    value = jnp.where(warmed_up(state), smooth_max, warmup)
    return num_tasks * value if by_count else value

  def observe(state: STCHState, task_losses: jax.Array) -> STCHState:
    losses = jnp.asarray(base.scaled(task_losses, scales), jnp.float32)
    return state._replace(loss_sum=state.loss_sum + losses, num_steps=state.num_steps + 1,
                          last_losses=losses)

  def end_epoch(state: STCHState, epoch_mean_losses: jax.Array) -> STCHState:
    # The epoch's mean from the observed steps (from the loop's mean if none was observed).
    fallback = jnp.asarray(base.scaled(epoch_mean_losses, scales), jnp.float32)
    mean = jnp.where(state.num_steps > 0, state.loss_sum / jnp.maximum(state.num_steps, 1),
                     fallback)
    num_epochs = state.num_epochs + 1
    return STCHState(num_epochs=num_epochs, loss_sum=jnp.zeros_like(state.loss_sum),
                     num_steps=jnp.zeros_like(state.num_steps),
                     nadir=jnp.where(num_epochs == warmup_epochs, mean, state.nadir),
                     last_losses=state.last_losses)

  def weights(task_params, state: STCHState) -> jax.Array:
    del task_params
    num_tasks = state.nadir.shape[0]
    after = jax.nn.softmax(jnp.log(state.last_losses / state.nadir + _LOG_EPS) / mu)
    return jnp.where(warmed_up(state), after, jnp.full((num_tasks,), 1.0 / num_tasks))

  return base.TaskWeighting("stch", init, objective, optax.set_to_zero(), end_epoch, weights,
                           observe)
