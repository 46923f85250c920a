"""Reading sparsity back: the masks inside an optimizer state, zero counts, both ratios.

Sparsity is the fraction of prunable weights that are exactly zero. Two compression ratios
are reported, always side by side (docs/method.md §5):

* the prunable-part compression, prunable weights / nonzero prunable weights (97.5 %
  sparsity = 40x, per layer or over the prunable layers);
* the whole-model compression, all parameters / nonzero parameters: the task prediction
  layers, biases and normalisation scales that stay dense count too, as the papers count
  "40x" of a model.

Only parameters count: batch-norm running statistics (the ``batch_stats`` collection) are
buffers, not parameters, and are left out; pass the ``params`` collection alone.
"""
from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmcompress import _checks
from mmcompress.sparsity import masks as masks_lib

__all__ = ["find_masks", "non_prunable_groups", "planned_summary", "summary"]


def _holds_masks(node: Any) -> bool:
  """Whether `node` is a NamedTuple (an optax-style state) with a field named ``masks``."""
  return isinstance(node, tuple) and "masks" in getattr(node, "_fields", ())


def find_masks(opt_state: Any) -> Any | None:
  """The masks of the first state inside an optimizer state that has a ``masks`` field.

  Any NamedTuple state with a field named ``masks`` counts (`StaticSparseState`,
  `DynamicSparseState`, or a sparse wrapper of your own), so a new wrapper needs no
  registration here. The state is walked in `jax.tree` flattening order (depth first, fields
  in order), through tuples, NamedTuples (e.g. `optax.chain`), lists, dicts (e.g.
  `optax.named_chain`) and any other registered pytree node, so a trainer can export or
  summarise the masks without knowing where the wrapper sits.

  Args:
    opt_state: an optimizer state.

  Returns:
    The `masks` field found (in a `StaticSparseState`, leaves that prune nothing are None:
    pass the result through `full_masks` for a complete tree), or None if there is no such
    state.
  """
  for node in jax.tree.leaves(opt_state, is_leaf=_holds_masks):
    if _holds_masks(node):
      return node.masks
  return None


def _ratio(size: int, nonzero: int) -> float:
  """size / nonzero; 1.0 for an empty part, inf when nothing of it is nonzero."""
  if size == 0:
    return 1.0
  return size / nonzero if nonzero else float("inf")


