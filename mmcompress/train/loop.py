"""Training one stage of an axis of runs: epochs of jitted steps, validation, model selection,
checkpoints. `train_stage` is the one stage loop of the project; a single run is an axis of
length 1.

The runs are stacked on a leading axis (`mmcompress.train.run_axis`): one jitted step trains
every run on its own seed's batch, one jitted evaluation scores every run's parameters on the
same validation batch, one checkpoint holds all of them. Each run keeps its own `StageRecord`
and its own best-validation snapshot, so each run's numbers are those it gives alone (up to
float rounding: `tests/test_run_axis.py`).

The position in the data is a pure function of (seed, stage, step) (`Problem.train_batch`),
so a stage resumed from the checkpoint of step s replays exactly the batches an
uninterrupted run would have seen. Host-side history (per-epoch losses, validation metrics,
task weights, the selected epoch, the runs that stopped) is saved with the state, so a
resumed stage writes the same records as one that never stopped.

A run whose losses or parameters stop being finite is frozen by the step (which checks the
parameters at every step); here it gets a message (which task, which step) and its records
stop, while the others go on. The stage ends early only if every run has stopped.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmcompress import errors, sparsity
from mmcompress.problems import Problem
from mmcompress.train import clock as clock_lib, parallel, run_axis
from mmcompress.train.checkpoint import StageCheckpoints
from mmcompress.train.step import TrainState
from mmcompress import weighting as weighting_lib
from mmcompress.weighting import TaskWeighting

__all__ = ["abstract_carry", "EpochRecord", "evaluate", "evaluate_runs", "initial_carry",
           "make_eval_step", "NonFiniteLossError", "selection_score", "snapshot", "StageContext",
           "StageRecord", "train_stage"]


class NonFiniteLossError(FloatingPointError):
  """A loss (or the weights) became NaN or infinite everywhere there was something to compare
  (every seed's dense reference); the last good checkpoints are kept.

  Attributes:
    summary: what happened, where and when, without the path (for reports).
  """

  def __init__(self, summary: str, directory: str):
    super().__init__(
        f"{summary}. The last good checkpoint in {directory} is kept; to retry (a lower "
        "learning rate, --config.optimizer.clip_norm), use a new --workdir.")
    self.summary = summary


class EpochRecord(NamedTuple):
  """One finished epoch of a stage, as its checkpoint records it.

  Attributes:
    epoch: the epoch's index within the stage, from 0.
    train_loss: each task's mean training loss over the epoch.
    val_loss: each task's validation loss at the end of the epoch.
    val_metric: each task's validation metric, in the problem's task order.
    task_weights: the task weights at the end of the epoch.
    score: the model-selection score (`selection_score`, lower is better).
  """
  epoch: int
  train_loss: list[float]
  val_loss: list[float]
  val_metric: list[float]
  task_weights: list[float]
  score: float

  @classmethod
  def from_json(cls, value: dict) -> EpochRecord:
    return cls(**{field: value[field] for field in cls._fields})

  def to_json(self) -> dict:
    return self._asdict()


class StageRecord(NamedTuple):
  """A stage's host-side history, saved as JSON beside each checkpoint.

  Attributes:
    stage: the stage's name.
    epochs: every finished epoch, in order.
    best_epoch: the epoch of the best validation score so far (None before a finite one).
    best_score: that score.
    done: whether the stage has trained all its steps (never, for a run that stopped).
  """
  stage: str
  epochs: tuple[EpochRecord, ...] = ()
  best_epoch: int | None = None
  best_score: float | None = None
  done: bool = False

  @classmethod
  def from_json(cls, value: dict) -> StageRecord:
    return cls(stage=value["stage"], epochs=tuple(map(EpochRecord.from_json, value["epochs"])),
               best_epoch=value["best_epoch"], best_score=value["best_score"],
               done=value["done"])

  def to_json(self) -> dict:
    return {"stage": self.stage, "epochs": [e.to_json() for e in self.epochs],
            "best_epoch": self.best_epoch, "best_score": self.best_score, "done": self.done}

  def with_epoch(self, epoch: EpochRecord) -> StageRecord:
    """This record with `epoch` appended, and selected if its score is the best so far."""
    record = self._replace(epochs=self.epochs + (epoch,))
    score = epoch.score
    if bool(np.isfinite(score)) and (self.best_score is None or score < self.best_score):
      record = record._replace(best_epoch=epoch.epoch, best_score=score)
    return record


@dataclasses.dataclass(frozen=True, kw_only=True)
class StageContext:
  """What a stage of R runs needs besides their states (all static, none checkpointed).

  Attributes:
    name: the stage's name.
    index: its position in the pipeline (decorrelates the data order of stages).
    seeds: the data seed of each run on the axis (runs of one seed see the same batches).
    epochs: how many epochs it trains.
    batch_size: the global batch size of each run.
    problem: the data and its tasks.
    weighting: the task weighting.
    train_step: `run_axis.make_runs_train_step`.
    eval_step: `make_eval_step` (either placement: it follows `sharded`).
    mesh: the data mesh.
    eval_batch_size: rows per evaluation call.
    checkpoint_every: save every this many steps (and at the end of the stage).
    directory: where the stage keeps its checkpoints.
    sharded: whether the run axis is split over the devices (`run_axis.can_shard`).
    log: called at the end of each epoch with (run's position, stage, epoch, `EpochRecord`).
    on_checkpoint: called with (stage, step) after each save (tests use it to interrupt).
    clock: a `clock.Clock` that the steps, evaluations and checkpoints are measured on, or
      None.
    run_names: each run's name, in the order of the axis, recorded with every checkpoint: a
      directory whose checkpoints hold other runs (or the same in another order, which
      would restore one run's state into another's) is refused. Empty: not checked, nor
      are checkpoints saved before the names were recorded.
  """
  name: str
  index: int
  seeds: tuple[int, ...]
  epochs: int
  batch_size: int
  problem: Problem
  weighting: TaskWeighting
  train_step: Callable[..., Any]
  eval_step: Callable[..., Any]
  mesh: jax.sharding.Mesh
  eval_batch_size: int
  checkpoint_every: int
  directory: str
  sharded: bool = False
  log: Callable[[int, str, int, EpochRecord], None] | None = None
  on_checkpoint: Callable[[str, int], None] | None = None
  clock: clock_lib.Clock | None = None
  run_names: tuple[str, ...] = ()

  @property
  def steps_per_epoch(self) -> int:
    return self.problem.steps_per_epoch(self.batch_size)


def _split_totals(problem: Problem, eval_step: Callable[..., Any], params: Any,
                  model_state: Any, split: str, mesh: jax.sharding.Mesh, batch_size: int,
                  batches_at: jax.sharding.NamedSharding) -> Any:
  """`eval_step`'s sums added up over every batch of `split`, on the host."""
  parallel.check_batch_size(batch_size, mesh, "eval_batch_size")
  totals = None
  for batch in problem.eval_batches(split, batch_size):
    sums = eval_step(params, model_state, parallel.place(batch, batches_at))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return jax.tree.map(np.asarray, totals)


def evaluate(problem: Problem, eval_step: Callable[..., Any], params: Any, model_state: Any,
             split: str, mesh: jax.sharding.Mesh, batch_size: int) -> dict:
  """The problem's metrics of one model over a whole split (`step.make_eval_step`)."""
  return problem.finalize(_split_totals(problem, eval_step, params, model_state, split, mesh,
                                        batch_size, parallel.batch_sharded(mesh)))


def make_eval_step(problem: Problem, model: nn.Module, mesh: jax.sharding.Mesh,
                   sharded: bool = False, single: bool = False
                   ) -> Callable[[Any, Any, dict], Any]:
  """The jitted evaluation of R runs' parameters on one batch: stacked sums (`single`: R is
  1, evaluated without a vmap, as `run_axis.make_runs_train_step` steps it)."""

  def sums(params: Any, model_state: Any, batch: dict) -> Any:
    return problem.eval_sums(model, params, model_state, batch)

  eval_step = run_axis.over_runs(sums, (0, 0, None), 1 if single else 2)

  states = run_axis.state_sharding(mesh, sharded)
  batch = parallel.replicated(mesh) if sharded else parallel.batch_sharded(mesh)
  return jax.jit(eval_step, in_shardings=(states, states, batch), out_shardings=states)


def evaluate_runs(problem: Problem, eval_step: Callable[..., Any], params: Any,
                  model_state: Any, split: str, mesh: jax.sharding.Mesh, batch_size: int,
                  sharded: bool = False) -> list[dict]:
  """Every run's metrics over a whole split, in one pass (`make_eval_step`)."""
  totals = _split_totals(
      problem, eval_step, params, model_state, split, mesh, batch_size,
      parallel.replicated(mesh) if sharded else parallel.batch_sharded(mesh))
  num_runs = jax.tree.leaves(totals)[0].shape[0]
  return [problem.finalize(jax.tree.map(lambda x, i=i: x[i], totals)) for i in range(num_runs)]


def selection_score(val: dict) -> float:
  """Lower is better: the unweighted mean validation loss, the same for every method."""
  return float(np.mean(val["loss"]))


def snapshot(state: TrainState) -> dict:
  """What model selection keeps of a state: parameters, statistics, and the masks.

  A copy: the training step donates the state's buffers, the snapshot must outlive them.
  """
  masks = sparsity.full_masks(state.params, sparsity.find_masks(state.opt_state))
  return jax.tree.map(jnp.copy, {"params": state.params, "model_state": state.model_state,
                                 "masks": masks})


# The host loop's array work is jitted: an eager op compiles once for every shape it meets,
# which over the leaves of a state and the stages of a comparison costs more than training.


@jax.jit
def _accumulate(loss_sum: jax.Array, losses: jax.Array, alive: jax.Array) -> jax.Array:
  """The epoch's loss sums with this step's losses of the runs still training."""
  return loss_sum + jnp.where(alive[:, None], losses, 0.0)


@jax.jit
def _select(improved: jax.Array, state: TrainState, best: dict) -> dict:
  """The best snapshots: this epoch's for the runs it `improved`, the kept ones elsewhere."""
  return jax.tree.map(
      lambda n, o: jnp.where(improved.reshape((-1,) + (1,) * (jnp.ndim(n) - 1)), n, o),
      snapshot(state), best)


def _epoch_update(weighting: TaskWeighting, steps_per_epoch: int) -> Callable[..., Any]:
  """The jitted end of an epoch: ``(state, loss_sum) -> (state, train loss, task weights,
  zeroed sums)``, the weighting's `end_epoch` and `current_weights` of every run."""

  @jax.jit
  def update(state: TrainState, loss_sum: jax.Array):
    train_loss = loss_sum / steps_per_epoch
    state = state.replace(task_state=jax.vmap(weighting.end_epoch)(state.task_state, train_loss))
    weights = jax.vmap(lambda p, s, o: weighting_lib.current_weights(weighting, p, s, o))(
        state.task_params, state.task_state, state.opt_state)
    return state, train_loss, weights, jnp.zeros_like(loss_sum)

  return update


def initial_carry(states: TrainState, num_tasks: int) -> dict:
  """What a stage checkpoints: the stacked states, their selected snapshots, the epoch's
  loss sums and which runs are still training."""
  num_runs = jnp.shape(states.step)[0]
  return {"state": states, "best": snapshot(states),
          "loss_sum": jnp.zeros((num_runs, num_tasks), jnp.float32),
          "alive": jnp.ones((num_runs,), bool)}


def abstract_carry(states: TrainState, num_tasks: int, sharding: jax.sharding.Sharding) -> Any:
  """Shapes, dtypes and shardings of `initial_carry`, for restoring."""
  shapes = jax.eval_shape(lambda: initial_carry(states, num_tasks))
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      shapes)


def _failure(ctx: StageContext, losses: np.ndarray, step: int) -> str:
  """What stopped a run at `step` with these losses: which task, or the parameters."""
  bad = np.flatnonzero(~np.isfinite(losses))
  if bad.size:
    task = int(bad[0])
    return (f"stage {ctx.name!r}: the loss of task {ctx.problem.task_names[task]!r} is "
            f"{losses[task]} at step {step}")
  return (f"stage {ctx.name!r}: the parameters became NaN or infinite by step {step} although "
          "the losses were finite")


def _new_failures(ctx: StageContext, pending: list[tuple[int, jax.Array, jax.Array]],
                  failures: dict[int, str]) -> dict[int, str]:
  """`failures` with every run that stopped during the `pending` steps (step, losses,
  alive after it) added."""
  failures = dict(failures)
  for step, losses, alive in pending:
    alive = np.asarray(alive)
    for i in range(len(ctx.seeds)):
      if not alive[i] and i not in failures:
        failures[i] = _failure(ctx, np.asarray(losses)[i], step)
  return failures


def train_stage(ctx: StageContext, states: TrainState
                ) -> tuple[TrainState, dict, list[StageRecord], dict[int, str]]:
  """Trains one stage of every run from `states` (stacked), resuming from its checkpoints.

  Returns:
    ``(final states, best snapshots, records, failures)``: stacked like `states`; one
    `StageRecord` per run; and the runs that stopped, position on the axis -> what stopped
    them (which task's loss, at which step). A stopped run's entries are not results.
  """
  per_epoch = ctx.steps_per_epoch
  total = ctx.epochs * per_epoch
  num_tasks = ctx.problem.num_tasks
  num_runs = len(ctx.seeds)
  sharding = run_axis.state_sharding(ctx.mesh, ctx.sharded)
  checkpoints = StageCheckpoints(ctx.directory)
  try:
    with clock_lib.measure(ctx.clock, "checkpoints"):
      restored = checkpoints.restore_latest(abstract_carry(states, num_tasks, sharding))
    if restored is None:
      carry = jax.jit(initial_carry, static_argnums=1, out_shardings=sharding)(
          parallel.place(states, sharding), num_tasks)
      records = [StageRecord(ctx.name) for _ in range(num_runs)]
      step, failures = 0, {}
    else:
      carry, saved = restored
      _check_same_runs(ctx, saved)
      records = [StageRecord.from_json(r) for r in saved["runs"]]
      step, failures = saved["step"], {int(k): v for k, v in saved["failures"].items()}
      logging.info("stage %s: resuming %d runs at step %d of %d", ctx.name, num_runs, step,
                   total)
    batches_at = run_axis.batch_sharding(ctx.mesh, ctx.problem.batch_axis, ctx.sharded)
    epoch_update = _epoch_update(ctx.weighting, per_epoch)
    pending = []
    while step < total and len(failures) < num_runs:
      batches = run_axis.stacked_batches(ctx.problem, ctx.seeds, ctx.index, step,
                                         ctx.batch_size)
      with clock_lib.measure(ctx.clock, "training steps"):
        carry["state"], carry["alive"], losses = ctx.train_step(
            carry["state"], carry["alive"], parallel.place(batches, batches_at))
        carry["loss_sum"] = _accumulate(carry["loss_sum"], losses, carry["alive"])
        step += 1
        pending.append((step, losses, carry["alive"]))
        end_of_epoch = step % per_epoch == 0
        if end_of_epoch or step % ctx.checkpoint_every == 0 or step == total:
          # (Reads the losses back: the steps' compute is counted here, with the steps.)
          failures, pending = _new_failures(ctx, pending, failures), []
      if end_of_epoch:
        with clock_lib.measure(ctx.clock, "evaluation"):
          carry, records = _end_epoch(ctx, carry, step // per_epoch - 1, records, failures,
                                      epoch_update)
      if step % ctx.checkpoint_every == 0 or step == total or len(failures) == num_runs:
        records = [r._replace(done=step == total and i not in failures)
                   for i, r in enumerate(records)]
        with clock_lib.measure(ctx.clock, "checkpoints"):
          checkpoints.save(step, carry, {"runs": [r.to_json() for r in records], "step": step,
                                         "failures": {str(k): v for k, v in failures.items()},
                                         "run_names": list(ctx.run_names)})
        if ctx.on_checkpoint:
          ctx.on_checkpoint(ctx.name, step)
  finally:
    with clock_lib.measure(ctx.clock, "checkpoints"):  # waits for a save still being written
      checkpoints.close()
  return carry["state"], carry["best"], records, failures


def _check_same_runs(ctx: StageContext, saved: dict) -> None:
  """Refuses a checkpoint that recorded other runs than `ctx`'s (see `StageContext`)."""
  recorded = saved.get("run_names")
  if ctx.run_names and recorded and recorded != list(ctx.run_names):
    raise errors.UserError(
        f"{ctx.directory} holds the checkpoints of other runs ({', '.join(recorded)}) than "
        f"this stage trains ({', '.join(ctx.run_names)}); resuming would give one run's "
        "state to another. Use a new --workdir, or move that folder out of the way and rerun.")


def _end_epoch(ctx: StageContext, carry: dict, epoch: int, records: Sequence[StageRecord],
               failures: dict[int, str], epoch_update: Callable[..., Any]
               ) -> tuple[dict, list[StageRecord]]:
  """The carry after epoch `epoch` (the weighting's end of epoch, the best snapshots) and
  every live run's record with that epoch added (and selected, if it is its best so far)."""
  state, train_loss, weights, loss_sum = epoch_update(carry["state"], carry["loss_sum"])
  vals = evaluate_runs(ctx.problem, ctx.eval_step, state.params, state.model_state, "val",
                       ctx.mesh, ctx.eval_batch_size, ctx.sharded)
  train_loss, weights = np.asarray(train_loss), np.asarray(weights)
  records, improved = list(records), np.zeros(len(ctx.seeds), bool)
  for i in range(len(ctx.seeds)):
    if i in failures:
      continue
    val = vals[i]
    epoch_record = EpochRecord(
        epoch=epoch, train_loss=[float(v) for v in train_loss[i]], val_loss=val["loss"],
        val_metric=[val["metrics"][t] for t in ctx.problem.task_names],
        task_weights=[float(v) for v in weights[i]], score=selection_score(val))
    records[i] = records[i].with_epoch(epoch_record)
    improved[i] = records[i].best_epoch == epoch
    if ctx.log:
      ctx.log(i, ctx.name, epoch, epoch_record)
  best = _select(improved, state, carry["best"]) if improved.any() else carry["best"]
  return {"state": state, "best": best, "alive": carry["alive"], "loss_sum": loss_sum}, records
