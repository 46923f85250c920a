"""One run: a task weighting taken through the stages of the pipeline, for one seed.

The dense reference of a seed is the ``pretrain`` stage under equal weighting. With
``config.share_pretraining`` every method starts its compression stages from that same dense
model (the reference runs every stage under the method's own weighting; sharing saves a third
of the compute and makes the seeds exactly paired); without it each method pretrains under
its own weighting. Pretraining hands its *best-validation* epoch to the next stage: that is
the dense model (the dense reference reports exactly those weights), and compression starts
from it, as a user would compress the dense model they selected. Every later stage hands its
*final* weights to the next (the reweighted weights that pruning cuts, the pruned weights
that retraining restores), with a fresh optimizer and
a fresh task weighting (min-max weights back at 1/K, DWA's history empty), as each stage of
the reference is a run of its own; the model a run reports is the best-validation epoch of its
last training stage. A finished run writes ``result.json``
and is not run again.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmcompress import _files, export, saddle_point, sparsity
from mmcompress.problems import Problem
from mmcompress.train import loop, parallel, stages as stages_lib, step as step_lib
from mmcompress.weighting import TaskWeighting


@dataclasses.dataclass(frozen=True)
class Experiment:
  """What every run of an experiment shares (static, not checkpointed)."""
  config: ml_collections.ConfigDict
  problem: Problem
  model: nn.Module
  mesh: jax.sharding.Mesh
  workdir: str
  log: Callable[[str, str, int, dict], None] | None = None
  on_checkpoint: Callable[[str, int], None] | None = None

  @property
  def steps_per_epoch(self) -> int:
    return self.problem.steps_per_epoch(self.config.batch_size)

  @functools.cached_property
  def eval_step(self) -> Callable[..., Any]:
    """One jitted evaluation for every stage and run (it does not depend on the stage)."""
    return step_lib.make_eval_step(self.problem, self.model, self.mesh)


def init_variables(model: nn.Module, problem: Problem, seed: int) -> tuple[Any, Any]:
  """The model's freshly initialised (params, other collections) for `seed`."""
  variables = model.init(jax.random.key(seed), jnp.asarray(problem.example_input()),
                         train=False)
  variables = dict(variables)
  params = variables.pop("params")
  return params, variables


def create_train_state(params: Any, model_state: Any, weighting: TaskWeighting,
                       tx: Any, num_tasks: int, rng: jax.Array) -> step_lib.TrainState:
  """A stage's starting state: fresh optimizer and task weighting around given weights."""
  task_params, task_state = weighting.init(num_tasks)
  opt_state = tx.init({"params": params, "task_weights": task_params})
  state = step_lib.TrainState(step=jnp.zeros([], jnp.int32), params=params,
                              model_state=model_state, task_params=task_params,
                              task_state=task_state, opt_state=opt_state,
                              rng=jax.random.key_data(rng))
  # Transforms may alias one array in several leaves of their state (a shared zero); the
  # donating step needs every leaf in a buffer of its own.
  return jax.tree.map(jnp.copy, state)


def _train(exp: Experiment, run_name: str, method: str, stage: str, index: int, seed: int,
           params: Any, model_state: Any, masks: Any = None) -> tuple[Any, dict, dict]:
  """Trains `stage` of one run; returns (final state, best snapshot, stage record)."""
  cfg, problem = exp.config, exp.problem
  weighting = stages_lib.make_weighting(method, cfg, exp.steps_per_epoch)
  descent = stages_lib.descent_transform(stage, cfg, exp.steps_per_epoch, masks, seed)
  tx = saddle_point(descent, weighting.tx)
  rng = jax.random.fold_in(jax.random.key(seed), index)
  # create_train_state copies every leaf, so the step may donate them: the caller's arrays
  # (shared by every method's stages when pretraining is shared) survive.
  state = create_train_state(params, model_state, weighting, tx, problem.num_tasks, rng)
  if stage == "sparse":  # dynamic sparse training starts from its initial masks
    state = state.replace(params=sparsity.apply_masks(params, sparsity.find_masks(state.opt_state)))
  directory = os.path.join(exp.workdir, run_name, stage)

  def log(stage_name, epoch, record):
    if exp.log:
      exp.log(run_name, stage_name, epoch, record)

  ctx = loop.StageContext(
      name=stage, index=index, seed=seed, epochs=cfg.epochs[stage], batch_size=cfg.batch_size,
      problem=problem, weighting=weighting,
      train_step=step_lib.make_train_step(problem, exp.model, weighting, tx, exp.mesh),
      eval_step=exp.eval_step, mesh=exp.mesh, eval_batch_size=cfg.eval_batch_size,
      checkpoint_every=cfg.checkpoint_every_steps, directory=directory, log=log,
      on_checkpoint=exp.on_checkpoint)
  return loop.train_stage(ctx, state)


