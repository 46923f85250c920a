"""The leaderboard over several reports: intervals, ranks and paired tests by the report's
own rule, checked against independent computations."""
import json

import numpy as np
import pytest
from scipy import stats

from mmcompress import leaderboard



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
  # A diverged seed counts as retention 0 in the paired test, and is left out of the mean.
  broken = rows["broken"]
  assert broken["diverged"] == 1 and broken["seeds"] == 5
  assert broken["minus_best"]["differences"][1] == pytest.approx(-0.96)
  assert broken["worst_task_retention"][0] == pytest.approx(
      np.mean([0.95, 0.97, 0.95, 0.96, 0.97]))
  assert rows["better"]["minus_best"] is None and rows["equal"]["minus_equal"] is None


def test_the_mean_rank_is_over_the_settings_a_method_ran_in():
  one = _report({"equal": [0.9] * 6, "a": [0.95] * 6, "b": [0.8] * 6})
  two = _report({"equal": [0.9] * 6, "a": [0.7] * 6})
  board = leaderboard.build({"one": one, "two": two})
  assert board["mean_rank"] == {"equal": {"mean_rank": 1.5, "settings": 2},
                                "a": {"mean_rank": 1.5, "settings": 2},
                                "b": {"mean_rank": 3.0, "settings": 1}}
  assert list(board["settings"]) == ["one", "two"] == board["order"]["settings"]
  assert board["order"]["methods"] == ["equal", "a", "b"]
  json.dumps(board)  # plain JSON
