"""The study: its settings, its checks before compute, what precedes pruning shared across
sparsities, Holm's adjustment against a brute-force step-down, and the quick study end to end,
killed with SIGKILL at a random moment and rerun to the same leaderboard and the same report
of every setting (the comparisons' own SIGKILL test: each task set's process runs the digits
comparison of `experiments.digits`, on the run axis)."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments.configs import study as study_config
from mmcompress.app import comparison, leaderboard, study
from mmcompress.weighting import WEIGHTINGS

# The quick study made smaller still: a narrow MLP, a checkpoint every few steps.
SMALL = ["--config=study:untuned_quick", "--config.model_kwargs.hidden=(32,)",
         "--config.checkpoint_every_steps=5"]


def test_the_study_runs_every_weighting_and_criterion():
  config = study_config.get_config()
  assert set(WEIGHTINGS) <= set(config.methods)  # every built-in one, named by the preset
  assert set(study_config.WEIGHTINGS) == set(WEIGHTINGS)
  assert {m.partition("+")[2] for m in config.methods if "+" in m} == {
      "taylor_mean", "taylor_max", "taylor_minmax"}
  assert len(config.seeds) == 10 and len(config.study.tuning_seeds) >= 3
  assert not set(config.seeds) & set(config.study.tuning_seeds)
  assert [s.name for s in study.settings(config)] == [
      "classify-40x", "classify-100x", "mixed-40x", "mixed-100x", "pairs-40x", "pairs-100x"]
  # The grid: the same for every method, 1/4 to 16 (64x) in steps of about sqrt 2, with and
  # without a clip.
  scales = sorted(config.grid.learning_rate_scale)
  assert scales[0] == 0.25 and scales[-1] == 16.0
  assert max(b / a for a, b in zip(scales, scales[1:])) < 1.45
  assert set(config.grid.clip_norm) == {0.0, 1.0}


def test_the_tuned_preset_is_the_study_over_no_clip_and_a_clip_at_norm_1(tmp_path):
  config = study_config.get_config("tuned")
  assert study.variants(config) == [("clip-0", 0.0), ("clip-1", 1.0)]
  assert config.optimizer.clip_norm == 0.0 and config.optimizer.compress_clip_norm == 0.0
  assert len(study.validate(config, str(tmp_path))) == 4  # every variant's settings check
  variant = study.variant_config(config, 1.0)
  assert variant.optimizer.compress_clip_norm == 1.0 and not study.variants(variant)
  assert variant.methods == config.methods and variant.seeds == config.seeds


def test_a_setting_config_is_the_study_with_its_task_set_and_sparsity():
  config = study_config.get_config("untuned_quick")
  setting = study.settings(config)[3]
  sub = study.setting_config(config, setting)
  assert (tuple(sub.task_sets), sub.sparsity) == (("mixed",), 0.99)
  assert "study" not in sub and sub.methods == config.methods and sub.seeds == config.seeds
  with pytest.raises(AttributeError):  # locked, like every config
    sub.new_field = 1


@pytest.mark.parametrize("sparsity, text", [(0.975, "40x"), (0.99, "100x"), (0.5, "2x"),
                                            (0.97, "33.3x")])
def test_ratio_text(sparsity, text):
  assert study.ratio_text(sparsity) == text


@pytest.mark.parametrize("field, value, message", [
    ("study.jobs", 0, "config.study.jobs"),
    ("study.sparsities", (0.975, 0.975), "names one twice"),
    ("study.sparsities", (1.5,), "config.study.sparsities"),
    ("study.task_sets", (), "task_sets is empty"),
    ("study.task_sets", ("nope",), "nope"),
    ("methods", ("equal", "nope"), "nope"),
    ("study.compress_clip_norms", (1.0, 1.0), "names one twice"),
    ("study.compress_clip_norms", (0.0, -1.0), "compress_clip_norms must be a finite number >= 0"),
    ("study.compress_clip_norms", (1e-7, 1.00000001e-7), "names one twice"),  # one folder
    ("optimizer.compress_clip_norm", 1.0, "leave --config.optimizer.clip_norm and"),
    ("optimizer.clip_norm", 1.0, "leave --config.optimizer.clip_norm and"),
])
def test_a_bad_study_is_refused_before_any_compute(tmp_path, field, value, message):
  config = study_config.get_config("untuned_quick")
  with config.unlocked():
    config.study.compress_clip_norms = (0.0, 1.0)
    *parents, leaf = field.split(".")
    target = config
    for p in parents:
      target = target[p]
    target[leaf] = value
  with pytest.raises(ValueError, match=message):
    study.validate(config, str(tmp_path))
  assert not list(tmp_path.iterdir())  # nothing written


def test_a_study_recorded_before_the_clip_grid_still_resumes(tmp_path):
  config = study_config.get_config("untuned_quick")
  comparison.check_workdir(config, str(tmp_path))
  saved = json.loads((tmp_path / "config.json").read_text())
  del saved["study"]["compress_clip_norms"], saved["optimizer"]["compress_clip_norm"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  study.validate(config, str(tmp_path))  # the same study: it resumes
  with config.unlocked():
    config.study.compress_clip_norms = (0.0, 1.0)
  with pytest.raises(ValueError, match="different config"):
    study.validate(config, str(tmp_path))


@pytest.mark.parametrize("chunk_runs, share_pretraining", [(0, True), (1, False)])
def test_the_variants_share_what_precedes_compression(chunk_runs, share_pretraining):
  config = study_config.get_config("untuned_quick")
  with config.unlocked():
    config.chunk_runs, config.share_pretraining = chunk_runs, share_pretraining
  setting = study.setting_config(config, study.settings(config)[0])
  pieces = set(study._pretrained_pieces(setting))  # pylint: disable=protected-access
  dense = {"axis/dense", "seed0/dense", "seed1/dense"}
  pretrain = {f"axis/{m}/pretrain" for m in config.methods}
  # Each method's own pretraining (unclipped in every variant) when they do not share one;
  # never a stage after it (those are what the variants clip).
  assert pieces == (dense if share_pretraining else dense | pretrain)


def test_a_setting_folder_of_another_run_is_refused(tmp_path):
  config = study_config.get_config("untuned_quick")
  (tmp_path / "mixed-100x").mkdir()
  (tmp_path / "mixed-100x" / "config.json").write_text(json.dumps({"seeds": [5]}))
  with pytest.raises(ValueError, match="mixed-100x holds a run with a different config"):
    study.validate(config, str(tmp_path))


def _finished_setting(root, seeds, methods):
  """The folders of a finished quick setting on the run axis, and a file in each."""
  pieces = ["axis/dense/pretrain/7"] + [f"seed{s}/dense" for s in seeds]
  for method in methods:
    pieces += [f"axis/{method}/{stage}/3" for stage in ("reweight", "retrain")]
    pieces += [f"seed{s}/{method}" for s in seeds]
  for piece in pieces:
    (root / piece).mkdir(parents=True)
    (root / piece / "data").write_text(piece)
  (root / "report.json").write_text("{}")


def test_share_unpruned_copies_the_dense_references_and_the_stages_before_the_prune(tmp_path):
  config = study.setting_config(study_config.get_config("untuned_quick"),
                                study.Setting("classify-100x", "classify", 0.99))
  assert study.unpruned_stages(config) == ("pretrain", "reweight")
  source, target = tmp_path / "a", tmp_path / "b"
  _finished_setting(source, config.seeds, config.methods)
  # What a copy killed half-way leaves: one folder in place, one half-copied beside its place.
  (target / "seed0" / "dense").mkdir(parents=True)
  (target / "seed0" / "dense" / "data").write_text("kept")
  (target / "axis" / "minmax+taylor_max" / "reweight.copying").mkdir(parents=True)
  assert study.share_unpruned(str(source), str(target), config)
  copied = sorted(str(p.relative_to(target)) for p in target.rglob("data"))
  expected = (["seed0/dense/data", "seed1/dense/data", "axis/dense/pretrain/7/data"]
              + [f"axis/{m}/reweight/3/data" for m in config.methods])
  assert copied == sorted(expected)
  assert (target / "seed0" / "dense" / "data").read_text() == "kept"
  assert (target / "axis" / "minmax+taylor_max" / "reweight" / "3" / "data").read_text() == (
      "axis/minmax+taylor_max/reweight/3")
  assert not list(target.rglob("*.copying"))


def test_share_unpruned_waits_for_the_first_setting_to_finish(tmp_path):
  config = study.setting_config(study_config.get_config("untuned_quick"),
                                study.Setting("classify-100x", "classify", 0.99))
  source, target = tmp_path / "a", tmp_path / "b"
  _finished_setting(source, config.seeds, config.methods)
  (source / "report.json").unlink()
  assert not study.share_unpruned(str(source), str(target), config)
  assert not target.exists()


def test_dynamic_sparse_training_shares_only_the_dense_references():
  config = study_config.get_config("untuned_quick")
  with config.unlocked():
    config.stages = ("sparse",)
  assert study.unpruned_stages(config) == ()
  setting = study.setting_config(config, study.settings(config)[0])
  assert set(study._unpruned_pieces(setting)) == {  # pylint: disable=protected-access
      "axis/dense", "seed0/dense", "seed1/dense"}


def _holm_by_steps(p_values, alpha):
  """Holm's procedure itself at level `alpha`: reject in increasing order while
  p_(i) <= alpha / (m - i), stop at the first that is not."""
  order = sorted(p_values, key=lambda k: p_values[k])
  rejected = set()
  for i, key in enumerate(order):
    if p_values[key] > alpha / (len(order) - i):
      break
    rejected.add(key)
  return rejected


def test_holm_adjusted_p_values_reject_exactly_what_the_step_down_rejects():
  draw = np.random.default_rng(0)
  for _ in range(50):
    m = int(draw.integers(1, 12))
    p_values = {f"m{i}": float(v) for i, v in enumerate(draw.uniform(0, 0.2, m))}
    adjusted = leaderboard.holm(p_values)
    for alpha in np.linspace(0.001, 0.3, 120):
      assert {k for k, v in adjusted.items() if v <= alpha} == _holm_by_steps(p_values, alpha)
  assert leaderboard.holm({"a": 0.04}) == {"a": 0.04}
  assert leaderboard.holm({"a": 0.5, "b": 0.6, "c": 0.9}) == {"a": 1.0, "b": 1.0, "c": 1.0}


def _command(workdir):
  return [sys.executable, "-m", "experiments.study", f"--workdir={workdir}", *SMALL]


def _environment():
  return dict(os.environ, CI="true", JAX_PLATFORMS="cpu")


@pytest.fixture(scope="module", name="quick_study")
def fixture_quick_study(tmp_path_factory):
  """The quick study run in this process, one task set after the other (``jobs=1``): the
  command line runs them side by side, and must give the same leaderboard."""
  workdir = tmp_path_factory.mktemp("study")
  config = study_config.get_config("untuned_quick")
  with config.unlocked():
    config.model_kwargs.hidden = (32,)
    config.checkpoint_every_steps = 5
    config.study.jobs = 1
  board = study.run(config, str(workdir), print_report=False)
  return workdir, board


@pytest.mark.slow
def test_the_quick_study_writes_one_leaderboard_over_four_settings(quick_study):
  workdir, returned = quick_study
  board = json.loads((workdir / "leaderboard.json").read_text())
  assert board == json.loads(json.dumps(returned))
  names = ["classify-40x", "classify-100x", "mixed-40x", "mixed-100x"]
  assert board["order"]["settings"] == names and set(board["settings"]) == set(names)
  for name in names:
    report = json.loads((workdir / name / "report.json").read_text())
    assert report["target_sparsity"] == board["settings_info"][name]["sparsity"]
    rows = board["settings"][name]["methods"]
    assert set(rows) == {"equal", "minmax+taylor_max"}
    for method, row in rows.items():
      # The leaderboard's numbers are the setting's report's.
      per_seed = [r["worst_task_retention"] for r in report["methods"][method]["per_seed"]]
      assert row["worst_task_retention"][0] == pytest.approx(np.mean(per_seed))
  # Both sparsities of a task set compare with the very same dense models, trained once.
  for task_set in ("classify", "mixed"):
    reports = [json.loads((workdir / f"{task_set}-{r}" / "report.json").read_text())
               for r in ("40x", "100x")]
    assert reports[0]["dense"] == reports[1]["dense"]
    logs = [(workdir / f"{task_set}-{r}" / "progress.log").read_text() for r in ("40x", "100x")]
    # Every epoch goes to the log: the first sparsity trained the references and the
    # reweighting, the second read them back and trained only after its own prune.
    for line in ("seed0/dense pretrain epoch", "seed1/minmax+taylor_max reweight epoch"):
      assert line in logs[0] and line not in logs[1]
    assert "seed1/minmax+taylor_max retrain  epoch" in logs[1]  # (stages padded to 8)
    for method in ("equal", "minmax+taylor_max"):
      weights = [r["methods"][method]["task_weights"] for r in reports]
      assert weights[0][:1] == weights[1][:1]  # the reweighting's first epoch, shared
  markdown = (workdir / "report.md").read_text()
  assert markdown.startswith("# Leaderboard")
  assert "## Mean rank across settings" in markdown and "| minmax+taylor_max |" in markdown
  assert "[mixed-100x/report.md](mixed-100x/report.md)" in markdown
  assert (workdir / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_sigkill_during_the_study_then_rerun_gives_the_same_leaderboard(quick_study, tmp_path):
  reference, _ = quick_study
  workdir = tmp_path / "killed"
  # The run to kill does without a compilation cache (an empty JAX_COMPILATION_CACHE_DIR
  # turns off the session's and the study's own): JAX writes an entry in place, and one cut
  # short would only cost the rerun a warning and a compilation, but other tests read the
  # session's cache too. The rerun reads it.
  # Its task sets at 40x only: two processes still, half the work. Each setting's comparison
  # does not depend on the settings after it, so the uninterrupted reference is the quick
  # study's 40x settings.
  command = _command(workdir) + ["--config.study.sparsities=(0.975,)"]
  process = subprocess.Popen(command, cwd=tmp_path,
                             env=dict(_environment(), JAX_COMPILATION_CACHE_DIR=""),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  started = workdir / "classify-40x" / "axis" / "equal"  # the first method's checkpoints
  deadline = time.time() + 300
  while time.time() < deadline and not started.exists():
    time.sleep(0.05)
  time.sleep(random.Random().uniform(0.0, 4.0))
  killed = process.poll() is None
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert killed, "the study finished before it could be killed; kill it sooner"
  assert not (workdir / "leaderboard.json").exists()
  # The task sets' processes died with the study: nothing writes in the workdir any more.
  def listing():
    return sorted((str(p), p.stat().st_mtime_ns) for p in workdir.rglob("*") if p.exists())
  before = listing()
  time.sleep(2.0)
  assert listing() == before
  done = subprocess.run(command, cwd=tmp_path, env=_environment(),
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "| minmax+taylor_max |" in done.stdout  # the leaderboard is printed at the end
  # The task sets side by side, killed and resumed: what one process gave in one go.
  reports = {}
  for setting in ("classify-40x", "mixed-40x"):
    reports[setting] = json.loads((reference / setting / "report.json").read_text())
    assert json.loads((workdir / setting / "report.json").read_text()) == reports[setting]
  expected = leaderboard.build(reports)
  board = json.loads((workdir / "leaderboard.json").read_text())
  assert {k: board[k] for k in expected} == json.loads(json.dumps(expected))
  assert (workdir / "report.md").read_text() == leaderboard.to_markdown(board)


@pytest.mark.slow
def test_a_tuned_study_chooses_each_methods_clip_on_the_validation_split(tmp_path):
  config = study_config.get_config("untuned_quick")
  with config.unlocked():
    config.model_kwargs.hidden = (32,)
    config.methods = ("equal",)  # one method: the choice is per method
    config.study.update(task_sets=("mixed",), sparsities=(0.975,), jobs=1,
                        compress_clip_norms=(0.0, 0.5))
  board = study.run(config, str(tmp_path), print_report=False)
  assert board["variants"] == ["clip-0", "clip-0.5"]
  reports = {v: json.loads((tmp_path / v / "mixed-40x" / "report.json").read_text())
             for v in board["variants"]}
  # One dense model per seed, trained by the first variant; the second starts from a copy.
  assert reports["clip-0"]["dense"] == reports["clip-0.5"]["dense"]
  logs = {v: (tmp_path / v / "mixed-40x" / "progress.log").read_text() for v in reports}
  assert "seed0/dense pretrain epoch" in logs["clip-0"]
  assert "seed0/dense pretrain epoch" not in logs["clip-0.5"]
  assert "seed0/equal retrain  epoch" in logs["clip-0.5"]
  # The clip changes the compression stages' training.
  assert any(reports["clip-0"]["methods"][m]["metrics"] != reports["clip-0.5"]["methods"][m]
             ["metrics"] for m in config.methods)
  for method in config.methods:
    # The choice, recomputed from the runs' own validation metrics on disk.
    validation = {}
    for v in board["variants"]:
      per_seed = []
      for seed in config.seeds:
        folder = tmp_path / v / "mixed-40x" / f"seed{seed}"
        dense = json.loads((folder / "dense" / "result.json").read_text())["val_metrics"]
        run = json.loads((folder / method / "result.json").read_text())["val_metrics"]
        per_seed.append(min(run[t] / dense[t] if t != "ink" else dense[t] / run[t]
                            for t in ("digit", "parity", "ink")))
      validation[v] = float(np.mean(per_seed))
    tuning = board["tuning"]["mixed-40x"][method]
    assert tuning["validation"] == pytest.approx(validation)
    chosen = max(board["variants"], key=lambda v: (validation[v], v == "clip-0"))
    assert tuning["chosen"] == chosen
    # The leaderboard's test numbers are the chosen variant's.
    per_seed = [r["worst_task_retention"]
                for r in reports[chosen]["methods"][method]["per_seed"]]
    row = board["settings"]["mixed-40x"]["methods"][method]
    assert row["worst_task_retention"][0] == pytest.approx(np.mean(per_seed))
  for v in board["variants"]:  # each variant keeps its own leaderboard
    assert (tmp_path / v / "report.md").read_text().startswith("# Leaderboard")
  markdown = (tmp_path / "report.md").read_text()
  assert "## Tuned on the validation split" in markdown
  chosen = board["tuning"]["mixed-40x"]["equal"]["chosen"]
  figures = ", ".join(f"{v:.3f}" for v in validation.values())
  assert f"| equal | **{chosen}** ({figures}) |" in markdown
  assert f"| equal ({chosen}) |" in markdown
  assert "[clip-0.5/mixed-40x/report.md](clip-0.5/mixed-40x/report.md)" in markdown


def test_the_null_control_draws_the_stages_after_pretraining_from_another_order():
  from mmcompress.app import comparison  # pylint: disable=import-outside-toplevel
  config = study_config.get_config("quick")
  with config.unlocked():
    config.data_order = 2
  assert comparison.data_seed(config.data_order, "pretrain", 3) == 3  # the same dense model
  stride = comparison.DATA_ORDER_STRIDE
  assert comparison.data_seed(config.data_order, "retrain", 3) == 3 + 2 * stride
  with config.unlocked():
    config.data_order = 0
  assert comparison.data_seed(config.data_order, "retrain", 3) == 3
