"""The report's figures: per-task metrics as bars, and a method's task weights over training.

Both draw from a report (`mmcompress.app.report.build_report`, or report.json read back) onto a
matplotlib Figure of their own (no pyplot, no global backend), written atomically as PNG. This
is the only module that imports matplotlib, and only when a figure is drawn.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mmcompress import _files

__all__ = ["decimals", "plot_leaderboard", "plot_task_metrics", "plot_task_weights"]


def decimals(values: Sequence[float], at_least: int = 3) -> int:
  """`at_least` decimals, more when the largest magnitude in `values` is below 0.01.

  The report's tables print with it too, so a figure's labels match its numbers.
  """
  finite = [abs(v) for v in values if v is not None and math.isfinite(v)]
  largest = max(finite, default=0.0)
  if largest == 0.0 or largest >= 0.01:
    return 1 if largest >= 1000 else at_least
  return min(8, max(at_least, 1 - math.floor(math.log10(largest))))


def _figure(figsize: tuple[float, float]) -> Any:
  """A matplotlib Figure on its own Agg canvas: no pyplot, no global backend switch."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  figure = Figure(figsize=figsize, dpi=120, layout="constrained")
  FigureCanvasAgg(figure)
  return figure


def _save_figure(figure: Any, path: str | os.PathLike, grow: bool = False) -> str:
  """Writes `figure` as PNG. The constrained layout fits labels and outside legends into the
  figure; `grow` also widens it to a title wider than the figure (``bbox_inches="tight"``,
  which draws it a second time to measure it: a fifth of a figure's time, measured)."""
  path = os.fspath(path)
  extra = {"bbox_inches": "tight"} if grow else {}
  _files.write_atomically(path, lambda f: figure.savefig(f, format="png", **extra))
  return path


def _colors(n: int) -> list[Any]:
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  cmap = colormaps["tab10" if n <= 10 else "tab20"]
  return [cmap(i % cmap.N) for i in range(n)]


def plot_task_weights(report: Mapping[str, Any], path: str | os.PathLike, *,
                      method: str = "minmax") -> str | None:
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
  # A method that diverged on every seed has no bar to draw.
  shown = {m: info for m, info in report["methods"].items() if info["per_seed"]}
  names = ["dense"] + list(shown)
  entries = [report["dense"]] + list(shown.values())
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
    # (Clipped at 0: the mean of equal values can round to just outside them.)
    spread = np.maximum(0.0, np.stack([means - lows, highs - means]))
    ax.bar(x, means, color=colors, width=0.7,
           yerr=spread if len(report["seeds"]) > 1 else None, capsize=3, ecolor="0.2")
    span = float(highs.max() - lows.min()) or abs(float(means.mean())) * 0.05 or 1.0
    bottom = float(lows.min()) - 0.8 * span
    if lows.min() >= 0 > bottom:
      bottom = 0.0
    ax.set_ylim(bottom, float(highs.max()) + 0.5 * span)
    ax.axhline(means[0], color="0.4", linestyle=":", linewidth=1)
    d = decimals(list(means))
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
  spread = _spread_caption(report)
  figure.suptitle(f"Per-task metrics at {100 * report['target_sparsity']:.1f} % prunable "
                  "sparsity "
                  f"({spread}; dotted: dense)", fontsize=10)
  return _save_figure(figure, path)


def _spread_caption(report: Mapping[str, Any]) -> str:
  """What the task figure's whiskers span: the seeds, and how many fewer a method that
  diverged on some of them has."""
  n = len(report["seeds"])
  diverged = [f"{m} on {n - len(s['per_seed'])}" for m, s in report["methods"].items()
              if len(s["per_seed"]) < n]
  spread = f"bars: mean, whiskers: min\u2013max over {n} seeds" if n > 1 else "one seed"
  return spread + (f"; fewer where diverged: {', '.join(diverged)}" if diverged else "")


def plot_leaderboard(board: Mapping[str, Any], path: str | os.PathLike) -> str:
  """Draws a study's leaderboard (`mmcompress.app.leaderboard.build`): one panel per setting, one
  row per method (in mean-rank order, best at the top; then the controls, which are not
  ranked), its paired difference from equal in
  worst-task retention with the 95 % t interval; filled where the difference is shown
  (the report's rule and Holm's adjustment), hollow where it is not.

  Returns:
    `path`.
  """
  settings = board["settings"]
  methods = [m for m in board["order"]["methods"] if m != "equal"]
  columns = len(settings)
  figure = _figure((2.6 * columns + 1.6, 0.28 * len(methods) + 1.4))
  axes = np.atleast_1d(figure.subplots(1, columns, sharex=True, sharey=True,
                                      squeeze=False).ravel())
  y = np.arange(len(methods))[::-1]
  for ax, name in zip(axes, board["order"]["settings"]):
    setting = settings[name]
    for yi, method in zip(y, methods):
      pair = setting["methods"].get(method, {}).get("minus_equal")
      if not pair:
        continue
      mean, low, high = pair["interval"]
      # Filled: shown by the setting's own test (Holm over the setting's methods).
      shown = pair["direction"] != 0 and pair["p_holm"] < 0.05
      color = "tab:blue" if mean >= 0 else "tab:red"
      ax.errorbar([mean], [yi], xerr=[[mean - low], [high - mean]], fmt="o", color=color,
                  markerfacecolor=color if shown else "white", capsize=2, markersize=4)
    ax.axvline(0.0, color="0.4", linewidth=1)
    ax.set_title(name, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    ax.tick_params(labelsize=7)
  axes[0].set_yticks(y)
  axes[0].set_yticklabels(methods, fontsize=7)
  seeds = len(next(iter(settings.values()))["seeds"])
  figure.suptitle("Worst-task retention minus equal weighting, paired over "
                  f"{seeds} seeds (95 % t interval; filled: shown, Holm within the setting)", fontsize=9)
  return _save_figure(figure, path, grow=True)  # (one panel is narrower than its title)
