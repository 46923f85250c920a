"""The training and evaluation steps: small pure functions, jitted once per stage.

A step is: model outputs → per-task losses → the weighting's objective → one `jax.grad`
over ``{"params": model, "task_weights": weighting}`` → one optax update through
`mmcompress.saddle_point`. Masks, task weights and both optimizers' states all live in
`TrainState`, so the step is pure and the whole state is replicated and checkpointed.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mmcompress.train import parallel
from mmcompress.weighting import TaskWeighting

CLASSIFICATION, REGRESSION = "classification", "regression"


@flax.struct.dataclass
class TrainState:
  """Everything a stage needs to continue exactly where it stopped.

  Attributes:
    step: int32, steps taken in the current stage.
    params: the model's parameters.
    model_state: the model's other collections (batch statistics), maybe empty.
    task_params: the weighting's learnable values (min-max: the task weights).
    task_state: the weighting's memory (DWA: last two epochs' losses).
    opt_state: the `saddle_point` state: descent (with masks, when sparse) and ascent.
    rng: the stage's PRNG key data; each step folds in its step number.
  """
  step: jax.Array
  params: Any
  model_state: Any
  task_params: Any
  task_state: Any
  opt_state: Any
  rng: jax.Array


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of `values` over the entries where `mask` holds (0 where none does)."""
  mask = mask.astype(values.dtype)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def per_example_losses(outputs: Sequence[jax.Array], targets: jax.Array,
                       kinds: Sequence[str]) -> jax.Array:
  """(B, K) losses: cross-entropy for classification heads, squared error for regression."""
  columns = []
  for k, (out, kind) in enumerate(zip(outputs, kinds)):
    if kind == CLASSIFICATION:
      labels = targets[:, k].astype(jnp.int32)
      columns.append(optax.softmax_cross_entropy_with_integer_labels(out, labels))
    else:
      columns.append((out[:, 0] - targets[:, k]) ** 2)
  return jnp.stack(columns, axis=1)


def task_losses(outputs: Sequence[jax.Array], targets: jax.Array, task_mask: jax.Array,
                kinds: Sequence[str]) -> jax.Array:
  """(K,) losses: each task's mean over the examples of the batch that belong to it."""
  per_example = per_example_losses(outputs, targets, kinds)
  return jax.vmap(masked_mean, in_axes=(1, 1))(per_example, task_mask)


def _apply(model: nn.Module, params: Any, model_state: Any, images: jax.Array, *,
           train: bool, rng: jax.Array | None = None) -> tuple[Any, Any]:
  variables = {"params": params, **model_state}
  rngs = {"dropout": rng} if rng is not None else None
  if train and model_state:
    outputs, new_state = model.apply(variables, images, train=True, rngs=rngs,
                                     mutable=list(model_state))
    return outputs, new_state
  return model.apply(variables, images, train=train, rngs=rngs), model_state


def make_train_step(model: nn.Module, weighting: TaskWeighting, tx: optax.GradientTransformation,
                    kinds: Sequence[str], mesh: jax.sharding.Mesh
                    ) -> Callable[[TrainState, dict], tuple[TrainState, jax.Array]]:
  """The jitted, donated, data-parallel step ``(state, batch) -> (state, task_losses)``."""

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, jax.Array]:
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

    def objective(players):
      outputs, model_state = _apply(model, players["params"], state.model_state,
                                    batch["images"], train=True, rng=rng)
      losses = task_losses(outputs, batch["targets"], batch["task_mask"], kinds)
      value = weighting.objective(losses, players["task_weights"], state.task_state)
      return value, (losses, model_state)

    players = {"params": state.params, "task_weights": state.task_params}
    grads, (losses, model_state) = jax.grad(objective, has_aux=True)(players)
    updates, opt_state = tx.update(grads, state.opt_state, players)
    players = optax.apply_updates(players, updates)
    return state.replace(step=state.step + 1, params=players["params"],
                         task_params=players["task_weights"], model_state=model_state,
                         opt_state=opt_state), losses

  replicated = parallel.replicated(mesh)
  return jax.jit(train_step, in_shardings=(replicated, parallel.batch_sharded(mesh)),
                 out_shardings=(replicated, replicated), donate_argnums=0)


def make_eval_step(model: nn.Module, kinds: Sequence[str], mesh: jax.sharding.Mesh
                   ) -> Callable[[Any, Any, dict], dict]:
  """The jitted evaluation ``(params, model_state, batch) -> per-task sums``.

  Returns sums, not means, so that a split is accumulated exactly over its batches:
  ``loss`` (K,) summed losses, ``count`` (K,) examples per task, ``correct`` (K,) right
  answers (classification), ``abs_err`` (K,) absolute errors (regression). Padding rows
  carry an all-False task mask and count for nothing.
  """

  def eval_step(params: Any, model_state: Any, batch: dict) -> dict:
    outputs, _ = _apply(model, params, model_state, batch["images"], train=False)
    mask = batch["task_mask"].astype(jnp.float32)
    losses = per_example_losses(outputs, batch["targets"], kinds)
    correct, abs_err = [], []
    for k, (out, kind) in enumerate(zip(outputs, kinds)):
      if kind == CLASSIFICATION:
        correct.append(jnp.argmax(out, -1) == batch["targets"][:, k].astype(jnp.int32))
        abs_err.append(jnp.zeros(out.shape[0]))
      else:
        correct.append(jnp.zeros(out.shape[0], bool))
        abs_err.append(jnp.abs(out[:, 0] - batch["targets"][:, k]))
    correct = jnp.stack(correct, 1).astype(jnp.float32)
    abs_err = jnp.stack(abs_err, 1)
    return {"loss": jnp.sum(losses * mask, 0), "count": jnp.sum(mask, 0),
            "correct": jnp.sum(correct * mask, 0), "abs_err": jnp.sum(abs_err * mask, 0)}

  replicated = parallel.replicated(mesh)
  return jax.jit(eval_step, in_shardings=(replicated, replicated, parallel.batch_sharded(mesh)),
                 out_shardings=replicated)
