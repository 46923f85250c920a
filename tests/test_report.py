"""Tests of mmcompress.app.report: hand-computed aggregates, honest sentences, files on disk."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from mmcompress.app import plots, records, report as report_lib

TASKS = ["cls", "depth"]
HIGHER = {"cls": True, "depth": False}
NAMES = {"cls": "accuracy", "depth": "MAE"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _method(cls, depth, sparsity=0.975, ratio=40.0, weights=None, whole=15.5):
  out = {"metrics": {"cls": cls, "depth": depth}, "sparsity": sparsity,
         "compression_ratio": ratio, "whole_model_compression_ratio": whole,
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


def test_the_report_has_exactly_the_keys_its_types_name():
  report = _build()
  assert set(report) == set(report_lib.Report.__annotations__)
  comparison = report["comparison"]
  assert set(comparison) == set(report_lib.Comparison.__annotations__)
  assert set(comparison["best_worst_task_retention"]) == set(
      report_lib.BestMethod.__annotations__)
  assert set(comparison["minmax_minus_equal"]) == set(
      report_lib.MinmaxMinusEqual.__annotations__)
  summary = report_lib.MethodSummary
  assert set(report["methods"]["minmax"]) == set(summary.__annotations__)  # it logs weights
  assert set(report["methods"]["equal"]) == summary.__required_keys__
  assert summary.__optional_keys__ == {"task_weights", "task_weights_seed"}
  criteria = _build([{**r, "methods": {**r["methods"], "equal+taylor_max": r["methods"]["equal"]}}
                     for r in _per_seed()])["comparison"]["criterion_minus_magnitude"]
  assert set(criteria["equal+taylor_max"]) == set(report_lib.CriterionDifference.__annotations__)


def test_validation_worst_task_retention_by_hand():
  per_seed = _per_seed()
  per_seed[0]["dense"]["val_metrics"] = {"cls": 0.75, "depth": 0.5}
  per_seed[0]["methods"]["equal"]["val_metrics"] = {"cls": 0.6, "depth": 0.8}   # 0.8, 0.625
  per_seed[0]["methods"]["minmax"]["val_metrics"] = {"cls": 0.675, "depth": 0.4}  # 0.9, 1.25
  report = _build(per_seed)
  rows = {m: report["methods"][m]["per_seed"] for m in ("equal", "minmax")}
  assert report["dense"]["per_seed"][0]["val_metrics"] == {"cls": 0.75, "depth": 0.5}
  assert rows["equal"][0]["val_worst_task_retention"] == pytest.approx(0.625)
  assert rows["minmax"][0]["val_worst_task_retention"] == pytest.approx(0.9)
  # Seeds without validation metrics carry no validation figure.
  assert "val_worst_task_retention" not in rows["equal"][1]
  assert "val_metrics" not in report["dense"]["per_seed"][1]


def test_paired_comparison_by_hand():
  comparison = _build()["comparison"]
  assert comparison["best_worst_task_retention"]["method"] == "minmax"
  assert comparison["best_worst_task_retention"]["value"] == pytest.approx(0.81)
  assert not comparison["best_worst_task_retention"]["shown"]
  assert [r["method"] for r in comparison["ranking"]] == ["minmax", "equal"]
  pair = comparison["minmax_minus_equal"]
  assert pair["seeds"] == [0, 1, 2]
  assert pair["differences"] == pytest.approx([0.05, -0.02, 0.0], abs=1e-12)
  assert pair["mean"] == pytest.approx(0.01)
  assert pair["min"] == pytest.approx(-0.02) and pair["max"] == pytest.approx(0.05)
  # Seed 2 differs only by float rounding (0.4 / 0.5 against 0.6 / 0.75): a tie.
  assert pair["differences"][2] != 0.0
  assert (pair["better"], pair["worse"], pair["tied"]) == (1, 1, 1)
  # No test counts: no one-example threshold, and one win against one loss is p = 1.
  assert pair["threshold"] == 0.0 and comparison["effect_threshold"]["per_task"] is None
  assert pair["p_value"] == 1.0 and pair["direction"] == 0 and pair["winner"] is None
  assert pair["diverged"] == {"minmax": [], "equal": []}


def test_markdown_table_and_sentence():
  text = report_lib.to_markdown(_build(extra={"notes": "methods share the dense pretraining"}))
  assert "97.5 %" in text and "40x" in text and "methods share the dense pretraining" in text
  assert "| cls (accuracy ↑) | depth (MAE ↓) |" in text
  assert "| dense | 0.767 [0.500–1.000] | 0.500 [0.400–0.600] |" in text
  assert ("| equal | 0.690 [0.450–0.900] | 0.625 [0.500–0.750] | 0.800 [0.800–0.800] "
          "| −17.50 [−17.50–−17.50] | 97.5 % | 40.0x | 15.5x | 20.0x | 1000 B |") in text
  assert "| minmax | 0.677 [0.400–0.950] |" in text
  assert "| 0.810 [0.780–0.850] | −13.45 [−16.60–−10.00] |" in text
  sentences = [line for line in text.splitlines() if "seed by seed" in line]
  assert sentences == [
      "No method is shown to keep the worst task best over 3 seeds (highest mean worst-task "
      "retention: minmax, 0.810); min-max minus equal, worst-task retention, seed by seed: "
      "+0.050, −0.020, 0.000 (better on 1 of 3 seeds, worse on 1, tied on 1; mean +0.010; "
      "sign test p = 1.000): no difference shown over 3 seeds."]


def _scaled(per_seed, copies):
  """`per_seed` repeated `copies` times under new seed numbers."""
  out = []
  for c in range(copies):
    for result in copy.deepcopy(per_seed):
      result["seed"] = result["seed"] + c * len(per_seed)
      out.append(result)
  return out


def test_markdown_says_plainly_when_minmax_is_worse_and_shown():
  per_seed = _per_seed()
  for seed in per_seed:   # min-max loses 0.05 of cls retention on every seed
    seed["methods"]["minmax"]["metrics"] = {
        "cls": seed["dense"]["metrics"]["cls"] * 0.75,
        "depth": seed["dense"]["metrics"]["depth"] / 0.95}
  report = _build(per_seed)
  pair = report["comparison"]["minmax_minus_equal"]
  assert (pair["better"], pair["worse"], pair["tied"]) == (0, 3, 0)
  assert pair["differences"] == pytest.approx([-0.05] * 3)
  # Three losses out of three happen to fair coins 2 / 8 of the time: nothing is shown.
  assert pair["p_value"] == pytest.approx(0.25) and pair["winner"] is None
  text = report_lib.to_markdown(report)
  assert ("No method is shown to keep the worst task best over 3 seeds (highest mean "
          "worst-task retention: equal, 0.800); min-max minus equal, worst-task retention, "
          "seed by seed: −0.050, −0.050, −0.050 (better on 0 of 3 seeds, worse on 3; mean "
          "−0.050; sign test p = 0.250): no difference shown over 3 seeds.") in text
  # Nine losses out of nine: p = 2 / 512, and 0.05 is far above one test example.
  report = _build(_scaled(per_seed, 3), test_counts={"cls": 100, "depth": 100})
  pair = report["comparison"]["minmax_minus_equal"]
  assert pair["p_value"] == pytest.approx(2 / 512) and pair["winner"] == "equal"
  text = report_lib.to_markdown(report)
  assert "sign test p = 0.004): min-max protected the worst task less well than equal" in text
  assert text.count("equal kept the worst task best (mean worst-task retention 0.800; ahead "
                    "of every other method seed by seed, sign test p ≤ 0.004") == 1


def test_markdown_single_seed_shows_nothing():
  text = report_lib.to_markdown(_build(_per_seed()[:1]))
  assert "[" not in text and "one seed, so no spread is shown" in text
  assert "| equal | 0.720 | 0.625 | 0.800 | −17.50 |" in text
  assert ("seed by seed: +0.050 (better on 1 of 1 seed; mean +0.050; sign test p = 1.000): "
          "no difference shown over 1 seed.") in text


def test_no_pair_and_tied_best():
  per_seed = _per_seed()
  for seed in per_seed:
    seed["methods"] = {"equal": seed["methods"]["equal"],
                       "dwa": copy.deepcopy(seed["methods"]["equal"])}
  report = _build(per_seed)
  assert report["comparison"]["minmax_minus_equal"] is None
  assert report["comparison"]["best_worst_task_retention"]["tied_with"] == ["dwa"]
  assert ("equal and dwa tied for keeping the worst task best (mean worst-task retention "
          "0.800, within one test example); no method is shown to keep it best over 3 "
          "seeds; there is no min-max and equal pair to compare") in report_lib.to_markdown(report)
  one = _build([{**s, "methods": {"equal": s["methods"]["equal"]}} for s in per_seed])
  assert report_lib.summary_sentence(one).startswith(
      "equal is the only compressed method (mean worst-task retention 0.800); there is no")


# ----------------------------------------------------------------------------- the verdict


def _worst_task_seeds(differences):
  """One seed per difference: min-max's worst-task retention is equal's (0.9) + difference.

  The dense cls accuracy is 0.8 on every seed; cls is the worst task of both methods (depth
  keeps 0.95).
  """
  per_seed = []
  for seed, d in enumerate(differences):
    per_seed.append({"seed": seed, "dense": {"metrics": {"cls": 0.8, "depth": 0.5}},
                     "methods": {"equal": _method(0.8 * 0.9, 0.5 / 0.95),
                                 "minmax": _method(0.8 * (0.9 + d), 0.5 / 0.95)}})
  return per_seed


def test_sign_test_against_a_brute_force_enumeration():
  for n in range(13):
    for better in range(n + 1):
      worse = n - better
      # Every equally likely sign pattern; count those at least as far from n / 2.
      extreme = sum(abs(bin(pattern).count("1") - n / 2) >= abs(better - n / 2)
                    for pattern in range(2**n))
      assert report_lib.sign_test(better, worse) == pytest.approx(extreme / 2**n), (n, better)
  assert report_lib.sign_test(0, 0) == 1.0
  assert report_lib.sign_test(10, 0) == pytest.approx(2 / 1024)
  assert report_lib.sign_test(5, 0) == pytest.approx(1 / 16)   # five seeds can never show it
  with pytest.raises(ValueError, match="better"):
    report_lib.sign_test(-1, 3)


def test_one_example_retention_by_hand():
  one = report_lib.one_example_retention({"cls": 0.8, "depth": 0.5}, {"cls": 250, "depth": 400},
                                         HIGHER)
  # Accuracy: one of 250 right answers is 1/250 of accuracy, 1/(250 * 0.8) of retention; an
  # error averaged over 400 examples moves by 1/400 of itself.
  assert one == pytest.approx({"cls": 0.005, "depth": 0.0025})
  report = _build(test_counts={"cls": 250, "depth": 400})
  threshold = report["comparison"]["effect_threshold"]
  assert threshold["per_task"] == pytest.approx(
      {"cls": (1 / 0.8 + 1 / 1.0 + 1 / 0.5) / 3 / 250, "depth": 1 / 400})
  assert threshold["test_counts"] == {"cls": 250, "depth": 400}
  # Per seed, the larger one-example retention of the two methods' worst tasks: seed 0:
  # depth (equal) and cls (min-max); seed 1: depth for both; seed 2: depth and cls.
  pair = report["comparison"]["minmax_minus_equal"]
  assert pair["thresholds"] == pytest.approx([1 / 200, 1 / 400, 1 / 125])
  assert pair["threshold"] == pytest.approx((1 / 200 + 1 / 400 + 1 / 125) / 3)
  with pytest.raises(ValueError, match=r"test_counts\['depth'\]"):
    _build(test_counts={"cls": 250})


def test_three_small_seeds_show_no_difference():
  per_seed = _worst_task_seeds([0.001, 0.001, -0.0015])
  report = _build(per_seed, test_counts={"cls": 500, "depth": 500})   # one example: 0.0025
  pair = report["comparison"]["minmax_minus_equal"]
  assert pair["threshold"] == pytest.approx(1 / (500 * 0.8))
  assert (pair["better"], pair["worse"], pair["tied"]) == (0, 0, 3)
  assert pair["winner"] is None and pair["p_value"] == 1.0
  sentence = report_lib.summary_sentence(report)
  assert sentence.endswith(
      "seed by seed: +0.0010, +0.0010, −0.0015 (better on 0 of 3 seeds, tied on 3 (within one "
      "test example, 0.0025); mean +0.0002; sign test p = 1.000): no difference shown over 3 "
      "seeds.")
  assert sentence.startswith("minmax and equal tied for keeping the worst task best")
  # Without the one-example threshold the seeds split 2 : 1, which is no evidence either.
  report = _build(per_seed)
  assert report["comparison"]["minmax_minus_equal"]["p_value"] == 1.0
  assert "no difference shown over 3 seeds." in report_lib.summary_sentence(report)


def test_ten_clear_seeds_name_the_winner():
  report = _build(_worst_task_seeds([0.02] * 10), test_counts={"cls": 250, "depth": 400})
  pair = report["comparison"]["minmax_minus_equal"]
  assert pair["threshold"] == pytest.approx(0.005)
  assert (pair["better"], pair["worse"], pair["tied"]) == (10, 0, 0)
  assert pair["p_value"] == pytest.approx(2 / 1024)
  assert pair["direction"] == 1 and pair["winner"] == "minmax"
  best = report["comparison"]["best_worst_task_retention"]
  assert best["method"] == "minmax" and best["shown"] and best["tied_with"] == []
  assert best["versus"]["equal"]["p_value"] == pytest.approx(2 / 1024)
  sentence = report_lib.summary_sentence(report)
  assert sentence.startswith("minmax kept the worst task best (mean worst-task retention "
                             "0.920; ahead of every other method seed by seed, sign test "
                             "p ≤ 0.002, by more than one test example);")
  assert sentence.endswith("(better on 10 of 10 seeds; mean +0.020; sign test p = 0.002): "
                           "min-max protected the worst task better than equal weighting.")
  assert ("(per task, mean over seeds: cls 0.0050 (250 test examples), depth 0.0025 (400 "
          "test examples))") in report_lib.to_markdown(report)


def test_agreeing_signs_with_a_mean_within_one_example_show_nothing():
  # Six seeds gain 0.006 (> 0.005, one example), four tie: p = 2 / 64 < 0.05, but the mean,
  # 0.0036, is less than one test example.
  report = _build(_worst_task_seeds([0.006] * 6 + [0.0] * 4),
                  test_counts={"cls": 250, "depth": 400})
  pair = report["comparison"]["minmax_minus_equal"]
  assert (pair["better"], pair["tied"]) == (6, 4)
  assert pair["p_value"] == pytest.approx(2 / 64) and pair["mean"] == pytest.approx(0.0036)
  assert pair["winner"] is None
  assert ("no difference shown over 10 seeds (the seeds agree in sign, but the mean is "
          "within one test example).") in report_lib.summary_sentence(report)
  # The same gains on all ten seeds are shown.
  report = _build(_worst_task_seeds([0.006] * 10), test_counts={"cls": 250, "depth": 400})
  assert report["comparison"]["minmax_minus_equal"]["winner"] == "minmax"


def test_a_diverged_method_counts_as_a_loss():
  per_seed = _worst_task_seeds([0.02] * 10)
  per_seed[3]["methods"]["minmax"] = {"diverged": "the loss of task 'cls' is nan at step 3"}
  report = _build(per_seed, test_counts={"cls": 250, "depth": 400},
                  dropped=[{"seed": 10, "reason": "its dense reference diverged"}])
  minmax = report["methods"]["minmax"]
  assert minmax["diverged"] == [{"seed": 3,
                                 "message": "the loss of task 'cls' is nan at step 3"}]
  assert report["methods"]["equal"]["diverged"] == []
  # Its means leave seed 3 out ...
  assert [r["seed"] for r in minmax["per_seed"]] == [0, 1, 2, 4, 5, 6, 7, 8, 9]
  assert minmax["worst_task_retention"] == pytest.approx(0.92)
  assert minmax["metrics"]["cls"] == pytest.approx(0.8 * 0.92)
  # ... and the paired comparison counts it as worst-task retention 0, a loss.
  pair = report["comparison"]["minmax_minus_equal"]
  assert pair["seeds"] == list(range(10))
  assert pair["differences"][3] == pytest.approx(-0.9)
  assert (pair["better"], pair["worse"]) == (9, 1) and pair["diverged"]["minmax"] == [3]
  assert pair["p_value"] == pytest.approx(2 * 11 / 1024)
  # Nine small wins against one divergence: the seeds favour min-max, the mean equal, so
  # neither is shown (dropping seed 3 would have shown min-max on nine seeds of nine).
  assert pair["mean"] == pytest.approx((9 * 0.02 - 0.9) / 10) and pair["winner"] is None
  ranking = {r["method"]: r["worst_task_retention"] for r in report["comparison"]["ranking"]}
  assert ranking == pytest.approx({"equal": 0.9, "minmax": 0.92 * 0.9})
  text = report_lib.to_markdown(report)
  assert "| minmax (diverged on 1 of 10) | 0.736 [0.736–0.736] |" in text
  assert "; 0.828 with the diverged as 0 (as ranked) |" in text  # 9 · 0.92 / 10, as ranked
  assert ("no difference shown over 10 seeds (most seeds go one way, the mean the other). "
          "minmax diverged "
          "on seed 3, counted as worst-task retention 0 in the paired comparisons and left out "
          "of its means. Seed 10 left out for every method (seed 10: its dense reference "
          "diverged).") in text
  assert report["dropped_seeds"] == [{"seed": 10, "reason": "its dense reference diverged"}]


def test_a_method_that_diverged_on_every_seed_still_reports():
  per_seed = _per_seed()
  for seed in per_seed:
    seed["methods"]["minmax"] = {"diverged": "nan"}
  report = _build(per_seed)
  minmax = report["methods"]["minmax"]
  assert minmax["per_seed"] == [] and minmax["worst_task_retention"] is None
  assert report["comparison"]["minmax_minus_equal"]["differences"] == pytest.approx([-0.8] * 3)
  assert report["comparison"]["best_worst_task_retention"]["method"] == "equal"
  text = report_lib.to_markdown(report)
  assert "| minmax (diverged on 3 of 3) | — | — | — | — |" in text
  assert "minmax diverged on seeds 0, 1, 2" in text


def test_a_method_diverged_on_every_seed_with_several_metrics_a_task_writes_its_report(
    tmp_path):
  ok = {"seed": 0, "dense": _nyu_result(NYU_DENSE), "methods": {"equal": _nyu_result(NYU_EQUAL),
                                                                "minmax": {"diverged": "nan"}}}
  report = _nyu_build([ok, {**copy.deepcopy(ok), "seed": 1}])
  minmax = report["methods"]["minmax"]
  assert minmax["task_metrics"]["normal"] == {m: None for m in NYU_HIGHER["normal"]}
  text = open(report_lib.write(report, tmp_path)["markdown"], encoding="utf-8").read()
  assert "| minmax (diverged on 2 of 2) |" in text and "normal 11.25" in text
  # equal's mean worst-task retention is the plain mean; the sentence names the divergence.
  assert "equal" in report_lib.summary_sentence(report)
  assert "minmax diverged on seeds 0, 1" in text


def test_the_sentence_says_so_when_every_method_diverged_or_diverged_seeds_count_as_0():
  per_seed = _per_seed()
  for seed in per_seed:
    seed["methods"] = {m: {"diverged": "inf"} for m in seed["methods"]}
  sentence = report_lib.summary_sentence(_build(per_seed))
  assert sentence.startswith("Every compressed method diverged on every seed")
  assert "tied" not in sentence
  per_seed = _per_seed()  # both diverge on seed 0: equal's mean (0 + 0.8 + 0.8) / 3 is best
  per_seed[0]["methods"] = {m: {"diverged": "nan"} for m in per_seed[0]["methods"]}
  report = _build(per_seed)
  best = report["comparison"]["best_worst_task_retention"]
  assert best["method"] == "equal" and best["value"] == pytest.approx(1.6 / 3)
  assert report["methods"]["equal"]["worst_task_retention"] == pytest.approx(0.8)
  assert "equal, 0.533, diverged seeds counted as 0" in (
      report_lib.summary_sentence(report))
  per_seed = _per_seed()
  per_seed[0]["methods"]["minmax"] = {"diverged": "nan"}  # only the method that is not best
  assert "counted as 0" not in report_lib.summary_sentence(_build(per_seed)).split(";")[0]


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
  assert plots.plot_task_weights(report, tmp_path / "w.png") is None
  assert not (tmp_path / "w.png").exists()
  paths = report_lib.write(report, tmp_path)
  assert "task_weights" not in paths
  assert "task_weights.png" not in open(paths["markdown"], encoding="utf-8").read()
  (tmp_path / "a_file").write_text("x")
  with pytest.raises(ValueError, match="is a file"):
    report_lib.write(report, tmp_path / "a_file")


def _with_parameters(dense_part, whole):
  """_per_seed() on a model of 10,000 parameters of which `dense_part` are never pruned."""
  per_seed = _per_seed()
  per_seed[0]["dense"]["parameters"] = {
      "total_size": 10_000, "prunable_size": 10_000 - dense_part,
      "non_prunable_size": dense_part,
      "non_prunable_groups": [
          {"group": "head_*", "names": ["bias", "kernel"], "leaves": 4, "size": dense_part - 64},
          {"group": "trunk/Dense_*", "names": ["bias"], "leaves": 2, "size": 64}]}
  for seed in per_seed:
    for info in seed["methods"].values():
      info["whole_model_compression_ratio"] = whole
  return per_seed


def test_report_gives_both_ratios_what_stays_dense_and_an_unreachable_target():
  # 400 dense parameters cap the whole model at 10,000 / 400 = 25x < 40x. At 97.5 %, the
  # 9,600 prunable weights keep 240: 10,000 / 640 = 15.6x.
  report = _build(_with_parameters(400, 10_000 / 640))
  whole = report["whole_model"]
  assert whole["cap"] == pytest.approx(25.0) and whole["target_ratio"] == pytest.approx(40.0)
  assert not whole["reachable"] and whole["sparsity_for_target"] is None
  assert whole["measured"] == pytest.approx({"equal": 15.625, "minmax": 15.625})
  text = report_lib.to_markdown(report)
  assert text.startswith(
      "# Compression report: 97.5 % prunable sparsity (40x prunable part, 15.6x whole model)")
  assert "40.0x compression of the prunable part" in text
  assert "- **Whole model**: 10,000 parameters, 9,600 of them prunable;" in text
  assert ("- **Stays dense** (400 parameters, 4.0 % of the model; never pruned): `head_*` "
          "(bias, kernel; 4 leaves, 336), `trunk/Dense_*` (bias; 2 leaves, 64).") in text
  assert ("- **Note: the whole model cannot reach 40x**: whole-model compression is 15.6x at "
          "97.5 % prunable sparsity; the 400 dense parameters alone cap it at 25.0x.") in text
  assert "| compression (prunable) | compression (whole model) |" in text
  assert "| 97.5 % | 40.0x | 15.6x | 20.0x | 1000 B |" in text


def test_report_says_what_prunable_sparsity_would_reach_the_target_on_the_whole_model():
  # 100 dense parameters: cap 100x. 40x needs 10,000 / 40 = 250 nonzero, so 150 of the 9,900
  # prunable weights: sparsity 1 - 150 / 9,900 = 98.48 %.
  report = _build(_with_parameters(100, 10_000 / 347.5))
  whole = report["whole_model"]
  assert whole["reachable"] and whole["sparsity_for_target"] == pytest.approx(1 - 150 / 9900)
  text = report_lib.to_markdown(report)
  assert ("- **Note: the whole model is compressed less than 40x**: whole-model compression "
          "is 28.8x at 97.5 % prunable sparsity; it would reach 40x at 98.48 % prunable "
          "sparsity (the dense part caps it at 100.0x).") in text
  # Results without parameter counts or whole-model ratios (older runs): no such lines.
  per_seed = _per_seed()
  for seed in per_seed:
    for info in seed["methods"].values():
      del info["whole_model_compression_ratio"]
  report = _build(per_seed)
  assert report["whole_model"] is None
  assert report["methods"]["equal"]["whole_model_compression_ratio"] is None
  text = report_lib.to_markdown(report)
  assert text.startswith("# Compression report: 97.5 % prunable sparsity (40x prunable part)\n")
  assert "Stays dense" not in text and "| 97.5 % | 40.0x | — | 20.0x |" in text


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


# ----------------------------------------------------------------------------- records


def test_records_read_and_write_the_same_json():
  result = {**_method(0.7, 0.6, weights=[[0.5, 0.5], [0.4, 0.6]]),
            "task_metrics": {"cls": {"accuracy": 0.7}, "depth": {"MAE": 0.6}},
            "val_metrics": {"cls": 0.71, "depth": 0.59}, "all_metrics": {"cls": 0.7},
            "selected": {"stage": "retrain", "epoch": 2}, "prunable_compression_ratio": 40.0,
            "parameters": {"total_size": 10, "prunable_size": 8, "non_prunable_size": 2,
                           "non_prunable_groups": []}}
  assert records.RunResult.from_json(result, "r").to_json() == result
  old = {"metrics": {"cls": 0.7, "depth": 0.6}, "sparsity": 0.975, "compression_ratio": 40.0}
  read = records.RunResult.from_json(old, "r")  # written before the newer fields existed
  assert read.task_metrics is None and read.to_json() == old
  seed = {"seed": np.int64(3), "dense": {"metrics": {"cls": 0.8, "depth": 0.5}},
          "methods": {"equal": old, "minmax": {"diverged": "nan at step 3"}}}
  record = records.SeedRecord.from_json(seed, 0)
  assert record.seed == 3 and isinstance(record.methods["minmax"], records.Diverged)
  assert record.to_json() == {**seed, "seed": 3}
  with pytest.raises(ValueError, match=r"r: compression_ratio must be a number"):
    records.RunResult.from_json({**old, "compression_ratio": "big"}, "r")
  with pytest.raises(ValueError, match="per_seed\\[0\\] has no 'seed'"):
    records.SeedRecord.from_json({"dense": {}, "methods": {}}, 0)


def test_the_task_figure_draws_a_method_whose_seeds_all_agree(tmp_path):
  # Six equal values whose mean rounds to just below them (0.4859276965628126 < ...265): the
  # spread drawn must not come out negative (matplotlib refuses a negative error bar).
  value, seeds = 0.48592769656281265, list(range(6))
  per_seed = [{"seed": s, "metrics": {"t": value}} for s in seeds]
  mean = report_lib._mean([value] * 6)  # pylint: disable=protected-access
  assert mean < value
  report = {"tasks": ["t"], "seeds": seeds, "higher_is_better": {"t": True},
            "metric_names": {"t": "accuracy"}, "target_sparsity": 0.975,
            "dense": {"metrics": {"t": 0.9}, "per_seed": [
                {"seed": s, "metrics": {"t": 0.9}} for s in seeds]},
            "methods": {"equal": {"metrics": {"t": mean}, "per_seed": per_seed}}}
  path = plots.plot_task_metrics(report, str(tmp_path / "task_metrics.png"))
  assert (tmp_path / "task_metrics.png").stat().st_size > 0 and path.endswith(".png")
  caption = plots._spread_caption  # pylint: disable=protected-access
  assert caption(report) == "bars: mean, whiskers: min\u2013max over 6 seeds"
  # A method that diverged on some seeds has fewer behind its bar, and the caption says so.
  report["methods"]["minmax"] = {"metrics": {"t": value}, "per_seed": per_seed[:4]}
  assert caption(report).endswith("; fewer where diverged: minmax on 2")
  plots.plot_task_metrics(report, str(tmp_path / "task_metrics.png"))
