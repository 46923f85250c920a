"""The report of a compression experiment: paired seeds, per-task retention, and plain words.

Input: one `mmcompress.app.records.SeedRecord` per seed, or its JSON form, a dict (read and
checked by `SeedRecord.from_json`), each with the dense model's metrics and, per method (a task
weighting such as "equal" or "minmax"), the compressed model's metrics, its measured sparsity
and compression ratios (that of the prunable part, also under the older name
"compression_ratio", and that of the whole model), its export sizes and, optionally, its
task-weight trajectory; the model's parameter counts ("parameters", from
`mmcompress.sparsity.summary`) may come with the dense model or any method::

    {"seed": 0,
     "dense": {"metrics": {"taskA": 0.95, "taskB": 0.9},
               "task_metrics": {"taskA": {"acc": 0.95}, "taskB": {"mae": 0.9, "rmse": 1.2}},
               "parameters": {"total_size": ..., "prunable_size": ..., ...}},
     "methods": {"equal": {"metrics": {...}, "task_metrics": {...}, "sparsity": 0.975,
                           "compression_ratio": 40.0, "prunable_compression_ratio": 40.0,
                           "whole_model_compression_ratio": 16.6,
                           "export": {"file_bytes": ..., "prunable_ratio": ...},
                           "task_weights": [[0.5, 0.5], ...]},
                 "minmax": {...}}}

A method whose loss became non-finite on a seed gives ``{"diverged": message}`` there instead:
the seed is kept, and the divergence counts as a loss (worst-task retention 0) in the paired
comparisons.
``metrics`` holds the one metric that stands for each task; ``task_metrics`` every metric of
each task (needed only when a task has more than one, see `build_report`'s
``all_higher_is_better``). Δm and the worst-task retention average all metrics of a task
before the tasks, as LibMTL does; the same figures over the one metric per task are kept
beside them (``..._one_metric``), and the two coincide when every task has one metric.

Every method is compared with the dense model *of its own seed* (the methods share the dense
pretraining of a seed), so the per-seed numbers are paired, and min-max is compared with
equal weighting seed by seed rather than through means alone: the effect is about a point and
the seed-to-seed spread is of the same size (docs/running.md, "Measured: ten seeds, both task sets").

`build_report` computes a JSON-serialisable dict, `to_markdown` renders it as a table and one
sentence, `mmcompress.app.plots` draws the PNGs, and `write` puts all four in
a directory.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypedDict

import numpy as np

from mmcompress import _files
from mmcompress.app import plots, records
from mmcompress.problems import metrics as metrics_lib

__all__ = ["ALPHA", "BestMethod", "build_report", "Comparison", "CriterionDifference", "EQUAL",
           "from_records", "MethodSummary", "MINMAX", "MinmaxMinusEqual", "one_example_retention",
           "PairedDifference", "Report", "sign_test", "summary_sentence", "to_markdown",
           "write"]

MINMAX = "minmax"
EQUAL = "equal"
# Paired differences smaller than this are float noise, counted as ties.
_TIE = 1e-9
_RATIOS = records.RATIOS
# A verdict needs the two-sided sign test over seeds below this p-value (95 %).
ALPHA = 0.05


def _mean(values: Sequence[float]) -> float:
  return float(np.mean(np.asarray(values, np.float64)))


# ----------------------------------------------------------------------------- its shape
# The report's JSON, typed: what `build_report` returns (plain JSON types; an infinite value
# is None). Every mean is over seeds of per-seed values.


class PairedDifference(TypedDict):
  """`first` − `second`, worst-task retention, seed by seed (`_paired`)."""
  metric: str                   # "worst_task_retention"
  seeds: list[Any]
  differences: list[float]      # one per seed; a diverged seed's retention counts as 0
  mean: float
  min: float
  max: float
  better: int                   # seeds whose difference exceeds their threshold
  worse: int
  tied: int
  num_seeds: int
  thresholds: list[float]       # per seed: one test example's worth of retention
  threshold: float              # their mean
  p_value: float                # the exact two-sided sign test over the untied seeds
  direction: int                # +1 / −1 when shown (p < ALPHA, |mean| > threshold), else 0


class MinmaxMinusEqual(PairedDifference):
  """Min-max − equal, with its verdict."""
  winner: str | None            # "minmax", "equal", or None when nothing is shown
  diverged: dict[str, list[Any]]  # "minmax" / "equal" -> the seeds it diverged on


class CriterionDifference(PairedDifference):
  """A task-aware criterion − magnitude masks, under the same weighting."""
  versus: str                   # the weighting with magnitude masks


class BestMethod(TypedDict):
  """The method of the highest mean worst-task retention (diverged seeds as 0)."""
  method: str
  value: float
  tied_with: list[str]          # the methods within the threshold of it
  shown: bool                   # shown ahead of every other method
  versus: dict[str, dict[str, Any]]  # method -> the main fields of its `PairedDifference`


class Comparison(TypedDict):
  """The paired comparisons of a report."""
  # ``per_task``: one test example's worth of each task's retention (mean over seeds), and
  # the ``test_counts``; both None without counts.
  effect_threshold: dict[str, Any]
  best_worst_task_retention: BestMethod | None
  ranking: list[dict[str, Any]]  # {"method", "worst_task_retention"}, best first
  minmax_minus_equal: MinmaxMinusEqual | None  # None unless both are present
  criterion_minus_magnitude: dict[str, CriterionDifference]  # "w+criterion" − "w"


class _MethodMeans(TypedDict):
  """What every `MethodSummary` holds."""
  metrics: dict[str, float | None]                  # task -> mean of its one metric
  task_metrics: dict[str, dict[str, float | None]]  # task -> metric -> mean
  retention: dict[str, float | None]         # task -> mean retention (all its metrics)
  worst_task_retention: float | None
  delta_m: float | None                      # percent, positive: better than dense
  retention_one_metric: dict[str, float | None]  # the same over the one metric per task
  worst_task_retention_one_metric: float | None
  delta_m_one_metric: float | None
  sparsity: float | None
  compression_ratio: float | None            # the prunable part's (its older name)
  prunable_compression_ratio: float | None
  whole_model_compression_ratio: float | None  # None unless every seed reports it
  export: dict[str, float] | None            # the exports' sizes, means; None: not reported
  # Each seed's own values of the fields above (not the trajectory), with its
  # ``worst_task`` and ``worst_task_one_metric``.
  per_seed: list[dict[str, Any]]
  diverged: list[dict[str, Any]]             # {"seed", "message"}; empty if it never did


class MethodSummary(_MethodMeans, total=False):
  """One method over the seeds (`_MethodMeans`; a mean is None where the method diverged on
  every seed), and the trajectory of its task weights if it logs one."""
  task_weights: list[list[float]]            # the first seed's trajectory
  task_weights_seed: Any                     # that seed


class Report(TypedDict):
  """A compression experiment's report (`build_report`; the ``report.json`` a comparison
  writes adds its ``config``, ``diverged`` runs, ``variant`` and ``pinned`` variants)."""
  tasks: list[str]
  metric_names: dict[str, str]
  higher_is_better: dict[str, bool]
  all_higher_is_better: dict[str, dict[str, bool]]
  conventions: dict[str, str]       # how Δm and the retention were computed, in words
  target_sparsity: float
  target_compression_ratio: float
  seeds: list[Any]
  extra: dict[str, Any]             # the caller's (config, wall time, notes)
  dense: dict[str, Any]             # "metrics", "task_metrics" (means), "per_seed"
  methods: dict[str, MethodSummary]
  comparison: Comparison
  # Parameter counts, what stays dense, the whole-model cap of the dense part and whether
  # the target is reachable on the whole model (`_whole_model`); None without "parameters".
  whole_model: dict[str, Any] | None
  dropped_seeds: list[dict[str, Any]]  # {"seed", "reason"}: seeds left out for every method


# ----------------------------------------------------------------------------- the report


def _method_seed(result: records.RunResult, seed: Any, name: str, dense: Mapping[str, Any],
                 inputs: records.ReportInputs) -> dict[str, Any]:
  """One method's numbers on one seed, relative to that seed's dense model.

  `dense` is that seed's dense row (``metrics`` and ``task_metrics``). The retention of a task
  is the mean retention of its declared metrics and Δm is LibMTL's over all of them; the
  ``_one_metric`` fields are the same figures over the task's one metric of ``metrics``.
  """
  tasks, declared, higher = inputs.tasks, inputs.all_higher_is_better, inputs.higher_is_better
  where = f"seed {seed!r}, method {name!r}"
  values = result.primary_metrics(tasks, where)
  every = result.every_metric(values, declared, inputs.metric_names, f"{where}:")
  kept, kept_one = {}, {}
  for t in tasks:
    try:
      kept[t] = metrics_lib.task_retention(every[t], dense["task_metrics"][t], declared[t])
      kept_one[t] = metrics_lib.retention(values[t], dense["metrics"][t], higher[t])
    except ValueError as e:
      raise ValueError(f"{where}, task {t!r}: {e}") from None
  worst = min(tasks, key=lambda t: kept[t])
  worst_one = min(tasks, key=lambda t: kept_one[t])
  row: dict[str, Any] = {
      "seed": seed,
      "metrics": values,
      "task_metrics": every,
      "retention": kept,
      "worst_task": worst,
      "worst_task_retention": kept[worst],
      "delta_m": metrics_lib.delta_m_all(every, dense["task_metrics"], declared),
      "retention_one_metric": kept_one,
      "worst_task_one_metric": worst_one,
      "worst_task_retention_one_metric": kept_one[worst_one],
      "delta_m_one_metric": metrics_lib.delta_m(values, dense["metrics"],
                                                {t: higher[t] for t in tasks}),
  }
  if dense.get("val_metrics") is not None and set(tasks) <= set(result.val_metrics or ()):
    # Model selection's figure (a study tunes its knobs by it): the worst task's retention
    # on the validation split, over each task's one metric.
    try:
      row["val_worst_task_retention"] = min(
          metrics_lib.retention(float(result.val_metrics[t]), dense["val_metrics"][t],
                                higher[t]) for t in tasks)
    except ValueError as e:
      raise ValueError(f"{where}, validation: {e}") from None
  for key in ("sparsity",) + _RATIOS:
    if getattr(result, key) is not None:
      row[key] = float(getattr(result, key))
  if result.export is not None:
    row["export"] = dict(result.export)
  weights = result.weight_rows(len(tasks), where)
  if weights is not None:
    row["task_weights"] = weights
  return row


def _mean_task_metrics(rows: list[dict[str, Any]], tasks: Sequence[str]) -> dict[str, Any]:
  """Task -> metric -> the mean over seeds of the rows' ``task_metrics``."""
  return {t: {m: _mean([r["task_metrics"][t][m] for r in rows])
              for m in rows[0]["task_metrics"][t]} for t in tasks}


