"""Argument checks shared by the public functions: each raises a `UserError` naming the argument.

Every public entry point validates its arguments with these before any compute starts, so
that a mistake is reported as what to change rather than as a shape error deep inside jit.

`UserError` (public in `mmcompress.errors`) marks a mistake of the caller's; the command-line
entry points print its message as one line and exit with status 2.
"""
from __future__ import annotations

import contextlib
import errno
import os
import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax

from mmcompress.errors import MissingDataError, UserError


@contextlib.contextmanager
def as_user_error() -> Iterator[None]:
  """Re-raises a ValueError from inside as a `UserError` with the same message.

  For a block whose every ValueError is about the caller's input (the validation of a
  config), never around compute; usable as a decorator too.

  Yields:
    None.
  """
  try:
    yield
  except UserError:
    raise
  except ValueError as error:
    raise UserError(str(error)) from error


def fraction(value: Any, name: str, hint: str = "") -> float:
  """Returns `value` as a float in [0, 1), or raises `UserError` (`hint` follows the range)."""
  try:
    value = float(value)
  except (TypeError, ValueError):
    raise UserError(f"{name} must be a number in [0, 1), got {value!r}.") from None
  if not 0.0 <= value < 1.0:
    raise UserError(f"{name} must be in [0, 1){hint}, got {value}.")
  return value


def sparsity(value: Any, name: str = "sparsity") -> float:
  """Returns `value` as a float in [0, 1), or raises `UserError`."""
  return fraction(value, name, " (0.975 prunes 97.5 % = 40x)")


