"""Training one stage: epochs of jitted steps, validation, model selection, checkpoints.

The position in the data is a pure function of (seed, stage, step) (`Problem.train_batch`),
so a stage resumed from the checkpoint of step s replays exactly the batches an
uninterrupted run would have seen. Host-side history
(per-epoch losses, validation metrics, task weights, the selected epoch) is saved with the
state, so a resumed run writes the same report as one that never stopped.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mmcompress import sparsity
from mmcompress.problems import Problem
from mmcompress.train import parallel
from mmcompress.train.checkpoint import StageCheckpoints
from mmcompress.train.step import TrainState
from mmcompress import weighting as weighting_lib
from mmcompress.weighting import TaskWeighting


class NonFiniteLossError(FloatingPointError):
  """A task loss (or the weights) became NaN or infinite; the last good checkpoint is kept.

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
    done: whether the stage has trained all its steps.
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
class StageSettings:
  """What a stage needs besides its state and its seeds (all static, none checkpointed).

  Attributes:
    name: the stage's name.
    index: its position in the pipeline (decorrelates the data order of stages).
    epochs: how many epochs it trains.
    batch_size: the global batch size.
    problem: the data and its tasks.
    weighting: the task weighting.
    train_step, eval_step: from `mmcompress.train.step` (or `seed_axis`, for many seeds).
    mesh: the data mesh.
    eval_batch_size: rows per evaluation call.
    checkpoint_every: save every this many steps (and at the end of the stage).
    directory: where the stage keeps its checkpoints.
    log: called at the end of each epoch with (stage, epoch, its `EpochRecord`), with the
      seed first for a stage of many seeds.
    on_checkpoint: called with (stage, step) after each save (tests use it to interrupt).
  """
  name: str
  index: int
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
  log: Callable[..., None] | None = None
  on_checkpoint: Callable[[str, int], None] | None = None

  @property
  def steps_per_epoch(self) -> int:
    return self.problem.steps_per_epoch(self.batch_size)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StageContext(StageSettings):
  """A stage of one run: `StageSettings` and the run's `seed`."""
  seed: int


def evaluate(problem: Problem, eval_step: Callable[..., Any], params: Any, model_state: Any,
             split: str, mesh: jax.sharding.Mesh, batch_size: int) -> dict:
  """The problem's metrics over a whole split, from sums accumulated batch by batch."""
  parallel.check_batch_size(batch_size, mesh, "eval_batch_size")
  totals = None
  for batch in problem.eval_batches(split, batch_size):
    sums = eval_step(params, model_state, parallel.shard_batch(batch, mesh))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return problem.finalize(jax.tree.map(np.asarray, totals))


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


def _check_finite(pending: list[jax.Array], first_step: int, ctx: StageContext) -> None:
  if not pending:
    return
  losses = np.asarray(jnp.stack(pending))
  bad = ~np.isfinite(losses)
  if bad.any():
    row, task = np.argwhere(bad)[0]
    raise NonFiniteLossError(
        f"stage {ctx.name!r}: the loss of task {ctx.problem.task_names[task]!r} is "
        f"{losses[row, task]} at step {first_step + row + 1}", ctx.directory)


def _check_params_finite(state: TrainState, step: int, ctx: StageContext) -> None:
  """A finite loss can still come with a non-finite update; never checkpoint such weights."""
  finite = jax.tree.reduce(jnp.logical_and,
                           jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)), state.params),
                           jnp.asarray(True))
  if not bool(finite):
    raise NonFiniteLossError(
        f"stage {ctx.name!r}: the parameters became NaN or infinite by step {step} although "
        "the losses were finite", ctx.directory)


