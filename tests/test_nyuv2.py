"""Tests of the NYUv2 loader (layout checks, reading, augmentation) and the dense-task metrics."""
from __future__ import annotations

import math
import shutil

import jax
import numpy as np
import pytest

from mmcompress import problems
from mmcompress.problems.nyuv2 import tasks as dense_tasks
from mmcompress.problems.nyuv2 import data as nyuv2

H, W = 16, 24


@pytest.fixture
def root(tmp_path):
  return nyuv2.write_synthetic(tmp_path / "nyuv2", 3, 2, height=H, width=W, seed=1)


def check(root, **kwargs):
  return nyuv2.check_layout(root, height=H, width=W, **kwargs)


def example_of(label=None, depth=None, seed=0):
  rng = np.random.default_rng(seed)
  normal = rng.normal(size=(H, W, 3))
  normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
  return {
      "image": rng.uniform(size=(H, W, 3)).astype(np.float32),
      "label": (rng.integers(-1, 13, (H, W)) if label is None else label).astype(np.int32),
      "depth": (rng.uniform(1, 5, (H, W, 1)) if depth is None else depth).astype(np.float32),
      "normal": normal.astype(np.float32),
  }


# ----------------------------------------------------------------------------- the loader


def test_synthetic_directory_passes_the_checks(root):
  assert check(root) == {"train": 3, "val": 2}
  assert nyuv2.TASKS == dense_tasks.DENSE_TASKS
  assert nyuv2.NUM_CLASSES == 13


def test_source_yields_documented_shapes_and_keeps_invalid_pixels(root):
  source = nyuv2.NYUv2Source(root, "train", height=H, width=W)
  assert len(source) == 3
  expected = {"image": ((H, W, 3), np.float32), "label": ((H, W), np.int32),
              "depth": ((H, W, 1), np.float32), "normal": ((H, W, 3), np.float32)}
  for i in range(3):
    example = source[i]
    assert {k: (v.shape, v.dtype) for k, v in example.items()} == expected
    raw = {k: np.load(root / "train" / k / f"{i}.npy") for k in nyuv2.MAPS}
    np.testing.assert_array_equal(example["image"], raw["image"].astype(np.float32))
    np.testing.assert_array_equal(example["label"], raw["label"].astype(np.int32))
    np.testing.assert_array_equal(example["depth"], raw["depth"])
    np.testing.assert_array_equal(example["normal"], raw["normal"])
    # Every kind of invalid pixel is present, and kept.
    assert np.any(example["label"] == -1) and np.all(example["label"][:, 0] == -1)
    assert np.any(example["depth"] == 0)
    assert np.any(np.all(example["normal"] == 0, axis=-1))
    assert set(np.unique(example["label"])) <= set(range(-1, 13))
  np.testing.assert_array_equal(source[-1]["image"], source[2]["image"])
  first = source[1]["image"]  # a fresh array: writing into it leaves the next read as it was
  first[...] = -7.0
  assert not np.any(source[1]["image"] == -7.0)
  with pytest.raises(IndexError):
    source[3]


def test_load_batch_stacks_and_validates_indices(root):
  source = nyuv2.NYUv2Source(root, "val", height=H, width=W)
  batch = nyuv2.load_batch(source, [1, 0, 1])
  assert batch["image"].shape == (3, H, W, 3) and batch["label"].dtype == np.int32
  np.testing.assert_array_equal(batch["label"][0], source[1]["label"])
  np.testing.assert_array_equal(batch["depth"][1], source[0]["depth"])
  first = nyuv2.load_batch(source, [0, 1], np.random.default_rng(5))
  again = nyuv2.load_batch(source, [0, 1], np.random.default_rng(5))
  for kind in nyuv2.MAPS:
    assert first[kind].shape == batch[kind][:2].shape
    np.testing.assert_array_equal(first[kind], again[kind])
  for bad in ([], [2], [-1], [0.5]):
    with pytest.raises(ValueError, match="indices"):
      nyuv2.load_batch(source, bad)
  with pytest.raises(ValueError, match="rng"):
    nyuv2.load_batch(source, [0], rng=5)


