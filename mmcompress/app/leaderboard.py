"""One leaderboard over several comparison reports: which method keeps the worst task best.

A study runs one comparison per setting (task set × sparsity), each writing its own
``report.json`` (`mmcompress.app.report`). `build` reads them and ranks the methods per setting
by worst-task retention, with, per method:

* the mean worst-task retention over every seed, a diverged seed counting as retention 0 (the
  very numbers its rank and paired tests use), and Δm over the seeds that did not diverge,
  each with a 95 % interval (Student's t: mean ± t(0.975, n − 1) · s / √n);
* its paired difference from ``equal``, seed by seed, judged by the report's own rule
  (`mmcompress.app.report`: a seed within one test example is a tie, the exact sign test over
  the others, a diverged run counts as retention 0), with the better / worse / tied counts;
  and its paired difference from the setting's best (its highest mean), described the same
  way but not tested: the best is chosen on these very seeds;
* the 95 % t interval of the mean paired difference, and the sign test's p-value adjusted
  by Holm's step-down over all the methods paired with equal in the setting (about twenty
  tests at 0.05 would show one difference by chance; the adjusted p keeps the chance of any
  false one at 0.05);
* its rank (1 = the highest mean worst-task retention; tied means share the mean rank).

Controls (equal at other step sizes or on another data order) are paired and tested like the
methods, with Holm over the controls, but are neither ranked nor a setting's best: they
measure the protocol, they do not compete in it.

Across settings: each method's mean rank over the settings it ran in, with a 95 % seed
bootstrap interval (`mean_rank_intervals`, every setting resampled by the same draw of seeds,
since a seed's settings share its seed and, within a task set, its dense model), and the
headline's one family of comparisons
(`family`): every method against equal over every setting, one comparison per method on its
paired differences averaged over the settings seed by seed, Holm's adjustment over the
methods (``p_family``; the per-setting tests stay in each setting's table, labelled as such).
`to_markdown` writes the leaderboard as a report, `plot` draws the paired differences from
equal.

`tune` chooses, per setting and method, among variants of the compression stages' training
(the study's gradient-clip grid) by the validation split alone, and gives the one report
`setting` then reads; the board records the choices under ``tuning``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from mmcompress.app import report as report_lib

__all__ = ["bootstrap_picks", "BOOTSTRAP_RESAMPLES", "BOOTSTRAP_SEED", "build", "choose",
           "detection_limit", "EQUAL", "family", "holm", "interval", "mean_rank_intervals", "ranks",
           "setting", "t975", "to_markdown", "tune"]

EQUAL = "equal"
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0  # the resamples are drawn from a fixed seed: a board is reproducible
# Student's t quantile t(0.975, df) for df = 1 .. 30 (tests/test_leaderboard.py checks them
# against scipy); above 30 degrees of freedom the normal quantile 1.96 is within 4 %.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
  """Student's t quantile at 0.975 for `df` >= 1 degrees of freedom (1.96 above 30)."""
  if df < 1:
    raise ValueError(f"degrees of freedom must be >= 1, got {df}.")
  return _T975[df - 1] if df <= len(_T975) else 1.96


def _mean(values: Sequence[float]) -> float:
  """The exact mean (`math.fsum`): the one every table, rank and resample of the board uses."""
  return math.fsum(values) / len(values)


def interval(values: Sequence[float]) -> tuple[float, float, float]:
  """(mean, low, high): the mean and its 95 % t interval; one value gives a zero-width one."""
  n = len(values)
  if n == 0:
    raise ValueError("an interval needs at least one value.")
  mean = _mean(values)
  if n == 1:
    return mean, mean, mean
  sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
  half = t975(n - 1) * sd / math.sqrt(n)
  return mean, mean - half, mean + half


def ranks(means: Mapping[str, float]) -> dict[str, float]:
  """1 for the highest mean, 2 for the next, ...; equal means share their mean rank."""
  ordered = sorted(means, key=lambda m: -means[m])
  out, i = {}, 0
  while i < len(ordered):
    j = i
    while j + 1 < len(ordered) and means[ordered[j + 1]] == means[ordered[i]]:
      j += 1
    for m in ordered[i:j + 1]:
      out[m] = (i + j) / 2 + 1
    i = j + 1
  return out


