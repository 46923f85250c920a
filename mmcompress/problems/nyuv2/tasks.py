"""Losses and exact split metrics of the three dense tasks of NYUv2: segmentation, depth, normals.

The losses (docs/method.md §4) are means over the valid pixels of a batch, jittable:

* `segmentation_loss`: cross-entropy over the pixels whose label is a class (not ignored);
* `depth_loss`: |pred − depth| over the pixels whose depth is not 0;
* `normal_loss`: 1 − cosine between the L2-normalised prediction and the target normal, over
  the pixels whose normal is not all-zero.

The metrics are computed from *sums* per batch, never from per-batch means, so that a split
evaluated batch by batch (padding removed with ``example_mask``) gives exactly the metric of
the whole split at once:

>>> total = None                                                   # doctest: +SKIP
>>> for batch in batches:                                          # doctest: +SKIP
...   total = add_sums(total, jitted_dense_sums(model(batch), batch, batch["mask"]))
>>> finalize(total)                                                # doctest: +SKIP
{'miou': ..., 'pixel_acc': ..., 'depth_abs_err': ..., ...}

* segmentation: the confusion matrix (rows: true class, columns: predicted class), from which
  `miou` and `pixel_accuracy`;
* depth: `DepthSums` of absolute errors |p − d|, relative errors |p − d| / d and the count;
* normals: `NormalSums` with the sum of angle errors (their mean), the count below 11.25°,
  22.5° and 30° (exact), and a histogram of the angles in bins of 0.01° over [0°, 180°] for the
  median, which cannot be summed. The median read from the histogram (the middle bin's
  centre, the mean of the two middle bins' centres for an even count, as `numpy.median`)
  is within 0.005° of the exact median of the split's angles.

Definitions: angle errors are in degrees, atan2(‖p × g‖, p · g), which stays accurate for
small angles where arccos of a float32 cosine does not; a zero prediction counts as 90°.
mIoU is the mean IoU over the classes whose union (true or predicted pixels) is non-empty on
the split; a class that neither occurs nor is predicted is excluded rather than counted as 0
or 1. Pixel accuracy and the within-t° numbers are fractions in [0, 1], not percent. Depth
and normal errors are averaged over all valid pixels of the split (pixel-weighted), not per
image: the ``split`` averaging.

The ``mtan`` averaging computes the depth and normal metrics as MTAN's code and the paper's
reference code do: each metric over the valid pixels of one evaluation batch (their batch is 2
images; the median is the exact median of the batch's angles), then the plain mean over the
batches. `batch_means` gives the sums of these per-batch values for the groups of a larger
evaluation batch and `finalize_batch_means` divides them by the number of batches. The two
modes differ when batches hold different numbers of valid pixels; the segmentation metrics
come from the split's confusion matrix in both.

Within a batch the sums are int32 counts and float32 error sums; `add_sums` accumulates them
on the host as int64 and float64.
"""
from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from mmcompress.models.mtan import unit_vectors
from mmcompress.problems import base

__all__ = ["add_sums", "angle_errors", "ANGLE_THRESHOLDS", "batch_means", "BINS_PER_DEGREE",
           "dense_sums", "DENSE_TASKS", "DEPTH", "depth_loss", "depth_sums", "DepthBatchMeans",
           "DepthSums", "finalize", "finalize_batch_means", "HIGHER_IS_BETTER", "histogram_median",
           "masked_median", "miou", "NORMAL", "normal_l1_loss", "normal_loss", "normal_sums",
           "NormalBatchMeans", "NormalSums", "NUM_ANGLE_BINS", "pixel_accuracy", "SEGMENTATION",
           "segmentation_loss", "segmentation_sums", "TASK_METRICS"]

# Keys of `dense_sums` and `finalize`; the same names as `mmcompress.problems.nyuv2.data.TASKS`.
SEGMENTATION = "segmentation"
DEPTH = "depth"
NORMAL = "normal"
DENSE_TASKS = (SEGMENTATION, DEPTH, NORMAL)