def test_scale_one_without_flip_is_the_identity():
  example = example_of()
  out = nyuv2.rescale_crop_flip(example, scale=1.0, top=0, left=0, flip=False)
  for kind in nyuv2.MAPS:
    np.testing.assert_array_equal(out[kind], example[kind])


def test_flip_mirrors_every_map_and_negates_normal_x():
  example = example_of()
  out = nyuv2.rescale_crop_flip(example, scale=1.0, top=0, left=0, flip=True)
  for kind in ("image", "label", "depth"):
    np.testing.assert_array_equal(out[kind], example[kind][:, ::-1])
  np.testing.assert_array_equal(out["normal"][..., 0], -example["normal"][:, ::-1, 0])
  np.testing.assert_array_equal(out["normal"][..., 1:], example["normal"][:, ::-1, 1:])


@pytest.mark.parametrize("scale", [1.2, 1.5])
def test_rescale_divides_depth_by_the_scale_and_keeps_invalid_zeros(scale):
  depth = np.full((H, W, 1), 2.0)
  depth[::3, ::2] = 0.0
  out = nyuv2.rescale_crop_flip(example_of(depth=depth), scale=scale, top=1, left=2, flip=False)
  values = np.unique(out["depth"])
  np.testing.assert_allclose(values, [0.0, 2.0 / scale], rtol=1e-6)
  assert out["depth"].shape == (H, W, 1) and out["depth"].dtype == np.float32


def test_rescale_is_a_crop_then_a_resize():
  scale, top, left = 1.5, 3, 5
  crop_h, crop_w = nyuv2.crop_size(H, W, scale)
  assert (crop_h, crop_w) == (10, 16)
  rows, cols = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
  example = example_of()
  # A linear ramp stays a linear ramp under aligned-corners bilinear resizing.
  example["image"] = np.stack([rows / 100, cols / 100, 0 * rows + 0.5], -1).astype(np.float32)
  example["label"] = ((rows + cols) % 14 - 1).astype(np.int32)
  out = nyuv2.rescale_crop_flip(example, scale=scale, top=top, left=left, flip=False)
  src_rows = top + np.arange(H) * (crop_h - 1) / (H - 1)
  src_cols = left + np.arange(W) * (crop_w - 1) / (W - 1)
  np.testing.assert_allclose(out["image"][..., 0], np.repeat(src_rows[:, None] / 100, W, 1),
                             atol=1e-6)
  np.testing.assert_allclose(out["image"][..., 1], np.repeat(src_cols[None, :] / 100, H, 0),
                             atol=1e-6)
  # Nearest neighbour upsampling: every label of the window, and nothing else, appears.
  window = example["label"][top:top + crop_h, left:left + crop_w]
  assert set(np.unique(out["label"])) == set(np.unique(window))
  assert out["label"][0, 0] == window[0, 0] and out["label"][-1, -1] == window[-1, -1]
  with pytest.raises(ValueError, match="top"):
    nyuv2.rescale_crop_flip(example, scale=scale, top=H - crop_h + 1, left=0, flip=False)


def test_augment_keeps_shapes_labels_and_scales_depth():
  label = np.random.default_rng(0).integers(0, 13, (H, W))
  label[:, :12] = -1  # every window (at least 16 of 24 columns, left <= 8) holds columns 8..11
  example = example_of(label=label, depth=np.full((H, W, 1), 3.0))
  example["depth"][0, 0] = 0.0
  rng = np.random.default_rng(0)
  seen_scales = set()
  for _ in range(40):
    out = nyuv2.augment(example, rng)
    for kind in nyuv2.MAPS:
      assert out[kind].shape == example[kind].shape
      assert out[kind].dtype == example[kind].dtype
    assert set(np.unique(out["label"])) <= set(range(-1, 13))
    assert np.any(out["label"] == -1)
    valid = out["depth"][out["depth"] != 0]
    (scale,) = {3.0 / v for v in np.unique(valid)}
    seen_scales.add(min(nyuv2.SCALES, key=lambda s: abs(s - scale)))
    np.testing.assert_allclose(scale, min(nyuv2.SCALES, key=lambda s: abs(s - scale)),
                               rtol=1e-6)
    norm = np.linalg.norm(out["normal"], axis=-1)
    np.testing.assert_allclose(norm, 1.0, atol=1e-5)
  assert seen_scales == set(nyuv2.SCALES)
  a = nyuv2.augment(example, np.random.default_rng(7))
  b = nyuv2.augment(example, np.random.default_rng(7))
  for kind in nyuv2.MAPS:
    np.testing.assert_array_equal(a[kind], b[kind])