def holm(p_values: Mapping[str, float]) -> dict[str, float]:
  """Holm's step-down adjustment: the i-th smallest of m p-values times (m - i + 1), made
  non-decreasing in that order and capped at 1."""
  order = sorted(p_values, key=lambda k: p_values[k])
  out, running = {}, 0.0
  for i, key in enumerate(order):
    running = max(running, min(1.0, (len(order) - i) * p_values[key]))
    out[key] = running
  return out


def _seed_values(report: Mapping[str, Any], method: str, field: str,
                 diverged: Any) -> list[Any]:
  """The method's `field` on every seed of the report, in its seed order, `diverged` where
  the method diverged (a seed without a row)."""
  by_seed = {row["seed"]: row for row in report["methods"][method]["per_seed"]}
  return [by_seed[s][field] if s in by_seed else diverged for s in report["seeds"]]


def _paired_values(report: Mapping[str, Any], method: str) -> tuple[list[float], list[Any]]:
  """Worst-task retention on every seed of the report (0 where the method diverged) and the
  worst task on each (None where it diverged), in the report's seed order."""
  return (_seed_values(report, method, "worst_task_retention", 0.0),
          _seed_values(report, method, "worst_task", None))


def _one_example(report: Mapping[str, Any]) -> list[dict[str, float]] | None:
  counts = report["comparison"]["effect_threshold"].get("test_counts")
  if counts is None:
    return None
  return [report_lib.one_example_retention(row["metrics"], counts, report["higher_is_better"])
          for row in report["dense"]["per_seed"]]


def _described(pair: dict[str, Any]) -> dict[str, Any]:
  """A paired comparison with the setting's best, as a description only: the best was chosen
  on these very seeds, so its lead over the others is biased upward, and a test that takes it
  as fixed in advance finds methods worse than it too often (no p-value, no verdict)."""
  return {k: v for k, v in pair.items() if k not in ("p_value", "direction")}


def setting(report: Mapping[str, Any], controls: Sequence[str] = ()) -> dict[str, Any]:
  """The leaderboard of one comparison report: per method, its numbers, its paired test
  against equal (`controls`: rows tested like the methods, Holm over them apart, not ranked:
  rank None) and, described but not tested, its paired difference from the setting's best."""
  methods = list(report["methods"])
  ranked = [m for m in methods if m not in controls]
  one_example = _one_example(report)
  paired = {m: _paired_values(report, m) for m in methods}
  rows = {}
  for m in methods:
    finished = report["methods"][m]["per_seed"]
    rows[m] = {"worst_task_retention": interval(paired[m][0]),
               "delta_m": interval([r["delta_m"] for r in finished]) if finished else None,
               "seeds": len(finished),
               "diverged": len(report["seeds"]) - len(finished)}
  # The table's means (`interval`'s), so that methods the table shows level rank level.
  means = {m: rows[m]["worst_task_retention"][0] for m in methods}
  rank = ranks({m: means[m] for m in ranked})
  best = min(ranked, key=lambda m: (rank[m], ranked.index(m)))

  def versus(a: str, b: str) -> dict[str, Any]:
    thresholds = report_lib._seed_thresholds(  # pylint: disable=protected-access
        one_example, paired[a][1], paired[b][1])
    pair = report_lib._paired(  # pylint: disable=protected-access
        paired[a][0], paired[b][0], report["seeds"], thresholds)
    pair["interval"] = interval(pair["differences"])
    return pair

  for m in methods:
    rows[m]["rank"] = rank.get(m)
    rows[m]["paired_mean"] = means[m]
    rows[m]["minus_equal"] = versus(m, EQUAL) if EQUAL in methods and m != EQUAL else None
    rows[m]["minus_best"] = _described(versus(m, best)) if m != best else None
  for group in (ranked, [m for m in methods if m in controls]):
    adjusted = holm({m: rows[m]["minus_equal"]["p_value"] for m in group
                     if rows[m]["minus_equal"]})
    for m, p in adjusted.items():
      rows[m]["minus_equal"]["p_holm"] = p
  return {"seeds": list(report["seeds"]), "best": best, "methods": rows}


