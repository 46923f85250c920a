"""The trainer: data parallelism, checkpoints and resumption, and its refusals."""
import importlib
import json
import logging
import os
import pathlib
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmcompress import errors, sparsity
from mmcompress.app import comparison, plan as app_plan
from mmcompress.problems.digits import data as digits
from mmcompress.problems.digits import DigitsProblem
from mmcompress.train import checkpoint, loop, run_axis, step as step_lib, variants
from mmcompress.train import plan as plan_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


# A checkpoint every 7 steps, for the tests that cut a stage between its checkpoints (the tiny
# config saves only at the end of each stage).
CUT_EVERY = 7
PROBES = {"one": (1, 64), "eight": (8, 64), "eight_refused": (8, 60)}


@pytest.fixture(name="probes", scope="module")
def fixture_probes(start_python):
  """tests/multidevice_probe.py run as (devices, batch size) in each of `PROBES`, side by side."""
  waits = {name: start_python(
      ROOT / "tests" / "multidevice_probe.py", batch_size, cwd=ROOT,
      env={"XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} "
                        f"--xla_force_host_platform_device_count={devices}".strip()})
           for name, (devices, batch_size) in PROBES.items()}
  return {name: wait() for name, wait in waits.items()}


@pytest.mark.slow
def test_one_and_eight_devices_give_the_same_losses_and_task_weights(probes):
  one, eight = probes["one"], probes["eight"]
  assert one.returncode == 0, one.stderr[-2000:]
  assert eight.returncode == 0, eight.stderr[-2000:]
  one, eight = json.loads(one.stdout.splitlines()[-1]), json.loads(eight.stdout.splitlines()[-1])
  assert (one["devices"], eight["devices"]) == (1, 8)
  assert "data" in eight["batch_sharding"]
  np.testing.assert_allclose(eight["losses"], one["losses"], rtol=2e-5)
  np.testing.assert_allclose(eight["task_weights"], one["task_weights"], rtol=2e-5)
  assert not np.allclose(one["task_weights"], 0.25)  # the ascent did move them
  np.testing.assert_allclose(eight["kernel_sum"], one["kernel_sum"], rtol=2e-5)
  assert eight["kernel_zeros"] == one["kernel_zeros"] > 0
  # A gradient-level method: per-task gradients of the sharded batch, a Newton solve.
  np.testing.assert_allclose(eight["nash_mtl"]["losses"], one["nash_mtl"]["losses"], rtol=1e-4)
  np.testing.assert_allclose(eight["nash_mtl"]["task_weights"], one["nash_mtl"]["task_weights"],
                             rtol=1e-3)
  assert one["nash_mtl"]["losses"][-1] != one["nash_mtl"]["losses"][0]
  # Eight seeds on the seed axis: each seed's batch split over the devices, or the seeds split
  # over them (one whole seed a device), give what one device gives.
  reference = one["seed_axis"]["batch_split"]
  for mode in ("batch_split", "seed_sharded"):
    np.testing.assert_allclose(eight["seed_axis"][mode], reference, rtol=2e-5, err_msg=mode)
    np.testing.assert_allclose(one["seed_axis"][mode], reference, rtol=2e-5, err_msg=mode)
  assert np.ptp(np.asarray(reference)[-1], axis=0).min() > 0  # the seeds differ


@pytest.mark.slow
def test_batch_size_not_divisible_by_device_count_is_refused(probes):
  result = probes["eight_refused"]
  assert result.returncode != 0
  assert "batch_size=60 is not divisible by the 8 devices" in result.stderr


class Interrupt(Exception):
  pass


def interrupt_at(stage, step):
  """An `on_checkpoint` that stops the run right after `stage` saved its checkpoint `step`."""

  def on_checkpoint(saved_stage, saved_step):
    if (saved_stage, saved_step) == (stage, step):
      raise Interrupt(f"interrupted after checkpoint {stage}/{step}")
  return on_checkpoint


def one_run(exp, method, dense=None):
  """`method`'s one outcome on seed 0 (one variant), from the run axis of length 1."""
  (outcome,) = comparison.run_method(exp, method, (0,), dense).values()
  return outcome


def leaves_equal(a, b):
  return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b)))


