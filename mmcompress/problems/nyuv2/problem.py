"""NYUv2 with three dense tasks: 13-class segmentation, depth, surface normals.

The preprocessed layout has a train split (795) and a val split (654) that the literature
reports as its test set; here the official val split is the **test** split, and a validation
split for model selection is carved out of train (`val_fraction`, fixed by `split_seed`), so
that no choice is ever made on the reported numbers. Metrics are accumulated over a whole
split (`mmcompress.problems.nyuv2.tasks`): all nine, 2 + 2 + 5 per task, in ``task_metrics`` (the
report's Δm and retention average them per task, as LibMTL does); mIoU, depth absolute error
and mean normal angle error stand for their tasks in ``metrics`` (the one-metric figures).

``metric_averaging`` chooses how the depth and normal errors are averaged: ``"split"`` (every
valid pixel of the split weighs the same) or ``"mtan"`` (per evaluation batch of
`MTAN_EVAL_BATCH` images, then the mean over batches, as MTAN's code and the reference
compute them). mIoU and pixel accuracy come from the split's confusion matrix in both.

`DenseProblem` is all of it but the files: it takes its examples from any source with
NYUv2Source's ``source[i]`` interface and its class count as a parameter, so that another data
set in NYUv2's layout (the rendered scenes, `mmcompress.problems.scenes`) trains through the
very code a NYUv2 run uses. `NYUv2Problem` is `DenseProblem` on the files of a data directory.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmcompress import _checks
from mmcompress.problems.nyuv2 import data as nyuv2
from mmcompress.problems.nyuv2 import tasks
from mmcompress.problems import base

__all__ = ["AVERAGING_MODES", "check_config", "DenseProblem", "from_config", "MTAN_EVAL_BATCH",
           "NYUv2Problem", "PRIMARY", "validate_config"]

PRIMARY = {tasks.SEGMENTATION: "miou", tasks.DEPTH: "depth_abs_err",
           tasks.NORMAL: "normal_mean"}
_TARGETS = {tasks.SEGMENTATION: "label", tasks.DEPTH: "depth",
            tasks.NORMAL: "normal"}
AVERAGING_MODES = ("split", "mtan")
# The evaluation batch of MTAN's code and of the reference, over which "mtan" averages.
MTAN_EVAL_BATCH = 2
_LOSSES = {tasks.SEGMENTATION: tasks.segmentation_loss,
           tasks.DEPTH: tasks.depth_loss,
           tasks.NORMAL: tasks.normal_loss}
# "cosine": 1 − cosine similarity (MTAN's); "l1": the reference's DST code's L1 distance.
_NORMAL_LOSSES = {"cosine": tasks.normal_loss, "l1": tasks.normal_l1_loss}


def check_config(normal_loss: str, metric_averaging: str, eval_batch_size: int) -> None:
  """Raises a `UserError` for a NYUv2 setting that cannot run, before any data is read."""
  _checks.one_of(normal_loss, tuple(_NORMAL_LOSSES), "config.normal_loss")
  _checks.one_of(metric_averaging, AVERAGING_MODES, "config.metric_averaging")
  _check_averaging_batch(metric_averaging, eval_batch_size)


def validate_config(config: Any) -> None:
  """`check_config` on a NYUv2 experiment config's fields."""
  check_config(config.normal_loss, config.metric_averaging, config.eval_batch_size)


def _check_averaging_batch(metric_averaging: str, batch_size: int) -> None:
  """Raises a `UserError` if ``mtan`` averaging cannot cut `batch_size` into its batches."""
  if metric_averaging == "mtan" and batch_size % MTAN_EVAL_BATCH:
    raise _checks.UserError(
        f"config.eval_batch_size={batch_size} must be a multiple of {MTAN_EVAL_BATCH} "
        f"with metric_averaging='mtan', which averages per batch of {MTAN_EVAL_BATCH} images.")


