"""Training one stage of S seeds at once: `mmcompress.train.loop` on the seed axis.

The same epochs, validation, model selection and checkpoints as `loop.train_stage`, for a
`TrainState` stacked over seeds (`mmcompress.train.seed_axis`): one jitted step trains every
seed on its own batch, one jitted evaluation scores every seed's parameters on the same
validation batch, one checkpoint holds all of them. Each seed keeps its own `StageRecord` and
its own best-validation snapshot, so each seed's numbers are those its one-seed run gives
(up to float rounding: `tests/test_seed_axis.py`).

A seed whose losses or parameters stop being finite is frozen by the step; here it gets the
one-seed path's message (which task, which step) and its records stop, while the others go
on. The stage ends early only if every seed has stopped. The step checks the parameters at
every step, the one-seed path at its checkpoints: a seed whose parameters turn non-finite
with finite losses stops here at that step ("the parameters became NaN or infinite"), where
the one-seed run usually stops one step later on the loss.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmcompress.problems import Problem
from mmcompress.train import loop, parallel, seed_axis
from mmcompress.train.checkpoint import StageCheckpoints
from mmcompress.train.step import TrainState
from mmcompress import weighting as weighting_lib
from mmcompress.weighting import TaskWeighting


@dataclasses.dataclass(frozen=True, kw_only=True)
class SeedStageContext(loop.StageSettings):
  """A stage of S seeds: `loop.StageSettings` with the seed-axis steps
  (`seed_axis.make_seed_train_step`, `make_seed_eval_step`), the `seeds`, and where they live
  (`seed_sharded`); `log` is called with (seed, stage, epoch, its `EpochRecord`)."""
  seeds: tuple[int, ...]
  seed_sharded: bool = False


def make_seed_eval_step(problem: Problem, model: nn.Module, mesh: jax.sharding.Mesh,
                        seed_sharded: bool = False) -> Callable[[Any, Any, dict], Any]:
  """The jitted evaluation of S seeds' parameters on one batch: stacked sums."""

  def eval_step(params: Any, model_state: Any, batch: dict) -> Any:
    return jax.vmap(lambda p, s: problem.eval_sums(model, p, s, batch))(params, model_state)

  states = seed_axis.state_sharding(mesh, seed_sharded)
  batch = parallel.replicated(mesh) if seed_sharded else parallel.batch_sharded(mesh)
  return jax.jit(eval_step, in_shardings=(states, states, batch), out_shardings=states)


def evaluate_seeds(problem: Problem, eval_step: Callable[..., Any], params: Any,
                   model_state: Any, split: str, mesh: jax.sharding.Mesh, batch_size: int,
                   seed_sharded: bool = False) -> list[dict]:
  """Every seed's metrics over a whole split (`loop.evaluate` for each seed, one pass)."""
  parallel.check_batch_size(batch_size, mesh, "eval_batch_size")
  sharding = parallel.replicated(mesh) if seed_sharded else parallel.batch_sharded(mesh)
  totals = None
  for batch in problem.eval_batches(split, batch_size):
    sums = eval_step(params, model_state, jax.device_put(batch, sharding))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.tree.map(np.asarray, totals)
  num_seeds = jax.tree.leaves(totals)[0].shape[0]
  return [problem.finalize(jax.tree.map(lambda x, i=i: x[i], totals)) for i in range(num_seeds)]


# The host loop's array work is jitted: an eager op compiles once for every shape it meets,
# which over the leaves of a state and the stages of a comparison costs more than training.


@jax.jit
def _accumulate(loss_sum: jax.Array, losses: jax.Array, alive: jax.Array) -> jax.Array:
  """The epoch's loss sums with this step's losses of the seeds still training."""
  return loss_sum + jnp.where(alive[:, None], losses, 0.0)


@jax.jit
def _select(improved: jax.Array, state: TrainState, best: dict) -> dict:
  """The best snapshots: this epoch's for the seeds it `improved`, the kept ones elsewhere."""
  return jax.tree.map(
      lambda n, o: jnp.where(improved.reshape((-1,) + (1,) * (jnp.ndim(n) - 1)), n, o),
      loop.snapshot(state), best)


def _epoch_update(weighting: TaskWeighting, steps_per_epoch: int) -> Callable[..., Any]:
  """The jitted end of an epoch: ``(state, loss_sum) -> (state, train loss, task weights,
  zeroed sums)``, the weighting's `end_epoch` and `current_weights` of every seed."""

  @jax.jit
  def update(state: TrainState, loss_sum: jax.Array):
    train_loss = loss_sum / steps_per_epoch
    state = state.replace(task_state=jax.vmap(weighting.end_epoch)(state.task_state, train_loss))
    weights = jax.vmap(lambda p, s, o: weighting_lib.current_weights(weighting, p, s, o))(
        state.task_params, state.task_state, state.opt_state)
    return state, train_loss, weights, jnp.zeros_like(loss_sum)

  return update


def _initial_carry(states: TrainState, num_tasks: int) -> dict:
  num_seeds = jnp.shape(states.step)[0]
  return {"state": states, "best": loop.snapshot(states),
          "loss_sum": jnp.zeros((num_seeds, num_tasks), jnp.float32),
          "alive": jnp.ones((num_seeds,), bool)}


def _abstract(carry_fn: Callable[[], dict], sharding: jax.sharding.Sharding) -> Any:
  shapes = jax.eval_shape(carry_fn)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      shapes)