def _conventions(declared: Mapping[str, Mapping[str, bool]],
                 metric_names: Mapping[str, str]) -> str:
  """One sentence: how Δm and the worst-task retention were computed, and which sign is better."""
  count = sum(len(m) for m in declared.values())
  ratio = ("the oriented ratio compressed / dense (dense / compressed where lower is better; "
           "below 1 is worse)")
  if count == len(declared):
    return (f"Δm per LibMTL over the {count} metrics (one per task), in percent: positive is "
            "better than dense, negative is worse (tables that print Δm% ↓ use the opposite "
            f"sign); worst-task retention: the lowest over tasks of {ratio}. One metric per "
            "task, so the one-metric figures are the same.")
  primary = ", ".join(f"{t}: {metric_names[t]}" for t in declared)
  return (f"Δm per LibMTL over all {count} metrics (each oriented, averaged within its task, "
          f"then over the {len(declared)} tasks), in percent: positive is better than dense, "
          f"negative is worse (tables that print Δm% ↓ use the opposite sign); worst-task "
          f"retention: the lowest over tasks of the mean over the task's metrics of {ratio}. "
          f"One-metric Δm and worst-task retention ({primary}): the last tables.")


def _summarise(name: str, rows: list[dict[str, Any]], tasks: Sequence[str]) -> dict[str, Any]:
  """Means over seeds of one method's per-seed rows."""
  summary: dict[str, Any] = {
      "metrics": {t: _mean([r["metrics"][t] for r in rows]) for t in tasks},
      "task_metrics": _mean_task_metrics(rows, tasks),
      "retention": {t: _mean([r["retention"][t] for r in rows]) for t in tasks},
      "worst_task_retention": _mean([r["worst_task_retention"] for r in rows]),
      "delta_m": _mean([r["delta_m"] for r in rows]),
      "retention_one_metric": {t: _mean([r["retention_one_metric"][t] for r in rows])
                               for t in tasks},
      "worst_task_retention_one_metric": _mean([r["worst_task_retention_one_metric"]
                                                for r in rows]),
      "delta_m_one_metric": _mean([r["delta_m_one_metric"] for r in rows]),
  }
  for key in ("sparsity", "compression_ratio", "export"):
    present = [key in r for r in rows]
    if any(present) and not all(present):
      seeds = [r["seed"] for r in rows if key not in r]
      raise ValueError(
          f"method {name!r} reports {key!r} on some seeds but not on seeds {seeds}; report it "
          "on every seed or on none.")
  for key in ("sparsity", "compression_ratio"):
    summary[key] = _mean([r[key] for r in rows]) if key in rows[0] else None
  for key in _RATIOS[1:]:  # newer fields: None unless every seed has them (older results)
    summary[key] = _mean([r[key] for r in rows]) if all(key in r for r in rows) else None
  if "export" in rows[0]:
    numeric = [k for k, v in rows[0]["export"].items()
               if all(isinstance(r["export"].get(k), (int, float, np.number))
                      and not isinstance(r["export"].get(k), bool) for r in rows)]
    summary["export"] = {k: _mean([float(r["export"][k]) for r in rows]) for k in numeric}
  else:
    summary["export"] = None
  with_weights = [r for r in rows if "task_weights" in r]
  if with_weights:
    summary["task_weights"] = with_weights[0]["task_weights"]
    summary["task_weights_seed"] = with_weights[0]["seed"]
  summary["per_seed"] = [{k: v for k, v in r.items() if k != "task_weights"} for r in rows]
  return summary


