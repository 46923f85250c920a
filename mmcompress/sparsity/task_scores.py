"""Task-aware importance scores for a multi-task network, and the masks they choose.

A multi-task network's weights matter to its tasks unequally: magnitude pruning is blind to
that. Here every task scores every weight on its own, in a "stacked" scores tree (each leaf
of shape (K, *param.shape), as `mmcompress.weighting.gradient.per_task_grads` stacks the
per-task gradients), and an aggregation turns the K scores into one params-shaped scores tree
for `score_masks` (or, for DiSparse, into masks directly):

* `taylor_scores`: |θ ⊙ ∂L_k/∂θ|, the first-order Taylor estimate of how much task k's loss
  changes when a weight is zeroed (SNIP's saliency, taken at a trained point);
* `magnitude_scores`: |θ| for every task, the task-blind baseline in the same format;
* `mean_scores`, `max_scores`, `minmax_scores`, `disparse_masks`: the aggregations, and
  `task_aware_masks`, which picks one by name (`AGGREGATIONS`).

The normalised scores s̃_k (`normalised_scores`) divide each task's scores by their sum over
the prunable entries (those that `include` selects), so that every task has the same total
say whatever the scale of its loss. A task whose scores are all zero there (a zero-sum task:
a task at a stationary point, or one that no prunable weight affects) has s̃_k = 0
everywhere: it adds nothing to `max_scores`, `minmax_scores` or `disparse_masks`'s vote and
the trim, and never a NaN. If every task is zero-sum, every aggregated score is zero and the
masks are those of the tie rule alone (lower index pruned first).

References:
  Lee, Ajanthan & Torr, "SNIP: Single-shot Network Pruning based on Connection Sensitivity",
  ICLR 2019 (the saliency |θ ⊙ ∂L/∂θ|).
  Molchanov, Mallya, Tyree, Frosio & Kautz, "Importance Estimation for Neural Network
  Pruning", CVPR 2019 (first-order Taylor importance of a trained network). Theirs is the
  square (θg)², averaged over minibatches; ours is |θg| (`taylor_scores`; the pipeline
  averages it over calibration batches, `mmcompress.train.scoring`). On one batch both rank a
  task's weights alike; averaged, the square leans on the batches with the largest changes,
  the absolute value estimates the expected size of the loss change itself, in the units of
  the task's loss. We keep the absolute value so that a score stays a loss change before the
  tasks' normalisation; no squared variant is offered.
  Sun, Hassani, Wang, Huang & Shi, "DiSparse: Disentangled Sparsification for Multitask
  Model Compression", CVPR 2022 (`disparse_masks`).
"""
from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from mmcompress import _checks
from mmcompress.sparsity import masks as masks_lib

__all__ = ["Aggregation", "AGGREGATIONS", "check_task_weights", "disparse_masks",
           "magnitude_scores", "max_scores", "mean_scores", "minmax_scores", "normalised_scores",
           "num_tasks_of", "task_aware_masks", "task_totals", "taylor_scores",
           "WEIGHTS_SUM_TOLERANCE"]


# How far the task weights of "minmax" may sum from one (float32 simplex projections).
WEIGHTS_SUM_TOLERANCE = 1e-5


def num_tasks_of(stacked: Any) -> int:
  """K, the leading axis shared by every leaf of a stacked scores tree; raises otherwise."""
  leaves = jax.tree.leaves(stacked)
  if not leaves:
    raise ValueError("the stacked scores have no leaf.")
  sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in leaves}
  if len(sizes) != 1 or None in sizes or 0 in sizes:
    raise ValueError(
        "stacked scores need every leaf of shape (K, *param.shape) with one K >= 1 for all "
        f"leaves; got leading sizes {sorted(sizes, key=str)}.")
  return sizes.pop()


