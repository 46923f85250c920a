"""Checkpoints of a stage: the whole `TrainState` plus a JSON record of the host-side history.

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a kill
during a save leaves the previous checkpoints intact and no half-written latest one. A
checkpoint that is complete but unreadable (a truncated or damaged file) is detected when
restoring: if an older step restores, the unreadable ones are moved aside to
``<step>.unreadable`` (kept for inspection, out of the way of the steps that will be saved
again), with a warning, and the older one is used. If no step restores, that is an error, not
a silent restart: on one host; a multi-host run asks for the move to be made by hand.

Across processes (a multi-host run), every process calls `StageCheckpoints.save` and
`StageCheckpoints.restore_latest` at the same step, with the same arrays replicated over the
global mesh; orbax synchronises them through `jax.distributed` (tested with two processes on
one machine, killed and resumed: tests/test_multihost.py).
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

__all__ = ["StageCheckpoints"]


class StageCheckpoints:
  """The checkpoints of one stage of one run, in `directory`.

  Args:
    directory: where the stage keeps its checkpoints.
    max_to_keep: how many to keep (>= 2, so that a damaged latest has a fallback).
  """

  def __init__(self, directory: str, max_to_keep: int = 3):
    self.directory = os.path.abspath(directory)
    self._max_to_keep = max(2, max_to_keep)
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=self._max_to_keep,
                                             enable_async_checkpointing=False,
                                             cleanup_tmp_directories=True,
                                             create=True))

  def save(self, step: int, state: Any, record: dict) -> None:
    """Saves `state` (a pytree of arrays) and `record` (JSON) as checkpoint `step`."""
    self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     record=ocp.args.JsonSave(record)),
                       force=True)
    self._manager.wait_until_finished()

  def restore_latest(self, like: Any) -> tuple[Any, dict] | None:
    """The newest readable checkpoint as ``(state, record)``, or None if there is none.

    Args:
      like: a pytree of `jax.ShapeDtypeStruct` (with shardings) to restore into.
    """
    unreadable, found = [], None
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(like),
                                          record=ocp.args.JsonRestore()))
        found = restored["state"], dict(restored["record"])
        break
      except Exception as error:  # pylint: disable=broad-except
        # Orbax and tensorstore raise many types for a damaged file; which step is readable
        # is decided below, from whether an older one restores.
        logging.warning("checkpoint %d in %s is unreadable (%s: %s); trying an older one.",
                        step, self.directory, type(error).__name__, error)
        unreadable.append(step)
    if not unreadable:
      return found
    if found is None:
      # Nothing restores: more likely a changed state layout (other code) or a filesystem
      # problem than damage to every step. Never restart silently over someone's work.
      raise ValueError(
          f"no checkpoint in {self.directory} can be read (steps {sorted(unreadable)}; the "
          "warnings above say why). If they were written by another version of the code, use "
          "a new --workdir; if they are damaged, move them out of the way and rerun.")
    if jax.process_count() > 1:
      raise ValueError(
          f"checkpoints {sorted(unreadable)} in {self.directory} are unreadable and an older "
          "one is readable; on a multi-host run, move the unreadable steps out of the way by "
          "hand (e.g. rename 96 to 96.unreadable), then rerun.")
    self._manager.close()
    for step in unreadable:
      source = os.path.join(self.directory, str(step))
      target, suffix = f"{source}.unreadable", 1
      while os.path.exists(target):
        target, suffix = f"{source}.unreadable{suffix}", suffix + 1
      os.replace(source, target)
      logging.warning("moved unreadable checkpoint %d of %s aside to %s.", step,
                      self.directory, os.path.basename(target))
    self._manager = self._open()
    return found

  def close(self) -> None:
    self._manager.close()