def _finish(exp: Experiment, run_name: str, best: dict, records: list[dict],
            compressed: bool) -> dict:
  """Test metrics, measured sparsity and the compressed export of a run's selected model."""
  cfg, problem = exp.config, exp.problem
  params = jax.device_get(best["params"])
  masks = jax.device_get(best["masks"])
  test, val = (loop.evaluate(problem, exp.eval_step, best["params"], best["model_state"], split,
                             exp.mesh, cfg.eval_batch_size) for split in ("test", "val"))
  stats = sparsity.summary(params, masks)
  result = {
      "metrics": test["metrics"],
      "task_metrics": test["task_metrics"],
      "all_metrics": test["all_metrics"],
      "val_metrics": val["metrics"],
      "sparsity": stats["sparsity"],
      # The prunable part's ratio (kept under its old name) and the whole model's.
      "compression_ratio": stats["prunable_compression_ratio"],
      "prunable_compression_ratio": stats["prunable_compression_ratio"],
      "whole_model_compression_ratio": stats["whole_model_compression_ratio"],
      "parameters": {key: stats[key] for key in (
          "total_size", "total_nonzero", "prunable_size", "prunable_nonzero",
          "non_prunable_size", "whole_model_cap", "non_prunable_groups")},
      "task_weights": [e["task_weights"] for r in records for e in r["epochs"]],
      "selected": {"stage": records[-1]["stage"], "epoch": records[-1]["best_epoch"]},
  }
  if compressed and parallel.is_primary():  # one process writes the files of a run
    os.makedirs(os.path.join(exp.workdir, "models"), exist_ok=True)
    path = os.path.join(exp.workdir, "models", f"{run_name.replace('/', '_')}.npz")
    result["export"] = export.save(path, params, masks)
    result["export"]["path"] = os.path.relpath(path, exp.workdir)
    restored = export.load(path)
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)),
                        restored, jax.tree.map(np.asarray, sparsity.apply_masks(params, masks)))
    result["export"]["round_trip_exact"] = all(jax.tree.leaves(same))
  return result


def _handed_on(stage: str, state: step_lib.TrainState, best: dict) -> tuple[Any, Any]:
  """The (params, model state) a stage hands to the next: pretraining's best, else final."""
  if stage == "pretrain":
    return best["params"], best["model_state"]
  return state.params, state.model_state


def run_dense(exp: Experiment, seed: int) -> tuple[dict, Any, Any]:
  """The dense reference of `seed`.

  Returns:
    ``(result, params, model state)``: the weights are the best-validation epoch, the very
    model whose metrics `result` reports and that shared compression starts from.
  """
  run_name = f"seed{seed}/dense"
  params, model_state = init_variables(exp.model, exp.problem, seed)
  state, best, record = _train(exp, run_name, "equal", "pretrain", 0, seed, params, model_state)
  result = _cached(exp, run_name, lambda: _finish(exp, run_name, best, [record], False))
  return (result, *_handed_on("pretrain", state, best))


def run_method(exp: Experiment, method: str, seed: int, dense: tuple[Any, Any] | None) -> dict:
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
    params, model_state = init_variables(exp.model, exp.problem, seed)
  masks, best, records = None, None, []
  for index, stage in enumerate(cfg.stages):
    if stage not in pipeline:
      continue
    if stage == "prune":
      masks = sparsity.magnitude_masks(params, cfg.sparsity, structure=cfg.structure,
                                       scope=cfg.scope)
      params = sparsity.apply_masks(params, masks)
      continue
    state, best, record = _train(exp, run_name, method, stage, index, seed, params,
                                 model_state, masks)
    params, model_state = _handed_on(stage, state, best)
    records.append(record)
  return _cached(exp, run_name, lambda: _finish(exp, run_name, best, records, True))


def _read_result(exp: Experiment, run_name: str) -> dict | None:
  path = os.path.join(exp.workdir, run_name, "result.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _ratios_text(result: dict) -> str:
  """"; compression 34.9x whole model, 40.0x prunable part" for a result that has both."""
  whole, prunable = (result.get(key) for key in ("whole_model_compression_ratio",
                                                 "prunable_compression_ratio"))
  if whole is None or prunable is None:
    return ""
  return f"; compression {whole:.1f}x whole model, {prunable:.1f}x prunable part"


def _cached(exp: Experiment, run_name: str, compute: Callable[[], dict]) -> dict:
  """The run's saved result, or `compute()` saved as it (a finished run is not rerun)."""
  path = os.path.join(exp.workdir, run_name, "result.json")
  cached = _read_result(exp, run_name)
  if cached is not None:
    return cached
  result = compute()
  if parallel.is_primary():
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _files.write_json_atomically(path, result)
  logging.info("%s: %s%s", run_name, result["metrics"], _ratios_text(result))
  return result


def or_divergence(exp: Experiment, run_name: str, run: Callable[[], Any]) -> Any:
  """``run()``, or ``{"diverged": message}`` if a loss became non-finite.

  The failed run keeps its last good checkpoint, and the failure is recorded in
  ``<run_name>/diverged.json``, so a rerun of the same config reports it again without
  recomputing it (to retry with other settings, use a new workdir).
  """
  path = os.path.join(exp.workdir, run_name, "diverged.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  try:
    return run()
  except loop.NonFiniteLossError as error:
    outcome = {"diverged": error.summary}
    if parallel.is_primary():
      os.makedirs(os.path.dirname(path), exist_ok=True)
      _files.write_json_atomically(path, outcome)
    return outcome
