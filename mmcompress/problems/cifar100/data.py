"""CIFAR-100 as 20 tasks: one per coarse superclass, a 5-way classification of its fine classes.

The benchmark of the papers (docs/method.md §4): the 100 fine classes of CIFAR-100 are grouped by
the data set's own 20 coarse superclasses, and task k is the coarse class k. Its five fine
classes get the task labels 0–4 in increasing order of fine label id: coarse 10
``large_natural_outdoor_scenes`` holds the fine classes 23 cloud, 33 forest, 49 mountain,
60 plain and 71 sea, so fine 71 is task 10, label 4. Every image belongs to exactly one task.

Task and label are always derived from the fine label through `FINE_TO_COARSE`, never read
from the data set's ``coarse_label``: on real data the two agree (`check_coarse_labels`
verifies it), while `tfds.testing.mock_data` draws them independently.

Data flow, all NumPy on the host:

* `load_split` reads a split of the TFDS ``cifar100`` data set (array_record, random access, no
  TensorFlow) into memory: uint8 images (N, 32, 32, 3) and fine labels (N,).
* `make_splits` carves a validation split, stratified by fine class, out of the official
  training split; the official test split is the test set. Model selection uses validation.
* `task_batch` draws, for a training step, a batch of the same size from every task,
  augmented (`augment`: random 32×32 crop of the zero-padded image, horizontal flip) and
  normalised (`normalize`); it is a pure function of (seed, stage, step), so that a resumed
  run replays the same batches.
* `eval_arrays` gives every example of a split once, normalised, with its task and label.
"""
from __future__ import annotations

import contextlib
import dataclasses
import numbers
import os
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from absl import logging as absl_logging

from mmcompress import _checks

__all__ = ["augment", "check_coarse_labels", "CLASSES_PER_TASK", "COARSE_NAMES", "eval_arrays",
           "FINE_NAMES", "FINE_TO_COARSE", "fine_to_task_label", "horizontal_flip", "IMAGE_SHAPE",
           "ImageSplit", "load_split", "make_splits", "MEAN", "normalize", "NUM_FINE", "NUM_TASKS",
           "open_source", "PAD", "random_crop", "STD", "task_batch", "TASK_CLASSES", "TASK_NAMES",
           "TaskIndex"]

NUM_FINE = 100
NUM_TASKS = 20
CLASSES_PER_TASK = 5
IMAGE_SHAPE = (32, 32, 3)
PAD = 4

# Per-channel statistics of the training images on [0, 1] pixels, the values used throughout
# the CIFAR-100 literature.
MEAN = (0.5071, 0.4867, 0.4408)
STD = (0.2675, 0.2565, 0.2761)

# The names in the order of the label ids, as in the data set's fine_label_names.txt and
# coarse_label_names.txt (the ids are alphabetical).
FINE_NAMES: tuple[str, ...] = (
    "apple", "aquarium_fish", "baby", "bear", "beaver",                              # 0-4
    "bed", "bee", "beetle", "bicycle", "bottle",                                     # 5-9
    "bowl", "boy", "bridge", "bus", "butterfly",                                     # 10-14
    "camel", "can", "castle", "caterpillar", "cattle",                               # 15-19
    "chair", "chimpanzee", "clock", "cloud", "cockroach",                            # 20-24
    "couch", "crab", "crocodile", "cup", "dinosaur",                                 # 25-29
    "dolphin", "elephant", "flatfish", "forest", "fox",                              # 30-34
    "girl", "hamster", "house", "kangaroo", "keyboard",                              # 35-39
    "lamp", "lawn_mower", "leopard", "lion", "lizard",                               # 40-44
    "lobster", "man", "maple_tree", "motorcycle", "mountain",                        # 45-49
    "mouse", "mushroom", "oak_tree", "orange", "orchid",                             # 50-54
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",                       # 55-59
    "plain", "plate", "poppy", "porcupine", "possum",                                # 60-64
    "rabbit", "raccoon", "ray", "road", "rocket",                                    # 65-69
    "rose", "sea", "seal", "shark", "shrew",                                         # 70-74
    "skunk", "skyscraper", "snail", "snake", "spider",                               # 75-79
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table",                   # 80-84
    "tank", "telephone", "television", "tiger", "tractor",                           # 85-89
    "train", "trout", "tulip", "turtle", "wardrobe",                                 # 90-94
    "whale", "willow_tree", "wolf", "woman", "worm",                                 # 95-99
)

