"""Typed host-side records: a run's result, a seed's results, and the report's inputs.

Each record is a frozen dataclass with one reader, ``from_json``, which checks a plain dict
(read from disk, or written by hand) once and names what is wrong, and one writer,
``to_json``, which gives back the plain dict that is saved. The files keep their layout:

* `RunResult`: a finished run's ``result.json`` (``mmcompress.app.comparison``).
* `Diverged`: a run whose loss became non-finite, ``{"diverged": message}``
  (``diverged.json``, and a method's entry in a seed's record).
* `SeedRecord`: one seed's ``{"seed", "dense", "methods"}``, the input of the report.
* `DroppedSeed` and `ReportInputs`: the rest of `mmcompress.app.report.build_report`'s arguments.

A field that a result does not have is None, and the writer leaves it out, so an older
``result.json`` (without ``task_metrics`` or the newer ratios) reads and writes unchanged.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Union

import numpy as np

__all__ = ["Diverged", "DroppedSeed", "jsonable", "mapping", "number", "outcome_from_json",
           "RATIOS", "ReportInputs", "RunResult", "SeedRecord"]


def number(value: Any, where: str, finite: bool = True) -> float:
  """`value` as a float; raises a ValueError naming `where` unless it is a (finite) number."""
  try:
    value = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{where} must be a number, got {value!r}.") from None
  if math.isnan(value) or (finite and math.isinf(value)):
    raise ValueError(f"{where} must be a finite number, got {value}.")
  return value


def mapping(value: Any, where: str) -> Mapping:
  """`value`, or a ValueError naming `where` unless it is a dict."""
  if not isinstance(value, Mapping):
    raise ValueError(f"{where} must be a dict, got {type(value).__name__}.")
  return value


def jsonable(value: Any) -> Any:
  """Plain JSON types: numpy/jax scalars and arrays become numbers and lists; inf/nan None."""
  if isinstance(value, Mapping):
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, (str, bool)) or value is None:
    return value
  if isinstance(value, int) and not isinstance(value, bool):
    return value
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if hasattr(value, "__array__"):
    return jsonable(np.asarray(value).tolist())
  if hasattr(value, "to_dict"):  # an experiment config and friends
    return jsonable(value.to_dict())
  return str(value)


def _is_count(value: Any) -> bool:
  """Whether `value` is an int >= 1 (not a bool)."""
  return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= 1


def _parameters(value: Any, where: str) -> dict[str, Any]:
  """A model's parameter counts (`mmcompress.sparsity.summary`), checked."""
  parameters = mapping(value, where)
  for key in ("total_size", "prunable_size", "non_prunable_size"):
    count = number(parameters.get(key), f"{where}[{key!r}]")
    if count < 0 or count != int(count):
      raise ValueError(f"{where}[{key!r}] must be a count >= 0, got {count}.")
  groups = parameters.get("non_prunable_groups", [])
  if not isinstance(groups, Sequence) or not all(isinstance(g, Mapping) for g in groups):
    raise ValueError(f"{where}['non_prunable_groups'] must be a list of dicts.")
  return dict(parameters)


def _task_weights(value: Any, where: str) -> list[list[float]]:
  """A task-weight trajectory: a non-empty list of equally long weight vectors."""
  weights = np.asarray(value, np.float64)
  if weights.ndim != 2 or not weights.size:
    raise ValueError(f"{where}: task_weights must be a non-empty list of vectors (one weight "
                     f"per task, per logged step), got shape {weights.shape}.")
  return value


# The compression ratios of a result: the prunable part's (under its older name and its own)
# and the whole model's (docs/method.md §5).
RATIOS = ("compression_ratio", "prunable_compression_ratio", "whole_model_compression_ratio")