ANGLE_THRESHOLDS = (11.25, 22.5, 30.0)
BINS_PER_DEGREE = 100
NUM_ANGLE_BINS = 180 * BINS_PER_DEGREE

# The metrics of each task, in the order `finalize` returns them.
TASK_METRICS = types.MappingProxyType({
    SEGMENTATION: ("miou", "pixel_acc"),
    DEPTH: ("depth_abs_err", "depth_rel_err"),
    NORMAL: ("normal_mean", "normal_median", "normal_11.25", "normal_22.5", "normal_30"),
})

HIGHER_IS_BETTER = types.MappingProxyType({
    "miou": True,
    "pixel_acc": True,
    "depth_abs_err": False,
    "depth_rel_err": False,
    "normal_mean": False,
    "normal_median": False,
    "normal_11.25": True,
    "normal_22.5": True,
    "normal_30": True,
})


class DepthSums(NamedTuple):
  """Depth error sums over the valid pixels (depth ≠ 0) of a batch or a split.

  Attributes:
    abs_err_sum: Σ |p − d|, a float scalar.
    rel_err_sum: Σ |p − d| / d, a float scalar.
    count: the number of valid pixels, an integer scalar.
  """
  abs_err_sum: Any
  rel_err_sum: Any
  count: Any


class NormalSums(NamedTuple):
  """Angle error sums over the valid pixels (normal not all-zero) of a batch or a split.

  Attributes:
    angle_sum: Σ angle, in degrees, a float scalar.
    count: the number of valid pixels, an integer scalar.
    within: (3,) integers, the number of pixels with angle < 11.25°, 22.5°, 30°.
    histogram: (18000,) integers, the number of pixels per 0.01° bin; bin b holds the angles
      in [b / 100, (b + 1) / 100) degrees (180° itself falls in the last bin).
  """
  angle_sum: Any
  count: Any
  within: Any
  histogram: Any


class DepthBatchMeans(NamedTuple):
  """Depth metrics of evaluation batches, each the mean over its valid pixels, summed.

  Attributes:
    abs_err: Σ over batches of (Σ |p − d| / count) of the batch, a float scalar.
    rel_err: Σ over batches of (Σ |p − d| / d / count) of the batch, a float scalar.
    batches: the number of batches with at least one valid pixel, an integer scalar.
  """
  abs_err: Any
  rel_err: Any
  batches: Any


class NormalBatchMeans(NamedTuple):
  """Angle metrics of evaluation batches, each over its valid pixels, summed over batches.

  Attributes:
    mean: Σ over batches of the batch's mean angle, in degrees.
    median: Σ over batches of the batch's median angle (the exact median, the mean of the
      two middle angles for an even count), in degrees.
    within: (3,) Σ over batches of the batch's fraction of angles < 11.25°, 22.5°, 30°.
    batches: the number of batches with at least one valid pixel, an integer scalar.
  """
  mean: Any
  median: Any
  within: Any
  batches: Any


def _dense_pair(pred: ArrayLike, target: ArrayLike, pred_name: str, target_name: str,
                channels: int) -> tuple[jax.Array, jax.Array]:
  pred, target = jnp.asarray(pred), jnp.asarray(target)
  if pred.ndim != 4 or pred.shape[-1] != channels:
    raise ValueError(f"{pred_name} must have shape (B, H, W, {channels}), got {pred.shape}.")
  if target.shape != pred.shape:
    raise ValueError(f"{target_name} must have the shape of {pred_name} {pred.shape}, got "
                     f"{target.shape}.")
  return pred.astype(jnp.float32), target.astype(jnp.float32)


