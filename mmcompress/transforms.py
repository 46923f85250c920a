"""Optax transforms for the max player: projected ascent of the task weights on the simplex.

`simplex_ascent` is the task-weight half of alternating projected gradient descent/ascent
(APGDA, Guo et al., ISCAS 2024); `saddle_point` joins it with any descent transform for the
model, so one `jax.grad` of `saddle_objective` with respect to
``{"params": ..., "task_params": ...}`` feeds one `update` call.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mmcompress import _checks

__all__ = ["GEOMETRIES", "SADDLE_KEYS", "saddle_point", "SaddlePointState", "simplex_ascent",
           "SimplexAscentState"]

GEOMETRIES = ("euclidean", "entropic")


class SimplexAscentState(NamedTuple):
  """State of `simplex_ascent`.

  Attributes:
    count: int32, how many updates were called (finite or not).
    num_ascents: int32, how many ascents moved the weights; indexes the learning-rate schedule.
    grad_sum: (K,) sum of the finite gradients seen since the last ascent (None when
      ``every == 1``: there is no window to sum over).
    num_summed: int32, how many gradients `grad_sum` holds (None when ``every == 1``).
    num_skipped: int32, how many gradients were dropped because they were not finite.
  """
  count: jax.Array
  num_ascents: jax.Array
  grad_sum: jax.Array
  num_summed: jax.Array
  num_skipped: jax.Array


def _euclidean_step(weights: jax.Array, grad: jax.Array, lr: jax.Array) -> jax.Array:
  target = weights + lr * grad
  # The projection is invariant to adding a constant to every entry. Shifting the largest
  # entry to zero keeps huge losses from swamping the O(1) answer in float32.
  return optax.projections.projection_simplex(target - jnp.max(target))


def _entropic_step(weights: jax.Array, grad: jax.Array, lr: jax.Array) -> jax.Array:
  # w ∝ w·exp(lr·g), in log space so that large lr·g cannot overflow.
  return jax.nn.softmax(jnp.log(weights) + lr * grad)


def simplex_ascent(learning_rate: optax.ScalarOrSchedule,
                   *,
                   geometry: str = "euclidean",
                   every: int = 1) -> optax.GradientTransformation:
  r"""Projected gradient *ascent* of task weights on the probability simplex.

  Given the gradient g = ∂f/∂w of the saddle objective, the update lands the weights on

  * ``geometry="euclidean"``: Π_Δ(w + lr·g), the Euclidean projection onto the simplex
    (sort-based, Duchi et al. 2008), as in APGDA (Guo et al., ISCAS 2024);
  * ``geometry="entropic"``: w·exp(lr·g) / Σ w·exp(lr·g), the exponentiated-gradient step
    of Group DRO (Sagawa et al., ICLR 2020). Weights that start positive stay positive.

  The update is written as a constraint, ``proj(w + lr·g) − w``, so ``optax.apply_updates``
  puts the weights exactly where the projection says.

  With ``every=n`` the weights move once every n calls, on the mean of the gradients seen
  since the last move, and not at all in between (the reference ascends once per epoch:
  pass the number of steps per epoch). A gradient with a non-finite entry (a NaN or infinite
  task loss) is dropped: it is not summed, it is counted in ``num_skipped``, and an ascent
  whose window saw no finite gradient leaves the weights where they are.

  Args:
    learning_rate: the ascent step 1/β (the reference uses β = 50, step 0.02), a float > 0
      or an optax schedule of the number of ascents taken so far.
    geometry: ``"euclidean"`` or ``"entropic"``.
    every: ascend once every this many calls (>= 1).

  Returns:
    An `optax.GradientTransformation` whose ``update`` requires ``params`` (the weights).

  >>> tx = simplex_ascent(0.5)
  >>> w = jnp.array([0.5, 0.5])
  >>> u, _ = tx.update(jnp.array([1.0, 0.0]), tx.init(w), w)
  >>> w + u
  Array([0.75, 0.25], dtype=float32)
  """
  learning_rate = _checks.learning_rate(learning_rate)
  _checks.one_of(geometry, GEOMETRIES, "geometry")
  every = _checks.positive_int(every, "every")
  step_fn = _euclidean_step if geometry == "euclidean" else _entropic_step

  def init_fn(params: jax.Array) -> SimplexAscentState:
    windowed = every > 1
    zero = lambda: jnp.zeros([], jnp.int32)  # pylint: disable=unnecessary-lambda-assignment
    if _checks.is_stand_in(params):  # optax.tree_map_params: grad_sum is the params-shaped part
      return SimplexAscentState(count=zero(), num_ascents=zero(),
                                grad_sum=params if windowed else None,
                                num_summed=zero() if windowed else None, num_skipped=zero())
    params = jnp.asarray(params)
    if params.ndim != 1:
      raise ValueError(
          f"simplex_ascent acts on a (K,) vector of task weights, got shape {params.shape}.")
    # Distinct arrays, not one shared zero: a donating jit rejects aliased buffers.
    return SimplexAscentState(count=zero(), num_ascents=zero(),
                              grad_sum=jnp.zeros_like(params) if windowed else None,
                              num_summed=zero() if windowed else None, num_skipped=zero())

  def update_fn(updates: jax.Array, state: SimplexAscentState,
                params: jax.Array | None = None) -> tuple[jax.Array, SimplexAscentState]:
    if params is None:
      raise ValueError("simplex_ascent needs params (the current task weights) in update().")
    finite = jnp.all(jnp.isfinite(updates))
    lr = learning_rate(state.num_ascents) if callable(learning_rate) else learning_rate
    lr = jnp.asarray(lr, params.dtype)
    if every == 1:  # no window to keep: ascend on this gradient unless it is not finite
      safe = jnp.where(finite, updates, 0.0)
      new_updates = jnp.where(finite, step_fn(params, safe, lr) - params, 0.0)
      return new_updates, state._replace(
          count=state.count + 1, num_ascents=state.num_ascents + finite.astype(jnp.int32),
          num_skipped=state.num_skipped + (~finite).astype(jnp.int32))
    grad_sum = state.grad_sum + jnp.where(finite, updates, 0.0)
    num_summed = state.num_summed + finite.astype(jnp.int32)
    count = state.count + 1
    ascend = jnp.logical_and(count % every == 0, num_summed > 0)
    mean_grad = grad_sum / jnp.maximum(num_summed, 1).astype(grad_sum.dtype)
    target = step_fn(params, mean_grad, lr)
    new_updates = jnp.where(ascend, target - params, jnp.zeros_like(params))
    window_ends = count % every == 0
    new_state = SimplexAscentState(
        count=count,
        num_ascents=state.num_ascents + ascend.astype(jnp.int32),
        grad_sum=jnp.where(window_ends, jnp.zeros_like(grad_sum), grad_sum),
        num_summed=jnp.where(window_ends, 0, num_summed).astype(jnp.int32),
        num_skipped=state.num_skipped + (~finite).astype(jnp.int32))
    return new_updates, new_state

  return optax.GradientTransformation(init_fn, update_fn)


class SaddlePointState(NamedTuple):
  """State of `saddle_point`: the two players' states, side by side."""
  descent: optax.OptState
  ascent: optax.OptState