@pytest.fixture(name="dense_run", scope="module")
def fixture_dense_run(tmp_path_factory, tiny_config, tiny_experiment):
  """The tiny dense reference of seed 0, trained once with a checkpoint every `CUT_EVERY`
  steps (several to damage, one to fall back on): (workdir, result); copy it to change it."""
  workdir = tmp_path_factory.mktemp("dense")
  config = tiny_config(checkpoint_every_steps=CUT_EVERY)
  return workdir, comparison.run_dense(tiny_experiment(workdir, config), (0,))[0][0]


@pytest.mark.slow
def test_a_run_interrupted_at_checkpoints_resumes_to_the_same_result(tmp_path, tiny_config,
                                                                     tiny_experiment):
  # The run never cut saves only where its stages end, so this also shows that how often a
  # run saves does not change its result.
  whole = one_run(tiny_experiment(tmp_path / "whole"), "minmax")
  # Checkpoints every 7 steps: pretrain saves at 7, 14, 21, 28, 32, reweight at 7, 14, 16,
  # retrain at 7, 14, ... One run is cut in every stage (at its 1st, 7th and 10th checkpoint):
  # each time a fresh experiment resumes it, up to the next cut, and the last one finishes it.
  config = tiny_config(checkpoint_every_steps=CUT_EVERY)
  workdir = tmp_path / "cut"
  for stage, step in (("pretrain", 7), ("reweight", 14), ("retrain", 14)):
    with pytest.raises(Interrupt, match=f"after checkpoint {stage}/{step}$"):
      one_run(tiny_experiment(workdir, config, on_checkpoint=interrupt_at(stage, step)),
              "minmax")
    assert not (workdir / "seed0" / "minmax" / "result.json").exists()
  resumed = one_run(tiny_experiment(workdir, config), "minmax")
  assert resumed == whole
  assert whole.sparsity == pytest.approx(0.975, abs=1e-3)
  assert whole.export["round_trip_exact"]


@pytest.mark.slow
def test_a_rerun_after_a_kill_writes_byte_identical_reports_and_exports(tmp_path, tiny_config):
  config = tiny_config(**{"epochs.retrain": 1})
  whole = tmp_path / "whole"
  comparison.run(config, str(whole), print_report=False)
  # A kill after the runs were recorded but before the report was written, and one run killed
  # after its last checkpoint but before its result: the rerun reads the others back from
  # their files, finishes that one from its checkpoint, and writes the report again.
  cut = tmp_path / "cut"
  shutil.copytree(whole, cut)
  for name in ("report.json", "report.md", "seed0/minmax/result.json",
               "models/seed0_minmax.npz"):
    (cut / name).unlink()
  comparison.run(config, str(cut), print_report=False)
  for name in ("report.json", "report.md", "models/seed0_minmax.npz",
               "models/seed0_equal.npz", "seed0/minmax/result.json"):
    assert (cut / name).read_bytes() == (whole / name).read_bytes(), name


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, dense_run,
                                                                    tiny_config, tiny_experiment):
  trained, fresh = dense_run
  shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
  config = tiny_config(checkpoint_every_steps=CUT_EVERY)
  exp = tiny_experiment(tmp_path, config)
  stage_dir = tmp_path / "axis" / "dense" / "pretrain"
  steps = sorted(int(p.name) for p in stage_dir.iterdir() if p.name.isdigit())
  assert len(steps) >= 2
  for f in (stage_dir / str(steps[-1]) / "state").rglob("*"):
    if f.is_file() and f.stat().st_size > 0 and "ocdbt" in str(f):
      f.write_bytes(b"\0" * 7)
  params, _ = step_lib.init_variables(exp.model, exp.problem, 0)
  weighting = comparison.stages_lib.make_weighting("equal", exp.plan.trainer, exp.steps_per_epoch)
  tx = comparison.stages_lib.stage_transform("pretrain", exp.plan.trainer, exp.steps_per_epoch,
                                             weighting, 4)
  state = step_lib.create_train_state(params, {}, weighting, tx, 4, jax.random.key(0))
  like = loop.abstract_carry(run_axis.stack([state]), 4, run_axis.state_sharding(exp.mesh, False))
  ckpts = checkpoint.StageCheckpoints(str(stage_dir))
  with caplog.at_level(logging.WARNING):
    restored = ckpts.restore_latest(like)
  ckpts.close()
  assert restored is not None
  carry, record = restored
  assert int(carry["state"].step[0]) == steps[-2]
  (run_record,) = record["runs"]
  assert loop.StageRecord.from_json(run_record).to_json() == run_record  # the checkpoint's JSON
  assert f"checkpoint {steps[-1]}" in caplog.text and "unreadable" in caplog.text
  assert (stage_dir / f"{steps[-1]}.unreadable").is_dir()  # kept, out of the way
  # The stage is resumed from the older step and finishes, saving its last step again: the
  # same result as the run that was never damaged.
  (tmp_path / "seed0" / "dense" / "result.json").unlink()
  result = comparison.run_dense(tiny_experiment(tmp_path, config), (0,))[0][0]
  assert result == fresh


