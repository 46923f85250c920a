"""Tests of the SegNet-MTAN model: max unpooling, shapes, batch norm, pruning rule, gradients."""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmcompress import weighting
from mmcompress.models import mtan
from mmcompress.models.mtan import MultiTaskAttentionNet
from mmcompress.models.mtan import max_pool_with_argmax
from mmcompress.models.mtan import max_unpool
from mmcompress.sparsity import default_include
from mmcompress.sparsity import planned_summary

SMALL_FILTERS = (8, 16, 16, 32, 32)
NUM_OUTPUTS = (13, 1, 3)
# Reduced NYUv2 resolution; both sides must be multiples of 32.
SHAPE = (2, 32, 64, 3)


def _images(shape=SHAPE, seed=0):
  return jax.random.uniform(jax.random.key(seed), shape)


def _keystrs(tree):
  return {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _variables(model, images, seed=0):
  """Variables laid out as `model.init` makes them, filled with NumPy.

  Compiling `init` on CPU costs ~25 s for this model, nearly all of it in the ~100 random
  draws for the kernels; the layout comes from `jax.eval_shape(model.init, ...)`, which traces
  the same code. Kernels get He-normal values (fan in), the rest `init`'s constants (batch-norm
  scale and running variance 1, everything else 0).
  """
  shapes = jax.eval_shape(model.init, jax.random.key(0), images)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if leaf.ndim >= 2:
      std = np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(0.0, std, leaf.shape), leaf.dtype)
    return jnp.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def small():
  model = MultiTaskAttentionNet(NUM_OUTPUTS, filters=SMALL_FILTERS)
  variables = _variables(model, _images())
  forward = jax.jit(lambda v, x, t: model.apply(v, x, task_id=t))
  return model, variables, forward


def _losses(outputs, targets):
  seg, depth, normal = outputs
  labels, depth_target, normal_target = targets
  return jnp.stack([
      jnp.mean(optax.softmax_cross_entropy_with_integer_labels(seg, labels)),
      jnp.mean(jnp.abs(depth - depth_target)),
      jnp.mean(1.0 - jnp.sum(normal * normal_target, axis=-1)),
  ])


# The reduced MTAN of the gradient tests: narrow and two blocks deep (its programs compile in
# well under half the time of five blocks'), one convolution per block but two in the first
# (and so in the last decoder block, which mirrors it); every kind of layer is still there.
TINY = {"filters": (4, 4), "convs_per_block": (2, 1)}
TINY_SHAPE = (2, 16, 16, 3)


class Gradients(NamedTuple):
  variables: dict
  images: jax.Array
  loss: jax.Array      # the sum of the task losses
  updates: dict        # the training-mode batch statistics
  grads: dict          # jax.grad of the summed losses
  separate: list       # separate[k]: jax.grad of task k's loss alone
  rows: dict           # per_task_grads' stacked rows, by mode ("unrolled", "vmap")


@pytest.fixture(name="gradients", scope="module")
def fixture_gradients():
  """The reduced MTAN's training-mode task losses on one batch, differentiated by
  `weighting.per_task_grads` in each of its modes and task by task with `jax.grad`; shared by
  the tests below.

  The programs compile for seconds each on 2 cores, so: the tasks' own gradients come from one
  program, `jax.grad` of weights · losses called with the weights e_k, and the summed
  gradient from the same program with the weights 1.
  """
  model = MultiTaskAttentionNet(NUM_OUTPUTS, **TINY)
  images = _images(TINY_SHAPE, seed=5)
  variables = _variables(model, images)
  k1, k2, k3 = jax.random.split(jax.random.key(6), 3)
  b, h, w, _ = TINY_SHAPE
  normal_target = jax.random.normal(k3, (b, h, w, 3))
  targets = (jax.random.randint(k1, (b, h, w), 0, NUM_OUTPUTS[0]),
             jax.random.uniform(k2, (b, h, w, 1)),
             normal_target / jnp.linalg.norm(normal_target, axis=-1, keepdims=True))

  def losses(params, batch_stats):
    outputs, updates = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                   train=True, mutable=["batch_stats"])
    return _losses(outputs, targets), updates

  def weighted(params, batch_stats, weights):
    values, updates = losses(params, batch_stats)
    return weights @ values, updates

  grad = jax.jit(jax.value_and_grad(weighted, has_aux=True))
  params, batch_stats = variables["params"], variables["batch_stats"]
  num_tasks = len(NUM_OUTPUTS)
  (loss, updates), grads = grad(params, batch_stats, jnp.ones(num_tasks))
  separate = [grad(params, batch_stats, jnp.eye(num_tasks)[k])[1] for k in range(num_tasks)]
  rows = {}
  for mode in ("unrolled", "vmap"):  # ("auto" is "unrolled" at K = 3)
    rows[mode] = jax.jit(lambda p, s, mode=mode: weighting.per_task_grads(
        lambda q: losses(q, s), p, has_aux=True, mode=mode)[1])(params, batch_stats)
  return Gradients(variables, images, loss, updates, grads, separate, rows)