# ------------------------------------------------------------------------- layout errors


def test_missing_root_says_how_to_pass_it(tmp_path):
  with pytest.raises(ValueError, match="--config.data_dir") as error:
    check(tmp_path / "nowhere")
  assert "nowhere" in str(error.value)


def test_missing_subdirectory_is_named(root):
  shutil.rmtree(root / "val" / "depth")
  with pytest.raises(ValueError, match=r"val/depth: missing directory"):
    check(root)


def test_missing_file_is_named(root):
  (root / "train" / "label" / "1.npy").unlink()
  with pytest.raises(ValueError, match=r"train/label/1\.npy: missing file"):
    check(root)
  shutil.copy(root / "train" / "label" / "0.npy", root / "train" / "label" / "1.npy")
  shutil.copy(root / "val" / "normal" / "1.npy", root / "val" / "normal" / "2.npy")
  with pytest.raises(ValueError, match=r"val/image/2\.npy: missing file"):
    check(root)


def test_wrong_shape_is_named(root):
  np.save(root / "train" / "image" / "2.npy", np.zeros((3, H, W), np.float32))
  with pytest.raises(ValueError, match=r"train/image/2\.npy.*\(16, 24, 3\).*channels-first"):
    check(root, sample=0)
  with pytest.raises(ValueError, match=r"\(288, 384, 3\)"):
    nyuv2.check_layout(root)


@pytest.mark.parametrize("bad", [13, -2])
def test_bad_label_value_names_file_and_value(root, bad):
  label = np.load(root / "val" / "label" / "1.npy")
  label[4, 5] = bad
  np.save(root / "val" / "label" / "1.npy", label)
  with pytest.raises(ValueError, match=rf"val/label/1\.npy: label holds the value\(s\) {bad}\b"):
    check(root)


def test_int_labels_are_accepted_and_fractional_ones_are_not(root):
  path = root / "train" / "label" / "0.npy"
  np.save(path, np.load(path).astype(np.int64))
  assert check(root) == {"train": 3, "val": 2}
  assert nyuv2.NYUv2Source(root, "train", height=H, width=W)[0]["label"].dtype == np.int32
  label = np.load(path).astype(np.float32)
  label[0, 0] = 2.5
  np.save(path, label)
  with pytest.raises(ValueError, match=r"train/label/0\.npy.*2\.5"):
    check(root)


def test_image_above_one_is_rejected(root):
  np.save(root / "train" / "image" / "1.npy", np.full((H, W, 3), 255.0, np.float32))
  with pytest.raises(ValueError, match=r"train/image/1\.npy: image values span \[255, 255\]"):
    check(root)


def test_bad_normals_and_depths_are_rejected(root):
  normal = np.load(root / "train" / "normal" / "0.npy")
  normal[2, 3] = [0.5, 0.0, 0.0]
  np.save(root / "train" / "normal" / "0.npy", normal)
  with pytest.raises(ValueError, match=r"train/normal/0\.npy: 1 normal.*pixel \(2, 3\)"):
    check(root)
  shutil.copy(root / "train" / "normal" / "1.npy", root / "train" / "normal" / "0.npy")
  np.save(root / "val" / "depth" / "0.npy", -np.ones((H, W, 1), np.float32))
  with pytest.raises(ValueError, match=r"val/depth/0\.npy: depth holds the value -1"):
    check(root)


def test_sample_limits_the_value_checks(root):
  image = np.load(root / "train" / "image" / "2.npy")
  image[0, 0, 0] = 2.0
  np.save(root / "train" / "image" / "2.npy", image)
  assert check(root, sample=0) == {"train": 3, "val": 2}
  assert check(root, splits=("val",), sample="all") == {"val": 2}
  for sample in (2, "all"):  # two samples spread over the split include the last file
    with pytest.raises(ValueError, match=r"train/image/2\.npy"):
      check(root, sample=sample)
  with pytest.raises(ValueError, match="sample"):
    check(root, sample="some")


