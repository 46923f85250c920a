"""Compressed export: the kept weights of a pruned network in one framework-neutral file.

`save` writes a single `.npz` file (a zip of `.npy` arrays, readable by numpy, by `cnpy` in
C++, by `npyz` in Rust, by `NpzFile` in Julia, ...). `load` reads it back into the exact
masked parameters. Layout of the file:

* ``manifest.json``: a 1-D ``uint8`` array holding UTF-8 JSON::

    {"format": "mmcompress.export", "version": 1,
     "leaves": [{"path": "trunk/Dense_0/kernel", "shape": [256, 256], "dtype": "float32",
                 "storage": "sparse", "nnz": 1638, "index_dtype": "uint32"},
                {"path": "trunk/Dense_0/bias", "shape": [256], "dtype": "float32",
                 "storage": "dense"}, ...]}

  ``path`` is the '/'-joined chain of dict keys from the root of the parameter tree (params
  are nested dicts of arrays, as Flax produces; keys may not contain '/'). Leaves are listed
  in sorted key order, and leaf ``i`` of the list owns the arrays whose names start ``<i>.``.
  ``dtype`` is the numpy name of the original dtype. Dtypes that numpy does not know natively
  (``bfloat16`` and the other `ml_dtypes` types) are stored as their raw bits in the unsigned
  integer of the same width, and the entry says so with ``"stored_as": "uint16"``; a reader
  reinterprets the bits (e.g. bfloat16 = the upper half of a float32).
* ``<i>.indices`` and ``<i>.values`` for a ``"sparse"`` leaf: the row-major (C order) flat
  indices, strictly increasing, of the entries that are kept by the mask *and* nonzero
  (``uint16`` when the leaf has fewer than 65536 entries, ``uint32`` below 2**32, ``uint64``
  beyond), and those entries' values in the original dtype. Every other entry is zero.
  "Nonzero" is judged on the bits, so a kept ``-0.0`` is stored and comes back as ``-0.0``.
* ``<i>.dense`` for a ``"dense"`` leaf: the whole array, with masked-out entries set to zero.

A leaf is sparse when its mask has at least one False entry (a pruned leaf), or, if `include`
is given, when `include` selects it; every other leaf is dense. The arrays are stored without
zip compression, so the file size is the size of the sparse format itself, and every zip
member carries a CRC-32 that `load` checks.

>>> sizes = save("/tmp/model.npz", params, masks)        # doctest: +SKIP
>>> params_back = load("/tmp/model.npz", like=params)    # doctest: +SKIP
"""
from __future__ import annotations

import json
import os
import zipfile
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_dtypes
import numpy as np

from mmcompress import _files
from mmcompress.sparsity import masks as masks_lib

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "load", "MANIFEST_KEY", "read_manifest", "save"]

FORMAT_NAME = "mmcompress.export"
FORMAT_VERSION = 1
MANIFEST_KEY = "manifest.json"

_Keys = tuple[str, ...]


def _walk(tree: Any, what: str, allow_none: bool = False) -> list[tuple[_Keys, Any]]:
  """The (keys, leaf) pairs of a tree of nested Mappings, in sorted key order."""
  if not isinstance(tree, Mapping):
    raise ValueError(
        f"{what} must be a nested dict of arrays (as Flax produces), got "
        f"{type(tree).__name__}.")
  out = []

  def visit(node: Mapping, keys: _Keys) -> None:
    for key in node:
      if not isinstance(key, str):
        raise ValueError(f"{what} keys must be strings; got {key!r} under {_name(keys)!r}.")
      if "/" in key:
        raise ValueError(
            f"{what} key {key!r} under {_name(keys)!r} contains '/', which the export uses "
            "to join paths; rename the module or parameter.")
    for key in sorted(node):
      child = node[key]
      if isinstance(child, Mapping):
        visit(child, keys + (key,))
      elif child is None and allow_none:
        out.append((keys + (key,), None))
      else:
        out.append((keys + (key,), child))

  visit(tree, ())
  return out


def _name(keys: _Keys) -> str:
  return "/".join(keys)


def _as_array(leaf: Any, what: str, keys: _Keys) -> np.ndarray:
  try:
    array = np.asarray(leaf)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{what} leaf {_name(keys)!r} is not an array: {e}") from None
  if array.dtype.kind not in "biufcV":
    raise ValueError(
        f"{what} leaf {_name(keys)!r} has dtype {array.dtype}; only numeric and boolean "
        "arrays can be exported.")
  return array


def _bits_dtype(dtype: np.dtype) -> np.dtype | None:
  """The unsigned integer that stores a dtype numpy does not know natively, else None."""
  if dtype.kind != "V":
    return None
  if dtype.itemsize not in (1, 2, 4, 8):
    raise ValueError(f"cannot export dtype {dtype} (itemsize {dtype.itemsize}).")
  return np.dtype(f"uint{8 * dtype.itemsize}")


