"""The leaderboard over several reports: intervals, ranks and paired tests by the report's
own rule, checked against independent computations."""
import json

import numpy as np
import pytest
from scipy import stats

from mmcompress.app import leaderboard



def test_the_t_quantiles_are_students():
  for df in range(1, 41):
    assert leaderboard.t975(df) == pytest.approx(
        stats.t.ppf(0.975, df) if df <= 30 else 1.96, abs=6e-4 if df <= 30 else 0.05)
  with pytest.raises(ValueError):
    leaderboard.t975(0)


def test_the_interval_is_the_t_interval_of_the_mean():
  values = [0.91, 0.95, 0.93, 0.97, 0.90]
  mean, low, high = leaderboard.interval(values)
  expected = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values),
                              scale=stats.sem(values))
  assert mean == pytest.approx(np.mean(values))
  assert (low, high) == pytest.approx(expected, abs=1e-4)
  assert leaderboard.interval([0.5]) == (0.5, 0.5, 0.5)


def test_ranks_share_ties():
  assert leaderboard.ranks({"a": 0.9, "b": 0.95, "c": 0.9, "d": 0.1}) == {
      "b": 1, "a": 2.5, "c": 2.5, "d": 4}


def _report(values, seeds=(0, 1, 2, 3, 4, 5)):
  """A minimal report.json: one task, 100 test examples, dense accuracy 1 on every seed."""
  methods = {}
  for name, per_seed in values.items():
    methods[name] = {"per_seed": [
        {"seed": s, "worst_task_retention": v, "worst_task": "t", "delta_m": 100 * (v - 1)}
        for s, v in zip(seeds, per_seed) if v is not None]}
  return {"seeds": list(seeds), "higher_is_better": {"t": True}, "methods": methods,
          "dense": {"per_seed": [{"seed": s, "metrics": {"t": 1.0}} for s in seeds]},
          "comparison": {"effect_threshold": {"test_counts": {"t": 100}}}}


def test_a_setting_ranks_and_pairs_every_method_against_equal_and_the_best():
  report = _report({"equal": [0.90, 0.91, 0.92, 0.90, 0.91, 0.92],
                    "better": [0.95, 0.96, 0.97, 0.95, 0.96, 0.97],   # +0.05 on every seed
                    "same": [0.90, 0.915, 0.92, 0.90, 0.905, 0.92],   # within 1 example (0.01)
                    "broken": [0.95, None, 0.97, 0.95, 0.96, 0.97]})  # diverged on seed 1
  board = leaderboard.setting(report)
  rows = board["methods"]
  assert board["best"] == "better"
  # Ranked by the paired mean (a diverged seed as 0): equal and same tie at 0.91.
  assert {m: r["rank"] for m, r in rows.items()} == {"better": 1, "equal": 2.5, "same": 2.5,
                                                      "broken": 4}
  vs_equal = rows["better"]["minus_equal"]
  assert (vs_equal["better"], vs_equal["worse"], vs_equal["tied"]) == (6, 0, 0)
  assert vs_equal["p_value"] == pytest.approx(2 / 2**6) and vs_equal["direction"] == 1
  assert rows["same"]["minus_equal"]["tied"] == 6
  assert rows["same"]["minus_equal"]["direction"] == 0
  # A diverged seed counts as retention 0 in the paired test and in the table's mean: the
  # mean that ranks the method is the mean the table shows.
  broken = rows["broken"]
  assert broken["diverged"] == 1 and broken["seeds"] == 5
  assert broken["minus_best"]["differences"][1] == pytest.approx(-0.96)
  assert broken["worst_task_retention"][0] == pytest.approx(
      np.mean([0.95, 0.0, 0.97, 0.95, 0.96, 0.97])) == broken["paired_mean"]
  assert rows["better"]["minus_best"] is None and rows["equal"]["minus_equal"] is None
  # The best was picked on these seeds: its difference from the others is described, never
  # tested (no p-value, no verdict, no Holm), and the table has no verdict column for it.
  for m in ("equal", "same", "broken"):
    assert set(rows[m]["minus_best"]) >= {"differences", "interval", "better", "worse"}
    assert not {"p_value", "p_holm", "direction"} & set(rows[m]["minus_best"])
  text = "\n".join(leaderboard._setting_lines("s", board))  # pylint: disable=protected-access
  assert "| − best [95 % CI] | W/T/L |\n" in text and "vs best" not in text
  assert "highest mean worst-task retention: **better** (a mean, not a test)" in text