# The two players' keys: the model's parameters, and the task weighting's learnable parameters
# (min-max: the task weights w themselves; uncertainty: its log-variances). "task_weights",
# where the package uses it (`update`'s keyword, the records), always means the weights the
# task losses are combined with, which a weighting computes from its parameters.
SADDLE_KEYS = ("params", "task_params")


def _split(tree: Any, name: str) -> tuple[Any, Any]:
  if not isinstance(tree, dict) or set(tree) != set(SADDLE_KEYS):
    keys = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
    raise ValueError(
        f"saddle_point expects {name} as a dict with exactly the keys {list(SADDLE_KEYS)}, "
        f"got {keys}.")
  return tree["params"], tree["task_params"]


def saddle_point(descent: optax.GradientTransformation,
                 ascent: optax.GradientTransformation) -> optax.GradientTransformation:
  """One transform for both players of min_W max_w f(W, w).

  Acts on ``{"params": model_params, "task_params": w}`` (`SADDLE_KEYS`: for min-max the
  task parameters are the task weights w). The gradient of the objective
  with respect to both (one `jax.grad`) goes in; the ``"params"`` part is handed to
  `descent` (any optax optimizer, possibly wrapped in `mmcompress.sparsity.static_sparse`), the
  ``"task_params"`` part to `ascent` (`simplex_ascent` for min-max; any transform for the
  other task weightings, see `mmcompress.weighting`). Each inner transform sees only its own
  subtree, so masks and schedules are written against the model parameters alone. This is the
  generator/discriminator split of ``optax.partition`` with the two halves named.

  Args:
    descent: the model's optimizer (it descends: e.g. ``optax.sgd``).
    ascent: the task weights' transform (it ascends: e.g. ``simplex_ascent``).

  Returns:
    An `optax.GradientTransformationExtraArgs` over the two-key dict; keyword arguments of
    `update` go to `descent` (e.g. ``task_weights=``, the weights the losses are combined
    with, for task-aware regrowth), which ignores
    them if it takes none.

  `optax.tree_map_params` maps a function over the params-shaped parts of both halves' states
  (each half's own part of the params). Extra trees (its ``*rest``) cannot be passed: optax
  hands every params-shaped part the whole of each extra tree, and each half of this state
  holds only its own half of the params; map each half's state on its own instead.
  """
  for name, tx in (("descent", descent), ("ascent", ascent)):
    if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
      raise TypeError(f"saddle_point's {name} must be an optax.GradientTransformation "
                      f"(e.g. optax.sgd(0.1)), got {type(tx).__name__}.")

  def init_fn(params: Any) -> SaddlePointState:
    if _checks.is_stand_in(params):  # optax.tree_map_params (see the note above)
      return SaddlePointState(descent=descent.init(params), ascent=ascent.init(params))
    model, weights = _split(params, "params")
    return SaddlePointState(descent=descent.init(model), ascent=ascent.init(weights))

  descent_extra = optax.with_extra_args_support(descent)

  def update_fn(updates: Any, state: SaddlePointState, params: Any | None = None,
                **extra_args: Any) -> tuple[Any, SaddlePointState]:
    grad_model, grad_weights = _split(updates, "updates")
    model, weights = _split(params, "params") if params is not None else (None, None)
    model_updates, descent_state = descent_extra.update(grad_model, state.descent, model,
                                                        **extra_args)
    weight_updates, ascent_state = ascent.update(grad_weights, state.ascent, weights)
    return ({"params": model_updates, "task_params": weight_updates},
            SaddlePointState(descent=descent_state, ascent=ascent_state))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