def split_fraction(value: Any, name: str) -> float:
  """Returns `value`, a real number (not a bool or a string), as a float in (0, 0.5)."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise UserError(f"{name} must be a number in (0, 0.5), got {value!r}.")
  value = float(value)
  if not 0.0 < value < 0.5:
    raise UserError(f"{name} must be in (0, 0.5) (e.g. 0.15), got {value}.")
  return value


def finite(value: Any, name: str) -> float:
  """Returns `value` as a finite float, or raises a plain ValueError.

  Not a `UserError`: the values checked here are mostly computed ones (metrics), whose
  traceback matters; config validation turns it into a user error (`as_user_error`).
  """
  try:
    value = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be a number, got {value!r}.") from None
  if not math.isfinite(value):
    raise ValueError(f"{name} must be finite, got {value}.")
  return value


def _bounded(value: Any, name: str, bound: str, holds: Callable[[float], bool]) -> float:
  """`value` as a finite float for which `holds` is true (`bound` says it in words)."""
  try:
    value = float(value)
  except (TypeError, ValueError):
    raise UserError(f"{name} must be a number {bound}, got {value!r}.") from None
  if not (math.isfinite(value) and holds(value)):
    raise UserError(f"{name} must be a finite number {bound}, got {value}.")
  return value


def non_negative(value: Any, name: str) -> float:
  """Returns `value` as a finite float >= 0, or raises."""
  return _bounded(value, name, ">= 0", lambda v: v >= 0.0)


def positive(value: Any, name: str) -> float:
  """Returns `value` as a finite float > 0, or raises."""
  return _bounded(value, name, "> 0", lambda v: v > 0.0)


def _is_integer(value: Any) -> bool:
  """A Python or NumPy integer, not a bool."""
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(value: Any, name: str) -> int:
  """Returns `value` (a Python or NumPy integer) as an int >= 1, or raises."""
  if not _is_integer(value) or value < 1:
    raise UserError(f"{name} must be an integer >= 1, got {value!r}.")
  return int(value)


def non_negative_int(value: Any, name: str) -> int:
  """Returns `value` (a Python or NumPy integer) as an int >= 0, or raises."""
  if not _is_integer(value) or value < 0:
    raise UserError(f"{name} must be an integer >= 0, got {value!r}.")
  return int(value)


def positive_ints(values: Sequence[Any], count: int, name: str, each: str) -> tuple[int, ...]:
  """Returns `values` as a tuple of `count` ints >= 1, or raises saying what `each` is for."""
  values = tuple(values)
  if len(values) != count or any(
      isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
    raise UserError(f"{name} must be {count} integers >= 1, {each}, got {values!r}.")
  return values


def learning_rate(value: Any, name: str = "learning_rate") -> Any:
  """Accepts a callable schedule as it is, or a float > 0."""
  if callable(value):
    return value
  return positive(value, name)


def one_of(value: Any, allowed: Sequence[str], name: str) -> str:
  """Returns `value` if it is one of `allowed`, or raises listing them."""
  if value not in allowed:
    raise UserError(f"{name} must be one of {list(allowed)}, got {value!r}.")
  return value


def is_stand_in(tree: Any) -> bool:
  """Whether `tree` is a leafless stand-in for params rather than params.

  `optax.tree_map_params` calls ``init`` with such a stand-in (a pytree node without children)
  to find which parts of a state have the params' structure; an ``init`` that checks or reads
  its params skips that for a stand-in and builds its params-shaped fields from it by tree maps.
  """
  return (tree is not None and not isinstance(tree, (dict, list, tuple))
          and not jax.tree.leaves(tree) and not hasattr(tree, "shape"))


def same_structure(tree: Any, reference: Any, name: str, reference_name: str = "params",
                   is_leaf: Callable[[Any], bool] | None = None,
                   stacked: bool | int = False) -> None:
  """Raises unless `tree` has the tree structure and leaf shapes of `reference`.

  `stacked` admits stacked per-task gradients: True, a leaf may also have one extra leading
  axis; an int K, every leaf must have exactly that leading axis of K.
  """
  struct, ref_struct = (jax.tree.structure(tree, is_leaf=is_leaf),
                        jax.tree.structure(reference, is_leaf=is_leaf))
  if struct != ref_struct:
    raise UserError(
        f"{name} must have the tree structure of {reference_name}; got\n  {struct}\n"
        f"for {reference_name}\n  {ref_struct}.")
  exact_tasks = None if isinstance(stacked, bool) else int(stacked)
  for (path, leaf), ref in zip(jax.tree_util.tree_leaves_with_path(tree, is_leaf=is_leaf),
                               jax.tree.leaves(reference, is_leaf=is_leaf)):
    shape, ref_shape = getattr(leaf, "shape", None), getattr(ref, "shape", None)
    if exact_tasks is not None:
      if shape is None or ref_shape is None or tuple(shape) != (exact_tasks, *ref_shape):
        raise UserError(
            f"{name} takes stacked per-task gradients, each leaf of shape (K, *param.shape) "
            f"with K = {exact_tasks} (from per_task_grads); at "
            f"{jax.tree_util.keystr(path)} it has shape {shape} for a parameter of shape "
            f"{ref_shape}.")
    elif shape != ref_shape and not (stacked and shape is not None and ref_shape is not None
                                     and tuple(shape[1:]) == tuple(ref_shape)):
      raise UserError(
          f"{name} at {jax.tree_util.keystr(path)} has shape {shape}, "
          f"but {reference_name} there has shape {ref_shape}.")


def config_data_dir(data_dir: str, what: str) -> str:
  """`data_dir` if a config names one, else a `UserError` saying what the folder must hold."""
  if not data_dir:
    raise UserError(f"config.data_dir is empty: pass --config.data_dir=DIR, the directory "
                    f"that holds {what} (see docs/paper.md).")
  return data_dir


def writable_folder(folder: str, what: str) -> None:
  """Raises a `UserError` unless `folder` exists, is a folder and can be written in; the
  message starts with `what` (e.g. ``"the workdir W lies under"``)."""
  if not os.path.exists(folder):
    raise UserError(f"{what} {folder}, which does not exist; create it first or name another.")
  if not os.path.isdir(folder):
    raise UserError(f"{what} {folder}, which is a file: name a folder.")
  if not os.access(folder, os.W_OK | os.X_OK):
    raise UserError(f"{what} {folder}, which is not writable: name a folder you can write in.")


# What the filesystem answers when it refuses a write (or a read): not the program's fault.
_REFUSED = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)


def refused_write(error: BaseException | None) -> OSError | None:
  """The OSError of a write (or read) the filesystem refused somewhere in `error`'s chain of
  causes (orbax and tensorstore wrap theirs), or None."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _REFUSED:
      return error
    error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
  return None


def refused_write_message(refused: OSError) -> str:
  """What a user is told of `refused` (`refused_write`): one line, what to do."""
  where = f" {refused.filename}" if refused.filename else ""
  return (f"could not write or read{where}: {refused.strerror}. Whatever the run saved before "
          "is kept: make the folder writable (or readable, or free some space) and rerun the "
          "same command to resume.")