def test_methods_the_table_shows_level_rank_level():
  # np.mean gives 0.20000000000000004 and 0.19999999999999998 for these; the table's mean
  # (an exact sum) gives the same value for both, and so must the ranks.
  values = {"equal": [0.1, 0.2, 0.3], "a": [0.3, 0.2, 0.1], "b": [0.05, 0.05, 0.05]}
  report = _report(values, seeds=(0, 1, 2))
  rows = leaderboard.setting(report)["methods"]
  assert rows["equal"]["worst_task_retention"][0] == rows["a"]["worst_task_retention"][0]
  assert rows["equal"]["rank"] == rows["a"]["rank"] == 1.5 and rows["b"]["rank"] == 3
  board = leaderboard.build({"one": report})
  assert board["mean_rank"]["equal"]["mean_rank"] == board["mean_rank"]["a"]["mean_rank"]


def test_the_mean_rank_is_over_the_settings_a_method_ran_in():
  one = _report({"equal": [0.9] * 6, "a": [0.95] * 6, "b": [0.8] * 6})
  two = _report({"equal": [0.9] * 6, "a": [0.7] * 6})
  board = leaderboard.build({"one": one, "two": two})
  # Every seed the same: every resample gives the same ranks, a zero-width interval.
  assert board["mean_rank"] == {"equal": {"mean_rank": 1.5, "mean_rank_ci": [1.5, 1.5],
                                          "settings": 2},
                                "a": {"mean_rank": 1.5, "mean_rank_ci": [1.5, 1.5],
                                      "settings": 2},
                                "b": {"mean_rank": 3.0, "mean_rank_ci": [3.0, 3.0],
                                      "settings": 1}}
  assert list(board["settings"]) == ["one", "two"] == board["order"]["settings"]
  assert board["order"]["methods"] == ["equal", "a", "b"]
  json.dumps(board)  # plain JSON


def _with_validation(report, validation):
  """`report` with each method's per-seed validation worst-task retention set."""
  for name, values in validation.items():
    rows = {r["seed"]: r for r in report["methods"][name]["per_seed"]}
    for seed, value in zip(report["seeds"], values):
      if seed in rows:
        rows[seed]["val_worst_task_retention"] = value
  return report


def test_tuning_keeps_each_methods_variant_of_the_best_validation_mean():
  seeds = (0, 1, 2)
  plain = _with_validation(
      _report({"equal": [0.9, 0.9, 0.9], "a": [0.8, 0.8, 0.8], "b": [0.7, 0.7, 0.7]}, seeds),
      {"equal": [0.9, 0.9, 0.9], "a": [0.8, 0.8, 0.8], "b": [0.70, 0.70, 0.70]})
  clipped = _with_validation(
      # a: better on validation by the mean, worse on test (the test numbers must not
      # decide); equal: a tie (the first variant keeps it); b: one diverged seed counts as 0.
      _report({"equal": [0.5, 0.5, 0.5], "a": [0.6, 0.6, 0.6], "b": [0.99, None, 0.99]}, seeds),
      {"equal": [0.9, 0.9, 0.9], "a": [0.85, 0.75, 0.95], "b": [0.99, None, 0.99]})
  report, tuning = leaderboard.tune({"clip-0": plain, "clip-1": clipped})
  assert {m: t["chosen"] for m, t in tuning.items()} == {
      "equal": "clip-0", "a": "clip-1", "b": "clip-0"}
  assert tuning["a"]["validation"] == pytest.approx({"clip-0": 0.8, "clip-1": 0.85})
  assert tuning["b"]["validation"] == pytest.approx({"clip-0": 0.7, "clip-1": 1.98 / 3})
  assert report["methods"]["a"] is clipped["methods"]["a"]
  assert report["methods"]["equal"] is plain["methods"]["equal"]
  assert report["dense"] is plain["dense"] and report["seeds"] == [0, 1, 2]
  board = leaderboard.setting(report)
  assert board["methods"]["a"]["worst_task_retention"][0] == pytest.approx(0.6)