def _index_dtype(size: int) -> np.dtype:
  if size < 2**16:
    return np.dtype(np.uint16)
  if size < 2**32:
    return np.dtype(np.uint32)
  return np.dtype(np.uint64)


def _nonzero_bits(flat: np.ndarray) -> np.ndarray:
  """A bool vector: which entries of a 1-D array have any bit set (-0.0 counts, +0.0 not)."""
  raw = np.ascontiguousarray(flat).view(np.uint8)
  return raw.reshape(flat.size, flat.dtype.itemsize).any(axis=1)


def _check_masks(params: list[tuple[_Keys, np.ndarray]], masks: Any) -> list[np.ndarray | None]:
  """The mask of each params leaf, in the same order; None means keep everything."""
  if masks is None:
    return [None] * len(params)
  found = dict(_walk(masks, "masks", allow_none=True))
  names = {keys for keys, _ in params}
  for keys in found:
    if keys not in names:
      raise ValueError(
          f"masks has a leaf {_name(keys)!r} that params does not have; masks must have "
          "the structure of params.")
  out = []
  for keys, leaf in params:
    if keys not in found:
      raise ValueError(
          f"masks has no entry for the params leaf {_name(keys)!r}; masks must have the "
          "structure of params (use an all-True mask, or None, to keep a leaf whole).")
    mask = found[keys]
    if mask is None:
      out.append(None)
      continue
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
      raise ValueError(
          f"the mask of {_name(keys)!r} has dtype {mask.dtype}; masks must be boolean "
          "(True = keep): cast it with .astype(bool).")
    if mask.shape != leaf.shape:
      raise ValueError(
          f"the mask of {_name(keys)!r} has shape {mask.shape}, but the parameter has shape "
          f"{leaf.shape}.")
    out.append(mask)
  return out


def _writable_target(path: str | os.PathLike) -> str:
  try:
    path = os.fspath(path)
  except TypeError:
    raise ValueError(f"path must be a str or os.PathLike, got {path!r}.") from None
  directory = os.path.dirname(os.path.abspath(path))
  if os.path.isdir(path):
    raise ValueError(f"path {path!r} is a directory; give a file name such as 'model.npz'.")
  if not os.path.isdir(directory):
    raise ValueError(
        f"cannot write {path!r}: the directory {directory!r} does not exist; create it first.")
  return path


def save(path: str | os.PathLike,
         params: Any,
         masks: Any,
         *,
         include: Callable[[tuple[Any, ...], Any], bool] | None = None) -> dict[str, float]:
  """Writes the masked parameters to one `.npz` file in the sparse format of the module doc.

  The file is written to a temporary file in the same directory and renamed onto `path`, so
  a crash never leaves a half-written file behind. `path` is used as given (no suffix added).

  Args:
    path: the file to write, conventionally ending in ".npz".
    params: nested dicts (or FrozenDicts) of arrays; jax, numpy and ml_dtypes dtypes
      (bfloat16, ...) are all fine.
    masks: bool arrays with the structure and shapes of `params` (True = keep), or None to
      keep every entry; a None leaf keeps that whole leaf.
    include: optional `(path, leaf) -> bool` over jax key paths (as
      `mmcompress.sparsity.default_include`) naming the leaves to store sparse, e.g. all the
      prunable ones; if None, exactly the leaves whose mask has a False entry are sparse.
      Masked-out entries of a dense leaf are still stored as zeros.

  Returns:
    Sizes in bytes, as Python floats: ``file_bytes`` (the file on disk); ``dense_bytes``
    (4 bytes per parameter entry, i.e. the float32 model); ``prunable_dense_bytes`` (4 bytes
    per entry of the sparse leaves); ``prunable_file_bytes`` (the bytes of their indices and
    values arrays); ``prunable_ratio`` = prunable_dense_bytes / prunable_file_bytes (1.0 if
    no leaf is sparse, inf if the sparse leaves keep nothing).

  Raises:
    ValueError: if params or masks are malformed or mismatched (naming the leaf), or if
      `path` cannot be written.
  """
  path = _writable_target(path)
  if include is not None and not callable(include):
    raise ValueError(
        f"include must be None or a callable (path, leaf) -> bool, got {include!r}.")
  leaves = [(keys, _as_array(leaf, "params", keys)) for keys, leaf in _walk(params, "params")]
  if not leaves:
    raise ValueError("params has no array leaves; there is nothing to export.")
  leaf_masks = _check_masks(leaves, masks)

  arrays: dict[str, np.ndarray] = {}
  entries = []
  dense_bytes = prunable_dense_bytes = prunable_file_bytes = 0
  for i, ((keys, leaf), mask) in enumerate(zip(leaves, leaf_masks)):
    pruned = mask is not None and not bool(mask.all())
    if include is None:
      sparse = pruned
    else:
      sparse = bool(include(tuple(jax.tree_util.DictKey(k) for k in keys), leaf))
    entry, members = _encode_leaf(i, keys, leaf, mask if pruned else None, sparse)
    entries.append(entry)
    arrays.update(members)
    dense_bytes += 4 * leaf.size
    if sparse:
      prunable_dense_bytes += 4 * leaf.size
      prunable_file_bytes += sum(a.nbytes for a in members.values())

  manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "leaves": entries}
  arrays[MANIFEST_KEY] = np.frombuffer(json.dumps(manifest, indent=1).encode("utf-8"),
                                       dtype=np.uint8)
  _files.write_atomically(path, lambda f: np.savez(f, **arrays))

  return {
      "file_bytes": float(os.path.getsize(path)),
      "dense_bytes": float(dense_bytes),
      "prunable_dense_bytes": float(prunable_dense_bytes),
      "prunable_file_bytes": float(prunable_file_bytes),
      "prunable_ratio": _ratio(prunable_dense_bytes, prunable_file_bytes),
  }


