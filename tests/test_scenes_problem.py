"""The scenes as NYUv2's problem: NYUv2's loader, losses and metrics on rendered arrays, the
trivial predictor's metrics by hand, config refusals, and the quick preset end to end."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import scenes as scenes_config, study as study_config
from mmcompress import errors, problems
from mmcompress.app import comparison, study
from mmcompress.models.mtan import MultiTaskAttentionNet
from mmcompress.problems import base
from mmcompress.problems.nyuv2 import data as nyuv2
from mmcompress.problems.nyuv2 import tasks
from mmcompress.problems.scenes import ScenesProblem, data, problem as scenes_problem, render

H, W = 32, 64
COUNTS = {"train": 6, "val": 2, "test": 3}


@pytest.fixture(name="splits", scope="module")
def fixture_splits():
  return {split: data.generate(split, n, height=H, width=W, seed=3)
          for split, n in COUNTS.items()}


def write_nyuv2_layout(root, maps):
  """The maps of a split as the files of a NYUv2 directory's train/ split."""
  for kind in data.MAPS:
    (root / "train" / kind).mkdir(parents=True)
    for i, example in enumerate(maps[kind]):
      np.save(root / "train" / kind / f"{i}.npy", example)


def test_batches_are_the_nyuv2_loaders_batches_of_the_same_scenes(splits, tmp_path):
  problem = ScenesProblem(splits)
  assert problem.num_outputs == (render.NUM_CLASSES, 1, 3) == (7, 1, 3)
  assert problem.task_names == tuple(tasks.DENSE_TASKS)
  assert {k: v.tolist() for k, v in problem.rows.items()} == {
      "train": [0, 1, 2, 3, 4, 5], "val": [6, 7], "test": [0, 1, 2]}
  assert problem.describe().startswith("Scenes 32×64 (6 train / 2 val / 3 test")
  # The train and val scenes written as a NYUv2 directory pass NYUv2's checks, and NYUv2's
  # file source yields what the in-memory source yields.
  write_nyuv2_layout(tmp_path, scenes_problem.concatenate(splits["train"], splits["val"]))
  assert nyuv2.check_layout(tmp_path, ("train",), height=H, width=W) == {"train": 8}
  files = nyuv2.NYUv2Source(tmp_path, "train", height=H, width=W)
  assert len(problem.train_source) == len(files) == 8
  for step in range(3):  # augmented training batches: the same draws give the same arrays
    batch = problem.train_batch(5, 1, step, 2)
    epoch, position = divmod(step, problem.steps_per_epoch(2))
    order = base.epoch_order(5, 1, epoch, 6)[position * 2:(position + 1) * 2]
    expected = nyuv2.load_batch(files, order, np.random.default_rng([5, 1, step, 1]))
    assert set(batch) == set(expected)
    for kind in data.MAPS:
      np.testing.assert_array_equal(batch[kind], expected[kind])
      assert batch[kind].dtype == data.DTYPES[kind]
  val = list(problem.eval_batches("val", 4))
  assert len(val) == 1 and val[0]["valid"].tolist() == [True, True, False, False]
  np.testing.assert_array_equal(val[0]["label"][:2], splits["val"]["label"])
  test = list(problem.eval_batches("test", 2))
  assert [b["valid"].tolist() for b in test] == [[True, True], [True, False]]
  np.testing.assert_array_equal(test[1]["depth"][0], splits["test"]["depth"][2])
  assert problem.test_counts() == {t: 3 for t in problem.task_names}
  with pytest.raises(IndexError):
    problem.test_source[3]  # pylint: disable=pointless-statement


class Constant(nn.Module):
  """Every pixel of every image gets the same output per task, its ``head_k`` parameter."""
  values: tuple

  @nn.compact
  def __call__(self, images, task_id=None, *, train=False):
    del task_id, train
    return tuple(
        jnp.broadcast_to(self.param(f"head_{k}", lambda _, v=v: jnp.asarray(v)),
                         images.shape[:3] + np.shape(v))
        for k, v in enumerate(self.values))


