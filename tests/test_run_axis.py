"""The run axis: the vmapped step of R runs against R runs alone, a run that diverges frozen
while the others go on, variants of a grid that equal their settings run alone, and a grid
killed and rerun."""
import dataclasses
import json
import re

import jax
import numpy as np
import optax
import pytest

from mmcompress import _checks, sparsity, transforms, weighting
from mmcompress.app import comparison, plan as app_plan
from mmcompress.models import create_model
from mmcompress.problems.digits import DigitsProblem
from mmcompress.train import loop, parallel, run_axis, stages, step as step_lib

SEEDS = (0, 1, 2)
STEPS = 6
BATCH = 32
# vmapped matmuls are batched matmuls on the CPU: the same sums in another order, so the
# seeds' numbers agree to float32 rounding, not bitwise.
RTOL, ATOL = 2e-5, 1e-6


def _dynamic_sparse(w, seed):
  """Task-weighted regrowth every 2 steps (the config's unit is an epoch, too long here)."""
  descent = sparsity.dynamic_sparse(
      optax.chain(weighting.sum_tasks(), optax.sgd(0.1, momentum=0.9)), sparsity=0.9,
      update_every=2, grow_fraction=0.05, grow="task_minmax", seed=seed)
  return transforms.saddle_point(descent, w.tx)


def _setup(tiny_config, digits_data, method, sparse):
  plan = app_plan.trainer(tiny_config())
  problem = DigitsProblem(digits_data("classify"))
  model = create_model("mlp", problem.num_outputs, hidden=(16,))
  spe = problem.steps_per_epoch(BATCH)
  w = stages.make_weighting(method, plan, spe)

  def state(seed):
    params, model_state = step_lib.init_variables(model, problem, seed)
    tx = (_dynamic_sparse(w, seed) if sparse else
          stages.stage_transform("pretrain", plan, spe, w, problem.num_tasks, seed=seed))
    return step_lib.create_train_state(params, model_state, w, tx, problem.num_tasks,
                                       jax.random.key(seed)), tx

  return problem, model, w, sparse, state


def _one_seed_runs(problem, model, w, per_task, state, mesh, poison=None):
  out = []
  # One compiled step serves every seed: a transform's seed lives in its state (init).
  train_step = step_lib.make_train_step(problem, model, w, state(SEEDS[0])[1], mesh, per_task)
  for seed in SEEDS:
    s, _ = state(seed)
    for step in range(STEPS):
      if poison == (seed, step):
        break
      batch = problem.train_batch(seed, 0, step, BATCH)
      s, _ = train_step(s, parallel.shard_batch(batch, mesh, problem.batch_axis))
    out.append(jax.device_get(s))
  return out


def _seed_axis_run(problem, model, w, per_task, state, mesh, poison=None):
  states = run_axis.stack([state(seed)[0] for seed in SEEDS])
  tx = state(SEEDS[0])[1]
  seeds_step = run_axis.make_runs_train_step(problem, model, w, tx, mesh, per_task,
                                             num_runs=len(SEEDS))
  alive = np.ones(len(SEEDS), bool)
  sharding = run_axis.batch_sharding(mesh, problem.batch_axis, False)
  for step in range(STEPS):
    batches = run_axis.stacked_batches(problem, SEEDS, 0, step, BATCH)
    if poison and poison[1] == step:
      batches["images"][SEEDS.index(poison[0])] = np.nan
    states, alive, _ = seeds_step(states, alive, jax.device_put(batches, sharding))
  return jax.device_get(states), np.asarray(alive)


@pytest.mark.parametrize("method,sparse", [("minmax", False), ("mgda", False), ("minmax", True)],
                         ids=["minmax-dense", "mgda-dense", "minmax-dst-task_minmax"])
