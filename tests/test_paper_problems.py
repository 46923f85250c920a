"""The paper's two benchmarks at reduced size on CPU: one jitted step each, data checks."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments import synthetic
from experiments.configs import cifar100 as cifar_config
from experiments.configs import nyuv2 as nyu_config
from mmcompress import problems, weighting
from mmcompress.app import comparison, plan as app_plan
from mmcompress.problems.cifar100 import data as cifar100
from mmcompress.problems.nyuv2 import data as nyuv2
from mmcompress.problems.nyuv2 import tasks as dense_tasks
from mmcompress.models import create_model
from mmcompress.problems.cifar100 import Cifar100Problem
from mmcompress.problems.nyuv2 import NYUv2Problem
from mmcompress.sparsity import masks as masks_lib
from mmcompress.train import loop, parallel, stages, step


def minmax_masked_step(problem, model, sparsity_level=0.9):
  sparse = synthetic.masked_minmax_step(problem, model, sparsity_level=sparsity_level,
                                        learning_rate=0.05,
                                        minmax=weighting.minmax(0.02, gamma=5.0))
  return sparse.state, sparse.step, sparse.masks, sparse.mesh


def assert_masked_zeros(params, masks):
  checked = 0
  for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(masks)):
    p, m = np.asarray(p), np.asarray(m)
    assert np.all(p[~m] == 0.0)
    checked += (~m).sum()
  assert checked > 0


def test_cifar100_vgg16_step_uses_each_tasks_batch_norm_and_respects_masks():
  problem = Cifar100Problem(synthetic.cifar100_split(4, 0), synthetic.cifar100_split(1, 1),
                            synthetic.cifar100_split(1, 2))
  model = create_model("vgg16", problem.num_outputs, width=0.125)
  state, train_step, masks, mesh = minmax_masked_step(problem, model)
  start_stats = jax.tree.map(np.asarray, state.model_state)
  start_params = jax.tree.map(np.asarray, state.params)  # the step donates `state`
  batch = problem.train_batch(0, 0, 0, 2)
  assert batch["images"].shape == (20, 2, 32, 32, 3) and batch["labels"].shape == (20, 2)
  state, losses = train_step(state, parallel.shard_batch(batch, mesh, problem.batch_axis))
  assert losses.shape == (20,) and np.all(np.isfinite(np.asarray(losses)))
  assert_masked_zeros(state.params, masks)
  # Task 3's statistics are exactly those of a forward pass of task 3's batch alone.
  _, alone = model.apply({"params": start_params, **start_stats},
                         jnp.asarray(batch["images"][3]), task_id=3, train=True,
                         mutable=["batch_stats"])
  for layer in ("bn0", "bn7", "bn12"):
    merged = state.model_state["batch_stats"]["trunk"][layer]
    expected = alone["batch_stats"]["trunk"][layer]
    for stat in ("mean_task3", "var_task3"):
      np.testing.assert_allclose(merged[stat], expected[stat], rtol=1e-4, atol=1e-6)
    before = start_stats["batch_stats"]["trunk"][layer]
    assert not np.allclose(merged["mean_task3"], before["mean_task3"])
  eval_step = step.make_eval_step(problem, model, mesh)
  val = loop.evaluate(problem, eval_step, state.params, state.model_state, "val", mesh, 4)
  assert set(val["metrics"]) == set(cifar100.TASK_NAMES)
  assert all(0.0 <= a <= 1.0 for a in val["metrics"].values())


@pytest.fixture(scope="module")
def nyu_root(tmp_path_factory):
  return nyuv2.write_synthetic(tmp_path_factory.mktemp("nyuv2") / "data", 5, 2, height=32,
                               width=64, seed=0)


def test_nyuv2_mtan_step_is_finite_respects_masks_and_evaluates_all_metrics(nyu_root):
  problem = NYUv2Problem(str(nyu_root), height=32, width=64, val_fraction=0.2)
  assert {k: len(v) for k, v in problem.rows.items()} == {"train": 4, "val": 1, "test": 2}
  # Two blocks of one width: far fewer programs and shapes to compile, and the depth and
  # widths prove nothing here (tests/test_mtan.py checks them; experiments.gpu_check the full
  # size).
  model = create_model("mtan", problem.num_outputs, filters=(4, 4), convs_per_block=(1, 1))
  state, train_step, masks, mesh = minmax_masked_step(problem, model)
  batch = problem.train_batch(0, 0, 0, 2)
  assert batch["image"].shape == (2, 32, 64, 3) and batch["label"].shape == (2, 32, 64)
  state, losses = train_step(state, parallel.shard_batch(batch, mesh))
  assert losses.shape == (3,) and np.all(np.isfinite(np.asarray(losses)))
  assert_masked_zeros(state.params, masks)
  eval_step = step.make_eval_step(problem, model, mesh)
  test = loop.evaluate(problem, eval_step, state.params, state.model_state, "test", mesh, 2)
  assert set(test["all_metrics"]) >= {"miou", "pixel_acc", "depth_abs_err", "depth_rel_err",
                                      "normal_mean", "normal_median", "normal_11.25"}
  assert test["metrics"]["segmentation"] == test["all_metrics"]["miou"]
  assert all(np.isfinite(v) for v in test["all_metrics"].values())
  assert len(test["loss"]) == 3 and all(np.isfinite(test["loss"]))


def test_nyuv2_bad_data_directory_fails_before_training(tmp_path, nyu_root):
  config = nyu_config.get_config("smoke")
  with pytest.raises(ValueError, match="config.data_dir is empty"):
    problems.get("nyuv2").from_config(config)
  with config.unlocked():
    config.data_dir = str(tmp_path / "nowhere")
  with pytest.raises(ValueError, match="nowhere"):
    problems.get("nyuv2").from_config(config)
  with config.unlocked():
    config.data_dir, config.height, config.width = str(nyu_root), 64, 64
  with pytest.raises(ValueError, match=r"0\.npy"):  # the shapes are 32×64, not 64×64
    problems.get("nyuv2").from_config(config)


def test_cifar100_from_tfds_mock_data_yields_twenty_five_way_tasks(tmp_path):
  config = cifar_config.get_config("smoke")
  with config.unlocked():
    config.data_dir = str(tmp_path)
    config.check_coarse_labels = False  # mock data draws fine and coarse labels independently
  with tfds.testing.mock_data(num_examples=1500, policy=tfds.testing.MockPolicy.USE_CODE):
    problem = problems.get("cifar100").from_config(config)
  assert problem.num_tasks == 20 and problem.num_outputs == (5,) * 20
  batch = problem.train_batch(0, 0, 0, 2)
  assert batch["images"].shape == (20, 2, 32, 32, 3)
  assert batch["labels"].min() >= 0 and batch["labels"].max() <= 4
  with config.unlocked():
    config.check_coarse_labels = True
  with tfds.testing.mock_data(num_examples=1500, policy=tfds.testing.MockPolicy.USE_CODE):
    with pytest.raises(ValueError, match="coarse_label"):
      problems.get("cifar100").from_config(config)


def test_cifar100_missing_data_dir_is_refused():
  with pytest.raises(ValueError, match="config.data_dir is empty"):
    problems.get("cifar100").from_config(cifar_config.get_config())


@pytest.mark.parametrize("module, preset", [
    *((cifar_config, p) for p in cifar_config.PRESETS),
    *((nyu_config, p) for p in nyu_config.PRESETS)])
def test_every_paper_preset_is_a_config_that_can_run(module, preset):
  config = module.get_config(preset)
  comparison.validate(config)  # every stage's transform and every weighting builds
  # The reference pretrains each method under its own weighting, with its sums.
  assert not config.share_pretraining and config.loss_reduction == "reference"


def test_cifar100_reweight_stage_runs_at_its_own_rate_and_refresh_epochs():
  config = cifar_config.get_config()
  assert tuple(config.reweight.refresh_at_epochs) == (45, 90, 135)
  steps = 100
  reweight = stages.learning_rate_schedule(
      stages.stage_optimizer_config("reweight", app_plan.trainer(config)), steps, 1)
  pretrain = stages.learning_rate_schedule(
      stages.stage_optimizer_config("pretrain", app_plan.trainer(config)), steps, 1)
  np.testing.assert_allclose([reweight(0), reweight(steps - 1)], [1e-7, 1e-7], rtol=1e-6)
  np.testing.assert_allclose(pretrain(0), 0.1, rtol=1e-6)  # cosine from the base rate
  assert float(pretrain(steps // 2)) < 0.06


@pytest.mark.parametrize("module, model_kwargs, problem_outputs", [
    (cifar_config, {"task_conditional_bn": True}, (5,) * 20),
    (nyu_config, {"filters": (64, 128, 256, 512, 512)}, (13, 1, 3))],
    ids=["cifar100_vgg16", "nyuv2_mtan"])
@pytest.mark.parametrize("preset, low, high", [("dst60x", 40.0, 50.0),
                                              ("dst100x", 70.0, 85.0)])
def test_reference_dst_budget_ends_near_45x_and_77x(module, model_kwargs, problem_outputs,
                                                     preset, low, high):
  """The density after the last update is (1 − p) + ceil(g·n)/n per prunable layer."""
  config = module.get_config(preset)
  assert config.dynamic.budget == "reference" and config.stages == ("sparse",)
  model = create_model(config.model, problem_outputs, **model_kwargs)
  image = (1, 32, 32, 3) if module is cifar_config else (1, config.height, config.width, 3)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(image),
                                             train=False))["params"]
  flags = masks_lib.prunable_flags(shapes, masks_lib.default_include)
  total = active = 0
  for leaf, prunable in zip(jax.tree.leaves(shapes), jax.tree.leaves(flags)):
    if prunable:
      n = math.prod(leaf.shape)
      total += n
      active += n - masks_lib.prune_count(config.sparsity, n)
      active += min(math.ceil(n * config.dynamic.grow_fraction),
                    masks_lib.prune_count(config.sparsity, n))
  ratio = total / active
  print(f"{preset}: prunable part {ratio:.1f}x after the last update")
  assert low < ratio < high


def test_normal_l1_loss_against_a_hand_computation(nyu_root):
  # Two pixels with a target, one without; the first prediction has length 2.
  pred = jnp.array([[[[0.0, 0.0, 2.0], [0.6, 0.8, 0.0], [5.0, 5.0, 5.0]]]])
  target = jnp.array([[[[0.0, 0.6, 0.8], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]])
  # |(0, 0, 1) − (0, 0.6, 0.8)| = 0.6 + 0.2; |(0.6, 0.8, 0) − (1, 0, 0)| = 0.4 + 0.8.
  np.testing.assert_allclose(dense_tasks.normal_l1_loss(pred, target), (0.8 + 1.2) / 2,
                             rtol=1e-6)
  problem = NYUv2Problem(str(nyu_root), height=32, width=64, val_fraction=0.2,
                         normal_loss="l1")
  assert problem.losses["normal"] is dense_tasks.normal_l1_loss
  with pytest.raises(ValueError, match="normal_loss"):
    NYUv2Problem(str(nyu_root), height=32, width=64, normal_loss="l2")
