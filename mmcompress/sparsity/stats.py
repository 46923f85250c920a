"""Reading sparsity back: the masks inside an optimizer state, and zero counts per leaf.

Sparsity is the fraction of prunable weights that are exactly zero; the compression ratio is
prunable weights / nonzero prunable weights (97.5 % sparsity = 40x; docs/method.md §5).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmcompress.sparsity import masks as masks_lib
from mmcompress.sparsity.dynamic import DynamicSparseState
from mmcompress.sparsity.masked_training import MaskedState

_MASK_STATES = (MaskedState, DynamicSparseState)


def find_masks(opt_state: Any) -> Any | None:
  """The masks of the first `MaskedState` or `DynamicSparseState` inside an optimizer state.

  The state is walked in `jax.tree` flattening order (depth first, fields in order), through
  tuples, NamedTuples (e.g. `optax.chain`), lists, dicts (e.g. `optax.named_chain`) and any
  other registered pytree node, so a trainer can export or summarise the masks without
  knowing where the wrapper sits.

  Args:
    opt_state: an optimizer state.

  Returns:
    The `masks` field found (in a `MaskedState`, leaves that prune nothing are None: pass
    the result through `full_masks` for a complete tree), or None if there is no such state.
  """
  is_mask_state = lambda x: isinstance(x, _MASK_STATES)
  for node in jax.tree.leaves(opt_state, is_leaf=is_mask_state):
    if is_mask_state(node):
      return node.masks
  return None


def summary(params: Any, masks: Any | None = None, *,
            include: masks_lib.IncludeFn | None = None) -> dict[str, Any]:
  """Sizes, nonzeros and sparsity per leaf and over the prunable leaves.

  Args:
    params: a pytree of arrays (concrete, not traced).
    masks: optional bool masks with the structure and shapes of `params`; if given, the
      masked params are counted (`apply_masks` first).
    include: `(path, leaf) -> bool` saying which leaves are prunable; `default_include` if
      None.

  Returns:
    A JSON-serialisable dict of Python ints, floats and bools:
    `{"leaves": {name: {"shape", "size", "nonzero", "sparsity", "prunable"}},
    "prunable_size", "prunable_nonzero", "sparsity", "total_size", "total_nonzero",
    "compression_ratio"}`, with names '/'-joined key paths such as "trunk/Dense_0/kernel",
    "sparsity" the zero fraction of the prunable weights (0.0 if there are none) and
    "compression_ratio" = prunable_size / prunable_nonzero (inf if no prunable weight is
    nonzero).
  """
  include = masks_lib.resolve_include(include)
  if masks is not None:
    params = masks_lib.apply_masks(params, masks)
  leaves = {}
  prunable_size = prunable_nonzero = total_size = total_nonzero = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    prunable = bool(include(path, leaf))
    size = int(np.prod(jnp.shape(leaf), dtype=np.int64))
    nonzero = int(jnp.count_nonzero(jnp.asarray(leaf)))
    leaves[masks_lib.path_name(path)] = {
        "shape": [int(d) for d in jnp.shape(leaf)],
        "size": size,
        "nonzero": nonzero,
        "sparsity": 1.0 - nonzero / size if size else 0.0,
        "prunable": prunable,
    }
    total_size += size
    total_nonzero += nonzero
    if prunable:
      prunable_size += size
      prunable_nonzero += nonzero
  return {
      "leaves": leaves,
      "prunable_size": prunable_size,
      "prunable_nonzero": prunable_nonzero,
      "sparsity": 1.0 - prunable_nonzero / prunable_size if prunable_size else 0.0,
      "total_size": total_size,
      "total_nonzero": total_nonzero,
      "compression_ratio": (prunable_size / prunable_nonzero if prunable_nonzero
                            else float("inf")),
  }