# ----------------------------------------------------------------------------- the verdict


def sign_test(better: int, worse: int) -> float:
  """The exact two-sided sign test over paired seeds, ties left out beforehand.

  Args:
    better: how many seeds the first method won.
    worse: how many seeds it lost.

  Returns:
    The chance that fair coin flips split ``n = better + worse`` seeds at least this
    unevenly: ``P(min(X, n - X) <= min(better, worse))`` for X ~ Binomial(n, 1/2), which is
    twice the smaller tail, at most 1; 1.0 when every seed is a tie.

  Raises:
    ValueError: if a count is not a non-negative int.
  """
  for name, value in (("better", better), ("worse", worse)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
      raise ValueError(f"{name} must be a count (an int >= 0), got {value!r}.")
  n = int(better) + int(worse)
  if n == 0:
    return 1.0
  tail = sum(math.comb(n, i) for i in range(min(int(better), int(worse)) + 1))
  return min(1.0, 2 * tail / 2**n)


def one_example_retention(dense: Mapping[str, float], test_counts: Mapping[str, int],
                          higher_is_better: Mapping[str, bool]) -> dict[str, float]:
  """One test example's worth of each task's retention (compressed / dense).

  A higher-is-better metric of this package is a fraction in [0, 1] (accuracy, IoU, a share
  of pixels within an angle), which one of n test examples moves by at most 1/n: that is
  1/(n * dense) of retention. A lower-is-better metric is a mean error over n examples, which
  one example of average error moves by 1/n of itself: 1/n of retention.

  Both are approximations where they are used: the threshold is computed on each task's one
  metric of `metric_names` while the worst task is chosen by the mean over all its metrics,
  and a metric pooled over pixels (mIoU on NYUv2) can move by more than 1/n when one image
  holds most of a rare class. It is a floor on what a difference must exceed, not a test.

  Args:
    dense: task -> the dense model's metric.
    test_counts: task -> how many test examples the metric averages over.
    higher_is_better: task -> orientation.

  Returns:
    task -> one example's worth of retention.
  """
  out = {}
  for t, n in test_counts.items():
    out[t] = 1.0 / (n * abs(dense[t])) if higher_is_better[t] else 1.0 / n
  return out


def _one_example_per_seed(dense_rows: Sequence[Mapping[str, Any]],
                          inputs: records.ReportInputs
                          ) -> tuple[list[dict[str, float]] | None, dict[str, Any]]:
  """Each seed's one-example retention per task (None without test counts), and a summary."""
  tasks, orientation, counts = inputs.tasks, inputs.higher_is_better, inputs.test_counts
  if counts is None:
    return None, {"per_task": None, "test_counts": None}
  per_seed = []
  for row in dense_rows:
    if any(orientation[t] and row["metrics"][t] == 0.0 for t in tasks):
      raise ValueError(f"seed {row['seed']!r}: a dense metric of 0 has no retention; check "
                       "the dense reference of that seed.")
    per_seed.append(one_example_retention(row["metrics"], counts, orientation))
  summary = {"per_task": {t: _mean([p[t] for p in per_seed]) for t in tasks},
             "test_counts": dict(counts)}
  return per_seed, summary


def _seed_thresholds(one_example: Sequence[Mapping[str, float]] | None,
                     worst_first: Sequence[str | None], worst_second: Sequence[str | None]
                     ) -> list[float]:
  """Per seed, one test example of the two methods' worst tasks, as worst-task retention.

  Their worst-task retentions differ through those tasks, so the larger of the two tasks'
  one-example retentions is the smallest difference that counts; a diverged run has no
  worst task (when both diverged, every task is a candidate). 0 without test counts.
  """
  if one_example is None:
    return [0.0] * len(worst_first)
  out = []
  for one, a, b in zip(one_example, worst_first, worst_second):
    candidates = [t for t in (a, b) if t is not None] or list(one)
    out.append(max(one[t] for t in candidates))
  return out


def _direction(better: int, worse: int, mean: float, threshold: float) -> int:
  """+1 or -1 when the paired seeds show a difference, 0 when they do not.

  Shown means both: the sign test over the untied seeds gives p < `ALPHA`, and the mean
  difference exceeds `threshold` (one test example's worth) in the same direction.
  """
  if sign_test(better, worse) >= ALPHA or abs(mean) <= threshold + _TIE:
    return 0
  if mean > 0 and better > worse:
    return 1
  if mean < 0 and worse > better:
    return -1
  return 0


def _paired(first: Sequence[float], second: Sequence[float], seeds: Sequence[Any],
            thresholds: Sequence[float]) -> PairedDifference:
  """`first` minus `second`, worst-task retention, seed by seed, with the paired verdict.

  A seed is a tie when its difference is at most its threshold (one test example's worth,
  `_seed_thresholds`); the untied seeds go into the sign test (`sign_test`), and
  ``direction`` is +1 / -1 when the difference is shown (`_direction`: the mean difference
  must also exceed the mean threshold), else 0.
  """
  diffs = [float(a) - float(b) for a, b in zip(first, second)]
  better = sum(d > t + _TIE for d, t in zip(diffs, thresholds))
  worse = sum(d < -t - _TIE for d, t in zip(diffs, thresholds))
  mean, threshold = _mean(diffs), _mean(thresholds)
  return {
      "metric": "worst_task_retention",
      "seeds": list(seeds),
      "differences": diffs,
      "mean": mean,
      "min": min(diffs),
      "max": max(diffs),
      "better": better,
      "worse": worse,
      "tied": len(diffs) - better - worse,
      "num_seeds": len(diffs),
      "threshold": threshold,
      "thresholds": [float(t) for t in thresholds],
      "p_value": sign_test(better, worse),
      "direction": _direction(better, worse, mean, threshold),
  }


def _model_parameters(per_seed: Sequence[records.SeedRecord]) -> dict[str, Any] | None:
  """The first parameter counts, of a dense model or a method; None if no result has any."""
  for record in per_seed:
    for run in [record.dense] + list(record.methods.values()):
      if isinstance(run, records.RunResult) and run.parameters is not None:
        return dict(run.parameters)
  return None


def _whole_model(parameters: Mapping[str, Any] | None, methods: Mapping[str, Any],
                 target: float) -> dict[str, Any] | None:
  """The whole-model view of the target: what the dense part caps, what the methods reached.

  Returns None without parameter counts. Otherwise ``total_size``, ``prunable_size``,
  ``non_prunable_size``, ``cap`` (total / non-prunable, the whole-model compression with every
  prunable weight removed), ``target_ratio`` (the prunable-part target, 1 / (1 - target)),
  ``reachable`` (whether the whole model can reach that ratio at all: cap > target_ratio),
  ``sparsity_for_target`` (the prunable sparsity at which it would, None if it cannot) and
  ``measured`` (the methods' mean whole-model ratios, name -> value, those that report one).
  """
  if parameters is None:
    return None
  total, prunable = int(parameters["total_size"]), int(parameters["prunable_size"])
  dense = int(parameters["non_prunable_size"])
  target_ratio = 1.0 / (1.0 - target)
  cap = total / dense if dense else math.inf
  reachable = cap > target_ratio and prunable > 0
  return {
      "total_size": total,
      "prunable_size": prunable,
      "non_prunable_size": dense,
      "non_prunable_groups": list(parameters.get("non_prunable_groups", [])),
      "cap": cap,
      "target_ratio": target_ratio,
      "reachable": reachable,
      # total / T = dense + (1 - s) * prunable, solved for s.
      "sparsity_for_target": (1.0 - (total / target_ratio - dense) / prunable
                              if reachable else None),
      "measured": {name: info["whole_model_compression_ratio"] for name, info in methods.items()
                   if info.get("whole_model_compression_ratio") is not None},
  }


def _all_diverged(tasks: Sequence[str],
                  declared: Mapping[str, Mapping[str, bool]]) -> dict[str, Any]:
  """The summary of a method that diverged on every seed: no number to show."""
  nothing = {t: None for t in tasks}
  return {"metrics": dict(nothing), "task_metrics": {t: {m: None for m in declared[t]}
                                                     for t in tasks},
          "retention": dict(nothing),
          "worst_task_retention": None, "delta_m": None,
          "retention_one_metric": dict(nothing), "worst_task_retention_one_metric": None,
          "delta_m_one_metric": None, "sparsity": None, **{k: None for k in _RATIOS},
          "export": None, "per_seed": []}


def build_report(per_seed: Sequence[records.SeedRecord | Mapping[str, Any]],
                 *,
                 tasks: Sequence[str],
                 higher_is_better: Mapping[str, bool],
                 metric_names: Mapping[str, str],
                 target_sparsity: float,
                 all_higher_is_better: Mapping[str, Mapping[str, bool]] | None = None,
                 extra: Mapping[str, Any] | None = None,
                 test_counts: Mapping[str, int] | None = None,
                 dropped: Sequence[Mapping[str, Any]] = ()) -> Report:
  """Aggregates per-seed results into one JSON-serialisable report.

  Retention is compressed / dense per metric and seed, oriented so that below 1 is worse
  (`mmcompress.problems.metrics.retention`), and a task's retention is the mean over its metrics
  (`mmcompress.problems.metrics.task_retention`); the worst-task retention of a seed is its minimum
  over tasks; Δm is `mmcompress.problems.metrics.delta_m_all` in percent, LibMTL's Δp over all metrics
  (positive: better than dense). The ``_one_metric`` fields are the same figures over the one
  metric per task of `metric_names`. Every mean is over seeds of per-seed values, so the mean
  worst-task retention is the mean of each seed's minimum (not the minimum of the mean
  retentions).

  A method's result on a seed may be ``{"diverged": message}`` (its loss became
  non-finite): that seed stays in the report, the method's per-task means leave it out, and
  in every paired comparison (the ranking, the best method, min-max minus equal) its
  worst-task retention on that seed is 0, a loss.

  A winner is named only when it is shown: the exact two-sided sign test over the untied
  seeds gives p < 0.05 and the mean paired difference exceeds the mean of the seeds'
  thresholds. A seed's threshold is one test example's worth of worst-task retention
  (`one_example_retention`) on the worst tasks of the two methods compared, the larger of
  the two; a seed whose difference is no larger is a tie.

  Args:
    per_seed: one `mmcompress.app.records.SeedRecord` or result dict per seed (see the module
      docstring); every seed must have the same methods, and each metrics dict every task
      (extra metric keys are ignored).
    tasks: the task names, in the order to report them.
    higher_is_better: task -> whether a higher metric is better.
    metric_names: task -> the metric's name, e.g. "accuracy" or "MAE".
    target_sparsity: the target fraction of prunable weights removed, in [0, 1).
    all_higher_is_better: task -> {metric: higher is better} for every metric of each task,
      the one of `metric_names` included (with the same orientation); every result then
      needs ``task_metrics`` with them (a task's metric of `metric_names` may come from
      ``metrics`` instead). None: one metric per task, the one of `metric_names`.
    extra: anything else to carry along and show in the header (config, wall time, notes);
      made JSON-serialisable (numpy values become numbers, unknown objects strings).
    test_counts: task -> the number of test examples its metric averages over
      (`Problem.test_counts`); without it a difference is any difference above float noise.
    dropped: seeds left out for every method, as ``{"seed": ..., "reason": ...}`` (a seed
      whose dense reference diverged has nothing to be compared with); the sentence names
      them.

  Returns:
    The `Report`: plain JSON types, an infinite value as None.

  Raises:
    ValueError: naming the seed, method and task of anything missing or malformed.
  """
  inputs = records.ReportInputs.from_json({
      "tasks": tasks, "higher_is_better": higher_is_better, "metric_names": metric_names,
      "target_sparsity": target_sparsity, "all_higher_is_better": all_higher_is_better,
      "extra": extra, "test_counts": test_counts, "dropped": dropped})
  if isinstance(per_seed, Mapping) or not isinstance(per_seed, Sequence) or not per_seed:
    raise ValueError("per_seed must be a non-empty list with one result dict per seed.")
  read = [r if isinstance(r, records.SeedRecord) else records.SeedRecord.from_json(r, i)
          for i, r in enumerate(per_seed)]
  return from_records(read, inputs)


def _method_names(per_seed: Sequence[records.SeedRecord]) -> list[str]:
  """The methods every seed ran (in the first seed's order), after checking the seeds pair."""
  seeds = [r.seed for r in per_seed]
  if len(set(map(json.dumps, seeds))) != len(seeds):
    raise ValueError(f"per_seed has repeated seeds {seeds}; give each seed once.")
  method_names = list(per_seed[0].methods)
  if "dense" in method_names:
    raise ValueError("a method may not be called 'dense', the name of the uncompressed row; "
                     "rename it.")
  for record in per_seed:
    if set(record.methods) != set(method_names):
      raise ValueError(
          f"seed {record.seed!r} has the methods {sorted(record.methods)}, seed {seeds[0]!r} "
          f"has {sorted(method_names)}; every seed must run the same methods (paired seeds).")
  return method_names


def _dense_row(record: records.SeedRecord, inputs: records.ReportInputs) -> dict[str, Any]:
  """A seed's dense model: its one metric and every metric of each task."""
  where = f"seed {record.seed!r}: dense"
  primary = record.dense.primary_metrics(inputs.tasks, where)
  row = {"seed": record.seed, "metrics": primary,
         "task_metrics": record.dense.every_metric(primary, inputs.all_higher_is_better,
                                                   inputs.metric_names, where)}
  if set(inputs.tasks) <= set(record.dense.val_metrics or ()):
    row["val_metrics"] = {t: float(record.dense.val_metrics[t]) for t in inputs.tasks}
  return row


def _method_summary(name: str, per_seed: Sequence[records.SeedRecord],
                    dense_rows: Sequence[Mapping[str, Any]], inputs: records.ReportInputs
                    ) -> tuple[dict[str, Any], list[float], list[str | None]]:
  """One method over the seeds: its summary, and per seed its worst-task retention for the
  paired comparisons (0 where it diverged) and its worst task (None where it diverged)."""
  rows, failed, values, worst = [], [], [], []
  for record, dense_row in zip(per_seed, dense_rows):
    outcome = record.methods[name]
    if isinstance(outcome, records.Diverged):
      failed.append({"seed": record.seed, "message": outcome.message})
      values.append(0.0)  # a divergence is a loss in every paired comparison
      worst.append(None)
      continue
    rows.append(_method_seed(outcome, record.seed, name, dense_row, inputs))
    values.append(rows[-1]["worst_task_retention"])
    worst.append(rows[-1]["worst_task"])
  summary = (_summarise(name, rows, inputs.tasks) if rows
             else _all_diverged(inputs.tasks, inputs.all_higher_is_better))
  summary["diverged"] = failed
  return summary, values, worst


def _best(ranking: Sequence[str], means: Mapping[str, float],
          paired: Callable[[str, str], PairedDifference]) -> BestMethod | None:
  """The method of the highest mean worst-task retention, and how it compares with the rest."""
  if not ranking:
    return None
  top = ranking[0]
  versus = {m: paired(top, m) for m in ranking[1:]}
  return {"method": top, "value": means[top],
          "tied_with": [m for m in ranking[1:]
                        if means[top] - means[m] <= versus[m]["threshold"] + _TIE],
          "shown": bool(versus) and all(v["direction"] == 1 for v in versus.values()),
          "versus": {m: {k: v[k] for k in ("mean", "better", "worse", "tied", "threshold",
                                           "p_value", "direction")}
                     for m, v in versus.items()}}


def _comparison(methods: Mapping[str, Any], paired_values: Mapping[str, list[float]],
                worst: Mapping[str, list[str | None]], seeds: Sequence[Any],
                one_example: list[dict[str, float]] | None,
                threshold: dict[str, Any]) -> Comparison:
  """The paired comparisons: the best method, the ranking, and min-max minus equal."""

  def paired(a: str, b: str) -> PairedDifference:
    return _paired(paired_values[a], paired_values[b], seeds,
                   _seed_thresholds(one_example, worst[a], worst[b]))

  means = {m: _mean(values) for m, values in paired_values.items()}
  ranking = sorted(paired_values, key=lambda m: -means[m])
  pair = None
  if MINMAX in methods and EQUAL in methods:
    pair = paired(MINMAX, EQUAL)
    pair["winner"] = {1: MINMAX, -1: EQUAL}.get(pair["direction"])
    pair["diverged"] = {m: [d["seed"] for d in methods[m]["diverged"]] for m in (MINMAX, EQUAL)}
  criteria = {}
  for method in methods:  # "w+criterion" against "w" (magnitude masks, the same weighting)
    base = method.partition("+")[0]
    if "+" in method and base in methods:
      criteria[method] = dict(paired(method, base), versus=base)
  return {
      "effect_threshold": threshold,
      "best_worst_task_retention": _best(ranking, means, paired),
      "ranking": [{"method": m, "worst_task_retention": means[m]} for m in ranking],
      "minmax_minus_equal": pair,
      "criterion_minus_magnitude": criteria,
  }


def from_records(per_seed: Sequence[records.SeedRecord],
                 inputs: records.ReportInputs) -> Report:
  """`build_report` of records already read (`mmcompress.app.records`)."""
  tasks, target = list(inputs.tasks), inputs.target_sparsity
  seeds = [r.seed for r in per_seed]
  method_names = _method_names(per_seed)
  dense_rows = [_dense_row(r, inputs) for r in per_seed]
  methods, paired_values, worst = {}, {}, {}
  for name in method_names:
    methods[name], paired_values[name], worst[name] = _method_summary(name, per_seed,
                                                                      dense_rows, inputs)
  one_example, threshold = _one_example_per_seed(dense_rows, inputs)
  report = {
      "tasks": tasks,
      "metric_names": dict(inputs.metric_names),
      "higher_is_better": dict(inputs.higher_is_better),
      "all_higher_is_better": inputs.all_higher_is_better,
      "conventions": _conventions(inputs.all_higher_is_better, inputs.metric_names),
      "target_sparsity": target,
      "target_compression_ratio": 1.0 / (1.0 - target),
      "seeds": seeds,
      "extra": dict(inputs.extra),
      "dense": {"metrics": {t: _mean([r["metrics"][t] for r in dense_rows]) for t in tasks},
                "task_metrics": _mean_task_metrics(dense_rows, tasks),
                "per_seed": dense_rows},
      "methods": methods,
      "comparison": _comparison(methods, paired_values, worst, seeds, one_example, threshold),
      "whole_model": _whole_model(_model_parameters(per_seed), methods, target),
      "dropped_seeds": [d.to_json() for d in inputs.dropped],
  }
  return records.jsonable(report)


# ----------------------------------------------------------------------------- Markdown


def _signed(value: float, decimals: int) -> str:
  """Signed text: +0.012, −0.004, or 0.000 for a tie (float noise gets no sign)."""
  text = f"{abs(value):.{decimals}f}"
  if abs(value) <= _TIE:
    return f"{0.0:.{decimals}f}"
  if value > 0:
    return "+" + text
  if value < 0:
    return "\u2212" + text
  return text


def _plain(value: float, decimals: int) -> str:
  return _signed(value, decimals).lstrip("+")


def _cell(mean: float | None, values: Sequence[float | None], decimals: int,
          fmt: Callable[[float, int], str] = _plain, suffix: str = "") -> str:
  if mean is None:
    return "\u2014"
  text = fmt(mean, decimals) + suffix
  finite = [v for v in values if v is not None]
  if len(values) > 1 and len(finite) == len(values):
    text += f" [{fmt(min(finite), decimals)}\u2013{fmt(max(finite), decimals)}]"
  return text


def _bytes(n: float | None) -> str:
  if n is None:
    return "\u2014"
  for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if n >= scale:
      return f"{n / scale:.1f} {unit}"
  return f"{n:.0f} B"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return lines


def _extra_lines(extra: Mapping[str, Any]) -> list[str]:
  lines = []
  for key, value in extra.items():
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
      lines += [f"- {v}" for v in value]
      continue
    if isinstance(value, (dict, list)):
      value = "`" + json.dumps(value, sort_keys=True) + "`"
    lines.append(f"- **{key}**: {value}")
  return lines


def _seeds_text(seeds: Sequence[Any]) -> str:
  return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))


