"""The multi-task compression comparison: a dense reference and every weighting, over seeds.

`run(config, workdir)` validates the config before any compute, refuses a workdir that holds a
run with another config, then trains (resuming whatever a previous, interrupted call left), and
writes the report, plots, TensorBoard events and compressed models into `workdir`. The problem
is the one ``config.problem`` names in `mmcompress.problems.PROBLEMS`.

One run takes a task weighting through the stages of the pipeline, for one seed. The dense
reference of a seed is the ``pretrain`` stage under equal weighting. With
``config.share_pretraining`` every method starts its compression stages from that same dense
model (the reference runs every stage under the method's own weighting; sharing saves a third
of the compute and makes the seeds exactly paired); without it each method pretrains under
its own weighting. Pretraining hands its *best-validation* epoch to the next stage: that is
the dense model (the dense reference reports exactly those weights), and compression starts
from it, as a user would compress the dense model they selected. Every later stage hands its
*final* weights to the next (the reweighted weights that pruning cuts, the pruned weights
that retraining restores), with a fresh optimizer and a fresh task weighting (min-max weights
back at 1/K, DWA's history empty), as each stage of the reference is a run of its own; the
model a run reports is the best-validation epoch of its last training stage. A finished run
writes ``result.json`` and is not run again.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from mmcompress import _checks, _files, export, problems, report as report_lib
from mmcompress import progress as progress_lib, records, sparsity, weighting
from mmcompress.models import create_model
from mmcompress.problems import Problem
from mmcompress.sparsity import masks as masks_lib
from mmcompress.train import loop, parallel, scoring, seed_axis, seed_loop
from mmcompress.train import stages as stages_lib, step as step_lib


@dataclasses.dataclass(frozen=True)
class Experiment:
  """What every run of an experiment shares (static, not checkpointed)."""
  config: ml_collections.ConfigDict
  problem: Problem
  model: nn.Module
  mesh: jax.sharding.Mesh
  workdir: str
  log: Callable[[str, str, int, loop.EpochRecord], None] | None = None
  on_checkpoint: Callable[[str, int], None] | None = None

  @property
  def steps_per_epoch(self) -> int:
    return self.problem.steps_per_epoch(self.config.batch_size)

  @functools.cached_property
  def scoring_step(self) -> Callable[..., Any]:
    """One jitted Taylor scoring of a batch for every task-aware prune of every run."""
    return scoring.make_scoring_step(self.problem, self.model, self.mesh)

  @functools.cached_property
  def eval_step(self) -> Callable[..., Any]:
    """One jitted evaluation for every stage and run (it does not depend on the stage)."""
    return step_lib.make_eval_step(self.problem, self.model, self.mesh)

  @functools.cached_property
  def seed_eval_steps(self) -> dict[bool, Callable[..., Any]]:
    """The jitted evaluations of stacked seeds (``config.seed_axis``) for every stage, by
    whether the seeds are split over the devices (each compiles when first called)."""
    return {sharded: seed_loop.make_seed_eval_step(self.problem, self.model, self.mesh, sharded)
            for sharded in (False, True)}


def _train(exp: Experiment, run_name: str, method: str, stage: str, index: int, seed: int,
           params: Any, model_state: Any, masks: Any = None
           ) -> tuple[Any, dict, loop.StageRecord]:
  """Trains `stage` of one run; returns (final state, best snapshot, stage record)."""
  cfg, problem = exp.config, exp.problem
  weighting = stages_lib.make_weighting(method, cfg, exp.steps_per_epoch)
  tx, state = _initial_state(exp, weighting, stage, index, seed, params, model_state, masks)
  directory = os.path.join(exp.workdir, run_name, stage)

  def log(stage_name, epoch, record):
    if exp.log:
      exp.log(run_name, stage_name, epoch, record)

  ctx = loop.StageContext(
      name=stage, index=index, seed=seed, epochs=cfg.epochs[stage], batch_size=cfg.batch_size,
      problem=problem, weighting=weighting,
      train_step=step_lib.make_train_step(problem, exp.model, weighting, tx, exp.mesh,
                                          stages_lib.per_task_gradients(stage, cfg)),
      eval_step=exp.eval_step, mesh=exp.mesh, eval_batch_size=cfg.eval_batch_size,
      checkpoint_every=cfg.checkpoint_every_steps, directory=directory, log=log,
      on_checkpoint=exp.on_checkpoint)
  return loop.train_stage(ctx, state)


def _initial_state(exp: Experiment, weighting: weighting.TaskWeighting, stage: str,
                   index: int, seed: int, params: Any, model_state: Any, masks: Any,
                   every_mask: bool = False) -> tuple[Any, step_lib.TrainState]:
  """A stage's transform and starting state for one seed (`every_mask`: see
  `stages.descent_transform`)."""
  tx = stages_lib.stage_transform(stage, exp.config, exp.steps_per_epoch, weighting,
                                  exp.problem.num_tasks, masks, seed, every_mask)
  rng = jax.random.fold_in(jax.random.key(seed), index)
  # create_train_state copies every leaf, so the step may donate them: the caller's arrays
  # (shared by every method's stages when pretraining is shared) survive.
  state = step_lib.create_train_state(params, model_state, weighting, tx,
                                      exp.problem.num_tasks, rng)
  if stage == "sparse":  # dynamic sparse training starts from its initial masks
    state = state.replace(params=sparsity.apply_masks(params, sparsity.find_masks(state.opt_state)))
  return tx, state


def _export(exp: Experiment, run_name: str, params: Any, masks: Any) -> dict[str, Any]:
  """Writes the run's compressed model; its sizes, path and whether it reads back exactly."""
  os.makedirs(os.path.join(exp.workdir, "models"), exist_ok=True)
  path = os.path.join(exp.workdir, "models", f"{run_name.replace('/', '_')}.npz")
  sizes = export.save(path, params, masks)
  sizes["path"] = os.path.relpath(path, exp.workdir)
  restored = export.load(path)
  same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)),
                      restored, jax.tree.map(np.asarray, sparsity.apply_masks(params, masks)))
  sizes["round_trip_exact"] = all(jax.tree.leaves(same))
  return sizes