def test_the_run_axis_gives_each_run_what_it_gives_alone(
    tiny_config, digits_data, method, sparse):
  setup = _setup(tiny_config, digits_data, method, sparse)
  mesh = parallel.data_mesh()
  singles = _one_seed_runs(*setup, mesh)
  stacked, alive = _seed_axis_run(*setup, mesh)
  assert alive.all()
  for index, single in enumerate(singles):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL),
                 run_axis.unstack(stacked, index), single)
  # The seeds differ from each other (each its own init, data order and RNG).
  assert not np.allclose(singles[0].params["trunk"]["Dense_0"]["kernel"],
                         singles[1].params["trunk"]["Dense_0"]["kernel"])
  if sparse:  # on the axis too, each run's pruned weights are exactly 0, not merely close
    for index in range(len(singles)):
      run = run_axis.unstack(stacked, index)
      kept = sparsity.full_masks(run.params, sparsity.find_masks(run.opt_state))
      assert not np.asarray(kept["trunk"]["Dense_0"]["kernel"]).all()
      assert all(np.all(np.asarray(p)[~np.asarray(m)] == 0)
                 for p, m in zip(jax.tree.leaves(run.params), jax.tree.leaves(kept)))


def test_a_seed_that_diverges_is_frozen_and_the_others_go_on(tiny_config, digits_data):
  setup = _setup(tiny_config, digits_data, "minmax", False)
  mesh = parallel.data_mesh()
  poison = (1, 3)  # seed 1's batch of step 3 is NaN
  singles = _one_seed_runs(*setup, mesh, poison=poison)  # seed 1 stops before step 3
  stacked, alive = _seed_axis_run(*setup, mesh, poison=poison)
  assert alive.tolist() == [True, False, True]
  assert np.asarray(stacked.step).tolist() == [STEPS, 3, STEPS]  # where seed 1 stopped
  for index, single in enumerate(singles):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL),
                 run_axis.unstack(stacked, index), single)


def test_runs_split_over_devices_only_in_whole_numbers():
  mesh = parallel.data_mesh()
  assert run_axis.can_shard(mesh.devices.size * 2, mesh)
  assert run_axis.can_shard(mesh.devices.size + 1, mesh) == (mesh.devices.size == 1)


class _PoisonedProblem(DigitsProblem):
  """Digits whose training batch of one (seed, step) is NaN: a run that diverges there."""

  def __init__(self, data, poison):
    super().__init__(data)
    self.poison = poison

  def train_batch(self, seed, stage_index, step, batch_size):
    batch = super().train_batch(seed, stage_index, step, batch_size)
    if (seed, step) == self.poison:
      batch = dict(batch, images=np.full_like(batch["images"], np.nan))
    return batch


def _stage_contexts(tmp_path, tiny_config, problem, method="dwa", epochs=3, every=11):
  """A context of one run per seed and one of all the seeds, for the same pretrain stage."""
  config = tiny_config()
  model = create_model("mlp", problem.num_outputs, hidden=(16,))
  mesh = parallel.data_mesh()
  spe = problem.steps_per_epoch(BATCH)
  w = stages.make_weighting(method, app_plan.trainer(config), spe)
  tx = stages.stage_transform("pretrain", app_plan.trainer(config), spe, w,
                              problem.num_tasks)
  common = dict(name="pretrain", index=0, epochs=epochs, batch_size=BATCH, problem=problem,
                weighting=w, mesh=mesh, eval_batch_size=64, checkpoint_every=every)
  singles = {seed: loop.StageContext(
      seeds=(seed,),
      train_step=run_axis.make_runs_train_step(problem, model, w, tx, mesh, num_runs=1),
      eval_step=loop.make_eval_step(problem, model, mesh, single=True),
      directory=str(tmp_path / f"one{seed}"), **common) for seed in SEEDS}
  seeds = loop.StageContext(
      seeds=SEEDS,
      train_step=run_axis.make_runs_train_step(problem, model, w, tx, mesh, num_runs=len(SEEDS)),
      eval_step=loop.make_eval_step(problem, model, mesh),
      directory=str(tmp_path / "seeds"), **common)

  def state(seed):
    params, model_state = step_lib.init_variables(model, problem, seed)
    return step_lib.create_train_state(params, model_state, w, tx, problem.num_tasks,
                                       jax.random.key(seed))
  return singles, seeds, state


def _same_records(a, b):
  assert (a.best_epoch, a.done, len(a.epochs)) == (b.best_epoch, b.done, len(b.epochs))
  for x, y in zip(a.epochs, b.epochs):
    for field in ("train_loss", "val_loss", "val_metric", "task_weights"):
      np.testing.assert_allclose(getattr(x, field), getattr(y, field), rtol=1e-4, atol=1e-6,
                                 err_msg=field)