def _plural(n: int, word: str) -> str:
  return f"{n} {word}" + ("" if n == 1 else "s")


def _pair_direction(pair: Mapping[str, Any]) -> int:
  """The pair's shown direction (recomputed for reports written before it was stored)."""
  if "direction" in pair:
    return int(pair["direction"])
  return _direction(pair["better"], pair["worse"], pair["mean"], pair.get("threshold", 0.0))


_NOTHING_CONVERGED = "Every compressed method diverged on every seed"


def _best_clause(report: Mapping[str, Any]) -> str | None:
  best = report["comparison"]["best_worst_task_retention"]
  if best is None:
    return None
  n = len(report.get("seeds") or [])
  methods = report.get("methods") or {}
  if methods and all(not info.get("per_seed") for info in methods.values()):
    return _NOTHING_CONVERGED + "; there is nothing to compare"
  counted = (", diverged seeds counted as 0"
             if (methods.get(best["method"]) or {}).get("diverged") else "")
  value = f"mean worst-task retention {best['value']:.3f}{counted}"
  versus = best.get("versus")
  if versus is not None and not versus:
    return f"{best['method']} is the only compressed method ({value})"
  if best.get("shown"):
    p = max(v["p_value"] for v in versus.values())
    return (f"{best['method']} kept the worst task best ({value}; ahead of every other "
            f"method seed by seed, sign test p \u2264 {p:.3f}, by more than one test example)")
  if best.get("tied_with"):
    names = ", ".join([best["method"]] + best["tied_with"][:-1])
    return (f"{names} and {best['tied_with'][-1]} tied for keeping the worst task best "
            f"({value}, within one test example); no method is shown to keep it best over "
            f"{_plural(n, 'seed')}")
  if versus is None:  # a report written before the paired test: the old wording
    return f"{best['method']} kept the worst task best ({value})"
  return (f"No method is shown to keep the worst task best over {_plural(n, 'seed')} "
          f"(highest mean worst-task retention: {best['method']}, {best['value']:.3f}{counted})")