def test_non_finite_loss_stops_the_run_naming_step_and_task(tmp_path, tiny_config, digits_data,
                                                            tiny_experiment):
  config = tiny_config(checkpoint_every_steps=1)
  data = digits_data(config.task_sets[0], config.data_seed)
  # Poison one training image that the third step draws first (the batch order is a pure
  # function of the step: mark each image with its index to read it back).
  indexed = data.train._replace(images=np.arange(data.train.num_examples, dtype=np.float32)
                                .reshape(-1, 1, 1, 1) * np.ones((1, 8, 8, 1), np.float32))
  probe_problem = DigitsProblem(digits.MultiTaskData(
      data.task_set, data.task_names, data.task_kinds, data.num_outputs, indexed, data.val,
      data.test))
  drawn = [set(probe_problem.train_batch(0, 0, s, config.batch_size)["images"][:, 0, 0, 0]
               .astype(int)) for s in range(3)]
  poisoned = next(i for i in sorted(drawn[2]) if i not in drawn[0] | drawn[1])
  first = 2
  images = data.train.images.copy()
  images[poisoned] = np.nan
  bad = data.train._replace(images=images)
  data = digits.MultiTaskData(data.task_set, data.task_names, data.task_kinds, data.num_outputs,
                              bad, data.val, data.test)
  task = data.task_names[int(np.argmax(bad.task_mask[poisoned]))]
  exp = tiny_experiment(tmp_path, config, data)
  outcome = comparison.run_dense(exp, (0,))[0]
  assert isinstance(outcome, comparison.records.Diverged)
  assert re.search(f"task '{task}'.*at step {first + 1}", outcome.message), outcome.message
  assert (tmp_path / "seed0" / "dense" / "diverged.json").exists()
  # The run stopped where it diverged: its state is frozen at the last good step.
  stage_dir = tmp_path / "axis" / "dense" / "pretrain"
  saved = sorted(int(p.name) for p in stage_dir.iterdir() if p.name.isdigit())
  assert saved[-1] == first + 1
  ckpts = checkpoint.StageCheckpoints(str(stage_dir))
  params, _ = step_lib.init_variables(exp.model, exp.problem, 0)
  weighting = comparison.stages_lib.make_weighting("equal", exp.plan.trainer, exp.steps_per_epoch)
  tx = comparison.stages_lib.stage_transform("pretrain", exp.plan.trainer, exp.steps_per_epoch,
                                             weighting, 4)
  state = step_lib.create_train_state(params, {}, weighting, tx, 4, jax.random.key(0))
  carry, record = ckpts.restore_latest(loop.abstract_carry(
      run_axis.stack([state]), 4, run_axis.state_sharding(exp.mesh, False)))
  ckpts.close()
  assert int(carry["state"].step[0]) == first and not bool(carry["alive"][0])
  assert jax.tree.reduce(lambda a, b: a and b, jax.tree.map(
      lambda x: bool(np.isfinite(x).all()), carry["state"].params))
  assert record["failures"] == {"0": outcome.message}


