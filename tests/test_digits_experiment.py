"""The main job end to end: the quick preset through the command line (killed and resumed:
tests/test_study.py, whose processes run this comparison)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.datasets import load_digits

from mmcompress import errors, export, problems
from mmcompress.problems.digits import data as digits_data

pytestmark = pytest.mark.slow  # each test runs a whole experiment
QUICK = ["--config=experiments/configs/digits.py:quick"]


def command(workdir):
  return [sys.executable, "-m", "experiments.digits", f"--workdir={workdir}", *QUICK]


def environment():
  # Run outside the source tree (cwd=workdir.parent): `python -m` would import the copy in
  # the current folder. tests/conftest.py points PYTHONPATH at the copy under test.
  return dict(os.environ, CI="true", JAX_PLATFORMS="cpu")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("quick")
  done = subprocess.run(command(workdir), cwd=workdir.parent, env=environment(),
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir, done


def test_quick_preset_writes_the_report(quick_run):
  workdir, done = quick_run
  report = json.loads((workdir / "report.json").read_text())
  tasks = report["tasks"]
  assert len(tasks) == 4 and report["target_sparsity"] == 0.975
  assert set(report["dense"]["metrics"]) == set(tasks)
  assert set(report["methods"]) == {"equal", "uncertainty", "dwa", "minmax"}
  for name, method in report["methods"].items():
    assert method["sparsity"] == pytest.approx(0.975, abs=2e-5), name
    assert method["compression_ratio"] == pytest.approx(40.0, rel=1e-3), name
    assert method["prunable_compression_ratio"] == method["compression_ratio"], name
    # The whole MLP (85,002 parameters, 3,082 of them dense: heads and biases) at 97.5 %
    # keeps 2,048 + 3,082 nonzero at most: 16.57x, more only for dense entries that are
    # exactly 0 (biases of units that never fired keep their zero initialisation).
    assert 85_002 / 5_130 - 1e-9 <= method["whole_model_compression_ratio"] < 17.0, name
    for field in ("metrics", "retention"):
      assert set(method[field]) == set(tasks), (name, field)
    retentions = [method["retention"][t] for t in tasks]
    assert method["worst_task_retention"] == pytest.approx(min(retentions))
    assert np.isfinite(method["delta_m"])
    assert len(method["per_seed"]) == 1
  trajectory = report["methods"]["minmax"]["task_weights"]
  assert len(trajectory) > 3 and all(len(w) == 4 for w in trajectory)
  assert all(abs(sum(w) - 1) < 1e-5 for w in trajectory)
  whole = report["whole_model"]
  assert (whole["total_size"], whole["non_prunable_size"]) == (85_002, 3_082)
  assert not whole["reachable"] and whole["cap"] == pytest.approx(85_002 / 3_082)
  markdown = (workdir / "report.md").read_text()
  assert "| minmax |" in markdown and "min-max minus equal" in markdown
  assert "prunable part, 16.6x whole model)" in markdown.splitlines()[0]
  assert "**Stays dense** (3,082 parameters" in markdown
  assert "**Note: the whole model cannot reach 40x**" in markdown
  # The verdict's threshold is one test example of the worst tasks: 1 / (n * dense accuracy).
  threshold = report["comparison"]["effect_threshold"]
  # The test split holds a quarter of every digit, stratified (rounded per digit).
  target = load_digits().target
  assert threshold["test_counts"] == {
      "g" + "_".join(map(str, (k,) + group)): sum(round(0.25 * np.sum(target == d))
                                                 for d in group)
      for k, group in enumerate(digits_data.CLASSIFY_GROUPS)}
  by_hand = {t: 1 / (n * report["dense"]["metrics"][t])
             for t, n in threshold["test_counts"].items()}
  assert threshold["per_task"] == pytest.approx(by_hand)
  worst = [report["methods"][m]["per_seed"][0]["worst_task"] for m in ("minmax", "equal")]
  assert report["comparison"]["minmax_minus_equal"]["thresholds"] == pytest.approx(
      [max(by_hand[t] for t in worst)])
  assert "no difference shown over 1 seed." in markdown  # one seed never shows a winner
  assert "| minmax |" in done.stdout  # the table is printed at the end, too
  for png in ("task_metrics.png", "task_weights.png"):
    assert (workdir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert list((workdir / "tensorboard").rglob("events.out.tfevents.*"))


def test_quick_preset_exports_models_at_the_target_sparsity(quick_run):
  workdir, _ = quick_run
  report = json.loads((workdir / "report.json").read_text())
  for name in report["methods"]:
    params = export.load(workdir / "models" / f"seed0_{name}.npz")
    kernels = [params["trunk"][layer]["kernel"] for layer in params["trunk"]]
    for kernel in kernels:
      assert (kernel == 0).sum() == int(np.floor(0.975 * kernel.size + 0.5)), name
    size = (workdir / "models" / f"seed0_{name}.npz").stat().st_size
    dense_bytes = 4 * sum(k.size for k in kernels)
    assert size < dense_bytes / 8
    result = json.loads((workdir / "seed0" / name / "result.json").read_text())
    assert result["export"]["round_trip_exact"] and result["export"]["prunable_ratio"] >= 15


def test_rerunning_a_finished_workdir_with_another_config_is_refused(quick_run):
  workdir, _ = quick_run
  done = subprocess.run(command(workdir) + ["--config.sparsity=0.99"], cwd=workdir.parent,
                        env=environment(), capture_output=True, text=True, timeout=300)
  assert done.returncode != 0
  assert "different config (sparsity: 0.975 there, 0.99 now)" in done.stderr


def test_a_workdir_recorded_before_configs_named_their_problem_still_resumes(tmp_path,
                                                                              tiny_config):
  from mmcompress.app import comparison  # pylint: disable=import-outside-toplevel
  config = tiny_config()
  saved = json.loads(config.to_json())
  del saved["problem"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  comparison.check_workdir(config, str(tmp_path))  # the same run: accepted
  with config.unlocked():
    config.sparsity = 0.99
  with pytest.raises(ValueError, match=r"different config \(sparsity: 0.975 there"):
    comparison.check_workdir(config, str(tmp_path))


def test_both_task_sets_run_into_their_own_folders_with_an_index(tmp_path, tiny_config):
  from mmcompress.app import comparison  # pylint: disable=import-outside-toplevel
  # No reweighting stage: the reports' layout does not depend on it.
  config = tiny_config(task_sets=("classify", "mixed"), stages=("pretrain", "prune", "retrain"))
  reports = comparison.run_digits(config, str(tmp_path), print_report=False)
  assert set(reports) == {"classify", "mixed"}
  mixed = reports["mixed"]
  assert mixed["tasks"] == ["digit", "parity", "ink"]
  assert mixed["higher_is_better"] == {"digit": True, "parity": True, "ink": False}
  assert mixed["metric_names"]["ink"] == "MAE"
  dense_ink = mixed["dense"]["metrics"]["ink"]
  minmax = mixed["methods"]["minmax"]
  assert minmax["retention"]["ink"] == pytest.approx(dense_ink / minmax["metrics"]["ink"])
  index = (tmp_path / "report.md").read_text()
  assert "Task set 'classify'" in index and "Task set 'mixed'" in index
  for task_set in ("classify", "mixed"):
    assert (tmp_path / task_set / "report.json").exists()
    # Each run records its data, as `data_fingerprint` gives it for that task set.
    problem = problems.get("digits").from_config(config, task_set)
    assert json.loads((tmp_path / task_set / "data.json").read_text()) == (
        comparison.data_fingerprint(problem, config.batch_size))


def test_a_workdir_of_the_same_config_on_other_data_is_refused(tmp_path, tiny_config):
  from mmcompress.app import comparison  # pylint: disable=import-outside-toplevel
  digits = problems.get("digits")

  def fingerprint(task_set="classify", batch_size=8, **overrides):
    return comparison.data_fingerprint(
        digits.from_config(tiny_config(**overrides), task_set), batch_size)

  same = fingerprint()
  assert same == fingerprint() and same["steps_per_epoch"] > 1
  workdir = str(tmp_path)
  assert not comparison.refuse_other_data(same, workdir)  # nothing recorded: nothing to check
  (tmp_path / "data.json").write_text(json.dumps(same))
  assert comparison.refuse_other_data(same, workdir)
  for other, what in ((fingerprint("mixed"), "the first batches differ"),
                      (fingerprint(data_seed=1), "the first batches differ"),
                      (fingerprint(batch_size=16), "steps per epoch: ")):
    assert other != same
    with pytest.raises(errors.UserError, match=f"same config on other data .{what}"):
      comparison.refuse_other_data(other, workdir)
  # A data.json that is not a record is one line too, not a traceback.
  for text, what in (("{trunc", "not JSON"), ("[1, 2]", "not a JSON object")):
    (tmp_path / "data.json").write_text(text)
    with pytest.raises(errors.UserError, match=f"data.json is not a run's record .{what}"):
      comparison.refuse_other_data(same, workdir)


def test_a_grouping_of_ones_own_runs_into_a_folder_of_its_name_and_a_bad_one_is_one_line(
    tmp_path, tiny_config):
  from mmcompress.app import comparison  # pylint: disable=import-outside-toplevel
  config = tiny_config(task_sets=("mixed", "groups:38/59/17"),
                       stages=("pretrain", "prune", "retrain"), methods=("equal",))
  reports = comparison.run_digits(config, str(tmp_path), print_report=False)
  assert reports["groups:38/59/17"]["tasks"] == ["g0_3_8", "g1_5_9", "g2_1_7"]
  saved = json.loads((tmp_path / "groups-38-59-17" / "config.json").read_text())
  assert saved["task_sets"] == ["mixed", "groups:38/59/17"]
  assert "Task set 'groups:38/59/17' (files in groups-38-59-17/)" in (
      tmp_path / "report.md").read_text()
  # Another grouping in the same workdir is refused, not silently switched to.
  other = tiny_config(task_sets=("mixed", "groups:38/59/16"),
                      stages=("pretrain", "prune", "retrain"), methods=("equal",))
  with pytest.raises(ValueError, match="different config"):
    comparison.run_digits(other, str(tmp_path), print_report=False)
  # From the command line: one line, exit 2, nothing written.
  workdir = tmp_path / "bad"
  done = subprocess.run(command(workdir) + ['--config.task_sets=("groups:38/85",)'],
                        cwd=tmp_path, env=environment(), capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 2, done.stderr[-2000:]
  errors = [line for line in done.stderr.splitlines() if line.strip()]
  assert len(errors) == 1 and "digit 8 is in group '38' and in group '85'" in errors[0]
  assert not workdir.exists()