def _divergence_clauses(report: Mapping[str, Any]) -> list[str]:
  clauses = []
  for name, info in report["methods"].items():
    seeds = [d["seed"] for d in info.get("diverged") or []]
    if seeds:
      clauses.append(f"{name} diverged on {_seeds_text(seeds)}, counted as worst-task "
                     "retention 0 in the paired comparisons and left out of its means")
  dropped = report.get("dropped_seeds") or []
  if dropped:
    reasons = "; ".join(f"seed {d['seed']}: {d['reason']}" if d.get("reason")
                        else f"seed {d['seed']}" for d in dropped)
    clauses.append(f"{_seeds_text([d['seed'] for d in dropped]).capitalize()} left out for "
                   "every method "
                   f"({reasons})")
  return clauses


def summary_sentence(report: Mapping[str, Any]) -> str:
  """The plain verdict: which method kept the worst task best, and min-max against equal.

  A winner is named only when it is shown over the paired seeds (a two-sided sign test at
  p < 0.05 over the seeds that differ by more than one test example, and a mean difference
  above one test example's worth); otherwise the sentence says that no difference is shown.
  Diverged runs and seeds left out are named after it.
  """
  head = _best_clause(report)
  if head is None:
    return "Only the dense model was evaluated; there is no compressed model to compare."
  tail = "".join(f" {c}." for c in _divergence_clauses(report))
  pair = report["comparison"]["minmax_minus_equal"]
  if head.startswith(_NOTHING_CONVERGED):
    return head + "." + tail
  if pair is None:
    return head + "; there is no min-max and equal pair to compare seed by seed." + tail
  d = plots.decimals(pair["differences"])
  diffs = ", ".join(_signed(v, d) for v in pair["differences"])
  n = pair["num_seeds"]
  counts = f"better on {pair['better']} of {_plural(n, 'seed')}"
  if pair["worse"]:
    counts += f", worse on {pair['worse']}"
  threshold = pair.get("threshold") or 0.0
  if pair["tied"]:
    counts += f", tied on {pair['tied']}"
    if threshold > 0:
      counts += f" (within one test example, {_plain(threshold, d)})"
  p = pair.get("p_value", sign_test(pair["better"], pair["worse"]))
  direction = _pair_direction(pair)
  if direction > 0:
    verdict = "min-max protected the worst task better than equal weighting"
  elif direction < 0:
    verdict = "min-max protected the worst task less well than equal weighting"
  else:
    verdict = f"no difference shown over {_plural(n, 'seed')}"
    if p < ALPHA and abs(pair["mean"]) <= threshold + _TIE:
      verdict += " (the seeds agree in sign, but the mean is within one test example)"
    elif p < ALPHA:
      verdict += " (most seeds go one way, the mean the other)"
  return (f"{head}; min-max minus equal, worst-task retention, seed by seed: {diffs} "
          f"({counts}; mean {_signed(pair['mean'], d)}; sign test p = {p:.3f}): "
          f"{verdict}.{tail}")