def _mean_ranks(values: Mapping[str, Mapping[str, Sequence[float]]],
                picks: Mapping[str, Sequence[int]] | None = None) -> dict[str, float]:
  """Each method's mean rank over the settings it ran in, from its per-seed values in each
  setting (`picks`: the seed positions to take in each setting, e.g. a bootstrap resample;
  all of them by default)."""
  got: dict[str, list[float]] = {}
  for name, by_method in values.items():
    take = range(len(next(iter(by_method.values())))) if picks is None else picks[name]
    if len(take) == 0:  # a resample that drew none of this setting's seeds
      continue
    means = {m: _mean([v[int(i)] for i in take]) for m, v in by_method.items()}
    for m, r in ranks(means).items():
      got.setdefault(m, []).append(r)
  return {m: math.fsum(r) / len(r) for m, r in got.items()}


def mean_rank_intervals(values: Mapping[str, Mapping[str, Sequence[float]]],
                        resamples: Iterable[Mapping[str, Sequence[int]]]
                        ) -> dict[str, tuple[float, float]]:
  """The 95 % percentile interval of each method's mean rank over seed resamples.

  Args:
    values: setting -> method -> its worst-task retention on each seed (a diverged seed as
      0), the seeds in the same order for every method of a setting (they are paired).
    resamples: each a setting -> seed positions, drawn with replacement (`bootstrap_picks`);
      every method of a setting takes the same positions, so the pairing is kept, and every
      setting the positions of the same drawn seeds.

  Returns:
    method -> (2.5th, 97.5th percentile) of its mean rank over the resamples (NumPy's
    linear interpolation between order statistics).
  """
  draws: dict[str, list[float]] = {}
  for picks in resamples:
    for m, r in _mean_ranks(values, picks).items():
      draws.setdefault(m, []).append(r)
  return {m: (float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5)))
          for m, d in draws.items()}


def bootstrap_picks(seeds: Mapping[str, Sequence[int]], resamples: int = BOOTSTRAP_RESAMPLES,
                    seed: int = BOOTSTRAP_SEED) -> list[dict[str, np.ndarray]]:
  """`resamples` draws, with replacement, of as many reporting seeds as the settings hold
  together (`seeds`: setting -> its seeds, in its order); each draw is one for every setting
  (a seed's settings share its seed and, within a task set, its dense model, so they are
  resampled as one unit, as the headline's family averages them) and gives, per setting,
  the positions of the drawn seeds it ran. A draw that holds none of some setting's seeds (a
  setting that lost seeds) is drawn again, so that every mean rank averages every setting."""
  union = sorted({int(s) for ids in seeds.values() for s in ids})
  where = {name: {int(s): i for i, s in enumerate(ids)} for name, ids in seeds.items()}
  rng = np.random.default_rng(seed)
  out = []
  while len(out) < resamples:
    drawn = [union[i] for i in rng.integers(0, len(union), len(union))]
    picks = {name: np.array([at[s] for s in drawn if s in at], np.int64)
             for name, at in where.items()}
    if all(len(p) for p in picks.values()):  # else drawn again: every setting in every draw
      out.append(picks)
  return out


