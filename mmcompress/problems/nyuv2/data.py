"""NYUv2 in its common preprocessed layout: checks, random access, augmentation, a synthetic copy.

The three-task NYUv2 of the multi-task literature (MTAN, Liu et al. 2019, and the min-max
compression papers of docs/method.md §4) is distributed as one ``.npy`` file per map::

    ROOT/{train,val}/{image,label,depth,normal}/{i}.npy      i = 0 .. N-1

with N = 795 for train and 654 for val in the real data, every map 288×384:

=========  ===============  ===========================  ===================================
map        shape            dtype                        values
=========  ===============  ===========================  ===================================
image      (H, W, 3)        floating                     RGB in [0, 1]
label      (H, W)           floating or integer          classes 0..12, −1 = ignore
depth      (H, W, 1)        floating                     metres ≥ 0, 0 = invalid
normal     (H, W, 3)        floating                     unit vectors (x, y, z); all-zero =
                                                         invalid
=========  ===============  ===========================  ===================================

Only the channel-last layout above is accepted; a copy that stores the image as (3, H, W) is
rejected by `check_layout` with a message saying so (transpose it once, offline).

Everything here is pure NumPy on the host (no TensorFlow, no OpenCV, no JAX): the trainer
draws the batches with `load_batch` and places them on the devices itself.

Augmentation (`augment`) follows the random-scale-crop of the MTAN reference code, plus the
horizontal flip that later NYUv2 pipelines add:

* a scale s is drawn from `SCALES` = (1.0, 1.2, 1.5); a window of int(H/s) × int(W/s) pixels at
  a uniformly random position is cropped and resized back to H × W. The image is resized
  bilinearly with aligned corners (output pixel j samples input position j·(n_in−1)/(n_out−1),
  as PyTorch's ``align_corners=True``); label, depth and normal are resized by nearest
  neighbour (output pixel j takes input pixel ⌊(j + ½)·n_in/n_out⌋), so that an ignored label,
  an invalid depth 0 or an all-zero normal is never blended with a valid neighbour. Zooming in
  by s brings the scene s times closer, so depth is divided by s. At s = 1 the window is the
  whole image and both resizes are the identity: the example comes back unchanged.
* with probability ½ every map is mirrored left–right and the normals' x component (channel 0,
  the image's horizontal axis) is negated.

The resizes are written here in NumPy (separable gathers and a two-pass linear blend), which
keeps the pipeline free of any image library and bit-for-bit deterministic given the
`numpy.random.Generator`.
"""
from __future__ import annotations

import numbers
import os
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mmcompress import _checks
from mmcompress.errors import MissingDataError, UserError

__all__ = ["augment", "check_layout", "crop_size", "IGNORE_LABEL", "IMAGE_TOLERANCE", "load_batch",
           "MAPS", "NORMAL_TOLERANCE", "NUM_CLASSES", "NYUv2Source", "rescale_crop_flip", "SCALES",
           "SPLITS", "TASKS", "write_synthetic"]

TASKS = ("segmentation", "depth", "normal")
NUM_CLASSES = 13
IGNORE_LABEL = -1
SPLITS = ("train", "val")
MAPS = ("image", "label", "depth", "normal")
SCALES = (1.0, 1.2, 1.5)

# Tolerances of the value checks: the preprocessed copies are float32/float64 conversions of
# 8-bit images and of normals normalised in single precision.
IMAGE_TOLERANCE = 1e-3
NORMAL_TOLERANCE = 1e-3

_FILE_NAME = re.compile(r"^(0|[1-9][0-9]*)\.npy$")
_HOW_TO_PASS = ("pass the directory of the preprocessed NYUv2 (the one holding train/ and val/) "
                "with --config.data_dir=/path/to/nyuv2")

PathLike = str | os.PathLike


def _expected_shapes(height: int, width: int) -> dict[str, tuple[int, ...]]:
  return {"image": (height, width, 3), "label": (height, width),
          "depth": (height, width, 1), "normal": (height, width, 3)}


def _sample_indices(sample: Any, count: int) -> np.ndarray:
  """Which files of a split to value-check: all of them, or `sample` spread evenly over it."""
  if isinstance(sample, str):
    if sample != "all":
      raise UserError(f"sample must be 'all' or an integer >= 0, got {sample!r}.")
    return np.arange(count)
  if isinstance(sample, bool) or not isinstance(sample, numbers.Integral) or sample < 0:
    raise UserError(f"sample must be 'all' or an integer >= 0, got {sample!r}.")
  if sample >= count:
    return np.arange(count)
  return np.unique(np.round(np.linspace(0, count - 1, int(sample))).astype(np.int64))