def test_choose_never_takes_a_variant_that_diverged_on_a_tuning_seed():
  """a's best validation mean is at lr4, which diverged on seed 1 (its finished seeds alone
  would look best): it takes lr2; b diverged everywhere but lr1: lr1, the grid's edge; c
  diverged in every variant: the best with diverged seeds as 0, flagged unstable."""
  seeds = (100, 101)

  def variant(scale, values, diverged=()):
    report = _with_validation(_report({m: v for m, v in values.items()}, seeds), values)
    report["variant"] = {"learning_rate_scale": scale, "clip_norm": 0.0}
    report["diverged"] = [{"seed": 101, "runs": {m: "nan loss" for m in diverged}}]
    return report

  grid = {"lr1": variant(1.0, {"a": [0.80, 0.80], "b": [0.7, 0.7], "c": [0.5, None]},
                         diverged=("c",)),
          "lr2": variant(2.0, {"a": [0.90, 0.90], "b": [0.9, None], "c": [0.6, None]},
                         diverged=("b", "c")),
          "lr4": variant(4.0, {"a": [0.99, None], "b": [0.9, None], "c": [0.2, None]},
                         diverged=("a", "b", "c"))}
  got = leaderboard.choose(grid)
  assert {m: g["chosen"] for m, g in got.items()} == {"a": "lr2", "b": "lr1", "c": "lr2"}
  assert got["a"]["validation"] == pytest.approx({"lr1": 0.8, "lr2": 0.9, "lr4": None})
  assert (got["a"]["stable"], got["b"]["stable"], got["c"]["stable"]) == (True, True, False)
  assert [got[m]["at_grid_edge"] for m in "abc"] == [False, True, False]


def test_tuning_refuses_variants_that_cannot_be_compared():
  seeds = (0, 1)
  one = _with_validation(_report({"equal": [0.9, 0.9]}, seeds), {"equal": [0.9, 0.9]})
  other_dense = _with_validation(_report({"equal": [0.9, 0.9]}, seeds), {"equal": [0.9, 0.9]})
  other_dense["dense"]["per_seed"][1]["metrics"]["t"] = 0.99
  with pytest.raises(ValueError, match="another dense model"):
    leaderboard.tune({"clip-0": one, "clip-1": other_dense}, where="mixed-40x")
  with pytest.raises(ValueError, match="other seeds or methods"):
    leaderboard.tune({"clip-0": one, "clip-1": _report({"equal": [0.9]}, (0,))})
  with pytest.raises(ValueError, match="no validation figure"):
    leaderboard.tune({"clip-0": _report({"equal": [0.9, 0.9]}, seeds), "clip-1": one})


def test_the_headline_family_is_one_comparison_per_method_over_every_setting_with_holm():
  draw = np.random.default_rng(3)
  methods = ("equal", "a", "b", "c", "control")
  values = {name: {m: list(0.9 + draw.normal(0, 0.02, 6)) for m in methods}
            for name in ("one", "two", "three")}
  values["two"]["a"] = [v + 0.2 for v in values["two"]["equal"]]  # +0.2 in one setting
  values["three"]["b"][2] = None  # b diverged on seed 2 there: retention 0
  reports = {name: _report(v) for name, v in values.items()}
  board = leaderboard.build(reports, controls=["control"])
  # The control is tested like a method but not ranked: the methods' ranks are 1..4 in every
  # setting whatever the control scored, and its Holm is its own (one comparison: unadjusted).
  for name, b in board["settings"].items():
    rows = b["methods"]
    assert rows["control"]["rank"] is None and b["best"] != "control"
    assert sorted(rows[m]["rank"] for m in methods[:4]) == [1, 2, 3, 4]
    assert rows["control"]["minus_equal"]["p_holm"] == rows["control"]["minus_equal"]["p_value"]
    alone = leaderboard.holm({m: rows[m]["minus_equal"]["p_value"] for m in "abc"})
    assert {m: rows[m]["minus_equal"]["p_holm"] for m in "abc"} == pytest.approx(alone)
  assert "control" not in board["mean_rank"] and board["order"]["methods"][-1] == "control"
  # As the null control: each setting's detection limit, |mean| + t(0.975, 5) · sd / √6 of
  # its paired differences from equal, by hand (scipy's t quantile).
  nulled = leaderboard.build(reports, controls=["control"], null="control")
  for name, v in values.items():
    d = np.asarray(v["control"]) - np.asarray(v["equal"])
    by_hand = abs(d.mean()) + stats.t.ppf(0.975, 5) * d.std(ddof=1) / np.sqrt(6)
    assert nulled["settings"][name]["detection_limit"] == pytest.approx(by_hand, rel=1e-3)
  assert "detection_limit" not in board["settings"]["one"]  # no null named: none claimed
  family = board["family"]
  assert family["against"] == "equal" and family["adjustment"] == "holm"
  assert sorted(family["comparisons"]) == ["a", "b", "c"]  # not equal, not the control
  # By hand: per seed the difference from equal averaged over the three settings, a seed
  # within one test example (0.01: dense 1, 100 test examples) tied, the others into a
  # two-sided binomial test (scipy), then Holm's step-down by brute force.
  p_values = {}
  for m in "abc":
    diffs = np.mean([[(v or 0.0) - e for v, e in zip(values[n][m], values[n]["equal"])]
                     for n in values], axis=0)
    pair = family["comparisons"][m]
    np.testing.assert_allclose(pair["differences"], diffs, atol=1e-12)
    better, worse = int(np.sum(diffs > 0.01)), int(np.sum(diffs < -0.01))
    assert (pair["better"], pair["worse"], pair["tied"]) == (better, worse, 6 - better - worse)
    p_values[m] = stats.binomtest(better, better + worse).pvalue if better + worse else 1.0
    assert pair["p_value"] == pytest.approx(p_values[m])
  # a is +0.2 / 3 on every seed over the settings: a 6/0/0 sweep, p = 2/64.
  assert family["comparisons"]["a"]["better"] == 6
  for alpha in (0.05, 0.1, 0.3, 0.5, 1.0):
    order = sorted(p_values, key=p_values.get)
    rejected = set()
    for i, key in enumerate(order):
      if p_values[key] > alpha / (len(order) - i):
        break
      rejected.add(key)
    assert {m for m, c in family["comparisons"].items() if c["p_family"] <= alpha} == rejected
  # Three comparisons, not nine: the sweep's 2/64 becomes at most 3 · 2/64 = 0.094.
  assert family["comparisons"]["a"]["p_family"] == pytest.approx(3 * 2 / 64)
  text = leaderboard.to_markdown(board)
  assert "## The headline: every method against equal, over every setting" in text
  assert "One comparison per method, 3 in all, Holm's adjustment over them" in text
  assert "p (Holm in setting)" in text