def _alone(ctx, state):
  """`loop.train_stage` of one run: (final state, best snapshot, record, failures)."""
  final, best, (record,), failures = loop.train_stage(ctx, run_axis.stack([state]))
  return run_axis.unstack(final, 0), run_axis.unstack(best, 0), record, failures


def test_a_stage_of_three_runs_equals_three_stages_of_one_run_and_resumes(
    tmp_path, tiny_config, digits_data):
  problem = DigitsProblem(digits_data("classify"))
  singles, ctx, state = _stage_contexts(tmp_path, tiny_config, problem)
  expected = {seed: _alone(singles[seed], state(seed)) for seed in SEEDS}

  class Stop(Exception):
    pass

  def stop_once(stage, step):
    if step == 22:
      raise Stop
  with pytest.raises(Stop):  # killed after the checkpoint of step 22, then resumed
    loop.train_stage(dataclasses.replace(ctx, on_checkpoint=stop_once),
                     run_axis.stack([state(s) for s in SEEDS]))
  final, best, records, failures = loop.train_stage(ctx, run_axis.stack([state(s) for s in SEEDS]))
  assert failures == {}
  for i, seed in enumerate(SEEDS):
    one_final, one_best, one_record, _ = expected[seed]
    _same_records(records[i], one_record)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
    jax.tree.map(close, run_axis.unstack(best, i), jax.device_get(one_best))
    jax.tree.map(close, jax.device_get(run_axis.unstack(final, i).params),
                 jax.device_get(one_final.params))
  assert records[0].epochs[-1].val_loss != records[1].epochs[-1].val_loss


def test_checkpoints_of_other_runs_or_another_order_are_refused(tmp_path, tiny_config,
                                                                 digits_data):
  problem = DigitsProblem(digits_data("classify"))
  _, ctx, state = _stage_contexts(tmp_path, tiny_config, problem, epochs=1)
  ctx = dataclasses.replace(ctx, run_names=tuple(f"seed{s}/dwa" for s in SEEDS))

  class Stop(Exception):
    pass

  def stop(stage, step):
    raise Stop
  with pytest.raises(Stop):  # cut after its first checkpoint
    loop.train_stage(dataclasses.replace(ctx, on_checkpoint=stop),
                     run_axis.stack([state(s) for s in SEEDS]))
  # The same runs in another order: states of the same shapes, which would restore silently.
  for names in (ctx.run_names[::-1], ctx.run_names[:-1] + ("seed9/dwa",)):
    with pytest.raises(ValueError, match="holds the checkpoints of other runs"):
      loop.train_stage(dataclasses.replace(ctx, run_names=names),
                       run_axis.stack([state(s) for s in SEEDS]))
  _, _, records, failures = loop.train_stage(ctx, run_axis.stack([state(s) for s in SEEDS]))
  assert failures == {} and all(r.done for r in records)


def test_a_run_that_diverges_in_a_stage_stops_as_it_stops_alone(
    tmp_path, tiny_config, digits_data):
  problem = _PoisonedProblem(digits_data("classify"), poison=(1, 40))
  singles, ctx, state = _stage_contexts(tmp_path, tiny_config, problem, method="equal")
  alone = _alone(singles[1], state(1))
  _, _, records, failures = loop.train_stage(ctx, run_axis.stack([state(s) for s in SEEDS]))
  assert failures == {1: alone[3][0]}
  assert "at step 41" in failures[1]
  assert [len(r.epochs) for r in records] == [3, 1, 3]  # run 1 stopped in its second epoch
  _same_records(records[1], alone[2])
  _same_records(records[0], _alone(singles[0], state(0))[2])


def _results(workdir):
  return {str(p.relative_to(workdir)): json.loads(p.read_text())
          for p in sorted(workdir.glob("seed*/*/result.json"))}


# A variant on the axis against the same settings run alone: the same selected epochs and,
# within one test example of the smallest task, the same metrics; the logged task weights to
# 1e-4 (vmapped sums round differently: float32, not bitwise).
ONE_EXAMPLE = 1 / 60  # the smallest task's test split has more than 60 images
# Weight decay 5e-4 at 0.05 × 1e6 multiplies the weights by about -24 a step: a certain
# overflow, whatever the gradient and the clip (which bounds the gradient, not the decay).
DIVERGING = 1e6