def family(settings: Mapping[str, Mapping[str, Any]],
           controls: Sequence[str] = ()) -> dict[str, Any]:
  """The headline's family: one comparison per method (not equal, not a control) against
  equal over every setting both ran in, Holm's adjustment over the methods.

  The unit is the reporting seed: on each seed common to those settings, the method's paired
  difference from equal (worst-task retention, a diverged run as 0) and its one-example
  threshold are averaged over the settings, and the report's rule judges the averaged seeds
  (`mmcompress.app.report`: a seed within its threshold is a tie, the exact sign test over the
  others, the mean beyond the mean threshold). A seed's settings share its seed, and within a
  task set its dense model, so they are averaged rather than counted as independent pairs.
  Why one comparison per method and not per (method, setting): with 10 seeds the smallest
  sign-test p is 2/2¹⁰, and Holm over 20 methods × 6 settings would multiply it by 120
  (0.23): such a family could name nothing, whatever the data, and "nothing is shown" would
  hold by construction. Over 20 methods a 10/0/0 sweep gives 0.039.

  Returns:
    ``{"comparisons": {method: pair}, "against", "adjustment", "alpha", "unit"}``, each pair
    as `report._paired`'s with ``settings`` (those averaged), ``interval`` (the mean
    averaged difference's 95 % t interval), ``p_family`` (Holm over the methods) and
    ``verdict`` ("better", "worse" or "—").
  """
  names: list[str] = []
  for board in settings.values():
    names += [m for m in board["methods"] if m not in names]
  comparisons = {}
  for m in names:
    pairs = {name: board["methods"][m]["minus_equal"] for name, board in settings.items()
             if m in board["methods"] and board["methods"][m]["minus_equal"]}
    if m in controls or not pairs:
      continue
    seeds = [s for s in next(iter(pairs.values()))["seeds"]
             if all(s in p["seeds"] for p in pairs.values())]
    if not seeds:
      continue

    def averaged(field, seed, pairs=pairs):
      return math.fsum(p[field][p["seeds"].index(seed)] for p in pairs.values()) / len(pairs)

    differences = [averaged("differences", s) for s in seeds]
    pooled = report_lib._paired(  # pylint: disable=protected-access
        differences, [0.0] * len(seeds), seeds, [averaged("thresholds", s) for s in seeds])
    pooled["settings"] = list(pairs)
    pooled["interval"] = interval(differences)
    comparisons[m] = pooled
  adjusted = holm({m: c["p_value"] for m, c in comparisons.items()})
  for m, pooled in comparisons.items():
    pooled["p_family"] = adjusted[m]
    pooled["verdict"] = _verdict(pooled, "p_family")
  return {"comparisons": comparisons, "against": EQUAL, "adjustment": "holm",
          "alpha": report_lib.ALPHA,
          "unit": "the reporting seed: the paired difference averaged over the settings"}


def detection_limit(pair: Mapping[str, Any]) -> float:
  """A setting's run-to-run noise, from its null control's paired differences from equal
  (the same method trained again on another data order): |mean| + t(0.975, n − 1) · sd / √n,
  the end of their 95 % t interval furthest from zero. A mean difference between two methods
  within it is within what reshuffling alone produces. It is a yardstick, not a test: the
  verdicts come from the sign test and the one-example threshold."""
  _, low, high = pair["interval"]
  return max(abs(low), abs(high))


def build(reports: Mapping[str, Mapping[str, Any]], controls: Sequence[str] = (),
          null: str | None = None) -> dict[str, Any]:
  """The leaderboard of several settings' reports (name -> report.json content).

  Args:
    reports: setting -> its report.
    controls: rows that are controls, not methods: paired and tested like the others (Holm
      over the controls), not ranked, kept out of the mean ranks and the headline's family.
    null: the control that is equal trained again on another data order; each setting's
      ``detection_limit`` comes from its paired differences from equal.
  """
  settings = {name: setting(r, controls) for name, r in reports.items()}
  names = []
  for board in settings.values():
    names += [m for m in board["methods"] if m not in names and m not in controls]
  values = {name: {m: _paired_values(r, m)[0] for m in r["methods"] if m not in controls}
            for name, r in reports.items()}
  means = _mean_ranks(values)
  intervals = mean_rank_intervals(
      values, bootstrap_picks({name: b["seeds"] for name, b in settings.items()}))
  mean_rank = {}
  for m in names:
    got = sum(m in b["methods"] for b in settings.values())
    mean_rank[m] = {"mean_rank": means[m], "mean_rank_ci": list(intervals[m]), "settings": got}
  order = sorted(names, key=lambda m: (mean_rank[m]["mean_rank"], names.index(m)))
  headline = family(settings, controls)
  for board in settings.values():
    row = board["methods"].get(null) if null else None
    if row and row["minus_equal"]:
      board["detection_limit"] = detection_limit(row["minus_equal"])
  # The orders are kept as lists too: a JSON copy of the board sorts its keys.
  shown = [c for c in controls if any(c in b["methods"] for b in settings.values())]
  return {"settings": settings, "mean_rank": {m: mean_rank[m] for m in order},
          "family": headline, "controls": list(controls),
          "order": {"settings": list(settings), "methods": order + shown}}