@dataclasses.dataclass(frozen=True)
class RunResult:
  """One finished run: its selected model's test metrics, sparsity, ratios and export.

  Attributes:
    metrics: task -> the task's one metric (its value is checked by `primary_metrics`).
    task_metrics: task -> metric -> value, every metric of each task (None in old results).
    all_metrics: every metric the problem computes, by name (not read by the report).
    val_metrics: task -> the validation metric of the selected model.
    sparsity: the measured fraction of prunable weights removed.
    compression_ratio: the prunable part's ratio, under its older name.
    prunable_compression_ratio: the same, under its own name (None in old results).
    whole_model_compression_ratio: the whole model's ratio (None in old results).
    parameters: the model's parameter counts (`mmcompress.sparsity.summary`).
    task_weights: the task weights per logged epoch, over every training stage.
    selected: ``{"stage", "epoch"}`` of the selected model.
    export: the compressed file's sizes (`mmcompress.export.save`), path and round-trip check.
    pruning: how the prune stage chose the masks (`mmcompress.train.scoring.prune_masks`:
      criterion, aggregate, calibration batches, task weights, seconds); None without one.
    variant: the run's variant of a grid (`mmcompress.train.variants.Variant.to_json`: its
      name, learning-rate scale, the learning rate it used, its clip); None in old results.
  """
  metrics: Mapping[str, Any]
  task_metrics: Mapping[str, Any] | None = None
  all_metrics: Mapping[str, Any] | None = None
  val_metrics: Mapping[str, Any] | None = None
  sparsity: float | None = None
  compression_ratio: float | None = None
  prunable_compression_ratio: float | None = None
  whole_model_compression_ratio: float | None = None
  parameters: Mapping[str, Any] | None = None
  task_weights: list[list[float]] | None = None
  selected: Mapping[str, Any] | None = None
  export: Mapping[str, Any] | None = None
  pruning: Mapping[str, Any] | None = None
  variant: Mapping[str, Any] | None = None

  @classmethod
  def from_json(cls, value: Any, where: str) -> RunResult:
    """Reads a result dict (extra keys are ignored); `where` names it in errors."""
    value = mapping(value, where)
    fields = {"metrics": mapping(value.get("metrics"), f"{where}: metrics")}
    for key in ("all_metrics", "val_metrics", "selected"):
      fields[key] = value.get(key)
    if value.get("task_metrics") is not None:
      fields["task_metrics"] = mapping(value["task_metrics"], f"{where} task_metrics")
    for key in ("sparsity",) + RATIOS:
      if value.get(key) is not None:
        fields[key] = number(value[key], f"{where}: {key}", finite=False)
    if value.get("parameters") is not None:
      fields["parameters"] = _parameters(value["parameters"], f"{where}: parameters")
    if value.get("task_weights") is not None:
      fields["task_weights"] = _task_weights(value["task_weights"], where)
    for key in ("export", "pruning", "variant"):
      if value.get(key) is not None:
        fields[key] = dict(mapping(value[key], f"{where}: {key}"))
    return cls(**fields)

  def to_json(self) -> dict[str, Any]:
    """The result as saved in ``result.json``: every field that is not None."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None}

  def primary_metrics(self, tasks: Sequence[str], where: str) -> dict[str, float]:
    """Task -> its one metric, for every task of `tasks`, each a finite number."""
    missing = [t for t in tasks if t not in self.metrics]
    if missing:
      raise ValueError(f"{where}: metrics has no metric for the tasks {missing}; it has "
                       f"{sorted(self.metrics)}.")
    return {t: number(self.metrics[t], f"{where}: metrics[{t!r}]") for t in tasks}

  def every_metric(self, primary: Mapping[str, float],
                   declared: Mapping[str, Mapping[str, bool]],
                   metric_names: Mapping[str, str], where: str) -> dict[str, dict[str, float]]:
    """Every declared metric of every task, from ``task_metrics``.

    A task's metric of `metric_names` comes from `primary` when ``task_metrics`` lacks it, so
    results written before ``task_metrics`` existed still read.
    """
    values = {}
    for t, names in declared.items():
      entry = None
      if self.task_metrics is not None and t in self.task_metrics:
        entry = mapping(self.task_metrics[t], f"{where} task_metrics[{t!r}]")
      values[t] = {}
      for name in names:
        if entry is not None and name in entry:
          values[t][name] = number(entry[name], f"{where} task_metrics[{t!r}][{name!r}]")
        elif name == metric_names[t]:
          values[t][name] = primary[t]
        else:
          raise ValueError(f"{where} has no {name!r} for the task {t!r} in task_metrics; "
                           "it needs every declared metric of every task.")
    return values

  def weight_rows(self, num_tasks: int, where: str) -> list[list[float]] | None:
    """The task-weight trajectory as float rows of `num_tasks`, or None if there is none."""
    if self.task_weights is None:
      return None
    weights = np.asarray(self.task_weights, np.float64)
    if weights.shape[1] != num_tasks:
      raise ValueError(
          f"{where}: task_weights must be a non-empty list of {num_tasks}-vectors (one "
          f"weight per task, per logged step), got shape {weights.shape}.")
    return weights.tolist()


@dataclasses.dataclass(frozen=True)
class Diverged:
  """A run whose loss (or weights) became non-finite: what happened, where and when."""
  message: str

  @classmethod
  def from_json(cls, value: Any, where: str) -> Diverged:
    value = mapping(value, where)
    if value.get("diverged") is None:
      raise ValueError(f"{where} has no 'diverged' message.")
    return cls(str(value["diverged"]))

  def to_json(self) -> dict[str, str]:
    return {"diverged": self.message}


Outcome = Union[RunResult, Diverged]


def outcome_from_json(value: Any, where: str) -> Outcome:
  """A method's entry of a seed: `Diverged` when it holds a ``diverged`` message."""
  if isinstance(value, Mapping) and value.get("diverged") is not None:
    return Diverged.from_json(value, where)
  return RunResult.from_json(value, where)


