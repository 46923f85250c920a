"""MultiDigits: small multi-task problems built from scikit-learn's bundled digits.

The 1797 8×8 grey-level images of `sklearn.datasets.load_digits` (values 0–16, no download)
become a multi-task data set, deterministic from a seed. Two task sets:

``"classify"`` (default), a miniature of CIFAR-100 as 20 tasks: the ten digits are partitioned
into four groups and every image belongs to exactly one task, its digit's group; each task is a
small classification among its own digits, labels remapped to 0..c-1 in increasing digit order.

=============  ============  ======================================================
task           digits        why
=============  ============  ======================================================
g0_0_6         0, 6          easy: almost never confused (0.2 errors per run)
g1_1_5_8_9     1, 5, 8, 9    hard: holds the most confused pairs 1–8, 5–9, 8–9, 1–9
g2_2_3         2, 3          easy (2–3: 1.4 errors)
g3_4_7         4, 7          easy (4–7: 1.6 errors)
=============  ============  ======================================================

How the groups were chosen: a 10-way classifier was cross-validated on all 1797 images (5-fold
stratified, 5 seeds each of scikit-learn's `MLPClassifier((64,))` and `LogisticRegression`,
pixels / 16), and the symmetric confusion count between digits i and j (errors in both
directions, averaged over the 10 runs) was recorded. The largest entries were 1–8: 8.6,
5–9: 5.1, 8–9: 3.1, 1–6: 2.7, 3–5: 2.5, 1–9: 2.3, 3–8: 2.1. Among all partitions into
four groups of at least two digits, the groups above maximise the total within-group confusion
(24.7; 21.5 of it inside {1, 5, 8, 9}): the confusable digits end up in one hard task, as the
look-alike fine classes of a CIFAR-100 superclass do. Measured per task, with one classifier
per task trained on that task's images only (4-fold CV, 3 seeds), the accuracy of an
`MLPClassifier((64,))` is 1.000 / 0.973 / 0.994 / 0.994 for g0 / g1 / g2 / g3; a dense
`MultiHeadMLP` (256, 256) trained on all four tasks with equal weights (Adam 1e-3, batch 64,
60 epochs, seeds 0–2) reaches 1.000 / 0.974 / 1.000 / 0.996 on the test split.

``"mixed"``: three tasks on every image, of different kinds and loss scales:

* ``digit``: 10-way classification of the digit;
* ``parity``: 2-way classification, 0 for an even digit and 1 for an odd one;
* ``ink``: regression of the image's mean ink intensity (mean pixel value in [0, 1]),
  standardised with the mean and standard deviation (ddof 0) of the train split, so that it
  has mean 0 and standard deviation 1 on train (and approximately so on val and test).

The same dense `MultiHeadMLP` recipe as above, equal weights and a squared error for ``ink``,
reaches test accuracy 0.977 (digit) and 0.984 (parity) and R² 0.922 (ink), seeds 0–2.

``"pairs"``: two glyphs overlaid on one 14 × 14 canvas, MultiMNIST-style (Sener & Koltun,
NeurIPS 2018): the left glyph at a random place in the canvas's left part (rows 0–6,
columns 0–2), the right one in its right part (rows 0–6, columns 4–6), the brighter pixel
kept where they overlap (columns 4–9). Three tasks on every canvas, sharing every input:
``left`` and ``right`` (10-way: each glyph's digit) and ``sum`` (their sum, a regression
standardised on train as ``ink`` is). The glyphs are split into train / val / test pools by
the same stratified split as the other task sets, and each split's pairs are drawn from its
own pool only, so no test glyph is ever seen in training; `PAIRS_SIZES` pairs a split
(3,000 training pairs; 10,000 test pairs from about 450 test glyphs: a test glyph recurs in
about 44 pairs).

``"groups:<g1>/<g2>/..."``: a grouping of the user's own, with the ``classify`` conventions:
each gᵢ is a string of at least two digits (``groups:38/59/17/06/24`` is five tasks, {3, 8},
{5, 9}, {1, 7}, {0, 6}, {2, 4}), no digit in two groups; task k classifies the images of its
digits (labels 0..c-1 in increasing digit order) and every image belongs to its digit's task.
Images of a digit that no group names are left out of every split. The spec is part of the
config (``config.task_sets``), so a workdir recorded with one grouping refuses another.

Splits: for every digit separately, the indices of its images are permuted by
``numpy.random.default_rng(seed)``; the first ``round(test_fraction · n)`` go to test, the next
``round(val_fraction · n)`` to validation and the rest to train. The split is therefore
stratified by digit (every task and class appears in every split in the same proportions), the
three splits share no source image, and each split keeps its images in increasing source
index (the trainer shuffles).
"""
from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import os
from typing import Any, NamedTuple

import numpy as np

from mmcompress import _checks

