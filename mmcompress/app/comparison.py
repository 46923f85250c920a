"""The multi-task compression comparison: a dense reference and every weighting, over seeds
and variants.

`run(config, workdir)` validates the config before any compute, refuses a workdir that holds a
run with another config, then trains (resuming whatever a previous, interrupted call left), and
writes the report, plots, TensorBoard events and compressed models into `workdir`. The problem
is the one ``config.problem`` names in `mmcompress.problems.PROBLEMS`.

A run takes a task weighting through the stages of the pipeline, for one seed and one variant
of the grid (``config.grid``: the learning-rate scale and gradient clip of the stages after
pretraining, `mmcompress.train.variants`). Every run of a method, all its seeds and variants,
trains as one program on the run axis (`mmcompress.train.run_axis`, `loop.train_stage`), in
chunks of ``config.chunk_runs``; a single run is an axis of length 1. The dense reference of
a seed is the ``pretrain`` stage under equal weighting. With ``config.share_pretraining``
every method starts its compression stages from that same dense model (the reference runs
every stage under the method's own weighting; sharing saves a third of the compute and makes
the seeds exactly paired); without it each method pretrains under its own weighting, once per
seed, and every variant starts from that. Pretraining hands its *best-validation* epoch to the
next stage: that is the dense model (the dense reference reports exactly those weights), and
compression starts from it, as a user would compress the dense model they selected. Every
later stage hands its *final* weights to the next (the reweighted weights that pruning cuts,
the pruned weights that retraining restores), with a fresh optimizer and a fresh task
weighting (min-max weights back at 1/K, DWA's history empty), as each stage of the reference
is a run of its own; the model a run reports is the best-validation epoch of its last training
stage. A finished run writes ``result.json`` and is not run again; a run whose loss or
weights stop being finite is frozen while the others go on, and writes ``diverged.json``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np

from mmcompress import _checks, _files, export, problems, sparsity, weighting
from mmcompress.app import plan as app_plan, progress as progress_lib, records, report as report_lib
from mmcompress.models import MODEL_NAMES, create_model
from mmcompress.problems import Problem
from mmcompress.sparsity import masks as masks_lib
from mmcompress.train import clock as clock_lib, loop, parallel, run_axis, scoring
from mmcompress.train import stages as stages_lib, step as step_lib, variants as variants_lib

__all__ = ["check_runnable", "check_workdir", "data_fingerprint", "DATA_ORDER_STRIDE",
           "data_seed", "Experiment", "Point", "refuse_other_data", "refuse_other_run", "run",
           "run_dense", "run_digits", "run_method", "validate"]


class Point(NamedTuple):
  """A run on the axis: its seed and its variant (None: a stage no variant changes, i.e.
  pretraining, whose result every variant of the seed starts from)."""
  seed: int
  variant: variants_lib.Variant | None = None


@dataclasses.dataclass(frozen=True)
class Experiment:
  """What every run of an experiment shares (static, not checkpointed): its plan (the
  config, read once: `mmcompress.app.plan.comparison`), data, model and devices."""
  plan: app_plan.RunPlan
  problem: Problem
  model: nn.Module
  mesh: jax.sharding.Mesh
  workdir: str
  log: Callable[[str, str, int, loop.EpochRecord], None] | None = None
  on_checkpoint: Callable[[str, int], None] | None = None
  clock: clock_lib.Clock | None = None

  @property
  def steps_per_epoch(self) -> int:
    return self.problem.steps_per_epoch(self.plan.batch_size)

  @functools.cached_property
  def variants(self) -> tuple[variants_lib.Variant, ...]:
    """The grid's variants (one, the config's own settings, without ``config.grid``)."""
    return variants_lib.grid(self.plan.trainer)

  def variants_for(self, method: str) -> tuple[variants_lib.Variant, ...]:
    """The variants `method` trains: the one it pins (``pcgrad@lr0.5-clip1``), or the grid's."""
    pinned = variants_lib.pinned(method)
    return (pinned,) if pinned else self.variants

  def run_name(self, seed: int, method: str, variant: variants_lib.Variant | None) -> str:
    """``seed3/minmax``, or ``seed3/minmax@lr0.5-clip1`` when the grid has several variants
    (a method that pins its variant names it already)."""
    if variant is None or len(self.variants_for(method)) == 1:
      return f"seed{seed}/{method}"
    return f"seed{seed}/{method}{variants_lib.PIN}{variant.name}"

  @functools.cached_property
  def scoring_step(self) -> Callable[..., Any]:
    """One jitted Taylor scoring of a batch for every task-aware prune of every run."""
    return scoring.make_scoring_step(self.problem, self.model, self.mesh)

  @functools.cached_property
  def eval_step(self) -> Callable[..., Any]:
    """One jitted evaluation of one model (a run's test and validation metrics)."""
    return step_lib.make_eval_step(self.problem, self.model, self.mesh)

  @functools.cached_property
  def axis_eval_steps(self) -> dict[tuple[bool, bool], Callable[..., Any]]:
    """The jitted evaluations of an axis of runs for every stage, by whether the runs are
    split over the devices and whether the axis holds one run (each compiles when first
    called)."""
    return {(sharded, single): loop.make_eval_step(self.problem, self.model, self.mesh,
                                                   sharded, single)
            for sharded in (False, True) for single in (False, True)}


def _initial_state(exp: Experiment, weighting: weighting.TaskWeighting, stage: str,
                   index: int, point: Point, params: Any, model_state: Any, masks: Any,
                   every_mask: bool = True) -> tuple[Any, step_lib.TrainState]:
  """A stage's transform and starting state for one run.

  Every mask stays in the state (`every_mask`, `stages.descent_transform`), so that the
  runs' states share one tree (a layer one run's prune keeps whole would otherwise hold None
  there). The transforms of the runs differ only in what `init` puts in the state (masks,
  growth seed, the variant's values), so one step serves all.
  """
  tx = stages_lib.stage_transform(stage, exp.plan.trainer, exp.steps_per_epoch, weighting,
                                  exp.problem.num_tasks, masks, point.seed, every_mask,
                                  variant=point.variant)
  rng = jax.random.fold_in(jax.random.key(point.seed), index)
  if stage != "pretrain" and exp.plan.data_order:  # another draw of the stage's randomness
    rng = jax.random.fold_in(rng, exp.plan.data_order)
  # create_train_state copies every leaf, so the step may donate them: the caller's arrays
  # (shared by every method's stages when pretraining is shared) survive.
  state = step_lib.create_train_state(params, model_state, weighting, tx,
                                      exp.problem.num_tasks, rng)
  if stage == "sparse":  # dynamic sparse training starts from its initial masks
    state = state.replace(params=sparsity.apply_masks(params, sparsity.find_masks(state.opt_state)))
  return tx, state