def _check_stacked(stacked: Any, params: Any, name: str) -> int:
  """Raises unless `stacked` is `params` with a leading K axis on every leaf; returns K."""
  num_tasks = num_tasks_of(stacked)
  _checks.same_structure(stacked, params, name, stacked=num_tasks)
  return num_tasks


def taylor_scores(params: Any, stacked_grads: Any) -> Any:
  """Per task, |θ ⊙ ∂L_k/∂θ|: the first-order Taylor saliency of every weight.

  Zeroing weight i changes L_k by about -θ_i ∂L_k/∂θ_i (the first term of the Taylor series
  at θ), so its magnitude estimates how much task k loses with the weight. It is SNIP's
  connection sensitivity |∂L_k/∂c ⊙ 1| with c the mask, evaluated at the trained point; the
  gradients are whatever the caller took (one batch, or an average of several).

  Args:
    params: the parameters θ.
    stacked_grads: the per-task gradients, every leaf of shape (K, *param.shape)
      (`per_task_grads`).

  Returns:
    The stacked scores: leaves of shape (K, *param.shape), ``out[k] = |θ ⊙ g_k|``.

  >>> taylor_scores(jnp.array([2.0, -1.0]), jnp.array([[0.5, 3.0], [-1.0, 0.0]])).tolist()
  [[1.0, 3.0], [2.0, 0.0]]
  """
  _check_stacked(stacked_grads, params, "stacked_grads")
  return jax.tree.map(lambda p, g: jnp.abs(g * jnp.asarray(p)[None]), params, stacked_grads)


def magnitude_scores(params: Any, num_tasks: int) -> Any:
  """|θ| for each of `num_tasks` tasks: magnitude pruning's scores as stacked scores.

  Args:
    params: the parameters θ.
    num_tasks: K.

  Returns:
    Leaves of shape (K, *param.shape), every task's row |θ|.
  """
  num_tasks = _checks.positive_int(num_tasks, "num_tasks")
  return jax.tree.map(
      lambda p: jnp.broadcast_to(jnp.abs(p), (num_tasks, *jnp.shape(p))), params)


def _prunable_flags(stacked: Any, include: masks_lib.IncludeFn | None) -> Any:
  """`include` over a params-shaped tree: task 0's scores."""
  include = masks_lib.resolve_include(include)
  return masks_lib.prunable_flags(jax.tree.map(lambda s: s[0], stacked), include)


def task_totals(stacked: Any, include: masks_lib.IncludeFn | None = None) -> jax.Array:
  """(K,) float32: each task's total score over the prunable entries.

  Args:
    stacked: stacked scores, every leaf of shape (K, *param.shape).
    include: `(path, leaf) -> bool` choosing the prunable leaves (called on task 0's
      params-shaped scores); `default_include` if None.

  Returns:
    Σ over the prunable entries of task k's scores, for every k (0 when nothing is prunable).
  """
  num_tasks = num_tasks_of(stacked)
  flags = _prunable_flags(stacked, include)
  total = jnp.zeros((num_tasks,), jnp.float32)
  for leaf, prunable in zip(jax.tree.leaves(stacked), jax.tree.leaves(flags)):
    if prunable:
      total = total + jnp.sum(jnp.asarray(leaf, jnp.float32).reshape(num_tasks, -1), axis=1)
  return total


def normalised_scores(stacked: Any, include: masks_lib.IncludeFn | None = None) -> Any:
  """s̃_k = s_k / Σ_prunable s_k: every task's scores summing to one over the prunable entries.

  A zero-sum task (total 0) gets s̃_k = 0 everywhere. The leaves that are not prunable are
  divided by the same total (they are never pruned; their values are kept for inspection).
  The leaves are promoted to at least float32.

  Args:
    stacked: stacked non-negative scores, every leaf of shape (K, *param.shape).
    include: as for `task_totals`.

  Returns:
    The normalised stacked scores, shaped like `stacked`.
  """
  total = task_totals(stacked, include)
  positive = total > 0
  safe = jnp.where(positive, total, 1.0)

  def one(leaf):
    leaf = jnp.asarray(leaf)
    leaf = leaf.astype(jnp.promote_types(leaf.dtype, jnp.float32))
    shape = (-1,) + (1,) * (leaf.ndim - 1)
    return jnp.where(positive.reshape(shape), leaf / safe.astype(leaf.dtype).reshape(shape),
                     jnp.zeros((), leaf.dtype))

  return jax.tree.map(one, stacked)


