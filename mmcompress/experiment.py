"""The multi-task compression comparison: a dense reference and every weighting, over seeds.

`run(config, workdir, problem)` validates the config before any compute, refuses a workdir that
holds a run with another config, then trains (resuming whatever a previous, interrupted call
left), and writes the report, plots, TensorBoard events and compressed models into `workdir`.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

import ml_collections
import numpy as np

from mmcompress import _checks, _files, report as report_lib, weighting
from mmcompress.data import cifar100, digits
from mmcompress.models import create_model
from mmcompress.problems import DigitsProblem, Problem
from mmcompress.problems.cifar100 import Cifar100Problem
from mmcompress.problems import nyuv2 as nyuv2_problems
from mmcompress.problems.nyuv2 import NYUv2Problem
from mmcompress.sparsity import masks as masks_lib
from mmcompress.train import parallel, run as run_lib, stages as stages_lib


def digits_problem(config: ml_collections.ConfigDict, task_set: str | None = None
                   ) -> DigitsProblem:
  """The MultiDigits problem of a digits config (its first task set unless one is named)."""
  task_set = config.task_sets[0] if task_set is None else task_set
  _checks.one_of(task_set, digits.TASK_SETS, "config.task_sets entry")
  return DigitsProblem(digits.load_multidigits(task_set, seed=config.data_seed))


def run_digits(config: ml_collections.ConfigDict, workdir: str, **kwargs) -> dict:
  """The MultiDigits comparison for every task set of ``config.task_sets``.

  One task set writes into `workdir`; several write one full run each into
  ``workdir/<task_set>`` and an index ``workdir/report.md`` that holds their reports.

  Returns:
    ``{task_set: report}``.
  """
  task_sets = tuple(config.task_sets)
  if not task_sets:
    raise _checks.UserError(f"config.task_sets is empty: name some of {list(digits.TASK_SETS)}.")
  for task_set in task_sets:
    _checks.one_of(task_set, digits.TASK_SETS, "config.task_sets entry")
  if len(task_sets) == 1:
    return {task_sets[0]: run(config, workdir, **kwargs)}
  reports, sections = {}, []
  for task_set in task_sets:
    subdir = os.path.join(workdir, task_set)
    reports[task_set] = run(config, subdir, problem=lambda c, t=task_set: digits_problem(c, t),
                            **kwargs)
    if parallel.is_primary():  # only the primary process wrote the report
      with open(os.path.join(subdir, "report.md")) as f:
        sections.append(f"# Task set '{task_set}' (files in {task_set}/)\n\n{f.read()}")
  if parallel.is_primary():
    _files.write_atomically(os.path.join(workdir, "report.md"),
                            lambda f: f.write("\n\n".join(sections).encode("utf-8")))
  return reports


def _data_dir(config: ml_collections.ConfigDict, what: str) -> str:
  if not config.data_dir:
    raise _checks.UserError(f"config.data_dir is empty: pass --config.data_dir=DIR, the directory "
                     f"that holds {what} (see the README's 'Reproducing the paper').")
  return config.data_dir


def cifar100_problem(config: ml_collections.ConfigDict) -> Cifar100Problem:
  """CIFAR-100 as 20 tasks from the tfds `data_dir` of the config (no TensorFlow needed)."""
  data_dir = _data_dir(config, "the tfds cifar100 data set, prepared as array_record")
  train_images, train_fine = cifar100.load_split("train", data_dir,
                                                 check_coarse=config.check_coarse_labels)
  test_images, test_fine = cifar100.load_split("test", data_dir,
                                               check_coarse=config.check_coarse_labels)
  train, val = cifar100.make_splits(train_images, train_fine, config.val_fraction,
                                    config.split_seed)
  test = cifar100.ImageSplit(test_images, test_fine, np.arange(len(test_fine)))
  return Cifar100Problem(train, val, test, augment=config.augment)


def nyuv2_problem(config: ml_collections.ConfigDict) -> NYUv2Problem:
  """NYUv2 from the npy layout in the config's `data_dir`, checked before any training."""
  data_dir = _data_dir(config, "train/ and val/ of the preprocessed NYUv2")
  problem = NYUv2Problem(data_dir, height=config.height, width=config.width,
                         augment=config.augment, val_fraction=config.val_fraction,
                         split_seed=config.split_seed, check_values=config.check_values,
                         normal_loss=config.normal_loss,
                         metric_averaging=config.metric_averaging)
  problem.check_eval_batch_size(config.eval_batch_size)
  return problem