# Hand-built 4x4 example, two channels (the second is the negated first) so that the maxima sit
# at different window positions. Windows in row-major order: top left, top right, bottom left,
# bottom right; positions inside a window likewise 0..3.
_X = np.array([[1., 5., 2., 0.],
               [3., 4., 8., 7.],
               [9., 0., 1., -1.],
               [2., 6., 3., 4.]])


def test_max_pool_with_argmax_on_a_hand_built_example():
  x = jnp.asarray(np.stack([_X, -_X], -1)[None])
  pooled, argmax = max_pool_with_argmax(x)
  np.testing.assert_array_equal(pooled[0, ..., 0], [[5., 8.], [9., 4.]])
  np.testing.assert_array_equal(argmax[0, ..., 0], [[1, 2], [0, 3]])
  np.testing.assert_array_equal(pooled[0, ..., 1], [[-1., 0.], [0., 1.]])
  np.testing.assert_array_equal(argmax[0, ..., 1], [[0, 1], [1, 1]])


def test_max_unpool_puts_each_value_at_its_argmax_and_zeros_elsewhere():
  x = jnp.asarray(np.stack([_X, -_X], -1)[None])
  _, argmax = max_pool_with_argmax(x)
  y = jnp.asarray(np.array([[10., 20.], [30., 40.]])[None, :, :, None].repeat(2, -1))
  unpooled = max_unpool(y, argmax)
  np.testing.assert_array_equal(unpooled[0, ..., 0], [[0., 10., 0., 0.],
                                                      [0., 0., 20., 0.],
                                                      [30., 0., 0., 0.],
                                                      [0., 0., 0., 40.]])
  np.testing.assert_array_equal(unpooled[0, ..., 1], [[10., 0., 0., 20.],
                                                      [0., 0., 0., 0.],
                                                      [0., 30., 0., 40.],
                                                      [0., 0., 0., 0.]])
  # Ties go to the first position of the window.
  pooled, argmax = max_pool_with_argmax(jnp.ones((1, 2, 2, 1)))
  np.testing.assert_array_equal(max_unpool(pooled, argmax)[0, ..., 0], [[1., 0.], [0., 0.]])


def test_pool_unpool_matches_brute_force_and_routes_gradients_to_the_maxima():
  x = np.random.default_rng(0).normal(size=(2, 6, 8, 3)).astype(np.float32)
  expected = np.zeros_like(x)
  for b in range(2):
    for c in range(3):
      for i in range(0, 6, 2):
        for j in range(0, 8, 2):
          window = x[b, i:i + 2, j:j + 2, c]
          di, dj = np.unravel_index(np.argmax(window), (2, 2))
          expected[b, i + di, j + dj, c] = window[di, dj]
  roundtrip = jax.jit(lambda x: max_unpool(*max_pool_with_argmax(x)))
  np.testing.assert_array_equal(roundtrip(x), expected)
  grad = jax.grad(lambda x: jnp.sum(max_pool_with_argmax(x)[0]))(jnp.asarray(x))
  np.testing.assert_array_equal(grad, (expected != 0).astype(np.float32))