COARSE_NAMES: tuple[str, ...] = (
    "aquatic_mammals", "fish", "flowers", "food_containers",                         # 0-3
    "fruit_and_vegetables", "household_electrical_devices", "household_furniture",   # 4-6
    "insects", "large_carnivores", "large_man-made_outdoor_things",                  # 7-9
    "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",                # 10-11
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles",              # 12-15
    "small_mammals", "trees", "vehicles_1", "vehicles_2",                            # 16-19
)

# The coarse class of every fine class, indexed by fine label id (a fact of the data set).
FINE_TO_COARSE: tuple[int, ...] = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3,          # apple .. bottle
    3, 14, 9, 18, 7, 11, 3, 9, 7, 11,        # bowl .. cattle
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15,       # chair .. dinosaur
    0, 11, 1, 10, 12, 14, 16, 9, 11, 5,      # dolphin .. keyboard
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10,     # lamp .. mountain
    16, 4, 17, 4, 2, 0, 17, 4, 18, 17,       # mouse .. pine_tree
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19,      # plain .. rocket
    2, 10, 0, 1, 16, 12, 9, 13, 15, 13,      # rose .. spider
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19,        # squirrel .. tractor
    18, 1, 2, 15, 6, 0, 17, 8, 14, 13,       # train .. worm
)

# Task k's fine classes in increasing id order; a fine class's position here is its task label.
TASK_CLASSES: tuple[tuple[int, ...], ...] = tuple(
    tuple(fine for fine in range(NUM_FINE) if FINE_TO_COARSE[fine] == k)
    for k in range(NUM_TASKS))

TASK_NAMES: tuple[str, ...] = COARSE_NAMES

_SPLITS = ("train", "test")


def _fine_labels(fine: npt.ArrayLike, name: str = "fine") -> np.ndarray:
  """Returns `fine` as an int64 vector of labels in [0, 100), or raises."""
  array = np.asarray(fine)
  if array.ndim != 1 or not (array.dtype.kind in "iu" or array.size == 0):
    raise _checks.UserError(
        f"{name} must be a 1-D integer array of fine labels, got shape {array.shape} and "
        f"dtype {array.dtype}.")
  array = array.astype(np.int64)
  if array.size and (array.min() < 0 or array.max() >= NUM_FINE):
    raise _checks.UserError(
        f"{name} must hold fine labels in [0, {NUM_FINE}), got values in "
        f"[{array.min()}, {array.max()}].")
  return array


def _images(images: npt.ArrayLike, num: int | None = None) -> np.ndarray:
  """Returns `images` as a uint8 (N, 32, 32, 3) array, or raises."""
  array = np.asarray(images)
  if array.dtype != np.uint8 or array.ndim != 4 or array.shape[1:] != IMAGE_SHAPE:
    raise _checks.UserError(
        f"images must be uint8 of shape (N, 32, 32, 3) (raw pixels, not yet normalised), got "
        f"shape {array.shape} and dtype {array.dtype}.")
  if num is not None and array.shape[0] != num:
    raise _checks.UserError(
        f"images and fine labels must have the same length, got {array.shape[0]} and {num}.")
  return array