def _totals(leaves: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """The counts and both ratios over per-leaf rows {"size", "nonzero", "prunable"}."""
  prunable_size = sum(r["size"] for r in leaves.values() if r["prunable"])
  total_size = sum(r["size"] for r in leaves.values())
  prunable_nonzero = sum(r["nonzero"] for r in leaves.values() if r["prunable"])
  non_prunable_nonzero = sum(r["nonzero"] for r in leaves.values() if not r["prunable"])
  total_nonzero = prunable_nonzero + non_prunable_nonzero
  prunable_ratio = _ratio(prunable_size, prunable_nonzero)
  return {
      "prunable_size": prunable_size,
      "prunable_nonzero": prunable_nonzero,
      "sparsity": 1.0 - prunable_nonzero / prunable_size if prunable_size else 0.0,
      "total_size": total_size,
      "total_nonzero": total_nonzero,
      "non_prunable_size": total_size - prunable_size,
      "whole_model_sparsity": 1.0 - total_nonzero / total_size if total_size else 0.0,
      "compression_ratio": prunable_ratio,
      "prunable_compression_ratio": prunable_ratio,
      "whole_model_compression_ratio": _ratio(total_size, total_nonzero),
      "whole_model_cap": _ratio(total_size, total_size - prunable_size),
      "non_prunable_groups": non_prunable_groups(leaves),
  }


def summary(params: Any, masks: Any | None = None, *,
            include: masks_lib.IncludeFn | None = None) -> dict[str, Any]:
  """Sizes, nonzeros and sparsity per leaf, and both compression ratios.

  Args:
    params: a pytree of arrays (concrete, not traced): the model's parameters only, not its
      batch-norm statistics (see the module docstring).
    masks: optional bool masks with the structure and shapes of `params`; if given, the
      masked params are counted (`apply_masks` first).
    include: `(path, leaf) -> bool` saying which leaves are prunable; `default_include` if
      None.

  Returns:
    A JSON-serialisable dict of Python ints, floats, bools, lists and dicts:
    "leaves", `{name: {"shape", "size", "nonzero", "sparsity", "prunable"}}` with names
    '/'-joined key paths such as "trunk/Dense_0/kernel", and
    `prunable_size`, `prunable_nonzero`, `total_size`, `total_nonzero` and
    `non_prunable_size` (total_size - prunable_size), all counts of parameter entries;
    "sparsity", the zero fraction of the prunable weights (0.0 if there are none);
    "whole_model_sparsity", that of all parameters;
    "prunable_compression_ratio" = prunable_size / prunable_nonzero, also under its older
    name "compression_ratio" (the prunable part's, not the model's);
    "whole_model_compression_ratio" = total_size / total_nonzero, every parameter counted;
    "whole_model_cap" = total_size / non_prunable_size, the whole-model compression if every
    prunable weight were removed and every other parameter kept (inf when every parameter is
    prunable); "non_prunable_groups", see `non_prunable_groups`. A ratio is inf when its part
    has no nonzero entry and 1.0 when the part is empty.
  """
  include = masks_lib.resolve_include(include)
  if masks is not None:
    params = masks_lib.apply_masks(params, masks)
  leaves = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    size = int(np.prod(jnp.shape(leaf), dtype=np.int64))
    nonzero = int(jnp.count_nonzero(jnp.asarray(leaf)))
    leaves[masks_lib.path_name(path)] = {
        "shape": [int(d) for d in jnp.shape(leaf)],
        "size": size,
        "nonzero": nonzero,
        "sparsity": 1.0 - nonzero / size if size else 0.0,
        "prunable": bool(include(path, leaf)),
    }
  return {"leaves": leaves, **_totals(leaves)}


def _kept_per_leaf(shape: tuple[int, ...], kind: str, sparsity: float, n: int, m: int) -> int:
  """Entries a prunable leaf of `shape` keeps under per-layer pruning, as magnitude_masks."""
  size = int(np.prod(shape, dtype=np.int64))
  if kind == "unstructured":
    return size - masks_lib.prune_count(sparsity, size)
  if kind == "filter":
    filters = shape[-1] if shape else 1
    per_filter = size // filters if filters else 0
    return (filters - masks_lib.prune_count(sparsity, filters)) * per_filter
  return size // m * n


def planned_summary(params: Any, sparsity: float | None, *, structure: str = "unstructured",
                    scope: str = "layer",
                    include: masks_lib.IncludeFn | None = None) -> dict[str, Any]:
  """What `summary` will report after `magnitude_masks`, from the shapes alone.

  Every prunable leaf keeps the count `magnitude_masks` leaves it (per layer: n -
  floor(sparsity * n + 0.5) entries; whole filters for "filter"; n of every m for "n:m"),
  every other leaf keeps all its entries, and every kept entry counts as nonzero. No array is
  read, so `params` may hold `jax.ShapeDtypeStruct`s, e.g. from
  ``jax.eval_shape(model.init, ...)``: the ratios of a full-size model cost no compute.

  Args:
    params: a pytree of arrays or of anything with a `.shape` (the parameters only).
    sparsity: the pruned fraction in [0, 1), as given to `magnitude_masks`; for "n:m",
      which prunes 1 - n/m, None or that (another is refused, as `magnitude_masks` does).
    structure: "unstructured", "filter" or an "n:m" pattern such as "2:4".
    scope: "layer" or "global". With "global" the per-leaf counts are not known before the
      weights are (a leaf's "nonzero" is then None) but the totals are; global "filter"
      pruning is refused, as even its total depends on the weights.
    include: `(path, leaf) -> bool` choosing the prunable leaves; `default_include` if None.

  Returns:
    The dict of `summary`, with planned counts.

  Raises:
    ValueError: for a bad sparsity, structure or scope, or global filter pruning.
  """
  kind, n, m = masks_lib.parse_structure(structure)
  include = masks_lib.resolve_include(include)
  scope = _checks.one_of(scope, ("layer", "global"), "scope")
  if kind == "n:m":
    sparsity = masks_lib.structure_sparsity(structure, sparsity)
  else:
    sparsity = _checks.sparsity(sparsity)
  if kind == "filter" and scope == "global":
    raise ValueError("global filter pruning keeps a number of weights that depends on the "
                     "weights themselves; use scope='layer', or count the real masks with "
                     "`summary`.")
  leaves = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    shape = tuple(int(d) for d in jnp.shape(leaf))
    size = int(np.prod(shape, dtype=np.int64))
    prunable = bool(include(path, leaf))
    if not prunable:
      nonzero = size
    elif scope == "layer" or kind == "n:m":
      nonzero = _kept_per_leaf(shape, kind, sparsity, n, m)
    else:
      nonzero = None
    leaves[masks_lib.path_name(path)] = {
        "shape": list(shape), "size": size, "nonzero": nonzero,
        "sparsity": None if nonzero is None else (1.0 - nonzero / size if size else 0.0),
        "prunable": prunable,
    }
  rows = leaves
  if any(r["nonzero"] is None for r in leaves.values()):
    # Global unstructured pruning: one count over all prunable leaves together.
    pooled = sum(r["size"] for r in leaves.values() if r["prunable"])
    rows = {name: r for name, r in leaves.items() if not r["prunable"]}
    rows["(prunable)"] = {"size": pooled, "prunable": True,
                          "nonzero": pooled - masks_lib.prune_count(sparsity, pooled)}
  totals = _totals(rows)
  totals["non_prunable_groups"] = non_prunable_groups(leaves)
  return {"leaves": leaves, **totals}


def _pattern(name: str) -> str:
  """A leaf's module path with every run of digits replaced by "*"."""
  module = name.rsplit("/", 1)[0] if "/" in name else ""
  return re.sub(r"\d+", "*", module)


def non_prunable_groups(leaves: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
  """The leaves that stay dense, grouped by module path with numbers replaced by "*".

  E.g. the three prediction layers ``head_0/conv0``, ``head_1/conv1``, ... form the group
  ``head_*/conv*``, and every batch norm of the backbone ``backbone/enc*_*/bn``.

  Args:
    leaves: the "leaves" of `summary`: name -> {"size", "prunable", ...}.

  Returns:
    One dict per group, largest first (then by name): "group" (the pattern; "" for leaves at
    the root), "names" (the sorted leaf names in it, e.g. ["bias", "kernel"]), "leaves"
    (how many) and "size" (their parameter entries).
  """
  groups: dict[str, dict[str, Any]] = {}
  for name, row in leaves.items():
    if row["prunable"]:
      continue
    group = groups.setdefault(_pattern(name), {"names": set(), "leaves": 0, "size": 0})
    group["names"].add(re.sub(r"\d+", "*", name.rsplit("/", 1)[-1]))
    group["leaves"] += 1
    group["size"] += row["size"]
  out = [{"group": key, "names": sorted(g["names"]), "leaves": g["leaves"], "size": g["size"]}
         for key, g in groups.items()]
  return sorted(out, key=lambda g: (-g["size"], g["group"]))
