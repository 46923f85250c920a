"""Dynamic sparse training: active weights whose positions move during training.

Every `update_every` steps each prunable leaf drops its smallest-magnitude active weights and
grows new ones where the gradient is largest (RigL) or at random (SET). With the ``"exact"``
budget it grows as many as it drops, so the number of active weights never changes; with the
``"reference"`` budget it prunes back to the target and then grows ceil(g·n) more, as the
reference code does, so the density after an update is (1 − p) + g (docs/deviations.md).
Grown weights start at exactly zero and their optimizer state is reset, so nothing pruned
comes back through momentum or weight decay (as jaxpruner's `sparse_trainers.py`); an
Adam-style second moment is restarted at a value that keeps the first steps of a grown
weight no larger than a fresh Adam's (see `dynamic_sparse`).

References:
  Evci, Gale, Menick, Castro & Elsen, "Rigging the Lottery: Making All Tickets Winners",
  ICML 2020 (RigL, gradient growth).
  Mocanu et al., "Scalable training of artificial neural networks with adaptive sparse
  connectivity inspired by network science", Nature Communications 9, 2018 (SET, random
  growth).
  The journal extension of Guo et al., Neurocomputing 650, 2025 (docs/method.md §3).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mmcompress import _checks
from mmcompress.sparsity import masks as masks_lib
from mmcompress.sparsity import task_scores

__all__ = ["dynamic_sparse", "DynamicSparseState", "GROWTH"]


class DynamicSparseState(NamedTuple):
  """State of `dynamic_sparse`.

  Attributes:
    count: int32 scalar, the number of updates done so far.
    masks: bool arrays with the structure and shapes of the params (True = active weight).
    inner_state: the state of the wrapped optimizer.
    rng_key: uint32 raw key data (`jax.random.key_data`) for random growth; stored raw so
      that any checkpointer can save it.
  """
  count: jax.Array
  masks: Any
  inner_state: optax.OptState
  rng_key: jax.Array


def _grow_order(after_drop: jax.Array, grow_score: jax.Array, k: int) -> jax.Array:
  """The flat indices in the order regrowth takes them: the entries inactive after the drop
  first, then by score descending, ties to the lower index.

  `grow_score` is flat (n,), or (K, n) per-task scores for DiSparse's union (``task_disparse``):
  then an entry is first a vote of some task (among that task's k best-scored inactive
  entries, with a score above zero), then by the mean over tasks of the scores; so when the
  votes hold exactly k entries those are grown, and more are trimmed by the mean.
  """
  if grow_score.ndim == 1:
    return masks_lib.grouped_order(after_drop, -grow_score)

  def votes(score):
    top = masks_lib.grouped_order(after_drop, -score)[:k]
    return jnp.zeros(after_drop.shape, bool).at[top].set(score[top] > 0)

  union = jnp.any(jax.vmap(votes)(grow_score), axis=0)
  index = jnp.arange(after_drop.size, dtype=jnp.int32)
  return jax.lax.sort((after_drop.astype(jnp.int32), (~union).astype(jnp.int32),
                       -jnp.mean(grow_score, axis=0), index), num_keys=4)[-1]


def _flat_scores(grow_score: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """A leaf's growth scores flattened: (n,), or (K, n) when they are per task."""
  return grow_score.reshape((-1,) if grow_score.shape == shape else (grow_score.shape[0], -1))


def _regrow_leaf(mask: jax.Array, new_weight: jax.Array, grow_score: jax.Array,
                 k: int) -> jax.Array:
  """Drops the k active entries of smallest |new_weight|, grows the k best-scored inactive.

  Both selections sort with a primary key that puts the candidates first, then the score,
  then the flattened index, so ties go to the lower index (`_grow_order`).
  """
  shape = mask.shape
  mask = mask.reshape(-1)
  # Drop: active entries first (key 0), then by |w| ascending.
  drop_order = masks_lib.grouped_order(~mask, jnp.abs(new_weight).reshape(-1))
  after_drop = mask.at[drop_order[:k]].set(False)
  grow_order = _grow_order(after_drop, _flat_scores(grow_score, shape), k)
  return after_drop.at[grow_order[:k]].set(True).reshape(shape)