@pytest.mark.parametrize("overrides, match", [
    ({"methods": ("equal", "gradnorm")}, "config.methods"),
    ({"structure": "blocks"}, "structure must be"),
    ({"structure": "4:2"}, "not a valid n:m pattern"),
    ({"stages": ("pretrain", "prune")}, "'prune' must be followed by 'retrain'"),
    ({"stages": ("sparse",), "dynamic.end_fraction": 0.0}, "dynamic.end_fraction"),
    ({"stages": ("sparse",), "dynamic.grow": "magic"}, "grow"),
    ({"task_scales": (1.0, -1.0, 1.0, 1.0)}, "task_scales"),
    ({"reweight.penalty": -1.0}, "penalty"),
    ({"optimizer.clip_norm": -1.0}, "optimizer.clip_norm"),
    ({"optimizer.compress_clip_norm": -1.0}, "optimizer.compress_clip_norm"),
    ({"stages": ("pretrain", "finetune")}, "stage"),
    ({"stages": ("pretrain", "retrain")}, r"'retrain' must follow \['prune', 'gradual'\]"),
    ({"stages": ("reweight", "prune", "retrain")}, "'reweight' must follow"),
    ({"sparsity": 1.0}, "config.sparsity"),
    ({"sparsity": -0.5}, "config.sparsity"),
    ({"minmax.gamma": -1.0}, "gamma"),
    ({"minmax.every": "hour"}, "minmax.every"),
    ({"optimizer.name": "lion"}, "optimizer.name"),
    ({"seeds": ()}, "config.seeds"),
    ({"grid.learning_rate_scale": (1.0, 0.0)}, "config.grid.learning_rate_scale"),
    ({"grid.clip_norm": (-1.0,)}, "config.grid.clip_norm"),
    ({"grid.clip_norm": (1.0, 1.0)}, "names a variant twice"),
    ({"chunk_runs": -1}, "config.chunk_runs"),
    ({"methods": ("equal@lr2",)}, "'lr2' is not a variant"),
    ({"methods": ("equal@lr0-clip1",)}, "learning-rate scale"),
    ({"methods": ("equal", "equal")}, "names a method twice"),
    ({"methods": ("gradnorm@lr1-clip0",)}, "config.methods"),
])
def test_bad_configs_fail_before_any_compute(overrides, match, tiny_config):
  with pytest.raises(ValueError, match=match):
    comparison.validate(tiny_config(**overrides))


@pytest.mark.parametrize("module, presets", [
    ("cifar100", ("", "40x", "60x", "100x", "smoke")),
    ("nyuv2", ("", "40x", "60x", "dst60x", "dst100x", "smoke")),
    ("digits", ("", "quick", "study", "criteria")),
])
def test_every_shipped_config_validates(module, presets):
  import importlib  # pylint: disable=import-outside-toplevel
  configs = importlib.import_module(f"experiments.configs.{module}")
  for preset in presets:
    comparison.validate(configs.get_config(preset))


@pytest.mark.slow
def test_sparse_training_with_an_ascent_per_epoch_runs_end_to_end(tmp_path, tiny_config,
                                                                  tiny_experiment):
  config = tiny_config(**{"stages": ("sparse",), "methods": ("minmax",), "epochs.sparse": 3,
                          "minmax.every": "epoch", "dynamic.update_every_epochs": 1,
                          "dynamic.grow_fraction": 0.01, "sparsity": 0.9})
  exp = tiny_experiment(tmp_path, config)
  result = one_run(exp, "minmax")
  assert result.sparsity == pytest.approx(0.9, abs=1e-3)
  assert result.export["round_trip_exact"]
  trajectory = np.asarray(result.task_weights)  # one entry per epoch
  assert trajectory.shape == (3, 4) and np.allclose(trajectory.sum(1), 1.0, atol=1e-5)
  assert not np.allclose(trajectory[-1], 0.25)  # the once-per-epoch ascent moved them


def test_a_workdir_with_another_config_is_refused(tmp_path, tiny_config):
  comparison.check_workdir(tiny_config(), str(tmp_path))
  comparison.check_workdir(tiny_config(), str(tmp_path))  # the same config resumes
  # So does one that only checkpoints more or less often.
  comparison.check_workdir(tiny_config(checkpoint_every_steps=1000), str(tmp_path))
  with pytest.raises(ValueError, match=r"different config \(sparsity: 0.975 there, 0.99 now"):
    comparison.check_workdir(tiny_config(sparsity=0.99), str(tmp_path))
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["sparsity"] == 0.975  # never overwritten


def test_a_workdir_recorded_before_a_weighting_was_added_still_resumes(tmp_path, tiny_config):
  comparison.check_workdir(tiny_config(), str(tmp_path))
  path = tmp_path / "config.json"
  saved = json.loads(path.read_text())
  del saved["famo"], saved["db_mtl"]  # as written before those weightings existed
  path.write_text(json.dumps(saved))
  comparison.check_workdir(tiny_config(), str(tmp_path))  # resumes
  with pytest.raises(ValueError, match="different config"):  # other missing keys still differ
    del saved["sparsity"]
    path.write_text(json.dumps(saved))
    comparison.check_workdir(tiny_config(), str(tmp_path))