def test_write_synthetic_refuses_an_existing_split(root):
  with pytest.raises(ValueError, match="already exists"):
    nyuv2.write_synthetic(root, 1, 1, height=H, width=W)
  with pytest.raises(ValueError, match="num_val"):
    nyuv2.write_synthetic(root.parent / "other", 1, 0, height=H, width=W)


# ------------------------------------------------------------------------------ metrics


def tiny_segmentation():
  """2×2 pixels, 4 classes (class 3 never occurs nor is predicted), one ignored pixel."""
  ln2, ln3 = math.log(2), math.log(3)
  logits = np.array([[[0, 0, 0, -50], [ln2, 0, 0, -50]],
                     [[5, 0, 0, -50], [0, ln3, 0, -50]]], np.float32)[None]
  label = np.array([[[1, 0], [-1, 2]]])
  return logits, label


def test_segmentation_loss_matches_hand_cross_entropy():
  logits, label = tiny_segmentation()
  # Pixels: softmax (1/3,1/3,1/3) label 1; (1/2,1/4,1/4) label 0; (1/5,3/5,1/5) label 2.
  expected = (math.log(3) + math.log(2) + math.log(5)) / 3
  np.testing.assert_allclose(dense_tasks.segmentation_loss(logits, label), expected, rtol=1e-5)
  np.testing.assert_allclose(jax.jit(dense_tasks.segmentation_loss)(logits, label), expected,
                             rtol=1e-5)
  assert float(dense_tasks.segmentation_loss(logits, np.full((1, 2, 2), -1))) == 0.0


def test_confusion_miou_and_pixel_accuracy_by_hand():
  logits, label = tiny_segmentation()
  confusion = np.asarray(dense_tasks.segmentation_sums(logits, label))
  expected = np.zeros((4, 4), int)
  expected[1, 0] = expected[0, 0] = expected[2, 1] = 1  # argmax of a tie is the first class
  np.testing.assert_array_equal(confusion, expected)
  assert confusion.dtype == np.int32
  # IoU: class 0 = 1/2, class 1 = 0/2, class 2 = 0/1; class 3 has no union and is excluded.
  assert dense_tasks.miou(confusion) == pytest.approx(1 / 6)
  assert dense_tasks.pixel_accuracy(confusion) == pytest.approx(1 / 3)
  with pytest.raises(ValueError, match="no labelled pixel"):
    dense_tasks.miou(np.zeros((4, 4)))


def test_depth_loss_and_sums_by_hand():
  pred = np.array([[1.0, 3.0], [5.0, 7.0]], np.float32).reshape(1, 2, 2, 1)
  depth = np.array([[2.0, 0.0], [4.0, 7.0]], np.float32).reshape(1, 2, 2, 1)
  # Valid pixels: errors 1, 1, 0; relative 1/2, 1/4, 0.
  np.testing.assert_allclose(dense_tasks.depth_loss(pred, depth), 2 / 3, rtol=1e-6)
  sums = dense_tasks.depth_sums(pred, depth)
  np.testing.assert_allclose([sums.abs_err_sum, sums.rel_err_sum], [2.0, 0.75], rtol=1e-6)
  assert int(sums.count) == 3
  metrics = dense_tasks.finalize({"depth": sums})
  assert metrics == pytest.approx({"depth_abs_err": 2 / 3, "depth_rel_err": 0.25})


def tiny_normals():
  c, s = math.cos(math.radians(20)), math.sin(math.radians(20))
  x = [1.0, 0.0, 0.0]
  pred = [[2, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 5], [-1, 0, 0], [c, s, 0], [0, 0, 0]]
  normal = [x, x, x, [0, 0, 0], x, x, [0, 0, 1]]
  # Valid angles: 0, 90, 45, 180, 20 and 90 (a zero prediction); the 4th pixel is invalid.
  return (np.array(pred, np.float32).reshape(1, 1, 7, 3),
          np.array(normal, np.float32).reshape(1, 1, 7, 3))


