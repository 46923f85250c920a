"""Reweighted-ℓ1 penalty as a gradient transformation.

Adds the gradient of `λ · Σ_i |W_i| / (|W̃_i| + ε)` to the incoming gradient, where W̃ is a
frozen copy of the weights ("anchors") refreshed at chosen steps. Small weights get a large
penalty and are driven towards zero, so that pruning them afterwards costs little.

Reference: Candès, Wakin & Boyd, "Enhancing Sparsity by Reweighted ℓ1 Minimization",
J. Fourier Anal. Appl. 14, 2008; used for pruning as stage 2 of Guo et al., ISCAS 2024
(docs/method.md §2).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mmcompress import _checks
from mmcompress.sparsity import masks as masks_lib

__all__ = ["add_reweighted_l1", "ReweightedL1State"]


class ReweightedL1State(NamedTuple):
  """State of `add_reweighted_l1`.

  Attributes:
    count: int32 scalar, the number of updates done so far.
    anchors: |W̃|, arrays with the structure and shapes of the params. They are stored (and
      refreshed) for every leaf, included or not, so the state stays param-shaped for
      `optax.tree_utils.tree_map_params` and sharding; only included leaves are penalised.
  """
  count: jax.Array
  anchors: Any


def add_reweighted_l1(penalty: float,
                      *,
                      eps: float = 1e-6,
                      refresh_every: int | None = None,
                      refresh_at: Iterable[int] = (),
                      include: masks_lib.IncludeFn | None = None
                      ) -> optax.GradientTransformation:
  """Adds the gradient of the reweighted-ℓ1 penalty to the updates.

  For every included leaf the added term is `penalty * sign(W) / (|W̃| + eps)` (sign(0) = 0),
  the gradient of `penalty * Σ_i |W_i| / (|W̃_i| + eps)` with the anchors W̃ held fixed.
  Other leaves pass through unchanged.

  Refresh rule: `init` sets the anchors to |params|. At the start of update number t (the
  0-based count before it is incremented) the anchors are set to |params| before the gradient
  is computed if `refresh_every` is given and `t > 0 and t % refresh_every == 0`, or if t is
  in `refresh_at`.

  Args:
    penalty: λ >= 0 (reference: 1e-7 on NYUv2).
    eps: ε > 0 in the denominator (reference: 1e-6).
    refresh_every: None, or refresh the anchors every this many updates (int >= 1).
    refresh_at: update numbers (ints >= 1) at which to refresh the anchors, e.g. the first
      step of epochs 60 and 120.
    include: `(path, leaf) -> bool` selecting the penalised leaves; `default_include` if None.

  Returns:
    An `optax.GradientTransformation` with state `ReweightedL1State`; `update` requires params.

  >>> opt = optax.chain(add_reweighted_l1(1e-4), optax.sgd(0.1))
  """
  penalty = _checks.non_negative(penalty, "penalty")
  eps = _checks.positive(eps, "eps")
  if refresh_every is not None:
    refresh_every = _checks.positive_int(refresh_every, "refresh_every")
  if isinstance(refresh_at, (str, bytes)) or not isinstance(refresh_at, Iterable):
    raise ValueError(f"refresh_at must be a sequence of ints >= 1, got {refresh_at!r}.")
  refresh_at = tuple(sorted({_checks.positive_int(t, "refresh_at entries")
                             for t in refresh_at}))
  include = masks_lib.resolve_include(include)

  def init_fn(params):
    return ReweightedL1State(count=jnp.zeros((), jnp.int32),
                             anchors=jax.tree.map(jnp.abs, params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(
          "params must be passed to add_reweighted_l1(...).update(updates, state, params).")
    _checks.same_structure(updates, params, "updates")
    t = state.count
    refresh = jnp.zeros((), bool)
    if refresh_every is not None:
      refresh = refresh | ((t > 0) & (t % refresh_every == 0))
    for step in refresh_at:
      refresh = refresh | (t == step)
    anchors = jax.lax.cond(refresh,
                           lambda: jax.tree.map(jnp.abs, params),
                           lambda: state.anchors)
    flags = masks_lib.prunable_flags(params, include)

    def add_penalty(g, p, anchor, included):
      if not included:
        return g
      grad = penalty * jnp.sign(p) / (anchor + eps)
      return (g + grad).astype(jnp.result_type(g))

    new_updates = jax.tree.map(add_penalty, updates, params, anchors, flags)
    return new_updates, ReweightedL1State(count=optax.safe_int32_increment(t), anchors=anchors)

  return optax.GradientTransformation(init_fn, update_fn)