def _list_numbered(folder: pathlib.Path) -> set[int]:
  """The indices i of the files ``{i}.npy`` in `folder`; any other ``.npy`` name is an error."""
  indices = set()
  for entry in folder.iterdir():
    if entry.suffix != ".npy":
      continue
    match = _FILE_NAME.match(entry.name)
    if match is None:
      raise UserError(
          f"{entry}: unexpected file name; expected the files of {folder} to be named "
          "0.npy, 1.npy, ..., N-1.npy.")
    indices.add(int(match.group(1)))
  return indices


def _open(path: pathlib.Path) -> np.ndarray:
  try:
    array = np.load(path, mmap_mode="r", allow_pickle=False)
  except (OSError, ValueError, EOFError) as error:
    raise UserError(f"{path}: not a readable .npy array file ({error}).") from None
  if not isinstance(array, np.ndarray):
    raise UserError(f"{path}: expected a single .npy array, got a {type(array).__name__}.")
  return array


def _check_header(path: pathlib.Path, kind: str, array: np.ndarray,
                  shape: tuple[int, ...]) -> None:
  if array.shape != shape:
    hint = ""
    if kind == "image" and array.shape == (shape[2], shape[0], shape[1]):
      hint = " (this looks channels-first; only the channel-last (H, W, 3) layout is accepted)"
    raise UserError(f"{path}: {kind} of shape {array.shape}; expected {shape}{hint}.")
  if kind == "label":
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
      raise UserError(f"{path}: label of dtype {array.dtype}; expected a float or integer dtype.")
  elif not np.issubdtype(array.dtype, np.floating):
    raise UserError(f"{path}: {kind} of dtype {array.dtype}; expected a float dtype.")


def _check_values(path: pathlib.Path, kind: str, array: np.ndarray) -> None:
  array = np.asarray(array)
  if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
    raise UserError(f"{path}: {kind} holds NaN or infinite values; expected finite values.")
  if kind == "image":
    low, high = float(array.min()), float(array.max())
    if low < -IMAGE_TOLERANCE or high > 1.0 + IMAGE_TOLERANCE:
      raise UserError(
          f"{path}: image values span [{low:g}, {high:g}]; expected [0, 1] "
          "(divide 8-bit images by 255).")
  elif kind == "label":
    values = np.unique(array)
    allowed = np.arange(IGNORE_LABEL, NUM_CLASSES)
    bad = values[~np.isin(values, allowed)]
    if bad.size:
      shown = ", ".join(f"{v:g}" for v in bad[:5].tolist())
      raise UserError(
          f"{path}: label holds the value(s) {shown}; expected integers in 0..{NUM_CLASSES - 1} "
          f"or {IGNORE_LABEL} (ignore).")
  elif kind == "depth":
    low = float(array.min())
    if low < 0.0:
      raise UserError(f"{path}: depth holds the value {low:g}; expected depth >= 0 (0 = invalid).")
  else:
    norm = np.sqrt(np.sum(np.square(array, dtype=np.float64), axis=-1))
    zero = np.all(array == 0, axis=-1)
    bad = ~(zero | (np.abs(norm - 1.0) <= NORMAL_TOLERANCE))
    if np.any(bad):
      row, col = (int(i) for i in np.argwhere(bad)[0])
      raise UserError(
          f"{path}: {int(bad.sum())} normal(s) are neither unit-norm (within "
          f"{NORMAL_TOLERANCE:g}) nor all-zero, e.g. pixel ({row}, {col}) of norm "
          f"{norm[row, col]:.6g}.")


