"""Scenes as the NYUv2 problem: the same batches, losses, metrics and model, other data.

The rendered splits (`mmcompress.problems.scenes.data`) are already in NYUv2's layout, so the
problem is NYUv2's `DenseProblem` on in-memory sources: `ArraySource` gives the
``source[i]`` dict interface that `mmcompress.problems.nyuv2.data.load_batch` reads from the
files of a NYUv2 directory, and the class count is the scenes' 7 (`render.NUM_CLASSES`)
instead of NYUv2's 13. The train and val splits share one source (val rows after the train
rows), as NYUv2's held-out validation rows share the train files; the test split is the
scenes' own test split.
"""
from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from mmcompress import _checks
from mmcompress.models import mtan
from mmcompress.problems.nyuv2 import problem as nyuv2_problem
from mmcompress.problems.nyuv2 import tasks
from mmcompress.problems.scenes import data as scenes
from mmcompress.problems.scenes import render

__all__ = ["ArraySource", "concatenate", "from_config", "ScenesProblem", "trivial_metrics",
           "trivial_predictions", "validate_config"]


class ArraySource:
  """Random access to examples stacked in memory, with `nyuv2.data.NYUv2Source`'s interface.

  Args:
    arrays: ``{image, label, depth, normal}``, each stacked over the N examples (shapes and
      dtypes of `mmcompress.problems.scenes.data`).
  """

  def __init__(self, arrays: Mapping[str, np.ndarray]):
    counts = {len(arrays[kind]) for kind in scenes.MAPS}
    if len(counts) != 1:
      raise _checks.UserError(f"the maps of a split must hold one count of examples, got "
                              f"{ {kind: len(arrays[kind]) for kind in scenes.MAPS} }.")
    self._arrays = {kind: arrays[kind] for kind in scenes.MAPS}
    self._count = counts.pop()

  def __len__(self) -> int:
    return self._count

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    """Example `index` as ``{image, label, depth, normal}``, fresh arrays (as NYUv2Source)."""
    if isinstance(index, bool) or not isinstance(index, numbers.Integral):
      raise TypeError(f"ArraySource indices must be integers, got {index!r}.")
    if not -self._count <= index < self._count:
      raise IndexError(f"index {index} out of range for {self._count} examples.")
    return {kind: np.array(array[index], dtype=scenes.DTYPES[kind])
            for kind, array in self._arrays.items()}


def concatenate(first: Mapping[str, np.ndarray],
                second: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The maps of two splits, `second`'s examples after `first`'s."""
  return {kind: np.concatenate([first[kind], second[kind]]) for kind in scenes.MAPS}


class ScenesProblem(nyuv2_problem.DenseProblem):
  """The rendered scenes as NYUv2's three-task problem (see the module docstring).

  Args:
    splits: ``{"train", "val", "test"}`` → the maps of the split, as
      `scenes.load_scenes` returns them.
    augment, normal_loss, metric_averaging: as for `nyuv2.NYUv2Problem`.
    seed: the data set's seed, for `describe` only.
  """

  def __init__(self, splits: Mapping[str, Mapping[str, np.ndarray]], *, augment: bool = True,
               normal_loss: str = "cosine", metric_averaging: str = "split", seed: int = 0):
    train, val = len(splits["train"]["label"]), len(splits["val"]["label"])
    rows = {"train": np.arange(train), "val": np.arange(train, train + val),
            "test": np.arange(len(splits["test"]["label"]))}
    super().__init__(ArraySource(concatenate(splits["train"], splits["val"])),
                     ArraySource(splits["test"]), rows, num_classes=render.NUM_CLASSES,
                     augment=augment, normal_loss=normal_loss,
                     metric_averaging=metric_averaging)
    self.seed = seed

  def describe(self) -> str:
    n = {k: len(v) for k, v in self.rows.items()}
    return (f"Scenes {self.shape[0]}×{self.shape[1]} ({n['train']} train / {n['val']} val / "
            f"{n['test']} test rendered rooms, seed {self.seed}; {render.NUM_CLASSES} classes)")


def trivial_predictions(train: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The trivial predictor of each task, from the valid pixels of the training maps.

  Returns:
    ``{"segmentation": (C,) logits that pick the majority class, "depth": (1,) the mean
    depth, "normal": (3,) the mean normal, normalised}``, each to be broadcast to every pixel.
  """
  label = train["label"][train["label"] != render.IGNORE_LABEL]
  counts = np.bincount(label, minlength=render.NUM_CLASSES)
  depth = train["depth"][train["depth"] != 0]
  valid_normal = np.any(train["normal"] != 0, axis=-1)
  normal = train["normal"][valid_normal].astype(np.float64).mean(axis=0)
  return {tasks.SEGMENTATION: np.eye(render.NUM_CLASSES, dtype=np.float32)[np.argmax(counts)],
          tasks.DEPTH: np.array([depth.astype(np.float64).mean()], np.float32),
          tasks.NORMAL: (normal / np.linalg.norm(normal)).astype(np.float32)}


def trivial_metrics(problem: nyuv2_problem.DenseProblem, predictions: Mapping[str, np.ndarray],
                    split: str = "test", batch_size: int = 50) -> dict[str, float]:
  """Every metric of the constant `predictions` (`trivial_predictions`) on `split`.

  Computed by the problem's own metric code (`tasks.dense_sums` over its evaluation batches,
  then `tasks.finalize`), so the numbers compare with a trained model's ``all_metrics``.
  """
  total = None
  for batch in problem.eval_batches(split, batch_size):
    shape = batch["label"].shape
    constant = {t: np.broadcast_to(v, shape + v.shape) for t, v in predictions.items()}
    total = tasks.add_sums(total, tasks.dense_sums(constant, batch, batch["valid"]))
  return tasks.finalize(total)


def validate_config(config: Any) -> None:
  """Raises a `UserError` for a scenes setting that cannot run, before any scene is rendered."""
  nyuv2_problem.validate_config(config)
  for field in ("num_train", "num_val", "num_test", "height", "width"):
    _checks.positive_int(config[field], f"config.{field}")
  _checks.non_negative_int(config.data_seed, "config.data_seed")
  if config.model == "mtan":
    kwargs = dict(config.get("model_kwargs") or {})
    try:
      filters, _ = mtan.checked_blocks(kwargs.get("filters", mtan.SEGNET_FILTERS),
                                       kwargs.get("convs_per_block",
                                                  mtan.SEGNET_CONVS_PER_BLOCK))
    except _checks.UserError as error:
      raise _checks.UserError(f"config.model_kwargs: {error} (one entry per MTAN block "
                              "each)") from None
    multiple = mtan.size_multiple(filters)
    if config.height % multiple or config.width % multiple:
      raise _checks.UserError(
          f"config.height={config.height} and config.width={config.width} must be multiples "
          f"of {multiple} for the MTAN model (one 2x2 pooling per block).")
  if config.num_train < config.batch_size:
    raise _checks.UserError(f"config.batch_size={config.batch_size} is larger than the "
                            f"{config.num_train} training scenes (config.num_train).")


def from_config(config: Any) -> ScenesProblem:
  """The scenes of a config, read from the cache `config.data_dir` (default cache if empty)
  or rendered into it."""
  splits = scenes.load_scenes(config.data_dir or None, num_train=config.num_train,
                              num_val=config.num_val, num_test=config.num_test,
                              height=config.height, width=config.width, seed=config.data_seed)
  problem = ScenesProblem(splits, augment=config.augment, normal_loss=config.normal_loss,
                          metric_averaging=config.metric_averaging, seed=config.data_seed)
  problem.check_eval_batch_size(config.eval_batch_size)
  return problem
