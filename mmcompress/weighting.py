"""Task weightings behind one interface, so a trainer need not know which one it runs.

A `TaskWeighting` bundles what a training loop needs from a way of weighting K task losses:

* ``init(num_tasks) -> (task_params, task_state)``: the weighting's *learnable* values
  (``task_params``: min-max's task weights, uncertainty's log-variances, nothing for the
  others) and its *non-learned* memory (``task_state``: DWA's loss history).
* ``objective(task_losses, task_params, task_state) -> scalar``: the pure function to
  differentiate, jointly with the model, in one `jax.grad` over
  ``{"params": model, "task_weights": task_params}``.
* ``tx``: the optax transform for ``task_params`` (an ascent for min-max, a descent for
  uncertainty, zero updates otherwise); pair it with the model's optimizer through
  `mmcompress.saddle_point`.
* ``end_epoch(task_state, epoch_mean_losses) -> task_state``: called once per epoch with the
  mean training loss of each task (only DWA uses it).
* ``weights(task_params, task_state) -> (K,)``: the effective task weights, summing to one,
  for logging and plots.

The ``reduction`` of `equal`, `uncertainty` and `dwa` says how the task losses are added up:

* ``"mean"`` (the default): every objective is normalised so that, at its starting point, it
  equals the mean of the task losses; the same descent learning rate then means the same
  thing for every weighting, min-max included.
* ``"reference"``: the reference implementation's sums, so that its baselines can be
  reproduced: equal sums the task losses, DWA weights them by K·softmax, uncertainty sums
  ½e^{−s_k} L_k + s_k / 2. Each is K times (uncertainty: K/2 times) its ``"mean"`` objective,
  so with SGD it takes that many times larger steps. Min-max has no reduction: its weights stay
  on the simplex (sum one), as in the reference.

`weights` sums to one under either reduction. See docs/deviations.md.
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
from mmcompress.minmax import simplex_ascent
from mmcompress.objective import equal_task_weights, saddle_objective


class TaskWeighting(NamedTuple):
  """A way of weighting task losses; see the module docstring for each field's contract."""
  name: str
  init: Callable[[int], tuple[Any, Any]]
  objective: Callable[[jax.Array, Any, Any], jax.Array]
  tx: optax.GradientTransformation
  end_epoch: Callable[[Any, jax.Array], Any]
  weights: Callable[[Any, Any], jax.Array]


def _scaled(task_losses: ArrayLike, task_scales: np.ndarray | None) -> jax.Array:
  task_losses = jnp.asarray(task_losses)
  return task_losses if task_scales is None else task_scales * task_losses


def _scales(task_scales: ArrayLike | None) -> np.ndarray | None:
  # NumPy, not jax: validating a config must not touch a device (multi-host start-up).
  if task_scales is None:
    return None
  scales = np.asarray(task_scales, np.float32)
  if scales.ndim != 1 or not np.all(scales > 0):
    raise ValueError(f"task_scales must be a vector of positive numbers, got {task_scales!r}.")
  return scales


REDUCTIONS = ("mean", "reference")


def _reduction(reduction: str) -> str:
  return _checks.one_of(reduction, REDUCTIONS, "loss_reduction")


def _no_epoch_memory(task_state: Any, epoch_mean_losses: jax.Array) -> Any:
  del epoch_mean_losses
  return task_state


def equal(*, task_scales: ArrayLike | None = None, reduction: str = "mean") -> TaskWeighting:
  """Equal weights: the objective is the mean (``"reference"``: the sum) of the task losses.

  Args:
    task_scales: optional fixed per-task loss scales.
    reduction: ``"mean"`` or ``"reference"`` (see the module docstring).
  """
  scales = _scales(task_scales)
  reduce = jnp.sum if _reduction(reduction) == "reference" else jnp.mean

  def init(num_tasks: int) -> tuple[Any, Any]:
    _checks.positive_int(num_tasks, "num_tasks")
    return {}, jnp.zeros((num_tasks,), jnp.float32)

  def objective(task_losses, task_params, task_state):
    del task_params, task_state
    return reduce(_scaled(task_losses, scales))

  def weights(task_params, task_state):
    del task_params
    return jnp.full(task_state.shape, 1.0 / task_state.shape[0])

  return TaskWeighting("equal", init, objective, optax.set_to_zero(), _no_epoch_memory, weights)