def test_forward_shapes_unit_normals_task_id_ignored_and_one_compilation(small):
  model, variables, forward = small
  images = _images(seed=1)
  seg, depth, normal = forward(variables, images, jnp.int32(0))
  b, h, w, _ = SHAPE
  assert (seg.shape, depth.shape, normal.shape) == ((b, h, w, 13), (b, h, w, 1), (b, h, w, 3))
  np.testing.assert_allclose(jnp.linalg.norm(normal, axis=-1), 1.0, rtol=1e-5)
  assert not np.allclose(jnp.linalg.norm(seg[..., :3], axis=-1), 1.0, atol=1e-2)
  # task_id is ignored: every task is computed for every image.
  jax.tree.map(np.testing.assert_array_equal, forward(variables, images, jnp.int32(2)),
               (seg, depth, normal))
  # Evaluation uses the running statistics: an image's output ignores the rest of the batch.
  other = images.at[1].set(_images(seed=2)[1])
  again = forward(variables, other, jnp.int32(1))
  for before, after in zip((seg, depth, normal), again):
    np.testing.assert_allclose(after[0], before[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(after[1], before[1])
  assert forward._cache_size() == 1


def test_parameters_of_a_task_reach_only_its_own_output(small):
  model, variables, _ = small
  images = _images(seed=3)
  # Batch statistics: with fresh running statistics the signal fades through the unpooling
  # decoder, and a parameter's effect could hide below the tolerance.
  forward = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[0])
  base = forward(variables, images)

  def changed_outputs(module):
    params = dict(variables["params"])
    params[module] = jax.tree.map(lambda p: p * 1.5 + 0.1, params[module])
    outputs = forward({"params": params, "batch_stats": variables["batch_stats"]}, images)
    return [k for k, (a, b) in enumerate(zip(base, outputs))
            if not np.allclose(a, b, rtol=1e-4, atol=1e-4)]

  assert changed_outputs("task1_attention_enc0") == [1]
  assert changed_outputs("task1_attention_enc4") == [1]
  assert changed_outputs("task2_attention_dec2") == [2]
  assert changed_outputs("head_0") == [0]
  assert changed_outputs("shared_attention_enc1") == [0, 1, 2]
  assert changed_outputs("shared_attention_dec3") == [0, 1, 2]
  assert changed_outputs("backbone") == [0, 1, 2]
  assert forward._cache_size() == 1


def _reference_prunable(params):
  """The reference's prunable set, written out: every conv kernel but the prediction layers."""
  convs = (2, 2, 3, 3, 3)
  expected = {f"['backbone']['enc{b}_{i}']['conv']['kernel']"
              for b, n in enumerate(convs) for i in range(n)}
  expected |= {f"['backbone']['dec{j}_{i}']['conv']['kernel']"
               for j, n in enumerate(reversed(convs)) for i in range(n)}
  assert len(expected) == 26
  # The attention feature extractors shared by the tasks.
  expected |= {f"['shared_attention_{part}{b}']['conv']['kernel']"
               for part in ("enc", "dec") for b in range(5)}
  # The task attention masks: two 1x1 convolutions per block, task and encoder/decoder.
  expected |= {f"['task{k}_attention_{part}{b}']['conv{i}']['kernel']"
               for k in range(3) for part in ("enc", "dec") for b in range(5) for i in (0, 1)}
  assert len(expected) == 26 + 10 + 60
  kernels = {p for p, x in _keystrs(params).items() if p.endswith("['kernel']")}
  # Everything else with a kernel is one of the three prediction layers (two convs each).
  assert kernels - expected == {f"['head_{k}']['conv{i}']['kernel']"
                                for k in range(3) for i in (0, 1)}
  return expected


def _selected(params):
  return {path for path, keep in _keystrs(
      jax.tree_util.tree_map_with_path(default_include, params)).items() if keep}


def test_default_pruning_rule_selects_every_convolution_but_the_prediction_layers(small):
  _, variables, _ = small
  params = variables["params"]
  assert _selected(params) == _reference_prunable(params)
  # What stays dense: the prediction layers, and every bias and batch-norm parameter.
  dense = [p for p, x in _keystrs(params).items() if p not in _selected(params)]
  assert all(p.startswith("['head_") or _keystrs(params)[p].ndim == 1 for p in dense)


def test_full_size_prunable_set_and_both_ratios_at_97_5_percent():
  """Full-size MTAN on 288x384 NYUv2 images, shapes only: the reference's prunable set."""
  model = MultiTaskAttentionNet(NUM_OUTPUTS)
  images = jax.ShapeDtypeStruct((2, 288, 384, 3), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.key(0), images)["params"]
  prunable = _reference_prunable(params)
  assert _selected(params) == prunable

  stats = planned_summary(params, 0.975)
  # The same counts by hand: magnitude_masks keeps n - floor(0.975 n + 0.5) of each leaf.
  sizes = {p: int(np.prod(x.shape)) for p, x in _keystrs(params).items()}
  prunable_size = sum(sizes[p] for p in prunable)
  kept = sum(n - math.floor(0.975 * n + 0.5) for p, n in sizes.items() if p in prunable)
  total = sum(sizes.values())
  dense_part = total - prunable_size
  assert (stats["total_size"], stats["prunable_size"]) == (total, prunable_size)
  assert stats["prunable_nonzero"] == kept
  assert stats["total_nonzero"] == kept + dense_part
  assert stats["prunable_compression_ratio"] == pytest.approx(prunable_size / kept)
  assert stats["whole_model_compression_ratio"] == pytest.approx(total / (kept + dense_part))
  assert stats["whole_model_cap"] == pytest.approx(total / dense_part)
  # The attention convolutions are a fifth of the model: pruned, as in the reference.
  attention = sum(n for p, n in sizes.items() if p.startswith("['task"))
  assert attention > 8_000_000
  assert 43_000_000 < total < 45_000_000
  print(f"\nMTAN (NYUv2, 288x384), 97.5 % of the prunable weights removed: "
        f"{stats['prunable_compression_ratio']:.2f}x prunable-part compression "
        f"({prunable_size:,} prunable of {total:,} parameters), "
        f"{stats['whole_model_compression_ratio']:.2f}x whole-model compression; "
        f"the {dense_part:,} dense parameters cap it at {stats['whole_model_cap']:.1f}x.")
  assert stats["prunable_compression_ratio"] == pytest.approx(40.0, rel=1e-3)
  assert 30.0 < stats["whole_model_compression_ratio"] < 40.0


def test_full_size_shapes_and_backbone_size_match_segnet():
  model = MultiTaskAttentionNet()
  images = jax.ShapeDtypeStruct((2, 288, 384, 3), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), images)
  outputs = jax.eval_shape(model.apply, shapes, images)
  assert [y.shape for y in outputs] == [(2, 288, 384, n) for n in (13, 1, 3)]
  backbone = shapes["params"]["backbone"]
  kernels = [x.shape for p, x in _keystrs(backbone).items() if p.endswith("['kernel']")]
  encoder = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
             (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
  decoder = [(512, 512), (512, 512), (512, 512), (512, 256), (256, 256), (256, 256),
             (256, 128), (128, 128), (128, 128), (128, 64), (64, 64), (64, 64), (64, 64)]
  assert sorted(kernels) == sorted((3, 3) + c for c in encoder + decoder)


def test_bad_input_size_and_configuration_raise():
  model = MultiTaskAttentionNet(NUM_OUTPUTS, filters=SMALL_FILTERS)
  with pytest.raises(ValueError, match=r"\(2, 32, 48, 3\)"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 32, 48, 3)))
  with pytest.raises(ValueError, match=r"\(2, 16, 64, 3\)"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 16, 64, 3)))
  with pytest.raises(ValueError, match=r"\(32, 64, 3\)"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((32, 64, 3)))
  with pytest.raises(ValueError, match="normalize"):
    jax.eval_shape(MultiTaskAttentionNet((13, 1)).init, jax.random.key(0), jnp.zeros(SHAPE))
  with pytest.raises(ValueError, match="filters must hold at least one integer"):
    jax.eval_shape(MultiTaskAttentionNet(filters=()).init, jax.random.key(0), jnp.zeros(SHAPE))
  # Four blocks of filters need four of convolutions.
  with pytest.raises(ValueError, match=r"convs_per_block must be 4 integers"):
    jax.eval_shape(MultiTaskAttentionNet(filters=(8, 8, 8, 8)).init, jax.random.key(0),
                   jnp.zeros(SHAPE))