__all__ = ["check_task_set", "CLASSIFICATION", "CLASSIFY_GROUPS", "describe", "folder_name",
           "GROUPS_PREFIX", "load_multidigits", "MultiTaskData", "PAIRS_CANVAS", "PAIRS_SIZES",
           "parse_groups", "REGRESSION", "Split", "TASK_SETS"]

TASK_SETS = ("classify", "mixed", "pairs")  # and any "groups:<g1>/<g2>/..." (`parse_groups`)
GROUPS_PREFIX = "groups:"
CLASSIFICATION = "classification"
REGRESSION = "regression"

# The digit groups of the "classify" task set; see the module docstring for the evidence.
CLASSIFY_GROUPS: tuple[tuple[int, ...], ...] = ((0, 6), (1, 5, 8, 9), (2, 3), (4, 7))


class Split(NamedTuple):
  """One split of a multi-task data set, as NumPy arrays (a pytree: `jax.device_put` works).

  Attributes:
    images: (N, 8, 8, 1) float32 pixels in [0, 1] ((N, 14, 14, 1) for ``pairs``).
    targets: (N, K) float32; for a classification task the class index, for a regression task
      the value. Entries whose `task_mask` is False are 0.0 and carry no meaning.
    task_mask: (N, K) bool; True where the image belongs to the task (its target is valid).
    index: (N,) int64 row of each image in `sklearn.datasets.load_digits()` ((N, 2) for
      ``pairs``: the rows of the left and the right glyph).
  """
  images: np.ndarray
  targets: np.ndarray
  task_mask: np.ndarray
  index: np.ndarray

  @property
  def num_examples(self) -> int:
    """The number of images N in the split."""
    return int(self.images.shape[0])


@dataclasses.dataclass(frozen=True, eq=False)
class MultiTaskData:
  """A multi-task data set: task metadata and the three splits.

  Attributes:
    task_set: the name of the task set, e.g. ``"classify"``.
    task_names: K task names.
    task_kinds: K kinds, each ``"classification"`` or ``"regression"``.
    num_outputs: K output sizes: the number of classes, or 1 for a regression task.
    train: the training split.
    val: the validation split.
    test: the test split.
  """
  task_set: str
  task_names: tuple[str, ...]
  task_kinds: tuple[str, ...]
  num_outputs: tuple[int, ...]
  train: Split
  val: Split
  test: Split

  @property
  def num_tasks(self) -> int:
    """The number of tasks K."""
    return len(self.task_names)