@dataclasses.dataclass(frozen=True)
class SeedRecord:
  """One seed: the dense reference's result and each method's outcome, in the config's order.

  Attributes:
    seed: the seed (plain JSON: a numpy integer becomes an int).
    dense: the dense reference's result.
    methods: method name -> its result, or `Diverged`.
  """
  seed: Any
  dense: RunResult
  methods: Mapping[str, Outcome]

  @classmethod
  def from_json(cls, value: Any, index: int) -> SeedRecord:
    """Reads ``{"seed", "dense", "methods"}``, the `index`-th seed of a list."""
    value = mapping(value, f"per_seed[{index}]")
    if "seed" not in value:
      raise ValueError(f"per_seed[{index}] has no 'seed'.")
    seed = jsonable(value["seed"])
    methods = mapping(value.get("methods"), f"seed {seed!r}: methods")
    return cls(seed=seed, dense=RunResult.from_json(value.get("dense"), f"seed {seed!r}: dense"),
               methods={name: outcome_from_json(outcome, f"seed {seed!r}, method {name!r}")
                        for name, outcome in methods.items()})

  def to_json(self) -> dict[str, Any]:
    return {"seed": self.seed, "dense": self.dense.to_json(),
            "methods": {name: outcome.to_json() for name, outcome in self.methods.items()}}


@dataclasses.dataclass(frozen=True)
class DroppedSeed:
  """A seed left out for every method (its dense reference diverged), and why."""
  seed: Any
  reason: str = ""

  @classmethod
  def from_json(cls, value: Any, index: int) -> DroppedSeed:
    value = mapping(value, f"dropped[{index}]")
    if "seed" not in value:
      raise ValueError(
          f"dropped[{index}] has no 'seed'; give each as {{'seed': ..., 'reason': ...}}.")
    return cls(value["seed"], str(value.get("reason", "")))

  def to_json(self) -> dict[str, Any]:
    return {"seed": self.seed, "reason": self.reason}


def _declared(all_higher_is_better: Mapping[str, Mapping[str, bool]] | None,
              tasks: Sequence[str], metric_names: Mapping[str, str],
              orientation: Mapping[str, bool]) -> dict[str, dict[str, bool]]:
  """Every metric of every task with its orientation; one metric per task when None."""
  if all_higher_is_better is None:
    return {t: {str(metric_names[t]): orientation[t]} for t in tasks}
  mapping(all_higher_is_better, "all_higher_is_better")
  declared = {}
  for t in tasks:
    where = f"all_higher_is_better[{t!r}]"
    if t not in all_higher_is_better:
      raise ValueError(f"all_higher_is_better has no entry for the task {t!r}; declare every "
                       "metric of every task.")
    entry = mapping(all_higher_is_better[t], where)
    if not entry:
      raise ValueError(f"{where} is empty; declare at least the task's metric "
                       f"{metric_names[t]!r}.")
    declared[t] = {}
    for name, higher in entry.items():
      if not isinstance(higher, (bool, np.bool_)):
        raise ValueError(f"{where}[{name!r}] must be True or False, got {higher!r}.")
      declared[t][str(name)] = bool(higher)
    primary = str(metric_names[t])
    if declared[t].get(primary) != orientation[t]:  # missing (None) or the other orientation
      raise ValueError(f"{where} must hold the task's metric {primary!r} with "
                       f"higher_is_better={orientation[t]}, got {declared[t]}.")
  return declared