def _finish(exp: Experiment, run_name: str, best: dict, stages: list[loop.StageRecord],
            compressed: bool, pruning: dict[str, Any] | None = None) -> records.RunResult:
  """Test metrics, measured sparsity and the compressed export of a run's selected model."""
  cfg, problem = exp.config, exp.problem
  params = jax.device_get(best["params"])
  masks = jax.device_get(best["masks"])
  test, val = (loop.evaluate(problem, exp.eval_step, best["params"], best["model_state"], split,
                             exp.mesh, cfg.eval_batch_size) for split in ("test", "val"))
  stats = sparsity.summary(params, masks)
  return records.RunResult(
      metrics=test["metrics"],
      task_metrics=test["task_metrics"],
      all_metrics=test["all_metrics"],
      val_metrics=val["metrics"],
      sparsity=stats["sparsity"],
      # The prunable part's ratio (kept under its old name) and the whole model's.
      compression_ratio=stats["prunable_compression_ratio"],
      prunable_compression_ratio=stats["prunable_compression_ratio"],
      whole_model_compression_ratio=stats["whole_model_compression_ratio"],
      parameters={key: stats[key] for key in (
          "total_size", "total_nonzero", "prunable_size", "prunable_nonzero",
          "non_prunable_size", "whole_model_cap", "non_prunable_groups")},
      task_weights=[e.task_weights for r in stages for e in r.epochs],
      selected={"stage": stages[-1].stage, "epoch": stages[-1].best_epoch},
      # One process writes the files of a run.
      export=(_export(exp, run_name, params, masks) if compressed and parallel.is_primary()
              else None),
      pruning=pruning)


def _handed_on(stage: str, state: step_lib.TrainState, best: dict) -> tuple[Any, Any]:
  """The (params, model state) a stage hands to the next: pretraining's best, else final."""
  if stage == "pretrain":
    return best["params"], best["model_state"]
  return state.params, state.model_state


def run_dense(exp: Experiment, seed: int) -> tuple[records.RunResult, Any, Any]:
  """The dense reference of `seed`.

  Returns:
    ``(result, params, model state)``: the weights are the best-validation epoch, the very
    model whose metrics `result` reports and that shared compression starts from.
  """
  run_name = f"seed{seed}/dense"
  params, model_state = step_lib.init_variables(exp.model, exp.problem, seed)
  state, best, record = _train(exp, run_name, "equal", "pretrain", 0, seed, params, model_state)
  result = _cached(exp, run_name, lambda: _finish(exp, run_name, best, [record], False))
  return (result, *_handed_on("pretrain", state, best))


