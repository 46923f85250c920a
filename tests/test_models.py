"""Tests of the multi-head models: shapes, parameter names, VGG16 sizes, task-conditional BN."""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmcompress.models import MultiHeadVGG16
from mmcompress.models import TaskBatchNorm
from mmcompress.models import create_model
from mmcompress.sparsity import default_include
from mmcompress.sparsity import planned_summary

NUM_OUTPUTS = (3, 1, 5)
VGG16_CHANNELS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)


def _images(shape, seed=0):
  return jax.random.uniform(jax.random.key(seed), shape)


def _paths(tree):
  return {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _prunable(params):
  """The default pruning rule: rank >= 2 leaves outside modules named like a head."""
  return {p: x for p, x in _paths(params).items() if x.ndim >= 2 and "head" not in p}


@pytest.fixture(scope="module")
def vgg():
  """A 3-task VGG16 with task-conditional batch norm, on 8×8 images (fast on CPU)."""
  model = MultiHeadVGG16(NUM_OUTPUTS)
  variables = jax.jit(model.init)(jax.random.key(0), _images((4, 8, 8, 3)))
  return model, variables


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_heads_have_the_right_shapes_and_names(name):
  model = create_model(name, NUM_OUTPUTS)
  images = _images((6, 8, 8, 1))
  variables = jax.jit(model.init)(jax.random.key(0), images)
  outputs = model.apply(variables, images, train=True)
  assert isinstance(outputs, tuple)
  assert [y.shape for y in outputs] == [(6, n) for n in NUM_OUTPUTS]
  assert set(variables["params"]) == {"trunk", "head_0", "head_1", "head_2"}
  for k, n in enumerate(NUM_OUTPUTS):
    assert variables["params"][f"head_{k}"]["kernel"].shape[-1] == n
  prunable = _prunable(variables["params"])
  assert prunable and all(p.startswith("['trunk']") for p in prunable)
  assert len(prunable) == 2  # Two Dense layers or two convolutions.


def test_vgg16_outputs_and_names(vgg):
  model, variables = vgg
  images = _images((4, 8, 8, 3), seed=1)
  outputs, updates = model.apply(variables, images, task_id=2, train=True,
                                 mutable=["batch_stats"])
  assert [y.shape for y in outputs] == [(4, n) for n in NUM_OUTPUTS]
  assert set(updates) == {"batch_stats"}
  params = variables["params"]
  assert set(params) == {"trunk", "head_0", "head_1", "head_2"}
  trunk = params["trunk"]
  assert set(trunk) == {f"conv{i}" for i in range(13)} | {f"bn{i}" for i in range(13)}
  for i in range(13):
    assert set(trunk[f"bn{i}"]) == {f"{v}_task{k}" for v in ("scale", "bias") for k in range(3)}
    assert set(variables["batch_stats"]["trunk"][f"bn{i}"]) == {
        f"{v}_task{k}" for v in ("mean", "var") for k in range(3)}
  prunable = _prunable(params)
  assert sorted(prunable) == sorted(f"['trunk']['conv{i}']['kernel']" for i in range(13))


def test_vgg16_conv_parameters_match_the_closed_form():
  model = MultiHeadVGG16((5,) * 20)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 32, 32, 3)))
  trunk = shapes["params"]["trunk"]
  channels_in = (3,) + VGG16_CHANNELS[:-1]
  expected = sum(3 * 3 * c_in * c_out for c_in, c_out in zip(channels_in, VGG16_CHANNELS))
  assert expected == 14_710_464  # VGG16's convolution weights, without biases.
  convs = [trunk[f"conv{i}"] for i in range(13)]
  assert all(set(conv) == {"kernel"} for conv in convs)  # No bias before batch norm.
  assert sum(int(np.prod(conv["kernel"].shape)) for conv in convs) == expected
  assert sum(x.size for x in jax.tree.leaves(_prunable(shapes["params"]))) == expected
  # Task-conditional BN: scale and bias for every channel of every task.
  bn = sum(x.size for p, x in _paths(trunk).items() if "['bn" in p)
  assert bn == 20 * 2 * sum(VGG16_CHANNELS)
  # One head per task on the 512 pooled features.
  assert all(shapes["params"][f"head_{k}"]["kernel"].shape == (512, 5) for k in range(20))


def _kept(n, sparsity=0.975):
  """What magnitude_masks keeps of a leaf of n entries."""
  return n - math.floor(sparsity * n + 0.5)