def test_a_workdir_recorded_before_the_run_axis_resumes_on_it(tmp_path, tiny_config):
  comparison.check_workdir(tiny_config(), str(tmp_path))
  path = tmp_path / "config.json"
  saved = json.loads(path.read_text())
  # As written before the run axis: the one-seed switches, no chunks, no grid.
  del saved["chunk_runs"], saved["runs_sharded"], saved["grid"]
  saved["seed_axis"], saved["seed_sharded"] = True, False
  path.write_text(json.dumps(saved))
  comparison.check_workdir(tiny_config(), str(tmp_path))  # resumes
  with pytest.raises(ValueError, match="different config"):  # those runs had no grid
    comparison.check_workdir(tiny_config(**{"grid.learning_rate_scale": (0.5, 1.0)}),
                             str(tmp_path))


def test_a_workdir_recorded_before_the_compression_clip_still_resumes(tmp_path, tiny_config):
  comparison.check_workdir(tiny_config(), str(tmp_path))
  path = tmp_path / "config.json"
  saved = json.loads(path.read_text())
  del saved["optimizer"]["compress_clip_norm"]  # as written before the field existed
  path.write_text(json.dumps(saved))
  comparison.check_workdir(tiny_config(), str(tmp_path))  # resumes with the clip off
  with pytest.raises(ValueError, match="different config"):  # not with the clip on
    comparison.check_workdir(tiny_config(**{"optimizer.compress_clip_norm": 1.0}),
                             str(tmp_path))
  del saved["optimizer"]  # a missing section is still a difference
  path.write_text(json.dumps(saved))
  with pytest.raises(ValueError, match="different config"):
    comparison.check_workdir(tiny_config(), str(tmp_path))


@pytest.mark.slow
def test_a_diverged_run_counts_as_a_loss_and_keeps_its_seed(tmp_path, monkeypatch, tiny_config):
  # No reweighting stage: what a divergence leaves in the report does not depend on it.
  # (A real divergence on the run axis: tests/test_run_axis.py.)
  config = tiny_config(seeds=(0, 1), stages=("pretrain", "prune", "retrain"))
  real = comparison.run_method
  message = "stage 'retrain': the loss of task 'g1_1_5_8_9' is nan at step 3"

  def diverge_on_seed_1(exp, method, seeds, dense):
    out = real(exp, method, seeds, dense)
    if method == "minmax":
      point = comparison.Point(1, exp.variants[0])
      out[point] = comparison._diverged(  # pylint: disable=protected-access
          exp, exp.run_name(1, method, point.variant), message)
    return out

  monkeypatch.setattr(comparison, "run_method", diverge_on_seed_1)
  report = comparison.run(config, str(tmp_path), print_report=False)
  assert report["seeds"] == [0, 1] and report["dropped_seeds"] == []
  assert report["diverged"] == [{"seed": 1, "runs": {"minmax": message}}]
  minmax, equal = report["methods"]["minmax"], report["methods"]["equal"]
  assert minmax["diverged"] == [{"seed": 1, "message": message}]
  assert [r["seed"] for r in minmax["per_seed"]] == [0]
  assert [r["seed"] for r in equal["per_seed"]] == [0, 1]
  pair = report["comparison"]["minmax_minus_equal"]
  assert pair["differences"][1] == pytest.approx(
      -equal["per_seed"][1]["worst_task_retention"])
  assert pair["worse"] >= 1 and pair["diverged"] == {"minmax": [1], "equal": []}
  markdown = (tmp_path / "report.md").read_text()
  assert "**Diverged: seed 1, minmax**" in markdown
  assert "| minmax (diverged on 1 of 2) |" in markdown
  assert "minmax diverged on seed 1, counted as worst-task retention 0" in markdown
  assert (tmp_path / "seed1" / "minmax" / "diverged.json").exists()
  monkeypatch.setattr(comparison, "run_method", real)  # a rerun reports the same, from disk
  assert comparison.run(config, str(tmp_path), print_report=False) == report


@pytest.mark.slow
def test_a_diverged_dense_reference_leaves_its_seed_out(tmp_path, monkeypatch, tiny_config):
  config = tiny_config(seeds=(0, 1), methods=("equal",), stages=("pretrain", "prune", "retrain"))
  real = comparison.run_dense
  message = "stage 'pretrain': the loss of task 'g0_0_6' is nan at step 2"

  def diverge_on_seed_0(exp, seeds):
    out = real(exp, seeds)
    out[0] = comparison._diverged(exp, "seed0/dense", message)  # pylint: disable=protected-access
    return out

  monkeypatch.setattr(comparison, "run_dense", diverge_on_seed_0)
  report = comparison.run(config, str(tmp_path), print_report=False)
  assert report["seeds"] == [1]
  assert report["diverged"] == [{"seed": 0, "runs": {"dense": message}}]
  assert report["dropped_seeds"] == [
      {"seed": 0, "reason": f"its dense reference diverged ({message})"}]
  assert "Seed 0 left out for every method" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