def _segmentation_inputs(logits: ArrayLike, label: ArrayLike,
                         ignore: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  logits, label = jnp.asarray(logits), jnp.asarray(label)
  if logits.ndim != 4:
    raise ValueError(f"logits must have shape (B, H, W, C), got {logits.shape}.")
  if label.shape != logits.shape[:-1]:
    raise ValueError(f"label must have shape (B, H, W) = {logits.shape[:-1]}, got {label.shape}.")
  label = label.astype(jnp.int32)
  num_classes = logits.shape[-1]
  valid = (label != ignore) & (label >= 0) & (label < num_classes)
  return logits.astype(jnp.float32), label, valid


def _with_example_mask(valid: jax.Array, example_mask: ArrayLike | None) -> jax.Array:
  if example_mask is None:
    return valid
  example_mask = jnp.asarray(example_mask)
  if example_mask.shape != valid.shape[:1]:
    raise ValueError(f"example_mask must have shape (B,) = {valid.shape[:1]}, got "
                     f"{example_mask.shape}.")
  return valid & example_mask.astype(bool).reshape((-1,) + (1,) * (valid.ndim - 1))


def segmentation_loss(logits: ArrayLike, label: ArrayLike, ignore: int = -1) -> jax.Array:
  """Mean cross-entropy over the labelled pixels of a batch.

  Args:
    logits: (B, H, W, C) class scores.
    label: (B, H, W) integer classes; pixels equal to `ignore` or outside [0, C) are ignored.
    ignore: the label of unlabelled pixels.

  Returns:
    A float32 scalar: Σ_valid −log softmax(logits)[label] / #valid (0 if none is valid).
  """
  logits, label, valid = _segmentation_inputs(logits, label, ignore)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  picked = jnp.take_along_axis(log_probs, jnp.where(valid, label, 0)[..., None], axis=-1)
  return base.masked_mean(-picked[..., 0], valid)


def depth_loss(pred: ArrayLike, depth: ArrayLike) -> jax.Array:
  """Mean absolute error over the pixels with a measured depth.

  Args:
    pred: (B, H, W, 1) predicted depth.
    depth: (B, H, W, 1) target depth; 0 marks an invalid pixel.

  Returns:
    A float32 scalar: Σ_valid |pred − depth| / #valid (0 if none is valid).
  """
  pred, depth = _dense_pair(pred, depth, "pred", "depth", 1)
  return base.masked_mean(jnp.abs(pred - depth), depth != 0)



def normal_loss(pred: ArrayLike, normal: ArrayLike) -> jax.Array:
  """One minus the mean cosine similarity over the pixels with a target normal.

  The prediction is L2-normalised per pixel first (a zero prediction stays zero, cosine 0);
  the target is used as stored (unit vectors).

  Args:
    pred: (B, H, W, 3) predicted normals, any length.
    normal: (B, H, W, 3) target unit normals; an all-zero vector marks an invalid pixel.

  Returns:
    A float32 scalar: 1 − Σ_valid ⟨pred / ‖pred‖, normal⟩ / #valid (1 if none is valid).
  """
  pred, normal = _dense_pair(pred, normal, "pred", "normal", 3)
  valid = jnp.any(normal != 0, axis=-1)
  cosine = jnp.sum(unit_vectors(pred) * normal, axis=-1)
  return 1.0 - base.masked_mean(cosine, valid)


def normal_l1_loss(pred: ArrayLike, normal: ArrayLike) -> jax.Array:
  """The L1 distance between unit normals, summed over xyz, mean over pixels with a target.

  The normal loss of the reference's dynamic sparse training code; the prediction is
  L2-normalised per pixel first, as in `normal_loss`.

  Args:
    pred: (B, H, W, 3) predicted normals, any length.
    normal: (B, H, W, 3) target unit normals; an all-zero vector marks an invalid pixel.

  Returns:
    A float32 scalar: Σ_valid Σ_xyz |pred / ‖pred‖ − normal| / #valid (0 if none is valid).
  """
  pred, normal = _dense_pair(pred, normal, "pred", "normal", 3)
  valid = jnp.any(normal != 0, axis=-1)
  return base.masked_mean(jnp.sum(jnp.abs(unit_vectors(pred) - normal), axis=-1), valid)


def segmentation_sums(logits: ArrayLike, label: ArrayLike, ignore: int = -1,
                      example_mask: ArrayLike | None = None) -> jax.Array:
  """The confusion matrix of a batch: counts of (true class, argmax class) over labelled pixels.

  Args:
    logits: (B, H, W, C) class scores.
    label: (B, H, W) integer classes; `ignore` and values outside [0, C) are not counted.
    ignore: the label of unlabelled pixels.
    example_mask: optional (B,) booleans; examples marked False (padding) are not counted.

  Returns:
    (C, C) int32, entry [t, p] the number of pixels of true class t predicted as p.
  """
  logits, label, valid = _segmentation_inputs(logits, label, ignore)
  valid = _with_example_mask(valid, example_mask)
  num_classes = logits.shape[-1]
  pred = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  cell = jnp.where(valid, label * num_classes + pred, 0)
  counts = jnp.bincount(cell.ravel(), weights=valid.ravel().astype(jnp.int32),
                        length=num_classes * num_classes)
  return counts.astype(jnp.int32).reshape(num_classes, num_classes)


def depth_sums(pred: ArrayLike, depth: ArrayLike,
               example_mask: ArrayLike | None = None) -> DepthSums:
  """Absolute and relative depth error sums over the valid pixels (depth ≠ 0) of a batch.

  Args:
    pred: (B, H, W, 1) predicted depth.
    depth: (B, H, W, 1) target depth; 0 marks an invalid pixel.
    example_mask: optional (B,) booleans; examples marked False (padding) are not counted.

  Returns:
    `DepthSums` (Σ |p − d|, Σ |p − d| / d, count) as float32, float32, int32 scalars.
  """
  pred, depth = _dense_pair(pred, depth, "pred", "depth", 1)
  valid = _with_example_mask(depth[..., 0] != 0, example_mask)[..., None]
  error = jnp.abs(pred - depth)
  relative = error / jnp.where(valid, depth, 1.0)
  return DepthSums(
      abs_err_sum=jnp.sum(jnp.where(valid, error, 0.0)),
      rel_err_sum=jnp.sum(jnp.where(valid, relative, 0.0)),
      count=jnp.sum(valid, dtype=jnp.int32))


def angle_errors(pred: ArrayLike, normal: ArrayLike) -> jax.Array:
  """Per-pixel angle in degrees between predicted and target normals, in [0, 180].

  Computed as atan2(‖p × g‖, p · g), independent of the vectors' lengths; a zero prediction
  gives 90°. Invalid pixels are not masked here.

  Args:
    pred: (B, H, W, 3) predicted normals.
    normal: (B, H, W, 3) target normals.

  Returns:
    (B, H, W) float32 angles.
  """
  pred, normal = _dense_pair(pred, normal, "pred", "normal", 3)
  pred, normal = unit_vectors(pred), unit_vectors(normal)
  sine = jnp.sqrt(jnp.sum(jnp.square(jnp.cross(pred, normal)), axis=-1))
  cosine = jnp.sum(pred * normal, axis=-1)
  angle = jnp.degrees(jnp.arctan2(sine, cosine))
  return jnp.where(jnp.any(pred != 0, axis=-1), angle, 90.0)


def normal_sums(pred: ArrayLike, normal: ArrayLike,
                example_mask: ArrayLike | None = None) -> NormalSums:
  """Angle error sums and the 0.01° histogram over the valid pixels of a batch.

  Args:
    pred: (B, H, W, 3) predicted normals (any length).
    normal: (B, H, W, 3) target unit normals; an all-zero vector marks an invalid pixel.
    example_mask: optional (B,) booleans; examples marked False (padding) are not counted.

  Returns:
    `NormalSums`: angle_sum float32, count int32, within (3,) int32, histogram (18000,) int32.
  """
  angle = angle_errors(pred, normal)
  valid = _with_example_mask(jnp.any(jnp.asarray(normal) != 0, axis=-1), example_mask)
  weights = valid.astype(jnp.int32)
  # Multiplying by 100 (not dividing by 0.01) puts 11.25°, 22.5°, 30° exactly on bin edges.
  bins = jnp.clip(jnp.floor(angle * BINS_PER_DEGREE), 0, NUM_ANGLE_BINS - 1).astype(jnp.int32)
  histogram = jnp.bincount(bins.ravel(), weights=weights.ravel(), length=NUM_ANGLE_BINS)
  within = jnp.stack([jnp.sum(valid & (angle < t), dtype=jnp.int32) for t in ANGLE_THRESHOLDS])
  return NormalSums(
      angle_sum=jnp.sum(jnp.where(valid, angle, 0.0)),
      count=jnp.sum(weights),
      within=within,
      histogram=histogram.astype(jnp.int32))


def masked_median(values: ArrayLike, valid: ArrayLike) -> jax.Array:
  """The exact median of the entries of `values` where `valid` holds; jittable.

  As `numpy.median`: the middle value of the sorted entries, or the mean of the two middle
  ones for an even count. 0 when no entry is valid.

  Args:
    values: any shape.
    valid: booleans of the shape of `values`.

  Returns:
    A float32 (or wider) scalar.

  >>> float(masked_median(jnp.array([4.0, 1.0, 9.0, 2.0]), jnp.array([True, True, False, True])))
  2.0
  """
  values = jnp.ravel(jnp.asarray(values))
  valid = jnp.ravel(jnp.asarray(valid, bool))
  values = values.astype(jnp.promote_types(values.dtype, jnp.float32))
  count = jnp.sum(valid, dtype=jnp.int32)
  ordered = jnp.sort(jnp.where(valid, values, jnp.inf))  # invalid entries sort last
  low = ordered[jnp.maximum(count - 1, 0) // 2]
  high = ordered[count // 2]
  return jnp.where(count > 0, 0.5 * (low + high), 0.0)


def _depth_batch_means(pred: jax.Array, depth: jax.Array, keep: jax.Array) -> DepthBatchMeans:
  """One batch's mean errors over its valid pixels; zeros (and 0 batches) if none is valid."""
  valid = _with_example_mask(depth[..., 0] != 0, keep)[..., None]
  count = jnp.sum(valid)
  error = jnp.abs(pred - depth)
  relative = error / jnp.where(valid, depth, 1.0)
  return DepthBatchMeans(abs_err=base.masked_mean(error, valid),
                         rel_err=base.masked_mean(relative, valid),
                         batches=(count > 0).astype(jnp.int32))


def _normal_batch_means(pred: jax.Array, normal: jax.Array, keep: jax.Array) -> NormalBatchMeans:
  """One batch's angle metrics over its valid pixels; zeros (and 0 batches) if none is valid."""
  angle = angle_errors(pred, normal)
  valid = _with_example_mask(jnp.any(normal != 0, axis=-1), keep)
  within = jnp.stack([base.masked_mean((angle < t).astype(jnp.float32), valid)
                      for t in ANGLE_THRESHOLDS])
  return NormalBatchMeans(mean=base.masked_mean(angle, valid), median=masked_median(angle, valid),
                          within=within, batches=jnp.any(valid).astype(jnp.int32))


def batch_means(predictions: Mapping[str, ArrayLike], batch: Mapping[str, ArrayLike],
                example_mask: ArrayLike | None = None, *,
                batch_size: int) -> dict[str, Any]:
  """The ``mtan`` averaging: depth and normal metrics per batch of `batch_size`, summed.

  The rows of the evaluation batch are cut into consecutive groups of `batch_size` (the
  batches of MTAN's and the reference's evaluation); each group's metrics are computed over
  its own valid pixels, and the groups' values are summed, with the number of groups that had
  a valid pixel. Accumulate them over a split with `add_sums`, and `finalize_batch_means`
  turns the total into the mean over batches. Segmentation is not part of it (its metrics
  come from the confusion matrix of `dense_sums` in both averagings).

  Args:
    predictions: holds ``depth`` and/or ``normal`` predictions, (B, H, W, 1) and (B, H, W, 3);
      other keys are ignored.
    batch: holds the targets ``depth`` and ``normal`` of the predicted tasks.
    example_mask: optional (B,) booleans; rows marked False (padding) count for nothing, and a
      group of padding only is no batch.
    batch_size: the evaluation batch of the averaging; B must be a multiple of it.

  Returns:
    ``{"depth": DepthBatchMeans, "normal": NormalBatchMeans}`` for the predicted tasks.

  Raises:
    ValueError: for a batch that is not a multiple of `batch_size`, or missing inputs.
  """
  tasks = [t for t in (DEPTH, NORMAL) if t in predictions]
  if not tasks:
    raise ValueError(f"predictions must hold {DEPTH!r} or {NORMAL!r} for the per-batch "
                     f"averaging, got {list(predictions)}.")
  targets = {t: jnp.asarray(batch[t]) for t in tasks if t in batch}
  if len(targets) != len(tasks):
    raise ValueError(f"batch must hold the targets {tasks}, got keys {list(batch)}.")
  pairs = {DEPTH: ("pred", "depth", 1), NORMAL: ("pred", "normal", 3)}
  arrays = {t: _dense_pair(predictions[t], targets[t], *pairs[t]) for t in tasks}
  rows = arrays[tasks[0]][0].shape[0]
  if not isinstance(batch_size, int) or batch_size < 1 or rows % batch_size:
    raise ValueError(f"the evaluation batch of {rows} rows must be a multiple of the averaging "
                     f"batch_size, got batch_size={batch_size!r}.")
  keep = jnp.ones(rows, bool) if example_mask is None else jnp.asarray(example_mask, bool)
  if keep.shape != (rows,):
    raise ValueError(f"example_mask must have shape (B,) = ({rows},), got {keep.shape}.")
  group = lambda x: x.reshape((rows // batch_size, batch_size) + x.shape[1:])
  per_batch = {DEPTH: _depth_batch_means, NORMAL: _normal_batch_means}
  out = {}
  for task in tasks:
    pred, target = arrays[task]
    values = jax.vmap(per_batch[task])(group(pred), group(target), group(keep))
    out[task] = jax.tree.map(lambda x: jnp.sum(x, axis=0), values)
  return out


def _check_task_keys(sums: Any, allowed: tuple[str, ...]) -> None:
  """Raises unless `sums` is a non-empty mapping whose keys are among `allowed` tasks."""
  if not isinstance(sums, Mapping) or not sums or set(sums) - set(allowed):
    raise ValueError(f"sums must be a mapping with keys among {allowed}, got "
                     f"{list(sums) if isinstance(sums, Mapping) else type(sums).__name__}.")


def finalize_batch_means(sums: Mapping[str, Any]) -> dict[str, float]:
  """The ``mtan`` averaging's metrics from the accumulated `batch_means` of a split.

  Args:
    sums: ``{"depth": DepthBatchMeans, "normal": NormalBatchMeans}`` (either or both),
      accumulated over the split with `add_sums`.

  Returns:
    Python floats, the mean over batches, under the names of `finalize`: ``depth_abs_err``,
    ``depth_rel_err``; ``normal_mean``, ``normal_median``, ``normal_11.25``, ``normal_22.5``,
    ``normal_30``.

  Raises:
    ValueError: for unknown tasks or sums without any batch.
  """
  _check_task_keys(sums, (DEPTH, NORMAL))
  return _depth_and_normal(
      sums, DepthBatchMeans, NormalBatchMeans,
      lambda n: (n.mean, n.within, n.batches, lambda: float(n.median / n.batches)),
      "batch means hold no batch")


def _depth_and_normal(sums: Mapping[str, Any], depth_type: type, normal_type: type,
                      normal_parts: Any, what: str) -> dict[str, float]:
  """The depth and normal metrics of `finalize` and `finalize_batch_means`: each total over
  its count (of pixels or of batches), after checking that the count is positive.

  `normal_parts` maps the normal record to ``(angle total, within totals, count, median)``,
  the median a function, called only once the count is known to be positive.
  """
  metrics = {}
  if DEPTH in sums:
    abs_err, rel_err, count = depth_type(*(_wide(x) for x in sums[DEPTH]))
    _require(count, DEPTH, what)
    metrics.update(depth_abs_err=float(abs_err / count), depth_rel_err=float(rel_err / count))
  if NORMAL in sums:
    angle, within, count, median = normal_parts(normal_type(*(_wide(x) for x in sums[NORMAL])))
    _require(count, NORMAL, what)
    metrics.update(normal_mean=float(angle / count), normal_median=median())
    metrics.update({f"normal_{threshold:g}": float(w / count)
                    for threshold, w in zip(ANGLE_THRESHOLDS, within)})
  return metrics


def _require(count: Any, task: str, what: str) -> None:
  """Raises unless `count` (pixels or batches) is positive: a metric over nothing."""
  if count <= 0:
    raise ValueError(f"{task} {what}: no valid {task} was evaluated.")


def dense_sums(predictions: Mapping[str, ArrayLike], batch: Mapping[str, ArrayLike],
               example_mask: ArrayLike | None = None) -> dict[str, Any]:
  """The metric sums of every task in `predictions`, against the targets of `batch`.

  Args:
    predictions: some of ``{"segmentation": logits, "depth": depth, "normal": normals}``.
    batch: holds ``label``, ``depth`` and ``normal`` for the predicted tasks.
    example_mask: optional (B,) booleans; examples marked False (padding) are not counted.

  Returns:
    ``{task: sums}`` with the confusion matrix, `DepthSums` or `NormalSums` per task.

  Raises:
    ValueError: for an unknown task or a missing target.
  """
  unknown = sorted(set(predictions) - set(DENSE_TASKS))
  if unknown or not predictions:
    raise ValueError(f"predictions must have keys among {DENSE_TASKS}, got {list(predictions)}.")
  targets = {SEGMENTATION: "label", DEPTH: "depth", NORMAL: "normal"}
  for task in predictions:
    if targets[task] not in batch:
      raise ValueError(f"batch must hold {targets[task]!r} to evaluate {task}, got keys "
                       f"{list(batch)}.")
  sums = {}
  if SEGMENTATION in predictions:
    sums[SEGMENTATION] = segmentation_sums(predictions[SEGMENTATION], batch["label"],
                                           example_mask=example_mask)
  if DEPTH in predictions:
    sums[DEPTH] = depth_sums(predictions[DEPTH], batch["depth"], example_mask)
  if NORMAL in predictions:
    sums[NORMAL] = normal_sums(predictions[NORMAL], batch["normal"], example_mask)
  return sums


def _wide(value: Any) -> np.ndarray:
  value = np.asarray(value)
  return value.astype(np.int64 if np.issubdtype(value.dtype, np.integer) else np.float64)


def add_sums(total: Any, sums: Any) -> Any:
  """Adds a batch's sums into a running total on the host, in int64 and float64.

  Args:
    total: the running total, or None to start from `sums`.
    sums: a batch's sums, the same structure (e.g. the output of `dense_sums`).

  Returns:
    The new total, NumPy arrays of the same structure.
  """
  if total is None:
    return jax.tree.map(_wide, sums)
  return jax.tree.map(lambda a, b: _wide(a) + _wide(b), total, sums)


def _confusion(confusion: ArrayLike) -> np.ndarray:
  confusion = np.asarray(confusion)
  if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
    raise ValueError(f"confusion must be a square (C, C) matrix, got shape {confusion.shape}.")
  if not confusion.sum() > 0:
    raise ValueError("confusion holds no pixel: no labelled pixel was evaluated.")
  return confusion.astype(np.float64)


def miou(confusion: ArrayLike) -> float:
  """Mean intersection-over-union over the classes with a non-empty union.

  Args:
    confusion: (C, C) counts, rows true class, columns predicted class.

  Returns:
    mean over classes c with TP_c + FP_c + FN_c > 0 of TP_c / (TP_c + FP_c + FN_c).

  Raises:
    ValueError: for a non-square or empty matrix.
  """
  confusion = _confusion(confusion)
  hits = np.diag(confusion)
  union = confusion.sum(axis=0) + confusion.sum(axis=1) - hits
  present = union > 0
  return float(np.mean(hits[present] / union[present]))


def pixel_accuracy(confusion: ArrayLike) -> float:
  """The fraction of labelled pixels whose argmax class is the true class.

  Args:
    confusion: (C, C) counts, rows true class, columns predicted class.

  Returns:
    trace / total.

  Raises:
    ValueError: for a non-square or empty matrix.
  """
  confusion = _confusion(confusion)
  return float(np.trace(confusion) / confusion.sum())


def histogram_median(histogram: ArrayLike) -> float:
  """The median angle, in degrees, of the angles binned in a 0.01° histogram.

  The two middle ranks (equal for an odd count) are located in the histogram and the centres
  of their bins averaged, as `numpy.median` averages the two middle values; each centre is
  within 0.005° of its value, so the result is within 0.005° of the exact median.

  Args:
    histogram: (18000,) counts of `NormalSums.histogram`.

  Returns:
    The median in degrees.

  Raises:
    ValueError: for a histogram of the wrong shape or with no count.
  """
  histogram = np.asarray(histogram)
  if histogram.shape != (NUM_ANGLE_BINS,):
    raise ValueError(f"histogram must have shape ({NUM_ANGLE_BINS},), got {histogram.shape}.")
  count = int(histogram.sum())
  if count <= 0:
    raise ValueError("histogram holds no angle: no valid normal was evaluated.")
  cumulative = np.cumsum(histogram.astype(np.int64))
  ranks = np.array([(count - 1) // 2, count // 2])
  bins = np.searchsorted(cumulative, ranks, side="right")
  return float(np.mean(bins + 0.5) / BINS_PER_DEGREE)


def finalize(sums: Mapping[str, Any]) -> dict[str, float]:
  """Turns the sums of a whole split into its metrics.

  Args:
    sums: ``{task: sums}`` as accumulated from `dense_sums` (any non-empty subset of the
      tasks): the confusion matrix, `DepthSums` (or a 3-tuple in its order) and `NormalSums`.

  Returns:
    Python floats, for the tasks present: ``miou``, ``pixel_acc`` (segmentation);
    ``depth_abs_err``, ``depth_rel_err`` (depth); ``normal_mean``, ``normal_median`` (degrees),
    ``normal_11.25``, ``normal_22.5``, ``normal_30`` (fractions) (normals). `HIGHER_IS_BETTER`
    says which way each is better.

  Raises:
    ValueError: for unknown tasks or sums that hold no valid pixel.
  """
  _check_task_keys(sums, DENSE_TASKS)
  metrics = {}
  if SEGMENTATION in sums:
    metrics["miou"] = miou(sums[SEGMENTATION])
    metrics["pixel_acc"] = pixel_accuracy(sums[SEGMENTATION])
  metrics.update(_depth_and_normal(
      sums, DepthSums, NormalSums,
      lambda n: (n.angle_sum, n.within, n.count, lambda: histogram_median(n.histogram)),
      "sums hold no pixel"))
  return metrics