# (model, kwargs, num_outputs, image shape, prunable kernel sizes, dense parameters), by hand:
# the digits models (8x8 grey images, the "classify" task set's 2/4/2/2 outputs) and VGG16 on
# CIFAR-100 as 20 tasks of 5 classes with task-conditional batch norm.
_WHOLE_MODEL_CASES = {
    "mlp": ("mlp", {"hidden": (256, 256)}, (2, 4, 2, 2), (1, 8, 8, 1),
            [64 * 256, 256 * 256],
            2 * 256 + 256 * 10 + 10),                     # trunk biases; heads
    "cnn": ("cnn", {}, (2, 4, 2, 2), (1, 8, 8, 1),
            [3 * 3 * 1 * 32, 3 * 3 * 32 * 64],
            32 + 64 + 64 * 10 + 10),
    "vgg16": ("vgg16", {}, (5,) * 20, (1, 32, 32, 3),
              [9 * a * b for a, b in zip((3,) + VGG16_CHANNELS[:-1], VGG16_CHANNELS)],
              20 * 2 * sum(VGG16_CHANNELS) + 20 * (512 * 5 + 5)),  # per-task BN; heads
}


@pytest.mark.parametrize("case", sorted(_WHOLE_MODEL_CASES))
def test_prunable_kernels_and_whole_model_ratio_at_97_5_percent(case):
  name, kwargs, num_outputs, shape, kernels, dense_part = _WHOLE_MODEL_CASES[case]
  model = create_model(name, num_outputs, **kwargs)
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))["params"]
  stats = planned_summary(params, 0.975)
  # The prunable leaves are the trunk's kernels, exactly; heads, biases and norms stay dense.
  selected = _paths(jax.tree_util.tree_map_with_path(default_include, params))
  assert {p for p, keep in selected.items() if keep} == set(_prunable(params))
  assert sorted(stats["leaves"][n]["size"] for n, r in stats["leaves"].items()
                if r["prunable"]) == sorted(kernels)
  assert all(n.startswith("trunk/") and n.endswith("kernel")
             for n, r in stats["leaves"].items() if r["prunable"])
  assert stats["non_prunable_size"] == dense_part
  total = sum(kernels) + dense_part
  kept = sum(_kept(n) for n in kernels)
  assert stats["total_size"] == total
  assert stats["prunable_compression_ratio"] == pytest.approx(sum(kernels) / kept)
  assert stats["whole_model_compression_ratio"] == pytest.approx(total / (kept + dense_part))
  assert stats["whole_model_cap"] == pytest.approx(total / dense_part)
  assert {g["group"] for g in stats["non_prunable_groups"]} >= {"head_*"}
  print(f"\n{case}: {total:,} parameters, {sum(kernels):,} prunable; at 97.5 %: "
        f"{stats['prunable_compression_ratio']:.2f}x prunable part, "
        f"{stats['whole_model_compression_ratio']:.2f}x whole model (dense part caps it at "
        f"{stats['whole_model_cap']:.1f}x)")


@pytest.mark.parametrize("train", [True, False])
def test_task_batch_norm_matches_flax_batch_norm_for_its_task(train):
  x = 3.0 * _images((5, 4, 4, 6)) + 1.0
  reference = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)
  keys = jax.random.split(jax.random.key(1), 4)
  ref_vars = {
      "params": {"scale": 1 + jax.random.normal(keys[0], (6,)),
                 "bias": jax.random.normal(keys[1], (6,))},
      "batch_stats": {"mean": jax.random.normal(keys[2], (6,)),
                      "var": jax.random.uniform(keys[3], (6,)) + 0.5},
  }
  ref_out, ref_updates = reference.apply(ref_vars, x, mutable=["batch_stats"])

  norm = TaskBatchNorm(num_tasks=3)
  variables = norm.init(jax.random.key(0), x, 0, train=train)
  # Task 1 gets the reference's variables; tasks 0 and 2 keep their initial ones.
  for col, names in (("params", ("scale", "bias")), ("batch_stats", ("mean", "var"))):
    for name in names:
      variables[col][f"{name}_task1"] = ref_vars[col][name]
  for task_id in (1, jnp.int32(1)):
    out, updates = jax.jit(
        lambda v, x, t: norm.apply(v, x, t, train=train, mutable=["batch_stats"]))(
            variables, x, task_id)
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
    stats = updates["batch_stats"]
    np.testing.assert_allclose(stats["mean_task1"], ref_updates["batch_stats"]["mean"],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var_task1"], ref_updates["batch_stats"]["var"],
                               rtol=1e-5, atol=1e-6)
    for other in (0, 2):
      for name in ("mean", "var"):
        np.testing.assert_array_equal(stats[f"{name}_task{other}"],
                                      variables["batch_stats"][f"{name}_task{other}"])