def _validation_mean(report: Mapping[str, Any], method: str, where: str) -> float:
  """The mean over the report's seeds of the method's validation worst-task retention, a
  diverged seed counting as 0 (as in every paired comparison)."""
  try:
    values = _seed_values(report, method, "val_worst_task_retention", 0.0)
  except KeyError:
    raise ValueError(f"{where}: method {method!r} has a seed with no validation figure (its "
                     "report predates them); rerun the study to rewrite the reports.") from None
  return report_lib._mean(values)  # pylint: disable=protected-access


def tune(variants: Mapping[str, Mapping[str, Any]], where: str = "the variants"
         ) -> tuple[dict[str, Any], dict[str, Any]]:
  """One setting's report with each method's knob chosen on the validation split.

  Args:
    variants: variant name -> that variant's report of the setting (the same seeds, methods
      and dense models: only the training of the compression stages differs), in the order
      a tie is broken (the first wins).
    where: names the setting in errors.

  Returns:
    ``(report, tuning)``: the first variant's report with each method's entry taken from the
    variant of the highest mean validation worst-task retention over the seeds (a diverged
    seed counts as 0; no test number takes part in the choice; computed on each task's one
    metric, as model selection is, which is the task's only metric on MultiDigits), and per
    method
    ``{"chosen": variant, "validation": {variant: mean}}``.
  """
  names = list(variants)
  if not names:
    raise ValueError(f"{where}: no variant to choose from.")
  first = variants[names[0]]
  for name in names[1:]:
    other = variants[name]
    if list(other["seeds"]) != list(first["seeds"]) or set(other["methods"]) != set(
        first["methods"]):
      raise ValueError(f"{where}: variant {name!r} ran other seeds or methods than "
                       f"{names[0]!r}; every variant must run the same ones.")
    if other["dense"]["per_seed"] != first["dense"]["per_seed"]:
      raise ValueError(f"{where}: variant {name!r} has another dense model than {names[0]!r}; "
                       "the variants must share the dense reference (only the compression "
                       "stages may differ).")
  merged = dict(first, methods=dict(first["methods"]))
  tuning = {}
  for method in first["methods"]:
    scores = {n: _validation_mean(variants[n], method, f"{where}, variant {n!r}") for n in names}
    chosen = max(names, key=lambda n: (scores[n], -names.index(n)))
    merged["methods"][method] = variants[chosen]["methods"][method]
    tuning[method] = {"chosen": chosen, "validation": scores}
  return merged, tuning


def choose(variants: Mapping[str, Mapping[str, Any]], where: str = "the tuning runs"
           ) -> dict[str, dict[str, Any]]:
  """Each method's variant, chosen on the validation split of the tuning seeds.

  Args:
    variants: variant name -> its report on the tuning seeds (the comparison of a grid:
      every variant's report, `comparison.run`), in the grid's order (a tie goes to the
      first).
    where: names the setting in errors.

  Returns:
    method -> ``{"chosen", "learning_rate_scale", "clip_norm", "validation", "stable",
    "at_grid_edge"}``: the variant of the highest mean validation worst-task retention over
    the tuning seeds among those that finished on every tuning seed (``stable``; when none
    did, the highest with a diverged seed counted as 0, and ``stable`` False), its scale and
    clip, every variant's mean (None for one that diverged on a tuning seed), and whether
    the chosen scale is the grid's smallest or largest (the grid may be too narrow). No test
    number is read.
  """
  names = list(variants)
  if not names:
    raise ValueError(f"{where}: no variant to choose from.")
  info = {n: variants[n]["variant"] for n in names}
  scales = sorted({v["learning_rate_scale"] for v in info.values()})
  out = {}
  for method in variants[names[0]]["methods"]:
    means, stable = {}, {}
    for n in names:
      report = variants[n]
      stable[n] = not any(method in d["runs"] for d in report.get("diverged", ()))
      means[n] = _validation_mean(report, method, f"{where}, variant {n!r}")
    pool = [n for n in names if stable[n]] or names
    chosen = max(pool, key=lambda n: (means[n], -names.index(n)))
    scale = info[chosen]["learning_rate_scale"]
    out[method] = {"chosen": chosen, "learning_rate_scale": scale,
                   "clip_norm": info[chosen]["clip_norm"],
                   "validation": {n: means[n] if stable[n] else None for n in names},
                   "stable": stable[chosen],
                   "at_grid_edge": len(scales) > 1 and scale in (scales[0], scales[-1])}
  return out