def test_normal_loss_and_angle_metrics_by_hand():
  pred, normal = tiny_normals()
  cosines = [1, 0, math.sqrt(0.5), -1, math.cos(math.radians(20)), 0]
  np.testing.assert_allclose(dense_tasks.normal_loss(pred, normal), 1 - np.mean(cosines),
                             rtol=1e-6)
  angles = np.asarray(dense_tasks.angle_errors(pred, normal)[0, 0])
  np.testing.assert_allclose(np.delete(angles, 3), [0, 90, 45, 180, 20, 90], atol=1e-4)
  metrics = dense_tasks.finalize({"normal": dense_tasks.normal_sums(pred, normal)})
  assert metrics["normal_mean"] == pytest.approx((0 + 90 + 45 + 180 + 20 + 90) / 6, abs=1e-4)
  assert metrics["normal_median"] == pytest.approx((45 + 90) / 2, abs=0.0051)
  assert metrics["normal_11.25"] == pytest.approx(1 / 6)
  assert metrics["normal_22.5"] == pytest.approx(2 / 6)
  assert metrics["normal_30"] == pytest.approx(2 / 6)
  odd = dense_tasks.finalize({"normal": dense_tasks.normal_sums(pred[:, :, :6], normal[:, :, :6])})
  assert odd["normal_median"] == pytest.approx(45, abs=0.0051)


def test_histogram_median_is_within_its_stated_precision():
  rng = np.random.default_rng(0)
  pred = rng.normal(size=(2, 9, 11, 3)).astype(np.float32)
  normal = pred + rng.normal(scale=0.4, size=pred.shape).astype(np.float32)
  normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
  for count in (198, 197):  # an even and an odd number of pixels
    p, g = pred.reshape(1, 1, -1, 3)[:, :, :count], normal.reshape(1, 1, -1, 3)[:, :, :count]
    angles = np.asarray(dense_tasks.angle_errors(p, g)).ravel()
    median = dense_tasks.finalize({"normal": dense_tasks.normal_sums(p, g)})["normal_median"]
    assert abs(median - np.median(angles)) <= 0.005 + 1e-4


def random_batch(seed, batch=4):
  rng = np.random.default_rng(seed)
  label = rng.integers(-1, 13, (batch, 5, 6))
  depth = rng.uniform(0.5, 5, (batch, 5, 6, 1)) * (rng.random((batch, 5, 6, 1)) > 0.2)
  normal = rng.normal(size=(batch, 5, 6, 3)) * (rng.random((batch, 5, 6, 1)) > 0.2)
  normal /= np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-12)
  targets = {"label": label, "depth": depth.astype(np.float32),
             "normal": normal.astype(np.float32)}
  predictions = {"segmentation": rng.normal(size=(batch, 5, 6, 13)).astype(np.float32),
                 "depth": rng.uniform(0.5, 5, (batch, 5, 6, 1)).astype(np.float32),
                 "normal": rng.normal(size=(batch, 5, 6, 3)).astype(np.float32)}
  return predictions, targets


def test_sums_of_two_half_batches_equal_the_whole_batch():
  predictions, targets = random_batch(0)
  traces = []

  def sums_fn(p, t, mask):
    traces.append(1)
    return dense_tasks.dense_sums(p, t, mask)

  jitted = jax.jit(sums_fn)
  whole = dense_tasks.add_sums(None, jitted(predictions, targets, np.ones(4, bool)))
  total = None
  for part in (slice(0, 2), slice(2, 4)):
    # Each half padded back to 4 with masked-out copies: same shapes, no recompilation.
    pad = lambda x: np.concatenate([x[part], x[part]])
    total = dense_tasks.add_sums(total, jitted(
        jax.tree.map(pad, predictions), jax.tree.map(pad, targets),
        np.array([True, True, False, False])))
  assert len(traces) == 1
  np.testing.assert_array_equal(total["segmentation"], whole["segmentation"])
  for task in ("depth", "normal"):
    for a, b in zip(total[task], whole[task]):
      if np.issubdtype(a.dtype, np.integer):
        np.testing.assert_array_equal(a, b)
      else:
        np.testing.assert_allclose(a, b, rtol=1e-6)
  final_total, final_whole = dense_tasks.finalize(total), dense_tasks.finalize(whole)
  assert set(final_whole) == set(dense_tasks.HIGHER_IS_BETTER)
  assert final_total == pytest.approx(final_whole, rel=1e-6)
  # The whole-batch metrics against a direct NumPy computation.
  valid = targets["depth"] != 0
  error = np.abs(predictions["depth"] - targets["depth"])[valid]
  assert final_whole["depth_abs_err"] == pytest.approx(error.mean(), rel=1e-5)
  assert final_whole["depth_rel_err"] == pytest.approx(
      (error / targets["depth"][valid]).mean(), rel=1e-5)
  labelled = targets["label"] >= 0
  hits = predictions["segmentation"].argmax(-1) == targets["label"]
  assert final_whole["pixel_acc"] == pytest.approx(hits[labelled].mean())