def check_layout(root: PathLike, splits: Sequence[str] = SPLITS, *, height: int = 288,
                 width: int = 384, sample: int | str = "all") -> dict[str, int]:
  """Checks a preprocessed NYUv2 directory and returns the number of examples of each split.

  Checks, in this order, failing on the first problem: `root` exists; every split has the
  four folders image/, label/, depth/ and normal/; each folder holds the files ``0.npy`` ..
  ``N-1.npy`` with the same N in all four (the first missing file is named); every file's
  shape and dtype (read from the ``.npy`` header through a memory map, without loading the
  data); then, for `sample` files per split, the values: finite, image in [0, 1] (tolerance
  1e-3), label in {−1, 0..12} (integral), depth ≥ 0, each normal unit-norm (tolerance 1e-3)
  or all-zero.

  Args:
    root: the data directory (``--config.data_dir``).
    splits: the splits to check, e.g. ``("train", "val")``.
    height: the expected map height H.
    width: the expected map width W.
    sample: ``"all"`` to value-check every example, or an integer k ≥ 0 to value-check k
      examples per split spread evenly over it (first and last included); 0 checks the
      layout, shapes and dtypes only.

  Returns:
    ``{split: N}`` in the order of `splits`.

  Raises:
    ValueError: for every problem, naming the directory or file and what was expected.
  """
  height = _checks.positive_int(height, "height")
  width = _checks.positive_int(width, "width")
  if isinstance(splits, str) or not isinstance(splits, Sequence) or not splits:
    raise UserError(f"splits must be a non-empty sequence of split names, got {splits!r}.")
  root = pathlib.Path(root)
  if not root.is_dir():
    raise MissingDataError(f"NYUv2 directory {root} does not exist or is not a directory; "
                     f"{_HOW_TO_PASS}.")
  shapes = _expected_shapes(height, width)
  counts = {}
  for split in splits:
    if not isinstance(split, str) or not split:
      raise UserError(f"splits must hold split names such as 'train', got {split!r}.")
    split_dir = root / split
    if not split_dir.is_dir():
      raise UserError(f"{split_dir}: missing split directory; expected {root} to hold "
                       f"{'/, '.join(splits)}/ ({_HOW_TO_PASS}).")
    indices = {}
    for kind in MAPS:
      folder = split_dir / kind
      if not folder.is_dir():
        raise UserError(f"{folder}: missing directory; expected {split_dir} to hold "
                         f"{'/, '.join(MAPS)}/.")
      indices[kind] = _list_numbered(folder)
    count = max(max(found, default=-1) for found in indices.values()) + 1
    if count == 0:
      raise UserError(f"{split_dir}: no .npy files in {'/, '.join(MAPS)}/; expected "
                       "0.npy .. N-1.npy in each.")
    for i in range(count):
      for kind in MAPS:
        if i not in indices[kind]:
          raise UserError(
              f"{split_dir / kind / f'{i}.npy'}: missing file; expected 0.npy .. "
              f"{count - 1}.npy in each of {'/, '.join(MAPS)}/ of {split_dir}.")
    for i in range(count):
      for kind in MAPS:
        path = split_dir / kind / f"{i}.npy"
        _check_header(path, kind, _open(path), shapes[kind])
    for i in _sample_indices(sample, count):
      for kind in MAPS:
        path = split_dir / kind / f"{int(i)}.npy"
        _check_values(path, kind, _open(path))
    counts[split] = count
  return counts


class NYUv2Source:
  """Random access to one split of a preprocessed NYUv2 directory, read through memory maps.

  Construction checks the layout, shapes and dtypes of the split (`check_layout` with
  ``sample=0``); the values are not checked here, so run ``check_layout(root, sample="all")``
  once before training on a new copy. Reading example i always returns the same arrays.

  >>> source = NYUv2Source("/data/nyuv2", "val")                     # doctest: +SKIP
  >>> len(source), source[0]["label"].dtype                           # doctest: +SKIP
  (654, dtype('int32'))
  """

  def __init__(self, root: PathLike, split: str, *, height: int = 288, width: int = 384):
    """Opens `split` of `root`.

    Args:
      root: the data directory holding ``{split}/{image,label,depth,normal}/{i}.npy``.
      split: the split to read, e.g. ``"train"`` or ``"val"``.
      height: the expected map height H.
      width: the expected map width W.

    Raises:
      ValueError: as `check_layout`.
    """
    if not isinstance(split, str) or not split:
      raise UserError(f"split must be a split name such as 'train', got {split!r}.")
    self._count = check_layout(root, (split,), height=height, width=width, sample=0)[split]
    self._dir = pathlib.Path(root) / split
    self.split = split
    self.height = int(height)
    self.width = int(width)

  def __len__(self) -> int:
    return self._count

  def __repr__(self) -> str:
    return (f"NYUv2Source({str(self._dir.parent)!r}, {self.split!r}, "
            f"height={self.height}, width={self.width})")

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    """Returns example `index` as ``{image, label, depth, normal}``.

    Args:
      index: an integer in [−N, N).

    Returns:
      image (H, W, 3) float32, label (H, W) int32 (−1 = ignore), depth (H, W, 1) float32
      (0 = invalid) and normal (H, W, 3) float32 (all-zero = invalid), fresh arrays.

    Raises:
      IndexError: for an index out of range (so that iteration stops at the end).
      TypeError: for an index that is not an integer.
    """
    if isinstance(index, bool) or not isinstance(index, numbers.Integral):
      raise TypeError(f"NYUv2Source indices must be integers, got {index!r}.")
    i = int(index)
    if not -self._count <= i < self._count:
      raise IndexError(f"index {i} out of range for the {self._count} examples of {self._dir}.")
    i %= self._count

    def read(kind: str) -> np.ndarray:
      return np.load(self._dir / kind / f"{i}.npy", mmap_mode="r", allow_pickle=False)

    label = np.asarray(read("label"))
    if np.issubdtype(label.dtype, np.floating):
      label = np.rint(label)
    return {
        "image": np.array(read("image"), dtype=np.float32),
        "label": label.astype(np.int32),
        "depth": np.array(read("depth"), dtype=np.float32),
        "normal": np.array(read("normal"), dtype=np.float32),
    }