def _verdict(pair: Mapping[str, Any] | None, adjusted: str = "p_holm") -> str:
  """"better" / "worse" when the report's rule shows a difference and the `adjusted` p (Holm
  within the setting, or over the headline's family: ``p_family``) is below `report.ALPHA`
  too; "—" otherwise."""
  if not pair or pair["direction"] == 0 or pair[adjusted] >= report_lib.ALPHA:
    return "—"
  return "better" if pair["direction"] > 0 else "worse"


def _ci(triple: Sequence[float] | None, scale: float = 1.0, digits: int = 3,
        signed: bool = False) -> str:
  if triple is None:
    return "—"
  mean, low, high = (scale * v for v in triple)
  sign = "+" if signed else ""
  return f"{mean:{sign}.{digits}f} [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


def _pair_cells(pair: Mapping[str, Any] | None, tested: bool = True) -> list[str]:
  """The cells of a paired comparison: difference [CI], W/T/L and, if `tested`, p (Holm)
  and the verdict."""
  if pair is None:
    return ["—"] * (4 if tested else 2)
  cells = [_ci(pair["interval"], signed=True), f"{pair['better']}/{pair['tied']}/{pair['worse']}"]
  if tested:
    cells += [f"{pair['p_value']:.3f} ({pair['p_holm']:.3f})", _verdict(pair)]
  return cells


def _setting_lines(name: str, board: Mapping[str, Any],
                   tuning: Mapping[str, Any] | None = None,
                   variants: Sequence[str] = ()) -> list[str]:
  rows = board["methods"]
  # Ranked methods first, by rank; then the controls (rank None); ties: the best first, then
  # by name, so that a JSON copy of the board (its keys sorted) gives the same table.
  order = sorted(rows, key=lambda m: (rows[m]["rank"] is None, rows[m]["rank"] or 0,
                                      m != board["best"], m))
  seeds = len(board["seeds"])
  chosen = {m: t["chosen"] for m, t in (tuning or {}).items()}
  if "tuning_seeds" in board:  # the fair protocol: one folder per setting, tuning inside it
    reports = [f"[{name}/report.md]({name}/report.md) (the reporting seeds)",
               f"[{name}/tune/report.md]({name}/tune/report.md) (every variant on the tuning "
               f"seeds, each also in `{name}/tune/variants/<variant>/`)"]
  else:  # a variant per folder at the top, each with every setting inside
    reports = [f"[{v}{name}/report.md]({v}{name}/report.md)"
               for v in [f"{v}/" for v in variants] or [""]]
  lines = [f"## {name}", "",
           (f"Detection limit (the null control, equal on another data order, against equal: "
            f"the far end of its 95 % interval): **{board['detection_limit']:.4f}** "
            "worst-task retention; a difference within it is within what reshuffling alone "
            "produces.\n\n" if "detection_limit" in board else "")
           + f"{seeds} paired seeds; highest mean worst-task retention: **{board['best']}** "
           "(a mean, not a test). "
           f"Full report{'s' if len(reports) > 1 else ''}: {', '.join(reports)}. Tests in this "
           "table are adjusted within this setting only (Holm over its methods, and apart "
           "over its controls, which are not ranked); the headline's are adjusted over the "
           "whole family (above).", "",
           "| rank | method | worst-task retention [95 % CI] | Δm % [95 % CI] "
           "| − equal [95 % CI] | W/T/L | p (Holm in setting) | vs equal "
           "| − best [95 % CI] | W/T/L |",
           "|---:|---|---|---|---|---|---|---|---|---|"]
  for m in order:
    row = rows[m]
    name_cell = (m + (f" ({chosen[m]})" if m in chosen else "")
                 + (f" ({row['diverged']} diverged)" if row["diverged"] else ""))
    lines.append("| " + " | ".join(
        ["—" if row["rank"] is None else f"{row['rank']:g}", name_cell, _ci(row["worst_task_retention"]),
         _ci(row["delta_m"], digits=2, signed=True)]
        + _pair_cells(row["minus_equal"]) + _pair_cells(row["minus_best"], tested=False))
        + " |")
  for label, names in (("Shown", [m for m in order if rows[m]["rank"] is not None]),
                       ("Controls shown", [m for m in order if rows[m]["rank"] is None])):
    shown = {v: [m for m in names if _verdict(rows[m]["minus_equal"]) == v]
             for v in ("better", "worse")}
    if names:
      over = ", over the controls" if label != "Shown" else ""
      lines += ["", (f"{label} better than equal (Holm within this setting{over}): "
                     f"{', '.join(shown['better']) or 'none'}; "
                     f"shown worse: {', '.join(shown['worse']) or 'none'}.")]
  return lines