def test_higher_is_better_directions():
  higher = dense_tasks.HIGHER_IS_BETTER
  assert [k for k, v in higher.items() if v] == [
      "miou", "pixel_acc", "normal_11.25", "normal_22.5", "normal_30"]
  with pytest.raises(TypeError):
    higher["miou"] = False


def test_shape_errors_name_the_argument():
  with pytest.raises(ValueError, match="label must have shape"):
    dense_tasks.segmentation_loss(np.zeros((1, 2, 2, 13)), np.zeros((1, 2, 3)))
  with pytest.raises(ValueError, match="depth must have the shape"):
    dense_tasks.depth_sums(np.zeros((1, 2, 2, 1)), np.zeros((1, 2, 2)))
  with pytest.raises(ValueError, match=r"pred must have shape \(B, H, W, 3\)"):
    dense_tasks.normal_loss(np.zeros((1, 2, 2, 1)), np.zeros((1, 2, 2, 1)))
  with pytest.raises(ValueError, match="sums must be a mapping"):
    dense_tasks.finalize({"segmentaton": np.eye(13)})


def test_normal_loss_gradient_is_finite_at_a_zero_prediction():
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from mmcompress.problems.nyuv2 import tasks as dense_tasks  # pylint: disable=import-outside-toplevel
  normal = jnp.zeros((1, 2, 2, 3)).at[..., 2].set(1.0)
  pred = jnp.zeros((1, 2, 2, 3)).at[0, 0, 0].set(jnp.array([0.0, 0.6, 0.8]))
  grad = jax.grad(dense_tasks.normal_loss)(pred, normal)
  assert bool(jnp.all(jnp.isfinite(grad)))
  # Where the prediction is not zero the gradient is that of 1 − mean cos: nonzero.
  assert float(jnp.abs(grad[0, 0, 0]).sum()) > 0


# ----------------------------------------------------------------------------- mtan averaging


def two_batches_and_padding():
  """Six rows of 1×3 maps: two batches of 2 real rows, then 2 padding rows (huge errors).

  Depth (target 2 where valid, 0 where not), absolute errors per row:
    batch 1: row 0 [1, 2, -], row 1 [3, -, -]  -> mean 2 over 3 pixels;
    batch 2: row 2 [6, -, -], row 3 [-, -, -]  -> mean 6 over 1 pixel.
  Normal angles (target (0, 0, 1) where valid, zero where not), in degrees:
    batch 1: row 0 [10, 20, 40], row 1 [-, -, -] -> mean 70/3, median 20;
    batch 2: row 2 [5, -, -],    row 3 [25, -, -] -> mean 15, median 15.
  """
  valid_depth = np.array([[1, 1, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1], [1, 1, 1]], bool)
  error = np.array([[1, 2, 0], [3, 0, 0], [6, 0, 0], [0, 0, 0], [100] * 3, [100] * 3], float)
  depth = np.where(valid_depth, 2.0, 0.0)
  pred_depth = np.where(valid_depth, depth + error, 50.0)  # invalid pixels: any prediction
  angle = np.array([[10, 20, 40], [0, 0, 0], [5, 0, 0], [25, 0, 0], [170] * 3, [170] * 3],
                   float)
  valid_normal = np.array([[1, 1, 1], [0, 0, 0], [1, 0, 0], [1, 0, 0], [1, 1, 1], [1, 1, 1]],
                          bool)
  radians = np.radians(angle)
  pred_normal = np.stack([np.sin(radians), np.zeros_like(radians), np.cos(radians)], -1)
  normal = np.where(valid_normal[..., None], np.array([0.0, 0.0, 1.0]), 0.0)
  as_maps = lambda x: np.asarray(x, np.float32).reshape((6, 1, 3, -1))
  predictions = {"depth": as_maps(pred_depth), "normal": as_maps(pred_normal)}
  batch = {"depth": as_maps(depth), "normal": as_maps(normal)}
  return predictions, batch, np.array([True] * 4 + [False] * 2)