def mean_scores(stacked: Any) -> Any:
  """The mean over tasks of the raw scores, (1/K) Σ_k s_k.

  Not normalised: a task whose scores are larger (a larger loss, or a loss more sensitive to
  the weights) weighs more, as it would in the gradient of the sum of the losses. For
  `magnitude_scores` it is |θ| again (up to rounding).

  Args:
    stacked: stacked scores, every leaf of shape (K, *param.shape).

  Returns:
    A params-shaped scores tree.
  """
  num_tasks_of(stacked)
  return jax.tree.map(lambda s: jnp.mean(jnp.asarray(s), axis=0), stacked)


def max_scores(stacked: Any, include: masks_lib.IncludeFn | None = None) -> Any:
  """max_k s̃_k: a weight is as important as it is to the task that needs it most.

  Every task's scores are normalised first (`normalised_scores`), so a task with small
  scores still keeps the weights it relies on, which the mean of the raw scores would give
  to the task with the larger ones.

  Args:
    stacked: stacked non-negative scores, every leaf of shape (K, *param.shape).
    include: the prunable leaves of the normalisation, as for `task_totals`.

  Returns:
    A params-shaped scores tree.
  """
  return jax.tree.map(lambda s: jnp.max(s, axis=0), normalised_scores(stacked, include))


def check_task_weights(task_weights: ArrayLike, num_tasks: int) -> jax.Array:
  """Returns `task_weights` as an array after checking it is a (K,) point of the simplex.

  The shape is always checked; the values (finite, non-negative, summing to one within
  `WEIGHTS_SUM_TOLERANCE`) when they are concrete, not under `jax.jit`.
  """
  if task_weights is None:
    raise ValueError(f"aggregate 'minmax' needs task_weights: a ({num_tasks},) array of "
                     "non-negative weights summing to one (the min-max weighting's task "
                     "weights).")
  weights = jnp.asarray(task_weights)
  if weights.shape != (num_tasks,):
    raise ValueError(f"task_weights must have shape ({num_tasks},), one weight per task, got "
                     f"shape {weights.shape}.")
  if not isinstance(weights, jax.core.Tracer):
    values = np.asarray(weights, np.float64)
    if not np.isfinite(values).all() or (values < 0).any():
      raise ValueError(f"task_weights must be finite and non-negative, got {values.tolist()}.")
    if abs(values.sum() - 1.0) > WEIGHTS_SUM_TOLERANCE:
      raise ValueError(f"task_weights must sum to one, got {values.tolist()} (sum "
                       f"{values.sum()}).")
  return weights


def minmax_scores(stacked: Any, task_weights: ArrayLike,
                  include: masks_lib.IncludeFn | None = None) -> Any:
  """Σ_k w_k s̃_k: the normalised scores weighted by the task weights.

  With the task weights of the min-max weighting (the worst-off tasks weigh most), the
  weights that the hardest tasks need are kept first. One-hot weights give that task's own
  normalised scores exactly (the sum is taken entry by entry, not as a matrix product).

  Args:
    stacked: stacked non-negative scores, every leaf of shape (K, *param.shape).
    task_weights: (K,), non-negative, summing to one.
    include: the prunable leaves of the normalisation, as for `task_totals`.

  Returns:
    A params-shaped scores tree.
  """
  weights = check_task_weights(task_weights, num_tasks_of(stacked))

  def one(s):
    w = weights.astype(s.dtype).reshape((-1,) + (1,) * (s.ndim - 1))
    return jnp.sum(w * s, axis=0)

  return jax.tree.map(one, normalised_scores(stacked, include))


