"""The benchmark times what it says it times, and reports it in the shape it promises.

No timing is asserted: timings belong to the benchmark's output, not to tests.
"""
import io
import json

import jax
import numpy as np
import pytest

from experiments import benchmark
from mmcompress import errors, sparsity
from mmcompress.app import comparison, plan as app_plan
from mmcompress.models import create_model
from mmcompress.models.vgg import VGG16_LAYERS
from mmcompress.train import parallel, step

KINDS = {"dense", "minmax", "zeroed"}


def test_synthetic_cifar100_gives_every_task_a_full_batch():
  problem = benchmark.make_problem(benchmark.SETUPS["vgg16"], 3)
  batch = problem.train_batch(0, 0, 0, 3)
  assert batch["images"].shape == (20, 3, 32, 32, 3)
  assert batch["labels"].shape == (20, 3)
  assert np.all((batch["labels"] >= 0) & (batch["labels"] < 5))
  assert benchmark.num_outputs(problem) == (5,) * 20


def _mlp_steps():
  """The benchmark's steps of the digits MLP at batch 8, on a data mesh of every device."""
  mesh = parallel.data_mesh()
  problem = benchmark.make_problem(benchmark.SETUPS["mlp"], 8)
  model = create_model("mlp", benchmark.num_outputs(problem))
  params, _ = step.init_variables(model, problem, 0)  # the benchmark's own, for seed 0
  steps = benchmark.build_steps(problem, model, mesh)
  return mesh, problem, params, steps


def test_the_steps_are_the_dense_and_the_masked_minmax_step():
  mesh, problem, params, steps = _mlp_steps()
  assert set(steps) == KINDS
  batch = parallel.shard_batch(problem.train_batch(0, 0, 0, 8), mesh)
  out = {}
  for kind, (train_step, state) in steps.items():
    for _ in range(3):
      state, _ = train_step(state, batch)
    out[kind] = state
  masks = sparsity.magnitude_masks(params, benchmark.SPARSITY)
  for p, m in zip(jax.tree.leaves(out["minmax"].params), jax.tree.leaves(masks)):
    np.testing.assert_array_equal(np.asarray(p)[~np.asarray(m)], 0.0)
  pruned = ~np.asarray(masks["trunk"]["Dense_1"]["kernel"])
  for kind in ("dense", "zeroed"):  # neither is masked: the pruned weights are not held at 0
    kernel = np.asarray(out[kind].params["trunk"]["Dense_1"]["kernel"])
    assert np.any(kernel[pruned] != 0.0), kind
  weights = np.asarray(out["minmax"].task_params)
  np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-6)
  assert not np.allclose(weights, 0.25)  # the task weights ascend
  assert out["dense"].task_params == {}


def test_benchmark_model_returns_every_number():
  result = benchmark.benchmark_model("mlp", batch_size=8, steps=2, rounds=1, warmup=0)
  assert set(result["ms_per_step"]) == KINDS
  assert {k: len(v) for k, v in result["rounds_ms"].items()} == {k: 1 for k in KINDS}
  assert all(v > 0 for v in result["ms_per_step"].values())
  assert all(v > 0 for v in result["compile_s"].values())
  assert len(result["pair_ratios"]) == 1 and len(result["control_pair_ratios"]) == 1
  assert result["recompiled"] == {k: False for k in KINDS}
  assert result["losses_finite"] == {k: True for k in KINDS}
  assert result["examples_per_step"] == 8
  assert result["peak_memory_bytes"] > 0
  assert result["peak_memory_source"] in ("device peak_bytes_in_use", "process peak RSS")
  # The masks of the MLP's two trunk kernels (64 x 256 and 256 x 256, one byte per weight)
  # are the bulk of what the min-max step adds; the dense leaves (biases, heads) carry none.
  masked = 64 * 256 + 256 * 256
  extra = result["step_bytes"]["minmax"] - result["step_bytes"]["dense"]
  assert masked <= extra < masked + 4096
  assert masked < result["num_params"]