class DenseProblem(base.Problem):
  """Segmentation, depth and surface normals on examples in NYUv2's layout, from any source.

  Everything of the NYUv2 problem but where the examples come from: the batches
  (`nyuv2.load_batch`, with its augmentation), the losses, the metrics and their averaging.
  A source is anything with ``len(source)`` and ``source[i]`` → ``{image, label, depth,
  normal}`` as `nyuv2.NYUv2Source` returns them (e.g. the scenes' in-memory arrays).

  Args:
    train_source: the examples of the train and val rows.
    test_source: the examples of the test rows.
    rows: ``{"train", "val", "test"}`` → the indices of each split in its source (val rows
      index `train_source`).
    num_classes: the segmentation classes C (labels 0..C−1, −1 = ignore).
    augment: random rescale-and-crop and horizontal flip on training batches.
    normal_loss: ``"cosine"`` (1 − cosine similarity, MTAN's) or ``"l1"`` (the reference's
      dynamic sparse training code's L1 distance, `tasks.normal_l1_loss`).
    metric_averaging: ``"split"`` or ``"mtan"``, how depth and normal errors are averaged
      (see the module docstring).
  """

  def __init__(self, train_source: Any, test_source: Any, rows: dict[str, np.ndarray], *,
               num_classes: int = nyuv2.NUM_CLASSES, augment: bool = True,
               normal_loss: str = "cosine", metric_averaging: str = "split"):
    _checks.one_of(normal_loss, tuple(_NORMAL_LOSSES), "normal_loss")
    self.losses = {**_LOSSES, tasks.NORMAL: _NORMAL_LOSSES[normal_loss]}
    self.metric_averaging = _checks.one_of(metric_averaging, AVERAGING_MODES, "metric_averaging")
    self.train_source = train_source
    self.test_source = test_source
    self.rows = rows
    self.shape = tuple(np.shape(test_source[0]["label"]))
    self.augment = augment
    self.task_names = tuple(tasks.DENSE_TASKS)
    self.num_outputs = (_checks.positive_int(num_classes, "num_classes"), 1, 3)
    self.metric_names = {t: PRIMARY[t] for t in self.task_names}
    self.higher_is_better = {t: tasks.HIGHER_IS_BETTER[PRIMARY[t]]
                             for t in self.task_names}
    self.all_higher_is_better = {
        t: {m: tasks.HIGHER_IS_BETTER[m] for m in tasks.TASK_METRICS[t]}
        for t in self.task_names}

  def describe(self) -> str:
    n = {k: len(v) for k, v in self.rows.items()}
    return (f"{self.shape[0]}×{self.shape[1]} dense tasks ({n['train']} train / {n['val']} "
            f"val / {n['test']} test)")

  def test_counts(self) -> dict[str, int]:
    """Every task is measured on every test image."""
    return {t: len(self.rows["test"]) for t in self.task_names}
  def metric_notes(self) -> list[str]:
    if self.metric_averaging == "mtan":
      how = (f"per evaluation batch of {MTAN_EVAL_BATCH} images, then the mean over batches "
             "(the median is the mean of the batches' medians), as MTAN and the reference "
             "compute them")
    else:
      how = "over every valid pixel of the split, each pixel weighing the same"
    return [f"Metric averaging: {self.metric_averaging}; depth and normal errors {how}; "
            "mIoU and pixel accuracy from the split's confusion matrix."]

  def check_eval_batch_size(self, batch_size: int) -> None:
    """Raises a UserError if ``mtan`` averaging cannot cut `batch_size` into its batches."""
    _check_averaging_batch(self.metric_averaging, batch_size)

  def example_input(self) -> np.ndarray:
    return np.zeros((1,) + self.shape + (3,), np.float32)

  def steps_per_epoch(self, batch_size: int) -> int:
    n = len(self.rows["train"])
    if n < batch_size:
      raise _checks.UserError(f"batch_size={batch_size} is larger than the {n} training "
                              "images: use a smaller --config.batch_size.")
    return n // batch_size

  def train_batch(self, seed: int, stage_index: int, step: int, batch_size: int) -> dict:
    epoch, position = divmod(step, self.steps_per_epoch(batch_size))
    rows = self.rows["train"]
    order = base.epoch_order(seed, stage_index, epoch, len(rows))
    chosen = rows[order[position * batch_size:(position + 1) * batch_size]]
    rng = np.random.default_rng([seed, stage_index, step, 1]) if self.augment else None
    return nyuv2.load_batch(self.train_source, chosen, rng)

  def eval_batches(self, split: str, batch_size: int) -> Iterator[dict]:
    self.check_eval_batch_size(batch_size)
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
    losses = [self.losses[t](predictions[t], batch[_TARGETS[t]]) for t in self.task_names]
    return jnp.stack(losses), model_state

  def eval_sums(self, model, params, model_state, batch):
    predictions, _ = self._predict(model, params, model_state, batch["image"], train=False)
    valid = batch["valid"]
    sums = tasks.dense_sums(predictions, batch, example_mask=valid)
    # Per-image losses (each the mean over that image's valid pixels), summed over images.
    per_image = jnp.stack([
        jax.vmap(lambda p, y, f=self.losses[t]: f(p[None], y[None]))(predictions[t],
                                                                 batch[_TARGETS[t]])
        for t in self.task_names])
    weight = valid.astype(jnp.float32)
    out = {"tasks": sums, "loss": per_image @ weight,
           "count": jnp.full((self.num_tasks,), jnp.sum(weight))}
    if self.metric_averaging == "mtan":
      out["batch_means"] = tasks.batch_means(predictions, batch, example_mask=valid,
                                                   batch_size=MTAN_EVAL_BATCH)
    return out

  def finalize(self, sums):
    all_metrics = tasks.finalize(sums["tasks"])
    if self.metric_averaging == "mtan":
      all_metrics.update(tasks.finalize_batch_means(sums["batch_means"]))
    count = max(float(np.asarray(sums["count"])[0]), 1.0)
    return {"loss": [float(v) / count for v in np.asarray(sums["loss"], np.float64)],
            "metrics": {t: all_metrics[PRIMARY[t]] for t in self.task_names},
            "task_metrics": {t: {m: all_metrics[m] for m in tasks.TASK_METRICS[t]}
                             for t in self.task_names},
            "all_metrics": all_metrics}


