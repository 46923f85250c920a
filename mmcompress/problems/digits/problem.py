"""MultiDigits as a `Problem`: uniform batches over all images, each with its task mask."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmcompress import _checks
from mmcompress.problems import metrics
from mmcompress.problems.digits import data as digits
from mmcompress.problems import base

__all__ = ["DigitsProblem", "from_config", "METRIC_NAMES", "per_example_losses", "validate_config"]

METRIC_NAMES = {digits.CLASSIFICATION: "accuracy", digits.REGRESSION: "MAE"}


def per_example_losses(outputs: Sequence[jax.Array], targets: jax.Array,
                       kinds: Sequence[str]) -> jax.Array:
  """(B, K) losses: cross-entropy for classification heads, squared error for regression."""
  columns = []
  for k, (out, kind) in enumerate(zip(outputs, kinds)):
    if kind == digits.CLASSIFICATION:
      labels = targets[:, k].astype(jnp.int32)
      columns.append(optax.softmax_cross_entropy_with_integer_labels(out, labels))
    else:
      columns.append((out[:, 0] - targets[:, k]) ** 2)
  return jnp.stack(columns, axis=1)


class DigitsProblem(base.Problem):
  """MultiDigits (`mmcompress.problems.digits.data`): every batch mixes the tasks' images.

  A task's loss is the mean over the images of the batch that belong to it (its task mask),
  so a task with no image in a batch contributes nothing to that step. Metrics: accuracy
  for a classification task, mean absolute error for a regression.
  """

  def __init__(self, data: digits.MultiTaskData):
    self.data = data
    self.task_names = data.task_names
    self.num_outputs = data.num_outputs
    self.kinds = data.task_kinds
    self.metric_names = {t: METRIC_NAMES[k] for t, k in zip(data.task_names, data.task_kinds)}
    self.higher_is_better = {t: k == digits.CLASSIFICATION
                             for t, k in zip(data.task_names, data.task_kinds)}
    self.all_higher_is_better = base.one_metric_per_task(self.metric_names,
                                                         self.higher_is_better)

  def describe(self) -> str:
    d = self.data
    return (f"MultiDigits '{d.task_set}' ({d.train.num_examples} train / "
            f"{d.val.num_examples} val / {d.test.num_examples} test images)")

  def test_counts(self) -> dict[str, int]:
    counts = self.data.test.task_mask.sum(axis=0)
    return {t: int(n) for t, n in zip(self.task_names, counts)}

  def example_input(self) -> np.ndarray:
    return np.zeros((1,) + self.data.train.images.shape[1:], np.float32)

  def steps_per_epoch(self, batch_size: int) -> int:
    n = self.data.train.num_examples
    if n < batch_size:
      raise _checks.UserError(f"batch_size={batch_size} is larger than the {n} training "
                              "examples: use a smaller --config.batch_size.")
    return n // batch_size

  def train_batch(self, seed: int, stage_index: int, step: int, batch_size: int) -> dict:
    split = self.data.train
    epoch, position = divmod(step, self.steps_per_epoch(batch_size))
    order = base.epoch_order(seed, stage_index, epoch, split.num_examples)
    rows = order[position * batch_size:(position + 1) * batch_size]
    return {"images": split.images[rows], "targets": split.targets[rows],
            "task_mask": split.task_mask[rows]}

  def eval_batches(self, split: str, batch_size: int) -> Iterator[dict]:
    data = {"val": self.data.val, "test": self.data.test}[split]
    for start in range(0, data.num_examples, batch_size):
      rows = slice(start, start + batch_size)
      yield base.pad_rows({"images": data.images[rows], "targets": data.targets[rows],
                           "task_mask": data.task_mask[rows]}, batch_size)

  def task_losses(self, model, params, model_state, batch, rng):
    outputs, model_state = base.apply_model(model, params, model_state, batch["images"],
                                       train=True, rng=rng)
    per_example = per_example_losses(outputs, batch["targets"], self.kinds)
    return jax.vmap(base.masked_mean, in_axes=(1, 1))(per_example, batch["task_mask"]), model_state

  def eval_sums(self, model, params, model_state, batch):
    outputs, _ = base.apply_model(model, params, model_state, batch["images"], train=False)
    mask = batch["task_mask"].astype(jnp.float32)
    losses = per_example_losses(outputs, batch["targets"], self.kinds)
    score = []  # right answers for a classification, absolute errors for a regression
    for k, (out, kind) in enumerate(zip(outputs, self.kinds)):
      target, keep = batch["targets"][:, k], batch["task_mask"][:, k]
      if kind == digits.CLASSIFICATION:
        correct, _ = metrics.classification_accuracy(out, target.astype(jnp.int32), keep)
        score.append(correct.astype(jnp.float32))
      else:
        score.append(metrics.regression_errors(out[:, 0], target, keep)[0])
    return {"loss": jnp.sum(losses * mask, 0), "count": jnp.sum(mask, 0),
            "score": jnp.stack(score).astype(jnp.float32)}

  def finalize(self, sums):
    return base.per_task_means(self.task_names, sums, "score", self.metric_names)


def validate_config(config: Any) -> None:
  """Raises a `UserError` unless every entry of ``config.task_sets`` names a task set (one
  of `digits.TASK_SETS` or a grouping ``groups:...``), each once."""
  if not config.task_sets:
    raise _checks.UserError(
        f"config.task_sets is empty: name some of {list(digits.TASK_SETS)} or a grouping "
        "'groups:<digits>/<digits>/...'.")
  for task_set in config.task_sets:
    digits.check_task_set(task_set, "config.task_sets entry")
  _checks.non_negative_int(config.data_seed, "config.data_seed (the split of the data)")
  if len(set(config.task_sets)) != len(config.task_sets):
    raise _checks.UserError(f"config.task_sets names a task set twice: {list(config.task_sets)}.")


def from_config(config: Any, task_set: str | None = None) -> DigitsProblem:
  """The MultiDigits problem of a digits config (its first task set unless one is named)."""
  task_set = config.task_sets[0] if task_set is None else task_set
  digits.check_task_set(task_set, "config.task_sets entry")
  return DigitsProblem(digits.load_multidigits(task_set, seed=config.data_seed))