def run_method(exp: Experiment, method: str, seed: int,
               dense: tuple[Any, Any] | None) -> records.RunResult:
  """Takes `method` through ``config.stages`` for `seed` and returns its result."""
  cfg = exp.config
  run_name = f"seed{seed}/{method}"
  cached = _read_result(exp, run_name)
  if cached is not None:
    return cached
  pipeline = list(cfg.stages)
  if dense is not None and pipeline[0] == "pretrain":
    params, model_state = dense
    pipeline = pipeline[1:]
  else:
    params, model_state = step_lib.init_variables(exp.model, exp.problem, seed)
  weighting_name, criterion = scoring.parse_method(method, cfg)
  masks, best, stages, state, pruning = None, None, [], None, None
  for index, stage in enumerate(cfg.stages):
    if stage not in pipeline:
      continue
    if stage == "prune":
      masks, pruning = scoring.prune_masks(
          criterion, cfg, params, problem=exp.problem, scoring_step=exp.scoring_step,
          model_state=model_state, mesh=exp.mesh, seed=seed, stage_index=index,
          task_weights=(_weights_at_prune(exp, weighting_name, state)
                        if criterion.aggregate == "minmax" else None))
      params = sparsity.apply_masks(params, masks)
      continue
    state, best, record = _train(exp, run_name, weighting_name, stage, index, seed, params,
                                 model_state, masks)
    params, model_state = _handed_on(stage, state, best)
    stages.append(record)
  return _cached(exp, run_name, lambda: _finish(exp, run_name, best, stages, True, pruning))


def _weights_at_prune(exp: Experiment, weighting_name: str,
                      state: step_lib.TrainState | None) -> np.ndarray:
  """The method's task weights at the end of the stage before the prune (1/K when the run
  starts at the prune, from a shared equal-weighted pretraining)."""
  num_tasks = exp.problem.num_tasks
  if state is None:
    return np.full((num_tasks,), 1.0 / num_tasks, np.float32)
  method_weighting = stages_lib.make_weighting(weighting_name, exp.config, exp.steps_per_epoch)
  return np.asarray(jax.device_get(weighting.current_weights(
      method_weighting, state.task_params, state.task_state, state.opt_state)), np.float32)


def _read_run_file(exp: Experiment, run_name: str, name: str, record: Any) -> Any:
  """`record.from_json` of the run's file `name`, or None if there is none."""
  path = os.path.join(exp.workdir, run_name, name)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return record.from_json(json.load(f), path)


def _read_result(exp: Experiment, run_name: str) -> records.RunResult | None:
  """The run's saved ``result.json``, or None if it has not finished."""
  return _read_run_file(exp, run_name, "result.json", records.RunResult)


def _ratios_text(result: records.RunResult) -> str:
  """"; compression 34.9x whole model, 40.0x prunable part" for a result that has both."""
  whole, prunable = result.whole_model_compression_ratio, result.prunable_compression_ratio
  if whole is None or prunable is None:
    return ""
  return f"; compression {whole:.1f}x whole model, {prunable:.1f}x prunable part"


def _cached(exp: Experiment, run_name: str,
            compute: Callable[[], records.RunResult]) -> records.RunResult:
  """The run's saved result, or `compute()` saved as it (a finished run is not rerun)."""
  path = os.path.join(exp.workdir, run_name, "result.json")
  cached = _read_result(exp, run_name)
  if cached is not None:
    return cached
  result = compute()
  if parallel.is_primary():
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _files.write_json_atomically(path, result.to_json())
  logging.info("%s: %s%s", run_name, result.metrics, _ratios_text(result))
  return result


def or_divergence(exp: Experiment, run_name: str, run: Callable[[], Any]) -> Any:
  """``run()``, or a `records.Diverged` if a loss became non-finite.

  The failed run keeps its last good checkpoint, and the failure is recorded in
  ``<run_name>/diverged.json``, so a rerun of the same config reports it again without
  recomputing it (to retry with other settings, use a new workdir).
  """
  recorded = _recorded_divergence(exp, run_name)
  if recorded is not None:
    return recorded
  try:
    return run()
  except loop.NonFiniteLossError as error:
    return _diverged(exp, run_name, error.summary)


def _recorded_divergence(exp: Experiment, run_name: str) -> records.Diverged | None:
  """The run's ``diverged.json``, or None if it has not diverged."""
  return _read_run_file(exp, run_name, "diverged.json", records.Diverged)


