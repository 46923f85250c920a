"""`experiments.gpu_check --all`, the prepared accelerator run, as a CPU smoke run of its code.

Narrowed to what a 2-core CI machine can afford (the digits MLP's masked step under one
weighting, in place of the paper's models, which compile for tens of seconds here; the MLP's
weighting costs under two weightings; the scenes quick study with min-max alone, no
reweighting and a two-block MTAN); every part runs the code the full check runs. The scenes
part is also the test that a problem without task sets (scenes) goes through the study.
"""
import json

import numpy as np
import pytest

from experiments import gpu_check
from mmcompress.problems.nyuv2 import tasks


@pytest.mark.slow
def test_the_prepared_run_writes_its_steps_costs_and_scenes_study(tmp_path):
  cache = tmp_path / "cache"

  def adjust(config):
    config.data_dir = str(cache)
    config.study.compilation_cache = False
    # One method: every MTAN step compiles for tens of seconds on a 2-core CI machine, and
    # equal's steps add nothing the dense pretraining does not already run. No reweighting:
    # the prune and retrain stages are the pipeline's, one compilation less.
    config.methods = ("minmax",)
    config.stages = ("pretrain", "prune", "retrain")
    # A two-block MTAN: every kind of layer, its programs compiled in under half the time.
    config.model_kwargs.filters = (4, 4)
    config.model_kwargs.convs_per_block = (1, 1)

  out = tmp_path / "out"
  result = gpu_check.run_all(True, 1, str(out), step_methods=("equal",),
                             step_models=("mlp/digits",), weighting_models=("mlp",),
                             weighting_methods=("equal", "upgrad"), adjust_scenes=adjust,
                             weighting_setups={"mlp": gpu_check.benchmark.Setup(
                                 "digits", batch_size=8, steps=2, rounds=2, warmup=0)})
  assert json.loads((out / "gpu_check.json").read_text()) == json.loads(json.dumps(result))
  assert result["grid"] is None  # the grid benchmark: at full size only
  markdown = (out / "gpu_check.md").read_text()

  # The masked step: its checks hold, and it was timed.
  (step,) = result["steps"]
  assert step["model"] == "mlp/digits" and step["method"] == "equal" and step["ok"]
  assert abs(step["sparsity"] - 0.975) < 1e-3 and step["ms_per_step"] > 0
  assert "| mlp/digits | equal |" in markdown and "| OK |" in markdown

  # The weightings' cost table, with the per-task gradient line.
  (table,) = result["weightings"]
  assert table["model"] == "mlp" and list(table["methods"]) == ["equal", "upgrad"]
  assert f"per-task gradients (K=4): {table['per_task_gradient_ratio']:.2f} x" in markdown

  # The scenes study: rendered into the folder the config names, one setting, its runs.
  scenes = result["scenes"]
  assert scenes["preset"] == "scenes_quick" and scenes["setting"] == "scenes-40x"
  assert cache.is_dir() and (out / "scenes" / "leaderboard.json").exists()
  report = json.loads((out / "scenes" / "scenes-40x" / "report.json").read_text())
  assert set(report["methods"]) == {"minmax"}
  results = sorted((out / "scenes" / "scenes-40x").glob("seed0/*/result.json"))
  assert len(results) == 2  # dense, minmax
  for path in results:
    run = json.loads(path.read_text())
    assert set(run["task_metrics"]["normal"]) == set(tasks.TASK_METRICS[tasks.NORMAL])
    assert all(np.isfinite(v) for v in run["all_metrics"].values())
  # Against the trivial predictor, task by task, each way round.
  trivial, metrics = scenes["trivial"], scenes["metrics"]
  assert set(trivial) == set(tasks.DENSE_TASKS) and set(metrics) == {"dense", "minmax"}
  assert metrics["minmax"] == report["methods"]["minmax"]["metrics"]
  for name, values in metrics.items():
    better = [values["segmentation"] > trivial["segmentation"],
              values["depth"] < trivial["depth"], values["normal"] < trivial["normal"]]
    assert scenes["beats_trivial"][name] == all(better)
  assert "| trivial predictor |" in markdown


def test_the_markdown_has_the_grid_line_when_the_grid_was_timed():
  result = {"device": "cpu", "jax": "x", "small": False, "steps": [], "weightings": [],
            "scenes": {"preset": "p", "seeds": [0], "wall_s": 60.0, "trivial": {},
                       "metric_names": {}, "metrics": {}, "beats_trivial": {}},
            "grid": {"num_seeds": 5, "variants": 10, "ratio": 3.5,
                     "wall_s": {"one": 20.0, "grid": 70.0}}}
  text = gpu_check.markdown(result)
  assert "1 variant: 20.0 s, 10 variants: 70.0 s, wall-time ratio 3.50 (goal <= 4)" in text
  assert "Grid on the run axis" not in gpu_check.markdown(dict(result, grid=None))


def test_the_whole_check_runs_the_grid_benchmark_with_the_seeds_it_is_given(tmp_path,
                                                                          monkeypatch):
  scenes = {"preset": "p", "seeds": [0], "wall_s": 60.0, "trivial": {}, "metric_names": {},
            "metrics": {}, "beats_trivial": {}}
  grid = {"num_seeds": 2, "variants": 10, "ratio": 3.5, "wall_s": {"one": 20.0, "grid": 70.0}}
  seeds = []
  monkeypatch.setattr(gpu_check, "model_steps", lambda *args, **kwargs: [])
  monkeypatch.setattr(gpu_check.bench_weightings, "run", lambda *args, **kwargs: [])
  monkeypatch.setattr(gpu_check, "scenes_study", lambda *args, **kwargs: scenes)
  monkeypatch.setattr(gpu_check.bench_grid, "run", lambda n: seeds.append(n) or grid)
  result = gpu_check.run_all(True, 1, str(tmp_path), weighting_models=("mlp",),
                             weighting_methods=("equal",), grid_seeds=2)
  assert seeds == [2] and result["grid"] == grid
  assert "wall-time ratio 3.50" in (tmp_path / "gpu_check.md").read_text()
  gpu_check.run_all(True, 1, str(tmp_path), weighting_models=("mlp",),
                    weighting_methods=("equal",))
  assert seeds == [2]  # small: no grid unless asked


def test_a_folder_that_cannot_hold_the_results_is_refused(tmp_path):
  (tmp_path / "a_file").write_text("x")
  with pytest.raises(gpu_check.errors.UserError, match="is a file"):
    gpu_check.check_out(str(tmp_path / "a_file"))
  with pytest.raises(gpu_check.errors.UserError, match="does not exist"):
    gpu_check.check_out(str(tmp_path / "missing" / "out"))
  gpu_check.check_out(str(tmp_path / "new"))  # made in a writable folder: fine
