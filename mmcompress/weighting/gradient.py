"""Gradient-level task weighting: per-task gradients, and the transform that combines them.

A gradient-level method (MGDA, PCGrad, Nash-MTL, ...; `mmcompress.aggregators`) needs the
gradient of every task's loss with respect to the shared parameters, not one gradient of a
weighted sum. Two pieces make it an optax transform like any other:

* `per_task_grads(fn, params)`: the (K, ...) stacked gradients of a function returning K
  task objectives, as K ordinary gradients sharing one forward pass under jit, or one
  `jax.vjp` with a `jax.vmap` over the K one-hot cotangents (the construction of
  `jax.jacrev`), with the values and auxiliary outputs kept;
* `aggregate(weights_fn, num_tasks)`: an optax transform whose ``update`` takes those stacked
  gradients (every leaf with a leading axis of K) and returns one gradient of the
  parameters' shapes. It computes the K x K Gram matrix of the task gradients over the
  *shared* leaves, leaf by leaf (no (K, n) matrix is ever concatenated), asks `weights_fn`
  for the task weights α, and returns Σ_k α_k g_k on every shared leaf. A task-specific leaf
  (a prediction head) gets the sum of its rows, which is its own task's gradient alone (the
  other tasks' rows are exactly zero there), unweighted.

Composition with sparsity: put the aggregator *first* in the optimizer that a sparse wrapper
wraps, ``static_sparse(optax.chain(aggregate(...), optax.sgd(0.1)), masks)`` (likewise
`dynamic_sparse`). The wrapper masks every task's gradient before the aggregator sees it, so
the Gram matrix measures agreement over the weights that can move only (at 40x, 97.5 % of a
pruned layer's gradient entries belong to weights that are held at zero), and it masks the
update after, so a pruned entry stays exactly zero whatever the aggregator returns. In a dense
stage put it first in the chain: ``optax.chain(aggregate(...), add_reweighted_l1(...),
optax.sgd(0.1))`` (the ℓ1 term is added once, to the combined gradient).
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from mmcompress import _checks, aggregators
from mmcompress.sparsity.masks import path_name
from mmcompress.weighting import base

__all__ = ["aggregate", "AggregateState", "checked_flags", "combine", "current_weights",
           "default_shared", "GRAD_MODES", "grad_mode", "gradient_weighting", "gram_matrix",
           "gram_weighting", "normalised", "per_task_grads", "row_norms", "scaled_gram_matrix", "shared_flags",
           "sum_tasks", "UNROLL_MAX_TASKS"]

# (gram (K, K), key) -> alpha (K,): the task weights of the combined direction.
WeightsFn = Callable[[jax.Array, jax.Array], jax.Array]
# (path, leaf) -> whether the leaf is shared by the tasks (True) or belongs to one (False).
SharedFn = Callable[[tuple[Any, ...], Any], bool]


# How `per_task_grads` takes the K gradients.
GRAD_MODES = ("auto", "unrolled", "vmap")
# `auto` unrolls up to this many tasks: the unrolled program holds K backward passes, so its
# compilation grows with K (VGG16's 20 tasks), while the vmapped one holds one.
UNROLL_MAX_TASKS = 8


def grad_mode(mode: str, num_tasks: int) -> str:
  """The way `per_task_grads` takes `num_tasks` gradients under `mode`: ``"vmap"`` or
  ``"unrolled"`` (``"auto"``: unrolled up to `UNROLL_MAX_TASKS` tasks)."""
  if mode not in GRAD_MODES:
    raise ValueError(f"mode must be one of {GRAD_MODES}, got {mode!r}.")
  if mode == "auto":
    return "unrolled" if num_tasks <= UNROLL_MAX_TASKS else "vmap"
  return mode


def per_task_grads(fn: Callable[..., Any], params: Any, *, has_aux: bool = False,
                   mode: str = "auto") -> tuple[Any, ...]:
  """The gradients of each of K task objectives, stacked.

  Args:
    fn: ``params -> values`` with values of shape (K,) (``has_aux``: ``(values, aux)``).
    params: the point at which to differentiate.
    has_aux: whether `fn` returns auxiliary outputs too.
    mode: how the K gradients are taken (`GRAD_MODES`):

      * ``"vmap"``: one VJP, its backward pass vmapped over the K one-hot cotangents (one
        batched backward pass in the program);
      * ``"unrolled"``: K ordinary gradients, ``jax.grad`` of each ``values[k]``, written one
        after the other; under `jax.jit` XLA shares their identical forward passes, so it is
        K backward passes after one forward pass (without jit, K + 1 forward passes);
      * ``"auto"`` (default): ``"unrolled"`` for K <= `UNROLL_MAX_TASKS`, else ``"vmap"``.

      On CPU the vmapped backward pass batches convolutions over the tasks, which XLA runs
      far slower than K ordinary ones (docs/benchmarks.md, and the per-task gradient cost in
      ``python -m experiments.bench_weightings``).

  Returns:
    ``(values, grads)`` or, with `has_aux`, ``(values, grads, aux)``, where `grads` has the
    structure of `params` and every leaf a leading axis of K: ``grads[k]`` is the gradient
    of ``values[k]``. Both modes agree to float32 rounding (tested).

  Non-finite tasks: in both modes task k's row is pulled back from a cotangent that is zero
  for every other task. Where task j's value or partial derivatives are not finite (a log of 0, an overflow),
  0 · ∞ = NaN, so every row may be NaN at each parameter that task j's value depends on; at
  the parameters it does not depend on the other rows stay exact (tested in
  ``tests/test_edges.py``, for both modes). Nothing is hidden: the trainer checks every
  step's task losses and parameters and records a run whose task loss or parameters stop
  being finite as diverged, naming the task.

  >>> values, grads = per_task_grads(lambda p: jnp.stack([p ** 2, 3 * p]), jnp.array(2.0))
  >>> grads.tolist()
  [4.0, 3.0]
  """
  shapes = jax.eval_shape(fn, params)  # K, before any computation
  shape = shapes[0] if has_aux and isinstance(shapes, tuple) else shapes
  if not hasattr(shape, "shape"):
    raise TypeError(
        f"per_task_grads needs fn to return a (K,) array of task objectives, got a "
        f"{type(shape).__name__}: stack K scalars with jnp.stack, or pass has_aux=True if fn "
        "returns (values, aux).")
  if len(shape.shape) != 1:
    raise ValueError(f"per_task_grads needs fn to return a (K,) vector of task objectives, "
                     f"got shape {tuple(shape.shape)}.")
  num_tasks = shape.shape[0]
  if grad_mode(mode, num_tasks) == "vmap" or num_tasks == 0:
    if has_aux:
      values, vjp_fn, aux = jax.vjp(fn, params, has_aux=True)
    else:
      values, vjp_fn = jax.vjp(fn, params)
    (grads,) = jax.vmap(vjp_fn)(jnp.eye(num_tasks, dtype=values.dtype))
  else:  # K gradients; the values (and aux) from one more forward pass, shared under jit
    if has_aux:
      values, aux = fn(params)
    else:
      values = fn(params)
    def task(k):
      return lambda p: (fn(p)[0] if has_aux else fn(p))[k]
    rows = [jax.grad(task(k))(params) for k in range(num_tasks)]
    grads = jax.tree.map(lambda *r: jnp.stack(r), *rows)
  return (values, grads, aux) if has_aux else (values, grads)


def default_shared(path: tuple[Any, ...], leaf: Any) -> bool:
  """Every leaf is shared except the task prediction layers, those whose key path contains
  "head" (case-insensitive): the naming rule of every model in `mmcompress.models`, as in
  `mmcompress.sparsity.default_include`.

  Other task-specific parts (MTAN's ``task{k}_attention_*``, task-conditional batch norm)
  count as shared by this rule. Their rows of the stacked gradient are exactly zero for every
  other task, so they add to the diagonal of the Gram matrix only and receive α_k times their
  own task's gradient; pass your own `shared` to treat them as heads instead.
  """
  del leaf
  return "head" not in path_name(path).lower()


class AggregateState(NamedTuple):
  """State of `aggregate`.

  Attributes:
    count: int32, how many updates were made (folded into the key of random aggregators).
    key: the PRNG key data of the aggregator's randomness (PCGrad's order).
    task_weights: (K,) float32, the last update's task weights α divided by their sum (kept
      as they are when the sum is 0), for logging.
  """
  count: jax.Array
  key: jax.Array
  task_weights: jax.Array


def _shared_rows(stacked: Any, flags: Any) -> list[jax.Array]:
  """The flagged leaves as (K, n_leaf) float32 matrices."""
  rows = [g.reshape(g.shape[0], -1).astype(jnp.float32)
          for g, shared in zip(jax.tree.leaves(stacked), jax.tree.leaves(flags)) if shared]
  if not rows:
    raise ValueError("no shared parameter: every leaf is task-specific, so there is nothing "
                     "for a gradient-level method to combine (check `shared`).")
  return rows


def gram_matrix(stacked: Any, flags: Any) -> jax.Array:
  """Σ over the flagged leaves of G_leaf G_leafᵀ, in float32: the (K, K) Gram matrix of the
  task gradients restricted to those leaves (unscaled: it overflows for rows of norm 1e20)."""
  terms = [jnp.matmul(m, m.T, precision=jax.lax.Precision.HIGHEST)
           for m in _shared_rows(stacked, flags)]
  return sum(terms[1:], terms[0])


def scaled_gram_matrix(stacked: Any, flags: Any) -> tuple[jax.Array, jax.Array]:
  """`gram_matrix` of the rows scaled by 2^-e, and e (`mmcompress.aggregators.scaled_gram`:
  e = 0 unless the largest entry lies outside [2^-40, 2^40]; exact, and no overflow for
  finite rows)."""
  return aggregators.scaled_gram(_shared_rows(stacked, flags))


def row_norms(stacked: Any, flags: Any) -> jax.Array:
  """(K,) the norm of each task's gradient over the flagged leaves, each row scaled by its own
  power of two first (`mmcompress.aggregators.row_exponent`), so that rows of norm 1e20 or
  1e-30 keep finite, non-zero norms; for ordinary rows, the square root of `gram_matrix`'s
  diagonal to the last bit."""
  rows = _shared_rows(stacked, flags)
  top = functools.reduce(jnp.maximum, [jnp.max(jnp.abs(r), axis=1, initial=0.0) for r in rows])
  exponent = aggregators.row_exponent(top)
  scale = aggregators.exponent_scale(exponent, jnp.float32)[:, None]
  terms = [jnp.matmul(m * scale, (m * scale).T, precision=jax.lax.Precision.HIGHEST)
           for m in rows]
  return jnp.ldexp(jnp.sqrt(jnp.diagonal(sum(terms[1:], terms[0]))), exponent)


def combine(stacked: Any, flags: Any, alpha: jax.Array, max_norm: float | None = None, *,
            exponent: jax.Array | None = None, degree: float = 0.0) -> Any:
  """Σ_k α_k g_k on the flagged (shared) leaves, scaled down so that their global norm is at
  most `max_norm` (when given); Σ_k g_k on the others.

  With `exponent`, α are the weights of the Gram matrix of the rows scaled by 2^-exponent
  (`scaled_gram_matrix`), homogeneous of `degree`: the shared leaves get
  (Σ_k α_k g_k 2^-exponent) 2^(exponent (1 + 2 degree)) (`mmcompress.aggregators.rescaled`),
  Σ_k α'_k g_k for the weights α' of the unscaled Gram matrix."""
  def one(g, shared):
    coeffs = alpha if shared else jnp.ones_like(alpha)
    if not shared or exponent is None:
      return jnp.tensordot(coeffs.astype(g.dtype), g, axes=1,
                           precision=jax.lax.Precision.HIGHEST)
    scaled = g * aggregators.exponent_scale(exponent, g.dtype)
    return aggregators.rescaled(jnp.tensordot(coeffs.astype(g.dtype), scaled, axes=1,
                                              precision=jax.lax.Precision.HIGHEST),
                                exponent, degree)
  out = jax.tree.map(one, stacked, flags)
  if max_norm is None:
    return out
  norm = jnp.sqrt(sum(jnp.sum(jnp.square(d.astype(jnp.float32)))
                      for d, shared in zip(jax.tree.leaves(out), jax.tree.leaves(flags))
                      if shared))
  scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, jnp.finfo(jnp.float32).tiny))
  return jax.tree.map(lambda d, shared: (d * scale).astype(d.dtype) if shared else d, out,
                      flags)


def normalised(alpha: jax.Array) -> jax.Array:
  """α over its sum, or α itself when the sum is 0."""
  total = jnp.sum(alpha)
  return alpha / jnp.where(total == 0, 1.0, total)


def shared_flags(params: Any, shared: SharedFn) -> Any:
  """A tree of Python bools: which leaves `shared` calls shared."""
  return jax.tree_util.tree_map_with_path(lambda path, leaf: bool(shared(path, leaf)), params)


def checked_flags(updates: Any, params: Any | None, num_tasks: int, shared: SharedFn,
                  name: str) -> Any:
  """`shared_flags` of `params`, after checking that an aggregator's `update` got them and
  that `updates` are their stacked per-task gradients."""
  if params is None:
    raise ValueError(f"{name}(...).update needs params (they tell which leaves are shared "
                     "and what shape each combined gradient has).")
  _checks.same_structure(updates, params, name, stacked=num_tasks)
  return shared_flags(params, shared)


def aggregate(weights_fn: WeightsFn, num_tasks: int, *, shared: SharedFn | None = None,
              seed: int = 0, max_norm: float | None = None,
              degree: float | None = None) -> optax.GradientTransformation:
  """Combines stacked per-task gradients with task weights computed from their Gram matrix.

  ``update(stacked, state, params)``: ``gram = Σ_shared leaves G Gᵀ`` (of the rows scaled by a
  power of two with `degree`), ``α = weights_fn(gram, key)``, and the returned gradient is ``Σ_k α_k g_k`` on the shared leaves and ``Σ_k g_k``
  on the task-specific ones (see the module docstring for where it goes in a chain).

  Args:
    weights_fn: ``(gram, key) -> α``; e.g. ``lambda gram, key: aggregators.mgda_weights(gram)``.
    num_tasks: K.
    shared: ``(path, leaf) -> bool`` over the parameters, True for a leaf shared by the tasks
      (default `default_shared`: everything but the ``head`` layers).
    seed: the seed of the key handed to `weights_fn` (a new key every step).
    max_norm: None or 0 (the direction as the method gives it), or clip the combined
      direction's global norm over the shared leaves to this (the Nash-MTL and FairGrad authors'
      trainers clip theirs to 1: their directions do not shrink with the gradients).
    degree: None (default): `weights_fn` gets the plain Gram matrix, which overflows for rows
      of norm 1e20. Or the homogeneity of `weights_fn`, weights_fn(s gram, key) = s^degree
      weights_fn(gram, key) for s > 0 (0: MGDA, PCGrad, UPGrad, ...; Nash-MTL -1/2;
      `mmcompress.aggregators.DEGREES`): rows whose largest entry lies outside
      [2^-40, 2^40] are then scaled by a power of two before the Gram matrix is taken
      (exact), and the direction scaled back (`combine`).

  Returns:
    An `optax.GradientTransformation` with an `AggregateState`; `update` requires `params`.
  """
  num_tasks = _checks.positive_int(num_tasks, "num_tasks")
  shared = default_shared if shared is None else shared
  if not callable(shared):
    raise ValueError(f"shared must be a callable (path, leaf) -> bool, got {shared!r}.")
  seed = _checks.non_negative_int(seed, "seed")
  max_norm = _checks.positive(max_norm, "max_norm") if max_norm else None

  def init_fn(params: Any) -> AggregateState:
    del params
    return AggregateState(count=jnp.zeros([], jnp.int32),
                          key=jax.random.key_data(jax.random.key(seed)),
                          task_weights=jnp.full((num_tasks,), 1.0 / num_tasks, jnp.float32))

  def update_fn(updates: Any, state: AggregateState, params: Any | None = None
                ) -> tuple[Any, AggregateState]:
    flags = checked_flags(updates, params, num_tasks, shared, "aggregate")
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.count)
    if degree is None:
      alpha = weights_fn(gram_matrix(updates, flags), key)
      combined = combine(updates, flags, alpha, max_norm)
    else:
      gram, exponent = scaled_gram_matrix(updates, flags)
      alpha = weights_fn(gram, key)  # up to a positive factor: what is logged is normalised
      combined = combine(updates, flags, alpha, max_norm, exponent=exponent, degree=degree)
    return combined, AggregateState(
        count=optax.safe_int32_increment(state.count), key=state.key,
        task_weights=normalised(alpha).astype(jnp.float32))

  return optax.GradientTransformation(init_fn, update_fn)


def gradient_weighting(name: str, objective: Callable[..., jax.Array],
                       make_aggregate: Callable[[int, int], optax.GradientTransformation]
                       ) -> base.TaskWeighting:
  """A gradient-level `TaskWeighting`: `objective` gives the (K,) per-task objectives and
  ``make_aggregate(num_tasks, seed)`` the transform that combines their gradients. It has no
  task parameters; its weights change every step and are read with `current_weights`."""

  def init(num_tasks: int) -> tuple[Any, Any]:
    _checks.positive_int(num_tasks, "num_tasks")
    return {}, ()

  def weights(task_params, task_state):
    raise ValueError(f"{name} is a gradient-level weighting: its task weights live in its "
                     "aggregator's state; read them with current_weights(weighting, "
                     "task_params, task_state, opt_state).")

  return base.TaskWeighting(name, init, objective, optax.set_to_zero(), base.no_epoch_memory,
                            weights, base.no_step_memory, make_aggregate)


def gram_weighting(name: str, weights_fn: WeightsFn, *, task_scales: ArrayLike | None = None,
                   shared: SharedFn | None = None, max_norm: float | None = None,
                   degree: float | None = None) -> base.TaskWeighting:
  """The gradient-level weighting that combines the gradients of the (scaled) task losses
  with `aggregate(weights_fn, ..., max_norm=max_norm, degree=degree)` (MGDA, PCGrad, ...:
  `mmcompress.aggregators`)."""
  scales = base.check_task_scales(task_scales)

  def objective(task_losses, task_params, task_state, key=None):
    del task_params, task_state, key
    return base.scaled(task_losses, scales)

  def make(num_tasks: int, seed: int = 0) -> optax.GradientTransformation:
    return aggregate(weights_fn, num_tasks, shared=shared, seed=seed, max_norm=max_norm,
                     degree=degree)

  return gradient_weighting(name, objective, make)


def sum_tasks() -> optax.GradientTransformation:
  """Sums stacked per-task gradients over their leading task axis, with no Gram matrix: for
  rows already weighted by the objective (`mmcompress.train.step.make_train_step` with
  ``per_task``), whose sum is the objective's gradient."""
  return optax.stateless(lambda updates, params=None: jax.tree.map(
      lambda g: jnp.sum(g, axis=0), updates))


def current_weights(weighting: Any, task_params: Any, task_state: Any, opt_state: Any
                    ) -> jax.Array:
  """The task weights to log: `weighting.weights` for a loss-level weighting; for a
  gradient-level one, the last step's weights, the ``task_weights`` field of its aggregator's
  state in `opt_state`."""
  if weighting.aggregate is None:
    return weighting.weights(task_params, task_state)
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=_holds_task_weights)
           if _holds_task_weights(s)]
  if len(found) != 1:
    raise ValueError(f"expected one aggregator state in the optimizer state of gradient-level "
                     f"weighting {weighting.name!r}, found {len(found)}.")
  return found[0].task_weights


def _holds_task_weights(node: Any) -> bool:
  return isinstance(node, tuple) and "task_weights" in getattr(node, "_fields", ())
