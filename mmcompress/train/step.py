"""The training and evaluation steps: small pure functions, jitted once per stage.

A step is: the problem's per-task losses → the weighting's objective → one `jax.grad` over
``{"params": model, "task_params": weighting}`` (a gradient-level weighting: the K
per-task gradients of the model, `per_task_grads`) → one optax update through
`mmcompress.saddle_point` → the weighting's `observe` of the step's losses. Masks, task weights and both optimizers' states all live in
`TrainState`, so the step is pure and the whole state is replicated and checkpointed.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mmcompress.problems import Problem
from mmcompress.train import parallel
from mmcompress.weighting import TaskWeighting, current_weights, per_task_grads, sum_tasks

__all__ = ["create_train_state", "descent_first_link", "init_variables", "make_eval_step",
           "make_train_step", "train_step_fn", "TrainState"]

_WEIGHTING_STREAM = 1  # folded into a step's key for the weighting's randomness


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


def _gradient_rule(problem: Problem, model: nn.Module, weighting: TaskWeighting,
                   per_task: bool) -> Callable[..., tuple[Any, Any, Any]]:
  """How a step takes its gradients, the one place that asks what kind of weighting it is:
  ``(state, batch, rng, key) -> (grads, losses, model_state)`` with ``grads`` over
  ``{"params", "task_params"}``.

  * a loss-level weighting: one `jax.grad` of its objective over both players;
  * a loss-level weighting whose descent needs each task's gradient (`per_task`): row k of
    the model's gradient is c_k ∇L_k with c = ∂objective/∂L (the rows sum to the plain
    gradient), from one VJP vmapped over the K weighted cotangents;
  * a gradient-level weighting: the K gradients of its per-task objectives
    (`per_task_grads`), stacked; its aggregator, first in the descent, combines them
    (`descent_first_link`).
  """
  def losses_of(params, state, batch, rng):
    return problem.task_losses(model, params, state.model_state, batch, rng)

  def joint(state, batch, rng, key):
    def objective(players):
      losses, model_state = losses_of(players["params"], state, batch, rng)
      value = weighting.objective(losses, players["task_params"], state.task_state, key)
      return value, (losses, model_state)
    grads, (losses, model_state) = jax.grad(objective, has_aux=True)(
        {"params": state.params, "task_params": state.task_params})
    return grads, losses, model_state

  def weighted_rows(state, batch, rng, key):
    losses, vjp_fn, model_state = jax.vjp(lambda params: losses_of(params, state, batch, rng),
                                          state.params, has_aux=True)
    weights, task_grads = jax.grad(
        lambda l, tp: weighting.objective(l, tp, state.task_state, key), argnums=(0, 1))(
            losses, state.task_params)
    (rows,) = jax.vmap(vjp_fn)(jnp.diag(weights))  # row k: c_k ∇L_k
    return {"params": rows, "task_params": task_grads}, losses, model_state

  def stacked(state, batch, rng, key):
    def objectives(params):
      losses, model_state = losses_of(params, state, batch, rng)
      value = weighting.objective(losses, state.task_params, state.task_state, key)
      return value, (losses, model_state)
    _, model_grads, (losses, model_state) = per_task_grads(objectives, state.params,
                                                           has_aux=True)
    return ({"params": model_grads,
             "task_params": jax.tree.map(jnp.zeros_like, state.task_params)},
            losses, model_state)

  if weighting.aggregate is not None:
    return stacked
  return weighted_rows if per_task else joint


def descent_first_link(weighting: TaskWeighting, per_task: bool, num_tasks: int,
                       seed: int = 0) -> optax.GradientTransformation | None:
  """The first link of the descent's chain that the step's gradients need
  (`_gradient_rule`): a gradient-level weighting's aggregator, `weighting.sum_tasks` for a
  loss-level one's weighted rows, or None for its plain gradient."""
  if weighting.aggregate is not None:
    return weighting.aggregate(num_tasks, seed)
  return sum_tasks() if per_task else None