@_checks.as_user_error()
def validate(config: ml_collections.ConfigDict) -> None:
  """Raises a `UserError` (a ValueError) naming the field for any config that cannot run."""
  for method in config.methods:
    _checks.one_of(method, tuple(weighting.WEIGHTINGS), "config.methods entry")
  if "metric_averaging" in config:  # a NYUv2 config: its own fields, before any file is read
    nyuv2_problems.check_config(config.normal_loss, config.metric_averaging,
                                config.eval_batch_size)
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
    stages_lib.make_weighting(method, config, 1)
  for stage in config.stages:
    if stage in stages_lib.TRAINING_STAGES:
      stages_lib.descent_transform(stage, config, 1, masks={})


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Records the config in `workdir`, or raises if it holds a run with a different one."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  current = json.loads(config.to_json())
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    if saved != current:
      keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
      details = "; ".join(f"{k}: {saved.get(k)!r} there, {current.get(k)!r} now" for k in keys)
      raise _checks.UserError(
          f"{workdir} holds a run with a different config ({details}). Use another --workdir, "
          "or rerun with the same config to resume it.")
    return
  if parallel.is_primary():
    _files.write_json_atomically(path, current)


class Progress:
  """Per finished epoch: TensorBoard scalars (if `write`) and a line (unless `quiet`)."""

  def __init__(self, quiet: bool, writer_dir: str, task_names: tuple[str, ...], write: bool):
    self.quiet = quiet
    self.writer_dir = writer_dir
    self.task_names = task_names
    self.write = write
    self._writers = {}

  def __call__(self, run_name: str, stage: str, epoch: int, record: dict) -> None:
    if self.write:
      writer = self._writer(run_name)
      for name, values in (("train_loss", record["train_loss"]),
                           ("val_metric", record["val_metric"]),
                           ("task_weight", record["task_weights"])):
        for task, value in zip(self.task_names, values):
          writer.add_scalar(f"{stage}/{name}/{task}", value, epoch)
      writer.flush()
    if not self.quiet:
      metrics = " ".join(f"{m:.3f}" for m in record["val_metric"])
      print(f"  {run_name:>18s} {stage:8s} epoch {epoch + 1:3d}  val {metrics}  "
            f"w {' '.join(f'{w:.2f}' for w in record['task_weights'])}", flush=True)

  def _writer(self, run_name: str):
    if run_name not in self._writers:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._writers[run_name] = SummaryWriter(os.path.join(self.writer_dir, run_name))
    return self._writers[run_name]

  def close(self) -> None:
    for writer in self._writers.values():
      writer.close()