def _check_example(example: Mapping[str, Any], name: str = "example") -> tuple[int, int]:
  if not isinstance(example, Mapping) or any(kind not in example for kind in MAPS):
    raise UserError(f"{name} must be a mapping with the keys {MAPS}, got "
                     f"{list(example) if isinstance(example, Mapping) else type(example)}.")
  shape = np.shape(example["label"])
  if len(shape) != 2:
    raise UserError(f"{name}['label'] must have shape (H, W), got {shape}.")
  expected = _expected_shapes(*shape)
  for kind in MAPS:
    if np.shape(example[kind]) != expected[kind]:
      raise UserError(f"{name}[{kind!r}] must have shape {expected[kind]}, got "
                       f"{np.shape(example[kind])}.")
  return shape


def _nearest_indices(n_in: int, n_out: int) -> np.ndarray:
  positions = (np.arange(n_out) + 0.5) * (n_in / n_out)
  return np.minimum(positions.astype(np.int64), n_in - 1)


def _linear_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Aligned-corners sampling: (lower index, upper index, weight of the upper) per output."""
  if n_in == 1 or n_out == 1:
    positions = np.zeros(n_out)
  else:
    positions = np.arange(n_out) * ((n_in - 1) / (n_out - 1))
  lower = np.minimum(np.floor(positions).astype(np.int64), n_in - 1)
  upper = np.minimum(lower + 1, n_in - 1)
  return lower, upper, (positions - lower).astype(np.float32)


def _resize_nearest(array: np.ndarray, height: int, width: int) -> np.ndarray:
  rows = _nearest_indices(array.shape[0], height)
  cols = _nearest_indices(array.shape[1], width)
  return array[rows][:, cols]


def _resize_bilinear(array: np.ndarray, height: int, width: int) -> np.ndarray:
  array = np.asarray(array, np.float32)
  lower, upper, weight = _linear_weights(array.shape[0], height)
  weight = weight.reshape((-1,) + (1,) * (array.ndim - 1))
  array = array[lower] * (1.0 - weight) + array[upper] * weight
  lower, upper, weight = _linear_weights(array.shape[1], width)
  weight = weight.reshape((1, -1) + (1,) * (array.ndim - 2))
  return array[:, lower] * (1.0 - weight) + array[:, upper] * weight


def crop_size(height: int, width: int, scale: float) -> tuple[int, int]:
  """The window ``(int(H/s), int(W/s))`` (at least 1×1) that `scale` s crops before resizing."""
  return max(1, int(height / scale)), max(1, int(width / scale))


def rescale_crop_flip(example: Mapping[str, Any], *, scale: float, top: int, left: int,
                      flip: bool) -> dict[str, np.ndarray]:
  """The deterministic transform behind `augment`, with its random choices given explicitly.

  Args:
    example: ``{image, label, depth, normal}`` of one image, shapes as `NYUv2Source` returns.
    scale: the zoom s ≥ 1; the window is ``crop_size(H, W, s)``.
    top: the window's first row, in [0, H − int(H/s)].
    left: the window's first column, in [0, W − int(W/s)].
    flip: whether to mirror left–right (negating the normals' x component).

  Returns:
    A new example of the same shapes: image float32 (bilinear), label int32, depth float32
    divided by s, normal float32 (nearest neighbour); see the module docstring.

  Raises:
    ValueError: for a malformed example, s < 1 or a window outside the image.
  """
  height, width = _check_example(example)
  try:
    scale = float(scale)
  except (TypeError, ValueError):
    raise UserError(f"scale must be a number >= 1, got {scale!r}.") from None
  if not np.isfinite(scale) or scale < 1.0:
    raise UserError(f"scale must be a finite number >= 1, got {scale}.")
  crop_h, crop_w = crop_size(height, width, scale)
  for value, name, limit in ((top, "top", height - crop_h), (left, "left", width - crop_w)):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not (
        0 <= value <= limit):
      raise UserError(f"{name} must be an integer in [0, {limit}] for scale {scale} on a "
                       f"{height}x{width} image, got {value!r}.")
  if not isinstance(flip, (bool, np.bool_)):
    raise UserError(f"flip must be True or False, got {flip!r}.")

  window = (slice(top, top + crop_h), slice(left, left + crop_w))
  image = _resize_bilinear(np.asarray(example["image"])[window], height, width)
  label = _resize_nearest(np.asarray(example["label"])[window], height, width)
  depth = _resize_nearest(np.asarray(example["depth"], np.float32)[window], height, width)
  normal = _resize_nearest(np.asarray(example["normal"], np.float32)[window], height, width)
  depth = depth / np.float32(scale)
  if flip:
    image, label, depth, normal = (a[:, ::-1] for a in (image, label, depth, normal))
    normal = normal * np.array([-1.0, 1.0, 1.0], np.float32)
  return {
      "image": np.ascontiguousarray(image, np.float32),
      "label": np.ascontiguousarray(label, np.int32),
      "depth": np.ascontiguousarray(depth, np.float32),
      "normal": np.ascontiguousarray(normal, np.float32),
  }


def augment(example: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Random scale-crop (s in `SCALES`) and horizontal flip (p = ½) of one example.

  Draws, in this order, s uniformly from `SCALES`, the window's top row and left column
  uniformly among the valid positions, and the flip; then applies `rescale_crop_flip`.

  Args:
    example: ``{image, label, depth, normal}`` of one image.
    rng: the generator to draw from; the same generator state gives the same output.

  Returns:
    The augmented example, same shapes and dtypes as `NYUv2Source` returns.

  Raises:
    ValueError: for a malformed example or an `rng` that is not a `numpy.random.Generator`.
  """
  if not isinstance(rng, np.random.Generator):
    raise UserError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}.")
  height, width = _check_example(example)
  scale = SCALES[int(rng.integers(len(SCALES)))]
  crop_h, crop_w = crop_size(height, width, scale)
  top = int(rng.integers(0, height - crop_h + 1))
  left = int(rng.integers(0, width - crop_w + 1))
  flip = bool(rng.random() < 0.5)
  return rescale_crop_flip(example, scale=scale, top=top, left=left, flip=flip)