# A run's batches are drawn from its seed; with ``config.data_order`` = d > 0 the stages after
# pretraining draw them from seed + d · DATA_ORDER_STRIDE instead: the same data, the same
# dense model, another order (the null control: what reshuffling alone changes).
DATA_ORDER_STRIDE = 1_000_003


def data_seed(data_order: int, stage: str, seed: int) -> int:
  """The seed a stage's training batches are drawn from, under ``config.data_order``
  (`DATA_ORDER_STRIDE`)."""
  if stage == "pretrain" or not data_order:
    return seed
  return seed + data_order * DATA_ORDER_STRIDE


def _chunks(points: list[Point], size: int) -> list[list[Point]]:
  """`points` in as few chunks of at most `size` runs as there can be (0: one chunk of all),
  their sizes differing by one at most: at most two shapes of the step to compile (54 runs
  in chunks of at most 25 are three of 18, not 25, 25 and 4)."""
  count = -(-len(points) // size) if size else 1
  small, extra = divmod(len(points), max(count, 1))
  out, start = [], 0
  for k in range(count):
    end = start + small + (k < extra)
    out.append(points[start:end])
    start = end
  return [chunk for chunk in out if chunk]


def _train_axis(exp: Experiment, label: str, method: str, stage: str, index: int,
                points: list[Point], names: dict[Point, list[str]],
                starts: dict[Point, tuple[Any, Any]], masks: dict[Point, Any]
                ) -> tuple[dict[Point, Any], dict[Point, dict], dict[Point, loop.StageRecord],
                           dict[Point, str]]:
  """Trains `stage` of every run in `points` on the run axis (`loop.train_stage`), in chunks
  of ``config.chunk_runs`` runs, each from its `starts` (and `masks`).

  Returns:
    per point: the final state and the best snapshot (on the host), the stage record, and
    for the runs that stopped, what stopped them. `names` gives each point's run names (its
    progress lines: several when the runs of every variant start from this point's).
  """
  cfg = exp.plan
  weighting = stages_lib.make_weighting(method, cfg.trainer, exp.steps_per_epoch)
  chunks = _chunks(points, cfg.chunk_runs)
  final, best, stage_records, failures = {}, {}, {}, {}
  for k, chunk in enumerate(chunks):
    built = [_initial_state(exp, weighting, stage, index, p, *starts[p], masks.get(p))
             for p in chunk]
    sharded = cfg.runs_sharded and run_axis.can_shard(len(chunk), exp.mesh)

    def log(i, stage_name, epoch, record, chunk=chunk):
      if exp.log:
        for name in names[chunk[i]]:
          exp.log(name, stage_name, epoch, record)

    directory = os.path.join(exp.workdir, "axis", label, stage)
    ctx = loop.StageContext(
        name=stage, index=index, seeds=tuple(data_seed(cfg.data_order, stage, p.seed)
                                              for p in chunk),
        epochs=cfg.epochs[stage],
        batch_size=cfg.batch_size, problem=exp.problem, weighting=weighting,
        train_step=run_axis.make_runs_train_step(
            exp.problem, exp.model, weighting, built[0][0], exp.mesh,
            stages_lib.per_task_gradients(stage, cfg.trainer), sharded, len(chunk)),
        eval_step=exp.axis_eval_steps[sharded, len(chunk) == 1], mesh=exp.mesh,
        eval_batch_size=cfg.eval_batch_size, checkpoint_every=cfg.checkpoint_every_steps,
        directory=directory if len(chunks) == 1 else os.path.join(directory, f"chunk{k}"),
        sharded=sharded, log=log, on_checkpoint=exp.on_checkpoint, clock=exp.clock,
        run_names=tuple(",".join(names[p]) for p in chunk))
    states, bests, recs, stopped = loop.train_stage(ctx, run_axis.stack([s for _, s in built]))
    # On the host: each run's share is then indexed without compiling anything.
    states, bests = jax.device_get((states, bests))
    for i, p in enumerate(chunk):
      final[p], best[p] = run_axis.unstack(states, i), run_axis.unstack(bests, i)
      stage_records[p] = recs[i]
      if i in stopped:
        failures[p] = stopped[i]
  return final, best, stage_records, failures


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


def _pruned_leaks(params: Any, masks: Any | None) -> list[str]:
  """The leaves of host `params` with a nonzero weight where `masks` prune (None: no masks)."""
  if masks is None:
    return []
  full = sparsity.full_masks(params, masks)
  return [jax.tree_util.keystr(path) for (path, p), m in zip(
      jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(full))
          if np.any(np.asarray(p)[~np.asarray(m, bool)] != 0)]


def _finish(exp: Experiment, run_name: str, best: dict, stages: list[loop.StageRecord],
            compressed: bool, pruning: dict[str, Any] | None = None,
            variant: variants_lib.Variant | None = None) -> records.RunResult:
  """Test metrics, measured sparsity and the compressed export of a run's selected model."""
  cfg, problem = exp.plan, exp.problem
  params = jax.device_get(best["params"])
  masks = jax.device_get(best["masks"])
  leaks = _pruned_leaks(params, masks)
  if leaks:  # what is evaluated below is these params as they are, not their masked copy
    raise RuntimeError(f"{run_name}: weights its masks prune are not exactly zero in {leaks}; "
                       "a sparse wrapper let an update through (a bug: please report it).")
  # An axis of one run, evaluated by the stages' program for an axis of one (already compiled
  # when a stage trained a single run, e.g. one seed: then one compilation fewer).
  placed = parallel.place(run_axis.stack([(best["params"], best["model_state"])]),
                          run_axis.state_sharding(exp.mesh, False))
  with clock_lib.measure(exp.clock, "evaluation"):
    test, val = (loop.evaluate_runs(problem, exp.axis_eval_steps[False, True], *placed, split,
                                    exp.mesh, cfg.eval_batch_size)[0]
                 for split in ("test", "val"))
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
      pruning=pruning,
      variant=(variant.to_json(cfg.trainer.optimizer.learning_rate) if variant is not None
               else None))