def fine_to_task_label(fine: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
  """Maps fine labels to (task, task label) through `FINE_TO_COARSE`.

  Args:
    fine: integer fine labels in [0, 100), any shape.

  Returns:
    ``(task, label)``, two int32 arrays of the shape of `fine`: the coarse class of every fine
    label and its rank, 0–4, among that coarse class's fine ids (`TASK_CLASSES`).

  Raises:
    ValueError: for a non-integer array or a label outside [0, 100).

  >>> fine_to_task_label([0, 71])
  (array([ 4, 10], dtype=int32), array([0, 4], dtype=int32))
  """
  array = np.asarray(fine)
  flat = _fine_labels(array.reshape(-1), "fine")
  task_of = np.asarray(FINE_TO_COARSE, np.int32)
  label_of = np.zeros(NUM_FINE, np.int32)
  for classes in TASK_CLASSES:
    label_of[list(classes)] = np.arange(len(classes), dtype=np.int32)
  return task_of[flat].reshape(array.shape), label_of[flat].reshape(array.shape)


def _coarse_mismatch(fine: np.ndarray, coarse: np.ndarray) -> str | None:
  """Describes the first example whose coarse label disagrees with the table, or None."""
  expected = np.asarray(FINE_TO_COARSE, np.int64)[fine]
  bad = np.flatnonzero(expected != coarse)
  if not bad.size:
    return None
  i = int(bad[0])
  f, c = int(fine[i]), int(coarse[i])
  found = COARSE_NAMES[c] if 0 <= c < NUM_TASKS else "out of range"
  return (f"example {i} has fine label {f} ({FINE_NAMES[f]}) and coarse_label {c} "
          f"({found}), but FINE_TO_COARSE maps fine {f} to coarse {int(expected[i])} "
          f"({COARSE_NAMES[expected[i]]}); {bad.size} of {fine.size} examples checked here "
          "disagree. The data is not the standard CIFAR-100, or its labels were shuffled.")


def _chunks(source: Sequence[Any], total: int,
            chunk_size: int) -> Iterator[tuple[int, Sequence[Any]]]:
  """Yields (start, examples) for the first `total` examples, `chunk_size` at a time."""
  chunk_size = _checks.positive_int(chunk_size, "chunk_size")
  # A batched read is about twice as fast as one record at a time on array_record files.
  read_many = getattr(source, "__getitems__", None)
  for start in range(0, total, chunk_size):
    keys = list(range(start, min(start + chunk_size, total)))
    examples = None
    if read_many is not None:
      try:
        examples = read_many(keys)
      except TypeError:
        # tfds.testing.mock_data (TFDS 4.9) installs a __getitems__ that cannot be called;
        # reading one by one gives the same examples.
        read_many = None
    if examples is None:
      examples = [source[i] for i in keys]
    if len(examples) != len(keys):
      raise ValueError(f"asked the data source for {len(keys)} examples, got {len(examples)}.")
    yield start, examples


def check_coarse_labels(source: Sequence[dict[str, Any]], num_examples: int | None = None,
                        *, chunk_size: int = 4096) -> int:
  """Verifies that every example's ``coarse_label`` is `FINE_TO_COARSE` of its ``label``.

  The tasks are derived from the fine label alone; this check confirms, on real data, that
  the table and the data set agree. It reads (and so decodes) every example it checks, which
  costs as much as `load_split` (7–9 s for the training split); ``load_split(...,
  check_coarse=True)`` checks in the same pass at no extra cost.

  Args:
    source: a random-access sequence of examples with integer ``label`` and ``coarse_label``,
      e.g. ``open_source("train")``.
    num_examples: check only the first `num_examples` examples; all of them when None.
    chunk_size: examples read at a time.

  Returns:
    The number of examples checked.

  Raises:
    ValueError: naming the first example (by index) whose coarse label disagrees.
  """
  total = len(source)
  if num_examples is not None:
    total = min(total, _checks.non_negative_int(num_examples, "num_examples"))
  fine = np.empty(total, np.int64)
  coarse = np.empty(total, np.int64)
  for start, examples in _chunks(source, total, chunk_size):
    stop = start + len(examples)
    fine[start:stop] = [example["label"] for example in examples]
    coarse[start:stop] = [example["coarse_label"] for example in examples]
  problem = _coarse_mismatch(_fine_labels(fine, "label"), coarse)
  if problem:
    raise _checks.UserError(f"CIFAR-100 coarse labels disagree with FINE_TO_COARSE: {problem}")
  return total


def _prepare_hint(data_dir: str | None) -> str:
  where = f"--data_dir={data_dir}" if data_dir else "--data_dir=DIR"
  return (
      "Prepare it once, on a machine with internet, in the array_record format that random "
      f"access needs (TFDS' default, TFRecord, will not do): `tfds build cifar100 {where} "
      "--file_format=array_record`, or in Python `tfds.builder('cifar100', data_dir=DIR, "
      "file_format='array_record').download_and_prepare()`; then copy DIR to this machine and "
      "pass it as --config.data_dir (here: the data_dir argument).")


@contextlib.contextmanager
def _tfds_quiet() -> Iterator[None]:
  """TFDS' absl warnings (a folder without ``dataset_info.json``, ...) held back while it is
  probed: what is wrong is said once, in the error, not in two warnings before it."""
  previous = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    yield
  finally:
    absl_logging.set_verbosity(previous)


def open_source(split: str, data_dir: str | os.PathLike[str] | None = None) -> Sequence[Any]:
  """Opens a split of the prepared TFDS ``cifar100`` data set for random access.

  Uses `tfds.data_source` (array_record files, no TensorFlow) and never downloads.

  Args:
    split: ``"train"`` or ``"test"``, optionally with a TFDS slice such as ``"train[:1000]"``.
    data_dir: the TFDS data directory; TFDS' default (``$TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``) when None.

  Returns:
    The data source: ``len(source)`` examples, ``source[i]`` a dict with ``image`` (uint8
    (32, 32, 3)), ``label`` (fine), ``coarse_label`` and ``id``.

  Raises:
    ValueError: for a split other than train or test.
    MissingDataError (a FileNotFoundError and a ValueError): when the data set is not
      prepared there; the message says how to.
  """
  # TFDS takes about a second to import and only loading needs it.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  if not isinstance(split, str) or split.split("[", 1)[0].strip() not in _SPLITS:
    raise _checks.UserError(f"split must be 'train' or 'test' (optionally sliced), got {split!r}.")
  directory = None if data_dir is None else os.path.expanduser(os.fspath(data_dir))
  if directory is not None and not os.path.isdir(directory):
    raise _checks.MissingDataError(
        f"CIFAR-100: the data directory {directory} does not exist. {_prepare_hint(directory)}")
  try:
    with _tfds_quiet():
      # download=False: a missing data set must fail here, not start a download.
      return tfds.data_source("cifar100", split=split, data_dir=directory, download=False)
  except (KeyError, NotImplementedError, ValueError, FileNotFoundError) as error:
    # TFDS reports a missing data set obliquely (an empty split dict, or the default file
    # format being unsupported): ask the builder, and let any other failure through as it is.
    with _tfds_quiet():
      builder = tfds.builder("cifar100", data_dir=directory)
      if builder.is_prepared() and "array_record" in {
          getattr(f, "value", f) for f in builder.info.available_file_formats()}:
        raise
    where = builder.data_dir
    raise _checks.MissingDataError(
        f"CIFAR-100 (TFDS 'cifar100', array_record) is not prepared in {where}. "
        f"{_prepare_hint(directory)} TFDS said: {error}") from error


def load_split(split: str, data_dir: str | os.PathLike[str] | None = None, *,
               check_coarse: bool = False,
               chunk_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
  """Reads a whole split of CIFAR-100 into memory.

  CIFAR-100 is small (50 000 + 10 000 images of 3 KB, 150 MB + 30 MB in memory). The data
  source is read in chunks of `chunk_size` examples (``source.__getitems__``, one batched
  array_record read per chunk; one by one where a source cannot) and every example's PNG is
  decoded (about 60 µs) into preallocated arrays. Measured on a 2-core machine with an
  array_record copy of the same layout (random pixels): 7–9 s for the 50 000 training images
  and 1.5 s for the 10 000 test images, plus about 1 s to import TFDS (one at a time instead
  of in chunks, the training split takes twice as long).

  Args:
    split: ``"train"`` or ``"test"`` (a TFDS slice such as ``"train[:1000]"`` works too).
    data_dir: the TFDS data directory; TFDS' default when None.
    check_coarse: also verify in the same pass, at no extra cost, that every example's coarse
      label agrees with `FINE_TO_COARSE` (as `check_coarse_labels`). Keep False under
      `tfds.testing.mock_data`, whose coarse labels are random.
    chunk_size: examples gathered per chunk before they are stored.

  Returns:
    ``(images, fine)``: uint8 (N, 32, 32, 3) and int32 (N,), in the order of the data source.

  Raises:
    FileNotFoundError: when the data set is not prepared; the message says how to.
    ValueError: for a bad split, or a coarse label that disagrees when `check_coarse`.
  """
  source = open_source(split, data_dir)
  n = len(source)
  images = np.empty((n, *IMAGE_SHAPE), np.uint8)
  fine = np.empty(n, np.int64)
  coarse = np.empty(n, np.int64)
  for start, examples in _chunks(source, n, chunk_size):
    stop = start + len(examples)
    images[start:stop] = np.stack([np.asarray(example["image"]) for example in examples])
    fine[start:stop] = [example["label"] for example in examples]
    coarse[start:stop] = [example["coarse_label"] for example in examples]
  fine = _fine_labels(fine, "label")
  if check_coarse:
    problem = _coarse_mismatch(fine, coarse)
    if problem:
      raise _checks.UserError(
          f"CIFAR-100 {split!r}: coarse labels disagree with FINE_TO_COARSE: {problem}")
  return images, fine.astype(np.int32)


class ImageSplit(NamedTuple):
  """Images with their fine labels (a pytree of NumPy arrays).

  Attributes:
    images: uint8 (N, 32, 32, 3).
    fine: int32 (N,) fine labels.
    index: int64 (N,) row of every example in the array it was taken from.
  """
  images: np.ndarray
  fine: np.ndarray
  index: np.ndarray


def make_splits(train_images: npt.ArrayLike, train_fine: npt.ArrayLike,
                val_fraction: float = 0.1, seed: int = 0) -> tuple[ImageSplit, ImageSplit]:
  """Carves a validation split out of the training set, stratified by fine class.

  For every fine class separately, the rows of its examples are permuted by
  ``np.random.default_rng(seed)`` (classes in increasing order); the first
  ``round(val_fraction · n)`` go to validation and the rest to train. Both splits keep
  increasing row order. On real CIFAR-100 (500 images a class) the default gives 450 train
  and 50 validation images per class: 2250 and 250 per task.

  Args:
    train_images: uint8 (N, 32, 32, 3), e.g. from ``load_split("train")``.
    train_fine: (N,) fine labels.
    val_fraction: the fraction of every class held out, in (0, 1).
    seed: an integer >= 0; the same seed gives the same splits.

  Returns:
    ``(train, val)``, two `ImageSplit` whose ``index`` are rows of `train_images`.

  Raises:
    ValueError: for mismatched or malformed arrays, a fraction outside (0, 1) or a bad seed.
  """
  fine = _fine_labels(train_fine, "train_fine")
  images = _images(train_images, fine.size)
  if (isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real)
      or not 0.0 < val_fraction < 1.0):
    raise _checks.UserError(
        f"val_fraction must be a number in (0, 1) (e.g. 0.1), got {val_fraction!r}.")
  rng = np.random.default_rng(_checks.non_negative_int(seed, "seed"))
  train_rows, val_rows = [], []
  for label in range(NUM_FINE):
    rows = rng.permutation(np.flatnonzero(fine == label))
    n_val = int(round(val_fraction * rows.size))
    val_rows.append(rows[:n_val])
    train_rows.append(rows[n_val:])
  splits = []
  for rows in (train_rows, val_rows):
    rows = np.sort(np.concatenate(rows)).astype(np.int64)
    splits.append(ImageSplit(images=images[rows], fine=fine[rows].astype(np.int32), index=rows))
  return splits[0], splits[1]


def normalize(images: npt.ArrayLike) -> np.ndarray:
  """Maps uint8 pixels to float32 ``(x / 255 - MEAN) / STD``, channel by channel.

  Args:
    images: uint8 (..., 3) raw pixels.

  Returns:
    float32 array of the same shape.

  Raises:
    ValueError: for a dtype other than uint8 (normalising twice is a silent error otherwise).
  """
  array = np.asarray(images)
  if array.dtype != np.uint8 or array.ndim < 1 or array.shape[-1] != 3:
    raise ValueError(
        f"normalize expects uint8 pixels with 3 channels last, got shape {array.shape} and "
        f"dtype {array.dtype}.")
  mean = np.asarray(MEAN, np.float32)
  std = np.asarray(STD, np.float32)
  return (array.astype(np.float32) / np.float32(255.0) - mean) / std


def random_crop(images: npt.ArrayLike, offsets: npt.ArrayLike) -> np.ndarray:
  """Crops 32×32 windows out of the images zero-padded by `PAD` pixels on every side.

  Args:
    images: uint8 (N, 32, 32, 3).
    offsets: int (N, 2), the (row, column) of every window's corner in the padded image, each
      in [0, 2 · PAD]; (PAD, PAD) returns the image unchanged.

  Returns:
    uint8 (N, 32, 32, 3).
  """
  array = _images(images)
  offsets = np.asarray(offsets)
  n, size = array.shape[0], IMAGE_SHAPE[0]
  if (offsets.shape != (n, 2) or offsets.dtype.kind not in "iu"
      or (n and (offsets.min() < 0 or offsets.max() > 2 * PAD))):
    raise ValueError(
        f"offsets must be integers of shape ({n}, 2) in [0, {2 * PAD}], got shape "
        f"{offsets.shape} and dtype {offsets.dtype}.")
  padded = np.pad(array, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
  rows = offsets[:, 0, None] + np.arange(size)
  cols = offsets[:, 1, None] + np.arange(size)
  return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def horizontal_flip(images: npt.ArrayLike, flip: npt.ArrayLike) -> np.ndarray:
  """Mirrors left–right the images where `flip` is True.

  Args:
    images: (N, H, W, C).
    flip: bool (N,).

  Returns:
    A new array of the shape and dtype of `images`.
  """
  array = np.asarray(images)
  flip = np.asarray(flip, bool)
  if array.ndim != 4 or flip.shape != (array.shape[0],):
    raise ValueError(
        f"flip must be a bool vector of length N for images (N, H, W, C), got {flip.shape} "
        f"and {array.shape}.")
  return np.where(flip[:, None, None, None], array[:, :, ::-1], array)


def _augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  offsets = rng.integers(0, 2 * PAD + 1, size=(images.shape[0], 2))
  flip = rng.random(images.shape[0]) < 0.5
  return horizontal_flip(random_crop(images, offsets), flip)


def augment(images: npt.ArrayLike, rng: np.random.Generator) -> np.ndarray:
  """The standard CIFAR training augmentation, vectorised over a batch.

  Every image is zero-padded by 4 pixels on each side (black, in pixel space, as torchvision's
  ``RandomCrop(32, padding=4)`` before ``Normalize``), a 32×32 window is cropped at a uniform
  random offset, and the result is mirrored left–right with probability 0.5. Draws, in order:
  ``rng.integers(0, 9, (N, 2))`` offsets (see `random_crop`), then ``rng.random(N) < 0.5``
  flips (see `horizontal_flip`).

  Args:
    images: uint8 (N, 32, 32, 3), before normalisation.
    rng: the generator; the same state gives the same result.

  Returns:
    uint8 (N, 32, 32, 3).
  """
  if not isinstance(rng, np.random.Generator):
    raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}.")
  return _augment(_images(images), rng)


@dataclasses.dataclass(frozen=True, eq=False)
class TaskIndex:
  """The rows of every task's examples in an array of fine labels.

  Attributes:
    members: `NUM_TASKS` int64 vectors; ``members[k]`` holds, in increasing order, the rows
      whose fine label belongs to coarse class k.
  """
  members: tuple[np.ndarray, ...]

  @classmethod
  def from_fine(cls, fine: npt.ArrayLike) -> TaskIndex:
    """Builds the index of an array of fine labels; every task must have an example.

    Args:
      fine: (N,) fine labels, e.g. ``train.fine`` of `make_splits`.

    Returns:
      The `TaskIndex`; its rows are positions in `fine`.

    Raises:
      ValueError: for malformed labels or a task without examples (names the task).
    """
    task, _ = fine_to_task_label(_fine_labels(fine))
    members = tuple(np.flatnonzero(task == k).astype(np.int64) for k in range(NUM_TASKS))
    for k, rows in enumerate(members):
      if not rows.size:
        raise _checks.UserError(f"task {k} ({TASK_NAMES[k]}) has no examples in these labels.")
    return cls(members=members)

  @property
  def sizes(self) -> tuple[int, ...]:
    """The number of examples n_k of every task."""
    return tuple(int(rows.size) for rows in self.members)

  def steps_per_epoch(self, batch_per_task: int) -> int:
    """min_k floor(n_k / B): the steps of one pass over the smallest task.

    Raises:
      ValueError: when the smallest task has fewer than `batch_per_task` examples.
    """
    batch = _checks.non_negative_int(batch_per_task, "batch_per_task")
    smallest = min(self.sizes)
    if not 1 <= batch <= smallest:
      raise _checks.UserError(
          f"batch_per_task must be in [1, {smallest}] (the smallest task's size), got {batch}.")
    return smallest // batch


def task_batch(images: npt.ArrayLike, fine: npt.ArrayLike, task_index: TaskIndex, seed: int,
               stage_index: int, step: int, batch_per_task: int,
               augment: bool = True) -> dict[str, np.ndarray]:
  """The training batch of a step: `batch_per_task` examples of every task.

  An epoch is one pass over the smallest task: ``E = task_index.steps_per_epoch(B)`` steps
  (all tasks have 2250 examples after the default validation carve-out of real CIFAR-100, so
  then an epoch is one pass over every task, less the last ``2250 mod B`` examples). Step s
  falls in epoch ``e = s // E`` at position ``j = s % E``; task k's batch is the slice
  ``[j·B, (j+1)·B)`` of a permutation of its examples drawn from
  ``np.random.default_rng([seed, stage_index, 0, k, e])``. Within an epoch a task's examples
  are thus drawn without replacement; a larger task's examples past ``E·B`` in a permutation
  wait for a later epoch's permutation. The augmentation draws from
  ``np.random.default_rng([seed, stage_index, 1, step])``. The batch is therefore a pure
  function of its arguments: a resumed run replays the same batches.

  Args:
    images: uint8 (N, 32, 32, 3), the training images.
    fine: (N,) their fine labels.
    task_index: ``TaskIndex.from_fine(fine)``.
    seed: an integer >= 0, the run's data seed.
    stage_index: an integer >= 0, the training stage, so that stages see different orders.
    step: an integer >= 0, the step within the stage.
    batch_per_task: B, an integer in [1, smallest task size].
    augment: apply `augment` (training); False gives the plain images.

  Returns:
    ``images``: float32 (K, B, 32, 32, 3) normalised; ``labels``: int32 (K, B) in 0–4, row k
    the labels of task k.
  """
  fine_array = _fine_labels(fine)
  pixels = _images(images, fine_array.size)
  if len(task_index.members) != NUM_TASKS or sum(task_index.sizes) != fine_array.size:
    raise _checks.UserError(
        f"task_index covers {sum(task_index.sizes)} examples, the labels {fine_array.size}: "
        "build it with TaskIndex.from_fine(fine).")
  seed, stage_index, step = (_checks.non_negative_int(v, name) for v, name in
                             ((seed, "seed"), (stage_index, "stage_index"), (step, "step")))
  steps = task_index.steps_per_epoch(batch_per_task)
  epoch, position = divmod(step, steps)
  rows = []
  for k, members in enumerate(task_index.members):
    order = np.random.default_rng([seed, stage_index, 0, k, epoch]).permutation(members.size)
    rows.append(members[order[position * batch_per_task:(position + 1) * batch_per_task]])
  rows = np.concatenate(rows)
  batch = pixels[rows]
  if augment:
    batch = _augment(batch, np.random.default_rng([seed, stage_index, 1, step]))
  _, labels = fine_to_task_label(fine_array[rows])
  shape = (NUM_TASKS, batch_per_task)
  return {"images": normalize(batch).reshape(*shape, *IMAGE_SHAPE),
          "labels": labels.reshape(shape)}


def eval_arrays(images: npt.ArrayLike, fine: npt.ArrayLike) -> dict[str, np.ndarray]:
  """Every example once, for evaluation: normalised images with their task and task label.

  Args:
    images: uint8 (N, 32, 32, 3).
    fine: (N,) fine labels.

  Returns:
    ``images`` float32 (N, 32, 32, 3) normalised, ``task`` int32 (N,) and ``label`` int32 (N,)
    in 0–4, in the order of the input.
  """
  fine_array = _fine_labels(fine)
  pixels = _images(images, fine_array.size)
  task, label = fine_to_task_label(fine_array)
  return {"images": normalize(pixels), "task": task, "label": label}