def to_markdown(board: Mapping[str, Any]) -> str:
  """The leaderboard of `build` as a Markdown report (the study's ``report.md``)."""
  settings = board["settings"]
  names = board["order"]["settings"]
  shown_controls = [m for m in board["order"]["methods"] if m not in board["mean_rank"]]
  controls_text = (f" and {len(shown_controls)} controls (not ranked)" if shown_controls
                   else "")
  lines = ["# Leaderboard: which weighting and masks keep the worst task best", "",
           f"{len(board['mean_rank'])} methods{controls_text}, {len(names)} settings ("
           + ", ".join(names) + "). Each setting is its own comparison with its own report.",
           "",
           "How to read it. *Worst-task retention*: on each seed, the lowest over tasks of the "
           "oriented ratio compressed / dense (dense / compressed where lower is better), "
           "averaged over the task's metrics (1 = no task lost anything), its "
           "mean over every seed with a diverged seed counted as 0, the same numbers that rank "
           "the methods and enter the paired tests; *Δm*: LibMTL's mean relative change over "
           "every metric, in percent (negative is worse than dense), over the seeds that did "
           "not diverge. Both with 95 % Student-t intervals. *− equal*, *− best*: the paired "
           "difference in worst-task retention from equal weighting and from the setting's "
           "best (its highest mean), seed by seed, a diverged seed counting as retention 0, "
           "with its 95 % t interval; *W/T/L*: seeds won, tied (within one test example of the "
           "worst task) and lost; *p*: the exact sign test over the untied seeds, and in "
           "brackets Holm's adjustment over all the methods of the setting (a control's: over "
           "the setting's controls); *vs equal* names a difference only when the report's rule "
           "shows it (p < 0.05, and the mean beyond one test example) and Holm's p is below "
           "0.05 too. The best is picked on the very seeds it is compared on, so *− best* is "
           "a description, not a test: taken as fixed in advance it would find the others "
           "worse too often.", "",
           "## Mean rank across settings", "",
           "Per setting, ↑ / ↓ mark a difference from equal that the setting's own test "
           "shows (Holm within the setting: a per-setting test, not the headline's). The "
           "mean rank's interval is a "
           f"95 % percentile interval over {BOOTSTRAP_RESAMPLES} resamples of the reporting "
           "seeds (paired: every method, and every setting, takes the same drawn seeds).", "",
           "| method | mean rank [95 % CI] | " + " | ".join(names) + " |",
           "|---|---:|" + "---:|" * len(names)]
  for m in board["order"]["methods"]:
    if m not in board["mean_rank"]:  # a control: in the settings' tables, not ranked
      continue
    info, cells = board["mean_rank"][m], []
    for n in names:
      row = settings[n]["methods"].get(m)
      cells.append("—" if row is None else
                   f"{row['rank']:g}" + {"better": " ↑", "worse": " ↓"}.get(
                       _verdict(row["minus_equal"]), ""))
    low, high = info["mean_rank_ci"]
    lines.append(f"| {m} | {info['mean_rank']:.2f} [{low:.2f}, {high:.2f}] | "
                 + " | ".join(cells) + " |")
  lines += ["", "↑ / ↓: shown better / worse than equal in that setting (its own test, Holm "
                "over the setting's methods).", ""]
  lines += _family_lines(board["family"]) + [""]
  tuning = board.get("tuning")
  if tuning:
    lines += _tuning_lines(board) + [""]
  for n in names:
    lines += _setting_lines(n, settings[n], tuning and tuning[n],
                            board.get("variants", ())) + [""]
  return "\n".join(lines)