class NYUv2Problem(DenseProblem):
  """NYUv2 (`mmcompress.problems.nyuv2.data` layout) as a three-task dense-prediction problem.

  Args:
    root: the data directory holding ``train/`` and ``val/``.
    height, width: the map size (288×384 for the standard preprocessing).
    augment: random rescale-and-crop and horizontal flip on training batches.
    val_fraction: the share of train held out for model selection.
    split_seed: fixes which training images are held out.
    check_values: check every file's values before training (`nyuv2.check_layout`).
    normal_loss: ``"cosine"`` (1 − cosine similarity, MTAN's) or ``"l1"`` (the reference's
      dynamic sparse training code's L1 distance, `tasks.normal_l1_loss`).
    metric_averaging: ``"split"`` or ``"mtan"``, how depth and normal errors are averaged
      (see the module docstring).
  """

  def __init__(self, root: str, *, height: int = 288, width: int = 384, augment: bool = True,
               val_fraction: float = 0.1, split_seed: int = 0, check_values: bool = True,
               normal_loss: str = "cosine", metric_averaging: str = "split"):
    _checks.one_of(normal_loss, tuple(_NORMAL_LOSSES), "normal_loss")
    _checks.one_of(metric_averaging, AVERAGING_MODES, "metric_averaging")
    nyuv2.check_layout(root, height=height, width=width, sample="all" if check_values else 0)
    train_source = nyuv2.NYUv2Source(root, "train", height=height, width=width)
    test_source = nyuv2.NYUv2Source(root, "val", height=height, width=width)
    if not 0.0 < val_fraction < 0.5:
      raise _checks.UserError(f"val_fraction must be in (0, 0.5), got {val_fraction}.")
    order = np.random.default_rng(split_seed).permutation(len(train_source))
    held_out = max(1, int(round(val_fraction * len(order))))
    rows = {"train": np.sort(order[held_out:]), "val": np.sort(order[:held_out]),
            "test": np.arange(len(test_source))}
    super().__init__(train_source, test_source, rows, num_classes=nyuv2.NUM_CLASSES,
                     augment=augment, normal_loss=normal_loss, metric_averaging=metric_averaging)

  def describe(self) -> str:
    n = {k: len(v) for k, v in self.rows.items()}
    return (f"NYUv2 {self.shape[0]}×{self.shape[1]} ({n['train']} train / {n['val']} val "
            f"held out of train / {n['test']} test = the official val split)")


def from_config(config: Any) -> NYUv2Problem:
  """NYUv2 from the npy layout in the config's `data_dir`, checked before any training."""
  data_dir = _checks.config_data_dir(config.data_dir,
                                     "train/ and val/ of the preprocessed NYUv2")
  problem = NYUv2Problem(data_dir, height=config.height, width=config.width,
                         augment=config.augment, val_fraction=config.val_fraction,
                         split_seed=config.split_seed, check_values=config.check_values,
                         normal_loss=config.normal_loss,
                         metric_averaging=config.metric_averaging)
  problem.check_eval_batch_size(config.eval_batch_size)
  return problem