def _same_result(together, single, name):
  assert together["selected"] == single["selected"], name
  np.testing.assert_allclose(list(together["metrics"].values()),
                             list(single["metrics"].values()), atol=ONE_EXAMPLE, err_msg=name)
  np.testing.assert_allclose(together["task_weights"], single["task_weights"], rtol=1e-4,
                             atol=1e-6, err_msg=name)
  assert together["sparsity"] == single["sparsity"]


@pytest.fixture(name="grid_run", scope="module")
def fixture_grid_run(tmp_path_factory, tiny_config):
  """Min-max on 2 seeds × a grid of 3 learning-rate scales (one diverging) × 2 clips, on the
  run axis in chunks of at most 5 runs (12 runs: three chunks of 4), beside equal pinned at one
  variant (`equal@lr2-clip1`: 2 runs, in every variant's report under the name equal)."""
  config = tiny_config(seeds=(0, 1), methods=("minmax", "equal@lr2-clip1"), chunk_runs=5,
                       **{"grid.learning_rate_scale": (0.5, 2.0, DIVERGING),
                          "grid.clip_norm": (0.0, 1.0)})
  workdir = tmp_path_factory.mktemp("grid")
  return workdir, comparison.run(config, str(workdir), print_report=False)


@pytest.mark.slow
@pytest.mark.parametrize("seed, scale, clip", [(1, 2.0, 1.0), (0, 0.5, 0.0)])
def test_a_variant_on_the_axis_gives_what_its_settings_give_alone(grid_run, tmp_path,
                                                                 tiny_config, seed, scale, clip):
  workdir, _ = grid_run
  variant = f"lr{scale:g}-clip{clip:g}"
  pinned = variant == "lr2-clip1"  # the pinned equal's variant: compare it too
  alone = tiny_config(seeds=(seed,), methods=("minmax", "equal") if pinned else ("minmax",),
                      **{"grid.learning_rate_scale": (scale,), "grid.clip_norm": (clip,)})
  comparison.run(alone, str(tmp_path), print_report=False)
  for method, name in [("minmax", f"minmax@{variant}")] + (
      [("equal", "equal@lr2-clip1")] if pinned else []):
    single = json.loads((tmp_path / f"seed{seed}" / method / "result.json").read_text())
    together = json.loads((workdir / f"seed{seed}" / name / "result.json").read_text())
    _same_result(together, single, name)
    assert together["variant"] == single["variant"] == {
        "name": variant, "learning_rate_scale": scale, "clip_norm": clip,
        "learning_rate": pytest.approx(alone.optimizer.learning_rate * scale)}


@pytest.mark.slow
def test_a_diverging_variant_is_frozen_while_its_neighbours_finish(grid_run):
  workdir, report = grid_run
  reports = report["variants"]
  assert sorted(reports) == sorted(f"lr{s:g}-clip{c:g}" for s in (0.5, 2.0, DIVERGING)
                                   for c in (0.0, 1.0))
  for name, variant_report in reports.items():
    diverged = name.startswith(f"lr{DIVERGING:g}")
    for seed in (0, 1):
      run = workdir / f"seed{seed}" / f"minmax@{name}"
      assert (run / "diverged.json").exists() == diverged, (name, seed)
      assert (run / "result.json").exists() != diverged, (name, seed)
    assert [d["seed"] for d in variant_report["diverged"]] == ([0, 1] if diverged else [])
    if diverged:
      messages = [d["runs"]["minmax"] for d in variant_report["diverged"]]
      assert all(re.match(r"stage '(reweight|retrain)': the (loss of task|parameters)", m)
                 for m in messages), messages
  # The variants differ: scale and clip both change the trajectory.
  weights = {name: reports[name]["methods"]["minmax"]["task_weights"]
             for name in ("lr0.5-clip0", "lr2-clip0", "lr2-clip1")}
  assert weights["lr0.5-clip0"] != weights["lr2-clip0"] != weights["lr2-clip1"]
  index = (workdir / "report.md").read_text()
  assert all(f"# Variant {name} (files in variants/{name}/)" in index for name in reports)
  # The pinned equal is in every variant's report, as "equal", with the same numbers.
  equal = [r["methods"]["equal"]["per_seed"] for r in reports.values()]
  assert all(e == equal[0] for e in equal) and len(equal[0]) == 2
  assert all(r["pinned"]["equal@lr2-clip1"]["learning_rate_scale"] == 2.0
             for r in reports.values())
  assert all("minmax_minus_equal" in r["comparison"] for r in reports.values()
             if not r["diverged"])


