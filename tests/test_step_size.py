"""The loss-scale convention is a step size: equal weighting of the mean of the K losses at K
times the learning rate steps exactly as equal weighting of their sum at the base rate, through
the trainer's own step with the rate scaled by a grid variant (docs/weightings.md, "Step size
is part of the method"), and the two part once weight decay is on."""
import jax
import numpy as np
import pytest

from mmcompress.app import plan as app_plan
from mmcompress.models import create_model
from mmcompress.problems.digits import DigitsProblem
from mmcompress.train import parallel, run_axis, stages, step as step_lib, variants

STEPS = 5


def _trajectories(tiny_config, problem, model, reduction, scales, weight_decay):
  """The parameters after `STEPS` steps of equal weighting under `reduction`, one run per
  learning-rate scale of `scales`, all through one compiled step (the scale is a value of
  the optimizer state, `mmcompress.train.variants`)."""
  config = tiny_config(loss_reduction=reduction,
                       **{"optimizer.weight_decay": weight_decay, "optimizer.momentum": 0.9,
                          "optimizer.schedule": "constant", "optimizer.learning_rate": 0.05,
                          "optimizer.clip_norm": 0.0})
  spe = problem.steps_per_epoch(64)
  plan = app_plan.trainer(config)
  w = stages.make_weighting("equal", plan, spe)
  params, model_state = step_lib.init_variables(model, problem, 0)
  masks = jax.tree.map(lambda p: np.ones(p.shape, bool), params)
  mesh = parallel.data_mesh()
  where = run_axis.batch_sharding(mesh, problem.batch_axis, False)
  step, out = None, []
  for scale in scales:
    tx = stages.stage_transform("retrain", plan, spe, w, problem.num_tasks, masks,
                                variant=variants.Variant(scale, 0.0))
    step = step or run_axis.make_runs_train_step(problem, model, w, tx, mesh, num_runs=1)
    state = run_axis.stack([step_lib.create_train_state(params, model_state, w, tx,
                                                        problem.num_tasks, jax.random.key(0))])
    alive = np.ones(1, bool)
    for i in range(STEPS):
      batch = parallel.place(run_axis.stack([problem.train_batch(0, 3, i, 64)]), where)
      state, alive, _ = step(state, alive, batch)
    assert alive.all()
    out.append(jax.device_get(state.params))
  return out


def _gap(a, b):
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b)))


@pytest.mark.parametrize("weight_decay", [0.0, 5e-3])
def test_the_mean_of_the_losses_at_k_times_the_rate_is_their_sum(tiny_config, digits_data,
                                                                 weight_decay):
  problem = DigitsProblem(digits_data("classify"))
  model = create_model("mlp", problem.num_outputs, hidden=(16,))
  k = problem.num_tasks
  mean, base = _trajectories(tiny_config, problem, model, "mean", (float(k), 1.0), weight_decay)
  (total,) = _trajectories(tiny_config, problem, model, "reference", (1.0,), weight_decay)
  if weight_decay == 0.0:
    assert _gap(mean, total) < 1e-6  # step for step the same steps (float32 rounding)
  else:
    # The decay is added after the objective's gradient with the same λ: summed losses see
    # it K times weaker relative to their data term, so the two conventions part.
    assert _gap(mean, total) > 1e-5
  assert _gap(base, total) > 1e-3  # and the rate matters: the mean at the base rate differs