def _handed_on(stage: str, state: step_lib.TrainState, best: dict) -> tuple[Any, Any]:
  """The (params, model state) a stage hands to the next: pretraining's best, else final."""
  if stage == "pretrain":
    return best["params"], best["model_state"]
  return state.params, state.model_state


def _weights_at_prune(exp: Experiment, weighting_name: str,
                      state: step_lib.TrainState | None) -> np.ndarray:
  """The method's task weights at the end of the stage before the prune (1/K when the run
  starts at the prune, from a shared equal-weighted pretraining)."""
  num_tasks = exp.problem.num_tasks
  if state is None:
    return np.full((num_tasks,), 1.0 / num_tasks, np.float32)
  method_weighting = stages_lib.make_weighting(weighting_name, exp.plan.trainer,
                                               exp.steps_per_epoch)
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
  # As a rerun would read it back (key-sorted JSON), so that the report a resumed run writes
  # is byte for byte the report of a run that was never interrupted.
  return records.RunResult.from_json(
      json.loads(json.dumps(result.to_json(), sort_keys=True)), path)


def _recorded_divergence(exp: Experiment, run_name: str) -> records.Diverged | None:
  """The run's ``diverged.json``, or None if it has not diverged."""
  return _read_run_file(exp, run_name, "diverged.json", records.Diverged)