def test_mtan_averaging_by_hand_with_two_batches():
  predictions, batch, real = two_batches_and_padding()
  means = jax.jit(lambda p, b, m: dense_tasks.batch_means(p, b, m, batch_size=2))(
      predictions, batch, real)
  mtan = dense_tasks.finalize_batch_means(dense_tasks.add_sums(None, means))
  assert int(means["depth"].batches) == 2 and int(means["normal"].batches) == 2
  # Per batch, then the mean over the two batches.
  assert mtan["depth_abs_err"] == pytest.approx((2 + 6) / 2, rel=1e-6)          # 4
  assert mtan["depth_rel_err"] == pytest.approx((1 + 3) / 2, rel=1e-6)          # 2 (depth 2)
  assert mtan["normal_mean"] == pytest.approx((70 / 3 + 15) / 2, abs=1e-3)      # 19.1667
  assert mtan["normal_median"] == pytest.approx((20 + 15) / 2, abs=1e-3)        # 17.5
  assert mtan["normal_11.25"] == pytest.approx((1 / 3 + 1 / 2) / 2, rel=1e-6)   # 5/12
  assert mtan["normal_22.5"] == pytest.approx((2 / 3 + 1 / 2) / 2, rel=1e-6)    # 7/12
  assert mtan["normal_30"] == pytest.approx((2 / 3 + 1) / 2, rel=1e-6)          # 5/6
  # The split averaging of the same pixels: every valid pixel weighs the same.
  split = dense_tasks.finalize(dense_tasks.dense_sums(predictions, batch, real))
  assert split["depth_abs_err"] == pytest.approx((1 + 2 + 3 + 6) / 4, rel=1e-6)  # 3
  assert split["depth_rel_err"] == pytest.approx(12 / 2 / 4, rel=1e-6)           # 1.5
  assert split["normal_mean"] == pytest.approx(100 / 5, abs=1e-3)                # 20
  assert split["normal_median"] == pytest.approx(20, abs=0.0051)                 # of 5,10,20,25,40
  assert [split[f"normal_{t}"] for t in ("11.25", "22.5", "30")] == pytest.approx(
      [2 / 5, 3 / 5, 4 / 5])
  # Batch by batch, accumulated on the host: the same as all at once.
  total = None
  for rows in (slice(0, 2), slice(2, 4), slice(4, 6)):
    part = dense_tasks.batch_means(jax.tree.map(lambda x: x[rows], predictions),
                                   jax.tree.map(lambda x: x[rows], batch), real[rows],
                                   batch_size=2)
    total = dense_tasks.add_sums(total, part)
  assert dense_tasks.finalize_batch_means(total) == pytest.approx(mtan, rel=1e-6)


def test_masked_median_is_numpy_median():
  rng = np.random.default_rng(0)
  for size in (1, 2, 5, 10):
    values = rng.normal(size=size + 3).astype(np.float32)
    valid = np.zeros(size + 3, bool)
    valid[rng.choice(size + 3, size, replace=False)] = True
    assert float(dense_tasks.masked_median(values, valid)) == pytest.approx(
        float(np.median(values[valid])), rel=1e-6)
  assert float(dense_tasks.masked_median(np.ones(4), np.zeros(4, bool))) == 0.0


def test_batch_means_checks_its_input():
  predictions, batch, real = two_batches_and_padding()
  with pytest.raises(ValueError, match="multiple of the averaging batch_size"):
    dense_tasks.batch_means(predictions, batch, real, batch_size=4)
  with pytest.raises(ValueError, match="targets"):
    dense_tasks.batch_means(predictions, {"depth": batch["depth"]}, real, batch_size=2)
  with pytest.raises(ValueError, match="no batch"):
    dense_tasks.finalize_batch_means(dense_tasks.add_sums(None, dense_tasks.batch_means(
        predictions, batch, np.zeros(6, bool), batch_size=2)))


