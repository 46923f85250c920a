"""The benchmark times what it says it times, and reports it in the shape it promises.

No timing is asserted: timings belong to the benchmark's output, not to tests.
"""
import io

import jax
import jax.numpy as jnp
import numpy as np

from experiments import benchmark
from mmcompress import sparsity
from mmcompress.models import MultiHeadVGG16
from mmcompress.train import parallel

TINY = benchmark.Setup("synthetic", batch_size=4, steps=1, rounds=1, warmup=0,
                       image_shape=(8, 8, 1), num_outputs=(2, 3))


def _init(name, setup, batch_size):
  problem = benchmark.make_problem(setup, batch_size)
  model = benchmark.make_model(name, setup.num_outputs)
  variables = dict(model.init(jax.random.key(0), jnp.asarray(problem.example_input()),
                              train=False))
  return problem, model, variables.pop("params"), variables


def test_synthetic_data_puts_every_example_in_exactly_one_task():
  split = benchmark.synthetic_data(TINY, 6).train
  assert split.images.shape == (6, 8, 8, 1)
  np.testing.assert_array_equal(split.task_mask.sum(1), np.ones(6))
  np.testing.assert_array_equal(np.argmax(split.task_mask, 1), np.arange(6) % 2)
  labels = split.targets[split.task_mask]
  classes = np.asarray(TINY.num_outputs)[np.argmax(split.task_mask, 1)]
  assert np.all((labels >= 0) & (labels < classes))


def test_the_steps_are_the_dense_and_the_masked_minmax_step():
  mesh = parallel.data_mesh()
  problem, model, params, model_state = _init("mlp", TINY, 4)
  steps = benchmark.build_steps(problem, model, params, model_state, mesh)
  assert list(steps) == ["dense", "minmax", "zeroed"]
  batch = parallel.shard_batch(problem.train_batch(0, 0, 0, 4), mesh)
  out = {}
  for kind, (step, state) in steps.items():
    for _ in range(3):
      state, _ = step(state, batch)
    out[kind] = state
  masks = sparsity.magnitude_masks(params, benchmark.SPARSITY)
  for p, m in zip(jax.tree.leaves(out["minmax"].params), jax.tree.leaves(masks)):
    np.testing.assert_array_equal(np.asarray(p)[~np.asarray(m)], 0.0)
  kernel = out["dense"].params["trunk"]["Dense_0"]["kernel"]
  assert np.mean(np.asarray(kernel) == 0.0) < 0.01  # the dense step is not masked
  weights = np.asarray(out["minmax"].task_params)
  np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-6)
  assert not np.allclose(weights, 0.5)  # the task weights ascend
  assert out["dense"].task_params == {}


def test_vgg16_adapter_is_multihead_vgg16_on_task_zero():
  setup = benchmark.Setup("synthetic", batch_size=2, steps=1, rounds=1, warmup=0,
                          image_shape=(8, 8, 3), num_outputs=(3, 2), one_task_per_batch=True)
  problem, model, params, model_state = _init("vgg16", setup, 2)
  images = problem.train_batch(0, 0, 0, 2)["images"]
  reference = MultiHeadVGG16(setup.num_outputs)
  variables = {"params": params, **model_state}
  ref_variables = reference.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)
  assert jax.tree.structure(variables) == jax.tree.structure(ref_variables)
  got, got_state = model.apply(variables, images, train=True, mutable=["batch_stats"])
  want, want_state = reference.apply(variables, images, task_id=0, train=True,
                                     mutable=["batch_stats"])
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)
  jax.tree.map(np.testing.assert_array_equal, got_state, want_state)


def test_benchmark_model_returns_every_number():
  """On the trainer's own MultiDigits problem."""
  result = benchmark.benchmark_model("mlp", batch_size=8, steps=2, rounds=1, warmup=0)
  kinds = {"dense", "minmax", "zeroed"}
  assert set(result["ms_per_step"]) == kinds
  assert {k: len(v) for k, v in result["rounds_ms"].items()} == {k: 1 for k in kinds}
  assert all(v > 0 for v in result["ms_per_step"].values())
  assert all(v > 0 for v in result["compile_s"].values())
  assert result["ratio"] == result["ms_per_step"]["minmax"] / result["ms_per_step"]["dense"]
  assert len(result["pair_ratios"]) == 1 and len(result["control_pair_ratios"]) == 1
  assert result["recompiled"] == {k: False for k in kinds}
  assert result["losses_finite"] == {k: True for k in kinds}
  assert result["peak_memory_bytes"] > 0
  assert result["peak_memory_source"] in ("device peak_bytes_in_use", "process peak RSS")


def test_run_prints_a_table_and_a_verdict(monkeypatch, tmp_path):
  monkeypatch.setitem(benchmark.SETUPS, "mlp", TINY)
  out = io.StringIO()
  path = tmp_path / "bench.json"
  results = benchmark.run(["mlp"], control=False, json_out=str(path), out=out)
  text = out.getvalue()
  assert "dense ms" in text and "minmax ms" in text
  assert [line for line in text.splitlines() if line.startswith("mlp: min-max")]
  assert "control_ratio" not in results[0]
  assert path.read_text().startswith("[")