def _prune_back_and_grow(mask: jax.Array, new_weight: jax.Array, grow_score: jax.Array,
                         keep: int, k: int) -> jax.Array:
  """Keeps the `keep` active entries of largest |new_weight|, then grows the k best-scored.

  The number of active entries is traced (it is `keep`, or `keep + k` after an earlier
  update), so the drop is a rank test on the same ordering as `_regrow_leaf`'s: the
  ``active - keep`` smallest active entries go (ties: lower index first).
  """
  shape = mask.shape
  mask = mask.reshape(-1)
  drop_order = masks_lib.grouped_order(~mask, jnp.abs(new_weight).reshape(-1))
  num_drop = jnp.sum(mask, dtype=jnp.int32) - keep
  rank = jnp.arange(mask.size, dtype=jnp.int32)
  dropped = jnp.zeros_like(mask).at[drop_order].set(rank < num_drop)
  after_drop = mask & ~dropped
  grow_order = _grow_order(after_drop, _flat_scores(grow_score, shape), k)
  return after_drop.at[grow_order[:k]].set(True).reshape(shape)


def _second_moment_fill(nu: jax.Array, grown: jax.Array, kept: jax.Array,
                        grad: jax.Array) -> jax.Array:
  """`nu` with each grown entry set to max(grad², mean of nu over the kept entries)."""
  kept_count = jnp.maximum(jnp.sum(kept, dtype=jnp.int32), 1).astype(nu.dtype)
  layer_mean = jnp.sum(jnp.where(kept, nu, 0), dtype=nu.dtype) / kept_count
  fill = jnp.maximum(jnp.square(grad).astype(nu.dtype), layer_mean)
  return jnp.where(grown, fill, nu)


def _restart_second_moments(state: Any, grown: Any, kept: Any, grads: Any) -> Any:
  """Applies `_second_moment_fill` to every ``nu`` field in `state` shaped like the params.

  Walks tuples, lists, dicts and NamedTuples (optax's chain, inject_hyperparams, adam, ...);
  a ``nu`` whose tree differs from the params' (e.g. inside ``optax.masked``) is left as it is.
  """
  structure = jax.tree.structure(grown)
  if isinstance(state, tuple) and hasattr(state, "_fields"):
    fields = {}
    for name in state._fields:
      value = getattr(state, name)
      if name == "nu" and jax.tree.structure(value) == structure:
        fields[name] = jax.tree.map(_second_moment_fill, value, grown, kept, grads)
      else:
        fields[name] = _restart_second_moments(value, grown, kept, grads)
    return state._replace(**fields)
  if isinstance(state, (tuple, list)):
    return type(state)(_restart_second_moments(v, grown, kept, grads) for v in state)
  if isinstance(state, dict):
    return {k: _restart_second_moments(v, grown, kept, grads) for k, v in state.items()}
  return state


# Regrowth by the summed gradient (RigL), at random (SET), or task-aware: "task_<name>" for
# every aggregation of `task_scores.AGGREGATIONS`.
GROWTH = ("gradient", "random") + tuple(f"task_{a}" for a in task_scores.AGGREGATIONS)


def _growth_scores(updates: Any, params: Any, rule: "_GrowthRule",
                   task_weights: jax.Array | None) -> Any:
  """What regrowth ranks the inactive entries by: the (task-summed) gradient, or for a
  task-aware rule the per-task gradient magnitudes |g_k| aggregated across the tasks as the
  pruning aggregates do (`mmcompress.sparsity.task_scores`), each task's magnitudes normalised
  to sum one over the prunable entries (s̃_k) except for ``task_mean``:

  * ``task_mean``: (1/K) Σ_k |g_k|;
  * ``task_max``: max_k s̃_k, so that a weight one task needs is grown even when another
    task's gradients are larger;
  * ``task_disparse``: DiSparse's union: each task's k best-scored inactive entries, trimmed
    to k by (1/K) Σ_k s̃_k (the stacked s̃ go to `_grow_order`);
  * ``task_minmax``: Σ_k w_k s̃_k with the task weights w the step passes (min-max's: the
    worst-off tasks choose first).
  """
  if not rule.grow.startswith("task_"):
    return _summed_over_tasks(updates, params)
  for g, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
    if jnp.ndim(g) != jnp.ndim(p) + 1:
      raise ValueError(
          f"grow={rule.grow!r} ranks by per-task gradients: dynamic_sparse needs them stacked "
          "(a leading K axis on every leaf, from mmcompress.weighting.per_task_grads), with "
          "an inner chain that combines them first (mmcompress.weighting.aggregate or sum_tasks).")
  aggregation = task_scores.AGGREGATIONS[rule.grow[len("task_"):]]
  if aggregation.weighted and task_weights is None:
    raise ValueError(
        f"grow={rule.grow!r} weights the tasks' gradients by their task weights: pass them as "
        "dynamic_sparse(...).update(updates, state, params, task_weights=w) (the trainer's "
        "step does; mmcompress.saddle_point forwards it to the descent).")
  return aggregation.scores(jax.tree.map(jnp.abs, updates), rule.include, task_weights)