def test_nyuv2_problem_mtan_mode_averages_per_pair_of_test_images(tmp_path):
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  from mmcompress.problems.nyuv2 import NYUv2Problem  # pylint: disable=import-outside-toplevel
  from mmcompress.train import loop, parallel, step  # pylint: disable=import-outside-toplevel

  class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, task_id=None, train=False):
      return nn.Conv(13, (1, 1))(x), nn.Conv(1, (1, 1))(x), nn.Conv(3, (1, 1))(x)

  root = nyuv2.write_synthetic(tmp_path / "nyuv2", 3, 4, height=H, width=W, seed=2)
  with pytest.raises(ValueError, match="metric_averaging"):
    NYUv2Problem(str(root), height=H, width=W, metric_averaging="batch")
  problems = {mode: NYUv2Problem(str(root), height=H, width=W, metric_averaging=mode)
              for mode in ("split", "mtan")}
  model, mesh = Tiny(), parallel.data_mesh()
  params = model.init(jax.random.key(0), problems["split"].example_input())["params"]

  def evaluate(mode, batch_size):
    problem = problems[mode]
    return loop.evaluate(problem, step.make_eval_step(problem, model, mesh), params, {},
                         "test", mesh, batch_size)

  mtan, mtan_4, split = evaluate("mtan", 2), evaluate("mtan", 4), evaluate("split", 4)
  # mtan averages per pair of images whatever the evaluation batch; split is pixel-weighted.
  assert mtan["all_metrics"] == pytest.approx(mtan_4["all_metrics"], rel=1e-5)
  images = nyuv2.load_batch(problems["mtan"].test_source, np.arange(4))
  _, depth, normal = model.apply({"params": params}, images["image"])
  angles = np.asarray(dense_tasks.angle_errors(normal, images["normal"]))
  valid_normal = np.any(images["normal"] != 0, axis=-1)
  valid_depth = images["depth"][..., 0] != 0
  errors = np.abs(np.asarray(depth) - images["depth"])[..., 0]
  pairs = (slice(0, 2), slice(2, 4))
  assert mtan["all_metrics"]["depth_abs_err"] == pytest.approx(
      np.mean([errors[p][valid_depth[p]].mean() for p in pairs]), rel=1e-5)
  assert mtan["all_metrics"]["normal_median"] == pytest.approx(
      np.mean([np.median(angles[p][valid_normal[p]]) for p in pairs]), rel=1e-5)
  assert split["all_metrics"]["depth_abs_err"] == pytest.approx(
      errors[valid_depth].mean(), rel=1e-5)
  for name in ("miou", "pixel_acc"):  # the confusion matrix in both modes
    assert mtan["all_metrics"][name] == split["all_metrics"][name]
  # Every metric of every task, 2 + 2 + 5, the primary one among them.
  assert {t: list(m) for t, m in mtan["task_metrics"].items()} == {
      t: list(dense_tasks.TASK_METRICS[t]) for t in dense_tasks.DENSE_TASKS}
  assert mtan["metrics"]["depth"] == mtan["task_metrics"]["depth"]["depth_abs_err"]
  assert problems["mtan"].all_higher_is_better["normal"]["normal_11.25"] is True
  assert "mtan" in problems["mtan"].metric_notes()[0]
  assert "split" in problems["split"].metric_notes()[0]
  with pytest.raises(ValueError, match="eval_batch_size=3 must be a multiple of 2"):
    evaluate("mtan", 3)


def test_config_chooses_the_averaging_and_an_unusable_eval_batch_fails_early(root):
  from experiments.configs import nyuv2 as nyu_config  # pylint: disable=import-outside-toplevel
  config = nyu_config.get_config()
  assert config.metric_averaging == "split"
  with config.unlocked():
    config.data_dir, config.height, config.width = str(root), H, W
    config.metric_averaging = "mtan"
  assert problems.get("nyuv2").from_config(config).metric_averaging == "mtan"
  with config.unlocked():
    config.eval_batch_size = 3
  with pytest.raises(ValueError, match="config.eval_batch_size=3 must be a multiple of 2"):
    problems.get("nyuv2").from_config(config)
  with config.unlocked():
    config.metric_averaging = "pixel"
  with pytest.raises(ValueError, match="metric_averaging must be one of"):
    problems.get("nyuv2").from_config(config)