def _split_indices(digits: np.ndarray, seed: int, val_fraction: float,
                   test_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Returns sorted (train, val, test) source indices, stratified by digit."""
  rng = np.random.default_rng(seed)
  train, val, test = [], [], []
  for digit in range(10):
    members = rng.permutation(np.flatnonzero(digits == digit))
    # At least one image of every digit in val and test, however small the fraction.
    n_test = max(1, int(round(test_fraction * members.size)))
    n_val = max(1, int(round(val_fraction * members.size)))
    test.append(members[:n_test])
    val.append(members[n_test:n_test + n_val])
    train.append(members[n_test + n_val:])
  return tuple(np.sort(np.concatenate(part)).astype(np.int64) for part in (train, val, test))


def parse_groups(task_set: str, name: str = "task_set") -> tuple[tuple[int, ...], ...]:
  """The digit groups of a ``"groups:<g1>/<g2>/..."`` task set, each in increasing order.

  Raises:
    UserError: naming `name` and what to change, unless the spec has at least two groups,
      each of at least two distinct digits 0-9, and no digit in two groups.

  >>> parse_groups("groups:38/59/17")
  ((3, 8), (5, 9), (1, 7))
  """
  example = f"e.g. '{GROUPS_PREFIX}38/59/17/06/24'"
  if not isinstance(task_set, str) or not task_set.startswith(GROUPS_PREFIX):
    raise _checks.UserError(f"{name}={task_set!r} is not a grouping: write it as {example}.")
  parts = task_set[len(GROUPS_PREFIX):].split("/")
  if len(parts) < 2:
    raise _checks.UserError(f"{name}={task_set!r} has {len(parts)} group: give at least two "
                            f"groups separated by '/', {example}.")
  groups, seen = [], {}
  for part in parts:
    if not part or not part.isdigit() or not part.isascii():
      raise _checks.UserError(f"{name}={task_set!r}: group {part!r} is not a string of digits "
                              f"0-9; {example}.")
    digits = tuple(sorted({int(c) for c in part}))
    if len(digits) < 2:
      raise _checks.UserError(f"{name}={task_set!r}: group {part!r} holds one digit; a task "
                              "classifies at least two digits.")
    for d in digits:
      if d in seen:
        raise _checks.UserError(f"{name}={task_set!r}: digit {d} is in group {seen[d]!r} and "
                                f"in group {part!r}; put each digit in one group.")
      seen[d] = part
    groups.append(digits)
  return tuple(groups)


def check_task_set(task_set: Any, name: str = "task_set") -> str:
  """`task_set` if it names a task set (`TASK_SETS` or a valid grouping), else a `UserError`."""
  if isinstance(task_set, str) and task_set.startswith(GROUPS_PREFIX):
    parse_groups(task_set, name)
    return task_set
  if task_set not in TASK_SETS:
    raise _checks.UserError(f"{name} must be one of {list(TASK_SETS)} or a grouping "
                            f"'{GROUPS_PREFIX}<digits>/<digits>/...' (e.g. "
                            f"'{GROUPS_PREFIX}38/59/17/06/24'), got {task_set!r}.")
  return task_set


# Pairs drawn per split for ``pairs`` (train, val, test), and the canvas's side. 3,000 training
# pairs (about 2.8 per training glyph and side), not more: a step of the fair study costs the
# same per example on every task set, and 10,000 training pairs made a `pairs` epoch 156 steps
# against `classify`'s 16: more than 12 h of one core for its two settings.
PAIRS_SIZES = (3_000, 2_000, 10_000)
PAIRS_CANVAS = 14


def _overlay(images: np.ndarray, left: np.ndarray, right: np.ndarray,
             rng: np.random.Generator) -> np.ndarray:
  """(N, 14, 14, 1) canvases: glyph `left[i]` and glyph `right[i]` of `images` (8 × 8) placed
  at random offsets in the canvas's left and right parts, the brighter pixel kept."""
  n, side = left.size, images.shape[1]
  canvas = np.zeros((n, PAIRS_CANVAS, PAIRS_CANVAS), np.float32)
  rows = rng.integers(0, PAIRS_CANVAS - side + 1, (n, 2))
  cols = np.stack([rng.integers(0, 3, n), rng.integers(4, PAIRS_CANVAS - side + 1, n)], 1)
  for k, glyphs in enumerate((left, right)):
    for i in range(n):
      r, c = rows[i, k], cols[i, k]
      window = canvas[i, r:r + side, c:c + side]
      np.maximum(window, images[glyphs[i], :, :, 0], out=window)
  return canvas[..., None]


def _pairs(images: np.ndarray, digits: np.ndarray, splits: tuple[np.ndarray, ...], seed: int
           ) -> tuple[tuple[Split, ...], tuple[float, float]]:
  """The ``pairs`` splits, each drawn from its own glyph pool, and the train split's mean and
  standard deviation of the digit sum (the regression target is standardised with them)."""
  rng = np.random.default_rng([seed, 1])  # apart from the glyph split's stream
  drawn = []
  for pool, n in zip(splits, PAIRS_SIZES):
    left, right = rng.choice(pool, n), rng.choice(pool, n)
    drawn.append((_overlay(images, left, right, rng), left, right))
  train_sum = (digits[drawn[0][1]] + digits[drawn[0][2]]).astype(np.float64)
  mean, std = float(train_sum.mean()), float(train_sum.std())
  out = []
  for canvases, left, right in drawn:
    total = (digits[left] + digits[right] - mean) / std
    targets = np.stack([digits[left], digits[right], total], 1).astype(np.float32)
    out.append(Split(images=canvases, targets=targets, task_mask=np.ones(targets.shape, bool),
                     index=np.stack([left, right], 1)))
  return tuple(out), (mean, std)


def folder_name(task_set: str) -> str:
  """A task set's folder name: a grouping's ':' and '/' become '-' (groups-38-59-17)."""
  return task_set.replace(":", "-").replace("/", "-")


def _classify_targets(digits: np.ndarray, groups: tuple[tuple[int, ...], ...] = CLASSIFY_GROUPS
                      ) -> tuple[np.ndarray, np.ndarray]:
  """Returns (targets, task_mask) of a grouping (by default "classify"'s) for a vector of
  digits."""
  targets = np.zeros((digits.size, len(groups)), np.float32)
  mask = np.zeros((digits.size, len(groups)), bool)
  for k, group in enumerate(groups):
    for label, digit in enumerate(group):
      rows = digits == digit
      targets[rows, k] = label
      mask[rows, k] = True
  return targets, mask


def _bundled_digits() -> tuple[np.ndarray, np.ndarray]:
  """The images ((1797, 8, 8) float64, values 0–16) and digits ((1797,) int) of
  `sklearn.datasets.load_digits`, exactly.

  Read from the CSV file scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``: 64 pixel
  values and the digit per row) without importing scikit-learn, whose import takes seconds, paid
  again by every process that loads the data; if the file is not where that layout puts it,
  `load_digits` itself.
  """
  spec = importlib.util.find_spec("sklearn")  # finds the package; runs none of it
  folders = (spec.submodule_search_locations or []) if spec else []
  for folder in folders:
    path = os.path.join(folder, "datasets", "data", "digits.csv.gz")
    if os.path.isfile(path):
      with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",")
      return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)
  from sklearn import datasets  # pylint: disable=import-outside-toplevel
  raw = datasets.load_digits()
  return raw.images, raw.target


