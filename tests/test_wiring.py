"""How the pipeline is wired: which split selects, which losses feed the weighting, which epoch
becomes which step, which seed a paired difference belongs to.

Every check here compares the pipeline with an independent computation (NumPy by hand, a
fresh evaluation, a config read by hand), never a run with another run of itself: a wiring
bug (the test split used for selection, the task losses averaged before the weighting sees
them, a period read in steps instead of epochs) changes both sides of a self-comparison alike.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmcompress import sparsity
from mmcompress.app import comparison, plan as app_plan, report as report_lib
from mmcompress import weighting as weighting_lib
from mmcompress.models import create_model
from mmcompress.problems.cifar100 import Cifar100Problem
from mmcompress.problems.cifar100 import data as cifar100
from mmcompress.problems.digits import DigitsProblem
from mmcompress.problems.digits import data as digits
from mmcompress.train import loop, parallel, run_axis, stages, step as step_lib

SPE = 7  # steps per epoch in the schedule tests: no period is a multiple of it by accident
EVAL_BATCH = 8  # divisible by the device counts the suite runs with (1, 2, 4, 8)


# --- 3. Each problem's losses and metrics, by hand -------------------------------------------


def log_softmax(logits):
  shifted = logits - logits.max(axis=-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def cross_entropy(logits, labels):
  return -log_softmax(np.asarray(logits, np.float64))[np.arange(len(labels)), labels]


@pytest.fixture(scope="module")
def mixed(digits_data):
  """MultiDigits 'mixed' (digit, parity: classifications; ink: a regression), a small MLP."""
  problem = DigitsProblem(digits_data("mixed"))
  model = create_model("mlp", problem.num_outputs, hidden=(16,))
  params, _ = step_lib.init_variables(model, problem, 0)
  return problem, model, params


def digits_reference(model, params, images, targets, mask, kinds):
  """Per task, by hand over its own examples: (mean loss, accuracy or MAE)."""
  outputs = model.apply({"params": params}, jnp.asarray(images), train=False)
  losses, scores = [], []
  for k, (out, kind) in enumerate(zip(outputs, kinds)):
    out, rows = np.asarray(out, np.float64), mask[:, k]
    if kind == digits.CLASSIFICATION:
      labels = targets[:, k].astype(int)
      per_example = cross_entropy(out, labels)
      score = (out.argmax(-1) == labels)[rows].mean()
    else:
      per_example = (out[:, 0] - targets[:, k]) ** 2
      score = np.abs(out[:, 0] - targets[:, k])[rows].mean()
    losses.append(per_example[rows].mean())
    scores.append(score)
  return np.array(losses), np.array(scores)


def test_digits_task_losses_average_each_task_over_its_own_examples(mixed):
  problem, model, params = mixed
  rows = np.arange(6)
  mask = np.zeros((6, 3), bool)
  mask[4, 0] = True                # the digit task holds 1 example of the batch of 6
  mask[[0, 2, 5], 1] = True        # parity holds 3
  mask[[1, 2], 2] = True           # ink holds 2
  train = problem.data.train
  batch = {"images": train.images[rows], "targets": train.targets[rows] * mask,
           "task_mask": mask}
  losses, _ = problem.task_losses(model, params, {}, batch, jax.random.key(0))
  expected, _ = digits_reference(model, params, batch["images"], batch["targets"], mask,
                                 problem.kinds)
  np.testing.assert_allclose(np.asarray(losses), expected, rtol=1e-5)
  # A mean over the whole batch would be 1/6, 3/6 and 2/6 of these: far outside rtol.
  assert not np.allclose(np.asarray(losses), expected * mask.sum(0) / len(rows), rtol=1e-2)


def test_digits_split_metrics_over_a_padded_split_match_brute_force(mixed):
  problem, model, params = mixed
  n = 11  # with batches of 8: one full batch and one padded with 5 empty rows
  val = problem.data.val
  mask = np.ones((n, 3), bool)
  mask[::2, 0] = False             # the tasks hold 5, 7 and 11 of the 11 images
  mask[[0, 3, 6, 9], 1] = False
  small = digits.Split(val.images[:n], val.targets[:n] * mask, mask, val.index[:n])
  problem = DigitsProblem(dataclasses.replace(problem.data, val=small))
  mesh = parallel.data_mesh()
  result = loop.evaluate(problem, step_lib.make_eval_step(problem, model, mesh), params, {},
                         "val", mesh, EVAL_BATCH)
  losses, scores = digits_reference(model, params, small.images, small.targets, mask,
                                    problem.kinds)
  np.testing.assert_allclose(result["loss"], losses, rtol=1e-5)
  np.testing.assert_allclose([result["metrics"][t] for t in problem.task_names], scores,
                             rtol=1e-5)


@pytest.fixture(scope="module")
def cifar():
  """CIFAR-100 as 20 tasks on random images: 2 train examples per fine class, uneven tests."""
  rng = np.random.default_rng(0)
  def split(fine):
    fine = np.asarray(fine)
    images = rng.integers(0, 256, (len(fine), 32, 32, 3), dtype=np.uint8)
    return cifar100.ImageSplit(images, fine, np.arange(len(fine)))
  train = split(np.repeat(np.arange(100), 2))
  val = split(np.arange(100))
  # Fine class f has 1 + f % 3 test examples: the tasks (five classes each) hold different
  # numbers of them, each in one or two evaluation batches, the last one padded.
  test_fine = [f for f in range(100) for _ in range(1 + f % 3)]
  problem = Cifar100Problem(train, val, split(test_fine), augment=False)
  model = create_model("mlp", problem.num_outputs, hidden=(8,))
  params, _ = step_lib.init_variables(model, problem, 0)
  return problem, model, params


def test_cifar100_task_losses_are_each_tasks_mean_over_its_own_batch(cifar):
  problem, model, params = cifar
  batch = problem.train_batch(0, 0, 0, 2)
  losses, _ = problem.task_losses(model, params, {}, batch, jax.random.key(0))
  expected = []
  for k in range(problem.num_tasks):
    logits = model.apply({"params": params}, jnp.asarray(batch["images"][k]), task_id=k,
                         train=False)[k]
    expected.append(cross_entropy(logits, batch["labels"][k]).mean())
  np.testing.assert_allclose(np.asarray(losses), expected, rtol=1e-5)


def test_cifar100_split_metrics_over_padded_per_task_batches_match_brute_force(cifar):
  problem, model, params = cifar
  mesh = parallel.data_mesh()
  result = loop.evaluate(problem, step_lib.make_eval_step(problem, model, mesh), params, {},
                         "test", mesh, EVAL_BATCH)
  arrays = cifar100.eval_arrays(problem.splits["test"].images, problem.splits["test"].fine)
  outputs = model.apply({"params": params}, jnp.asarray(arrays["images"]), train=False)
  losses, accuracies, counts = [], [], []
  for k in range(problem.num_tasks):
    rows = arrays["task"] == k
    logits = np.asarray(outputs[k])[rows]
    labels = arrays["label"][rows]
    losses.append(cross_entropy(logits, labels).mean())
    accuracies.append((logits.argmax(-1) == labels).mean())
    counts.append(rows.sum())
  assert len(set(counts)) > 1  # the tasks' test sizes differ: a per-batch mean would show
  np.testing.assert_allclose(result["loss"], losses, rtol=1e-5)
  np.testing.assert_allclose([result["metrics"][t] for t in problem.task_names], accuracies,
                             rtol=1e-6)
  assert problem.test_counts() == dict(zip(problem.task_names, map(int, counts)))


# --- 4. Epochs into steps ---------------------------------------------------------------------


def changed_at(values):
  """The 1-based step numbers after which a sequence of arrays changed."""
  return [i for i in range(1, len(values))
          if not np.array_equal(np.asarray(values[i]), np.asarray(values[i - 1]))]


def drive(tx, params, steps, grad_fn=None):
  """Applies `tx` for `steps` updates; returns the params and the opt states, initial first."""
  state, update = tx.init(params), jax.jit(tx.update)
  all_params, states = [params], [state]
  for t in range(steps):
    grads = jax.tree.map(jnp.ones_like, params) if grad_fn is None else grad_fn(params, t)
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    all_params.append(params)
    states.append(state)
  return all_params, states


def toy_params():
  rng = np.random.default_rng(0)
  return {"Dense_0": {"kernel": jnp.asarray(rng.normal(size=(10, 10)), jnp.float32),
                      "bias": jnp.zeros((10,), jnp.float32)}}


def test_reweighted_l1_refreshes_at_the_steps_its_epochs_mean(tiny_config):
  config = tiny_config(**{"epochs.reweight": 6, "reweight.refresh_every_epochs": 2,
                          "reweight.refresh_at_epochs": (5,)})
  tx = stages.descent_transform("reweight", app_plan.trainer(config), SPE)
  _, states = drive(tx, toy_params(), 6 * SPE)
  anchors = [optax.tree_utils.tree_get(s, "anchors")["Dense_0"]["kernel"] for s in states]
  # The anchors refresh at the start of update t: every 2 epochs (t = 14, 28) and at the
  # start of epoch 5 (t = 35). States are recorded after update t, i.e. at index t + 1.
  assert changed_at(anchors) == [2 * SPE + 1, 4 * SPE + 1, 5 * SPE + 1]


def test_dynamic_sparse_updates_masks_every_two_epochs_until_end_fraction(tiny_config):
  config = tiny_config(**{"epochs.sparse": 6, "dynamic.update_every_epochs": 2,
                          "dynamic.end_fraction": 0.75, "dynamic.grow": "random",
                          "dynamic.grow_fraction": 0.2, "sparsity": 0.5})
  tx = stages.descent_transform("sparse", app_plan.trainer(config), SPE, seed=0)
  _, states = drive(tx, toy_params(), 6 * SPE)
  masks = [sparsity.find_masks(s)["Dense_0"]["kernel"] for s in states]
  # Updates every 14 steps while the step is before int(0.75 · 42) = 31: steps 14 and 28,
  # not 42.
  assert changed_at(masks) == [2 * SPE, 4 * SPE]


def test_minmax_every_epoch_ascends_once_per_epoch(tiny_config):
  config = tiny_config(**{"minmax.every": "epoch", "minmax.learning_rate": 0.1})
  weighting = stages.make_weighting("minmax", app_plan.trainer(config), SPE)
  task_params, _ = weighting.init(3)
  # A constant gradient that favours task 0: each ascent moves the weights.
  grad = jnp.asarray([1.0, 0.0, -1.0])
  weights, _ = drive(weighting.tx, task_params, 3 * SPE, lambda p, t: grad)
  assert changed_at(weights) == [SPE, 2 * SPE, 3 * SPE]


def learning_rates(tx, steps):
  """The learning rate of each step of a plain SGD `tx`, read off a unit gradient."""
  params = jnp.zeros(())
  state, rates, update = tx.init(params), [], jax.jit(tx.update)
  for _ in range(steps):
    updates, state = update(jnp.ones(()), state, params)
    rates.append(-float(updates))
  return np.array(rates)


def test_step_schedule_decays_at_the_epoch_boundaries(tiny_config):
  config = tiny_config(**{"optimizer.schedule": "step", "optimizer.decay_every_epochs": 2,
                          "optimizer.decay_factor": 0.5, "optimizer.momentum": 0.0,
                          "optimizer.weight_decay": 0.0, "optimizer.learning_rate": 0.1,
                          "epochs.pretrain": 6})
  rates = learning_rates(stages.descent_transform("pretrain", app_plan.trainer(config), SPE),
                         6 * SPE)
  expected = 0.1 * 0.5 ** (np.arange(6 * SPE) // (2 * SPE))
  np.testing.assert_allclose(rates, expected, rtol=1e-6)


def test_cosine_schedule_spans_the_stages_steps(tiny_config):
  config = tiny_config(**{"optimizer.schedule": "cosine", "optimizer.momentum": 0.0,
                          "optimizer.weight_decay": 0.0, "optimizer.learning_rate": 0.1,
                          "epochs.retrain": 3})
  tx = stages.descent_transform("retrain", app_plan.trainer(config), SPE,
                                masks=jnp.ones((), bool))
  rates = learning_rates(tx, 3 * SPE)
  t = np.arange(3 * SPE)
  np.testing.assert_allclose(rates, 0.05 * (1 + np.cos(np.pi * t / (3 * SPE))), rtol=1e-5,
                             atol=1e-7)


# --- 1. Splits: validation selects, test reports ---------------------------------------------


def test_validation_selects_the_epoch_and_test_metrics_are_of_that_model(tmp_path, tiny_config,
                                                                        tiny_experiment):
  logged = []
  config = tiny_config(**{"epochs.pretrain": 4, "optimizer.learning_rate": 0.3,
                          "checkpoint_every_steps": 1000})
  exp = tiny_experiment(tmp_path, config,
                        log=lambda run, stage, epoch, record: logged.append(record))
  result, params, model_state = comparison.run_dense(exp, (0,))[0]
  scores = [r.score for r in logged]
  assert len(scores) == 4
  assert result.selected["epoch"] == int(np.argmin(scores))
  # Independently of the score: the selected epoch has the lowest mean validation loss of
  # those logged (a score of the wrong sign would select the highest, another epoch here).
  mean_val = [np.mean(r.val_loss) for r in logged]
  assert np.argmin(mean_val) != np.argmax(mean_val)
  assert result.selected["epoch"] == int(np.argmin(mean_val))
  fresh = {split: loop.evaluate(exp.problem, exp.eval_step, params, model_state, split,
                                exp.mesh, exp.plan.eval_batch_size)
           for split in ("val", "test")}
  # The selected weights score on a fresh validation pass what the loop logged for them.
  assert loop.selection_score(fresh["val"]) == pytest.approx(min(scores), rel=1e-6)
  assert result.metrics == pytest.approx(fresh["test"]["metrics"], rel=1e-6)
  assert result.val_metrics == pytest.approx(fresh["val"]["metrics"], rel=1e-6)
  # The two splits tell apart: reporting one for the other cannot pass the two lines above.
  assert fresh["val"]["metrics"] != pytest.approx(fresh["test"]["metrics"], rel=1e-3)
  assert loop.selection_score(fresh["test"]) != pytest.approx(min(scores), rel=1e-3)


# --- 2. The task losses reach the weighting, per task ----------------------------------------


def stub_losses(step, spe):
  """The fixed (K=4) losses a stub step reports: different per task, per epoch, per step."""
  epoch, position = divmod(step, spe)
  return np.array([1.0, 2.0, 3.0, 5.0], np.float32) * (1 + epoch) + 0.25 * position


@pytest.mark.parametrize("method", sorted(weighting_lib.WEIGHTINGS))
def test_epoch_records_and_weighting_memory_hold_each_tasks_own_losses(tmp_path, method,
                                                                       tiny_config, digits_data):
  problem = DigitsProblem(digits_data("classify"))
  model = create_model("mlp", problem.num_outputs, hidden=(8,))
  config = tiny_config(**{"minmax.every": "epoch"})
  batch_size, epochs = 256, 3
  spe = problem.steps_per_epoch(batch_size)
  weighting = stages.make_weighting(method, app_plan.trainer(config), spe)
  params, model_state = step_lib.init_variables(model, problem, 0)
  # The stage's real transform (a gradient-level weighting's aggregator state is in it); the
  # stub step below never updates with it.
  tx = stages.stage_transform("pretrain", app_plan.trainer(config), spe, weighting,
                              problem.num_tasks)
  state = step_lib.create_train_state(params, model_state, weighting, tx, problem.num_tasks,
                                      jax.random.key(0))

  def stub_step(states, alive, batches):  # an axis of one run
    del batches
    losses = stub_losses(int(states.step[0]), spe)
    return states.replace(step=states.step + 1), alive, jnp.asarray(losses)[None]

  mesh = parallel.data_mesh()
  ctx = loop.StageContext(
      name="pretrain", index=0, seeds=(0,), epochs=epochs, batch_size=batch_size,
      problem=problem, weighting=weighting, train_step=stub_step,
      eval_step=loop.make_eval_step(problem, model, mesh, single=True), mesh=mesh,
      eval_batch_size=EVAL_BATCH * 16, checkpoint_every=10**6, directory=str(tmp_path))
  final, _, (record,), _ = loop.train_stage(ctx, run_axis.stack([state]))
  final = run_axis.unstack(jax.device_get(final), 0)
  expected = [np.mean([stub_losses(e * spe + j, spe) for j in range(spe)], axis=0)
              for e in range(epochs)]
  np.testing.assert_allclose([r.train_loss for r in record.epochs], expected, rtol=1e-6)
  # The weighting's memory is what its own end_epoch makes of exactly these losses.
  _, memory = weighting.init(problem.num_tasks)
  for losses in expected:
    memory = weighting.end_epoch(memory, jnp.asarray(losses))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                       rtol=1e-6),
               jax.device_get(final.task_state), jax.device_get(memory))
  if method == "dwa":  # its history: the last two epochs' per-task losses, oldest first
    np.testing.assert_allclose(np.asarray(final.task_state.history), expected[-2:], rtol=1e-6)
    ratio = expected[-1] / expected[-2]
    np.testing.assert_allclose(record.epochs[-1].task_weights,
                               np.exp(ratio / 2) / np.exp(ratio / 2).sum(), rtol=1e-5)


# --- 5. Paired comparisons stay attached to their seeds --------------------------------------

PAIRED_TASKS = ("cls", "mae")
PAIRED_HIGHER = {"cls": True, "mae": False}


def paired_fixture(seeds=(3, 5, 8, 13, 21)):
  """Per seed, a dense model and three methods whose worst-task retentions all differ."""
  rng = np.random.default_rng(7)
  per_seed = []
  for seed in seeds:
    dense = {"cls": rng.uniform(0.7, 0.9), "mae": rng.uniform(0.3, 0.5)}
    methods = {m: {"metrics": {"cls": dense["cls"] * rng.uniform(0.6, 1.0),
                               "mae": dense["mae"] / rng.uniform(0.6, 1.0)},
                   "sparsity": 0.975, "compression_ratio": 40.0}
               for m in ("equal", "minmax", "dwa")}
    per_seed.append({"seed": seed, "dense": {"metrics": dense}, "methods": methods})
  return per_seed


def worst_by_hand(per_seed):
  """{method: {seed: worst-task retention}}, oriented by hand."""
  out = {}
  for record in per_seed:
    dense = record["dense"]["metrics"]
    for name, result in record["methods"].items():
      m = result["metrics"]
      worst = min(m["cls"] / dense["cls"], dense["mae"] / m["mae"])
      out.setdefault(name, {})[record["seed"]] = worst
  return out


def build(per_seed):
  return report_lib.build_report(per_seed, tasks=list(PAIRED_TASKS),
                                 higher_is_better=PAIRED_HIGHER,
                                 metric_names={"cls": "accuracy", "mae": "MAE"},
                                 target_sparsity=0.975)


def minmax_minus_equal(report):
  """{seed: min-max − equal worst-task retention} as the report pairs them."""
  pair = report["comparison"]["minmax_minus_equal"]
  return dict(zip(pair["seeds"], pair["differences"]))


def test_paired_differences_are_taken_seed_by_seed():
  per_seed = paired_fixture()
  worst = worst_by_hand(per_seed)
  for name in worst:  # the fixture is what it claims: no two seeds alike, no two methods
    assert len(set(np.round(list(worst[name].values()), 9))) == len(per_seed)
  report = build(per_seed)
  for name, by_seed in worst.items():
    rows = report["methods"][name]["per_seed"]
    assert {r["seed"]: r["worst_task_retention"] for r in rows} == pytest.approx(by_seed)
  expected = {s: worst["minmax"][s] - worst["equal"][s] for s in worst["equal"]}
  assert minmax_minus_equal(report) == pytest.approx(expected)
  means = {m: np.mean(list(v.values())) for m, v in worst.items()}
  best = report["comparison"]["best_worst_task_retention"]
  assert best["method"] == max(means, key=means.get)
  for other, versus in best["versus"].items():
    assert versus["mean"] == pytest.approx(means[best["method"]] - means[other])


@pytest.mark.parametrize("order", [(4, 3, 2, 1, 0), (2, 0, 4, 1, 3)])
def test_permuting_the_seeds_leaves_every_difference_with_its_seed(order):
  per_seed = paired_fixture()
  report = build(per_seed)
  permuted = build([per_seed[i] for i in order])
  assert permuted["seeds"] == [per_seed[i]["seed"] for i in order]
  assert minmax_minus_equal(permuted) == pytest.approx(
      minmax_minus_equal(report))
  for name in ("equal", "minmax", "dwa"):
    assert permuted["methods"][name]["worst_task_retention"] == pytest.approx(
        report["methods"][name]["worst_task_retention"])


# --- 6. A gradient-level weighting sees each task's own gradient -----------------------------


@pytest.mark.parametrize("row", [0, 2])
def test_the_aggregator_receives_each_tasks_own_gradient_inside_the_trainer(
    tiny_config, digits_data, row):
  """A gradient-level weighting whose aggregator keeps task `row`'s gradient alone: one SGD
  step of the trainer (learning rate 1, nothing else) must move the parameters by exactly
  −∇L_row, as `jax.grad` of that task's loss alone computes it. An aggregator fed a mix of
  the rows (their sum, one row K times) moves them otherwise."""
  problem = DigitsProblem(digits_data("classify"))
  model = create_model("mlp", problem.num_outputs, hidden=(8,))
  config = tiny_config(**{"optimizer.learning_rate": 1.0, "optimizer.momentum": 0.0,
                          "optimizer.weight_decay": 0.0, "optimizer.schedule": "constant"})

  pcgrad = stages.make_weighting("pcgrad", app_plan.trainer(config), SPE)

  def keep_row(num_tasks, seed):  # PCGrad's state (the trainer reads its weights there)
    init = pcgrad.aggregate(num_tasks, seed).init
    return optax.GradientTransformation(
        init, lambda updates, state, params=None: (jax.tree.map(lambda g: g[row], updates),
                                                   state))

  w = pcgrad._replace(aggregate=keep_row)
  tx = stages.stage_transform("pretrain", app_plan.trainer(config), SPE, w, problem.num_tasks)
  params, model_state = step_lib.init_variables(model, problem, 0)
  state = step_lib.create_train_state(params, model_state, w, tx, problem.num_tasks,
                                      jax.random.key(0))
  mesh = parallel.data_mesh()
  batch = problem.train_batch(0, 0, 0, 64)
  step = run_axis.make_runs_train_step(problem, model, w, tx, mesh, num_runs=1)
  new, _, _ = step(run_axis.stack([state]), np.ones(1, bool),
                   parallel.place(run_axis.stack([batch]),
                                  run_axis.batch_sharding(mesh, problem.batch_axis, False)))
  moved = jax.tree.map(lambda a, b: np.asarray(a)[0] - np.asarray(b),
                       jax.device_get(new.params), params)
  grad = jax.grad(lambda p: problem.task_losses(model, p, model_state,
                                                jax.tree.map(jnp.asarray, batch),
                                                jax.random.key(0))[0][row])(params)
  jax.tree.map(lambda m, g: np.testing.assert_allclose(m, -np.asarray(g), rtol=1e-4,
                                                       atol=1e-7), moved, grad)
