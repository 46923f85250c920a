"""CIFAR-100 as 20 tasks (one per superclass, a 5-way classification of its fine classes).

Every training step draws a batch from every task: ``images`` is task-major (K, B, 32, 32, 3)
and splits over the data mesh along B. Each task's batch runs through the shared network with
that task's batch norm and head: the K forward passes are one `jax.vmap` over the task index
(traced), so XLA runs them as one batch of K·B images. Each pass updates only its own task's
batch statistics; `merge_task_statistics` keeps, for every task-specific statistic, the pass
that owns it.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmcompress import _checks
from mmcompress.problems import metrics
from mmcompress.sparsity import masks as masks_lib
from mmcompress.problems.cifar100 import data as cifar100
from mmcompress.problems import base

__all__ = ["Cifar100Problem", "from_config", "merge_task_statistics", "validate_config"]

_TASK_SUFFIX = re.compile(r"_task(\d+)$")


def merge_task_statistics(stacked: Any) -> Any:
  """One model state from the K per-task passes of a vmapped step (leaves stacked on axis 0).

  A leaf named ``..._task{k}`` (task k's own statistics) is taken from pass k; a shared
  leaf, which every pass updated from its own batch, becomes the mean of the K updates.
  """
  def merge(path, leaf):
    name = masks_lib.path_name(path[-1:])
    match = _TASK_SUFFIX.search(name)
    return leaf[int(match.group(1))] if match else jnp.mean(leaf, axis=0)
  return jax.tree_util.tree_map_with_path(merge, stacked)


def _head_of(outputs: tuple[jax.Array, ...], task: jax.Array) -> jax.Array:
  """The logits of head `task` (traced) among the K heads' outputs."""
  return jnp.take(jnp.stack(outputs), task, axis=0)


class Cifar100Problem(base.Problem):
  """CIFAR-100 as 20 tasks; ``batch_size`` in the config is the batch *per task*.

  Args:
    train: the training split (`cifar100.ImageSplit`), after the validation carve-out.
    val: the validation split, for model selection.
    test: the official test split.
    augment: random crop (padding 4) and horizontal flip on training batches.
  """
  batch_axis = 1

  def __init__(self, train: cifar100.ImageSplit, val: cifar100.ImageSplit,
               test: cifar100.ImageSplit, *, augment: bool = True):
    self.splits = {"train": train, "val": val, "test": test}
    self.task_index = cifar100.TaskIndex.from_fine(train.fine)
    self.augment = augment
    self.task_names = tuple(cifar100.TASK_NAMES)
    self.num_outputs = (cifar100.CLASSES_PER_TASK,) * cifar100.NUM_TASKS
    self.metric_names = {t: "accuracy" for t in self.task_names}
    self.higher_is_better = {t: True for t in self.task_names}
    self.all_higher_is_better = base.one_metric_per_task(self.metric_names,
                                                         self.higher_is_better)
    self._eval = {split: cifar100.eval_arrays(s.images, s.fine)
                  for split, s in self.splits.items() if split != "train"}

  def describe(self) -> str:
    sizes = {k: len(v.fine) for k, v in self.splits.items()}
    return (f"CIFAR-100 as 20 tasks ({sizes['train']} train / {sizes['val']} val / "
            f"{sizes['test']} test images)")

  def test_counts(self) -> dict[str, int]:
    counts = np.bincount(self._eval["test"]["task"], minlength=self.num_tasks)
    return {t: int(n) for t, n in zip(self.task_names, counts)}

  def example_input(self) -> np.ndarray:
    return np.zeros((1,) + cifar100.IMAGE_SHAPE, np.float32)

  def steps_per_epoch(self, batch_size: int) -> int:
    return self.task_index.steps_per_epoch(batch_size)

  def train_batch(self, seed: int, stage_index: int, step: int, batch_size: int) -> dict:
    train = self.splits["train"]
    return cifar100.task_batch(train.images, train.fine, self.task_index, seed, stage_index,
                               step, batch_size, augment=self.augment)

  def eval_batches(self, split: str, batch_size: int) -> Iterator[dict]:
    arrays = self._eval[split]
    for task in range(self.num_tasks):
      rows = np.flatnonzero(arrays["task"] == task)
      for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        yield base.pad_rows({"images": arrays["images"][chunk],
                             "label": arrays["label"][chunk],
                             "task": np.full(len(chunk), task, np.int32),
                             "valid": np.ones(len(chunk), bool)}, batch_size)

  def task_losses(self, model, params, model_state, batch, rng):
    def one_task(task, images, labels):
      outputs, state = base.apply_model(model, params, model_state, images, train=True, rng=rng,
                                   task_id=task)
      loss = optax.softmax_cross_entropy_with_integer_labels(_head_of(outputs, task), labels)
      return jnp.mean(loss), state

    tasks = jnp.arange(self.num_tasks, dtype=jnp.int32)
    losses, states = jax.vmap(one_task)(tasks, batch["images"], batch["labels"])
    return losses, merge_task_statistics(states) if model_state else model_state

  def eval_sums(self, model, params, model_state, batch):
    task = batch["task"][0]  # an evaluation batch holds one task (padding rows included)
    outputs, _ = base.apply_model(model, params, model_state, batch["images"], train=False,
                             task_id=task)
    logits = _head_of(outputs, task)
    valid = batch["valid"].astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    correct, count = metrics.classification_accuracy(logits, batch["label"], batch["valid"])
    one_hot = jax.nn.one_hot(task, self.num_tasks)
    return {"loss": one_hot * jnp.sum(loss * valid), "count": one_hot * count,
            "correct": one_hot * correct}

  def finalize(self, sums):
    return base.per_task_means(self.task_names, sums, "correct", self.metric_names)


def validate_config(config: Any) -> None:
  """Nothing to check before the data is read: `from_config` checks the data itself."""
  del config


def from_config(config: Any) -> Cifar100Problem:
  """CIFAR-100 as 20 tasks from the tfds `data_dir` of the config (no TensorFlow needed)."""
  data_dir = _checks.config_data_dir(config.data_dir,
                                     "the tfds cifar100 data set, prepared as array_record")
  train_images, train_fine = cifar100.load_split("train", data_dir,
                                                 check_coarse=config.check_coarse_labels)
  test_images, test_fine = cifar100.load_split("test", data_dir,
                                               check_coarse=config.check_coarse_labels)
  train, val = cifar100.make_splits(train_images, train_fine, config.val_fraction,
                                    config.split_seed)
  test = cifar100.ImageSplit(test_images, test_fine, np.arange(len(test_fine)))
  return Cifar100Problem(train, val, test, augment=config.augment)