def _family_lines(headline: Mapping[str, Any]) -> list[str]:
  """The headline's family as a table: each method against equal over every setting."""
  comparisons = headline["comparisons"]
  lines = ["## The headline: every method against equal, over every setting", "",
           f"One comparison per method, {len(comparisons)} in all, Holm's adjustment over "
           "them (the family fixed before the numbers). The unit is the reporting seed: its "
           "paired difference from equal in worst-task retention (a diverged run counts as "
           "0), averaged over the settings, and likewise its tie threshold (one test example "
           "of the worst task); *W/T/L*: seeds better, tied, worse; *p*: the exact sign test "
           "over the untied seeds, then Holm's p over the family; a verdict only when Holm's "
           "p < 0.05 and the mean beyond the mean threshold.", "",
           "| method | − equal, averaged over settings [95 % CI] | W/T/L | p | p (Holm, "
           "family) | verdict |", "|---|---:|---:|---:|---:|---|"]
  order = sorted(comparisons, key=lambda m: -comparisons[m]["mean"])
  for m in order:
    c = comparisons[m]
    lines.append(f"| {m} | {_ci(c['interval'], signed=True)} | {c['better']}/{c['tied']}/"
                 f"{c['worse']} | {c['p_value']:.3g} | {c['p_family']:.3g} | {c['verdict']} |")
  return lines


def _tuning_lines(board: Mapping[str, Any]) -> list[str]:
  """The knob each method got in each setting, and the validation figures it was chosen by."""
  names, tuning = board["order"]["settings"], board["tuning"]
  first = board["settings"][names[0]] if names else {}
  if "tuning_seeds" in first:
    how = (f"Each method ran every variant below on the tuning seeds "
           f"{', '.join(map(str, first['tuning_seeds']))}, disjoint from the reported seeds; "
           "per setting it keeps the variant of the highest mean validation worst-task "
           "retention among those that finished on every tuning seed (— : diverged on one; a "
           "tie goes to the first variant), and every number above is that variant trained "
           "again on the reported seeds from their own dense models. ⚠: the choice is at the "
           "grid's smallest or largest learning rate; ✗: every variant diverged on a tuning "
           "seed. Cells: the chosen variant, then the validation means of ")
  else:
    how = ("Each method's compression stages ran once per variant below (the same dense "
           "models, seeds and budget); per setting, each method keeps the variant of the "
           "highest mean validation worst-task retention over its seeds (a diverged seed "
           "counts as 0; a tie goes to the first variant), and every test number above is "
           "that variant's. Cells: the chosen variant, then the validation means of ")
  lines = ["## Tuned on the validation split", "", how + ", ".join(board["variants"]) + ".",
           "", "| method | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

  def mean(value):
    return "—" if value is None else f"{value:.3f}"

  for m in board["order"]["methods"]:
    cells = []
    for n in names:
      t = tuning[n].get(m)
      mark = ("" if t is None else (" ⚠" if t.get("at_grid_edge") else "")
              + ("" if t.get("stable", True) else " ✗"))
      cells.append("—" if t is None else f"**{t['chosen']}**{mark} (" + ", ".join(
          mean(t["validation"][v]) for v in board["variants"]) + ")")
    lines.append(f"| {m} | " + " | ".join(cells) + " |")
  return lines
