"""Scenes: rendered rooms as an offline dense multi-task data set in NYUv2's layout, cached.

`load_scenes` returns train, validation and test splits of `render.random_example` scenes,
each map stacked over the split with NYUv2's shapes and dtypes (see
`mmcompress.problems.nyuv2.data`):

=======  ===============  ========  ========================================================
map      shape            dtype     values
=======  ===============  ========  ========================================================
image    (N, H, W, 3)     float32   RGB in [0, 1]
label    (N, H, W)        int32     classes 0..6 (`render.CLASSES`), −1 = ignore (no hit)
depth    (N, H, W, 1)     float32   metres along the optical axis, 0 = invalid (no hit)
normal   (N, H, W, 3)     float32   unit vectors in camera coordinates, all-zero = invalid
=======  ===============  ========  ========================================================

Scene i of a split is drawn from ``numpy.random.default_rng([seed, s, i])``, s the split's
position in `SPLITS`: a scene depends only on (seed, split, i), the splits never share one,
and a split of n scenes is the first n scenes of any larger one.

The arrays are generated once and cached as ``.npy`` files::

    CACHE/v{VERSION}-{H}x{W}-seed{seed}/{split}-{n}/{image,label,depth,normal}.npy

each written to a temporary name and renamed into place, so an interrupted run leaves no
half-written file under a final name. A split is regenerated only when one of its files is
missing, unreadable or of the wrong shape or dtype (a truncated or foreign file); the
regeneration is logged and the file replaced. CACHE is the folder the caller names, or
`default_cache_dir()`.

At the default size (2000 / 250 / 250 scenes of 48×64, 235 MB on disk) generation and writing
took 12 s (one process, on a 2-core machine shared with other jobs, load average 8), and
loading the cached copy 0.8 s.
"""
from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Mapping

import numpy as np

from mmcompress import _checks, _files
from mmcompress.errors import UserError
from mmcompress.problems.scenes import render

__all__ = ["default_cache_dir", "DTYPES", "generate", "load_scenes", "load_split", "MAPS", "shapes",
           "split_dir", "SPLITS", "VERSION"]

SPLITS = ("train", "val", "test")
MAPS = ("image", "label", "depth", "normal")
DTYPES = {"image": np.float32, "label": np.int32, "depth": np.float32, "normal": np.float32}
VERSION = 1  # bump when the renderer's output changes, so that no stale cache is read

PathLike = str | os.PathLike


def default_cache_dir() -> pathlib.Path:
  """``$XDG_CACHE_HOME/mmcompress/scenes``, or ``~/.cache/mmcompress/scenes``."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "mmcompress" / "scenes"


def shapes(count: int, height: int, width: int) -> dict[str, tuple[int, ...]]:
  """The shape of each map of a split of `count` scenes."""
  return {"image": (count, height, width, 3), "label": (count, height, width),
          "depth": (count, height, width, 1), "normal": (count, height, width, 3)}


def generate(split: str, count: int, *, seed: int = 0, height: int = 48,
             width: int = 64) -> dict[str, np.ndarray]:
  """Renders the first `count` scenes of `split` (no cache).

  Args:
    split: one of `SPLITS`.
    count: the number of scenes, ≥ 0.
    seed: the data set's seed, ≥ 0.
    height: the image height H.
    width: the image width W.

  Returns:
    ``{image, label, depth, normal}`` stacked over the scenes (shapes and dtypes as in the
    module docstring).
  """
  _checks.one_of(split, SPLITS, "split")
  count = _checks.non_negative_int(count, "count")
  seed = _checks.non_negative_int(seed, "seed")
  height = _checks.positive_int(height, "height")
  width = _checks.positive_int(width, "width")
  arrays = {kind: np.empty(shape, DTYPES[kind])
            for kind, shape in shapes(count, height, width).items()}
  for i in range(count):
    rng = np.random.default_rng([seed, SPLITS.index(split), i])
    example = render.random_example(rng, height, width)
    for kind in MAPS:
      arrays[kind][i] = example[kind]
  return arrays


def split_dir(cache_dir: PathLike, split: str, count: int, *, seed: int, height: int,
              width: int) -> pathlib.Path:
  """The folder that caches `split` of `count` scenes (see the module docstring)."""
  return (pathlib.Path(cache_dir) / f"v{VERSION}-{height}x{width}-seed{seed}"
          / f"{split}-{count}")


def _read(folder: pathlib.Path, expected: Mapping[str, tuple[int, ...]]):
  """The cached maps of `folder`, or the reason they cannot be used."""
  arrays = {}
  for kind in MAPS:
    path = folder / f"{kind}.npy"
    if not path.is_file():
      return f"{path} is missing"
    try:
      array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
      return f"{path} is not a readable .npy file ({error})"
    if array.shape != expected[kind] or array.dtype != DTYPES[kind]:
      return (f"{path} holds {array.dtype} {array.shape}; expected "
              f"{np.dtype(DTYPES[kind])} {expected[kind]}")
    arrays[kind] = array
  return arrays


def _write(folder: pathlib.Path, arrays: Mapping[str, np.ndarray]) -> None:
  try:
    folder.mkdir(parents=True, exist_ok=True)
  except OSError as error:
    raise UserError(f"cannot create the scenes cache {folder}: {error.strerror or error}; "
                    "name a writable folder.") from None
  for kind in MAPS:
    _files.write_atomically(str(folder / f"{kind}.npy"),
                            lambda f, a=arrays[kind]: np.save(f, a, allow_pickle=False))


def load_split(cache_dir: PathLike | None, split: str, count: int, *, seed: int = 0,
               height: int = 48, width: int = 64) -> dict[str, np.ndarray]:
  """`generate` through the cache: read if cached and sound, else rendered and written."""
  _checks.one_of(split, SPLITS, "split")
  count = _checks.non_negative_int(count, "count")
  seed = _checks.non_negative_int(seed, "seed")
  height = _checks.positive_int(height, "height")
  width = _checks.positive_int(width, "width")
  cache_dir = default_cache_dir() if cache_dir is None else pathlib.Path(cache_dir).expanduser()
  folder = split_dir(cache_dir, split, count, seed=seed, height=height, width=width)
  cached = _read(folder, shapes(count, height, width))
  if isinstance(cached, dict):
    return cached
  if folder.exists():
    logging.warning("Scenes cache: %s; regenerating %s.", cached, folder)
  arrays = generate(split, count, seed=seed, height=height, width=width)
  _write(folder, arrays)
  return arrays


def load_scenes(cache_dir: PathLike | None = None, *, num_train: int = 2000, num_val: int = 250,
                num_test: int = 250, height: int = 48, width: int = 64,
                seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
  """The train, validation and test splits, from the cache or rendered (and then cached).

  Args:
    cache_dir: the cache folder; None for `default_cache_dir()`.
    num_train: the number of training scenes, ≥ 1.
    num_val: the number of validation scenes, ≥ 1.
    num_test: the number of test scenes, ≥ 1.
    height: the image height H.
    width: the image width W.
    seed: the data set's seed, ≥ 0.

  Returns:
    ``{split: {image, label, depth, normal}}`` for the splits ``train``, ``val``, ``test``.

  Raises:
    ValueError: for a bad size or seed, or a cache folder that cannot be written.
  """
  counts = {"train": _checks.positive_int(num_train, "num_train"),
            "val": _checks.positive_int(num_val, "num_val"),
            "test": _checks.positive_int(num_test, "num_test")}
  return {split: load_split(cache_dir, split, count, seed=seed, height=height, width=width)
          for split, count in counts.items()}