def train_stage(ctx: StageContext, state: TrainState
                ) -> tuple[TrainState, dict, StageRecord]:
  """Trains one stage from `state`, resuming from its checkpoints if it has any.

  Returns:
    ``(final state, best, record)``: the state after the last step (what the last
    checkpoint holds), the snapshot of the epoch with the best validation score, and the
    stage's record (per-epoch history, the selected epoch).
  """
  per_epoch = ctx.steps_per_epoch
  total = ctx.epochs * per_epoch
  checkpoints = StageCheckpoints(ctx.directory)
  num_tasks = ctx.problem.num_tasks
  restored = checkpoints.restore_latest(abstract_carry(state, num_tasks, ctx.mesh))
  if restored is None:
    carry = parallel.replicate(initial_carry(state, num_tasks), ctx.mesh)
    record = StageRecord(ctx.name)
  else:
    carry, record = restored[0], StageRecord.from_json(restored[1])
    logging.info("stage %s: resuming at step %d of %d", ctx.name, int(carry["state"].step),
                 total)
  step = int(carry["state"].step)
  pending, pending_from = [], step
  try:
    while step < total:
      batch = parallel.shard_batch(
          ctx.problem.train_batch(ctx.seed, ctx.index, step, ctx.batch_size), ctx.mesh,
          ctx.problem.batch_axis)
      carry["state"], losses = ctx.train_step(carry["state"], batch)
      carry["loss_sum"] = carry["loss_sum"] + losses
      pending.append(losses)
      step += 1
      if step % per_epoch == 0:
        _check_finite(pending, pending_from, ctx)
        pending, pending_from = [], step
        carry, record = _end_epoch(ctx, carry, step // per_epoch - 1, record)
        if ctx.log:
          ctx.log(ctx.name, record.epochs[-1].epoch, record.epochs[-1])
      if step % ctx.checkpoint_every == 0 or step == total:
        _check_finite(pending, pending_from, ctx)
        _check_params_finite(carry["state"], step, ctx)
        pending, pending_from = [], step
        record = record._replace(done=step == total)
        checkpoints.save(step, carry, record.to_json())
        if ctx.on_checkpoint:
          ctx.on_checkpoint(ctx.name, step)
    if total == 0 and not record.done:
      record = record._replace(done=True)
      checkpoints.save(0, carry, record.to_json())
  finally:
    checkpoints.close()
  return carry["state"], carry["best"], record


def _end_epoch(ctx: StageContext, carry: dict, epoch: int, record: StageRecord
               ) -> tuple[dict, StageRecord]:
  """The carry after epoch `epoch` (weighting's end of epoch, best snapshot) and the stage's
  record with that epoch added (and selected, if it is the best so far)."""
  state = carry["state"]
  train_loss = carry["loss_sum"] / ctx.steps_per_epoch
  task_state = ctx.weighting.end_epoch(state.task_state, train_loss)
  state = state.replace(task_state=parallel.replicate(task_state, ctx.mesh))
  val = evaluate(ctx.problem, ctx.eval_step, state.params, state.model_state, "val",
                 ctx.mesh, ctx.eval_batch_size)
  weights = weighting_lib.current_weights(ctx.weighting, state.task_params, state.task_state,
                                          state.opt_state)
  score = selection_score(val)
  epoch_record = EpochRecord(
      epoch=epoch, train_loss=[float(v) for v in np.asarray(train_loss)],
      val_loss=val["loss"], val_metric=[val["metrics"][t] for t in ctx.problem.task_names],
      task_weights=[float(v) for v in np.asarray(weights)], score=score)
  record = record.with_epoch(epoch_record)
  # Replicated like the rest of the carry: a mask that the state does not hold (a dense
  # stage's) is created on one device, which a multi-process checkpoint cannot save.
  best = (parallel.replicate(snapshot(state), ctx.mesh) if record.best_epoch == epoch
          else carry["best"])
  return {"state": state, "best": best,
          "loss_sum": jnp.zeros_like(carry["loss_sum"])}, record


def initial_carry(state: TrainState, num_tasks: int) -> dict:
  """What a stage checkpoints: the state, the selected snapshot, the epoch's loss sums."""
  return {"state": state, "best": snapshot(state),
          "loss_sum": jnp.zeros((num_tasks,), jnp.float32)}


def abstract_carry(state: TrainState, num_tasks: int, mesh: jax.sharding.Mesh) -> Any:
  """Shapes, dtypes and (replicated) shardings of `initial_carry`, for restoring."""
  shapes = jax.eval_shape(lambda s: initial_carry(s, num_tasks), state)
  sharding = parallel.replicated(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      shapes)
