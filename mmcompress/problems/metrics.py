"""Evaluation metrics: exact masked sums per batch, retention and the multi-task Δm.

The batch functions return *sums and counts*, never means, so that a split evaluated batch by
batch (with padding masked out) accumulates to exactly the metric of the whole split:

>>> correct = count = 0                                           # doctest: +SKIP
>>> for batch in batches:                                         # doctest: +SKIP
...   c, n = classification_accuracy(logits_fn(batch), batch["label"], batch["mask"])
...   correct, count = correct + int(c), count + int(n)
>>> accuracy = correct / count                                    # doctest: +SKIP

The comparison functions turn a compressed model's metrics into numbers relative to the dense
model's: `retention` per metric (docs/method.md §5), `task_retention` per task (the
mean retention of its metrics) and `delta_m_all` over all metrics of all tasks (LibMTL's Δp);
`delta_m` is its one-metric-per-task special case. Both Δm functions are oriented as
LibMTL's: a positive Δm means the compressed model is better than the dense one, a negative
Δm that it is worse.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from mmcompress import _checks

__all__ = ["classification_accuracy", "delta_m", "delta_m_all", "regression_errors", "retention",
           "task_retention"]


def _flag(value: Any, name: str) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f"{name} must be True or False, got {value!r}.")
  return bool(value)


def retention(metric: float, dense_metric: float, higher_is_better: bool) -> float:
  """How much of the dense model's quality a compressed model keeps on one task.

  compressed / dense when higher is better (accuracy, mIoU), dense / compressed when lower is
  better (MAE, angle error): either way 1.0 means no loss and a value below 1.0 means the
  compressed model is worse (docs/method.md §5; the worst-task retention is its minimum over
  tasks).

  Args:
    metric: the compressed model's metric.
    dense_metric: the dense model's metric on the same task and split.
    higher_is_better: the orientation of the metric.

  Returns:
    The oriented ratio, a Python float.

  Raises:
    ValueError: if the denominator (dense when higher is better, compressed otherwise) is not
      a positive finite number.

  >>> retention(0.9, 1.0, True), retention(2.0, 1.0, False)
  (0.9, 0.5)
  """
  metric = _checks.finite(metric, "metric")
  dense_metric = _checks.finite(dense_metric, "dense_metric")
  if _flag(higher_is_better, "higher_is_better"):
    if dense_metric <= 0:
      raise ValueError(
          f"retention of a higher-is-better metric divides by the dense metric, which must "
          f"be > 0; got dense_metric={dense_metric}.")
    return metric / dense_metric
  if metric <= 0:
    raise ValueError(
        f"retention of a lower-is-better metric divides by the compressed metric, which must "
        f"be > 0; got metric={metric} (an error of exactly zero has no finite ratio).")
  return dense_metric / metric


def _same_keys(value: Any, reference: Mapping, name: str, what: str) -> Mapping:
  if not isinstance(value, Mapping) or set(value) != set(reference):
    keys = sorted(value) if isinstance(value, Mapping) else value
    raise ValueError(f"{name} must have exactly the {what} {sorted(reference)}, got {keys!r}.")
  return value


def task_retention(metrics: Mapping[str, float], dense: Mapping[str, float],
                   higher_is_better: Mapping[str, bool]) -> float:
  """The retention of one task measured by several metrics: the mean of their retentions.

  Each metric's `retention` is oriented (compressed / dense when higher is better, dense /
  compressed when lower is better), so every term is 1.0 without loss and below 1.0 when the
  compressed model is worse; the task's retention averages them with equal weight, as LibMTL
  averages the metrics of a task before it averages the tasks. With one metric it is that
  metric's `retention`.

  Args:
    metrics: metric name -> the compressed model's value, for one task.
    dense: metric name -> the dense model's value; its keys are the task's metrics.
    higher_is_better: metric name -> orientation, for every metric.

  Returns:
    The mean oriented ratio, a Python float.

  Raises:
    ValueError: if the metric names differ between the dicts or a ratio is undefined.

  >>> round(task_retention({"miou": 0.36, "pixel_acc": 0.5}, {"miou": 0.4, "pixel_acc": 0.5},
  ...                      {"miou": True, "pixel_acc": True}), 6)
  0.95
  """
  if not isinstance(dense, Mapping) or not dense:
    raise ValueError(f"dense must be a non-empty dict metric -> value, got {dense!r}.")
  _same_keys(metrics, dense, "metrics", "metrics of dense")
  _same_keys(higher_is_better, dense, "higher_is_better", "metrics of dense")
  kept = []
  for name in dense:
    try:
      kept.append(retention(metrics[name], dense[name], higher_is_better[name]))
    except ValueError as e:
      raise ValueError(f"metric {name!r}: {e}") from None
  return sum(kept) / len(kept)


def delta_m_all(metrics: Mapping[str, Mapping[str, float]],
                dense: Mapping[str, Mapping[str, float]],
                higher_is_better: Mapping[str, Mapping[str, bool]]) -> float:
  """Δm over all metrics of all tasks, in percent, as LibMTL computes it (its Δp).

      Δm = (100 / K) Σ_k (1 / N_k) Σ_j (−1)^{l_kj} (M_kj − B_kj) / B_kj,

  with B the dense model's metrics, M the compressed model's, N_k the number of metrics of
  task k and l_kj = 1 when lower is better for that metric, 0 when higher is better. The
  metrics of a task are averaged first, so a task weighs the same whether it has one metric
  or five. Every term is positive when the compressed model is better on that metric, so a
  **positive Δm is better** and a compressed model worse than the dense one has a negative
  Δm: this is the sign of LibMTL's `count_improvement` (its best epoch is the one with the
  largest value). Tables that print "Δm% ↓" use the opposite sign.

  Args:
    metrics: task -> metric name -> the compressed model's value.
    dense: task -> metric name -> the dense model's value (nonzero); its keys are the tasks
      and their metrics.
    higher_is_better: task -> metric name -> orientation, for every metric.

  Returns:
    Δm in percent, a Python float.

  Raises:
    ValueError: if the tasks or metric names differ between the dicts, or a dense value is
      zero.

  >>> round(delta_m_all({"seg": {"miou": 0.36, "pixel_acc": 0.5}, "depth": {"abs": 0.55}},
  ...                   {"seg": {"miou": 0.4, "pixel_acc": 0.5}, "depth": {"abs": 0.5}},
  ...                   {"seg": {"miou": True, "pixel_acc": True}, "depth": {"abs": False}}), 6)
  -7.5
  """
  if not isinstance(dense, Mapping) or not dense:
    raise ValueError(f"dense must be a non-empty dict task -> metric -> value, got {dense!r}.")
  _same_keys(metrics, dense, "metrics", "tasks of dense")
  _same_keys(higher_is_better, dense, "higher_is_better", "tasks of dense")
  total = 0.0
  for task, reference in dense.items():
    if not isinstance(reference, Mapping) or not reference:
      raise ValueError(f"dense[{task!r}] must be a non-empty dict metric -> value, got "
                       f"{reference!r}.")
    values = _same_keys(metrics[task], reference, f"metrics[{task!r}]", "metrics of dense")
    higher = _same_keys(higher_is_better[task], reference, f"higher_is_better[{task!r}]",
                        "metrics of dense")
    changes = []
    for name in reference:
      where = f"[{task!r}][{name!r}]"
      base = _checks.finite(reference[name], f"dense{where}")
      if base == 0:
        raise ValueError(f"dense{where} is 0; Δm divides by the dense metric.")
      change = (_checks.finite(values[name], f"metrics{where}") - base) / base
      changes.append(change if _flag(higher[name], f"higher_is_better{where}") else -change)
    total += sum(changes) / len(changes)
  return 100.0 * total / len(dense)


def delta_m(metrics: Mapping[str, float], dense: Mapping[str, float],
            higher_is_better: Mapping[str, bool]) -> float:
  """The mean relative change over tasks of one metric each, in percent (`delta_m_all`).

      Δm = (100 / K) Σ_k (−1)^{l_k} (M_k − M_dense,k) / M_dense,k,

  with l_k = 1 when lower is better for task k and 0 otherwise, so that every term is
  positive when the compressed model is better on that task and negative when it is worse:
  a worse model has a negative Δm (LibMTL's sign). It is `delta_m_all` with one metric per
  task. It averages the tasks, so unlike the worst-task retention a large loss on one task
  can hide behind gains on the others.

  Args:
    metrics: task name -> the compressed model's metric.
    dense: task name -> the dense model's metric (nonzero); its keys are the tasks.
    higher_is_better: task name -> orientation, for every task.

  Returns:
    Δm in percent, a Python float.

  Raises:
    ValueError: if the task names differ between the dicts or a dense metric is zero.

  >>> round(delta_m({"a": 0.9, "b": 1.1}, {"a": 1.0, "b": 1.0}, {"a": True, "b": False}), 6)
  -10.0
  """
  if not isinstance(dense, Mapping) or not dense:
    raise ValueError(f"dense must be a non-empty dict task -> metric, got {dense!r}.")
  for name, d in (("metrics", metrics), ("higher_is_better", higher_is_better)):
    if not isinstance(d, Mapping) or set(d) != set(dense):
      keys = sorted(d) if isinstance(d, Mapping) else d
      raise ValueError(
          f"{name} must have exactly the tasks of dense {sorted(dense)}, got {keys!r}.")
  total = 0.0
  for task in dense:
    reference = _checks.finite(dense[task], f"dense[{task!r}]")
    if reference == 0:
      raise ValueError(f"dense[{task!r}] is 0; Δm divides by the dense metric.")
    change = (_checks.finite(metrics[task], f"metrics[{task!r}]") - reference) / reference
    sign = 1.0 if _flag(higher_is_better[task], f"higher_is_better[{task!r}]") else -1.0
    total += sign * change
  return 100.0 * total / len(dense)


def _mask(mask: ArrayLike | None, shape: tuple[int, ...], name: str) -> jax.Array:
  """`mask` as bool, broadcast over trailing axes to `shape`; all True if None."""
  if mask is None:
    return jnp.ones(shape, bool)
  mask = jnp.asarray(mask)
  if mask.shape != shape[:mask.ndim]:
    raise ValueError(
        f"mask has shape {mask.shape}; it must have the shape of {name} {shape} or a leading "
        f"part of it (one flag per example).")
  mask = mask.astype(bool)
  return jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (len(shape) - mask.ndim)), shape)


def classification_accuracy(logits: ArrayLike, labels: ArrayLike,
                            mask: ArrayLike | None) -> tuple[jax.Array, jax.Array]:
  """Correct predictions and counted examples of one batch, masked; jittable.

  Args:
    logits: (..., C) scores; the prediction is their argmax (ties: the lowest class).
    labels: (...) integer classes.
    mask: (...) bool (or 0/1) flags, True for the entries to count (real examples, valid
      pixels); None counts every entry.

  Returns:
    (correct, count): int32 scalars; accuracy = sum of correct / sum of count over batches.

  >>> c, n = classification_accuracy(jnp.eye(3), jnp.array([0, 2, 2]), jnp.array([1, 1, 0]))
  >>> int(c), int(n)
  (1, 2)
  """
  logits, labels = jnp.asarray(logits), jnp.asarray(labels)
  if logits.ndim < 1 or logits.shape[:-1] != labels.shape:
    raise ValueError(
        f"logits must have shape labels.shape + (num_classes,); got logits {logits.shape} "
        f"and labels {labels.shape}.")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"labels must be integers, got dtype {labels.dtype}.")
  keep = _mask(mask, labels.shape, "labels")
  hit = jnp.argmax(logits, axis=-1) == labels
  return (jnp.sum(hit & keep, dtype=jnp.int32), jnp.sum(keep, dtype=jnp.int32))


def regression_errors(pred: ArrayLike, target: ArrayLike,
                      mask: ArrayLike | None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Sums of absolute and squared errors over the masked entries of one batch; jittable.

  Masked-out entries are excluded with `where`, not multiplied by zero, so an invalid target
  (NaN depth, say) there cannot poison the sums.

  Args:
    pred: predictions, any shape.
    target: targets, the shape of `pred`.
    mask: bool (or 0/1) flags of the shape of `pred` or a leading part of it (e.g. (B,) for
      (B, D) targets, counting all D entries of a kept example); None counts everything.

  Returns:
    (abs_err_sum, sq_err_sum, count): float32 (or wider) sums over the kept scalar entries,
    and their int32 number; MAE = abs_err_sum / count, MSE = sq_err_sum / count.
  """
  pred, target = jnp.asarray(pred), jnp.asarray(target)
  if pred.shape != target.shape:
    raise ValueError(
        f"pred and target must have the same shape, got {pred.shape} and {target.shape}.")
  keep = _mask(mask, pred.shape, "pred")
  dtype = jnp.promote_types(jnp.result_type(pred, target), jnp.float32)
  error = pred.astype(dtype) - target.astype(dtype)
  zero = jnp.zeros((), dtype)
  return (jnp.sum(jnp.where(keep, jnp.abs(error), zero)),
          jnp.sum(jnp.where(keep, jnp.square(error), zero)),
          jnp.sum(keep, dtype=jnp.int32))