def test_compression_starts_from_the_dense_reference_it_reports(tmp_path, monkeypatch,
                                                               tiny_experiment):
  # Every stage selects its first epoch, so that the selected pretrain weights are not the
  # final ones and handing on the final weights would fail this test.
  scores = iter(range(1000))
  monkeypatch.setattr(loop, "selection_score", lambda val: float(next(scores)))
  real_train = comparison._train_axis  # pylint: disable=protected-access
  seen = {}

  def recording_train(exp, label, method, stage, index, points, names, starts, masks):
    out = real_train(exp, label, method, stage, index, points, names, starts, masks)
    (point,) = points
    seen.setdefault((label, stage), (*starts[point], out[0][point]))
    return out

  monkeypatch.setattr(comparison, "_train_axis", recording_train)
  exp = tiny_experiment(tmp_path)
  dense, params, model_state = comparison.run_dense(exp, (0,))[0]
  one_run(exp, "minmax", {0: (params, model_state)})   # shared pretraining
  one_run(exp, "equal")                                # its own pretraining
  final = seen[("dense", "pretrain")][2]
  assert not leaves_equal(final.params, params)  # the selected epoch is not the last
  for label in ("minmax", "equal"):
    start, start_state, _ = seen[(label, exp.plan.stages[1])]
    fresh = loop.evaluate(exp.problem, exp.eval_step, start, start_state, "test", exp.mesh,
                          exp.plan.eval_batch_size)
    assert fresh["metrics"] == dense.metrics, label


def test_no_readable_checkpoint_is_an_error_not_a_silent_restart(tmp_path, dense_run,
                                                                 tiny_experiment):
  shutil.copytree(dense_run[0], tmp_path, dirs_exist_ok=True)
  stage_dir = tmp_path / "axis" / "dense" / "pretrain"
  for f in stage_dir.rglob("manifest.ocdbt"):
    f.write_bytes(b"\0" * 7)
  (tmp_path / "seed0" / "dense" / "result.json").unlink()
  with pytest.raises(ValueError, match="no checkpoint in .* can be read"):
    comparison.run_dense(tiny_experiment(tmp_path), (0,))
  assert any(p.name.isdigit() for p in stage_dir.iterdir())  # nothing was moved or deleted


def test_gradient_clipping_bounds_the_first_step(tiny_config):
  config = tiny_config(**{"optimizer.clip_norm": 0.5, "optimizer.weight_decay": 0.0,
                          "optimizer.momentum": 0.0, "optimizer.schedule": "constant",
                          "optimizer.learning_rate": 1.0})
  tx = comparison.stages_lib.base_optimizer(app_plan.trainer(config).optimizer, 10)
  grads = {"w": np.full((4,), 10.0, np.float32)}
  updates, _ = tx.update(grads, tx.init(grads))
  np.testing.assert_allclose(np.linalg.norm(updates["w"]), 0.5, rtol=1e-6)


@pytest.mark.parametrize("stage, norm", [("pretrain", 2.0), ("reweight", 0.5),
                                         ("retrain", 0.5)])
def test_the_compression_clip_replaces_the_clip_after_pretraining(tiny_config, stage, norm):
  config = tiny_config(**{"optimizer.clip_norm": 2.0, "optimizer.compress_clip_norm": 0.5,
                          "optimizer.weight_decay": 0.0, "optimizer.momentum": 0.0,
                          "optimizer.schedule": "constant", "optimizer.learning_rate": 1.0,
                          "reweight.penalty": 0.0})
  tx = comparison.stages_lib.descent_transform(stage, app_plan.trainer(config), 10,
                                               masks={"w": np.ones((4,), bool)})
  grads = {"w": np.full((4,), 10.0, np.float32)}
  updates, _ = tx.update(grads, tx.init(grads), grads)
  np.testing.assert_allclose(np.linalg.norm(updates["w"]), norm, rtol=1e-6)