class _PoisonedStage(DigitsProblem):
  """Digits whose training batches of one seed in one stage are NaN from one step on."""

  def __init__(self, data, seed, stage_index, step):
    super().__init__(data)
    self.poison = (seed, stage_index, step)

  def train_batch(self, seed, stage_index, step, batch_size):
    batch = super().train_batch(seed, stage_index, step, batch_size)
    if (seed, stage_index) == self.poison[:2] and step >= self.poison[2]:
      batch = dict(batch, images=np.full_like(batch["images"], np.nan))
    return batch


@pytest.mark.slow
def test_a_seed_that_diverges_on_the_run_axis_loses_and_the_others_finish(
    tmp_path, tiny_config, digits_data):
  # No reweighting stage: the divergence is in retrain, and a stage less is a compilation less.
  config = tiny_config(seeds=(0, 1, 2), stages=("pretrain", "prune", "retrain"))
  report = comparison.run(
      config, str(tmp_path), print_report=False,
      problem=lambda c: _PoisonedStage(digits_data("classify"), seed=1, stage_index=2, step=5))
  assert [d["seed"] for d in report["diverged"]] == [1]
  runs = report["diverged"][0]["runs"]
  assert set(runs) == set(config.methods)
  assert all("stage 'retrain'" in message and "at step 6" in message for message in runs.values())
  results = _results(tmp_path)
  assert {name.split("/")[0] for name in results} == {"seed0", "seed1", "seed2"}
  assert "seed1/equal/result.json" not in results and "seed1/dense/result.json" in results
  assert (tmp_path / "seed1" / "equal" / "diverged.json").exists()
  # A rerun reads what the first wrote: the same report, nothing trained again.
  again = comparison.run(config, str(tmp_path), print_report=False,
                         problem=lambda c: _PoisonedStage(digits_data("classify"), 1, 2, 5))
  assert again["diverged"] == report["diverged"]
  assert again["methods"] == report["methods"]


def test_runs_whose_masks_differ_in_which_layers_are_whole_still_stack(tmp_path, tiny_config,
                                                                       tiny_experiment):
  """A prune that keeps one seed's layer whole (global scope, filters, a low sparsity) leaves
  an all-True mask there, which a retrain state may store as None (drop_dense); on the run axis
  every mask is kept, so the seeds' states share one tree."""
  exp = tiny_experiment(tmp_path, tiny_config(seeds=(0, 1)))
  w = stages.make_weighting("minmax", exp.plan.trainer, exp.steps_per_epoch)
  params, model_state = step_lib.init_variables(exp.model, exp.problem, 0)
  pruned = sparsity.magnitude_masks(params, 0.9)
  whole = jax.tree.map(lambda m: np.ones(m.shape, bool), pruned)

  def states(every_mask):
    return [comparison._initial_state(  # pylint: disable=protected-access
        exp, w, "retrain", 3, comparison.Point(seed, exp.variants[0]), params, model_state,
        masks, every_mask)[1]
        for seed, masks in ((0, pruned), (1, whole))]
  loose = states(False)
  held = [sparsity.find_masks(s.opt_state)["trunk"]["Dense_0"]["kernel"] for s in loose]
  assert held[0] is not None and held[1] is None  # the whole layer's mask dropped
  # ... so the trees do not stack: the first tree's array meets the second's None, which
  # NumPy takes for a 0-d array.
  with pytest.raises(ValueError, match="same shape"):
    run_axis.stack(loose)
  stacked = run_axis.stack(states(True))
  kept = sparsity.find_masks(stacked.opt_state)["trunk"]["Dense_0"]["kernel"]
  assert kept.shape[0] == 2 and kept[1].all() and not kept[0].all()