def test_the_mean_rank_interval_is_the_percentile_interval_over_seed_resamples():
  """Exhaustively: every one of the 4⁴ resamples of 4 seeds, against ranks computed
  independently (scipy's rankdata of the negated means, ties averaged)."""
  values = {"s": {"x": [0.90, 0.95, 0.80, 0.99], "y": [0.92, 0.91, 0.85, 0.98],
                  "z": [0.70, 0.99, 0.90, 0.90]}}
  every = [{"s": np.array(pick)} for pick in np.ndindex(4, 4, 4, 4)]
  got = leaderboard.mean_rank_intervals(values, every)
  names = list(values["s"])
  by_hand = {m: [] for m in names}
  for pick in every:
    means = [np.mean(np.asarray(values["s"][m])[pick["s"]]) for m in names]
    for m, r in zip(names, stats.rankdata(-np.round(means, 12))):
      by_hand[m].append(r)
  for m in names:
    assert got[m] == pytest.approx((np.percentile(by_hand[m], 2.5),
                                    np.percentile(by_hand[m], 97.5)))
  assert got["x"][0] < got["x"][1]  # the seeds disagree: a real interval
  # The drawn resamples: reproducible, with replacement, one draw of seeds for every setting
  # (s ran seeds 3, 1, 0, 2 in that order; t ran 0..5): s takes the drawn seeds it ran.
  seeds = {"s": [3, 1, 0, 2], "t": [0, 1, 2, 3, 4, 5]}
  picks = leaderboard.bootstrap_picks(seeds, resamples=50)
  assert len(picks) == 50 and all(len(p["t"]) == 6 for p in picks)
  for p in picks:
    drawn = [seeds["t"][i] for i in p["t"]]
    assert [seeds["s"][i] for i in p["s"]] == [d for d in drawn if d in seeds["s"]]
  assert len({tuple(p["t"]) for p in picks}) > 40 and any(len(set(p["t"])) < 6 for p in picks)
  again = leaderboard.bootstrap_picks(seeds, resamples=50)
  assert all(np.array_equal(a["t"], b["t"]) for a, b in zip(picks, again))
  # A setting that lost seeds (one of ten here) is in every resample all the same.
  sparse = leaderboard.bootstrap_picks({"s": [4], "t": list(range(10))}, resamples=200)
  assert len(sparse) == 200 and all(len(p["s"]) >= 1 for p in sparse)


def test_a_tie_at_the_top_lists_the_settings_best_first():
  report = _report({"equal": [0.9] * 6, "zeta": [0.95] * 6, "alpha": [0.95] * 6})
  board = leaderboard.build({"one": report})
  assert board["settings"]["one"]["best"] == "zeta"  # the first in the report's order
  rows = [line for line in leaderboard.to_markdown(board).splitlines()
          if line.startswith("| 1.5 |")]
  assert [r.split(" | ")[1] for r in rows] == ["zeta", "alpha"]