def _summed_over_tasks(updates: Any, params: Any) -> Any:
  """The gradient with a leading per-task axis summed away (as it is when there is none):
  regrowth scores stacked per-task gradients by the gradient of the tasks' sum."""
  return jax.tree.map(lambda g, p: jnp.sum(g, axis=0) if jnp.ndim(g) == jnp.ndim(p) + 1 else g,
                      updates, params)


class _GrowthRule(NamedTuple):
  """How `dynamic_sparse` moves its masks (static: fixed when the transform is built)."""
  sparsity: float
  grow_fraction: float
  grow: str
  budget: str
  include: masks_lib.IncludeFn


def _regrow(masks: Any, new_params: Any, grads: Any, key: jax.Array, rule: _GrowthRule) -> Any:
  """The masks after one drop-and-grow update of every prunable leaf (step 2 of
  `dynamic_sparse`)."""
  flags = masks_lib.prunable_flags(new_params, rule.include)
  leaves, treedef = jax.tree.flatten(masks)
  weights = treedef.flatten_up_to(new_params)
  grad_leaves = treedef.flatten_up_to(grads)
  flag_leaves = treedef.flatten_up_to(flags)
  out = []
  for index, (mask, weight, grad, prunable) in enumerate(
      zip(leaves, weights, grad_leaves, flag_leaves)):
    n = mask.size
    active = n - masks_lib.prune_count(rule.sparsity, n)
    if rule.budget == "exact":
      k = min(masks_lib.prune_count(rule.grow_fraction, n), active, n - active)
    else:  # the reference's ceil, on the same float product as its code
      k = min(math.ceil(n * rule.grow_fraction), n - active)
    if not prunable or k == 0:
      out.append(mask)
      continue
    if rule.grow == "random":
      score = jax.random.uniform(jax.random.fold_in(key, index), mask.shape)
    else:  # the gradient's magnitude, or the task-aware score (`_growth_scores`)
      score = jnp.abs(grad)
    if rule.budget == "exact":
      out.append(_regrow_leaf(mask, weight, score, k))
    else:
      out.append(_prune_back_and_grow(mask, weight, score, active, k))
  return jax.tree.unflatten(treedef, out)


def _reset_changed(inner: optax.GradientTransformation, inner_state: Any, new_masks: Any,
                   masks: Any, grads: Callable[[], Any], due: jax.Array) -> Any:
  """The inner state with every entry whose mask changed at zero, and the second moments of
  grown entries restarted (step 3 of `dynamic_sparse`; `grads()` gives the gradient they
  restart from). Between mask updates no mask changes: the state is passed through without
  touching it."""
  def reset_all(state):
    changed = jax.tree.map(jnp.not_equal, new_masks, masks)

    def reset(value, changed_leaf):
      if getattr(value, "shape", None) != changed_leaf.shape:
        return value
      return jnp.where(changed_leaf, jnp.zeros((), jnp.result_type(value)), value)

    state = optax.tree_utils.tree_map_params(inner, reset, state, changed)
    grown = jax.tree.map(lambda new, old: new & ~old, new_masks, masks)
    kept = jax.tree.map(jnp.logical_and, new_masks, masks)
    return _restart_second_moments(state, grown, kept, grads())

  return jax.lax.cond(due, reset_all, lambda state: state, inner_state)