def test_a_shallower_mtan_has_as_many_blocks_and_needs_images_divisible_by_fewer_poolings():
  model = MultiTaskAttentionNet(NUM_OUTPUTS, filters=(4, 8), convs_per_block=(2, 1))
  images = jnp.zeros((2, 12, 8, 3))  # 2 poolings: multiples of 4
  shapes = jax.eval_shape(model.init, jax.random.key(0), images)["params"]
  assert sorted(shapes["backbone"]) == ["dec0_0", "dec1_0", "dec1_1", "enc0_0", "enc0_1",
                                        "enc1_0"]
  assert {k for k in shapes if k.startswith("task0_")} == {
      "task0_attention_enc0", "task0_attention_enc1", "task0_attention_dec0",
      "task0_attention_dec1"}
  # The decoder mirrors the encoder's widths; the encoder's feature extractors widen to the
  # next block's.
  assert shapes["backbone"]["dec0_0"]["conv"]["kernel"].shape == (3, 3, 8, 4)
  assert shapes["shared_attention_enc0"]["conv"]["kernel"].shape[-1] == 8
  outputs = jax.eval_shape(model.apply, jax.eval_shape(model.init, jax.random.key(0), images),
                           images)
  assert [y.shape for y in outputs] == [(2, 12, 8, n) for n in NUM_OUTPUTS]
  assert mtan.size_multiple((4, 8)) == 4 and mtan.size_multiple() == mtan.SIZE_MULTIPLE == 32
  with pytest.raises(ValueError, match=r"multiples of 4 .*\(2, 6, 8, 3\)"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 6, 8, 3)))