def _rule_line(threshold: Mapping[str, Any]) -> str:
  """The header line that says when the report names a winner."""
  if threshold.get("per_task") is None:
    size = "any difference above float noise (no test counts were given)"
  else:
    each = ", ".join(f"{t} {v:.4f} ({threshold['test_counts'][t]} test examples)"
                     for t, v in threshold["per_task"].items())
    size = ("one test example's worth of the worst task's retention, 1/(n \u00b7 dense) for a "
            "higher-is-better fraction and 1/n for a mean error, on the worst tasks of the "
            f"two methods compared (per task, mean over seeds: {each})")
  return ("- **Verdict**: a method is named better only when the exact two-sided sign test "
          "over the paired seeds gives p < 0.05 (a seed within its threshold is a tie) and the "
          f"mean difference exceeds the mean threshold; threshold: {size}. A diverged run "
          "counts as worst-task retention 0.")


def _ratio_range(values: Sequence[float]) -> str | None:
  """"16.6x", or "16.5x\u201316.7x" when the values differ at one decimal; None if none."""
  values = [v for v in values if v is not None]
  if not values:
    return None
  low, high = f"{min(values):.1f}x", f"{max(values):.1f}x"
  return low if low == high else f"{low}\u2013{high}"


def _whole_model_lines(whole: Mapping[str, Any] | None, target: float,
                       measured: str | None) -> list[str]:
  """Header lines: the model's size, what stays dense, and whether the target is reachable."""
  if not whole:
    return []
  total, dense = whole["total_size"], whole["non_prunable_size"]
  lines = [f"- **Whole model**: {total:,} parameters, {whole['prunable_size']:,} of them "
           "prunable; every compression called \"whole model\" counts all of them (batch-norm "
           "running statistics are not parameters and are not counted)."]
  groups = ", ".join(f"`{g['group'] or '(root)'}` ({', '.join(g['names'])}; {g['leaves']} "
                     f"leaves, {g['size']:,})" for g in whole["non_prunable_groups"])
  lines.append(f"- **Stays dense** ({dense:,} parameters, {100 * dense / total:.1f} % of the "
               f"model; never pruned): {groups or 'nothing'}.")
  goal = whole["target_ratio"]
  cap = whole["cap"]
  cap_text = "no cap" if cap is None else f"{cap:.1f}x"
  at = f"{100 * target:.1f} % prunable sparsity"
  reached = (f"whole-model compression is {measured} at {at}" if measured
             else f"at {at}")
  if not whole["reachable"]:
    lines.append(f"- **Note: the whole model cannot reach {goal:.0f}x**: {reached}; the "
                 f"{dense:,} dense parameters alone cap it at {cap_text}.")
  elif measured and min(filter(None, whole["measured"].values())) < goal * (1 - 1e-3):
    lines.append(f"- **Note: the whole model is compressed less than {goal:.0f}x**: {reached}; "
                 f"it would reach {goal:.0f}x at "
                 f"{100 * whole['sparsity_for_target']:.2f} % prunable sparsity (the dense "
                 f"part caps it at {cap_text}).")
  return lines