def _task_rows(stacked: Any, k: int) -> Any:
  return jax.tree.map(lambda s: jnp.asarray(s)[k], stacked)


def _votes(scores: Any, kept: Any, structure: str) -> Any:
  """The entries (whole filters, for "filter") that a task keeps and scores above zero."""
  kind, _, _ = masks_lib.parse_structure(structure)

  def one(s, m):
    positive = s > 0
    if kind == "filter" and positive.ndim:
      positive = jnp.broadcast_to(
          jnp.any(positive, axis=tuple(range(positive.ndim - 1))), positive.shape)
    return m & positive

  return jax.tree.map(one, scores, kept)


def disparse_masks(stacked: Any,
                   sparsity: float | None,
                   *,
                   structure: str = "unstructured",
                   scope: str = "layer",
                   include: masks_lib.IncludeFn | None = None) -> Any:
  """DiSparse's union of the tasks' own masks, trimmed to the exact budget.

  Every task chooses its own masks, ``score_masks(s_k, sparsity, ...)``, as if it were
  alone; a weight is kept if any task keeps it (the union: a weight is pruned only when every
  task agrees to prune it). The union holds at least the budget in every layer (per layer),
  in all (global) or in every group (n:m), since each task's masks hold exactly the budget;
  it is then trimmed back to exactly the budget of `score_masks`, lowest first by the mean
  normalised score (1/K) Σ_k s̃_k, every entry outside the union ranking below every entry
  inside it (`tiered_score_masks`). When the union has exactly the budget, it is the result.

  A task votes only for the entries it keeps *and* scores above zero (for "filter": the
  filters with an entry above zero): an entry that a task keeps at score 0 is kept only
  because the task's budget exceeds its non-zero scores, and the tie rule chose it, not the
  task. A zero-sum task therefore votes for nothing; where the votes fall short of the budget
  the rest is filled from outside them by the mean normalised score (if no task votes, the
  masks are those of the tie rule).

  Where ours differs from DiSparse (Sun et al., CVPR 2022, and the authors' released code):

  * DiSparse keeps the union untrimmed, so its shared layers come out denser than the
    target; we trim it, so every aggregation has the same exact budget.
  * DiSparse's task masks are one global unstructured top-k over all of a task's layers
    (``int(n * keep_ratio)`` kept) with a ``>=`` threshold (every entry tied at the threshold
    is kept, so a count may exceed the budget); ours are `score_masks`'s, with its structure
    ("filter", "n:m" too), scope (per layer by default), exact counts and tie rule.
  * DiSparse prunes a task's private layers (its decoder) with that task's mask alone and the
    shared backbone with the union; we take the union on every leaf that `include` selects
    (by default not the prediction heads, which stay dense). On a task-specific leaf the
    other tasks' scores are zero, so they do not vote there and the owner's mask survives.
  * DiSparse has its own scores (SNIP's at a re-initialised network for sparse training from
    scratch; for a pre-trained one, in the released code, the summed |∂L_k/∂θ| of several
    batches times θ²) and a dynamic sparse training variant; ours takes any stacked scores
    (e.g. `taylor_scores`) and makes one-shot masks only.

  Args:
    stacked: stacked non-negative scores, every leaf of shape (K, *param.shape).
    sparsity, structure, scope: as for `score_masks`.
    include: `(path, leaf) -> bool` choosing the prunable leaves (called on params-shaped
      scores); `default_include` if None.

  Returns:
    A pytree of bool keep-masks shaped like the parameters, with exactly `score_masks`'s
    budget.
  """
  num_tasks = num_tasks_of(stacked)
  kwargs = dict(structure=structure, scope=scope, include=include)
  union = None
  for k in range(num_tasks):
    rows = _task_rows(stacked, k)
    votes = _votes(rows, masks_lib.score_masks(rows, sparsity, **kwargs), structure)
    union = votes if union is None else jax.tree.map(jnp.logical_or, union, votes)
  ranking = mean_scores(normalised_scores(stacked, include))
  return masks_lib.tiered_score_masks(ranking, union, sparsity, **kwargs)