@pytest.mark.parametrize("scale, clip, norm", [(1.0, 0.0, 20.0), (2.0, 0.0, 40.0),
                                               (0.5, 1.0, 0.5), (4.0, 0.5, 2.0)])
def test_a_variant_scales_the_learning_rate_and_clips_from_its_state(tiny_config, scale, clip,
                                                                     norm):
  """One compiled update serves every variant: the scale and the clip (0 = none) are values
  of the state, and the update's norm is lr · scale · min(|g|, clip)."""
  config = tiny_config(**{"optimizer.weight_decay": 0.0, "optimizer.momentum": 0.0,
                          "optimizer.schedule": "constant", "optimizer.learning_rate": 1.0})
  grads = {"w": np.full((4,), 10.0, np.float32)}  # |g| = 20
  reference = comparison.stages_lib.base_optimizer(app_plan.trainer(config).optimizer, 10,
                                                   variant=variants.Variant(1.0, 0.0))
  tx = comparison.stages_lib.base_optimizer(app_plan.trainer(config).optimizer, 10,
                                            variant=variants.Variant(scale, clip))
  update = jax.jit(reference.update)  # the reference's program, this variant's state
  updates, _ = update(grads, tx.init(grads))
  np.testing.assert_allclose(np.linalg.norm(updates["w"]), norm, rtol=1e-6)
  assert update._cache_size() == 1  # pylint: disable=protected-access


@pytest.mark.parametrize("name", ["digits", "digits:quick", "digits:study", "study",
                                  "study:quick", "cifar100", "cifar100:smoke", "nyuv2",
                                  "nyuv2:smoke", "scenes", "scenes:quick"])
def test_every_shipped_config_gives_the_trainer_a_plan(name):
  """What the trainer reads of every shipped config, as the typed plan: every section's keys
  known, the same values as the config."""
  module, _, preset = name.partition(":")
  config = importlib.import_module(f"experiments.configs.{module}").get_config(preset)
  plan = app_plan.trainer(config)
  assert plan.stages == tuple(config.stages)
  assert plan.sparsity == config.get("sparsity", plan_lib.Plan().sparsity)  # a study: per setting
  assert plan.optimizer.learning_rate == config.optimizer.learning_rate
  assert dict(plan.epochs) == {**plan_lib.Plan().epochs, **config.epochs.to_dict()}
  assert plan.weightings["minmax"]["gamma"] == config.minmax.gamma


def test_a_key_the_trainer_does_not_read_is_refused(tiny_config):
  config = tiny_config()
  with config.unlocked():
    config.optimizer.momentun = 0.9
  with pytest.raises(errors.UserError, match=r"config.optimizer.momentun is not a setting"):
    app_plan.trainer(config)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("stage", ["retrain", "gradual", "sparse"])
def test_pruned_weights_stay_exactly_zero_under_the_trainers_own_chain(tiny_config, stage,
                                                                      optimizer):
  """The chain the trainer builds (the variant's clip, weight decay, SGD with momentum or
  Adam, the variant's learning-rate scale) inside the stage's sparse wrapper, fed large
  gradients: after every step each weight the current mask prunes is exactly 0, and, where
  masks can regrow a weight (retrain's fixed ones are reset at init, dynamic sparse
  training's on every regrowth), so is every moment of it. The gradual stage's masks only
  shrink, so a moment left at a pruned weight never reaches it."""
  config = tiny_config(**{"optimizer.name": optimizer, "optimizer.weight_decay": 5e-4,
                          "optimizer.schedule": "constant", "epochs.gradual": 2,
                          "epochs.sparse": 2, "sparsity": 0.5,
                          "dynamic.update_every_epochs": 1, "gradual.update_every_epochs": 1})
  rng = np.random.default_rng(0)
  f32 = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731
  params = {"trunk": {"Dense_0": {"kernel": f32(16, 8), "bias": f32(8)}}}
  tx = comparison.stages_lib.descent_transform(
      stage, app_plan.trainer(config), 3, masks=sparsity.magnitude_masks(params, 0.5),
      variant=variants.Variant(2.0, 0.1))
  state, update = tx.init(params), jax.jit(tx.update)
  pruned_steps = 0
  for _ in range(6):
    grads = jax.tree.map(lambda p: 100.0 * f32(*p.shape), params)
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    kept = np.asarray(sparsity.full_masks(params, sparsity.find_masks(state))
                      ["trunk"]["Dense_0"]["kernel"])
    kernel = np.asarray(params["trunk"]["Dense_0"]["kernel"])
    assert np.all(kernel[~kept] == 0.0)
    moments = [np.asarray(leaf) for leaf in jax.tree.leaves(state)
               if np.shape(leaf) == kernel.shape and np.asarray(leaf).dtype == np.float32]
    assert stage == "gradual" or all(np.all(m[~kept] == 0.0) for m in moments)
    pruned_steps += int(not kept.all())
  assert pruned_steps >= 3  # the masks pruned on most steps: the check above had work


