"""The report of a compression experiment: paired seeds, per-task retention, and plain words.

Input: one dict per seed, each with the dense model's metrics and, per method (a task
weighting such as "equal" or "minmax"), the compressed model's metrics, its measured sparsity
and compression ratio, its export sizes and, optionally, its task-weight trajectory::

    {"seed": 0,
     "dense": {"metrics": {"taskA": 0.95, "taskB": 0.9}},
     "methods": {"equal": {"metrics": {...}, "sparsity": 0.975, "compression_ratio": 40.0,
                           "export": {"file_bytes": ..., "prunable_ratio": ...},
                           "task_weights": [[0.5, 0.5], ...]},
                 "minmax": {...}}}

Every method is compared with the dense model *of its own seed* (the methods share the dense
pretraining of a seed), so the per-seed numbers are paired, and min-max is compared with
equal weighting seed by seed rather than through means alone: the effect is about a point and
the seed-to-seed spread is of the same size (the README's ten-seed table).

`build_report` computes a JSON-serialisable dict, `to_markdown` renders it as a table and one
sentence, `plot_task_weights` and `plot_task_metrics` draw PNGs, and `write` puts all four in
a directory.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mmcompress import _files, metrics as metrics_lib

MINMAX = "minmax"
EQUAL = "equal"
# Paired differences smaller than this are float noise, counted as ties.
_TIE = 1e-9


# ----------------------------------------------------------------------------- validation


def _number(value: Any, where: str, finite: bool = True) -> float:
  try:
    value = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{where} must be a number, got {value!r}.") from None
  if math.isnan(value) or (finite and math.isinf(value)):
    raise ValueError(f"{where} must be a finite number, got {value}.")
  return value


def _mapping(value: Any, where: str) -> Mapping:
  if not isinstance(value, Mapping):
    raise ValueError(f"{where} must be a dict, got {type(value).__name__}.")
  return value


def _task_metrics(value: Any, tasks: Sequence[str], where: str) -> dict[str, float]:
  value = _mapping(value, where)
  missing = [t for t in tasks if t not in value]
  if missing:
    raise ValueError(f"{where} has no metric for the tasks {missing}; it has {sorted(value)}.")
  return {t: _number(value[t], f"{where}[{t!r}]") for t in tasks}


def _jsonable(value: Any) -> Any:
  """Plain JSON types: numpy/jax scalars and arrays become numbers and lists; inf/nan None."""
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (str, bool)) or value is None:
    return value
  if isinstance(value, int) and not isinstance(value, bool):
    return value
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if hasattr(value, "__array__"):
    return _jsonable(np.asarray(value).tolist())
  if hasattr(value, "to_dict"):  # ml_collections.ConfigDict and friends
    return _jsonable(value.to_dict())
  return str(value)


def _mean(values: Sequence[float]) -> float:
  return float(np.mean(np.asarray(values, np.float64)))


# ----------------------------------------------------------------------------- the report


def _method_seed(result: Mapping, seed: Any, name: str, dense: dict[str, float],
                 tasks: Sequence[str], higher_is_better: Mapping[str, bool]) -> dict[str, Any]:
  """One method's numbers on one seed, relative to that seed's dense model."""
  where = f"seed {seed!r}, method {name!r}"
  result = _mapping(result, where)
  values = _task_metrics(result.get("metrics"), tasks, f"{where}: metrics")
  kept = {}
  for t in tasks:
    try:
      kept[t] = metrics_lib.retention(values[t], dense[t], higher_is_better[t])
    except ValueError as e:
      raise ValueError(f"{where}, task {t!r}: {e}") from None
  worst = min(tasks, key=lambda t: kept[t])
  row: dict[str, Any] = {
      "seed": seed,
      "metrics": values,
      "retention": kept,
      "worst_task": worst,
      "worst_task_retention": kept[worst],
      "delta_m": metrics_lib.delta_m(values, dense, {t: higher_is_better[t] for t in tasks}),
  }
  for key in ("sparsity", "compression_ratio"):
    if result.get(key) is not None:
      row[key] = _number(result[key], f"{where}: {key}", finite=False)
  if result.get("export") is not None:
    row["export"] = dict(_mapping(result["export"], f"{where}: export"))
  if result.get("task_weights") is not None:
    weights = np.asarray(result["task_weights"], np.float64)
    if weights.ndim != 2 or weights.shape[1] != len(tasks) or not weights.size:
      raise ValueError(
          f"{where}: task_weights must be a non-empty list of {len(tasks)}-vectors (one "
          f"weight per task, per logged step), got shape {weights.shape}.")
    row["task_weights"] = weights.tolist()
  return row


def _summarise(name: str, rows: list[dict[str, Any]], tasks: Sequence[str]) -> dict[str, Any]:
  """Means over seeds of one method's per-seed rows."""
  summary: dict[str, Any] = {
      "metrics": {t: _mean([r["metrics"][t] for r in rows]) for t in tasks},
      "retention": {t: _mean([r["retention"][t] for r in rows]) for t in tasks},
      "worst_task_retention": _mean([r["worst_task_retention"] for r in rows]),
      "delta_m": _mean([r["delta_m"] for r in rows]),
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


def _paired(minmax: dict[str, Any], equal: dict[str, Any]) -> dict[str, Any]:
  """Min-max minus equal, worst-task retention, seed by seed."""
  seeds = [r["seed"] for r in minmax["per_seed"]]
  diffs = [a["worst_task_retention"] - b["worst_task_retention"]
           for a, b in zip(minmax["per_seed"], equal["per_seed"])]
  return {
      "metric": "worst_task_retention",
      "seeds": seeds,
      "differences": diffs,
      "mean": _mean(diffs),
      "min": min(diffs),
      "max": max(diffs),
      "better": sum(d > _TIE for d in diffs),
      "worse": sum(d < -_TIE for d in diffs),
      "tied": sum(abs(d) <= _TIE for d in diffs),
      "num_seeds": len(diffs),
  }


def build_report(per_seed: Sequence[Mapping[str, Any]],
                 *,
                 tasks: Sequence[str],
                 higher_is_better: Mapping[str, bool],
                 metric_names: Mapping[str, str],
                 target_sparsity: float,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Aggregates per-seed results into one JSON-serialisable report.

  Retention is compressed / dense per task and seed, oriented so that below 1 is worse
  (`mmcompress.metrics.retention`); the worst-task retention of a seed is its minimum over
  tasks; Δm is `mmcompress.metrics.delta_m` in percent. Every mean is over seeds of per-seed
  values, so the mean worst-task retention is the mean of each seed's minimum (not the minimum
  of the mean retentions).

  Args:
    per_seed: one result dict per seed (see the module docstring); every seed must have the
      same methods, and each metrics dict every task (extra metric keys are ignored).
    tasks: the task names, in the order to report them.
    higher_is_better: task -> whether a higher metric is better.
    metric_names: task -> the metric's name, e.g. "accuracy" or "MAE".
    target_sparsity: the target fraction of prunable weights removed, in [0, 1).
    extra: anything else to carry along and show in the header (config, wall time, notes);
      made JSON-serialisable (numpy values become numbers, unknown objects strings).

  Returns:
    A dict of plain JSON types with ``tasks``, ``metric_names``, ``higher_is_better``,
    ``target_sparsity``, ``target_compression_ratio``, ``seeds``, ``extra``, ``dense``
    (``metrics``: task -> mean, ``per_seed``), ``methods`` (name -> ``sparsity``,
    ``compression_ratio``, ``metrics``, ``retention``, ``worst_task_retention``, ``delta_m``,
    ``export`` (means; None when not reported), ``task_weights`` and ``task_weights_seed``
    (the trajectory of the first seed that has one, for methods that log one), and
    ``per_seed``, each seed's own values of these fields (all but the trajectory) plus its
    ``worst_task``) and
    ``comparison`` (``best_worst_task_retention``: the method with the highest mean
    worst-task retention, its value and the methods ``tied_with`` it; ``ranking``;
    ``minmax_minus_equal``: the paired differences, their mean, min, max and the better /
    worse / tied counts, or None unless both "minmax" and "equal" are present). Infinite
    values become None.

  Raises:
    ValueError: naming the seed, method and task of anything missing or malformed.
  """
  tasks = list(tasks)
  if not tasks or not all(isinstance(t, str) for t in tasks) or len(set(tasks)) != len(tasks):
    raise ValueError(f"tasks must be a non-empty list of distinct names, got {tasks!r}.")
  for name, value in (("higher_is_better", higher_is_better), ("metric_names", metric_names)):
    missing = [t for t in tasks if t not in _mapping(value, name)]
    if missing:
      raise ValueError(f"{name} has no entry for the tasks {missing}.")
  orientation = {}
  for t in tasks:
    if not isinstance(higher_is_better[t], (bool, np.bool_)):
      raise ValueError(
          f"higher_is_better[{t!r}] must be True or False, got {higher_is_better[t]!r}.")
    orientation[t] = bool(higher_is_better[t])
  target = _number(target_sparsity, "target_sparsity")
  if not 0.0 <= target < 1.0:
    raise ValueError(
        f"target_sparsity must be in [0, 1) (0.975 = 40x), got {target_sparsity!r}.")
  if isinstance(per_seed, Mapping) or not isinstance(per_seed, Sequence) or not per_seed:
    raise ValueError("per_seed must be a non-empty list with one result dict per seed.")

  seeds = []
  for i, result in enumerate(per_seed):
    result = _mapping(result, f"per_seed[{i}]")
    if "seed" not in result:
      raise ValueError(f"per_seed[{i}] has no 'seed'.")
    seeds.append(_jsonable(result["seed"]))
  if len(set(map(json.dumps, seeds))) != len(seeds):
    raise ValueError(f"per_seed has repeated seeds {seeds}; give each seed once.")
  method_names = list(_mapping(per_seed[0].get("methods"), f"seed {seeds[0]!r}: methods"))
  if "dense" in method_names:
    raise ValueError("a method may not be called 'dense', the name of the uncompressed row; "
                     "rename it.")
  for seed, result in zip(seeds, per_seed):
    names = list(_mapping(result.get("methods"), f"seed {seed!r}: methods"))
    if set(names) != set(method_names):
      raise ValueError(
          f"seed {seed!r} has the methods {sorted(names)}, seed {seeds[0]!r} has "
          f"{sorted(method_names)}; every seed must run the same methods (paired seeds).")

  dense_rows = []
  for seed, result in zip(seeds, per_seed):
    dense = _mapping(result.get("dense"), f"seed {seed!r}: dense")
    dense_rows.append({"seed": seed, "metrics": _task_metrics(dense.get("metrics"), tasks,
                                                              f"seed {seed!r}: dense metrics")})
  methods = {}
  for name in method_names:
    rows = [_method_seed(result["methods"][name], seed, name, dense_row["metrics"], tasks,
                         orientation)
            for seed, result, dense_row in zip(seeds, per_seed, dense_rows)]
    methods[name] = _summarise(name, rows, tasks)

  ranking = sorted(method_names, key=lambda m: -methods[m]["worst_task_retention"])
  best = None
  if ranking:
    top = methods[ranking[0]]["worst_task_retention"]
    best = {"method": ranking[0], "value": top,
            "tied_with": [m for m in ranking[1:]
                          if top - methods[m]["worst_task_retention"] <= _TIE]}
  comparison: dict[str, Any] = {
      "best_worst_task_retention": best,
      "ranking": [{"method": m, "worst_task_retention": methods[m]["worst_task_retention"]}
                  for m in ranking],
      "minmax_minus_equal": (_paired(methods[MINMAX], methods[EQUAL])
                             if MINMAX in methods and EQUAL in methods else None),
  }
  report = {
      "tasks": tasks,
      "metric_names": {t: str(metric_names[t]) for t in tasks},
      "higher_is_better": orientation,
      "target_sparsity": target,
      "target_compression_ratio": 1.0 / (1.0 - target),
      "seeds": seeds,
      "extra": dict(_mapping(extra, "extra")) if extra is not None else {},
      "dense": {"metrics": {t: _mean([r["metrics"][t] for r in dense_rows]) for t in tasks},
                "per_seed": dense_rows},
      "methods": methods,
      "comparison": comparison,
  }
  return _jsonable(report)


# ----------------------------------------------------------------------------- Markdown


def _decimals(values: Sequence[float], at_least: int = 3) -> int:
  """`at_least` decimals, more when the largest magnitude in `values` is below 0.01."""
  finite = [abs(v) for v in values if v is not None and math.isfinite(v)]
  largest = max(finite, default=0.0)
  if largest == 0.0 or largest >= 0.01:
    return 1 if largest >= 1000 else at_least
  return min(8, max(at_least, 1 - math.floor(math.log10(largest))))


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


def summary_sentence(report: Mapping[str, Any]) -> str:
  """The one plain sentence: which method kept the worst task best, and min-max vs equal."""
  best = report["comparison"]["best_worst_task_retention"]
  if best is None:
    return "Only the dense model was evaluated; there is no compressed model to compare."
  if best.get("tied_with"):
    names = ", ".join([best["method"]] + best["tied_with"][:-1])
    head = (f"{names} and {best['tied_with'][-1]} tied for keeping the worst task best "
            f"(mean worst-task retention {best['value']:.3f})")
  else:
    head = (f"{best['method']} kept the worst task best (mean worst-task retention "
            f"{best['value']:.3f})")
  pair = report["comparison"]["minmax_minus_equal"]
  if pair is None:
    return head + "; there is no min-max and equal pair to compare seed by seed."
  d = _decimals(pair["differences"])
  diffs = ", ".join(_signed(v, d) for v in pair["differences"])
  counts = f"better on {pair['better']} of {pair['num_seeds']} seed"
  counts += "s" if pair["num_seeds"] != 1 else ""
  if pair["worse"]:
    counts += f", worse on {pair['worse']}"
  if pair["tied"]:
    counts += f", tied on {pair['tied']}"
  # A verdict needs the mean and a majority of *all* seeds (ties included) to agree: a
  # +0.001 mean from 3 better, 2 worse and 5 tied seeds is no consistent difference.
  majority = pair["num_seeds"] / 2
  if pair["mean"] > _TIE and pair["better"] > majority:
    verdict = "min-max protected the worst task better than equal weighting"
  elif pair["mean"] < -_TIE and pair["worse"] > majority:
    verdict = "min-max protected the worst task less well than equal weighting"
  else:
    verdict = "no consistent difference between min-max and equal weighting"
  if pair["num_seeds"] == 1:
    verdict += ", on a single seed"
  return (f"{head}; min-max minus equal, worst-task retention, seed by seed: {diffs} "
          f"({counts}, mean {_signed(pair['mean'], d)}): {verdict}.")


def to_markdown(report: Mapping[str, Any]) -> str:
  """Renders a report (from `build_report`, or read back from report.json) as Markdown.

  A header (target, seeds, the `extra` notes), one table with a row per method (dense first):
  each task's metric as mean [min–max] over seeds, the worst-task retention, Δm, the measured
  sparsity and compression ratio, the export ratio of the prunable weights and the file size;
  then one sentence on which method kept the worst task best and the min-max − equal paired
  differences seed by seed; then the retention of each task. With one seed, no brackets.

  Args:
    report: the dict returned by `build_report`.

  Returns:
    The Markdown text.
  """
  tasks, seeds = report["tasks"], report["seeds"]
  dense, methods = report["dense"], report["methods"]
  target = report["target_sparsity"]
  lines = [f"# Compression report: {100 * target:.1f} % sparsity "
           f"({report['target_compression_ratio']:.0f}x)", ""]
  lines.append(f"- **Target**: {100 * target:.1f} % of the prunable weights removed "
               f"({report['target_compression_ratio']:.1f}x compression).")
  spread = ("cells show the mean [min\u2013max] over seeds" if len(seeds) > 1
            else "one seed, so no spread is shown")
  lines.append(f"- **Seeds**: {', '.join(map(str, seeds))} ({len(seeds)}, paired: each method "
               f"is compared with the dense model of its own seed; {spread}).")
  lines += _extra_lines(report.get("extra") or {})
  lines.append("")

  arrows = {t: "\u2191" if report["higher_is_better"][t] else "\u2193" for t in tasks}
  header = (["method"] + [f"{t} ({report['metric_names'][t]} {arrows[t]})" for t in tasks]
            + ["worst-task retention", "\u0394m (%)", "sparsity", "compression",
               "export ratio (prunable)", "file size"])
  rows_by_task = {t: [[r["metrics"][t] for r in dense["per_seed"]]] for t in tasks}
  for info in methods.values():
    for t in tasks:
      rows_by_task[t].append([r["metrics"][t] for r in info["per_seed"]])
  decimals = {t: _decimals([v for vs in rows_by_task[t] for v in vs]) for t in tasks}

  def task_cells(info: Mapping[str, Any]) -> list[str]:
    return [_cell(info["metrics"][t], [r["metrics"][t] for r in info["per_seed"]],
                  decimals[t]) for t in tasks]

  dense_bytes = next((info["export"].get("dense_bytes") for info in methods.values()
                      if info.get("export")), None)
  rows = [["dense"] + task_cells(dense) + ["1.000", "0.00", "\u2014", "1x", "\u2014",
                                           _bytes(dense_bytes) + (" (float32)" if dense_bytes
                                                                  else "")]]
  for name, info in methods.items():
    per = info["per_seed"]
    export = info.get("export") or {}
    sparsity = info.get("sparsity")
    rows.append(
        [name] + task_cells(info)
        + [_cell(info["worst_task_retention"], [r["worst_task_retention"] for r in per], 3),
           _cell(info["delta_m"], [r["delta_m"] for r in per], 2, _signed),
           "\u2014" if sparsity is None else f"{100 * sparsity:.1f} %",
           "\u2014" if info.get("compression_ratio") is None
           else f"{info['compression_ratio']:.1f}x",
           "\u2014" if export.get("prunable_ratio") is None
           else f"{export['prunable_ratio']:.1f}x",
           _bytes(export.get("file_bytes"))])
  lines += _table(header, rows)
  lines += ["", summary_sentence(report), ""]

  if methods:
    lines.append("Retention per task (compressed / dense of the same seed, oriented so that "
                 "below 1 is worse), and which task was the worst on how many seeds:")
    lines.append("")
    header = ["method"] + list(tasks) + ["worst task (seeds)"]
    rows = []
    for name, info in methods.items():
      per = info["per_seed"]
      counts: dict[str, int] = {}
      for r in per:
        counts[r["worst_task"]] = counts.get(r["worst_task"], 0) + 1
      worst = ", ".join(f"{t} ({n})" for t, n in sorted(counts.items(), key=lambda x: -x[1]))
      rows.append([name] + [_cell(info["retention"][t], [r["retention"][t] for r in per], 3)
                            for t in tasks] + [worst])
    lines += _table(header, rows)
    lines.append("")
  return "\n".join(lines)


# ----------------------------------------------------------------------------- plots


def _figure(figsize: tuple[float, float]) -> Any:
  """A matplotlib Figure on its own Agg canvas: no pyplot, no global backend switch."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  figure = Figure(figsize=figsize, dpi=120, layout="constrained")
  FigureCanvasAgg(figure)
  return figure


def _save_figure(figure: Any, path: str | os.PathLike) -> str:
  path = os.fspath(path)
  _files.write_atomically(path, lambda f: figure.savefig(f, format="png", bbox_inches="tight"))
  return path


def _colors(n: int) -> list[Any]:
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  cmap = colormaps["tab10" if n <= 10 else "tab20"]
  return [cmap(i % cmap.N) for i in range(n)]


def plot_task_weights(report: Mapping[str, Any], path: str | os.PathLike, *,
                      method: str = MINMAX) -> str | None:
  """Draws a method's task weights over training, one line per task, as a PNG.

  Args:
    report: the dict returned by `build_report`.
    path: the PNG file to write.
    method: whose trajectory to draw ("minmax" by default).

  Returns:
    `path`, or None (and nothing written) when the method has no task-weight trajectory.
  """
  info = report["methods"].get(method)
  if not info or not info.get("task_weights"):
    return None
  tasks = report["tasks"]
  weights = np.asarray(info["task_weights"], np.float64)
  figure = _figure((7.0, 4.0))
  ax = figure.subplots()
  steps = np.arange(weights.shape[0])
  marker = "o" if weights.shape[0] < 30 else None
  for k, (task, color) in enumerate(zip(tasks, _colors(len(tasks)))):
    ax.plot(steps, weights[:, k], color=color, marker=marker, markersize=3, label=task)
  ax.axhline(1.0 / len(tasks), color="0.5", linestyle="--", linewidth=1,
             label=f"equal (1/{len(tasks)})")
  ax.set_xlabel("epoch (the training stages after pretraining, in order)")
  ax.set_ylabel("task weight")
  ax.set_ylim(0.0, max(1.0 / len(tasks), float(weights.max())) * 1.1)
  ax.set_title(f"{method} task weights over training (seed {info.get('task_weights_seed')})")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, ncol=1 if len(tasks) <= 8 else 2, loc="center left",
            bbox_to_anchor=(1.01, 0.5), frameon=False)
  return _save_figure(figure, path)