def load_multidigits(task_set: str = "classify", *, seed: int = 0, val_fraction: float = 0.15,
                     test_fraction: float = 0.25) -> MultiTaskData:
  """Builds MultiDigits from scikit-learn's bundled digits (no download).

  Args:
    task_set: ``"classify"`` (four digit-group tasks, one per image), ``"mixed"`` (digit,
      parity and an ink regression on every image), ``"pairs"`` (two overlaid glyphs: left,
      right and their sum) or a grouping ``"groups:38/59/..."``;
      see the module docstring.
    seed: a non-negative integer that decides the split; the same seed gives the same arrays.
    val_fraction: the fraction of each digit's images held out for validation, in (0, 0.5).
    test_fraction: the fraction of each digit's images held out for test, in (0, 0.5).

  Returns:
    The `MultiTaskData`, NumPy arrays throughout.

  Raises:
    ValueError: for an unknown task set, a bad seed or a fraction outside (0, 0.5).

  >>> data = load_multidigits("classify", seed=0)
  >>> data.task_names
  ('g0_0_6', 'g1_1_5_8_9', 'g2_2_3', 'g3_4_7')
  """
  check_task_set(task_set)
  seed = _checks.non_negative_int(seed, "seed")
  val_fraction = _checks.split_fraction(val_fraction, "val_fraction")
  test_fraction = _checks.split_fraction(test_fraction, "test_fraction")

  raw_images, raw_digits = _bundled_digits()
  images = (raw_images / 16.0).astype(np.float32)[..., None]
  digits = raw_digits.astype(np.int64)
  splits = _split_indices(digits, int(seed), val_fraction, test_fraction)

  if task_set == "pairs":
    (train, val, test), _ = _pairs(images, digits, splits, int(seed))
    return MultiTaskData(task_set=task_set, task_names=("left", "right", "sum"),
                         task_kinds=(CLASSIFICATION, CLASSIFICATION, REGRESSION),
                         num_outputs=(10, 10, 1), train=train, val=val, test=test)
  if task_set == "classify" or task_set.startswith(GROUPS_PREFIX):
    groups = CLASSIFY_GROUPS if task_set == "classify" else parse_groups(task_set)
    names = tuple("g{}_{}".format(k, "_".join(map(str, group)))
                  for k, group in enumerate(groups))
    kinds = (CLASSIFICATION,) * len(groups)
    num_outputs = tuple(len(group) for group in groups)
    targets, mask = _classify_targets(digits, groups)
    named = mask.any(axis=1)  # images of a digit no group names are in no split
    splits = tuple(rows[named[rows]] for rows in splits)
  else:
    names = ("digit", "parity", "ink")
    kinds = (CLASSIFICATION, CLASSIFICATION, REGRESSION)
    num_outputs = (10, 2, 1)
    ink = images.astype(np.float64).mean(axis=(1, 2, 3))
    train_ink = ink[splits[0]]
    ink = (ink - train_ink.mean()) / train_ink.std()
    targets = np.stack([digits, digits % 2, ink], axis=1).astype(np.float32)
    mask = np.ones(targets.shape, bool)

  train, val, test = (Split(images=images[rows], targets=targets[rows], task_mask=mask[rows],
                            index=rows) for rows in splits)
  return MultiTaskData(task_set=task_set, task_names=names, task_kinds=kinds,
                       num_outputs=num_outputs, train=train, val=val, test=test)


def describe(data: MultiTaskData) -> str:
  """Returns a small text table: task, kind, outputs and the train/val/test example counts.

  Args:
    data: a `MultiTaskData`.

  Returns:
    The table, one line per task under a header line, without a trailing newline.
  """
  splits = (data.train, data.val, data.test)
  width = max(len("task"), *(len(name) for name in data.task_names))
  sizes = " / ".join(f"{label} {split.num_examples}"
                     for label, split in zip(("train", "val", "test"), splits))
  lines = [
      f"MultiDigits {data.task_set!r}: {data.num_tasks} tasks; images: {sizes}",
      f"{'task':<{width}}  {'kind':<14}  {'outputs':>7}  {'train':>5}  {'val':>5}  {'test':>5}",
  ]
  for k, name in enumerate(data.task_names):
    counts = "  ".join(f"{int(split.task_mask[:, k].sum()):>5}" for split in splits)
    lines.append(f"{name:<{width}}  {data.task_kinds[k]:<14}  {data.num_outputs[k]:>7}  {counts}")
  return "\n".join(lines)
