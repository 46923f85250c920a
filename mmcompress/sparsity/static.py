"""Static sparse training: any optax optimizer, with pruned weights held at exactly zero.

The masks live in the optimizer state, so they are replicated, sharded and checkpointed with
the rest of it and the training step stays a pure function (as jaxpruner's `SparseState`).
The returned update is a constraint, `proj(p + u) - p` with proj the masking: whatever the
inner optimizer does (momentum, Adam moments, decoupled weight decay), `p + update` is exactly
zero at every pruned entry.

Reference: the retrain stage of Guo et al., "A Min-Max Optimization Framework for Multi-task
Deep Neural Network Compression", ISCAS 2024 (docs/method.md §2, stage 3); masked retraining as in
Han et al., "Learning both Weights and Connections for Efficient Neural Networks", NeurIPS 2015.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmcompress import _checks
from mmcompress.sparsity.masks import check_inner, is_none, mask_tree

__all__ = ["full_masks", "static_sparse", "StaticSparseState"]


class StaticSparseState(NamedTuple):
  """State of `static_sparse`.

  Attributes:
    inner_state: the state of the wrapped optimizer.
    masks: bool arrays with the structure and shapes of the params (True = kept weight),
      except that a leaf whose mask is all True (a bias, a head: nothing pruned) holds None.
      A state leaf costs a little on every call of a jitted step, and most leaves of a
      network are not pruned; `full_masks` restores the full tree.
  """
  inner_state: optax.OptState
  masks: Any


def _drop_dense(masks: Any) -> Any:
  """The masks with every all-True leaf replaced by None.

  Decided once, from the concrete masks given to `static_sparse`, so that the state's structure
  is the same however `init` is later called (eagerly, under `jit` or `eval_shape`).
  """
  return jax.tree.map(lambda m: None if bool(np.all(np.asarray(m))) else m, masks)


def full_masks(params: Any, masks: Any | None) -> Any:
  """`masks` with every None (or a None tree) turned into an all-True mask of its param."""
  if masks is None:
    return jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params)
  return jax.tree.map(lambda m, p: jnp.ones(jnp.shape(p), bool) if m is None else m,
                      masks, params, is_leaf=is_none)


def static_sparse(inner: optax.GradientTransformation, masks: Any, *,
                  drop_dense: bool = True) -> optax.GradientTransformation:
  """Wraps `inner` so that the masked-out weights stay exactly zero.

  `update(updates, state, params)`:

  1. the incoming gradient is masked, `where(mask, g, 0)`, and the inner transform sees the
     masked params, so momentum, Adam moments and weight decay never accumulate anything at
     a pruned entry; stacked per-task gradients (a leading K axis on every leaf, for an
     inner chain that starts with `mmcompress.weighting.aggregate`) are masked task by task;
  2. the inner update `u` is returned as `where(mask, u, -p)`, so that `p + update` is exactly
     zero at pruned entries (also on the first step, when `params` may still be dense there)
     and equal to the inner update elsewhere.

  Args:
    inner: the optimizer to run on the kept weights, e.g. `optax.sgd(0.1, momentum=0.9)`.
    masks: bool arrays with the structure and shapes of the params, True where a weight is
      kept (e.g. from `magnitude_masks`). They are validated against the params by `init`
      and then live in the state.
    drop_dense: keep None in the state for a mask that is all True (the default: fewer state
      leaves); False keeps every mask, so that states built from different masks share one
      tree structure (the run axis stacks them).

  Returns:
    An `optax.GradientTransformation` whose state is a `StaticSparseState`; `update` requires
    `params`.

  >>> params = {"w": jnp.array([1.0, -2.0, 3.0])}
  >>> opt = static_sparse(optax.sgd(0.1), {"w": jnp.array([True, False, True])})
  >>> state = opt.init(params)
  >>> updates, state = opt.update({"w": jnp.ones(3)}, state, params)
  >>> optax.apply_updates(params, updates)["w"].tolist()
  [0.8999999761581421, 0.0, 2.9000000953674316]
  """
  check_inner(inner)
  stored = jax.tree.map(lambda m: jnp.asarray(m, dtype=bool), masks)
  stored = _drop_dense(stored) if drop_dense else stored

  def init_fn(params):
    if _checks.is_stand_in(params):  # optax.tree_map_params: the inner state's params parts
      return StaticSparseState(inner_state=inner.init(params),
                               masks=jax.tree.map(jnp.array, stored))
    _checks.same_structure(masks, params, "masks")
    # A copy, so that a step donating the state never deletes the caller's own mask arrays.
    return StaticSparseState(inner_state=inner.init(mask_tree(params, stored)),
                       masks=jax.tree.map(jnp.array, stored))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(
          "params must be passed to static_sparse(...).update(updates, state, params): the update "
          "that keeps pruned weights at zero is -params there.")
    _checks.same_structure(updates, params, "updates", stacked=True)
    masks_ = state.masks
    grads = mask_tree(updates, masks_)
    inner_updates, inner_state = inner.update(grads, state.inner_state,
                                              mask_tree(params, masks_))
    new_updates = jax.tree.map(
        lambda m, u, p: u if m is None else jnp.where(m, u, -p).astype(jnp.result_type(u)),
        masks_, inner_updates, params, is_leaf=is_none)
    return new_updates, StaticSparseState(inner_state=inner_state, masks=masks_)

  return optax.GradientTransformation(init_fn, update_fn)