class Aggregation(NamedTuple):
  """How the K per-task scores of every weight become one ranking.

  Attributes:
    scores: ``(stacked, include, task_weights) -> scores``: the params-shaped scores that
      `score_masks` ranks, or, for a `union` rule, the stacked normalised scores each task
      chooses by.
    weighted: whether it takes the task weights (then they are required).
    union: DiSparse's rule: each task keeps its own best entries, the union trimmed to the
      budget by their mean (`disparse_masks`).
  """
  scores: Callable[[Any, masks_lib.IncludeFn | None, Any], Any]
  weighted: bool = False
  union: bool = False


# name -> the aggregation: one line each; the pipeline's criteria ("taylor_<name>") and
# dynamic sparse training's task-aware growth ("task_<name>") are read from here.
AGGREGATIONS = types.MappingProxyType({
    "mean": Aggregation(lambda stacked, include, w: mean_scores(stacked)),
    "max": Aggregation(lambda stacked, include, w: max_scores(stacked, include)),
    "disparse": Aggregation(lambda stacked, include, w: normalised_scores(stacked, include),
                            union=True),
    "minmax": Aggregation(lambda stacked, include, w: minmax_scores(stacked, w, include),
                          weighted=True),
})


def task_aware_masks(stacked: Any,
                     sparsity: float | None,
                     *,
                     aggregate: str,
                     task_weights: ArrayLike | None = None,
                     structure: str = "unstructured",
                     scope: str = "layer",
                     include: masks_lib.IncludeFn | None = None) -> Any:
  """Keep-masks from stacked per-task scores, aggregated by name.

  * "mean": `score_masks` of `mean_scores` (for `magnitude_scores`: magnitude pruning);
  * "max": `score_masks` of `max_scores`;
  * "disparse": `disparse_masks`;
  * "minmax": `score_masks` of `minmax_scores` with `task_weights`.

  Every aggregation has exactly the budget of `score_masks` for the same `sparsity`,
  `structure` and `scope`.

  Args:
    stacked: stacked non-negative scores, every leaf of shape (K, *param.shape)
      (`taylor_scores`, `magnitude_scores`, ...).
    sparsity: as for `score_masks`.
    aggregate: one of `AGGREGATIONS`.
    task_weights: for "minmax" only (required there): (K,), non-negative, summing to one.
    structure, scope: as for `score_masks`.
    include: `(path, leaf) -> bool` choosing the prunable leaves, for the masks and the
      normalisation; `default_include` if None.

  Returns:
    A pytree of bool keep-masks shaped like the parameters.

  >>> stacked = {"kernel": jnp.array([[[4.0, 3.0], [0.0, 0.0]], [[0.0, 0.0], [0.2, 0.1]]])}
  >>> task_aware_masks(stacked, 0.5, aggregate="mean")["kernel"].tolist()
  [[True, True], [False, False]]
  >>> task_aware_masks(stacked, 0.5, aggregate="max")["kernel"].tolist()
  [[True, False], [True, False]]
  """
  rule = AGGREGATIONS[_checks.one_of(aggregate, tuple(AGGREGATIONS), "aggregate")]
  if not rule.weighted and task_weights is not None:
    weighted = [n for n, a in AGGREGATIONS.items() if a.weighted]
    raise ValueError(f"task_weights are for the aggregates {weighted} only, got aggregate "
                     f"{aggregate!r}.")
  kwargs = dict(structure=structure, scope=scope, include=include)
  if rule.union:
    return disparse_masks(stacked, sparsity, **kwargs)
  return masks_lib.score_masks(rule.scores(stacked, include, task_weights), sparsity, **kwargs)