def plot_task_metrics(report: Mapping[str, Any], path: str | os.PathLike) -> str:
  """Draws, per task, the dense model and every method as bars, error bars min–max over seeds.

  One panel per task, so that metrics of different scales (accuracy, MAE) each get their own
  axis; the axis is zoomed to the values so that differences of a point stay visible, and each
  bar is labelled with its mean.

  Args:
    report: the dict returned by `build_report`.
    path: the PNG file to write.

  Returns:
    `path`.
  """
  tasks = report["tasks"]
  names = ["dense"] + list(report["methods"])
  entries = [report["dense"]] + list(report["methods"].values())
  colors = ["0.6"] + _colors(len(names) - 1)
  columns = min(len(tasks), 4)
  rows = math.ceil(len(tasks) / columns)
  figure = _figure((max(3.2 * columns, 0.6 * len(names) * columns), 3.2 * rows + 0.6))
  axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False).ravel())
  x = np.arange(len(names))
  for ax, task in zip(axes, tasks):
    means = np.array([e["metrics"][task] for e in entries])
    lows = np.array([min(r["metrics"][task] for r in e["per_seed"]) for e in entries])
    highs = np.array([max(r["metrics"][task] for r in e["per_seed"]) for e in entries])
    ax.bar(x, means, color=colors, width=0.7,
           yerr=np.stack([means - lows, highs - means]) if len(report["seeds"]) > 1 else None,
           capsize=3, ecolor="0.2")
    span = float(highs.max() - lows.min()) or abs(float(means.mean())) * 0.05 or 1.0
    bottom = float(lows.min()) - 0.8 * span
    if lows.min() >= 0 > bottom:
      bottom = 0.0
    ax.set_ylim(bottom, float(highs.max()) + 0.5 * span)
    ax.axhline(means[0], color="0.4", linestyle=":", linewidth=1)
    d = _decimals(list(means))
    for xi, mean, high in zip(x, means, highs):
      ax.text(xi, high + 0.05 * span, f"{mean:.{d}f}", ha="center", va="bottom", fontsize=7)
    arrow = "\u2191" if report["higher_is_better"][task] else "\u2193"
    ax.set_title(f"{task}: {report['metric_names'][task]} {arrow}", fontsize=10)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30 if len(names) > 3 else 0, ha="right"
                       if len(names) > 3 else "center", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
  for ax in axes[len(tasks):]:
    ax.set_visible(False)
  n = len(report["seeds"])
  spread = f"bars: mean, whiskers: min\u2013max over {n} seeds" if n > 1 else "one seed"
  figure.suptitle(f"Per-task metrics at {100 * report['target_sparsity']:.1f} % sparsity "
                  f"({spread}; dotted: dense)", fontsize=10)
  return _save_figure(figure, path)


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
  paths["task_metrics"] = plot_task_metrics(report, os.path.join(workdir, "task_metrics.png"))
  weights = plot_task_weights(report, os.path.join(workdir, "task_weights.png"))
  if weights is not None:
    paths["task_weights"] = weights
  figures = ["## Figures", "", "![Per-task metrics](task_metrics.png)"]
  if weights is not None:
    figures.append("![Min-max task weights over training](task_weights.png)")
  markdown = to_markdown(report) + "\n" + "\n".join(figures) + "\n"
  _files.write_atomically(paths["markdown"], lambda f: f.write(markdown.encode("utf-8")))
  return paths