def _orientation(tasks: Sequence[str], higher_is_better: Any,
                 metric_names: Any) -> dict[str, bool]:
  """Task -> whether higher is better, after checking both per-task dicts cover `tasks`."""
  for name, value in (("higher_is_better", higher_is_better), ("metric_names", metric_names)):
    missing = [t for t in tasks if t not in mapping(value, name)]
    if missing:
      raise ValueError(f"{name} has no entry for the tasks {missing}.")
  orientation = {}
  for t in tasks:
    if not isinstance(higher_is_better[t], (bool, np.bool_)):
      raise ValueError(
          f"higher_is_better[{t!r}] must be True or False, got {higher_is_better[t]!r}.")
    orientation[t] = bool(higher_is_better[t])
  return orientation


def _test_counts(value: Any, tasks: Sequence[str]) -> dict[str, int] | None:
  """Task -> its number of test examples, each an int >= 1; None stays None."""
  if value is None:
    return None
  counts = {}
  for t in tasks:
    n = mapping(value, "test_counts").get(t)
    if not _is_count(n):
      raise ValueError(f"test_counts[{t!r}] must be the number of test examples of that task "
                       f"(an int >= 1), got {n!r}.")
    counts[t] = int(n)
  return counts


@dataclasses.dataclass(frozen=True)
class ReportInputs:
  """What the report needs besides the seeds' records (`mmcompress.app.report.build_report`).

  Attributes:
    tasks: the task names, in the order to report them.
    higher_is_better: task -> whether a higher metric is better.
    metric_names: task -> the name of its one metric.
    target_sparsity: the target fraction of prunable weights removed, in [0, 1).
    all_higher_is_better: task -> metric -> orientation, for every metric of every task (one
      per task, that of `metric_names`, when none were declared).
    extra: anything else to carry along and show in the header.
    test_counts: task -> how many test examples its metric averages over, or None.
    dropped: seeds left out for every method.
  """
  tasks: tuple[str, ...]
  higher_is_better: Mapping[str, bool]
  metric_names: Mapping[str, str]
  target_sparsity: float
  all_higher_is_better: Mapping[str, Mapping[str, bool]]
  extra: Mapping[str, Any]
  test_counts: Mapping[str, int] | None
  dropped: tuple[DroppedSeed, ...]

  @classmethod
  def from_json(cls, value: Mapping[str, Any]) -> ReportInputs:
    """Reads `build_report`'s keyword arguments (``all_higher_is_better``, ``extra``,
    ``test_counts`` and ``dropped`` may be missing or None; ``dropped`` may hold
    `DroppedSeed` records already)."""
    tasks = list(value.get("tasks") or ())
    if not tasks or not all(isinstance(t, str) for t in tasks) or len(set(tasks)) != len(tasks):
      raise ValueError(f"tasks must be a non-empty list of distinct names, got {tasks!r}.")
    metric_names = value.get("metric_names")
    orientation = _orientation(tasks, value.get("higher_is_better"), metric_names)
    declared = _declared(value.get("all_higher_is_better"), tasks, metric_names, orientation)
    target = number(value.get("target_sparsity"), "target_sparsity")
    if not 0.0 <= target < 1.0:
      raise ValueError(f"target_sparsity must be in [0, 1) (0.975 = 40x), got "
                       f"{value.get('target_sparsity')!r}.")
    extra = value.get("extra")
    return cls(tasks=tuple(tasks), higher_is_better=orientation,
               metric_names={t: str(metric_names[t]) for t in tasks},
               target_sparsity=target, all_higher_is_better=declared,
               extra=dict(mapping(extra, "extra")) if extra is not None else {},
               test_counts=_test_counts(value.get("test_counts"), tasks),
               dropped=tuple(d if isinstance(d, DroppedSeed) else DroppedSeed.from_json(d, i)
                             for i, d in enumerate(value.get("dropped") or ())))

  def to_json(self) -> dict[str, Any]:
    return {"tasks": list(self.tasks), "higher_is_better": dict(self.higher_is_better),
            "metric_names": dict(self.metric_names), "target_sparsity": self.target_sparsity,
            "all_higher_is_better": {t: dict(m) for t, m in self.all_higher_is_better.items()},
            "extra": dict(self.extra), "test_counts": self.test_counts,
            "dropped": [d.to_json() for d in self.dropped]}