def dynamic_sparse(inner: optax.GradientTransformation,
                   *,
                   sparsity: float,
                   update_every: int,
                   grow_fraction: float,
                   grow: str = "gradient",
                   end_step: int | None = None,
                   include: masks_lib.IncludeFn | None = None,
                   seed: int = 0,
                   budget: str = "exact") -> optax.GradientTransformation:
  """Sparse training with drop-and-grow mask updates (RigL / SET).

  `init(params)` sets the masks to `magnitude_masks(params, sparsity, include=include)`
  (unstructured, per layer), so each prunable leaf of n entries starts with
  `a = n - floor(sparsity * n + 0.5)` active weights (with ``budget="exact"``: forever).

  `update(grads, state, params)`, with t the count before the update:

  1. the gradient is masked, the inner optimizer runs on it (seeing the masked params) and
     its update `u` is masked: `u_m = where(mask, u, 0)`; stacked per-task gradients (a
     leading K axis on every leaf, for an inner chain that starts with
     `mmcompress.weighting.aggregate`) are masked task by task, and their sum over the tasks
     is the "dense incoming gradient" that scores regrowth in 2;
  2. if `(t + 1) % update_every == 0` and (`end_step` is None or `t < end_step`), each
     prunable leaf updates its mask. With ``budget="exact"`` it moves
     `k = min(floor(grow_fraction * n + 0.5), a, n - a)` weights: the k active entries with
     the smallest `|p + u_m|` are dropped, then k entries inactive after the drop are grown,
     so every leaf keeps exactly `a` active weights. With ``budget="reference"`` (the
     reference code's rule) it drops the smallest active entries until `a` remain (pruning
     back to the target), then grows `k = min(ceil(grow_fraction * n), n - a)`, so a leaf has
     `a + k` active weights after every update, density (1 − sparsity) + grow_fraction. Grown
     are the entries inactive after the drop with the largest `|grad|` of the dense incoming
     gradient ("gradient") or the largest uniform random score ("random", key folded with t);
     all ties go to the lower flattened index. An entry dropped and grown back in the same
     update keeps its weight and state; a newly active entry ("grown") starts at exactly
     zero;
  3. the inner optimizer state is set to zero at every entry whose mask changed, except any
     second moment (a field named ``nu`` shaped like the params, as in `optax.adam`'s
     state), which restarts at grown entries at `max(grad², mean of the leaf's nu over the
     entries that stay active)` (see "Adam after regrowth" below);
  4. the returned update is `where(new_mask, u_m, -p)` with `-p` also at grown entries, so
     after the step the params are exactly zero off the mask and at grown entries.

  The decision in 2 is a `jax.lax.cond` on the traced count, so the step jit-compiles once.

  Adam after regrowth: optax's Adam keeps one step count for bias correction. Zeroing a
  grown entry's moments at a count of thousands leaves the correction at about 1, so its
  second moment ramps up from 0 over ~1/(1 − b2) steps while the first moment ramps up over
  ~1/(1 − b1): the steps of a grown weight are then 4–6 times the learning rate for tens of
  steps (for a steady gradient, up to (1 − b1^j) / sqrt(1 − b2^j) ≈ 6.5 at j ≈ 12). A
  per-entry step count would fix the correction exactly, but optax's Adam has no place for
  one, and rescaling its output would need its b1, b2 and would also rescale any weight
  decay chained with it. Restarting the second moment instead works for any optimizer
  that names its second moment ``nu``: with the first moment at 0 and the second at
  V >= grad², step j of a grown weight is at most (1 − b1^j) max|g| / sqrt(b2^j V) times the
  learning rate, i.e. at most about the learning rate while the gradient stays near the one
  it was grown for, which is what a fresh Adam's steps are. The gradient at regrowth is the
  value a fresh Adam's bias-corrected second moment would hold after its first step; the
  layer's mean second moment is a floor for entries grown at random with a near-zero
  gradient. Early in training, when the global bias correction 1 − b2^t is far below 1,
  this errs towards smaller steps.

  Args:
    inner: the optimizer of the active weights, e.g. `optax.sgd(0.1, momentum=0.9)`.
    sparsity: the fraction in [0, 1) of each prunable leaf that is inactive.
    update_every: ΔT, update the masks every this many steps (int >= 1).
    grow_fraction: the fraction in [0, 1) of each leaf's entries moved per mask update
      (reference: 0.0051 at 60x, 0.003 at 100x).
    grow: "gradient" (RigL), "random" (SET), or task-aware "task_mean" / "task_max" /
      "task_disparse" / "task_minmax": the per-task gradient magnitudes aggregated across
      tasks (`_growth_scores`; they need stacked per-task gradients, see 1, and
      "task_minmax" the task weights, passed to `update` as ``task_weights=``).
    end_step: None, or stop updating the masks once the count reaches this (int >= 1).
    include: `(path, leaf) -> bool` selecting the prunable leaves; `default_include` if None.
    seed: integer seed of the random growth.
    budget: ``"exact"`` (a constant number of active weights) or ``"reference"`` (prune back
      to the target, then grow ceil(grow_fraction · n) more; see 2).

  Returns:
    An `optax.GradientTransformationExtraArgs` with state `DynamicSparseState`; `update`
    requires params and takes the keyword ``task_weights`` ((K,) on the simplex, used by
    ``grow="task_minmax"`` only; any other keyword is ignored, as in an `optax.chain`).
  """
  masks_lib.check_inner(inner)
  sparsity = _checks.sparsity(sparsity)
  update_every = _checks.positive_int(update_every, "update_every")
  grow_fraction = _checks.fraction(grow_fraction, "grow_fraction")
  grow = _checks.one_of(grow, GROWTH, "grow")
  if end_step is not None:
    end_step = _checks.positive_int(end_step, "end_step")
  include = masks_lib.resolve_include(include)
  if isinstance(seed, bool) or not isinstance(seed, int):
    raise ValueError(f"seed must be an integer, got {seed!r}.")
  budget = _checks.one_of(budget, ("exact", "reference"), "budget")
  rule = _GrowthRule(sparsity, grow_fraction, grow, budget, include)

  def init_fn(params):
    masks = masks_lib.magnitude_masks(params, sparsity, include=include)
    return DynamicSparseState(
        count=jnp.zeros((), jnp.int32),
        masks=masks,
        inner_state=inner.init(masks_lib.mask_tree(params, masks)),
        rng_key=jax.random.key_data(jax.random.key(seed)))

  def update_fn(updates, state, params=None, *, task_weights=None, **extra_args):
    del extra_args  # what a chain passes to every link; the inner optimizer takes none
    if params is None:
      raise ValueError(
          "params must be passed to dynamic_sparse(...).update(updates, state, params).")
    _checks.same_structure(updates, params, "updates", stacked=True)
    if not isinstance(state, DynamicSparseState):
      raise TypeError(f"state must be the DynamicSparseState of this transform's init, got "
                      f"{type(state).__name__}.")
    _checks.same_structure(state.masks, params, "state.masks (from init(params))")
    t, masks = state.count, state.masks
    inner_updates, inner_state = inner.update(masks_lib.mask_tree(updates, masks),
                                              state.inner_state,
                                              masks_lib.mask_tree(params, masks))
    masked_updates = masks_lib.mask_tree(inner_updates, masks)

    due = (t + 1) % update_every == 0
    if end_step is not None:
      due = due & (t < end_step)
    new_params = jax.tree.map(lambda p, u: p + u, params, masked_updates)
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng_key), t)
    # The scores and the tasks' sum are needed only when the masks move: inside the conds.
    new_masks = jax.lax.cond(
        due, lambda: _regrow(masks, new_params,
                            _growth_scores(updates, params, rule, task_weights), key, rule),
        lambda: masks)

    inner_state = _reset_changed(inner, inner_state, new_masks, masks,
                                 lambda: _summed_over_tasks(updates, params), due)
    new_updates = jax.tree.map(
        lambda u, p, new, old: jnp.where(new & old, u, -p).astype(jnp.result_type(u)),
        masked_updates, params, new_masks, masks)
    return new_updates, DynamicSparseState(count=optax.safe_int32_increment(t), masks=new_masks,
                                           inner_state=inner_state, rng_key=state.rng_key)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