def test_vgg16_steps_trace_on_the_cifar100_problem():
  # Traced, not compiled: compiling VGG16 costs most of a minute of the suite, and the same
  # model, problem and masked min-max step run compiled in tests/test_paper_problems.py (the
  # full size is `experiments.gpu_check`'s, on a GPU).
  setup = benchmark.Setup("cifar100", batch_size=1, steps=1, rounds=1, warmup=0,
                          model_options={"width": 0.125})
  bench = benchmark._build("vgg16", setup, 1, parallel.data_mesh(), False, 0)  # pylint: disable=protected-access
  assert set(bench.steps) == {"dense", "minmax"}
  assert bench.problem.num_tasks == 20
  for kind, traced in bench.steps.items():
    state, losses = jax.eval_shape(traced, bench.states[kind], bench.batch)
    assert losses.shape == (20,), kind
    assert (jax.tree.structure(state.params)
            == jax.tree.structure(bench.states[kind].params)), kind
  widths = [max(1, round(c * 0.125)) for c in VGG16_LAYERS if c != "M"]
  conv_weights = sum(9 * cin * cout for cin, cout in zip([3] + widths[:-1], widths))
  assert conv_weights < bench.num_params


def test_run_prints_a_table_and_a_verdict(monkeypatch, tmp_path):
  monkeypatch.setitem(benchmark.SETUPS, "mlp", benchmark.Setup("digits", batch_size=4, steps=1,
                                                                rounds=1, warmup=0))
  out = io.StringIO()
  path = tmp_path / "bench.json"
  results = benchmark.run(["mlp"], control=False, json_out=str(path), out=out)
  text = out.getvalue()
  assert "dense ms" in text and "minmax ms" in text
  assert [line for line in text.splitlines() if line.startswith("mlp: min-max")]
  assert "control_ratio" not in results[0]
  assert json.loads(path.read_text())[0]["model"] == "mlp"


def test_the_default_sizes_follow_the_platform():
  small, line = benchmark.platform_setups("cpu")
  assert small is benchmark.CPU_SETUPS and "small" in line and "--full" in line
  for platform, full in (("gpu", False), ("tpu", False), ("cpu", True)):
    setups, line = benchmark.platform_setups(platform, full=full)
    assert setups is benchmark.SETUPS and line.startswith("Sizes: full")
  assert set(benchmark.CPU_SETUPS) == set(benchmark.SETUPS)
  for name, setup in benchmark.CPU_SETUPS.items():
    full = benchmark.SETUPS[name]
    assert setup.data == full.data
    work, full_work = (s.batch_size * s.steps * s.rounds for s in (setup, full))
    assert work <= full_work, name
  assert benchmark.CPU_SETUPS["vgg16"].batch_size < benchmark.SETUPS["vgg16"].batch_size


def test_the_control_runs_the_dense_steps_own_compilation():
  *_, steps = _mlp_steps()
  assert steps["zeroed"][0] is steps["dense"][0]
  assert steps["minmax"][0] is not steps["dense"][0]
  assert steps["zeroed"][1] is not steps["dense"][1]  # each its own (donated) state


def test_run_refuses_bad_arguments_as_user_errors():
  with pytest.raises(errors.UserError, match="models must name"):
    benchmark.run(["resnet"], out=io.StringIO())
  with pytest.raises(errors.UserError, match="steps >= 1"):
    benchmark.run(["mlp"], steps=0, out=io.StringIO())


def test_the_weightings_benchmark_times_each_methods_trainer_step_against_equal():
  from experiments import bench_weightings  # pylint: disable=import-outside-toplevel
  out = io.StringIO()
  setups = {"mlp": benchmark.Setup("digits", batch_size=8, steps=1, rounds=2, warmup=0)}
  [result] = bench_weightings.run(["mlp"], ["minmax", "db_mtl"], setups=setups, out=out)
  methods = result["methods"]
  assert list(methods) == ["equal", "minmax", "db_mtl"]  # the baseline first, always
  assert methods["equal"]["ratio"] == 1.0 and methods["equal"]["memory_ratio"] == 1.0
  assert methods["db_mtl"]["family"] == "gradient" and methods["minmax"]["family"] == "loss"
  assert all(m["losses_finite"] and len(m["pair_ratios"]) == 2 for m in methods.values())
  # DB-MTL's state holds a moving average of K = 4 gradients of the trunk: its compiled step
  # takes more memory than the equal one.
  assert methods["db_mtl"]["memory_ratio"] > 1.5
  assert result["scoring_s"] > 0 and result["scoring_epochs"] > 0
  table = out.getvalue()
  assert "Taylor scoring for task-aware pruning (8 calibration batches" in table
  g = result["gradient_s"]
  assert set(g) == {"one", "auto", "unrolled", "vmap"} and all(v > 0 for v in g.values())
  assert result["per_task_gradient_ratio"] == g["auto"] / g["one"]
  assert (f"per-task gradients (K=4): {result['per_task_gradient_ratio']:.2f} x one gradient"
          in table)
  assert all(name in table for name in methods)
  with pytest.raises(errors.UserError, match="methods entry"):
    bench_weightings.run(["mlp"], ["no_such_method"], setups=setups, out=out)


