"""Tests of mmcompress.report: hand-computed aggregates, honest sentences, files on disk."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from mmcompress import report as report_lib

TASKS = ["cls", "depth"]
HIGHER = {"cls": True, "depth": False}
NAMES = {"cls": "accuracy", "depth": "MAE"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _method(cls, depth, sparsity=0.975, ratio=40.0, weights=None):
  out = {"metrics": {"cls": cls, "depth": depth}, "sparsity": sparsity,
         "compression_ratio": ratio,
         "export": {"file_bytes": 1000.0, "dense_bytes": 40000.0, "prunable_ratio": 20.0}}
  if weights is not None:
    out["task_weights"] = weights
  return out


def _per_seed():
  """Three seeds; the retentions (oriented) are written next to each metric."""
  return [
      {"seed": 0, "dense": {"metrics": {"cls": 0.8, "depth": 0.5}},
       "methods": {
           "equal": _method(0.72, 0.625),                      # 0.9, 0.8 -> worst 0.8
           "minmax": _method(0.68, 0.5625, 0.974, 38.0,        # 0.85, 0.888.. -> 0.85
                             weights=[[0.5, 0.5], [0.4, 0.6], [0.3, 0.7]])}},
      {"seed": 1, "dense": {"metrics": {"cls": 1.0, "depth": 0.4}},
       "methods": {
           "equal": _method(0.9, 0.5),                         # 0.9, 0.8 -> 0.8
           "minmax": _method(0.95, 0.4 / 0.78, 0.976, 42.0,    # 0.95, 0.78 -> 0.78
                             weights=[[0.5, 0.5], [0.9, 0.1]])}},
      {"seed": 2, "dense": {"metrics": {"cls": 0.5, "depth": 0.6}},
       "methods": {
           "equal": _method(0.45, 0.75),                       # 0.9, 0.8 - 1e-16 -> 0.8
           "minmax": _method(0.4, 0.6, 0.975, 40.0)}},         # 0.8, 1.0 -> 0.8 (tie)
  ]


def _build(per_seed=None, **kwargs):
  return report_lib.build_report(_per_seed() if per_seed is None else per_seed, tasks=TASKS,
                                 higher_is_better=HIGHER, metric_names=NAMES,
                                 target_sparsity=0.975, **kwargs)


def test_means_retentions_and_delta_m_by_hand():
  report = _build(extra={"notes": "methods share the dense pretraining",
                         "wall_time_s": np.float32(12.5)})
  assert report["seeds"] == [0, 1, 2] and report["tasks"] == TASKS
  assert report["target_compression_ratio"] == pytest.approx(40.0)
  assert report["extra"] == {"notes": "methods share the dense pretraining",
                             "wall_time_s": 12.5}
  assert report["dense"]["metrics"] == pytest.approx({"cls": 2.3 / 3, "depth": 0.5})
  assert [r["metrics"]["depth"] for r in report["dense"]["per_seed"]] == [0.5, 0.4, 0.6]

  equal, minmax = report["methods"]["equal"], report["methods"]["minmax"]
  assert equal["metrics"] == pytest.approx({"cls": 2.07 / 3, "depth": 0.625})
  assert equal["retention"] == pytest.approx({"cls": 0.9, "depth": 0.8})
  assert equal["worst_task_retention"] == pytest.approx(0.8)
  # Δm per seed: 50 * (-0.10 - 0.25) = -17.5 on every seed.
  assert equal["delta_m"] == pytest.approx(-17.5)
  assert [r["worst_task"] for r in equal["per_seed"]] == ["depth"] * 3

  assert minmax["retention"] == pytest.approx(
      {"cls": (0.85 + 0.95 + 0.8) / 3, "depth": (0.5 / 0.5625 + 0.78 + 1.0) / 3})
  # The mean of each seed's minimum (0.81), not the minimum of the mean retentions (0.867).
  assert minmax["worst_task_retention"] == pytest.approx((0.85 + 0.78 + 0.8) / 3)
  assert [r["worst_task_retention"] for r in minmax["per_seed"]] == pytest.approx(
      [0.85, 0.78, 0.8])
  assert [r["worst_task"] for r in minmax["per_seed"]] == ["cls", "depth", "cls"]
  # Seeds: 50 * (-0.15 - 0.125), 50 * (-0.05 - (1 / 0.78 - 1)), 50 * (-0.2 - 0).
  seed_1 = 50 * (-0.05 - (1 / 0.78 - 1))
  assert [r["delta_m"] for r in minmax["per_seed"]] == pytest.approx([-13.75, seed_1, -10.0])
  assert minmax["delta_m"] == pytest.approx((-13.75 + seed_1 - 10.0) / 3)
  assert minmax["sparsity"] == pytest.approx(0.975)
  assert minmax["compression_ratio"] == pytest.approx(40.0)
  assert minmax["export"] == pytest.approx(
      {"file_bytes": 1000.0, "dense_bytes": 40000.0, "prunable_ratio": 20.0})
  assert minmax["task_weights"] == [[0.5, 0.5], [0.4, 0.6], [0.3, 0.7]]
  assert minmax["task_weights_seed"] == 0
  assert "task_weights" not in equal
  assert [r["sparsity"] for r in minmax["per_seed"]] == [0.974, 0.976, 0.975]


def test_paired_comparison_by_hand():
  comparison = _build()["comparison"]
  assert comparison["best_worst_task_retention"]["method"] == "minmax"
  assert comparison["best_worst_task_retention"]["value"] == pytest.approx(0.81)
  assert [r["method"] for r in comparison["ranking"]] == ["minmax", "equal"]
  pair = comparison["minmax_minus_equal"]
  assert pair["seeds"] == [0, 1, 2]
  assert pair["differences"] == pytest.approx([0.05, -0.02, 0.0], abs=1e-12)
  assert pair["mean"] == pytest.approx(0.01)
  assert pair["min"] == pytest.approx(-0.02) and pair["max"] == pytest.approx(0.05)
  # Seed 2 differs only by float rounding (0.4 / 0.5 against 0.6 / 0.75): a tie.
  assert pair["differences"][2] != 0.0
  assert (pair["better"], pair["worse"], pair["tied"]) == (1, 1, 1)


def test_markdown_table_and_sentence():
  text = report_lib.to_markdown(_build(extra={"notes": "methods share the dense pretraining"}))
  assert "97.5 %" in text and "40x" in text and "methods share the dense pretraining" in text
  assert "| cls (accuracy ↑) | depth (MAE ↓) |" in text
  assert "| dense | 0.767 [0.500–1.000] | 0.500 [0.400–0.600] |" in text
  assert ("| equal | 0.690 [0.450–0.900] | 0.625 [0.500–0.750] | 0.800 [0.800–0.800] "
          "| −17.50 [−17.50–−17.50] | 97.5 % | 40.0x | 20.0x | 1000 B |") in text
  assert "| minmax | 0.677 [0.400–0.950] |" in text
  assert "| 0.810 [0.780–0.850] | −13.45 [−16.60–−10.00] |" in text
  sentences = [line for line in text.splitlines() if "seed by seed" in line]
  assert sentences == [
      "minmax kept the worst task best (mean worst-task retention 0.810); min-max minus "
      "equal, worst-task retention, seed by seed: +0.050, −0.020, 0.000 (better on 1 of 3 "
      "seeds, worse on 1, tied on 1, mean +0.010): no consistent difference between min-max "
      "and equal weighting."]


def test_markdown_says_plainly_when_minmax_is_worse():
  per_seed = _per_seed()
  for seed in per_seed:   # min-max loses 0.05 of cls retention on every seed
    seed["methods"]["minmax"]["metrics"] = {
        "cls": seed["dense"]["metrics"]["cls"] * 0.75,
        "depth": seed["dense"]["metrics"]["depth"] / 0.95}
  report = _build(per_seed)
  pair = report["comparison"]["minmax_minus_equal"]
  assert (pair["better"], pair["worse"], pair["tied"]) == (0, 3, 0)
  assert pair["differences"] == pytest.approx([-0.05] * 3)
  text = report_lib.to_markdown(report)
  assert ("equal kept the worst task best (mean worst-task retention 0.800); min-max minus "
          "equal, worst-task retention, seed by seed: −0.050, −0.050, −0.050 (better on 0 of "
          "3 seeds, worse on 3, mean −0.050): min-max protected the worst task less well than "
          "equal weighting.") in text


def test_markdown_better_on_most_seeds_and_single_seed():
  per_seed = _per_seed()
  per_seed[1]["methods"]["minmax"]["metrics"]["depth"] = 0.4 / 0.83   # 0.83 > 0.8: better
  text = report_lib.to_markdown(_build(per_seed))
  assert ("+0.050, +0.030, 0.000 (better on 2 of 3 seeds, tied on 1, mean +0.027): min-max "
          "protected the worst task better than equal weighting.") in text

  single = _build(_per_seed()[:1])
  text = report_lib.to_markdown(single)
  assert "[" not in text and "one seed, so no spread is shown" in text
  assert "| equal | 0.720 | 0.625 | 0.800 | −17.50 |" in text
  assert "seed by seed: +0.050 (better on 1 of 1 seed, mean +0.050)" in text
  assert "on a single seed." in text


def test_no_pair_and_tied_best():
  per_seed = _per_seed()
  for seed in per_seed:
    seed["methods"] = {"equal": seed["methods"]["equal"],
                       "dwa": copy.deepcopy(seed["methods"]["equal"])}
  report = _build(per_seed)
  assert report["comparison"]["minmax_minus_equal"] is None
  assert report["comparison"]["best_worst_task_retention"]["tied_with"] == ["dwa"]
  assert ("equal and dwa tied for keeping the worst task best (mean worst-task retention "
          "0.800); there is no min-max and equal pair to compare") in report_lib.to_markdown(
              report)


def test_bad_input_is_named():
  per_seed = _per_seed()
  del per_seed[2]["methods"]["minmax"]
  with pytest.raises(ValueError, match="seed 2"):
    _build(per_seed)
  per_seed = _per_seed()
  del per_seed[1]["methods"]["equal"]["metrics"]["depth"]
  with pytest.raises(ValueError, match=r"seed 1, method 'equal'.*depth"):
    _build(per_seed)
  per_seed = _per_seed()
  per_seed[0]["methods"]["equal"]["metrics"]["depth"] = 0.0
  with pytest.raises(ValueError, match=r"seed 0, method 'equal', task 'depth'"):
    _build(per_seed)
  per_seed = _per_seed()
  per_seed[0]["methods"]["minmax"]["task_weights"] = [[0.2, 0.3, 0.5]]
  with pytest.raises(ValueError, match="task_weights"):
    _build(per_seed)
  per_seed = _per_seed()
  per_seed[1]["seed"] = 0
  with pytest.raises(ValueError, match="repeated seeds"):
    _build(per_seed)
  per_seed = _per_seed()
  for seed in per_seed:
    seed["methods"]["dense"] = seed["methods"].pop("equal")
  with pytest.raises(ValueError, match="'dense'"):
    _build(per_seed)
  with pytest.raises(ValueError, match="target_sparsity"):
    report_lib.build_report(_per_seed(), tasks=TASKS, higher_is_better=HIGHER,
                            metric_names=NAMES, target_sparsity=40)
  with pytest.raises(ValueError, match="metric_names"):
    report_lib.build_report(_per_seed(), tasks=TASKS, higher_is_better=HIGHER,
                            metric_names={"cls": "accuracy"}, target_sparsity=0.975)


def test_write_files(tmp_path):
  report = _build(extra={"config": {"lr": 0.1, "seeds": (0, 1, 2)}})
  paths = report_lib.write(report, tmp_path / "out")
  assert set(paths) == {"json", "markdown", "task_metrics", "task_weights"}
  with open(paths["json"]) as f:
    assert json.load(f) == report
  for key in ("task_metrics", "task_weights"):
    with open(paths[key], "rb") as f:
      data = f.read()
    assert data[:8] == PNG_MAGIC and len(data) > 5000
  markdown = open(paths["markdown"], encoding="utf-8").read()
  assert markdown.startswith(report_lib.to_markdown(report))
  assert "(task_weights.png)" in markdown and "(task_metrics.png)" in markdown
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
      "report.json", "report.md", "task_metrics.png", "task_weights.png"]
  # A report read back from report.json renders the same Markdown.
  assert report_lib.to_markdown(json.load(open(paths["json"]))) == report_lib.to_markdown(report)


def test_write_without_a_trajectory_skips_the_weights_plot(tmp_path):
  per_seed = _per_seed()
  for seed in per_seed:
    seed["methods"]["minmax"].pop("task_weights", None)
  report = _build(per_seed)
  assert report_lib.plot_task_weights(report, tmp_path / "w.png") is None
  assert not (tmp_path / "w.png").exists()
  paths = report_lib.write(report, tmp_path)
  assert "task_weights" not in paths
  assert "task_weights.png" not in open(paths["markdown"], encoding="utf-8").read()
  (tmp_path / "a_file").write_text("x")
  with pytest.raises(ValueError, match="is a file"):
    report_lib.write(report, tmp_path / "a_file")


def test_a_verdict_needs_a_majority_of_all_seeds():
  from mmcompress.report import summary_sentence  # pylint: disable=import-outside-toplevel
  differences = [0.0, 0.006, -0.012, 0.012, 0.0, 0.0, 0.0, 0.0, 0.011, -0.006]
  pair = {"differences": differences, "better": 3, "worse": 2, "tied": 5, "num_seeds": 10,
          "mean": sum(differences) / 10}
  report = {"comparison": {"best_worst_task_retention": {"method": "uncertainty",
                                                         "value": 0.982},
                           "minmax_minus_equal": pair}}
  assert "no consistent difference" in summary_sentence(report)
  pair.update(better=9, worse=0, tied=1, mean=0.014)
  assert "min-max protected the worst task better" in summary_sentence(report)
  pair.update(better=2, worse=7, tied=0, num_seeds=9, mean=-0.139)
  assert "less well than equal" in summary_sentence(report)


# ----------------------------------------------------------------------------- all metrics

NYU_TASKS = ["segmentation", "depth", "normal"]
NYU_NAMES = {"segmentation": "miou", "depth": "abs_err", "normal": "mean"}
NYU_HIGHER = {"segmentation": {"miou": True, "pixel_acc": True},
              "depth": {"abs_err": False, "rel_err": False},
              "normal": {"mean": False, "median": False, "11.25": True, "22.5": True,
                         "30": True}}
NYU_DENSE = {"segmentation": {"miou": 0.40, "pixel_acc": 0.60},
             "depth": {"abs_err": 0.50, "rel_err": 0.20},
             "normal": {"mean": 25.0, "median": 20.0, "11.25": 0.20, "22.5": 0.50, "30": 0.60}}
# Oriented relative changes: seg -10 %, +5 %; depth -10 %, +5 %; normal -10 %, 0, -10 %,
# -10 %, +10 %.
NYU_EQUAL = {"segmentation": {"miou": 0.36, "pixel_acc": 0.63},
             "depth": {"abs_err": 0.55, "rel_err": 0.19},
             "normal": {"mean": 27.5, "median": 20.0, "11.25": 0.18, "22.5": 0.45, "30": 0.66}}


def _nyu_result(task_metrics):
  return {"metrics": {t: task_metrics[t][NYU_NAMES[t]] for t in NYU_TASKS},
          "task_metrics": copy.deepcopy(task_metrics)}


def _nyu_build(per_seed):
  return report_lib.build_report(
      per_seed, tasks=NYU_TASKS, higher_is_better={t: NYU_HIGHER[t][NYU_NAMES[t]]
                                                   for t in NYU_TASKS},
      metric_names=NYU_NAMES, all_higher_is_better=NYU_HIGHER, target_sparsity=0.975)


def test_nyuv2_delta_m_and_retention_average_every_metric_by_hand():
  report = _nyu_build([{"seed": 0, "dense": _nyu_result(NYU_DENSE),
                        "methods": {"equal": _nyu_result(NYU_EQUAL)}}])
  equal = report["methods"]["equal"]
  # LibMTL: task means -2.5 %, -2.5 %, -4 % -> -3 %; one metric: -10 % on each task.
  assert equal["delta_m"] == pytest.approx(-3.0)
  assert equal["delta_m_one_metric"] == pytest.approx(-10.0)
  seg, depth = (0.36 / 0.40 + 0.63 / 0.60) / 2, (0.50 / 0.55 + 0.20 / 0.19) / 2
  normal = (25 / 27.5 + 1.0 + 0.18 / 0.20 + 0.45 / 0.50 + 0.66 / 0.60) / 5
  assert equal["retention"] == pytest.approx(
      {"segmentation": seg, "depth": depth, "normal": normal})
  assert equal["worst_task_retention"] == pytest.approx(normal)  # 0.9618
  assert equal["per_seed"][0]["worst_task"] == "normal"
  # One metric per task: mIoU 0.9, abs err 0.909, mean angle 0.909 -> segmentation, 0.9.
  assert equal["retention_one_metric"] == pytest.approx(
      {"segmentation": 0.9, "depth": 0.5 / 0.55, "normal": 25 / 27.5})
  assert equal["worst_task_retention_one_metric"] == pytest.approx(0.9)
  assert equal["per_seed"][0]["worst_task_one_metric"] == "segmentation"
  assert equal["task_metrics"] == NYU_EQUAL  # the mean over one seed is the seed's value
  assert report["dense"]["task_metrics"] == NYU_DENSE
  assert report["all_higher_is_better"] == NYU_HIGHER
  text = report_lib.to_markdown(report)
  assert "Δm per LibMTL over all 9 metrics" in text and "positive is better" in text
  assert "segmentation: miou, depth: abs_err, normal: mean" in text
  assert "| depth abs_err ↓ | depth rel_err ↓ |" in text and "| normal 11.25 ↑ |" in text
  assert "| equal | 0.900 | \u221210.00 |" in text  # the one-metric row
  assert "| equal | 0.963 | \u22123.00 |" not in text  # Δm is in the main table, not here
  assert f"{normal:.3f} | \u22123.00 |" in text


def test_one_metric_per_task_the_two_conventions_coincide():
  report = _build()
  for info in report["methods"].values():
    assert info["delta_m"] == info["delta_m_one_metric"]
    assert info["worst_task_retention"] == info["worst_task_retention_one_metric"]
    assert info["retention"] == info["retention_one_metric"]
    for row in info["per_seed"]:
      assert row["worst_task"] == row["worst_task_one_metric"]
      assert row["task_metrics"] == {t: {NAMES[t]: row["metrics"][t]} for t in TASKS}
  # Declaring the one metric explicitly, with task_metrics in every result, changes nothing.
  per_seed = _per_seed()
  for seed in per_seed:
    for result in [seed["dense"]] + list(seed["methods"].values()):
      result["task_metrics"] = {t: {NAMES[t]: result["metrics"][t]} for t in TASKS}
  declared = _build(per_seed, all_higher_is_better={t: {NAMES[t]: HIGHER[t]} for t in TASKS})
  assert declared["methods"] == report["methods"]
  text = report_lib.to_markdown(report)
  assert "One metric per task, so the one-metric figures are the same." in text
  assert "One-metric figures" not in text


def test_all_metrics_input_errors_are_named():
  good = {"seed": 0, "dense": _nyu_result(NYU_DENSE), "methods": {"equal": _nyu_result(NYU_EQUAL)}}
  missing = copy.deepcopy(good)
  del missing["methods"]["equal"]["task_metrics"]["normal"]["median"]
  with pytest.raises(ValueError, match=r"seed 0, method 'equal'.*'median'.*'normal'"):
    _nyu_build([missing])
  missing = copy.deepcopy(good)
  del missing["dense"]["task_metrics"]
  with pytest.raises(ValueError, match=r"seed 0: dense.*'pixel_acc'"):
    _nyu_build([missing])
  with pytest.raises(ValueError, match="'miou' with higher_is_better=True"):
    report_lib.build_report([good], tasks=NYU_TASKS,
                            higher_is_better={t: NYU_HIGHER[t][NYU_NAMES[t]] for t in NYU_TASKS},
                            metric_names=NYU_NAMES, target_sparsity=0.975,
                            all_higher_is_better={**NYU_HIGHER,
                                                  "segmentation": {"pixel_acc": True}})
