"""DB-MTL, dual-balancing multi-task learning (Lin et al., 2023), as a gradient-level
weighting with its own stateful aggregator."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from mmcompress import _checks
from mmcompress.weighting import base, gradient

__all__ = ["db_mtl", "db_mtl_aggregate", "DBMTLState"]

_LOG_EPS = 1e-8  # inside the logarithm of the losses, as the reference code


class DBMTLState(NamedTuple):
  """State of `db_mtl_aggregate`.

  Attributes:
    count: int32, updates made so far (the moving average's β/count^σ uses it).
    buffer: the moving average of each task's gradient: a tuple of K trees shaped like the
      params (the task-specific leaves are kept at zero: they are not averaged). K separate
      trees, not one tree of (K, ...) leaves, so that `optax.tree_map_params` (which
      `mmcompress.sparsity.dynamic_sparse` uses to reset changed entries) finds each of them
      as a params-shaped part of the state.
    task_weights: (K,) float32, the last update's α_k = max_j |ĝ_j| / |ĝ_k| over their sum.
  """
  count: jax.Array
  buffer: Any
  task_weights: jax.Array


def db_mtl_aggregate(num_tasks: int, *, beta: float = 0.9, beta_sigma: float = 0.0,
                     shared: gradient.SharedFn | None = None) -> optax.GradientTransformation:
  """DB-MTL's gradient balancing of stacked per-task gradients (of the log-losses).

  With t the update count (from 1): ĝ_k ← g_k + (β / t^σ)(ĝ_k − g_k) on the shared leaves
  (ĝ starts at zero), then d = Σ_k (max_j |ĝ_j| / |ĝ_k|) ĝ_k: every task's averaged gradient
  rescaled to the largest norm, summed (|·| over all shared leaves together). A task-specific
  leaf gets the sum of its rows, its own task's gradient. A zero ĝ_k gets the weight
  max_j |ĝ_j| / 1e-8 times a zero vector, so it contributes nothing (finite); G = 0 gives
  d = 0. As LibMTL's ``DB_MTL`` (1e-8 in the norm's denominator), with the direction itself
  returned (no scale or clip).

  Args:
    num_tasks: K.
    beta: β in [0, 1), the moving average's weight on the past (LibMTL's default 0.9).
    beta_sigma: σ >= 0, the decay of that weight with the step (LibMTL's default 0).
    shared: which leaves are shared (default `gradient.default_shared`).

  Returns:
    An `optax.GradientTransformation` with a `DBMTLState`; `update` requires `params`.
  """
  num_tasks = _checks.positive_int(num_tasks, "num_tasks")
  beta = _checks.fraction(beta, "db_mtl.beta")
  beta_sigma = _checks.non_negative(beta_sigma, "db_mtl.beta_sigma")
  shared = gradient.default_shared if shared is None else shared

  def init_fn(params: Any) -> DBMTLState:
    buffer = tuple(jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.result_type(p)), params)
                   for _ in range(num_tasks))
    return DBMTLState(count=jnp.zeros([], jnp.int32), buffer=buffer,
                      task_weights=jnp.full((num_tasks,), 1.0 / num_tasks, jnp.float32))

  def update_fn(updates: Any, state: DBMTLState, params: Any | None = None
                ) -> tuple[Any, DBMTLState]:
    flags = gradient.checked_flags(updates, params, num_tasks, shared, "db_mtl_aggregate")
    count = optax.safe_int32_increment(state.count)
    rate = beta / count.astype(jnp.float32) ** beta_sigma
    stacked = jax.tree.map(lambda *rows: jnp.stack(rows), *state.buffer)
    buffer = jax.tree.map(
        lambda b, g, s: g + (rate * (b - g)).astype(g.dtype) if s else b,
        stacked, updates, flags)
    averaged = jax.tree.map(lambda b, g, s: b if s else g, buffer, updates, flags)
    # Each row's norm with the row scaled by its own power of two (finite and non-zero for
    # rows of norm 1e20 or 1e-30, whose squares leave float32's range).
    norms = gradient.row_norms(averaged, flags)
    alpha = jnp.max(norms) / (norms + 1e-8)
    rows = tuple(jax.tree.map(lambda b, k=k: b[k], buffer) for k in range(num_tasks))
    return gradient.combine(averaged, flags, alpha), DBMTLState(
        count=count, buffer=rows, task_weights=gradient.normalised(alpha))

  return optax.GradientTransformation(init_fn, update_fn)


def db_mtl(beta: float = 0.9, beta_sigma: float = 0.0, *,
           task_scales: ArrayLike | None = None,
           shared: gradient.SharedFn | None = None) -> base.TaskWeighting:
  """DB-MTL (Lin, Ye, Xu, Wang & Zhang, "Dual-Balancing for Multi-Task Learning", 2023).

  Loss-scale balancing: each task's objective is log(c_k L_k + 1e-8), so every task's
  gradient is ∇L_k / L_k. Gradient-magnitude balancing: `db_mtl_aggregate`.

  Args:
    beta: the moving average's weight on the past.
    beta_sigma: its decay with the step.
    task_scales: optional fixed per-task loss scales c_k (a constant inside the log, so they
      change nothing but the logged loss; kept for a uniform interface).
    shared: which leaves are shared.
  """
  scales = base.check_task_scales(task_scales)
  db_mtl_aggregate(2, beta=beta, beta_sigma=beta_sigma, shared=shared)  # checks the knobs

  def objective(task_losses, task_params, task_state, key=None):
    del task_params, task_state, key
    return jnp.log(base.scaled(task_losses, scales) + _LOG_EPS)

  def make(num_tasks: int, seed: int = 0) -> optax.GradientTransformation:
    del seed
    return db_mtl_aggregate(num_tasks, beta=beta, beta_sigma=beta_sigma, shared=shared)

  return gradient.gradient_weighting("db_mtl", objective, make)