def train_step_fn(problem: Problem, model: nn.Module, weighting: TaskWeighting,
                  tx: optax.GradientTransformation, per_task: bool = False
                  ) -> Callable[[TrainState, dict], tuple[TrainState, jax.Array]]:
  """The pure step ``(state, batch) -> (state, task_losses)`` of `make_train_step`, unjitted
  (for `jax.vmap` over runs: `mmcompress.train.run_axis`)."""
  tx = optax.with_extra_args_support(tx)
  gradients = _gradient_rule(problem, model, weighting, per_task)

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, jax.Array]:
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    # The weighting's own stream (RLW's draws), apart from the model's (dropout).
    key = jax.random.fold_in(rng, _WEIGHTING_STREAM)
    grads, losses, model_state = gradients(state, batch, rng, key)
    players = {"params": state.params, "task_params": state.task_params}
    # The task weights before this step, for a descent that weighs the tasks' rows
    # (task-aware regrowth); a transform that takes no extra arguments ignores them.
    weights_now = current_weights(weighting, state.task_params, state.task_state,
                                  state.opt_state)
    updates, opt_state = tx.update(grads, state.opt_state, players, task_weights=weights_now)
    players = optax.apply_updates(players, updates)
    task_state = weighting.observe(state.task_state, jax.lax.stop_gradient(losses))
    return state.replace(step=state.step + 1, params=players["params"],
                         task_params=players["task_params"], task_state=task_state,
                         model_state=model_state, opt_state=opt_state), losses

  return train_step


def make_train_step(problem: Problem, model: nn.Module, weighting: TaskWeighting,
                    tx: optax.GradientTransformation, mesh: jax.sharding.Mesh,
                    per_task: bool = False
                    ) -> Callable[[TrainState, dict], tuple[TrainState, jax.Array]]:
  """The jitted, donated, data-parallel step ``(state, batch) -> (state, task_losses)``.

  A gradient-level weighting hands `tx` the stacked per-task gradients of its objectives.
  With `per_task`, so does a loss-level one: row k is c_k ∇L_k with c = ∂objective/∂L, so the
  rows sum to the objective's gradient (for a descent that needs each task's gradient, e.g.
  task-aware regrowth; its chain must sum them first: `weighting.sum_tasks`). With stacked
  gradients `tx.update` also gets ``task_weights=``, the weights before the step
  (`weighting.current_weights`), for a descent that weighs the tasks (``task_minmax``
  regrowth); a transform that takes no extra arguments ignores it.
  """
  replicated = parallel.replicated(mesh)
  return jax.jit(train_step_fn(problem, model, weighting, tx, per_task),
                 in_shardings=(replicated, parallel.batch_sharded(mesh, problem.batch_axis)),
                 out_shardings=(replicated, replicated), donate_argnums=0)


def make_eval_step(problem: Problem, model: nn.Module, mesh: jax.sharding.Mesh
                   ) -> Callable[[Any, Any, dict], Any]:
  """The jitted evaluation ``(params, model_state, batch) -> sums`` of the problem."""

  def eval_step(params: Any, model_state: Any, batch: dict) -> Any:
    return problem.eval_sums(model, params, model_state, batch)

  replicated = parallel.replicated(mesh)
  return jax.jit(eval_step, in_shardings=(replicated, replicated, parallel.batch_sharded(mesh)),
                 out_shardings=replicated)


def init_variables(model: nn.Module, problem: Problem, seed: int) -> tuple[Any, Any]:
  """The model's freshly initialised (params, other collections) for `seed`."""
  variables = model.init(jax.random.key(seed), jnp.asarray(problem.example_input()),
                         train=False)
  variables = dict(variables)
  params = variables.pop("params")
  return params, variables


def create_train_state(params: Any, model_state: Any, weighting: TaskWeighting,
                       tx: Any, num_tasks: int, rng: jax.Array) -> TrainState:
  """A stage's starting state: fresh optimizer and task weighting around given weights."""
  task_params, task_state = weighting.init(num_tasks)
  opt_state = tx.init({"params": params, "task_params": task_params})
  state = TrainState(step=jnp.zeros([], jnp.int32), params=params,
                              model_state=model_state, task_params=task_params,
                              task_state=task_state, opt_state=opt_state,
                              rng=jax.random.key_data(rng))
  # Transforms may alias one array in several leaves of their state (a shared zero); the
  # donating step needs every leaf in a buffer of its own.
  return jax.tree.map(jnp.copy, state)