def test_the_seed_benchmark_counts_every_training_step_of_a_comparison(tiny_config):
  from experiments import bench_seeds  # pylint: disable=import-outside-toplevel
  config = tiny_config()  # pretrain 2, reweight 1, retrain 2 epochs; 2 methods; shared
  assert bench_seeds.step_calls(config, 10) == (2 + 2 * (1 + 2)) * 10
  with config.unlocked():
    config.share_pretraining = False
  assert bench_seeds.step_calls(config, 10) == (2 + 2 * (2 + 1 + 2)) * 10
  with config.unlocked():
    config.stages = ("sparse",)
  assert bench_seeds.step_calls(config, 10) == (2 + 2 * config.epochs.sparse) * 10


def test_the_seed_benchmark_times_one_seed_and_the_seed_axis(monkeypatch):
  from experiments import bench_seeds  # pylint: disable=import-outside-toplevel
  config = bench_seeds.config_for((0,), False)
  with config.unlocked():
    config.model_kwargs.hidden = (8,)
  for seeds in (None, 2):  # the real steps run: one seed, and two on the seed axis
    assert 0 < bench_seeds.step_seconds(config, seeds, steps=2, rounds=1) < 60
  walls = iter([10.0, 20.0, 30.0, 12.0])
  monkeypatch.setattr(bench_seeds, "timed_run", lambda config: next(walls))
  monkeypatch.setattr(bench_seeds, "step_seconds",
                      lambda config, seeds: 1e-3 if seeds is None else 2e-3)
  out = io.StringIO()
  result = bench_seeds.run(4, out=out)
  text = out.getvalue()
  assert "seed axis: 4 seeds / 1 seed wall-time ratio 2.00" in text
  calls = result["steps_per_seed"]
  assert f"training steps are {100 * calls * 3 * 1e-3 / 30:.0f} % of the wall time" in text
  assert f"training steps are {100 * calls * 2e-3 / 12:.0f} % of the wall time" in text


def test_the_grid_benchmark_times_one_variant_and_ten_on_the_run_axis(monkeypatch):
  from experiments import bench_grid  # pylint: disable=import-outside-toplevel
  from mmcompress.train import variants  # pylint: disable=import-outside-toplevel
  one, grid = bench_grid.config_for(5, False), bench_grid.config_for(5, True)
  for config in (one, grid):
    comparison.validate(config)
    assert config.task_sets == ("classify",) and config.sparsity == 0.975
    assert config.methods == bench_grid.METHODS and config.seeds == tuple(range(5))
  assert len(variants.grid(app_plan.trainer(one))) == 1
  assert len(variants.grid(app_plan.trainer(grid))) == 10
  seen = []
  walls = iter([30.0, 75.0])

  def timed(config):
    seen.append(len(variants.grid(app_plan.trainer(config))))
    wall = next(walls)
    return wall, {"compilation": 10.0, "training steps": wall - 20.0, "the rest": 10.0}

  monkeypatch.setattr(bench_grid, "timed_split", timed)
  out = io.StringIO()
  result = bench_grid.run(5, out=out)
  assert seen == [1, 10]
  assert ("grid axis: 10 variants x 5 seeds / 1 variant x 5 seeds wall-time ratio 2.50"
          in out.getvalue())
  assert result["ratio"] == 2.5
  assert "10 variants x 5 seeds: 75.0 s (compilation 10.0 s, training steps 55.0 s" in (
      out.getvalue())
  assert result["split_s"]["one"]["training steps"] == 10.0