def uncertainty(learning_rate: optax.ScalarOrSchedule = 1e-2, *,
                optimizer: optax.GradientTransformation | None = None,
                task_scales: ArrayLike | None = None, reduction: str = "mean",
                init_log_var: float = 0.0) -> TaskWeighting:
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
    reduction: ``"mean"`` or ``"reference"`` (see the module docstring).
    init_log_var: the starting value of every s_k.
  """
  scales = _scales(task_scales)
  factor = 0.5 if _reduction(reduction) == "reference" else None
  init_log_var = _checks.finite(init_log_var, "init_log_var")
  if optimizer is None:
    optimizer = optax.adam(_checks.learning_rate(learning_rate))

  def init(num_tasks: int) -> tuple[Any, Any]:
    _checks.positive_int(num_tasks, "num_tasks")
    return jnp.full((num_tasks,), init_log_var, jnp.float32), ()

  def objective(task_losses, log_vars, task_state):
    del task_state
    terms = jnp.exp(-log_vars) * _scaled(task_losses, scales) + log_vars
    return jnp.mean(terms) if factor is None else factor * jnp.sum(terms)

  def weights(log_vars, task_state):
    del task_state
    return jax.nn.softmax(-log_vars)

  return TaskWeighting("uncertainty", init, objective, optimizer, _no_epoch_memory, weights)


class DWAState(NamedTuple):
  """DWA's memory: the mean task losses of the last two epochs (row 1 the latest)."""
  history: jax.Array
  num_epochs: jax.Array


def dwa(temperature: float = 2.0, *, task_scales: ArrayLike | None = None,
        reduction: str = "mean") -> TaskWeighting:
  """Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019).

  w_k = softmax_k(r_k / T) with r_k = L̄_k(e−1) / L̄_k(e−2), the ratio of task k's mean
  training loss over the last two epochs; equal weights until two epochs have been seen.
  The objective is Σ_k w_k L_k (``reduction="reference"``: the paper's Σ_k K·w_k L_k).
  The weights are constants for the gradient.

  Args:
    temperature: T > 0 (the paper uses 2).
    task_scales: optional fixed per-task loss scales.
    reduction: ``"mean"`` or ``"reference"`` (see the module docstring).
  """
  temperature = _checks.positive(temperature, "temperature")
  scales = _scales(task_scales)
  by_count = _reduction(reduction) == "reference"

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

  def objective(task_losses, task_params, state: DWAState):
    w = jax.lax.stop_gradient(weights(task_params, state))
    if by_count:
      w = w.shape[0] * w
    return jnp.dot(w, _scaled(task_losses, scales))

  def end_epoch(state: DWAState, epoch_mean_losses: jax.Array) -> DWAState:
    latest = jnp.asarray(epoch_mean_losses, jnp.float32)
    return DWAState(history=jnp.stack([state.history[1], latest]),
                    num_epochs=state.num_epochs + 1)

  return TaskWeighting("dwa", init, objective, optax.set_to_zero(), end_epoch, weights)


def minmax(learning_rate: optax.ScalarOrSchedule = 0.02, *, gamma: float = 5.0,
           task_scales: ArrayLike | None = None, geometry: str = "euclidean",
           every: int = 1) -> TaskWeighting:
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
  scales = _scales(task_scales)
  tx = simplex_ascent(learning_rate, geometry=geometry, every=every)

  def init(num_tasks: int) -> tuple[Any, Any]:
    return equal_task_weights(num_tasks), ()

  def objective(task_losses, task_weights, task_state):
    del task_state
    return saddle_objective(task_losses, task_weights, gamma=gamma, task_scales=scales)

  def weights(task_weights, task_state):
    del task_state
    return task_weights

  return TaskWeighting("minmax", init, objective, tx, _no_epoch_memory, weights)


WEIGHTINGS = {"equal": equal, "uncertainty": uncertainty, "dwa": dwa, "minmax": minmax}


def create(name: str, **kwargs: Any) -> TaskWeighting:
  """The weighting called `name` (one of `WEIGHTINGS`), built with `kwargs`."""
  _checks.one_of(name, tuple(WEIGHTINGS), "weighting")
  return WEIGHTINGS[name](**kwargs)