def test_the_trivial_predictor_by_hand_through_the_problems_losses_and_metrics(splits):
  problem = ScenesProblem(splits, augment=False)
  constant = scenes_problem.trivial_predictions(splits["train"])
  values = tuple(constant[t] for t in problem.task_names)
  train = splits["train"]
  labels = train["label"][train["label"] >= 0]
  majority = np.argmax(np.bincount(labels, minlength=7))
  assert np.argmax(values[0]) == majority
  np.testing.assert_allclose(values[1], [train["depth"][train["depth"] > 0].mean()], rtol=1e-5)
  mean_normal = train["normal"][np.any(train["normal"] != 0, axis=-1)].mean(axis=0,
                                                                           dtype=np.float64)
  np.testing.assert_allclose(values[2], mean_normal / np.linalg.norm(mean_normal), atol=1e-6)

  # The metrics of the constant prediction on test, computed here in NumPy.
  test = splits["test"]
  label, depth, normal = test["label"], test["depth"][..., 0], test["normal"]
  labelled = label >= 0
  hits = np.sum(label[labelled] == majority)
  union = labelled.sum()  # every labelled pixel is predicted the majority class
  present = np.unique(label[labelled])
  valid_depth = depth > 0
  valid_normal = np.any(normal != 0, axis=-1)
  cosine = np.clip(normal[valid_normal].astype(np.float64) @ values[2].astype(np.float64),
                   -1, 1)
  angles = np.degrees(np.arccos(cosine))
  by_hand = {"pixel_acc": hits / labelled.sum(), "miou": hits / union / len(present),
             "depth_abs_err": np.abs(depth[valid_depth] - values[1][0]).mean(),
             "depth_rel_err": (np.abs(depth[valid_depth] - values[1][0])
                               / depth[valid_depth]).mean(),
             "normal_mean": angles.mean(), "normal_22.5": np.mean(angles < 22.5)}
  trivial = scenes_problem.trivial_metrics(problem, constant, batch_size=2)
  for name, value in by_hand.items():
    np.testing.assert_allclose(trivial[name], value, rtol=1e-4, atol=1e-4, err_msg=name)

  # The problem's own evaluation and losses of a model that predicts the same constants.
  model = Constant(values)
  params = {f"head_{k}": jnp.asarray(v) for k, v in enumerate(values)}
  total = None
  for batch in problem.eval_batches("test", 2):
    total = tasks.add_sums(total, problem.eval_sums(model, params, {}, batch))
  result = problem.finalize(total)
  for name, value in trivial.items():
    np.testing.assert_allclose(result["all_metrics"][name], value, rtol=1e-5, err_msg=name)
  assert result["metrics"] == {"segmentation": result["all_metrics"]["miou"],
                               "depth": result["all_metrics"]["depth_abs_err"],
                               "normal": result["all_metrics"]["normal_mean"]}
  batch = problem.train_batch(0, 0, 0, 4)
  losses, _ = problem.task_losses(model, params, {}, batch, None)
  outputs = model.apply({"params": params}, batch["image"])
  expected = [tasks.segmentation_loss(outputs[0], batch["label"]),
              tasks.depth_loss(outputs[1], batch["depth"]),
              tasks.normal_loss(outputs[2], batch["normal"])]
  np.testing.assert_allclose(losses, expected, rtol=1e-6)
  assert float(losses[2]) == pytest.approx(1 - np.mean(cosine_of(batch, values[2])), rel=1e-4)


def cosine_of(batch, normal):
  valid = np.any(batch["normal"] != 0, axis=-1)
  return batch["normal"][valid] @ normal


def test_bad_scenes_configs_are_one_line_before_any_scene_is_rendered(tmp_path, start_python):
  cache = tmp_path / "cache"
  cases = (("--config.height=48", ("config.height=48", "multiples of 32")),
           ("--config.normal_loss=l2", ("config.normal_loss", "l2")),
           ("--config.num_train=8", ("batch_size=16", "8 training scenes")),
           ("--config=nyuv2", ("config.problem is 'nyuv2'",)))
  waits = [start_python("-m", "experiments.scenes", *flag.split(),
                        f"--config.data_dir={cache}", f"--workdir={tmp_path / 'w'}", cwd=tmp_path,
                        env={"CI": "true"}) for flag, _ in cases]
  for wait, (_, fragments) in zip(waits, cases):
    done = wait()
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("experiments.scenes: error:"), done.stderr
    assert all(f in lines[0] for f in fragments), lines[0]
  assert not (tmp_path / "w").exists() and not cache.exists()
  assert "scenes" in problems.PROBLEMS