def test_a_run_whose_pruned_weights_leaked_is_found():
  """What every pipeline run checks before it evaluates its selected model: a pruned weight
  that is not exactly zero (even 1e-30) is named by its leaf; a mask of None prunes none."""
  params = {"a": np.array([[1.0, 0.0], [0.0, 2.0]], np.float32), "b": np.ones(2, np.float32)}
  masks = {"a": np.array([[True, False], [False, True]]), "b": None}
  find = comparison._pruned_leaks  # pylint: disable=protected-access
  assert find(params, masks) == [] and find(params, None) == []
  params["a"][0, 1] = 1e-30
  assert find(params, masks) == ["['a']"]


@pytest.mark.parametrize("structure, target", [("filter", 0.75), ("2:4", 0.5)])
def test_a_structured_prune_runs_through_the_pipeline_to_its_exact_pattern(
    tmp_path, tiny_config, structure, target):
  """The prune stage with filters or an n:m pattern, through retraining and export: every
  prunable layer of the exported model keeps exactly the count (whole filters, n of every
  m) that `planned_summary` gives for that structure."""
  from mmcompress import export  # pylint: disable=import-outside-toplevel
  config = tiny_config(methods=("equal",), structure=structure, sparsity=target,
                       **{"model_kwargs.hidden": (32, 16)})
  comparison.run(config, str(tmp_path), print_report=False)
  result = json.loads((tmp_path / "seed0" / "equal" / "result.json").read_text())
  params = export.load(tmp_path / result["export"]["path"])
  planned = sparsity.planned_summary(params, target, structure=structure)["leaves"]
  got = sparsity.summary(params, jax.tree.map(lambda p: p != 0, params))["leaves"]
  prunable = [n for n, leaf in planned.items() if leaf["prunable"]]
  assert len(prunable) >= 2
  assert all(got[n]["nonzero"] == planned[n]["nonzero"] for n in prunable), (got, planned)
  if structure == "filter":  # whole output filters pruned: a kept column has no zero in it
    for n in prunable:
      kernel = np.asarray(params[n.split("/")[0]][n.split("/")[1]][n.split("/")[2]])
      zero_columns = np.all(kernel == 0, axis=0)
      assert zero_columns.any() and np.all(kernel[:, ~zero_columns] != 0)


@pytest.mark.slow
@pytest.mark.parametrize("stages, stage", [(("sparse",), "sparse"),
                                           (("pretrain", "gradual", "retrain"), "gradual")])
def test_a_run_cut_inside_a_mask_changing_stage_resumes_to_the_same_result(
    tmp_path, tiny_config, tiny_experiment, stages, stage):
  """Cut after checkpoint 21 of a dynamic sparse or gradual stage whose masks change every
  epoch (16 steps): the resumed run (its masks, step count and key from the checkpoint)
  gives the same result as the run never cut, pruned weights exactly zero (checked by the
  run itself before it evaluates)."""
  settings = {"stages": stages, f"epochs.{stage}": 2, "dynamic.update_every_epochs": 1,
              "gradual.update_every_epochs": 1}
  whole = one_run(tiny_experiment(tmp_path / "whole", tiny_config(**settings)), "minmax")
  cut = tiny_config(checkpoint_every_steps=CUT_EVERY, **settings)  # (21 is its 3rd save)
  workdir = tmp_path / "cut"
  with pytest.raises(Interrupt, match=f"after checkpoint {stage}/21$"):
    one_run(tiny_experiment(workdir, cut, on_checkpoint=interrupt_at(stage, 21)), "minmax")
  resumed = one_run(tiny_experiment(workdir, cut), "minmax")
  assert resumed == whole
  # Measured by nonzeros: a weight regrown at 0 that stayed there counts as pruned, so
  # dynamic sparse training can measure above its target.
  assert whole.sparsity >= 0.975 - 1e-3 and (stage == "sparse" or whole.sparsity < 0.976)