def test_train_mode_updates_batch_stats_with_momentum_0_9(gradients):
  variables, images, updates = gradients.variables, gradients.images, gradients.updates
  old, new = _keystrs(variables["batch_stats"]), _keystrs(updates["batch_stats"])
  assert old.keys() == new.keys()
  unchanged = [p for p in old if np.allclose(old[p], new[p])]
  assert not unchanged
  # The first convolution's batch norm, in closed form.
  kernel = variables["params"]["backbone"]["enc0_0"]["conv"]["kernel"]
  conv = jax.lax.conv_general_dilated(images, kernel, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  stats = updates["batch_stats"]["backbone"]["enc0_0"]["bn"]
  np.testing.assert_allclose(stats["mean"], 0.1 * jnp.mean(conv, axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * jnp.var(conv, axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-6)


def test_jitted_gradient_is_finite_and_reaches_every_parameter(gradients):
  loss, grads = gradients.loss, gradients.grads
  assert "enc0_1" in grads["backbone"] and "dec1_1" in grads["backbone"]  # the second convs
  assert np.isfinite(loss) and loss > 0
  for path, g in _keystrs(grads).items():
    assert np.all(np.isfinite(g)), path
    assert np.any(g != 0), path


@pytest.mark.parametrize("mode", ["unrolled", "vmap"])
def test_every_per_task_gradient_mode_gives_each_tasks_own_gradient(gradients, mode):
  rows = gradients.rows[mode]
  for k, own in enumerate(gradients.separate):
    jax.tree.map(lambda r, g, k=k: np.testing.assert_allclose(r[k], g, rtol=2e-5, atol=2e-6),
                 rows, own)
  # A task's own modules get nothing from the other tasks: their rows are exactly zero.
  for k in range(len(NUM_OUTPUTS)):
    for j in range(len(NUM_OUTPUTS)):
      for module in (f"head_{k}", f"task{k}_attention_enc0", f"task{k}_attention_dec1"):
        reached = [bool(np.any(r[j] != 0)) for r in jax.tree.leaves(rows[module])]
        assert (any(reached) if j == k else not any(reached)), (module, j)