def to_markdown(report: Mapping[str, Any]) -> str:
  """Renders a report (from `build_report`, or read back from report.json) as Markdown.

  A header (target, seeds, the `extra` notes), one table with a row per method (dense first):
  each task's metric as mean [min–max] over seeds, the worst-task retention, Δm, the measured
  sparsity and both compression ratios (of the prunable part and of the whole model), the
  export ratio of the prunable weights and the file size; a line on how Δm and the retention
  were computed and which sign of Δm is better; then one sentence on which method kept the
  worst task best and the min-max − equal paired differences seed by seed; then the
  retention of each task. When a task has several metrics, every metric of every task and
  the one-metric figures follow. With one seed, no brackets.

  Args:
    report: the dict returned by `build_report`.

  Returns:
    The Markdown text.
  """
  methods = report["methods"]
  lines = _header_lines(report) + [""] + _main_table(report)
  if report.get("conventions"):
    lines += ["", report["conventions"]]
  lines += ["", summary_sentence(report), ""]
  declared = report.get("all_higher_is_better") or {}
  several = any(len(m) > 1 for m in declared.values())
  if methods:
    what = ("the mean over the task's metrics of compressed / dense" if several
            else "compressed / dense")
    lines.append(f"Retention per task ({what} of the same seed, oriented so that "
                 "below 1 is worse), and which task was the worst on how many seeds:")
    lines.append("")
    lines += _retention_table(methods, report["tasks"], "retention", "worst_task")
    lines.append("")
  lines += _criteria_lines(report["comparison"].get("criterion_minus_magnitude") or {})
  if several:
    lines += _all_metrics_lines(report)
  return "\n".join(lines)


def _criteria_lines(criteria: Mapping[str, Mapping[str, Any]]) -> list[str]:
  """A table of each pruning criterion against magnitude masks under the same weighting."""
  if not criteria:
    return []
  rows = []
  for method, pair in criteria.items():
    d = plots.decimals(pair["differences"])
    verdict = {1: "better", -1: "worse"}.get(_pair_direction(pair), "no difference shown")
    rows.append([method, pair["versus"], _signed(pair["mean"], d),
                 f"{_signed(pair['min'], d)} … {_signed(pair['max'], d)}",
                 f"{pair['better']} / {pair['worse']} / {pair['tied']}",
                 f"{pair['p_value']:.3f}", verdict])
  return (["Pruning criteria: worst-task retention of each method minus that of the same "
           "weighting with magnitude masks, seed by seed (paired; a seed within one test "
           "example is a tie; a verdict needs the sign test at p < 0.05 and a mean beyond one "
           "test example):", ""]
          + _table(["method", "versus", "mean difference", "range", "better / worse / tied",
                    "sign test p", "verdict"], rows) + [""])


def _header_lines(report: Mapping[str, Any]) -> list[str]:
  """The title and the bullet list: target, whole model, seeds, the verdict's rule, notes."""
  seeds, target = report["seeds"], report["target_sparsity"]
  whole = report.get("whole_model")
  measured = _ratio_range(list((whole or {}).get("measured", {}).values()))
  lines = [f"# Compression report: {100 * target:.1f} % prunable sparsity "
           f"({report['target_compression_ratio']:.0f}x prunable part"
           + (f", {measured} whole model)" if measured else ")"), ""]
  lines.append(f"- **Target**: {100 * target:.1f} % of the prunable weights removed "
               f"({report['target_compression_ratio']:.1f}x compression of the prunable part).")
  lines += _whole_model_lines(whole, target, measured)
  spread = ("cells show the mean [min\u2013max] over seeds" if len(seeds) > 1
            else "one seed, so no spread is shown")
  lines.append(f"- **Seeds**: {', '.join(map(str, seeds))} ({len(seeds)}, paired: each method "
               f"is compared with the dense model of its own seed; {spread}).")
  threshold = (report.get("comparison") or {}).get("effect_threshold")
  if threshold is not None:
    lines.append(_rule_line(threshold))
  return lines + _extra_lines(report.get("extra") or {})


def _ratio_cell(value: float | None) -> str:
  return "\u2014" if value is None else f"{value:.1f}x"


