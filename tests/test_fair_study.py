"""The fair protocol of the study (`mmcompress.app.study`, the default config and ``quick``):
every method tuned on seeds it is not reported on, the choice retrained on the reporting seeds,
the controls beside it. Its own file: the quick fair study is the suite's longest test, and
``--dist loadfile`` gives a file a worker of its own."""
import json

import pytest

from experiments.configs import study as study_config
from mmcompress.app import leaderboard, study


def _nan_tests(report):
  """`report` with every test figure NaN: only the validation figures stay."""
  out = json.loads(json.dumps(report))
  for method in out["methods"].values():
    for key in ("metrics", "retention", "worst_task_retention", "delta_m"):
      if key in method:
        method[key] = float("nan") if not isinstance(method[key], dict) else {
            k: float("nan") for k in method[key]}
    for row in method["per_seed"]:
      for key in list(row):
        if not key.startswith("val_") and key not in ("seed",):
          row[key] = float("nan")
  return out


def test_the_fair_protocol_refuses_overlapping_seeds_and_pinned_methods(tmp_path):
  config = study_config.get_config("quick")
  with config.unlocked():
    config.study.tuning_seeds = (1, 100)
  with pytest.raises(ValueError, match=r"share \[1\]: a method's step size is chosen on seeds"):
    study.validate(config, str(tmp_path))
  config = study_config.get_config("quick")
  with config.unlocked():
    config.methods = ("equal@lr1-clip0",)
  with pytest.raises(ValueError, match="without '@<variant>'"):
    study.validate(config, str(tmp_path))
  study.validate(study_config.get_config(), str(tmp_path))  # the full protocol checks


@pytest.mark.slow
def test_the_fair_quick_study_tunes_on_its_own_seeds_and_reports_the_choice(tmp_path):
  config = study_config.get_config("quick")
  with config.unlocked():
    config.study.jobs = 1
    config.study.compilation_cache = False
    config.quiet = True
    # Without weight decay the two loss conventions step alike at rates K apart
    # (tests/test_step_size.py) up to rounding (which these short, fast runs amplify), so the
    # factor below is the grid's exactly, not up to weight decay.
    config.optimizer.weight_decay = 0.0
  board = study.run(config, str(tmp_path), print_report=False)
  names = board["order"]["settings"]
  assert names == ["mixed-40x"]
  saved = json.loads((tmp_path / "leaderboard.json").read_text())
  for name in names:
    setting = saved["settings"][name]
    assert setting["tuning_seeds"] == [100, 101] and setting["report_seeds"] == [0, 1]
    tuning = json.loads((tmp_path / name / "tuning.json").read_text())
    for method in config.methods:
      row = setting["methods"][method]["tuning"]
      choice = tuning["methods"][method]
      assert row["chosen"] == choice["chosen"]
      assert row["chosen_learning_rate_scale"] in (9.0, 27.0, 81.0)
      assert row["at_grid_edge"] == (row["chosen_learning_rate_scale"] in (9.0, 81.0))
      # The reported runs are the chosen variant, on the reported seeds only.
      for seed in (0, 1):
        result = json.loads((tmp_path / name / f"seed{seed}" / f"{method}@{choice['chosen']}"
                             / "result.json").read_text())
        assert result["variant"]["name"] == choice["chosen"]
      assert not list((tmp_path / name).glob("seed100"))
    # Every variant ran on the tuning seeds only.
    for variant in tuning["grid"]:
      report = json.loads((tmp_path / name / "tune" / "variants" / variant / "report.json")
                          .read_text())
      assert report["seeds"] == [100, 101]
    # The choice reads no test figure: with every one NaN, the same choice.
    reports = {v: json.loads((tmp_path / name / "tune" / "variants" / v / "report.json")
                             .read_text()) for v in tuning["grid"]}
    assert leaderboard.choose({v: _nan_tests(r) for v, r in reports.items()}, name) == \
        leaderboard.choose(reports, name) == tuning["methods"]
  assert all(len(saved["mean_rank"][m]["mean_rank_ci"]) == 2 for m in config.methods)
  # The controls: equal with averaged and with summed losses at the base rate, and tuned equal
  # on another data order, from the same dense models; the null control gives each setting's
  # detection limit.
  controls = list(study.CONTROLS.values())
  assert saved["controls"] == controls
  assert set(controls).isdisjoint(saved["family"]["comparisons"])
  assert list(saved["family"]["comparisons"]) == ["minmax"]  # every method but equal
  for name in ("mixed-40x",):
    setting = saved["settings"][name]
    assert set(controls) <= set(setting["methods"])
    assert setting["detection_limit"] >= 0
    assert (tmp_path / name / "control-base" / "seed0" / "equal@lr1-clip0" / "result.json").exists()
    assert json.loads((tmp_path / name / "control-sum" / "config.json").read_text())[
        "loss_reduction"] == "reference"
    assert (tmp_path / name / "control-sum" / "seed1" / "equal@lr1-clip0" / "result.json").exists()
    null = json.loads((tmp_path / name / "control-null" / "config.json").read_text())
    assert null["data_order"] == 1
    # Tuned on the same seeds and grid, equal with summed losses chose K = 3 times the rate of
    # equal with averaged ones, one step of this grid (powers of 3) lower: the convention is a
    # step size.
    equal = setting["methods"]["equal"]["tuning"]
    summed = setting["methods"][study.CONTROLS["sum_tuned"]]["tuning"]
    assert equal["chosen_learning_rate_scale"] > 9.0, "the grid cannot show the factor"
    assert equal["chosen_learning_rate_scale"] / summed["chosen_learning_rate_scale"] == 3.0
    assert equal["chosen_clip_norm"] == summed["chosen_clip_norm"] == 0.0
    for control in ("base", "sum", "null", "sum_tuned"):
      report = json.loads((tmp_path / name / f"control-{control}" / "report.json").read_text())
      reported = json.loads((tmp_path / name / "report.json").read_text())
      assert report["dense"] == reported["dense"]  # the same dense models, copied
  markdown = (tmp_path / "report.md").read_text()
  assert "on the tuning seeds 100, 101, disjoint from the reported seeds" in markdown
  # Rerun: everything is read back, the same board.
  again = study.run(config, str(tmp_path), print_report=False)
  assert again["tuning"] == board["tuning"]
  assert again["mean_rank"] == board["mean_rank"]