def run(config: ml_collections.ConfigDict, workdir: str, *,
        problem: Callable[[ml_collections.ConfigDict], Problem] = digits_problem,
        on_checkpoint: Callable[[str, int], None] | None = None,
        print_report: bool = True) -> dict:
  """Runs the whole comparison described by `config` in `workdir` and returns the report.

  Args:
    config: see ``experiments/configs/digits.py`` for the fields.
    workdir: where checkpoints, results, the report and the models go; rerunning the same
      config on the same workdir resumes.
    problem: builds the data set and its tasks from the config (and checks the data first).
    on_checkpoint: called as ``(stage, step)`` after every checkpoint save.
    print_report: print the Markdown report at the end.
  """
  validate(config)
  parallel.maybe_initialize_distributed(config.distributed)
  mesh = parallel.data_mesh()
  with _checks.as_user_error():  # batch sizes the devices cannot split
    parallel.check_batch_size(config.batch_size, mesh)
    parallel.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
  started = time.time()
  check_workdir(config, workdir)
  problem = problem(config)
  model = create_model(config.model, problem.num_outputs, **config.model_kwargs.to_dict())
  quiet = (config.quiet or os.environ.get("CI", "").lower() == "true"
           or not parallel.is_primary())
  progress = Progress(quiet, os.path.join(workdir, "tensorboard"), problem.task_names,
                      write=parallel.is_primary())
  exp = run_lib.Experiment(config=config, problem=problem, model=model, mesh=mesh,
                           workdir=workdir, log=progress, on_checkpoint=on_checkpoint)
  per_seed, diverged, dropped = [], [], []
  try:
    for seed in config.seeds:
      dense = run_lib.or_divergence(exp, f"seed{seed}/dense",
                                    lambda s=seed: run_lib.run_dense(exp, s))
      if isinstance(dense, dict):  # the dense reference itself diverged: nothing to compare
        diverged.append({"seed": seed, "runs": {"dense": dense["diverged"]}})
        dropped.append({"seed": seed,
                        "reason": f"its dense reference diverged ({dense['diverged']})"})
        continue
      dense_result, *dense_start = dense
      methods, failures = {}, {}
      for method in config.methods:
        shared = tuple(dense_start) if config.share_pretraining else None
        outcome = run_lib.or_divergence(
            exp, f"seed{seed}/{method}",
            lambda m=method, s=seed, d=shared: run_lib.run_method(exp, m, s, d))
        # A diverged run stays in the report as {"diverged": message}: a loss for its method.
        methods[method] = outcome
        if "diverged" in outcome:
          failures[method] = outcome["diverged"]
        elif not quiet:
          print(f"seed {seed} {method}: test {methods[method]['metrics']}", flush=True)
      if failures:
        diverged.append({"seed": seed, "runs": failures})
        if not quiet:
          print(f"seed {seed}: diverged, counted as a loss for {sorted(failures)}: {failures}",
                flush=True)
      per_seed.append({"seed": seed, "dense": dense_result, "methods": methods})
  finally:
    progress.close()
  if not per_seed:
    raise run_lib.loop.NonFiniteLossError(
        "the dense reference diverged on every seed, so there is nothing to compare ("
        + "; ".join(f"seed {d['seed']}: {d['runs']}" for d in diverged) + ")", workdir)
  notes = [
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
       "(loss_reduction=mean; uncertainty's exactly so where its log-variances are 0)." if config.loss_reduction == "mean" else
       "Losses: combined as the reference code does (loss_reduction=reference): equal sums "
       "them, DWA weights them by K·softmax, uncertainty sums ½e^(−s)L + s/2; min-max keeps "
       "weights summing to one."),
      "Model selection: best mean validation loss over the epochs of the last stage; "
      "test metrics are of that model.",
  ]
  notes += problem.metric_notes()
  for d in diverged:
    for method, message in d["runs"].items():
      if method == "dense":
        notes.append(f"**Left out: seed {d['seed']}**, whose dense reference diverged "
                     f"({message}); no method has a reference on that seed.")
      else:
        notes.append(f"**Diverged: seed {d['seed']}, {method}** ({message}); counted as a "
                     "loss (worst-task retention 0) in the paired comparisons, left out of "
                     f"{method}'s means.")
  report = report_lib.build_report(
      per_seed, tasks=list(problem.task_names), higher_is_better=problem.higher_is_better,
      metric_names=problem.metric_names,
      all_higher_is_better=problem.all_higher_is_better,
      target_sparsity=config.sparsity,
      extra={"notes": notes}, test_counts=problem.test_counts(), dropped=dropped)
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