def _train_seeds(exp: Experiment, run: str, method: str, stage: str, index: int,
                 seeds: tuple[int, ...], starts: list[tuple[Any, Any]],
                 masks: list[Any] | None = None
                 ) -> tuple[step_lib.TrainState, dict, list[loop.StageRecord], dict[int, str]]:
  """`_train` for the `seeds` of one run together (``config.seed_axis``), each from its own
  (params, model state) in `starts` (and masks); see `seed_loop.train_stage_seeds`."""
  cfg, problem = exp.config, exp.problem
  weighting = stages_lib.make_weighting(method, cfg, exp.steps_per_epoch)
  states, txs = [], []
  for i, seed in enumerate(seeds):
    # Each seed's state is built by its own transform (its masks, its growth seed); the
    # transforms differ only in what `init` puts in the state, so one step serves all. Every
    # mask stays in the state, so that the seeds' states share one tree (a layer one seed's
    # prune keeps whole would otherwise hold None there).
    tx, state = _initial_state(exp, weighting, stage, index, seed, *starts[i],
                               masks[i] if masks else None, every_mask=True)
    states.append(state)
    txs.append(tx)
  # Seeds split over the devices only while they split evenly (a seed that diverged has left).
  sharded = cfg.seed_sharded and len(seeds) % exp.mesh.devices.size == 0

  def log(seed, stage_name, epoch, record):
    if exp.log:
      exp.log(f"seed{seed}/{run}", stage_name, epoch, record)

  ctx = seed_loop.SeedStageContext(
      name=stage, index=index, seeds=tuple(seeds), epochs=cfg.epochs[stage],
      batch_size=cfg.batch_size, problem=problem, weighting=weighting,
      train_step=seed_axis.make_seed_train_step(
          problem, exp.model, weighting, txs[0], exp.mesh,
          stages_lib.per_task_gradients(stage, cfg), sharded),
      eval_step=exp.seed_eval_steps[sharded], mesh=exp.mesh,
      eval_batch_size=cfg.eval_batch_size, checkpoint_every=cfg.checkpoint_every_steps,
      directory=os.path.join(exp.workdir, "seeds", run, stage), seed_sharded=sharded,
      log=log, on_checkpoint=exp.on_checkpoint)
  final, best, stage_records, failures = seed_loop.train_stage_seeds(ctx, seed_axis.stack(states))
  # On the host: each seed's share is then indexed without compiling anything.
  return (*jax.device_get((final, best)), stage_records, failures)


