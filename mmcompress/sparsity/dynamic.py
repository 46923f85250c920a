"""Dynamic sparse training: a constant number of active weights whose positions move.

Every `update_every` steps each prunable leaf drops its smallest-magnitude active weights and
grows the same number of new ones, where the gradient is largest (RigL) or at random (SET).
Grown weights start at exactly zero and their optimizer state is reset, so nothing pruned
comes back through momentum or weight decay (as jaxpruner's `sparse_trainers.py`).

References:
  Evci, Gale, Menick, Castro & Elsen, "Rigging the Lottery: Making All Tickets Winners",
  ICML 2020 (RigL, gradient growth).
  Mocanu et al., "Scalable training of artificial neural networks with adaptive sparse
  connectivity inspired by network science", Nature Communications 9, 2018 (SET, random
  growth).
  The journal extension of Guo et al., Neurocomputing 650, 2025 (docs/method.md §3).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mmcompress import _checks
from mmcompress.sparsity import masks as masks_lib
from mmcompress.sparsity.masked_training import check_inner, mask_tree


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


def _fraction(value: Any, name: str) -> float:
  """Returns `value` as a float in [0, 1), or raises naming the argument."""
  try:
    value = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be a number in [0, 1), got {value!r}.") from None
  if not 0.0 <= value < 1.0:
    raise ValueError(f"{name} must be in [0, 1), got {value}.")
  return value


def _order(group: jax.Array, score: jax.Array) -> jax.Array:
  """Indices sorted by (group, score, index) ascending: ties go to the lower index."""
  index = jnp.arange(score.size, dtype=jnp.int32)
  return jax.lax.sort((group.astype(jnp.int32), score, index), num_keys=3)[-1]


def _regrow_leaf(mask: jax.Array, new_weight: jax.Array, grow_score: jax.Array,
                 k: int) -> jax.Array:
  """Drops the k active entries of smallest |new_weight|, grows the k best-scored inactive.

  Both selections sort with a primary key that puts the candidates first, then the score,
  then the flattened index, so ties go to the lower index.
  """
  shape = mask.shape
  mask = mask.reshape(-1)
  # Drop: active entries first (key 0), then by |w| ascending.
  drop_order = _order(~mask, jnp.abs(new_weight).reshape(-1))
  after_drop = mask.at[drop_order[:k]].set(False)
  # Grow: entries inactive after the drop first, then by score descending.
  grow_order = _order(after_drop, -grow_score.reshape(-1))
  return after_drop.at[grow_order[:k]].set(True).reshape(shape)


def dynamic_sparse(inner: optax.GradientTransformation,
                   *,
                   sparsity: float,
                   update_every: int,
                   grow_fraction: float,
                   grow: str = "gradient",
                   end_step: int | None = None,
                   include: masks_lib.IncludeFn | None = None,
                   seed: int = 0) -> optax.GradientTransformation:
  """Sparse training with drop-and-grow mask updates (RigL / SET).

  `init(params)` sets the masks to `magnitude_masks(params, sparsity, include=include)`
  (unstructured, per layer), so each prunable leaf of n entries has
  `a = n - floor(sparsity * n + 0.5)` active weights, forever.

  `update(grads, state, params)`, with t the count before the update:

  1. the gradient is masked, the inner optimizer runs on it (seeing the masked params) and
     its update `u` is masked: `u_m = where(mask, u, 0)`;
  2. if `(t + 1) % update_every == 0` and (`end_step` is None or `t < end_step`), each
     prunable leaf moves `k = min(floor(grow_fraction * n + 0.5), a, n - a)` weights: the k
     active entries with the smallest `|p + u_m|` are dropped (ties: lower index first), then
     the k entries inactive after the drop with the largest `|grad|` of the dense incoming
     gradient ("gradient") or the largest uniform random score ("random", key folded with t)
     are grown (ties: lower index first). An entry dropped and grown back in the same update
     keeps its weight and state; a newly active entry ("grown") starts at exactly zero; the
     inner optimizer state is set to zero at every entry whose mask changed;
  3. the returned update is `where(new_mask, u_m, -p)` with `-p` also at grown entries, so
     after the step the params are exactly zero off the mask and at grown entries.

  The decision in 2 is a `jax.lax.cond` on the traced count, so the step jit-compiles once.

  Args:
    inner: the optimizer of the active weights, e.g. `optax.sgd(0.1, momentum=0.9)`.
    sparsity: the fraction in [0, 1) of each prunable leaf that is inactive.
    update_every: ΔT, update the masks every this many steps (int >= 1).
    grow_fraction: the fraction in [0, 1) of each leaf's entries moved per mask update
      (reference: 0.0051 at 60x, 0.003 at 100x).
    grow: "gradient" (RigL) or "random" (SET).
    end_step: None, or stop updating the masks once the count reaches this (int >= 1).
    include: `(path, leaf) -> bool` selecting the prunable leaves; `default_include` if None.
    seed: integer seed of the random growth.

  Returns:
    An `optax.GradientTransformation` with state `DynamicSparseState`; `update` requires
    params.
  """
  check_inner(inner)
  sparsity = _checks.sparsity(sparsity)
  update_every = _checks.positive_int(update_every, "update_every")
  grow_fraction = _fraction(grow_fraction, "grow_fraction")
  grow = _checks.one_of(grow, ("gradient", "random"), "grow")
  if end_step is not None:
    end_step = _checks.positive_int(end_step, "end_step")
  include = masks_lib.resolve_include(include)
  if isinstance(seed, bool) or not isinstance(seed, int):
    raise ValueError(f"seed must be an integer, got {seed!r}.")

  def init_fn(params):
    masks = masks_lib.magnitude_masks(params, sparsity, include=include)
    return DynamicSparseState(
        count=jnp.zeros((), jnp.int32),
        masks=masks,
        inner_state=inner.init(mask_tree(params, masks)),
        rng_key=jax.random.key_data(jax.random.key(seed)))

  def regrow(masks, new_params, grads, key):
    flags = masks_lib.prunable_flags(new_params, include)
    leaves, treedef = jax.tree.flatten(masks)
    weights = treedef.flatten_up_to(new_params)
    grad_leaves = treedef.flatten_up_to(grads)
    flag_leaves = treedef.flatten_up_to(flags)
    out = []
    for index, (mask, weight, grad, prunable) in enumerate(
        zip(leaves, weights, grad_leaves, flag_leaves)):
      n = mask.size
      active = n - masks_lib.prune_count(sparsity, n)
      k = min(masks_lib.prune_count(grow_fraction, n), active, n - active)
      if not prunable or k == 0:
        out.append(mask)
        continue
      if grow == "gradient":
        score = jnp.abs(grad)
      else:
        score = jax.random.uniform(jax.random.fold_in(key, index), mask.shape)
      out.append(_regrow_leaf(mask, weight, score, k))
    return jax.tree.unflatten(treedef, out)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(
          "params must be passed to dynamic_sparse(...).update(updates, state, params).")
    _checks.same_structure(updates, params, "updates")
    t, masks = state.count, state.masks
    inner_updates, inner_state = inner.update(mask_tree(updates, masks), state.inner_state,
                                              mask_tree(params, masks))
    masked_updates = mask_tree(inner_updates, masks)

    due = (t + 1) % update_every == 0
    if end_step is not None:
      due = due & (t < end_step)
    new_params = jax.tree.map(lambda p, u: p + u, params, masked_updates)
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng_key), t)
    new_masks = jax.lax.cond(due,
                             lambda: regrow(masks, new_params, updates, key),
                             lambda: masks)

    changed = jax.tree.map(jnp.not_equal, new_masks, masks)

    def reset(value, changed_leaf):
      if getattr(value, "shape", None) != changed_leaf.shape:
        return value
      return jnp.where(changed_leaf, jnp.zeros((), jnp.result_type(value)), value)

    inner_state = optax.tree_utils.tree_map_params(inner, reset, inner_state, changed)
    new_updates = jax.tree.map(
        lambda u, p, new, old: jnp.where(new & old, u, -p).astype(jnp.result_type(u)),
        masked_updates, params, new_masks, masks)
    return new_updates, DynamicSparseState(count=optax.safe_int32_increment(t), masks=new_masks,
                                           inner_state=inner_state, rng_key=state.rng_key)

  return optax.GradientTransformation(init_fn, update_fn)