def _ratio(dense_bytes: int, file_bytes: int) -> float:
  """dense / file bytes of the sparse leaves: 1.0 with none, inf if they keep nothing."""
  if dense_bytes == 0:
    return 1.0
  if file_bytes == 0:
    return float("inf")
  return float(dense_bytes / file_bytes)


def _encode_leaf(i: int, keys: _Keys, leaf: np.ndarray, mask: np.ndarray | None,
                 sparse: bool) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Leaf `i`'s manifest entry and its arrays (``<i>.indices`` and ``<i>.values``, or
  ``<i>.dense``), with the entries `mask` removes set to zero (None: keep every entry)."""
  kept = np.array(leaf, copy=True)
  if mask is not None:
    kept[~mask] = 0
  bits = _bits_dtype(kept.dtype)
  stored = kept.view(bits) if bits is not None else kept
  entry = {"path": _name(keys), "shape": list(kept.shape), "dtype": kept.dtype.name}
  if bits is not None:
    entry["stored_as"] = bits.name
  if not sparse:
    entry["storage"] = "dense"
    return entry, {f"{i}.dense": stored}
  flat = stored.reshape(-1)
  indices = np.flatnonzero(_nonzero_bits(flat)).astype(_index_dtype(kept.size))
  entry.update(storage="sparse", nnz=int(indices.size), index_dtype=indices.dtype.name)
  return entry, {f"{i}.indices": indices, f"{i}.values": flat[indices]}


def _corrupt(path: str, why: str) -> ValueError:
  return ValueError(f"{path!r} is not a valid mmcompress export: {why}.")


def _open_checked(path: str) -> np.lib.npyio.NpzFile:
  """Opens the npz after checking that it is a complete zip whose members pass their CRC."""
  try:
    with zipfile.ZipFile(path) as archive:
      bad = archive.testzip()
  except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
    raise _corrupt(path, f"not a readable .npz (zip) file, truncated or corrupted ({e})") \
        from None
  if bad is not None:
    raise _corrupt(path, f"the member {bad!r} fails its CRC check (the file is corrupted)")
  return np.load(path, allow_pickle=False)


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
  """The manifest of an export: format, version and, per leaf, path, shape, dtype, storage.

  Args:
    path: a file written by `save`.

  Returns:
    The decoded JSON manifest (see the module docstring).

  Raises:
    FileNotFoundError: if there is no such file.
    ValueError: if the file is not a valid export.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no export file at {path!r}.")
  with _open_checked(path) as npz:
    return _manifest(path, npz)


def _manifest(path: str, npz: Any) -> dict[str, Any]:
  if MANIFEST_KEY not in npz.files:
    raise _corrupt(path, f"it has no {MANIFEST_KEY!r} entry")
  try:
    raw = npz[MANIFEST_KEY]
    manifest = json.loads(raw.tobytes().decode("utf-8"))
  except (ValueError, UnicodeDecodeError) as e:
    raise _corrupt(path, f"its manifest cannot be decoded ({e})") from None
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
    raise _corrupt(path, f"its manifest does not declare format {FORMAT_NAME!r}")
  if manifest.get("version") != FORMAT_VERSION:
    raise _corrupt(path, f"format version {manifest.get('version')!r} is not supported "
                   f"(this reader knows version {FORMAT_VERSION})")
  if not isinstance(manifest.get("leaves"), list):
    raise _corrupt(path, "its manifest has no list of leaves")
  return manifest