def test_vgg16_static_and_traced_task_ids_agree_without_recompiling(vgg):
  model, variables = vgg
  images = _images((4, 8, 8, 3), seed=2)
  # Give every task its own batch norm so that the choice of task shows in the outputs.
  def scale_by_task(path, x):
    name = path[-1].key
    return x * (1.0 + int(name.rsplit("_task", 1)[1])) if "_task" in name else x

  variables = {
      "params": jax.tree_util.tree_map_with_path(scale_by_task, variables["params"]),
      "batch_stats": variables["batch_stats"],
  }
  step = jax.jit(lambda v, x, t: model.apply(v, x, task_id=t, train=True,
                                             mutable=["batch_stats"]))
  results = []
  for k in range(3):
    static = model.apply(variables, images, task_id=k, train=True, mutable=["batch_stats"])
    traced = step(variables, images, jnp.int32(k))
    # Op by op and as one XLA program, 13 convolutions and batch norms round differently in
    # float32: up to 4e-5 on outputs of order 0.1-1 when compiled unoptimised, as the tests
    # compile (tests/conftest.py). Another task's batch norm changes them by far more
    # (checked below).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4),
                 static, traced)
    results.append(traced[0][0])
  assert step._cache_size() == 1
  assert not np.allclose(results[0], results[1], rtol=1e-2, atol=1e-2)


def test_vgg16_task_loss_has_no_gradient_on_other_tasks_batch_norm(vgg):
  model, variables = vgg
  images = _images((4, 8, 8, 3), seed=3)

  def loss(params, task_id):
    outputs, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                             images, task_id=task_id, train=True, mutable=["batch_stats"])
    return jnp.sum(outputs[0] ** 2)

  grads = jax.jit(jax.grad(loss))(variables["params"], jnp.int32(1))
  for path, g in _paths(grads).items():
    if "_task0" in path or "_task2" in path:
      assert not np.any(g), path
    elif "_task1" in path:
      assert np.any(g), path


def test_vgg16_eval_mode_uses_running_statistics(vgg):
  model, variables = vgg
  images = _images((4, 8, 8, 3), seed=4)
  one = model.apply(variables, images[:1], task_id=0)
  batch = model.apply(variables, images, task_id=0)
  # With running statistics, an example's output does not depend on the rest of the batch.
  np.testing.assert_allclose(one[0], batch[0][:1], rtol=1e-5, atol=1e-6)


def test_vgg16_task_id_is_checked(vgg):
  model, variables = vgg
  images = _images((2, 8, 8, 3))
  with pytest.raises(ValueError, match="needs task_id"):
    model.apply(variables, images)
  with pytest.raises(ValueError, match=r"task_id must be in \[0, 3\)"):
    model.apply(variables, images, task_id=3)


def test_vgg16_with_shared_batch_norm_has_one_set_and_ignores_task_id():
  model = create_model("vgg16", (2, 2), task_conditional_bn=False)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 8, 8, 3)))
  for i in range(13):
    assert set(shapes["params"]["trunk"][f"bn{i}"]) == {"scale", "bias"}
    assert set(shapes["batch_stats"]["trunk"][f"bn{i}"]) == {"mean", "var"}
  norm = TaskBatchNorm(num_tasks=None)
  x = _images((4, 3, 3, 5))
  variables = norm.init(jax.random.key(0), x, train=True)
  forward = jax.jit(lambda v, x, t: norm.apply(v, x, t, train=True, mutable=["batch_stats"]))
  jax.tree.map(np.testing.assert_array_equal, forward(variables, x, jnp.int32(0)),
               forward(variables, x, jnp.int32(7)))


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_one_jitted_forward_compiles_once(name):
  model = create_model(name, [4, 2])
  images = _images((3, 8, 8, 1))
  variables = jax.jit(model.init)(jax.random.key(0), images)
  forward = jax.jit(lambda v, x: model.apply(v, x))
  first = forward(variables, images)
  second = forward(variables, images + 1.0)
  assert [y.shape for y in first] == [(3, 4), (3, 2)]
  assert not np.allclose(first[0], second[0])
  assert forward._cache_size() == 1


def test_create_model_rejects_bad_arguments():
  with pytest.raises(ValueError, match=r"\['mlp', 'cnn', 'vgg16', 'mtan'\]"):
    create_model("resnet", (2,))
  for bad in ((), (2, 0), (2, 1.5), 3):
    with pytest.raises(ValueError, match="num_outputs"):
      create_model("mlp", bad)
  with pytest.raises(ValueError, match="hidden"):
    create_model("cnn", (2,), hidden=(8,))
