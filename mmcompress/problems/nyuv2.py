"""NYUv2 with three dense tasks: 13-class segmentation, depth, surface normals.

The preprocessed layout has a train split (795) and a val split (654) that the literature
reports as its test set; here the official val split is the **test** split, and a validation
split for model selection is carved out of train (`val_fraction`, fixed by `split_seed`), so
that no choice is ever made on the reported numbers. Metrics are accumulated over a whole
split (`mmcompress.dense_tasks`); each task is represented in the report by one metric
(mIoU, depth absolute error, mean normal angle error) and `all_metrics` holds all nine.
"""
from __future__ import annotations

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from mmcompress import _checks, dense_tasks
from mmcompress.data import nyuv2
from mmcompress.problems import base

PRIMARY = {dense_tasks.SEGMENTATION: "miou", dense_tasks.DEPTH: "depth_abs_err",
           dense_tasks.NORMAL: "normal_mean"}
_TARGETS = {dense_tasks.SEGMENTATION: "label", dense_tasks.DEPTH: "depth",
            dense_tasks.NORMAL: "normal"}
_LOSSES = {dense_tasks.SEGMENTATION: dense_tasks.segmentation_loss,
           dense_tasks.DEPTH: dense_tasks.depth_loss,
           dense_tasks.NORMAL: dense_tasks.normal_loss}


class NYUv2Problem(base.Problem):
  """NYUv2 (`mmcompress.data.nyuv2` layout) as a three-task dense-prediction problem.

  Args:
    root: the data directory holding ``train/`` and ``val/``.
    height, width: the map size (288×384 for the standard preprocessing).
    augment: random rescale-and-crop and horizontal flip on training batches.
    val_fraction: the share of train held out for model selection.
    split_seed: fixes which training images are held out.
    check_values: check every file's values before training (`nyuv2.check_layout`).
  """

  def __init__(self, root: str, *, height: int = 288, width: int = 384, augment: bool = True,
               val_fraction: float = 0.1, split_seed: int = 0, check_values: bool = True):
    nyuv2.check_layout(root, height=height, width=width, sample="all" if check_values else 0)
    self.train_source = nyuv2.NYUv2Source(root, "train", height=height, width=width)
    self.test_source = nyuv2.NYUv2Source(root, "val", height=height, width=width)
    if not 0.0 < val_fraction < 0.5:
      raise _checks.UserError(f"val_fraction must be in (0, 0.5), got {val_fraction}.")
    order = np.random.default_rng(split_seed).permutation(len(self.train_source))
    held_out = max(1, int(round(val_fraction * len(order))))
    self.rows = {"train": np.sort(order[held_out:]), "val": np.sort(order[:held_out]),
                 "test": np.arange(len(self.test_source))}
    self.shape = (height, width)
    self.augment = augment
    self.task_names = tuple(dense_tasks.DENSE_TASKS)
    self.num_outputs = (nyuv2.NUM_CLASSES, 1, 3)
    self.metric_names = {t: PRIMARY[t] for t in self.task_names}
    self.higher_is_better = {t: dense_tasks.HIGHER_IS_BETTER[PRIMARY[t]]
                             for t in self.task_names}

  def describe(self) -> str:
    n = {k: len(v) for k, v in self.rows.items()}
    return (f"NYUv2 {self.shape[0]}×{self.shape[1]} ({n['train']} train / {n['val']} val "
            f"held out of train / {n['test']} test = the official val split)")

  def example_input(self) -> np.ndarray:
    return np.zeros((1,) + self.shape + (3,), np.float32)

  def steps_per_epoch(self, batch_size: int) -> int:
    n = len(self.rows["train"])
    if n < batch_size:
      raise _checks.UserError(f"batch_size={batch_size} is larger than the {n} training images.")
    return n // batch_size

  def train_batch(self, seed: int, stage_index: int, step: int, batch_size: int) -> dict:
    epoch, position = divmod(step, self.steps_per_epoch(batch_size))
    rows = self.rows["train"]
    order = base.epoch_order(seed, stage_index, epoch, len(rows))
    chosen = rows[order[position * batch_size:(position + 1) * batch_size]]
    rng = np.random.default_rng([seed, stage_index, step, 1]) if self.augment else None
    return nyuv2.load_batch(self.train_source, chosen, rng)

  def eval_batches(self, split: str, batch_size: int) -> Iterator[dict]:
    source = self.test_source if split == "test" else self.train_source
    rows = self.rows[split]
    for start in range(0, len(rows), batch_size):
      chunk = rows[start:start + batch_size]
      batch = nyuv2.load_batch(source, chunk)
      batch["valid"] = np.ones(len(chunk), bool)
      yield base.pad_rows(batch, batch_size)

  def _predict(self, model, params, model_state, images, *, train, rng=None):
    outputs, model_state = base.apply_model(model, params, model_state, images, train=train,
                                       rng=rng)
    return dict(zip(self.task_names, outputs)), model_state

  def task_losses(self, model, params, model_state, batch, rng):
    predictions, model_state = self._predict(model, params, model_state, batch["image"],
                                             train=True, rng=rng)
    losses = [_LOSSES[t](predictions[t], batch[_TARGETS[t]]) for t in self.task_names]
    return jnp.stack(losses), model_state

  def eval_sums(self, model, params, model_state, batch):
    predictions, _ = self._predict(model, params, model_state, batch["image"], train=False)
    valid = batch["valid"]
    sums = dense_tasks.dense_sums(predictions, batch, example_mask=valid)
    # Per-image losses (each the mean over that image's valid pixels), summed over images.
    per_image = jnp.stack([
        jax.vmap(lambda p, y, f=_LOSSES[t]: f(p[None], y[None]))(predictions[t],
                                                                 batch[_TARGETS[t]])
        for t in self.task_names])
    weight = valid.astype(jnp.float32)
    return {"tasks": sums, "loss": per_image @ weight,
            "count": jnp.full((self.num_tasks,), jnp.sum(weight))}

  def finalize(self, sums):
    all_metrics = dense_tasks.finalize(sums["tasks"])
    count = max(float(np.asarray(sums["count"])[0]), 1.0)
    return {"loss": [float(v) / count for v in np.asarray(sums["loss"], np.float64)],
            "metrics": {t: all_metrics[PRIMARY[t]] for t in self.task_names},
            "all_metrics": all_metrics}
