"""Gradual magnitude pruning: the sparsity raised along a cubic schedule while training.

Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
compression", ICLR workshop 2018: from step t₀ to step t₀ + nΔt the target sparsity of every
prunable layer follows

    s(t) = s_f + (s_i − s_f) (1 − (t − t₀) / (nΔt))³,

and every Δt steps the layer's smallest-magnitude weights are masked to that sparsity; after
the last update the masks stay at the final sparsity s_f. The masks live in the optimizer
state, as in `static_sparse` and `dynamic_sparse`.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmcompress import _checks
from mmcompress.sparsity import masks as masks_lib

__all__ = ["cubic_sparsity", "GradualMagnitudeState", "gradual_magnitude", "update_steps"]


class GradualMagnitudeState(NamedTuple):
  """State of `gradual_magnitude`.

  Attributes:
    count: int32 scalar, the number of updates done so far.
    masks: bool arrays with the structure and shapes of the params (True = kept weight).
    inner_state: the state of the wrapped optimizer.
  """
  count: jax.Array
  masks: Any
  inner_state: optax.OptState


def update_steps(begin_step: int, end_step: int, update_every: int) -> tuple[int, ...]:
  """The steps (update counts before the update) at which the masks change: t₀, t₀ + Δt, …
  up to `end_step`, and `end_step` itself, so that the last one reaches the final sparsity."""
  return tuple(sorted(set(range(begin_step, end_step, update_every)) | {end_step}))


def cubic_sparsity(step: int, *, initial: float, final: float, begin_step: int,
                   end_step: int) -> float:
  """s(t) of Zhu & Gupta's schedule (Python floats): `initial` at `begin_step`, `final` from
  `end_step` on, cubic in between."""
  if step >= end_step:
    return final
  progress = max(step - begin_step, 0) / (end_step - begin_step)
  return final + (initial - final) * (1.0 - progress) ** 3


def _prunable_counts(params: Any, include: masks_lib.IncludeFn, steps: tuple[int, ...],
                     sparsities: tuple[float, ...]) -> Any:
  """Per leaf, the int32 number of pruned entries at each update of `steps` (None for a
  leaf that is never pruned), rounded as `magnitude_masks` rounds (`prune_count`)."""
  flags = masks_lib.prunable_flags(params, include)
  return jax.tree.map(
      lambda p, flag: (np.asarray([masks_lib.prune_count(s, int(np.size(p)))
                                   for s in sparsities], np.int32) if flag else None),
      params, flags)


def _pruned_to(param: jax.Array, kept: jax.Array, count: jax.Array) -> jax.Array:
  """The mask of `param` with exactly `count` (traced) entries pruned: the smallest |w| first,
  the entries kept so far ranked above those already pruned (so pruning never revives a
  weight), ties to the lower flattened index (as `magnitude_masks`)."""
  # pylint: disable-next=protected-access
  scores = masks_lib._lowest_if_not_finite(jnp.abs(param).reshape(-1))
  order = masks_lib.grouped_order(kept.reshape(-1), scores)
  rank = jnp.zeros(scores.size, jnp.int32).at[order].set(jnp.arange(scores.size, dtype=jnp.int32))
  return (rank >= count).reshape(param.shape)


def gradual_magnitude(inner: optax.GradientTransformation, *, sparsity: float,
                      begin_step: int, end_step: int, update_every: int,
                      initial_sparsity: float = 0.0,
                      include: masks_lib.IncludeFn | None = None
                      ) -> optax.GradientTransformation:
  """Wraps `inner` with gradual magnitude pruning (Zhu & Gupta, 2018).

  `update(updates, state, params)`, with t the count before the update:

  1. if t is one of `update_steps(begin_step, end_step, update_every)`, each prunable leaf of
     n entries gets a new mask with exactly `floor(s(t) · n + 0.5)` entries pruned (s the
     `cubic_sparsity` schedule from `initial_sparsity` to `sparsity`): the smallest |p| of the
     entries kept so far go first, so a pruned weight is never revived, and at `end_step`
     every prunable leaf has exactly the count `magnitude_masks(params, sparsity)` gives;
  2. the gradient is masked and the inner optimizer runs on it, seeing the masked params;
  3. the returned update is `where(mask, u, -p)`, so that `p + update` is exactly zero at
     every pruned entry, from the step it is pruned on, whatever the inner optimizer keeps.

  Args:
    inner: the optimizer of the kept weights, e.g. `optax.sgd(0.1, momentum=0.9)`.
    sparsity: s_f, the final fraction in [0, 1) of each prunable leaf that is pruned.
    begin_step: t₀, the update count of the first mask update (>= 0).
    end_step: t₀ + nΔt, the update count of the last one (>= `begin_step`).
    update_every: Δt, steps between mask updates (>= 1).
    initial_sparsity: s_i, the sparsity of the first mask update (in [0, `sparsity`]).
    include: which leaves are prunable (`default_include`: kernels except the heads).

  The masks are unstructured and per layer. They have the params' structure, so
  `optax.tree_map_params` maps them as it maps the params (a partition spec applies to them
  too). The decision in 1 is a `jax.lax.cond` on the count; on a vmapped axis of runs (whose
  counts are batched) it becomes a select, so the ranking of every prunable leaf then runs on
  every step, not only on the update steps (the same masks; more compute).

  Returns:
    An `optax.GradientTransformation` whose state is a `GradualMagnitudeState`; `update`
    requires `params`.
  """
  masks_lib.check_inner(inner)
  final = _checks.sparsity(sparsity)
  initial = _checks.fraction(initial_sparsity, "initial_sparsity")
  if initial > final:
    raise _checks.UserError(f"initial_sparsity ({initial}) must not exceed sparsity ({final}).")
  begin = _checks.non_negative_int(begin_step, "begin_step")
  end = _checks.non_negative_int(end_step, "end_step")
  if end < begin:
    raise _checks.UserError(f"end_step ({end}) must be >= begin_step ({begin}).")
  every = _checks.positive_int(update_every, "update_every")
  include = masks_lib.resolve_include(include)
  steps = update_steps(begin, end, every)
  sparsities = tuple(cubic_sparsity(t, initial=initial, final=final, begin_step=begin,
                                    end_step=end) if end > begin else final for t in steps)

  def init_fn(params):
    # Built by tree maps only, so optax's params stand-in (optax.tree_map_params) goes through.
    masks = jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params)
    return GradualMagnitudeState(count=jnp.zeros((), jnp.int32), masks=masks,
                                 inner_state=inner.init(params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("params must be passed to gradual_magnitude(...).update(updates, state, "
                       "params): the update that zeroes pruned weights is -params there.")
    _checks.same_structure(updates, params, "updates", stacked=True)
    t = state.count
    due = jnp.any(t == jnp.asarray(steps, jnp.int32))
    which = jnp.searchsorted(jnp.asarray(steps, jnp.int32), t)
    counts = _prunable_counts(params, include, steps, sparsities)

    def prune(masks):
      return jax.tree.map(
          lambda p, m, c: m if c is None else _pruned_to(p, m, jnp.asarray(c)[which]),
          params, masks, counts, is_leaf=masks_lib.is_none)

    masks = jax.lax.cond(due, prune, lambda m: m, state.masks)
    inner_updates, inner_state = inner.update(masks_lib.mask_tree(updates, masks),
                                              state.inner_state,
                                              masks_lib.mask_tree(params, masks))
    new_updates = jax.tree.map(lambda m, u, p: jnp.where(m, u, -p).astype(jnp.result_type(u)),
                               masks, inner_updates, params)
    return new_updates, GradualMagnitudeState(count=optax.safe_int32_increment(t), masks=masks,
                                              inner_state=inner_state)

  return optax.GradientTransformation(init_fn, update_fn)