def _failure(ctx: SeedStageContext, losses: np.ndarray, step: int) -> str:
  """The one-seed path's message for a seed that stopped at `step` with these losses."""
  bad = np.flatnonzero(~np.isfinite(losses))
  if bad.size:
    task = int(bad[0])
    return (f"stage {ctx.name!r}: the loss of task {ctx.problem.task_names[task]!r} is "
            f"{losses[task]} at step {step}")
  return (f"stage {ctx.name!r}: the parameters became NaN or infinite by step {step} although "
          "the losses were finite")


def _new_failures(ctx: SeedStageContext, pending: list[tuple[int, jax.Array, jax.Array]],
                  failures: dict[int, str]) -> dict[int, str]:
  """`failures` with every seed that stopped during the `pending` steps (step, losses,
  alive after it) added."""
  failures = dict(failures)
  for step, losses, alive in pending:
    alive = np.asarray(alive)
    for i, seed in enumerate(ctx.seeds):
      if not alive[i] and seed not in failures:
        failures[seed] = _failure(ctx, np.asarray(losses)[i], step)
  return failures


def train_stage_seeds(ctx: SeedStageContext, states: TrainState
                      ) -> tuple[TrainState, dict, list[loop.StageRecord], dict[int, str]]:
  """Trains one stage of every seed from `states` (stacked), resuming from its checkpoints.

  Returns:
    ``(final states, best snapshots, records, failures)``: stacked like `states`; one
    `StageRecord` per seed; and the seeds that stopped, seed -> the message the one-seed path
    raises (`loop.NonFiniteLossError`'s summary). A stopped seed's entries are not results.
  """
  per_epoch = ctx.steps_per_epoch
  total = ctx.epochs * per_epoch
  num_tasks = ctx.problem.num_tasks
  sharding = seed_axis.state_sharding(ctx.mesh, ctx.seed_sharded)
  checkpoints = StageCheckpoints(ctx.directory)
  restored = checkpoints.restore_latest(
      _abstract(lambda: _initial_carry(states, num_tasks), sharding))
  if restored is None:
    carry = jax.jit(_initial_carry, static_argnums=1, out_shardings=sharding)(states, num_tasks)
    records = [loop.StageRecord(ctx.name) for _ in ctx.seeds]
    step, failures = 0, {}
  else:
    carry, saved = restored
    records = [loop.StageRecord.from_json(r) for r in saved["seeds"]]
    step, failures = saved["step"], {int(k): v for k, v in saved["failures"].items()}
    logging.info("stage %s: resuming %d seeds at step %d of %d", ctx.name, len(ctx.seeds),
                 step, total)
  batches_at = seed_axis.batch_sharding(ctx.mesh, ctx.problem.batch_axis, ctx.seed_sharded)
  epoch_update = _epoch_update(ctx.weighting, per_epoch)
  pending = []
  try:
    while step < total and len(failures) < len(ctx.seeds):
      batches = seed_axis.stacked_batches(ctx.problem, ctx.seeds, ctx.index, step,
                                          ctx.batch_size)
      carry["state"], carry["alive"], losses = ctx.train_step(
          carry["state"], carry["alive"], jax.device_put(batches, batches_at))
      carry["loss_sum"] = _accumulate(carry["loss_sum"], losses, carry["alive"])
      step += 1
      pending.append((step, losses, carry["alive"]))
      end_of_epoch = step % per_epoch == 0
      if end_of_epoch or step % ctx.checkpoint_every == 0 or step == total:
        failures, pending = _new_failures(ctx, pending, failures), []
      if end_of_epoch:
        carry, records = _end_epoch(ctx, carry, step // per_epoch - 1, records, failures,
                                    epoch_update)
      if step % ctx.checkpoint_every == 0 or step == total or len(failures) == len(ctx.seeds):
        records = [r._replace(done=step == total) for r in records]
        checkpoints.save(step, carry, {"seeds": [r.to_json() for r in records],
                                       "step": step,
                                       "failures": {str(k): v for k, v in failures.items()}})
        if ctx.on_checkpoint:
          ctx.on_checkpoint(ctx.name, step)
  finally:
    checkpoints.close()
  return carry["state"], carry["best"], records, failures


def _end_epoch(ctx: SeedStageContext, carry: dict, epoch: int,
               records: Sequence[loop.StageRecord], failures: dict[int, str],
               epoch_update: Callable[..., Any]) -> tuple[dict, list[loop.StageRecord]]:
  """`loop._end_epoch` for every seed still training."""
  state, train_loss, weights, loss_sum = epoch_update(carry["state"], carry["loss_sum"])
  vals = evaluate_seeds(ctx.problem, ctx.eval_step, state.params, state.model_state, "val",
                        ctx.mesh, ctx.eval_batch_size, ctx.seed_sharded)
  train_loss, weights = np.asarray(train_loss), np.asarray(weights)
  records, improved = list(records), np.zeros(len(ctx.seeds), bool)
  for i, seed in enumerate(ctx.seeds):
    if seed in failures:
      continue
    val = vals[i]
    epoch_record = loop.EpochRecord(
        epoch=epoch, train_loss=[float(v) for v in train_loss[i]], val_loss=val["loss"],
        val_metric=[val["metrics"][t] for t in ctx.problem.task_names],
        task_weights=[float(v) for v in weights[i]], score=loop.selection_score(val))
    records[i] = records[i].with_epoch(epoch_record)
    improved[i] = records[i].best_epoch == epoch
    if ctx.log:
      ctx.log(seed, ctx.name, epoch, epoch_record)
  best = _select(improved, state, carry["best"]) if improved.any() else carry["best"]
  return {"state": state, "best": best, "alive": carry["alive"], "loss_sum": loss_sum}, records
