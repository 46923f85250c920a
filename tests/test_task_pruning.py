"""Task-aware pruning in the pipeline: method names with a criterion, calibration scores of
the training split, masks with the exact budget, and what a run records about them."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmcompress import export, sparsity, weighting
from mmcompress.app import comparison, plan as app_plan
from mmcompress.problems.digits import DigitsProblem
from mmcompress.models import create_model
from mmcompress.train import parallel, scoring, stages, step as step_lib


def test_a_method_names_its_criterion_after_a_plus(tiny_config):
  config = tiny_config()
  plan = app_plan.trainer(config)
  assert scoring.parse_method("minmax", plan) == ("minmax", scoring.Criterion("magnitude"))
  name, criterion = scoring.parse_method("equal+taylor_disparse", app_plan.trainer(config))
  assert (name, criterion.name, criterion.aggregate) == ("equal", "taylor_disparse", "disparse")
  assert criterion.task_aware
  taylor = tiny_config(**{"prune.criterion": "taylor", "prune.aggregate": "max"})
  assert scoring.parse_method("dwa", app_plan.trainer(taylor))[1].name == "taylor_max"
  with pytest.raises(ValueError, match="pruning criterion of method 'minmax\\+taylor_median'"):
    scoring.parse_method("minmax+taylor_median", app_plan.trainer(config))
  with pytest.raises(ValueError, match="config.methods entry"):
    scoring.parse_method("minimax+taylor_max", app_plan.trainer(config))
  with pytest.raises(ValueError, match="config.prune.aggregate"):
    scoring.parse_method("dwa", app_plan.trainer(
        tiny_config(**{"prune.criterion": "taylor", "prune.aggregate": "sum"})))


def test_calibration_scores_are_the_mean_over_batches_of_each_tasks_taylor_score(
    tiny_config, digits_data):
  config = tiny_config()
  problem = DigitsProblem(digits_data("classify"))
  model = create_model("mlp", problem.num_outputs, hidden=(8,))
  params, model_state = step_lib.init_variables(model, problem, 0)
  batches = [problem.train_batch(0, 2, step, config.batch_size) for step in range(3)]
  mesh = parallel.data_mesh()
  got = scoring.calibration_scores(scoring.make_scoring_step(problem, model, mesh), params,
                                   model_state, batches, mesh, problem.batch_axis, 0)
  # Independently: K separate jax.grad calls per batch, |θ ⊙ g|, averaged.
  rng = jax.random.key(0)
  for k in range(problem.num_tasks):
    per_batch = []
    for batch in batches:
      grad = jax.grad(lambda p, b=batch, k=k: problem.task_losses(
          model, p, model_state, jax.tree.map(jnp.asarray, b), rng)[0][k])(params)
      per_batch.append(jax.tree.map(lambda p, g: np.abs(np.asarray(p) * np.asarray(g)),
                                    params, grad))
    want = jax.tree.map(lambda *xs: np.mean(xs, axis=0), *per_batch)
    jax.tree.map(lambda s, w, k=k: np.testing.assert_allclose(s[k], w, rtol=1e-4, atol=1e-9),
                 got, want)


@pytest.mark.slow
def test_a_taylor_minmax_run_prunes_to_the_exact_budget_and_records_its_weights(
    tmp_path, tiny_config, tiny_experiment):
  config = tiny_config(methods=("minmax+taylor_minmax",), **{"prune.calibration_batches": 2})
  comparison.validate(config)
  exp = tiny_experiment(tmp_path, config)
  (result,) = comparison.run_method(exp, "minmax+taylor_minmax", (0,), None).values()
  pruning = result.pruning
  assert pruning["criterion"] == "taylor_minmax" and pruning["aggregate"] == "minmax"
  assert pruning["calibration_batches"] == 2 and pruning["seconds"] > 0
  weights = np.asarray(pruning["task_weights"])
  # The min-max weights at the end of the reweight stage: on the simplex, moved from 1/K.
  assert weights.shape == (4,) and abs(weights.sum() - 1) < 1e-5 and np.all(weights >= 0)
  assert not np.allclose(weights, 0.25)
  assert result.sparsity == pytest.approx(0.975, abs=1e-3)
  # The masks differ from magnitude masks of the same weights (they know the tasks), with
  # exactly the same count in every prunable leaf.
  (magnitude,) = comparison.run_method(exp, "minmax", (0,), None).values()
  assert magnitude.pruning == {"criterion": "magnitude", "aggregate": None}
  assert result.parameters["prunable_nonzero"] == magnitude.parameters["prunable_nonzero"]
  assert result.metrics != magnitude.metrics
  report_text = (tmp_path / "seed0" / "minmax+taylor_minmax" / "result.json").read_text()
  assert '"taylor_minmax"' in report_text
  # From the exported models: the same count in every prunable leaf, another pattern.
  models = [export.load(tmp_path / json.loads(
      (tmp_path / "seed0" / name / "result.json").read_text())["export"]["path"])
            for name in ("minmax+taylor_minmax", "minmax")]
  kept = [sparsity.summary(m, jax.tree.map(lambda p: p != 0, m))["leaves"] for m in models]
  prunable = [n for n, leaf in kept[0].items() if leaf["prunable"]]
  assert prunable and all(kept[0][n]["nonzero"] == kept[1][n]["nonzero"] for n in prunable)
  patterns = [{"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf) != 0
               for path, leaf in jax.tree_util.tree_leaves_with_path(m)} for m in models]
  assert any(not np.array_equal(patterns[0][n], patterns[1][n]) for n in prunable)


def test_validate_refuses_an_unknown_criterion_before_any_compute(tiny_config):
  with pytest.raises(ValueError, match="pruning criterion"):
    comparison.validate(tiny_config(methods=("minmax+snip",)))
  with pytest.raises(ValueError, match="calibration_batches"):
    comparison.validate(tiny_config(**{"prune.calibration_batches": 0}))
  comparison.validate(tiny_config(methods=("minmax", "minmax+taylor_max")))
  assert "taylor_max" in scoring.CRITERIA and set(sparsity.AGGREGATIONS) == {
      "mean", "max", "disparse", "minmax"}


def test_a_loss_level_step_with_per_task_rows_equals_the_plain_step(tiny_config, digits_data):
  """Rows c_k ∇L_k (c = ∂objective/∂L), summed by the stage's unit aggregator, are the
  objective's gradient: one step of each from the same state lands on the same params."""
  config = tiny_config(stages=("sparse",), **{"dynamic.grow": "task_max"})
  problem = DigitsProblem(digits_data("classify"))
  model = create_model("mlp", problem.num_outputs, hidden=(8,))
  mesh = parallel.data_mesh()
  params, model_state = step_lib.init_variables(model, problem, 0)
  w = stages.make_weighting("minmax", app_plan.trainer(config), 5)
  batch = parallel.shard_batch(problem.train_batch(0, 0, 0, 64), mesh)
  out = {}
  for per_task in (False, True):
    tx = stages.stage_transform("pretrain", app_plan.trainer(config), 5, w, problem.num_tasks)
    if per_task:
      assert stages.per_task_gradients("sparse", app_plan.trainer(config))
      tx = stages.saddle_point(stages.descent_transform(
          "pretrain", app_plan.trainer(config), 5, first=weighting.sum_tasks()), w.tx)
    state = step_lib.create_train_state(params, model_state, w, tx, problem.num_tasks,
                                        jax.random.key(0))
    step = step_lib.make_train_step(problem, model, w, tx, mesh, per_task)
    state, _ = step(state, batch)
    out[per_task] = jax.device_get((state.params, state.task_params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6),
               out[False], out[True])
  assert not stages.per_task_gradients("retrain", app_plan.trainer(config))


@pytest.mark.slow
@pytest.mark.parametrize("grow,method", [("task_max", "minmax"), ("task_minmax", "minmax"),
                                         ("task_disparse", "mgda")])
def test_sparse_training_with_task_aware_regrowth_runs_end_to_end(tmp_path, tiny_config,
                                                                  tiny_experiment, grow, method):
  config = tiny_config(stages=("sparse",), **{
      "epochs.sparse": 3, "dynamic.update_every_epochs": 1, "dynamic.grow_fraction": 0.01,
      "dynamic.grow": grow, "sparsity": 0.9})
  comparison.validate(config)
  (result,) = comparison.run_method(tiny_experiment(tmp_path, config), method, (0,), None).values()
  assert all(np.isfinite(v) for v in result.metrics.values())
  assert result.sparsity == pytest.approx(0.9, abs=1e-3)