def load_batch(source: Any, indices: Sequence[int] | np.ndarray,
               rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
  """Reads the examples `indices` of `source` and stacks them, augmenting each when `rng` is given.

  Args:
    source: an `NYUv2Source` (or any sequence of examples of one shape).
    indices: a non-empty 1-D sequence of integers in [0, len(source)).
    rng: None for the examples as stored (evaluation), or a generator for `augment`; the
      examples are augmented in the order of `indices`, each with fresh draws.

  Returns:
    image (B, H, W, 3) float32, label (B, H, W) int32, depth (B, H, W, 1) float32 and normal
    (B, H, W, 3) float32.

  Raises:
    ValueError: for empty, non-integer or out-of-range indices, or a bad `rng`, before any
      file is read.
  """
  array = np.asarray(indices)
  if array.ndim != 1 or array.size == 0 or not (
      np.issubdtype(array.dtype, np.integer) and not np.issubdtype(array.dtype, np.bool_)):
    raise UserError(f"indices must be a non-empty 1-D sequence of integers, got {indices!r}.")
  count = len(source)
  if array.min() < 0 or array.max() >= count:
    raise UserError(f"indices must lie in [0, {count}) for a source of {count} examples, got "
                     f"values in [{array.min()}, {array.max()}].")
  if rng is not None and not isinstance(rng, np.random.Generator):
    raise UserError(f"rng must be None or a numpy.random.Generator, got {type(rng).__name__}.")
  examples = []
  for i in array.tolist():
    example = source[i]
    examples.append(example if rng is None else augment(example, rng))
  return {kind: np.stack([e[kind] for e in examples]) for kind in MAPS}


def _synthetic_example(rng: np.random.Generator, height: int, width: int,
                       palette: np.ndarray, class_depth: np.ndarray,
                       class_normal: np.ndarray) -> dict[str, np.ndarray]:
  """One scene: class rectangles on a background, maps that follow the classes, invalid pixels."""
  label = np.full((height, width), rng.integers(NUM_CLASSES), np.int64)
  for _ in range(3):
    h0, h1 = np.sort(rng.integers(0, height + 1, size=2))
    w0, w1 = np.sort(rng.integers(0, width + 1, size=2))
    label[h0:h1 + 1, w0:w1 + 1] = rng.integers(NUM_CLASSES)
  image = palette[label] + rng.normal(0.0, 0.05, (height, width, 3))
  ramp = np.linspace(0.0, 1.0, height)[:, None]
  depth = class_depth[label] + ramp
  normal = class_normal[label]

  def holes(fraction: float) -> np.ndarray:
    mask = rng.random((height, width)) < fraction
    mask[rng.integers(height), rng.integers(width)] = True
    return mask

  # As in the real data: an unlabelled border column, and scattered missing measurements.
  ignore = holes(0.03)
  ignore[:, 0] = True
  label[ignore] = IGNORE_LABEL
  depth[holes(0.05)] = 0.0
  normal = np.where(holes(0.05)[..., None], 0.0, normal)
  return {
      "image": np.clip(image, 0.0, 1.0).astype(np.float32),
      "label": label.astype(np.float32),
      "depth": depth[..., None].astype(np.float32),
      "normal": normal.astype(np.float32),
  }


def write_synthetic(root: PathLike, num_train: int, num_val: int, *, height: int, width: int,
                    seed: int = 0) -> pathlib.Path:
  """Writes a small random NYUv2-like data set in exactly the layout `check_layout` accepts.

  Each scene is a background class with three random class rectangles; the image colour,
  depth and normal follow the class (plus noise and a vertical depth ramp), so a model can
  learn all three tasks. Every example holds invalid pixels of each kind: ignored labels
  (column 0 and about 3 % of the pixels), zero depths and all-zero normals (about 5 % each).
  Labels are stored as float32, as in the common preprocessed copies.

  Args:
    root: the directory to create; its train/ and val/ must not exist yet.
    num_train: the number of training examples, ≥ 1.
    num_val: the number of validation examples, ≥ 1.
    height: the map height H.
    width: the map width W.
    seed: the seed of the `numpy.random.Generator` that draws everything.

  Returns:
    `root` as a `pathlib.Path`.

  Raises:
    ValueError: for non-positive sizes, a bad seed or an existing train/ or val/ under `root`.
  """
  counts = {"train": _checks.positive_int(num_train, "num_train"),
            "val": _checks.positive_int(num_val, "num_val")}
  height = _checks.positive_int(height, "height")
  width = _checks.positive_int(width, "width")
  seed = _checks.non_negative_int(seed, "seed")
  root = pathlib.Path(root)
  for split in SPLITS:
    if (root / split).exists():
      raise UserError(f"{root / split} already exists; write_synthetic needs a fresh root.")
  rng = np.random.default_rng(int(seed))
  palette = rng.uniform(0.1, 0.9, (NUM_CLASSES, 3))
  class_depth = rng.uniform(1.0, 8.0, NUM_CLASSES)
  class_normal = rng.normal(size=(NUM_CLASSES, 3))
  class_normal /= np.linalg.norm(class_normal, axis=-1, keepdims=True)
  for split, count in counts.items():
    for kind in MAPS:
      (root / split / kind).mkdir(parents=True, exist_ok=True)
    for i in range(count):
      example = _synthetic_example(rng, height, width, palette, class_depth, class_normal)
      for kind in MAPS:
        np.save(root / split / kind / f"{i}.npy", example[kind])
  return root