def _diverged(exp: Experiment, run_name: str, message: str) -> records.Diverged:
  """Records a run that diverged in ``<run_name>/diverged.json`` (see `or_divergence`)."""
  outcome = records.Diverged(message)
  if parallel.is_primary():
    path = os.path.join(exp.workdir, run_name, "diverged.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _files.write_json_atomically(path, outcome.to_json())
  return outcome


def _saved_outcome(exp: Experiment, run_name: str) -> records.Outcome | None:
  """A finished run's result, or its recorded divergence, or None."""
  return _recorded_divergence(exp, run_name) or _read_result(exp, run_name)


def run_dense_seeds(exp: Experiment, seeds: tuple[int, ...]) -> dict[int, Any]:
  """`run_dense` for every seed together: seed -> (result, params, model state), or a
  `records.Diverged`."""
  starts = [step_lib.init_variables(exp.model, exp.problem, seed) for seed in seeds]
  final, best, stage_records, failures = _train_seeds(exp, "dense", "equal", "pretrain", 0,
                                                      seeds, starts)
  out = {}
  for i, seed in enumerate(seeds):
    run_name = f"seed{seed}/dense"
    if seed in failures:
      out[seed] = _diverged(exp, run_name, failures[seed])
      continue
    seed_best = seed_axis.unstack(best, i)
    result = _cached(exp, run_name,
                     lambda b=seed_best, r=stage_records[i], n=run_name: _finish(
                         exp, n, b, [r], False))
    out[seed] = (result, *_handed_on("pretrain", seed_axis.unstack(final, i), seed_best))
  return out


def run_method_seeds(exp: Experiment, method: str, seeds: tuple[int, ...],
                     dense: dict[int, tuple[Any, Any]] | None) -> dict[int, records.Outcome]:
  """`run_method` for every seed together: seed -> its result or `records.Diverged`."""
  cfg = exp.config
  saved = {seed: _saved_outcome(exp, f"seed{seed}/{method}") for seed in seeds}
  if all(outcome is not None for outcome in saved.values()):
    return saved
  pipeline = list(cfg.stages)
  if dense is not None and pipeline[0] == "pretrain":
    starts = {seed: dense[seed] for seed in seeds}
    pipeline = pipeline[1:]
  else:
    starts = {seed: step_lib.init_variables(exp.model, exp.problem, seed) for seed in seeds}
  weighting_name, criterion = scoring.parse_method(method, cfg)
  live, failures = list(seeds), {}
  masks, pruning, stage_records, last, best = {}, {}, {s: [] for s in seeds}, {}, {}
  for index, stage in enumerate(cfg.stages):
    if stage not in pipeline or not live:
      continue
    if stage == "prune":
      for seed in live:
        params, model_state = starts[seed]
        masks[seed], pruning[seed] = scoring.prune_masks(
            criterion, cfg, params, problem=exp.problem, scoring_step=exp.scoring_step,
            model_state=model_state, mesh=exp.mesh, seed=seed, stage_index=index,
            task_weights=(_weights_at_prune(exp, weighting_name, last.get(seed))
                          if criterion.aggregate == "minmax" else None))
        starts[seed] = (sparsity.apply_masks(params, masks[seed]), model_state)
      continue
    final, stage_best, stage_recs, stage_failures = _train_seeds(
        exp, method, weighting_name, stage, index, tuple(live), [starts[s] for s in live],
        [masks[s] for s in live] if masks else None)
    failures.update(stage_failures)
    for i, seed in enumerate(live):
      last[seed], best[seed] = seed_axis.unstack(final, i), seed_axis.unstack(stage_best, i)
      starts[seed] = _handed_on(stage, last[seed], best[seed])
      stage_records[seed].append(stage_recs[i])
    live = [seed for seed in live if seed not in failures]
  out = {}
  for seed in seeds:
    run_name = f"seed{seed}/{method}"
    if seed in failures:
      out[seed] = saved[seed] or _diverged(exp, run_name, failures[seed])
    else:
      out[seed] = _cached(exp, run_name, lambda s=seed, n=run_name: _finish(
          exp, n, best[s], stage_records[s], True, pruning.get(s)))
  return out


def run_digits(config: ml_collections.ConfigDict, workdir: str, **kwargs) -> dict:
  """The MultiDigits comparison for every task set of ``config.task_sets``.

  One task set writes into `workdir`; several write one full run each into
  ``workdir/<task_set>`` and an index ``workdir/report.md`` that holds their reports.

  Returns:
    ``{task_set: report}``.
  """
  digits = problems.get("digits")
  digits.validate_config(config)
  task_sets = tuple(config.task_sets)
  if len(task_sets) == 1:
    return {task_sets[0]: run(config, workdir, **kwargs)}
  reports, sections = {}, []
  for task_set in task_sets:
    subdir = os.path.join(workdir, task_set)
    reports[task_set] = run(config, subdir,
                            problem=lambda c, t=task_set: digits.from_config(c, t), **kwargs)
    if parallel.is_primary():  # only the primary process wrote the report
      with open(os.path.join(subdir, "report.md")) as f:
        sections.append(f"# Task set '{task_set}' (files in {task_set}/)\n\n{f.read()}")
  if parallel.is_primary():
    _files.write_atomically(os.path.join(workdir, "report.md"),
                            lambda f: f.write("\n\n".join(sections).encode("utf-8")))
  return reports


@_checks.as_user_error()
def validate(config: ml_collections.ConfigDict) -> None:
  """Raises a `UserError` (a ValueError) naming the field for any config that cannot run."""
  for method in config.methods:
    scoring.parse_method(method, config)  # a known weighting, and a known criterion if named
  # The problem's own fields, before any file is read.
  problems.get(config.get("problem")).validate_config(config)
  if not config.methods:
    raise ValueError("config.methods is empty: name at least one of "
                     f"{list(weighting.WEIGHTINGS)}.")
  stages_lib.check_stage_order(config.stages)
  _checks.sparsity(config.sparsity, "config.sparsity")
  _checks.one_of(config.scope, ("layer", "global"), "config.scope")
  masks_lib.parse_structure(config.structure)  # "unstructured", "filter" or a valid "n:m"
  _checks.positive_int(config.batch_size, "config.batch_size")
  _checks.positive_int(config.eval_batch_size, "config.eval_batch_size")
  _checks.positive_int(config.checkpoint_every_steps, "config.checkpoint_every_steps")
  if not config.seeds:
    raise ValueError("config.seeds is empty: give at least one seed, e.g. (0,).")
  if config.epochs.pretrain < 1:
    raise ValueError("config.epochs.pretrain must be >= 1: the dense reference of every seed "
                     f"is a pretrain run, got {config.epochs.pretrain}.")
  for stage in stages_lib.TRAINING_STAGES:
    if stage in config.stages and config.epochs[stage] < 1:
      raise ValueError(f"config.epochs.{stage} must be >= 1, got {config.epochs[stage]}.")
  # Building every weighting and every stage's transform checks all their knobs.
  for method in config.methods:
    stages_lib.make_weighting(scoring.parse_method(method, config)[0], config, 1)
  if "prune" in config.stages:
    _checks.positive_int(config.prune.calibration_batches, "config.prune.calibration_batches")
  for stage in config.stages:
    if stage in stages_lib.TRAINING_STAGES:
      stages_lib.descent_transform(stage, config, 1, masks={})


# Fields added after runs were recorded, each with the value every run before it had: the
# seeds one after another, no compression-stage clip, no clip grid in a study.
_ADDED_OFF = ((("seed_axis",), False), (("seed_sharded",), False),
              (("optimizer", "compress_clip_norm"), 0.0), (("study", "compress_clip_norms"), []))


def _fill_if_off(saved: dict[str, Any], current: Mapping[str, Any], path: tuple[str, ...],
                 off: Any) -> None:
  """Sets the field at `path` in `saved` to `off` when `saved` lacks it (its sections there)
  and `current` has it at `off`."""
  *sections, field = path
  for section in sections:
    saved, current = saved.get(section), current.get(section, {})
    if not isinstance(saved, dict):
      return
  if field not in saved and field in current and current[field] == off:
    saved[field] = off


def refuse_other_run(config: ml_collections.ConfigDict, workdir: str) -> bool:
  """Raises a `UserError` if `workdir` holds a run with a different config.

  Returns:
    Whether `workdir` holds a run (with this config: it resumes).
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return False
  current = json.loads(config.to_json())
  with open(path) as f:
    saved = json.load(f)
  # A run recorded before configs named their problem ran the one its config's fields
  # describe, the one `config.problem` names now: not a difference.
  saved.setdefault("problem", current.get("problem"))
  # Nor is the missing section of a weighting added since (``config.famo``, ...): the run
  # recorded before could not name it in its methods.
  for name in weighting.WEIGHTINGS:
    if name in current and name not in saved:
      saved[name] = current[name]
  # Nor a missing ``prune`` section when the current one prunes by magnitude, as every run
  # did before it existed.
  if "prune" not in saved and current.get("prune", {}).get("criterion") == "magnitude":
    saved["prune"] = current["prune"]
  # Nor a field added since, missing there and off now (`_ADDED_OFF`).
  for path, off in _ADDED_OFF:
    _fill_if_off(saved, current, path, off)
  # Nor how the progress is printed.
  saved["epoch_lines"] = current.get("epoch_lines")
  saved["quiet"] = current.get("quiet")
  if saved != current:
    keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    details = "; ".join(f"{k}: {saved.get(k)!r} there, {current.get(k)!r} now" for k in keys)
    raise _checks.UserError(
        f"{workdir} holds a run with a different config ({details}). Use another --workdir, "
        "or rerun with the same config to resume it.")
  return True


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Records the config in `workdir`, or raises if it holds a run with a different one."""
  os.makedirs(workdir, exist_ok=True)
  if not refuse_other_run(config, workdir) and parallel.is_primary():
    _files.write_json_atomically(os.path.join(workdir, "config.json"),
                                 json.loads(config.to_json()))


def _run_seed(exp: Experiment, seed: int, progress: progress_lib.Progress
              ) -> tuple[records.SeedRecord | None, dict[str, str]]:
  """One seed: its dense reference, then every method of the config.

  Returns:
    ``(record, failures)``: the seed's record (None when its dense reference diverged: there
    is nothing to compare with) and the runs that diverged, name -> message ("dense" for the
    reference). A method that diverged stays in the record, a loss for that method.
  """
  cfg = exp.config
  dense = or_divergence(exp, f"seed{seed}/dense", lambda: run_dense(exp, seed))
  _announce(progress, seed, "dense", dense if isinstance(dense, records.Diverged) else dense[0])
  if isinstance(dense, records.Diverged):
    return None, {"dense": dense.message}
  dense_result, *dense_start = dense
  shared = tuple(dense_start) if cfg.share_pretraining else None
  methods, failures = {}, {}
  for method in cfg.methods:
    outcome = or_divergence(exp, f"seed{seed}/{method}",
                            lambda m=method: run_method(exp, m, seed, shared))
    methods[method] = outcome
    if isinstance(outcome, records.Diverged):
      failures[method] = outcome.message
    _announce(progress, seed, method, outcome)
  return records.SeedRecord(seed=seed, dense=dense_result, methods=methods), failures


def _announce(progress: progress_lib.Progress, seed: int, method: str,
              outcome: records.Outcome) -> None:
  """The line of a finished run, with where the whole comparison stands (a seed whose dense
  reference diverged runs no method: they are done too)."""
  if method == "dense" and isinstance(outcome, records.Diverged):
    progress.seed_done(seed)
  if isinstance(outcome, records.Diverged):
    line = f"seed {seed} {method}: diverged, counted as a loss ({outcome.message})"
  else:
    line = f"seed {seed} {method}: test " + ", ".join(
        f"{k} {v:.3f}" for k, v in outcome.metrics.items())
  progress.run_done(f"seed{seed}/{method}", line)


def _run_seeds_together(exp: Experiment, progress: progress_lib.Progress
                        ) -> list[tuple[records.SeedRecord | None, dict[str, str]]]:
  """`_run_seed`'s outcome for every seed, each method's seeds trained together."""
  cfg = exp.config
  dense = run_dense_seeds(exp, tuple(cfg.seeds))
  for seed in cfg.seeds:
    _announce(progress, seed, "dense",
              dense[seed] if isinstance(dense[seed], records.Diverged) else dense[seed][0])
  live = tuple(s for s in cfg.seeds if not isinstance(dense[s], records.Diverged))
  shared = {s: tuple(dense[s][1:]) for s in live} if cfg.share_pretraining else None
  methods = {}
  for method in cfg.methods:
    methods[method] = run_method_seeds(exp, method, live, shared) if live else {}
    for seed in live:
      _announce(progress, seed, method, methods[method][seed])
  out = []
  for seed in cfg.seeds:
    if seed not in live:
      out.append((None, {"dense": dense[seed].message}))
      continue
    outcomes = {method: methods[method][seed] for method in cfg.methods}
    failures = {m: o.message for m, o in outcomes.items() if isinstance(o, records.Diverged)}
    out.append((records.SeedRecord(seed=seed, dense=dense[seed][0], methods=outcomes),
                failures))
  return out


def _run_seeds(exp: Experiment, progress: progress_lib.Progress
               ) -> tuple[list[records.SeedRecord], list[dict], list[records.DroppedSeed]]:
  """Every seed of the config: the records of those with a dense reference, every
  divergence as ``{"seed", "runs": {name: message}}``, and the seeds left out."""
  per_seed, diverged, dropped = [], [], []
  outcomes = (_run_seeds_together(exp, progress) if exp.config.seed_axis else
              (_run_seed(exp, seed, progress) for seed in exp.config.seeds))
  for seed, (record, failures) in zip(exp.config.seeds, outcomes):
    if failures:
      diverged.append({"seed": seed, "runs": failures})
    if record is None:
      dropped.append(records.DroppedSeed(
          seed, f"its dense reference diverged ({failures['dense']})"))
    else:
      per_seed.append(record)
  if not per_seed:
    raise loop.NonFiniteLossError(
        "the dense reference diverged on every seed, so there is nothing to compare ("
        + "; ".join(f"seed {d['seed']}: {d['runs']}" for d in diverged) + ")", exp.workdir)
  return per_seed, diverged, dropped


def _setup_notes(config: ml_collections.ConfigDict, problem: Problem) -> list[str]:
  """The report's lines on the data, the stages, the losses and model selection."""
  return [
      f"Data: {problem.describe()}, model {config.model}.",
      f"Stages: {' → '.join(config.stages)}; each method runs them under its own weighting.",
      ("Every method trains sparse from scratch; the dense reference is an equal-weighted "
       "pretrain of the same seed." if config.stages[0] != "pretrain" else
       "Methods share the dense pretraining of each seed (equal weighting), which is also "
       "the dense reference: its best-validation epoch, the model compression starts from."
       if config.share_pretraining else
       "Each method pretrains under its own weighting and compresses its best-validation "
       "epoch; the dense reference is equal-weighted."),
      ("Losses: every weighting's objective is normalised to the mean task loss "
       "(loss_reduction=mean; uncertainty's exactly so where its log-variances are 0)."
       if config.loss_reduction == "mean" else
       "Losses: combined as the reference code does (loss_reduction=reference): equal sums "
       "them, DWA weights them by K·softmax, uncertainty sums ½e^(−s)L + s/2; min-max keeps "
       "weights summing to one."),
      "Model selection: best mean validation loss over the epochs of the last stage; "
      "test metrics are of that model.",
  ] + _pruning_notes(config) + problem.metric_notes()


def _pruning_notes(config: ml_collections.ConfigDict) -> list[str]:
  """The report's line on how each method's masks were chosen (none without a prune stage)."""
  if "prune" not in config.stages:
    return []
  default = scoring.default_criterion(config)
  named = sorted({m for m in config.methods if "+" in m})
  how = ("|weight|, as the paper" if default == "magnitude" else
         "per-task first-order Taylor scores |θ ⊙ ∂L_k/∂θ| on "
         f"{config.prune.calibration_batches} training batches, aggregated across tasks")
  line = f"Masks: the prune stage ranks the weights by {default} ({how}) for every method"
  if named:
    line += (", except where a method names its own after '+' ("
             + ", ".join(named) + f"; Taylor scores on {config.prune.calibration_batches} "
             "training batches; a taylor_minmax method weights the tasks by its task weights "
             "at prune time, recorded in its result.json)")
  return [line + "."]


def _divergence_notes(diverged: list[dict]) -> list[str]:
  """A report line per diverged run: a dense reference leaves its seed out, a method loses."""
  notes = []
  for d in diverged:
    for method, message in d["runs"].items():
      if method == "dense":
        notes.append(f"**Left out: seed {d['seed']}**, whose dense reference diverged "
                     f"({message}); no method has a reference on that seed.")
      else:
        notes.append(f"**Diverged: seed {d['seed']}, {method}** ({message}); counted as a "
                     "loss (worst-task retention 0) in the paired comparisons, left out of "
                     f"{method}'s means.")
  return notes


def _experiment(config: ml_collections.ConfigDict, workdir: str,
                problem: Callable[[ml_collections.ConfigDict], Problem] | None,
                on_checkpoint: Callable[[str, int], None] | None, label: str = ""
                ) -> tuple[Experiment, progress_lib.Progress]:
  """The experiment of a checked config on this host's devices, and its progress log.

  The processes of a multi-process run read the same config and files, so each refuses a
  workdir of another run by itself, before they meet in `jax.distributed.initialize`; the
  device count that the batch sizes must divide is known only after it, and they all refuse
  those together too, before their first collective.
  """
  refuse_other_run(config, workdir)
  parallel.maybe_initialize_distributed(config.distributed)
  mesh = parallel.data_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  parallel.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
  if config.seed_axis:
    if jax.process_count() > 1:  # every process refuses, before any collective
      raise _checks.UserError(
          "config.seed_axis=True runs in one process for now: set --config.seed_axis=False "
          "for a multi-process run.")
    seed_axis.check_seeds(len(config.seeds), mesh, config.seed_sharded)
  check_workdir(config, workdir)
  problem = (problem or problems.get(config.problem).from_config)(config)
  model = create_model(config.model, problem.num_outputs, **config.model_kwargs.to_dict())
  quiet = (config.quiet or os.environ.get("CI", "").lower() == "true"
           or not parallel.is_primary())
  progress = progress_lib.Progress(quiet, workdir, problem.task_names,
                                   write=parallel.is_primary(),
                                   plan=progress_lib.planned_epochs(config),
                                   epoch_lines=config.epoch_lines, label=label)
  exp = Experiment(config=config, problem=problem, model=model, mesh=mesh,
                   workdir=workdir, log=progress, on_checkpoint=on_checkpoint)
  return exp, progress


def run(config: ml_collections.ConfigDict, workdir: str, *,
        problem: Callable[[ml_collections.ConfigDict], Problem] | None = None,
        on_checkpoint: Callable[[str, int], None] | None = None,
        print_report: bool = True, label: str = "") -> dict:
  """Runs the whole comparison described by `config` in `workdir` and returns the report.

  Args:
    config: see ``experiments/configs/digits.py`` for the fields.
    workdir: where checkpoints, results, the report and the models go; rerunning the same
      config on the same workdir resumes.
    problem: builds the data set and its tasks from the config (and checks the data first);
      by default the ``from_config`` of the problem that ``config.problem`` names.
    on_checkpoint: called as ``(stage, step)`` after every checkpoint save.
    print_report: print the Markdown report at the end.
    label: printed before every progress line (`mmcompress.study` runs several at once).
  """
  validate(config)
  started = time.time()
  exp, progress = _experiment(config, workdir, problem, on_checkpoint, label)
  try:
    per_seed, diverged, dropped = _run_seeds(exp, progress)
  finally:
    progress.close()
  problem = exp.problem
  report = report_lib.build_report(
      per_seed, tasks=list(problem.task_names), higher_is_better=problem.higher_is_better,
      metric_names=problem.metric_names,
      all_higher_is_better=problem.all_higher_is_better,
      target_sparsity=config.sparsity,
      extra={"notes": _setup_notes(config, problem) + _divergence_notes(diverged)},
      test_counts=problem.test_counts(), dropped=dropped)
  report["config"] = json.loads(config.to_json())
  report["diverged"] = diverged
  if not parallel.is_primary():  # the primary process writes the report
    return report
  paths = report_lib.write(report, workdir)
  if print_report:
    with open(paths["markdown"]) as f:
      print(f.read(), flush=True)
    print(f"(this call took {time.time() - started:.0f} s; a call that resumed from "
          "checkpoints is shorter than a full run)", file=sys.stderr)
  return report