def _dtype(name: str) -> np.dtype:
  if hasattr(ml_dtypes, name):
    return np.dtype(getattr(ml_dtypes, name))
  return np.dtype(name)


def _read_leaf(path: str, npz: Any, i: int, entry: Any) -> tuple[str, np.ndarray]:
  try:
    name = entry["path"]
    shape = tuple(int(d) for d in entry["shape"])
    dtype = _dtype(entry["dtype"])
    stored = np.dtype(entry["stored_as"]) if "stored_as" in entry else dtype
    storage = entry["storage"]
  except (KeyError, TypeError, ValueError) as e:
    raise _corrupt(path, f"manifest entry {i} is malformed ({e!r})") from None
  if stored.itemsize != dtype.itemsize:
    raise _corrupt(path, f"leaf {name!r} stores {dtype} as {stored} of another width")
  size = int(np.prod(shape, dtype=np.int64))

  def member(suffix: str) -> np.ndarray:
    key = f"{i}.{suffix}"
    if key not in npz.files:
      raise _corrupt(path, f"leaf {name!r} has no array {key!r}")
    return npz[key]

  if storage == "dense":
    array = member("dense")
    if array.shape != shape or array.dtype != stored:
      raise _corrupt(path, f"leaf {name!r} is {array.dtype}{list(array.shape)}, the manifest "
                     f"says {stored}{list(shape)}")
  elif storage == "sparse":
    indices, values = member("indices"), member("values")
    if (indices.ndim != 1 or indices.dtype.kind != "u" or values.shape != indices.shape
        or values.dtype != stored or indices.size != entry.get("nnz")):
      raise _corrupt(path, f"leaf {name!r} has inconsistent sparse arrays (indices "
                     f"{indices.dtype}{list(indices.shape)}, values "
                     f"{values.dtype}{list(values.shape)}, nnz {entry.get('nnz')!r})")
    if indices.size and (int(indices[-1]) >= size or np.any(np.diff(indices.astype(np.int64))
                                                            <= 0)):
      raise _corrupt(path, f"leaf {name!r} has indices that are out of range or not "
                     "strictly increasing")
    flat = np.zeros(size, stored)
    flat[indices] = values
    array = flat.reshape(shape)
  else:
    raise _corrupt(path, f"leaf {name!r} has unknown storage {storage!r}")
  return name, array.view(dtype) if stored != dtype else array


def load(path: str | os.PathLike, *, like: Any = None) -> Any:
  """Reads an export back: the masked parameters, bit for bit, as numpy arrays.

  The result equals `mmcompress.sparsity.apply_masks(params, masks)` for the `params` and
  `masks` given to `save`: same values (bitwise), same dtypes, same shapes.

  Args:
    path: a file written by `save`.
    like: optional template pytree (e.g. a Flax FrozenDict, or the params themselves, or
      `jax.ShapeDtypeStruct` leaves) with the '/'-joined key paths of the export; the
      arrays are returned in its structure. Without it, nested plain dicts.

  Returns:
    The parameters, with numpy arrays as leaves.

  Raises:
    FileNotFoundError: if there is no such file.
    ValueError: if the file is corrupted or not an export, or `like` does not match it.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no export file at {path!r}.")
  with _open_checked(path) as npz:
    manifest = _manifest(path, npz)
    arrays = dict(_read_leaf(path, npz, i, entry) for i, entry in enumerate(manifest["leaves"]))
  if len(arrays) != len(manifest["leaves"]):
    raise _corrupt(path, "its manifest lists a leaf path twice")
  if like is None:
    tree: dict[str, Any] = {}
    for name, array in arrays.items():
      *parents, last = name.split("/")
      node = tree
      for key in parents:
        node = node.setdefault(key, {})
      node[last] = array
    return tree
  return _like(arrays, like, path)


def _like(arrays: dict[str, np.ndarray], like: Any, path: str) -> Any:
  leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
  names = [masks_lib.path_name(keys) for keys, _ in leaves]
  missing = sorted(set(names) - set(arrays))
  extra = sorted(set(arrays) - set(names))
  if missing or extra:
    raise ValueError(
        f"like does not match the export {path!r}: leaves only in like: {missing}; leaves "
        f"only in the file: {extra}.")
  out = []
  for name, (_, template) in zip(names, leaves):
    shape = getattr(template, "shape", None)
    if shape is not None and tuple(shape) != arrays[name].shape:
      raise ValueError(
          f"like leaf {name!r} has shape {tuple(shape)}, the export stores "
          f"{arrays[name].shape}.")
    out.append(arrays[name])
  return jax.tree.unflatten(treedef, out)