def _method_row(name: str, info: Mapping[str, Any], num_seeds: int,
                task_cells: list[str]) -> list[str]:
  """A method's row of the main table, after its task cells."""
  per = info["per_seed"]
  export = info.get("export") or {}
  sparsity = info.get("sparsity")
  failed = len(info.get("diverged") or [])
  worst = _cell(info["worst_task_retention"], [r["worst_task_retention"] for r in per], 3)
  if failed and per:  # the table's means are over the finished seeds; the ranking, all
    counted = math.fsum(r["worst_task_retention"] for r in per) / num_seeds
    worst += f"; {counted:.3f} with the diverged as 0 (as ranked)"
  return ([name + (f" (diverged on {failed} of {num_seeds})" if failed else "")]
          + task_cells
          + [worst,
             _cell(info["delta_m"], [r["delta_m"] for r in per], 2, _signed),
             "\u2014" if sparsity is None else f"{100 * sparsity:.1f} %",
             _ratio_cell(info.get("compression_ratio")),
             _ratio_cell(info.get("whole_model_compression_ratio")),
             _ratio_cell(export.get("prunable_ratio")),
             _bytes(export.get("file_bytes"))])


def _main_table(report: Mapping[str, Any]) -> list[str]:
  """A row per method (dense first): each task's metric, worst-task retention, Δm, sparsity,
  the compression ratios, the export ratio and the file size."""
  tasks, dense, methods = report["tasks"], report["dense"], report["methods"]
  arrows = {t: "\u2191" if report["higher_is_better"][t] else "\u2193" for t in tasks}
  header = (["method"] + [f"{t} ({report['metric_names'][t]} {arrows[t]})" for t in tasks]
            + ["worst-task retention", "\u0394m (%)", "sparsity (prunable)",
               "compression (prunable)", "compression (whole model)",
               "export ratio (prunable)", "file size"])
  rows_by_task = {t: [[r["metrics"][t] for r in dense["per_seed"]]] for t in tasks}
  for info in methods.values():
    for t in tasks:
      rows_by_task[t].append([r["metrics"][t] for r in info["per_seed"]])
  decimals = {t: plots.decimals([v for vs in rows_by_task[t] for v in vs]) for t in tasks}

  def task_cells(info: Mapping[str, Any]) -> list[str]:
    return [_cell(info["metrics"][t], [r["metrics"][t] for r in info["per_seed"]],
                  decimals[t]) for t in tasks]

  dense_bytes = next((info["export"].get("dense_bytes") for info in methods.values()
                      if info.get("export")), None)
  rows = [["dense"] + task_cells(dense) + ["1.000", "0.00", "\u2014", "1x", "1x", "\u2014",
                                           _bytes(dense_bytes) + (" (float32)" if dense_bytes
                                                                  else "")]]
  rows += [_method_row(name, info, len(report["seeds"]), task_cells(info))
           for name, info in methods.items()]
  return _table(header, rows)


def _retention_table(methods: Mapping[str, Any], tasks: Sequence[str], retention: str,
                     worst_task: str) -> list[str]:
  """A row per method: each task's retention [min–max] and the worst task's seed counts."""
  header = ["method"] + list(tasks) + ["worst task (seeds)"]
  rows = []
  for name, info in methods.items():
    per = info["per_seed"]
    counts: dict[str, int] = {}
    for r in per:
      counts[r[worst_task]] = counts.get(r[worst_task], 0) + 1
    worst = ", ".join(f"{t} ({n})" for t, n in sorted(counts.items(), key=lambda x: -x[1]))
    rows.append([name] + [_cell(info[retention][t], [r[retention][t] for r in per], 3)
                          for t in tasks] + [worst])
  return _table(header, rows)


def _all_metrics_lines(report: Mapping[str, Any]) -> list[str]:
  """Every metric of every task (means over seeds), then the one-metric figures."""
  tasks, methods, dense = report["tasks"], report["methods"], report["dense"]
  declared = report["all_higher_is_better"]
  columns = [(t, m) for t in tasks for m in declared[t]]
  entries = [("dense", dense)] + list(methods.items())
  arrow = {True: "\u2191", False: "\u2193"}
  header = ["method"] + [f"{t} {m} {arrow[declared[t][m]]}" for t, m in columns]
  rows = []
  for name, info in entries:
    cells = []
    for t, m in columns:
      values = [r["task_metrics"][t][m] for r in info["per_seed"]]
      d = plots.decimals([e["task_metrics"][t][m] for _, e in entries])
      cells.append(_cell(info["task_metrics"][t][m], values, d))
    rows.append([name] + cells)
  lines = ["Every metric of every task (mean [min\u2013max] over seeds; Δm and retention "
           "above average them within each task):", ""]
  lines += _table(header, rows)
  lines.append("")
  if not methods:
    return lines
  names = ", ".join(f"{t}: {report['metric_names'][t]}" for t in tasks)
  lines += [f"One-metric figures (one metric per task, {names}):", ""]
  header = ["method", "worst-task retention (one metric)", "\u0394m one metric (%)"]
  rows = []
  for name, info in methods.items():
    per = info["per_seed"]
    rows.append([name,
                 _cell(info["worst_task_retention_one_metric"],
                       [r["worst_task_retention_one_metric"] for r in per], 3),
                 _cell(info["delta_m_one_metric"], [r["delta_m_one_metric"] for r in per], 2,
                       _signed)])
  lines += _table(header, rows)
  lines += ["", "Retention per task on its one metric, and the worst task's seed counts:", ""]
  lines += _retention_table(methods, tasks, "retention_one_metric", "worst_task_one_metric")
  lines.append("")
  return lines


# ----------------------------------------------------------------------------- files


def write(report: Mapping[str, Any], workdir: str | os.PathLike) -> dict[str, str]:
  """Writes report.json, report.md, task_metrics.png and task_weights.png into `workdir`.

  Every file is written to a temporary file and renamed into place. task_weights.png is
  skipped when no "minmax" trajectory was logged. report.md links the figures it has.

  Args:
    report: the dict returned by `build_report`.
    workdir: the directory (created if missing).

  Returns:
    Paths by kind: "json", "markdown", "task_metrics" and, if drawn, "task_weights".

  Raises:
    ValueError: if `workdir` exists and is not a directory, or cannot be created.
  """
  workdir = os.fspath(workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"workdir {workdir!r} is a file; give a directory.")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ValueError(f"cannot create workdir {workdir!r}: {e.strerror or e}.") from None
  paths = {"json": os.path.join(workdir, "report.json"),
           "markdown": os.path.join(workdir, "report.md")}
  text = json.dumps(report, indent=2, allow_nan=False) + "\n"
  _files.write_atomically(paths["json"], lambda f: f.write(text.encode("utf-8")))
  paths["task_metrics"] = plots.plot_task_metrics(report, os.path.join(workdir, "task_metrics.png"))
  weights = plots.plot_task_weights(report, os.path.join(workdir, "task_weights.png"))
  if weights is not None:
    paths["task_weights"] = weights
  figures = ["## Figures", "", "![Per-task metrics](task_metrics.png)"]
  if weights is not None:
    figures.append("![Min-max task weights over training](task_weights.png)")
  markdown = to_markdown(report) + "\n" + "\n".join(figures) + "\n"
  _files.write_atomically(paths["markdown"], lambda f: f.write(markdown.encode("utf-8")))
  return paths
