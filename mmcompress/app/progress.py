"""Where a long comparison stands: epochs done of epochs planned, time elapsed, time left.

Every run of a comparison is planned before it starts (`planned_epochs`): the dense
reference of each seed and each method's training stages. A finished epoch (`Progress`'s
call, from the trainer's log hook) marks how far its stage has come; a stage resumed from a
checkpoint jumps to its epoch, and a run read back from its ``result.json`` counts as done
(`Progress.run_done`). The time left is the epochs still to train at the pace of the epochs
this call has trained (every epoch of a comparison is the same number of steps of the same
batch size, though not of the same cost: a first estimate is rough).

What is shown: a line per finished run, ``seed 1 minmax: test ... [40 % of 450 epochs,
1m02s elapsed, about 1m33s left]``, and, unless ``config.epoch_lines`` is False, a line per
finished epoch; every line also goes to ``progress.log`` in the workdir, and the epochs'
numbers to TensorBoard.
"""
from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from typing import Any

from mmcompress.app import plan as app_plan
from mmcompress.train import loop, stages as stages_lib, variants

__all__ = ["duration", "planned_epochs", "Progress"]


def planned_epochs(plan: app_plan.RunPlan) -> dict[str, dict[str, int]]:
  """Run name -> {training stage: epochs} for every run a comparison of `plan` trains (a
  method's own pretraining, which every variant of a seed starts from, counts for each)."""
  method_stages = {s: int(plan.epochs[s]) for s in stages_lib.method_stages(plan.trainer)}
  grid = variants.grid(plan.trainer)
  suffixes = [""] if len(grid) == 1 else [f"{variants.PIN}{v.name}" for v in grid]
  out = {}
  for seed in plan.seeds:
    out[f"seed{seed}/dense"] = {"pretrain": int(plan.epochs["pretrain"])}
    for method in plan.methods:
      for suffix in ([""] if variants.pinned(method) else suffixes):
        out[f"seed{seed}/{method}{suffix}"] = dict(method_stages)
  return out


def duration(seconds: float) -> str:
  """``"45s"``, ``"3m05s"`` or ``"2h07m"``."""
  seconds = max(0, int(round(seconds)))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _tag(name: str) -> str:
  """A TensorBoard tag: characters other than letters, digits and ``_ . / -`` become ``_``,
  leading slashes go (as tensorboardX's ``add_scalar`` cleans them)."""
  return re.sub(r"[^-/\w\.]", "_", name).lstrip("/")


class Progress:
  """The comparison's log hook: TensorBoard scalars, epoch lines, and where the whole stands.

  Args:
    quiet: print nothing (the log file is still written).
    workdir: where ``progress.log`` and ``tensorboard/`` go.
    task_names: the problem's tasks, in order.
    write: write files (False on every process but the primary of a multi-host run).
    plan: `planned_epochs` of the config.
    epoch_lines: print a line per finished epoch, not only per finished run.
    label: printed before every line (a study's setting, when several run side by side).
    clock: seconds, `time.monotonic` (tests give their own).
  """

  def __init__(self, quiet: bool, workdir: str, task_names: tuple[str, ...], write: bool,
               plan: Mapping[str, Mapping[str, int]], epoch_lines: bool = True,
               label: str = "", clock=time.monotonic):
    self.quiet = quiet
    self.writer_dir = os.path.join(workdir, "tensorboard")
    self.log_path = os.path.join(workdir, "progress.log")
    self.task_names = task_names
    self.write = write
    self.plan = {run: dict(stages) for run, stages in plan.items()}
    self.epoch_lines = epoch_lines
    self.label = label
    self._clock = clock
    self._start = clock()
    self._done = {}      # (run, stage) -> epochs finished
    self._trained = 0    # epochs trained by this call
    self._writers = {}

  @property
  def total(self) -> int:
    return sum(sum(stages.values()) for stages in self.plan.values())

  @property
  def done(self) -> int:
    return sum(min(n, self.plan.get(run, {}).get(stage, n))
               for (run, stage), n in self._done.items())

  def status(self) -> str:
    """``"40 % of 450 epochs, 1m02s elapsed, about 1m33s left"``."""
    total, done = self.total, self.done
    elapsed = self._clock() - self._start
    text = f"{100 * done / max(total, 1):.0f} % of {total} epochs, {duration(elapsed)} elapsed"
    if self._trained and done < total:
      text += f", about {duration(elapsed / self._trained * (total - done))} left"
    return text

  def __call__(self, run_name: str, stage: str, epoch: int, record: loop.EpochRecord) -> None:
    self._done[run_name, stage] = epoch + 1
    self._trained += 1
    if self.write:
      # One event per epoch holding every scalar (TensorBoard reads each tag from it): a grid
      # logs hundreds of runs an epoch, and an event per scalar cost 10x the time.
      from tensorboardX.proto.summary_pb2 import Summary  # pylint: disable=import-outside-toplevel
      values = [Summary.Value(tag=_tag(f"{stage}/{name}/{task}"), simple_value=float(value))
                for name, row in (("train_loss", record.train_loss),
                                  ("val_metric", record.val_metric),
                                  ("task_weight", record.task_weights))
                for task, value in zip(self.task_names, row)]
      self._writer(run_name).file_writer.add_summary(Summary(value=values), epoch)
      # Written when its run finishes (`run_done` closes its writer), not every epoch: a grid
      # logs hundreds of runs an epoch, and a flush each costs more than the scalars.
    metrics = " ".join(f"{m:.3f}" for m in record.val_metric)
    self._line(f"  {run_name:>18s} {stage:8s} epoch {epoch + 1:3d}  val {metrics}  "
               f"w {' '.join(f'{w:.2f}' for w in record.task_weights)}", self.epoch_lines)

  def run_done(self, run_name: str, line: str) -> None:
    """Marks every stage of `run_name` done (it finished, diverged or was read back) and
    shows `line` with the `status`."""
    for stage, epochs in self.plan.get(run_name, {}).items():
      self._done[run_name, stage] = epochs
    if run_name in self._writers:
      # Closed, not only flushed: each writer holds two threads, and a grid finishes
      # thousands of runs in one comparison (a tuning comparison held 2,000 threads open).
      self._writers.pop(run_name).close()
    self._line(f"{line} [{self.status()}]", True)

  def seed_done(self, seed: Any) -> None:
    """Marks every run of `seed` done (its dense reference diverged: nothing else runs)."""
    for run, stages in self.plan.items():
      if run.startswith(f"seed{seed}/"):
        for stage, epochs in stages.items():
          self._done[run, stage] = epochs

  def _line(self, text: str, show: bool) -> None:
    if self.write:
      os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
      with open(self.log_path, "a") as f:
        f.write(text + "\n")
    if show and not self.quiet:
      print(f"[{self.label}] {text}" if self.label else text, flush=True)

  def _writer(self, run_name: str):
    if run_name not in self._writers:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._writers[run_name] = SummaryWriter(os.path.join(self.writer_dir, run_name))
    return self._writers[run_name]

  def close(self) -> None:
    for writer in self._writers.values():
      writer.close()