def test_the_image_size_check_follows_the_mtans_depth():
  config = scenes_config.get_config("quick")  # 5 blocks: 32 x 64 images
  with config.unlocked():
    config.height = 36
  with pytest.raises(errors.UserError, match="config.height=36 .* multiples of 32"):
    scenes_problem.validate_config(config)
  with config.unlocked():
    config.model_kwargs.filters, config.model_kwargs.convs_per_block = (4, 4), (1, 1)
  scenes_problem.validate_config(config)  # 2 blocks: multiples of 4
  with config.unlocked():
    config.width = 66
  with pytest.raises(errors.UserError, match="config.width=66 must be multiples of 4"):
    scenes_problem.validate_config(config)
  with config.unlocked():  # 2 filters, 5 convolution counts: refused before any scene
    config.width, config.model_kwargs.convs_per_block = 64, (1, 1, 1, 1, 1)
  with pytest.raises(errors.UserError, match="one entry per MTAN block each"):
    scenes_problem.validate_config(config)


@pytest.mark.parametrize("preset", scenes_config.PRESETS)
def test_every_scenes_preset_is_a_config_that_can_run(preset):
  config = scenes_config.get_config(preset)
  comparison.validate(config)  # every stage's transform and every weighting builds
  assert config.problem == "scenes" and config.model == "mtan"
  assert config.methods == ("equal", "minmax") and config.sparsity == 0.975
  # The preset's own MTAN (5 blocks) takes its images: shapes only, no compile.
  model = MultiTaskAttentionNet((7, 1, 3), **config.model_kwargs.to_dict())
  images = jnp.zeros((2, config.height, config.width, 3))
  outputs = jax.eval_shape(lambda: model.apply(model.init(jax.random.key(0), images), images))
  assert [y.shape[:3] for y in outputs] == [(2, config.height, config.width)] * 3


def test_a_scenes_study_refuses_task_sets_scenes_does_not_have(tmp_path):
  # (The scenes quick study itself runs in tests/test_gpu_check.py, as gpu_check's scenes part,
  # with a two-block MTAN; the preset's own model is traced below.)
  config = study_config.get_config("scenes_quick")
  assert config.problem == "scenes" and config.methods == ("equal", "minmax")
  with config.unlocked():
    config.study.task_sets = ("classify",)
  with pytest.raises(ValueError, match="has no task sets: leave config.study.task_sets empty"):
    study.validate(config, str(tmp_path / "other"))


def _record(dir_, step, record):
  path = dir_ / str(step) / "record"
  path.mkdir(parents=True)
  (path / "metadata").write_text(json.dumps(record))


def test_the_loss_curves_read_every_run_of_the_axis_in_chunks_or_not(tmp_path):
  from experiments import scenes_curves  # pylint: disable=import-outside-toplevel
  def epochs(seed, stage):
    return [{"train_loss": [seed, len(stage), e], "val_loss": [e, seed, 0]} for e in range(2)]
  whole, chunked = tmp_path / "whole", tmp_path / "chunked"
  for workdir in (whole, chunked):
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"seeds": [3, 5]}))
  for run, stages in scenes_curves._STAGES.items():  # pylint: disable=protected-access
    for stage in stages:
      _record(whole / "axis" / run / stage, 7,
              {"runs": [{"epochs": epochs(s, stage)} for s in (3, 5)], "step": 7})
      for k, seed in enumerate((3, 5)):
        _record(chunked / "axis" / run / stage / f"chunk{k}", 7,
                {"runs": [{"epochs": epochs(seed, stage)}], "step": 7})
  expected = scenes_curves.curves(whole)
  assert set(expected) == {(f"seed{s}", r) for s in (3, 5) for r in ("dense", "equal", "minmax")}
  assert expected["seed5", "minmax"]["train"] == [[5, len("reweight"), 0], [5, len("reweight"), 1],
                                                  [5, len("retrain"), 0], [5, len("retrain"), 1]]
  assert expected["seed3", "dense"]["val"] == [[0, 3, 0], [1, 3, 0]]
  assert scenes_curves.curves(chunked) == expected
