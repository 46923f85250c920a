"""The interface between a multi-task problem and the generic trainer."""
from __future__ import annotations

import abc
import functools
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["apply_model", "epoch_order", "masked_mean", "one_metric_per_task", "pad_rows",
           "per_task_means", "Problem"]


class Problem(abc.ABC):
  """A data set with K tasks, as the trainer sees it.

  Attributes:
    task_names: the K task names.
    num_outputs: the K output sizes of the model's heads.
    metric_names: task → the name of the metric that stands for it in reports (its primary
      metric, the one of the one-metric Δm and retention).
    higher_is_better: task → orientation of that metric.
    all_higher_is_better: task → {metric name: orientation} for *every* metric of the task,
      the primary one included; the report's Δm and retention average over them (LibMTL).
    batch_axis: the axis of a training batch's arrays that splits over the ``data`` mesh
      (0 for ``(B, ...)`` batches, 1 for task-major ``(K, B, ...)`` batches).
  """
  task_names: tuple[str, ...]
  num_outputs: tuple[int, ...]
  metric_names: dict[str, str]
  higher_is_better: dict[str, bool]
  all_higher_is_better: dict[str, dict[str, bool]]
  batch_axis: int = 0

  @property
  def num_tasks(self) -> int:
    return len(self.task_names)

  @abc.abstractmethod
  def example_input(self) -> np.ndarray:
    """A batch of one input, to initialise the model."""

  @abc.abstractmethod
  def steps_per_epoch(self, batch_size: int) -> int:
    """Training steps per epoch at this batch size."""

  @abc.abstractmethod
  def train_batch(self, seed: int, stage_index: int, step: int, batch_size: int) -> dict:
    """The global training batch of `step` (host arrays): a pure function of its arguments."""

  @abc.abstractmethod
  def eval_batches(self, split: str, batch_size: int) -> Iterator[dict]:
    """Batches covering `split` ("val" or "test") once; padding rows must count for nothing."""

  @abc.abstractmethod
  def task_losses(self, model: nn.Module, params: Any, model_state: Any, batch: dict,
                  rng: jax.Array) -> tuple[jax.Array, Any]:
    """Traced: the (K,) training losses of a batch and the model's updated state."""

  @abc.abstractmethod
  def eval_sums(self, model: nn.Module, params: Any, model_state: Any, batch: dict) -> Any:
    """Traced: a pytree of sums over the batch; must hold ``loss`` and ``count``, (K,) each."""

  @abc.abstractmethod
  def finalize(self, sums: Any) -> dict:
    """Host: ``{"loss": [K mean losses], "metrics": {task: primary metric},
    "task_metrics": {task: {metric: value}} (every metric of `all_higher_is_better`),
    "all_metrics": {...}}``."""

  def describe(self) -> str:
    """One line for the report: the data and its size."""
    return type(self).__name__

  def test_counts(self) -> dict[str, int] | None:
    """Task → how many test examples its metric averages over; None when not known.

    The report turns this into one test example's worth of each task's metric, the smallest
    difference it calls a difference (`mmcompress.app.report.one_example_retention`).
    """
    return None
  def metric_notes(self) -> list[str]:
    """Lines for the report on how the metrics were computed (none by default)."""
    return []


def pad_rows(batch: dict, rows: int) -> dict:
  """Pads every array of `batch` with zero rows up to `rows` along axis 0."""
  def pad(x):
    missing = rows - x.shape[0]
    if missing <= 0:
      return x
    return np.concatenate([x, np.zeros((missing,) + x.shape[1:], x.dtype)])
  return {k: pad(v) for k, v in batch.items()}


@functools.lru_cache(maxsize=256)
def epoch_order(seed: int, stage_index: int, epoch: int, n: int) -> np.ndarray:
  """The order of `n` examples in one epoch: a pure function of its arguments, read-only.

  Remembered for the latest epochs: every step of an epoch reads it, for every run on the
  axis (drawing it took half the time of gathering a grid's batches).
  """
  order = np.random.default_rng([seed, stage_index, epoch]).permutation(n)
  order.setflags(write=False)
  return order


def apply_model(model: nn.Module, params: Any, model_state: Any, images: jax.Array, *,
                train: bool, rng: jax.Array | None = None, task_id: Any = None
                ) -> tuple[Any, Any]:
  """Runs `model`; returns (outputs, model state, updated when training with statistics)."""
  variables = {"params": params, **model_state}
  rngs = {"dropout": rng} if rng is not None else None
  if train and model_state:
    return model.apply(variables, images, task_id=task_id, train=True, rngs=rngs,
                       mutable=list(model_state))
  return model.apply(variables, images, task_id=task_id, train=train, rngs=rngs), model_state


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of `values` over the entries where the boolean `mask` holds.

  Where no entry is valid the mean is 0, with zero gradients, instead of 0/0. One rule for every
  problem: the digits tasks' losses over the examples of each task, NYUv2's over the labelled
  pixels.
  """
  return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def one_metric_per_task(metric_names: dict[str, str],
                        higher_is_better: dict[str, bool]) -> dict[str, dict[str, bool]]:
  """`Problem.all_higher_is_better` of a problem with one metric per task."""
  return {t: {name: higher_is_better[t]} for t, name in metric_names.items()}


def per_task_means(task_names: tuple[str, ...], sums: Any, metric_key: str,
                   metric_names: dict[str, str]) -> dict:
  """`Problem.finalize` for problems whose one metric per task is a sum divided by a count."""
  count = np.maximum(np.asarray(sums["count"], np.float64), 1.0)
  values = np.asarray(sums[metric_key], np.float64) / count
  metrics = {t: float(v) for t, v in zip(task_names, values)}
  return {"loss": [float(v) for v in np.asarray(sums["loss"], np.float64) / count],
          "metrics": metrics,
          "task_metrics": {t: {metric_names[t]: v} for t, v in metrics.items()},
          "all_metrics": dict(metrics)}