def _diverged(exp: Experiment, run_name: str, message: str) -> records.Diverged:
  """Records a run that diverged in ``<run_name>/diverged.json``: the failed run keeps its
  last good checkpoint, and a rerun of the same config reports it again without recomputing
  it (to retry with other settings, use a new workdir)."""
  outcome = records.Diverged(message)
  if parallel.is_primary():
    path = os.path.join(exp.workdir, run_name, "diverged.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _files.write_json_atomically(path, outcome.to_json())
  return outcome


def _saved_outcome(exp: Experiment, run_name: str) -> records.Outcome | None:
  """A finished run's result, or its recorded divergence, or None."""
  return _recorded_divergence(exp, run_name) or _read_result(exp, run_name)


def run_dense(exp: Experiment, seeds: tuple[int, ...]) -> dict[int, Any]:
  """The dense reference of every seed, on the run axis: seed -> (result, params, model
  state), or a `records.Diverged`. The weights are the best-validation epoch, the very model
  whose metrics the result reports and that shared compression starts from."""
  points = [Point(seed) for seed in seeds]
  names = {p: [f"seed{p.seed}/dense"] for p in points}
  starts = {p: step_lib.init_variables(exp.model, exp.problem, p.seed) for p in points}
  final, best, stage_records, failures = _train_axis(exp, "dense", "equal", "pretrain", 0,
                                                     points, names, starts, {})
  out = {}
  for p in points:
    run_name = names[p][0]
    if p in failures:
      out[p.seed] = _diverged(exp, run_name, failures[p])
      continue
    result = _cached(exp, run_name, lambda p=p, n=run_name: _finish(
        exp, n, best[p], [stage_records[p]], False))
    out[p.seed] = (result, *_handed_on("pretrain", final[p], best[p]))
  return out


def run_method(exp: Experiment, method: str, seeds: tuple[int, ...],
               dense: dict[int, tuple[Any, Any]] | None) -> dict[Point, records.Outcome]:
  """Takes `method` through ``config.stages`` for every seed and variant on the run axis.

  Args:
    dense: each seed's dense (params, model state) to start compression from (shared
      pretraining), or None: the method pretrains itself (once per seed: pretraining is
      the same for every variant, which all start from its result).

  Returns:
    (seed, variant) -> the run's result, or `records.Diverged`.
  """
  cfg = exp.plan
  grid = exp.variants_for(method)
  runs = [Point(seed, v) for seed in seeds for v in grid]
  saved = {p: _saved_outcome(exp, exp.run_name(p.seed, method, p.variant)) for p in runs}
  if all(outcome is not None for outcome in saved.values()):
    return saved
  if dense is not None and cfg.stages[0] == "pretrain":
    starts = {p: dense[p.seed] for p in runs}
  else:
    starts = {Point(seed): step_lib.init_variables(exp.model, exp.problem, seed)
              for seed in seeds}
  weighting_name, criterion = scoring.parse_method(method, cfg.trainer)
  points = list(starts)
  masks, pruning, last, best, failures = {}, {}, {}, {}, {}
  stage_records = {p: [] for p in points}
  for index, stage in enumerate(cfg.stages):
    if (stage == "pretrain" and dense is not None) or not points:
      continue
    if points[0].variant is None and stage != "pretrain":  # every variant from here on
      points, starts, last, best, stage_records, failures = _fan_out(
          grid, points, (starts, last, best, stage_records, failures))
    if stage == "prune":
      for p in points:
        params, model_state = starts[p]
        masks[p], pruning[p] = scoring.prune_masks(
            criterion, cfg.trainer, params, problem=exp.problem, scoring_step=exp.scoring_step,
            model_state=model_state, mesh=exp.mesh, seed=p.seed, stage_index=index,
            task_weights=(_weights_at_prune(exp, weighting_name, last.get(p))
                          if criterion.aggregate == "minmax" else None))
        starts[p] = (sparsity.apply_masks(params, masks[p]), model_state)
      continue
    names = {p: ([exp.run_name(p.seed, method, p.variant)] if p.variant is not None else
                 [exp.run_name(p.seed, method, v) for v in grid]) for p in points}
    final, stage_best, stage_recs, stage_failures = _train_axis(
        exp, method, weighting_name, stage, index, points, names, starts, masks)
    failures.update(stage_failures)
    for p in points:
      last[p], best[p] = final[p], stage_best[p]
      starts[p] = _handed_on(stage, last[p], best[p])
      stage_records[p].append(stage_recs[p])
      if stage in stages_lib.MASK_GIVERS and p not in stage_failures:  # e.g. gradual pruning
        masks[p] = jax.device_get(sparsity.find_masks(last[p].opt_state))
    points = [p for p in points if p not in failures]
  if not all(p in stage_records for p in runs):  # pretraining alone: every variant is it
    _, last, best, stage_records, failures = _fan_out(
        grid, list(stage_records), (last, best, stage_records, failures))
  out = {}
  for p in runs:
    run_name = exp.run_name(p.seed, method, p.variant)
    if p in failures:
      out[p] = saved[p] or _diverged(exp, run_name, failures[p])
    else:
      out[p] = _cached(exp, run_name, lambda p=p, n=run_name: _finish(
          exp, n, best[p], stage_records[p], True, pruning.get(p), p.variant))
  return out


def _fan_out(grid: tuple[variants_lib.Variant, ...], points: list[Point],
             by_point: tuple[dict, ...]) -> tuple[list[Point], ...]:
  """The runs of every variant of `grid` of each seed's `points` (runs before the variants),
  and the dicts `by_point` with each seed's entry copied to each of its variants' runs."""
  fanned = [Point(p.seed, v) for p in points for v in grid]
  copies = tuple({Point(p.seed, v): (list(value) if isinstance(value, list) else value)
                  for p, value in d.items() for v in grid} for d in by_point)
  return (fanned, *copies)


def run_digits(config: app_plan.Config, workdir: str, **kwargs) -> dict:
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
  # Every task set checked before any trains (one refused after another had trained would
  # leave half a run), and `workdir` records the whole run's config.
  plan = validate(config)
  parallel.maybe_initialize_distributed(plan.distributed)
  mesh = parallel.data_mesh()
  parallel.check_batch_size(plan.batch_size, mesh)
  parallel.check_batch_size(plan.eval_batch_size, mesh, "eval_batch_size")
  built = {}  # each task set's data, built once: checked here, trained on below
  for task_set in task_sets:
    refuse_other_run(config, os.path.join(workdir, digits.data.folder_name(task_set)))
    built[task_set] = digits.from_config(config, task_set)
    check_runnable(plan, built[task_set])
  check_workdir(config, workdir)
  reports, parts = {}, {}
  for task_set in task_sets:
    folder = digits.data.folder_name(task_set)
    # (`run` calls `problem` with this very config, the one the data was built from.)
    reports[task_set] = run(config, os.path.join(workdir, folder),
                            problem=lambda c, p=built[task_set]: p, **kwargs)
    parts[folder] = f"Task set '{task_set}'"
  if parallel.is_primary():  # only the primary process wrote the reports
    _write_index(workdir, parts)
  return reports


def _write_index(workdir: str, parts: Mapping[str, str]) -> str:
  """Writes ``workdir/report.md``: the ``report.md`` of each sub-folder of `parts` (folder ->
  title) one after another, each under its title. Returns its path."""
  sections = []
  for folder, title in parts.items():
    with open(os.path.join(workdir, folder, "report.md")) as f:
      sections.append(f"# {title} (files in {folder}/)\n\n{f.read()}")
  path = os.path.join(workdir, "report.md")
  _files.write_atomically(path, lambda f: f.write("\n\n".join(sections).encode("utf-8")))
  return path


@_checks.as_user_error()
def validate(config: app_plan.Config) -> app_plan.RunPlan:
  """The comparison's plan (`mmcompress.app.plan.comparison`), read once and checked: raises
  a `UserError` (a ValueError) naming the field for any config that cannot run."""
  plan = app_plan.comparison(config)  # what the trainer reads, its sections' keys checked
  trainer = plan.trainer
  for method in plan.methods:
    scoring.parse_method(method, trainer)  # a known weighting, and a known criterion if named
  for stage in ("gradual", "sparse"):
    if stage in plan.stages:
      _check_magnitude_only(plan, stage)
  # The problem's own fields, before any file is read.
  problems.get(plan.problem).validate_config(config)
  if not plan.methods:
    raise ValueError("config.methods is empty: name at least one of "
                     f"{list(weighting.WEIGHTINGS)}.")
  stages_lib.check_stage_order(plan.stages)
  if tuple(plan.stages) == ("pretrain",) and trainer.share_pretraining:
    raise ValueError(
        "config.stages=('pretrain',) with config.share_pretraining=True trains no method: "
        "every method would be the shared dense model. Add the compression stages (e.g. "
        "--config.stages=\"('pretrain','prune','retrain')\"), or pass "
        "--config.share_pretraining=False to pretrain each method under its own weighting.")
  _checks.one_of(plan.model, MODEL_NAMES, "config.model")
  _checks.sparsity(trainer.sparsity, "config.sparsity")
  _checks.one_of(trainer.scope, ("layer", "global"), "config.scope")
  fixed = masks_lib.structure_sparsity(trainer.structure)  # also refuses a bad "n:m"
  if fixed is not None and not masks_lib.admits(fixed, trainer.sparsity):
    raise ValueError(
        f"config.structure={trainer.structure!r} prunes exactly 1 - n/m = {fixed!r} of the "
        f"weights, but config.sparsity is {trainer.sparsity!r}: pass "
        f"--config.sparsity={fixed!r}, or another structure.")
  _checks.positive_int(trainer.batch_size, "config.batch_size")
  _checks.positive_int(plan.eval_batch_size, "config.eval_batch_size")
  _checks.positive_int(plan.checkpoint_every_steps, "config.checkpoint_every_steps")
  if not plan.seeds:
    raise ValueError("config.seeds is empty: give at least one seed, e.g. (0,).")
  for seed in plan.seeds:
    _checks.non_negative_int(seed, "every entry of config.seeds")
  if len(set(plan.seeds)) != len(plan.seeds):
    raise ValueError(f"config.seeds names a seed twice: {list(plan.seeds)}; each seed is one "
                     "paired sample of every comparison, so give each once.")
  if plan.epochs["pretrain"] < 1:
    raise ValueError("config.epochs.pretrain must be >= 1: the dense reference of every seed "
                     f"is a pretrain run, got {plan.epochs['pretrain']}.")
  for stage in stages_lib.TRAINING_STAGES:
    if stage in plan.stages and plan.epochs[stage] < 1:
      raise ValueError(f"config.epochs.{stage} must be >= 1, got {plan.epochs[stage]}.")
  # Building every weighting and every stage's transform checks all their knobs.
  for method in plan.methods:
    stages_lib.make_weighting(scoring.parse_method(method, trainer)[0], trainer, 1)
  if "prune" in plan.stages:
    _checks.positive_int(trainer.prune.calibration_batches, "config.prune.calibration_batches")
  _checks.non_negative_int(plan.chunk_runs, "config.chunk_runs (0 = every run at once)")
  _checks.non_negative_int(plan.data_order, "config.data_order (0 = the seed's own order)")
  if len(set(plan.methods)) != len(plan.methods):
    raise ValueError(f"config.methods names a method twice: {list(plan.methods)}.")
  pinned = [v for v in map(variants_lib.pinned, plan.methods) if v is not None]
  for variant in variants_lib.grid(trainer) + tuple(pinned):  # every scale and clip, checked
    for stage in plan.stages:
      if stage in stages_lib.TRAINING_STAGES:
        stages_lib.descent_transform(stage, trainer, 1, masks={}, variant=variant)
  return plan


def _check_magnitude_only(plan: app_plan.RunPlan, stage: str) -> None:
  """Raises unless the plan's masks are what the gradual or the sparse (dynamic) `stage`
  makes: unstructured, per layer, by magnitude (or its growth rule), without a pruning
  criterion (settings it would otherwise ignore; neither stage can follow a prune stage)."""
  trainer = plan.trainer
  ignored = [f"{name}={value!r}" for name, value, plain in (
      ("config.structure", trainer.structure, "unstructured"),
      ("config.scope", trainer.scope, "layer"),
      ("config.prune.criterion", trainer.prune.criterion, "magnitude")) if value != plain]
  ignored += [f"method {m!r}" for m in plan.methods if "+" in m.partition("@")[0]]
  if ignored:
    what = ("prunes unstructured, per layer, by magnitude" if stage == "gradual" else
            "keeps unstructured, per-layer masks, dropped by magnitude and grown by "
            "config.dynamic.grow")
    raise ValueError(
        f"the {stage} stage {what}; it cannot honour {', '.join(ignored)}: use the prune "
        "stage for those, or leave them at their defaults.")


# Fields added after runs were recorded, each with the value every run before it had: no
# compression-stage clip, no clip grid in a study, every run of a method in one chunk, the
# runs' batches split over the devices, no grid, no tuning seeds.
_ADDED_OFF = ((("optimizer", "compress_clip_norm"), 0.0), (("study", "compress_clip_norms"), []),
              (("chunk_runs",), 0), (("runs_sharded",), False),
              (("grid",), {"learning_rate_scale": [], "clip_norm": []}),
              (("study", "tuning_seeds"), []), (("data_order",), 0))
# Fields removed since, which a run recorded before them may hold: the one-seed path's
# switches (every run is on the run axis now, which trains to the same numbers).
_REMOVED = ("seed_axis", "seed_sharded")


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


def _check_workdir_path(workdir: str) -> None:
  """Raises a `UserError` unless `workdir` is a folder this process can write in, or can be
  made one (its nearest existing parent is a writable folder); creates nothing."""
  if os.path.exists(workdir):
    _checks.writable_folder(workdir, "the workdir is")
    return
  parent = os.path.dirname(os.path.abspath(workdir))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  _checks.writable_folder(parent, f"the workdir {workdir} lies under")


def _read_record(path: str) -> dict[str, Any]:
  """A workdir's JSON record at `path`; a `UserError` in one line if it is not a JSON object."""
  try:
    with open(path) as f:
      saved = json.load(f)
  except (ValueError, UnicodeDecodeError) as error:
    raise _checks.UserError(
        f"{path} is not a run's record (not JSON: {error}); use another --workdir, or "
        "remove that file if the folder is yours to reuse.") from None
  if not isinstance(saved, dict):
    raise _checks.UserError(f"{path} is not a run's record (not a JSON object); use another "
                            "--workdir.")
  return saved


def refuse_other_run(config: app_plan.Config, workdir: str) -> bool:
  """Raises a `UserError` if `workdir` holds a run with a different config (or cannot be a
  workdir: a file, under a file, not writable, a ``config.json`` that is not a run's).

  Returns:
    Whether `workdir` holds a run (with this config: it resumes).
  """
  _check_workdir_path(workdir)
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return False
  current = json.loads(config.to_json())
  saved = _read_record(path)
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
  # Nor the section and epochs of the gradual stage, added since, for a run without it.
  if "gradual" not in saved.get("stages", ()) and "gradual" in current:
    saved.setdefault("gradual", current["gradual"])
    if isinstance(saved.get("epochs"), dict) and "gradual" in current.get("epochs", {}):
      saved["epochs"].setdefault("gradual", current["epochs"]["gradual"])
  # Nor a field added since, missing there and off now (`_ADDED_OFF`).
  for path, off in _ADDED_OFF:
    _fill_if_off(saved, current, path, off)
  # A run recorded before the run axis (it names the seed axis) left no checkpoint on it:
  # however the axis is chunked now, it resumes (its finished runs are read back).
  if any(field in saved for field in _REMOVED):
    for field in ("chunk_runs", "runs_sharded"):
      if field not in saved and field in current:
        saved[field] = current[field]
  for field in _REMOVED:
    if field not in current:
      saved.pop(field, None)
  # Nor how the progress is printed, nor how often checkpoints are written (a resumed stage
  # gives the same results whatever the cadence: tests/test_trainer.py).
  for field in ("epoch_lines", "quiet", "checkpoint_every_steps"):
    saved[field] = current.get(field)
  if saved != current:
    keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    details = "; ".join(f"{k}: {saved.get(k)!r} there, {current.get(k)!r} now" for k in keys)
    raise _checks.UserError(
        f"{workdir} holds a run with a different config ({details}). Use another --workdir, "
        "or rerun with the same config to resume it.")
  return True


def data_fingerprint(problem: Problem, batch_size: int) -> dict[str, Any]:
  """What identifies a run's data, beyond its config: the training steps of an epoch and a
  SHA-256 of the first training batch (seed 0, stage 0, step 0) and the first validation
  batch, every array's name, dtype, shape and bytes. A changed data set, data code or
  library that changes either changes it."""
  digest = hashlib.sha256()
  for batch in (problem.train_batch(0, 0, 0, batch_size),
                next(iter(problem.eval_batches("val", batch_size)))):
    for path, leaf in jax.tree_util.tree_flatten_with_path(batch)[0]:
      array = np.ascontiguousarray(np.asarray(leaf))
      digest.update(f"{jax.tree_util.keystr(path)} {array.dtype} {array.shape}".encode())
      digest.update(array.tobytes())
  return {"steps_per_epoch": int(problem.steps_per_epoch(batch_size)),
          "sha256": digest.hexdigest()}


def refuse_other_data(fingerprint: dict[str, Any], workdir: str) -> bool:
  """Raises a `UserError` if `workdir`'s ``data.json`` records other data than
  `fingerprint` (`data_fingerprint`): the same config on changed data must not resume.
  Returns whether it records this data (False: none recorded, e.g. an older run's)."""
  path = os.path.join(workdir, "data.json")
  if not os.path.exists(path):
    return False
  saved = _read_record(path)
  if saved != fingerprint:
    what = ("steps per epoch: {} there, {} now".format(saved.get("steps_per_epoch"),
                                                        fingerprint["steps_per_epoch"])
            if saved.get("steps_per_epoch") != fingerprint["steps_per_epoch"] else
            "the first batches differ")
    raise _checks.UserError(
        f"{workdir} holds a run of the same config on other data ({what}): the data set, its "
        "code or a library changed since it began. Use a new --workdir.")
  return True


def check_workdir(config: app_plan.Config, workdir: str) -> None:
  """Records the config in `workdir`, or raises if it holds a run with a different one."""
  os.makedirs(workdir, exist_ok=True)
  if not refuse_other_run(config, workdir) and parallel.is_primary():
    _files.write_json_atomically(os.path.join(workdir, "config.json"),
                                 json.loads(config.to_json()))


def _announce(progress: progress_lib.Progress, seed: int, run_name: str,
              outcome: records.Outcome) -> None:
  """The line of a finished run (`run_name`: ``seed<seed>/<method>[@<variant>]``), with where
  the whole comparison stands (a seed whose dense reference diverged runs no method: they
  are done too)."""
  method = run_name.split("/", 1)[1]
  if method == "dense" and isinstance(outcome, records.Diverged):
    progress.seed_done(seed)
  label = f"seed {seed} {method.replace(variants_lib.PIN, ' ')}"
  if isinstance(outcome, records.Diverged):
    line = f"{label}: diverged, counted as a loss ({outcome.message})"
  else:
    line = f"{label}: test " + ", ".join(f"{k} {v:.3f}" for k, v in outcome.metrics.items())
  progress.run_done(run_name, line)


def _run_all(exp: Experiment, progress: progress_lib.Progress
             ) -> tuple[dict[int, Any], dict[str, dict[Point, records.Outcome]]]:
  """Every seed's dense reference, then every method's seeds and variants on the run axis.

  Returns:
    ``(dense, methods)``: seed -> (result, params, model state) or `records.Diverged`; and
    method -> (seed, variant) -> outcome, for the seeds whose dense reference finished.
  """
  cfg = exp.plan
  dense = run_dense(exp, tuple(cfg.seeds))
  for seed in cfg.seeds:
    _announce(progress, seed, f"seed{seed}/dense",
              dense[seed] if isinstance(dense[seed], records.Diverged) else dense[seed][0])
  live = tuple(s for s in cfg.seeds if not isinstance(dense[s], records.Diverged))
  shared = {s: tuple(dense[s][1:]) for s in live} if cfg.trainer.share_pretraining else None
  methods = {}
  for method in cfg.methods:
    methods[method] = run_method(exp, method, live, shared) if live else {}
    for p, outcome in methods[method].items():
      _announce(progress, p.seed, exp.run_name(p.seed, method, p.variant), outcome)
  return dense, methods


def _report_names(methods: tuple[str, ...]) -> dict[str, str]:
  """Each method's name in the report: a method that pins its variant under its own name
  (``equal@lr2-clip0`` is "equal", what the report compares with) unless another entry
  shares that name; the variant is in each run's ``result.json``."""
  bases = [variants_lib.base_method(m) for m in methods]
  return {m: b if bases.count(b) == 1 else m for m, b in zip(methods, bases)}


def _variant_records(exp: Experiment, dense: dict[int, Any],
                     methods: dict[str, dict[Point, records.Outcome]],
                     variant: variants_lib.Variant
                     ) -> tuple[list[records.SeedRecord], list[dict], list[records.DroppedSeed]]:
  """One variant's comparison: the records of the seeds with a dense reference, every
  divergence as ``{"seed", "runs": {name: message}}``, and the seeds left out."""
  per_seed, diverged, dropped = [], [], []
  names = _report_names(exp.plan.methods)
  # Each method's runs of this variant: its own, when it pins one.
  chosen = {m: variants_lib.pinned(m) or variant for m in exp.plan.methods}
  for seed in exp.plan.seeds:
    if isinstance(dense[seed], records.Diverged):
      diverged.append({"seed": seed, "runs": {"dense": dense[seed].message}})
      dropped.append(records.DroppedSeed(
          seed, f"its dense reference diverged ({dense[seed].message})"))
      continue
    outcomes = {names[m]: methods[m][Point(seed, chosen[m])] for m in exp.plan.methods}
    failures = {m: o.message for m, o in outcomes.items() if isinstance(o, records.Diverged)}
    if failures:
      diverged.append({"seed": seed, "runs": failures})
    per_seed.append(records.SeedRecord(seed=seed, dense=dense[seed][0], methods=outcomes))
  if not per_seed:
    raise loop.NonFiniteLossError(
        "the dense reference diverged on every seed, so there is nothing to compare ("
        + "; ".join(f"seed {d['seed']}: {d['runs']}" for d in diverged) + ")", exp.workdir)
  return per_seed, diverged, dropped


def _setup_notes(plan: app_plan.RunPlan, problem: Problem) -> list[str]:
  """The report's lines on the data, the stages, the losses and model selection."""
  return [
      f"Data: {problem.describe()}, model {plan.model}.",
      f"Stages: {' → '.join(plan.stages)}; each method runs them under its own weighting.",
      ("Every method trains sparse from scratch; the dense reference is an equal-weighted "
       "pretrain of the same seed." if plan.stages[0] != "pretrain" else
       "Methods share the dense pretraining of each seed (equal weighting), which is also "
       "the dense reference: its best-validation epoch, the model compression starts from."
       if plan.trainer.share_pretraining else
       "Each method pretrains under its own weighting and compresses its best-validation "
       "epoch; the dense reference is equal-weighted."),
      ("Losses: every weighting's objective is normalised to the mean task loss "
       "(loss_reduction=mean; uncertainty's exactly so where its log-variances are 0)."
       if plan.trainer.loss_reduction == "mean" else
       "Losses: combined as the reference code does (loss_reduction=reference): equal sums "
       "them, DWA weights them by K·softmax, uncertainty sums ½e^(−s)L + s/2; min-max keeps "
       "weights summing to one."),
      "Model selection: best mean validation loss over the epochs of the last stage; "
      "test metrics are of that model.",
      _axis_note(plan),
  ] + _pruning_notes(plan) + problem.metric_notes()


def _axis_note(plan: app_plan.RunPlan) -> str:
  """The report's line on how the runs were trained: how many on the axis, in what chunks."""
  seeds, variants = len(plan.seeds), len(variants_lib.grid(plan.trainer))
  runs = seeds * variants

  def count(n, what):
    return f"{n} {what}" + ("" if n == 1 else "s")

  sizes = [len(c) for c in _chunks(list(range(runs)), plan.chunk_runs)]
  return (f"Run axis: each method's {count(runs, 'run')} ({count(seeds, 'seed')} × "
          f"{count(variants, 'variant')}) trained as one program "
          + (f"in chunks of {', '.join(map(str, sizes))}" if len(sizes) > 1 else "at once")
          + f" (config.chunk_runs={plan.chunk_runs}).")


def _pruning_notes(plan: app_plan.RunPlan) -> list[str]:
  """The report's line on how each method's masks were chosen (none without a prune or
  gradual stage)."""
  if "gradual" in plan.stages:
    g = plan.trainer.gradual
    return [f"Masks: gradual magnitude pruning (Zhu & Gupta 2018) raises each prunable layer's "
            f"sparsity from {g.initial_sparsity:g} to {plan.sparsity:g} along the cubic "
            f"schedule during the gradual stage (masks updated every "
            f"{g.update_every_epochs} epoch(s), from {g.begin_fraction:g} to "
            f"{g.end_fraction:g} of the stage); the retrain stage keeps its final masks."]
  if "prune" not in plan.stages:
    return []
  default = scoring.default_criterion(plan.trainer)
  named = sorted({m for m in plan.methods if "+" in m})
  how = ("|weight|, as the paper" if default == "magnitude" else
         "per-task first-order Taylor scores |θ ⊙ ∂L_k/∂θ| on "
         f"{plan.trainer.prune.calibration_batches} training batches, aggregated across tasks")
  line = f"Masks: the prune stage ranks the weights by {default} ({how}) for every method"
  if named:
    line += (", except where a method names its own after '+' ("
             + ", ".join(named) + f"; Taylor scores on {plan.trainer.prune.calibration_batches} "
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


def check_runnable(plan: app_plan.RunPlan, problem: Problem) -> nn.Module:
  """The model of a checked plan for `problem`, after checking what needs the problem:
  the model's own arguments and the task scales against the tasks; a `UserError` names
  what to change."""
  try:
    model = create_model(plan.model, problem.num_outputs, **plan.model_kwargs)
  except ValueError as error:
    hint = (" (config.model_kwargs holds config.model's options; a shipped config cannot "
            "drop one from the command line: for another model, use a config file of your "
            "own with that model's model_kwargs)" if "does not take" in str(error) else "")
    raise _checks.UserError(f"{error}{hint}") from None
  scales = plan.trainer.task_scales
  if scales and len(scales) != problem.num_tasks:
    raise _checks.UserError(
        f"config.task_scales has {len(scales)} entries but the problem has "
        f"{problem.num_tasks} tasks ({', '.join(problem.task_names)}): give one scale per "
        "task, or () for all 1.")
  steps = problem.steps_per_epoch(plan.batch_size)  # a batch larger than the training split
  for method in plan.methods:  # each weighting's per-task knobs against the tasks
    weighting_name = scoring.parse_method(method, plan.trainer)[0]
    weighting_obj = stages_lib.make_weighting(weighting_name, plan.trainer, steps)
    jax.eval_shape(lambda w=weighting_obj: w.init(problem.num_tasks))  # no device touched
  return model


def _experiment(plan: app_plan.RunPlan, workdir: str,
                problem: Callable[[app_plan.Config], Problem] | None,
                on_checkpoint: Callable[[str, int], None] | None, label: str = "",
                clock: clock_lib.Clock | None = None
                ) -> tuple[Experiment, progress_lib.Progress]:
  """The experiment of a checked plan on this host's devices, and its progress log.

  The processes of a multi-process run read the same config and files, so each refuses a
  workdir of another run by itself, before they meet in `jax.distributed.initialize`; the
  device count that the batch sizes must divide is known only after it, and they all refuse
  those together too, before their first collective.
  """
  refuse_other_run(plan.config, workdir)
  parallel.maybe_initialize_distributed(plan.distributed)
  mesh = parallel.data_mesh()
  parallel.check_batch_size(plan.batch_size, mesh)
  parallel.check_batch_size(plan.eval_batch_size, mesh, "eval_batch_size")
  # Everything that can refuse the run (its data, its model, the task scales against the
  # tasks) before the workdir records it: a refused run leaves the workdir as it was.
  problem = (problem or problems.get(plan.problem).from_config)(plan.config)
  model = check_runnable(plan, problem)
  fingerprint = data_fingerprint(problem, plan.batch_size)
  recorded = refuse_other_data(fingerprint, workdir)
  check_workdir(plan.config, workdir)
  if not recorded and parallel.is_primary():
    _files.write_json_atomically(os.path.join(workdir, "data.json"), fingerprint)
  quiet = (plan.quiet or os.environ.get("CI", "").lower() == "true"
           or not parallel.is_primary())
  progress = progress_lib.Progress(quiet, workdir, problem.task_names,
                                   write=parallel.is_primary(),
                                   plan=progress_lib.planned_epochs(plan),
                                   epoch_lines=plan.epoch_lines, label=label)
  exp = Experiment(plan=plan, problem=problem, model=model, mesh=mesh,
                   workdir=workdir, log=progress, on_checkpoint=on_checkpoint, clock=clock)
  return exp, progress


def _variant_report(exp: Experiment, dense: dict[int, Any],
                    methods: dict[str, dict[Point, records.Outcome]],
                    variant: variants_lib.Variant) -> dict:
  """The report of one variant's runs against the seeds' dense references."""
  plan, problem = exp.plan, exp.problem
  per_seed, diverged, dropped = _variant_records(exp, dense, methods, variant)
  notes = _setup_notes(plan, problem) + _divergence_notes(diverged)
  rate = plan.trainer.optimizer.learning_rate
  if len(exp.variants) > 1:
    notes.insert(0, f"Variant {variant.name} of the grid: the stages after pretraining at "
                    f"{variant.describe(rate)}.")
  pins = {m: v for m, v in zip(plan.methods, map(variants_lib.pinned, plan.methods)) if v}
  if pins:
    notes.insert(0, "Pinned variants (each method trains this one only): " + "; ".join(
        f"{m}: {v.describe(rate)}" for m, v in pins.items()) + ".")
  report = report_lib.build_report(
      per_seed, tasks=list(problem.task_names), higher_is_better=problem.higher_is_better,
      metric_names=problem.metric_names,
      all_higher_is_better=problem.all_higher_is_better,
      target_sparsity=plan.sparsity, extra={"notes": notes},
      test_counts=problem.test_counts(), dropped=dropped)
  report["config"] = json.loads(plan.config_json)
  report["diverged"] = diverged
  report["variant"] = variant.to_json(rate)
  report["pinned"] = {m: v.to_json(rate) for m, v in pins.items()}
  return report


def run(config: app_plan.Config, workdir: str, *,
        problem: Callable[[app_plan.Config], Problem] | None = None,
        on_checkpoint: Callable[[str, int], None] | None = None,
        print_report: bool = True, label: str = "",
        clock: clock_lib.Clock | None = None) -> dict:
  """Runs the whole comparison described by `config` in `workdir` and returns the report.

  With a grid of several variants (``config.grid``) every variant gets a report of its own
  in ``workdir/variants/<name>/`` (its methods against the same dense references), and
  ``workdir/report.md`` holds them one after another; the return value is then
  ``{"variants": {name: report}}``.

  Args:
    config: see ``experiments/configs/digits.py`` for the fields.
    workdir: where checkpoints, results, the report and the models go; rerunning the same
      config on the same workdir resumes.
    problem: builds the data set and its tasks from the config (and checks the data first);
      by default the ``from_config`` of the problem that ``config.problem`` names.
    on_checkpoint: called as ``(stage, step)`` after every checkpoint save.
    print_report: print the Markdown report at the end, and where this call's wall time
      went (`clock.Clock.line`).
    label: printed before every progress line (`mmcompress.app.study` runs several at once).
    clock: an open `clock.Clock` to measure on (the study's); by default this call's own.
  """
  plan = validate(config)  # the config, read once
  with contextlib.ExitStack() as stack:
    clock = clock or stack.enter_context(clock_lib.Clock())
    report = _run_and_write(plan, workdir, problem, on_checkpoint, print_report, label,
                            clock)
    if print_report:
      print(f"(this call: {clock.line()}; a call that resumed from checkpoints is shorter "
            "than a full run)", file=sys.stderr, flush=True)
  return report


def _run_and_write(plan: app_plan.RunPlan, workdir: str,
                   problem: Callable[[app_plan.Config], Problem] | None,
                   on_checkpoint: Callable[[str, int], None] | None, print_report: bool,
                   label: str, clock: clock_lib.Clock) -> dict:
  """`run`'s runs and its report files."""
  exp, progress = _experiment(plan, workdir, problem, on_checkpoint, label, clock)
  try:
    dense, methods = _run_all(exp, progress)
  finally:
    progress.close()
  reports = {v.name: _variant_report(exp, dense, methods, v) for v in exp.variants}
  if len(reports) == 1:
    (report,) = reports.values()
  else:
    report = {"variants": reports}
  if not parallel.is_primary():  # the primary process writes the report
    return report
  if len(reports) == 1:
    markdown = report_lib.write(report, workdir)["markdown"]
  else:
    for name, variant_report in reports.items():
      report_lib.write(variant_report, os.path.join(workdir, "variants", name))
    markdown = _write_index(workdir, {f"variants/{name}": f"Variant {name}" for name in reports})
  if print_report:
    with open(markdown) as f:
      print(f.read(), flush=True)
  return report
