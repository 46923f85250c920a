"""Magnitude pruning masks: which weights to keep, and which leaves may be pruned at all.

The masks are boolean pytrees with the structure and shapes of the parameters (True = keep).
Every count is exact and every tie is broken in a documented order, so that "97.5 % sparsity"
means exactly `floor(0.975 * n + 0.5)` zeros, reproducibly, on any backend.

References:
  Han, Pool, Tran & Dally, "Learning both Weights and Connections for Efficient Neural
  Networks", NeurIPS 2015 (unstructured magnitude pruning).
  Li, Kadav, Durdanovic, Samet & Graf, "Pruning Filters for Efficient ConvNets", ICLR 2017
  (filter pruning by norm).
  Mishra et al., "Accelerating Sparse Deep Neural Networks", arXiv:2104.08378, 2021
  (N:M fine-grained structured sparsity, e.g. 2:4).
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mmcompress import _checks

__all__ = ["admits", "apply_masks", "check_inner", "default_include", "grouped_order", "is_none",
           "keep_all_but_smallest", "magnitude_masks", "mask_tree", "parse_structure", "path_name",
           "prunable_flags", "prune_count", "resolve_include", "score_masks", "structure_sparsity",
           "tiered_score_masks"]

IncludeFn = Callable[[tuple[Any, ...], Any], bool]

_STRUCTURES_HELP = ("'unstructured', 'filter' or an 'n:m' pattern such as '2:4' "
                    "(integers with 1 <= n < m)")
_NM_PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def path_name(path: tuple[Any, ...]) -> str:
  """A '/'-joined name for a jax key path, e.g. "trunk/Dense_0/kernel" ("" for the root).

  Each entry is named as `jax.tree_util.keystr` names it with ``simple=True``: a dict key or
  an attribute by its name, a sequence entry by its index. The one rule for naming a leaf,
  shared by the sparsity summaries, the mask errors and the export.
  """
  return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def _rank(leaf: Any) -> int:
  return len(getattr(leaf, "shape", jnp.shape(leaf)))


def default_include(path: tuple[Any, ...], leaf: Any) -> bool:
  """Whether a parameter leaf is prunable by default.

  Every kernel (rank >= 2: convolution and Dense weights) is prunable except those of the
  task prediction layers, the final per-task output layers, which stay dense as in the
  reference (docs/method.md §2); biases and normalisation scales (rank < 2) are
  never pruned. The task prediction layers are recognised by name: a leaf is excluded when
  any entry of its key path contains "head" (case-insensitive). The models of
  `mmcompress.models` give that name to their prediction layers only (``head_{k}``); their
  other task-specific parts, such as MTAN's task attention (``task{k}_attention_*``), are
  pruned like the shared network. Every entry of the path, the leaf's own name included, is
  checked, so a module of your own named e.g. "MultiHeadAttention_0" is excluded too; pass your
  own `include` when that matters.

  Args:
    path: the leaf's jax key path (a tuple of `DictKey`, `GetAttrKey`, `SequenceKey`, ...),
      as given by `jax.tree_util.tree_map_with_path`.
    leaf: the parameter array (or anything with a `.shape`).

  Returns:
    True when the leaf should be pruned.
  """
  if _rank(leaf) < 2:
    return False
  # No entry's name holds a "/", so "head" is in the joined name iff it is in an entry's.
  return "head" not in path_name(path).lower()


def check_inner(inner: Any) -> None:
  """Raises unless `inner` looks like an `optax.GradientTransformation`."""
  if not (callable(getattr(inner, "init", None)) and callable(getattr(inner, "update", None))):
    raise ValueError(
        f"inner must be an optax.GradientTransformation (with init and update), got {inner!r}.")


def is_none(x: Any) -> bool:
  """`is_leaf` for mask trees whose None leaves stand for "keep everything"."""
  return x is None


def mask_tree(tree: Any, masks: Any) -> Any:
  """`where(mask, x, 0)` leaf by leaf, keeping each leaf's dtype; a None mask keeps all."""
  return jax.tree.map(
      lambda m, x: x if m is None else jnp.where(m, x, jnp.zeros((), jnp.result_type(x))),
      masks, tree, is_leaf=is_none)


def resolve_include(include: IncludeFn | None) -> IncludeFn:
  """Returns `include`, or `default_include` for None; raises if it is not callable."""
  if include is None:
    return default_include
  if not callable(include):
    raise ValueError(
        f"include must be None or a callable (path, leaf) -> bool, got {include!r}.")
  return include


def prunable_flags(params: Any, include: IncludeFn) -> Any:
  """A tree of Python bools: which leaves of `params` `include` selects."""
  return jax.tree_util.tree_map_with_path(lambda path, leaf: bool(include(path, leaf)), params)


def prune_count(fraction: float, n: int) -> int:
  """`floor(fraction * n + 0.5)`: the number of entries (or filters) pruned out of n."""
  return int(math.floor(fraction * n + 0.5))


def parse_structure(structure: Any) -> tuple[str, int, int]:
  """Returns (kind, n, m) for a structure string, kind in {unstructured, filter, n:m}."""
  if structure in ("unstructured", "filter"):
    return structure, 0, 0
  match = _NM_PATTERN.match(structure) if isinstance(structure, str) else None
  if match is None:
    raise ValueError(f"structure must be {_STRUCTURES_HELP}, got {structure!r}.")
  n, m = int(match.group(1)), int(match.group(2))
  if not 1 <= n < m:
    raise ValueError(
        f"structure {structure!r} is not a valid n:m pattern: need integers 1 <= n < m "
        f"(e.g. '2:4' keeps 2 of every 4), got n={n}, m={m}.")
  return "n:m", n, m


def structure_sparsity(structure: Any, sparsity: float | None = None) -> float | None:
  """The sparsity an ``n:m`` structure fixes, 1 - n/m (None for the other structures, which
  take any). With `sparsity` given, raises a ValueError unless it is a sparsity in [0, 1) and
  the structure admits it (within 1e-9)."""
  kind, n, m = parse_structure(structure)
  if sparsity is not None:
    sparsity = _checks.sparsity(sparsity)
  if kind != "n:m":
    return None
  fixed = 1.0 - n / m
  if sparsity is not None and not admits(fixed, sparsity):
    raise ValueError(f"structure {structure!r} prunes exactly 1 - n/m = {fixed!r} of the "
                     f"weights, not {sparsity!r}: give sparsity {fixed!r} (or None), or "
                     "another structure.")
  return fixed


def admits(fixed: float, sparsity: float) -> bool:
  """Whether `sparsity` is the sparsity `fixed` that an ``n:m`` structure prunes (to 1e-9)."""
  return abs(sparsity - fixed) <= 1e-9


def keep_all_but_smallest(scores: jax.Array, k: int) -> jax.Array:
  """A bool vector that is False at the k smallest entries of the 1-D `scores`.

  A stable ascending sort breaks ties by index: among equal scores the lower index is
  dropped first. `k` is a static Python int.
  """
  return _keep_all_but_smallest(scores, k, None)


def grouped_order(group: jax.Array, score: jax.Array) -> jax.Array:
  """Indices of the flat `score` sorted by (group, score, index) ascending: ties go to the lower
  index (`dynamic_sparse`'s drop and growth, `gradual_magnitude`'s pruning)."""
  index = jnp.arange(score.size, dtype=jnp.int32)
  return jax.lax.sort((group.astype(jnp.int32), score, index), num_keys=3)[-1]


def _lowest_if_not_finite(scores: jax.Array) -> jax.Array:
  """`scores` with every NaN or infinite entry made the lowest possible (−∞): a score that
  is not a number is no evidence of importance, so it is pruned first (`_ranked_masks`)."""
  scores = jnp.asarray(scores)
  if not jnp.issubdtype(scores.dtype, jnp.floating):
    return scores
  return jnp.where(jnp.isfinite(scores), scores, -jnp.inf)


def _keep_all_but_smallest(scores: jax.Array, k: int, favoured: jax.Array | None) -> jax.Array:
  """`keep_all_but_smallest`, where every favoured entry (a bool vector) ranks above every
  other one: the order is (favoured, score, index), lexicographically. A NaN or infinite
  score ranks lowest (`_lowest_if_not_finite`)."""
  keep = jnp.ones(scores.shape, dtype=bool)
  if k == 0:
    return keep
  order = jnp.argsort(_lowest_if_not_finite(scores), stable=True)
  if favoured is not None:
    # A stable sort by the tier of the score-sorted entries keeps the score order in a tier.
    order = order[jnp.argsort(favoured[order].astype(jnp.int8), stable=True)]
  return keep.at[order[:k]].set(False)


def _filter_norms(leaf: jax.Array) -> jax.Array:
  """ℓ2 norm of each output filter (the last axis), over all other axes."""
  leaf = jnp.asarray(leaf)
  if leaf.ndim == 0:
    return jnp.abs(leaf).reshape(1)
  return jnp.sqrt(jnp.sum(jnp.square(leaf), axis=tuple(range(leaf.ndim - 1))))


def _filter_any(leaf: jax.Array) -> jax.Array:
  """Whether any entry of each output filter (the last axis) is True."""
  leaf = jnp.asarray(leaf)
  if leaf.ndim == 0:
    return leaf.reshape(1)
  return jnp.any(leaf, axis=tuple(range(leaf.ndim - 1)))


def _filter_mask(keep_filters: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  if not shape:
    return keep_filters.reshape(())
  return jnp.broadcast_to(keep_filters, shape)


def _n_m_groups(leaf: jax.Array, m: int) -> jax.Array:
  """The entries of `leaf` in groups of m consecutive ones along axis -2 (the last axis)."""
  swapped = jnp.swapaxes(jnp.asarray(leaf), -2, -1)
  return swapped.reshape(swapped.shape[:-1] + (swapped.shape[-1] // m, m))


def _n_m_mask(scores: jax.Array, n: int, m: int, favoured: jax.Array | None = None
              ) -> jax.Array:
  """Keeps the n largest scores of every m consecutive entries along axis -2 (favoured
  entries first, when given)."""
  shape = jnp.shape(scores)
  groups = _n_m_groups(_lowest_if_not_finite(scores), m)
  if favoured is None:
    # The rank of each entry within its group in a stable ascending sort: the m - n lowest
    # ranks (smallest score, lower index first among ties) are pruned.
    ranks = jnp.argsort(jnp.argsort(groups, axis=-1, stable=True), axis=-1, stable=True)
  else:
    order = jnp.argsort(groups, axis=-1, stable=True)
    tiers = jnp.take_along_axis(_n_m_groups(favoured, m).astype(jnp.int8), order, axis=-1)
    order = jnp.take_along_axis(order, jnp.argsort(tiers, axis=-1, stable=True), axis=-1)
    ranks = jnp.argsort(order, axis=-1, stable=True)
  keep = (ranks >= m - n).reshape(groups.shape[:-2] + (groups.shape[-2] * m,))
  return jnp.swapaxes(keep, -2, -1).reshape(shape)


def magnitude_masks(params: Any,
                    sparsity: float | None,
                    *,
                    structure: str = "unstructured",
                    scope: str = "layer",
                    include: IncludeFn | None = None) -> Any:
  """Boolean keep-masks that prune the smallest-magnitude weights.

  `score_masks` of the scores |w|: the same counts and tie-breaks, written out here for
  magnitudes.

  Exact counts and tie-breaks:

  * "unstructured", scope "layer": a prunable leaf of n entries gets exactly
    `floor(sparsity * n + 0.5)` zeros (round half up, computed with Python floats). The
    entries are ranked by a stable ascending sort of |w| and the first k are pruned, so the
    kept entries are exactly the largest magnitudes and, among equal magnitudes, the entry
    with the lower flattened (row-major) index is pruned first.
  * "unstructured", scope "global": all prunable leaves are ranked together and
    `floor(sparsity * N + 0.5)` zeros are placed over their N entries in total; ties go first
    to the earlier leaf in `jax.tree.leaves` order, then to the lower index.
  * "filter": the output filters are the slices along the last axis (Flax Dense kernel
    (in, out), Conv kernel (h, w, in, out)), ranked by their ℓ2 norm over all other axes.
    Per layer, `floor(sparsity * n_filters + 0.5)` whole filters are pruned; globally the raw
    norms of all filters of all prunable leaves are ranked together and
    `floor(sparsity * total_filters + 0.5)` filters are pruned, so global filter sparsity
    is counted in filters, not in weights. Ties as above.
  * "n:m" (e.g. "2:4"): in every group of m consecutive entries along the input axis
    (axis -2), the n largest |w| are kept (ties: lower index pruned first). `sparsity` may be
    None; a number must equal 1 - n/m. `scope` is ignored.

  Works on concrete arrays and under `jax.jit` (all counts are static, from shapes).

  Args:
    params: a pytree of arrays.
    sparsity: the fraction in [0, 1) of prunable weights (or filters) to zero; may be None
      for an n:m structure.
    structure: "unstructured", "filter" or an "n:m" pattern such as "2:4".
    scope: "layer" (each leaf pruned to the target on its own) or "global".
    include: `(path, leaf) -> bool` choosing the prunable leaves; `default_include` if None.

  Returns:
    A pytree of bool arrays with the structure and shapes of `params`, True where a weight is
    kept; leaves that are not prunable get all-True masks.

  >>> params = {"Dense_0": {"kernel": jnp.arange(8.0).reshape(2, 4), "bias": jnp.ones(4)}}
  >>> masks = magnitude_masks(params, 0.5)
  >>> int(masks["Dense_0"]["kernel"].sum()), bool(masks["Dense_0"]["bias"].all())
  (4, True)
  """
  plan = _plan(sparsity, structure, scope, include)
  # `include` sees the parameters themselves, as it always has.
  flags = prunable_flags(params, plan.include)
  return _ranked_masks(jax.tree.map(jnp.abs, params), flags, plan, None)


def score_masks(scores: Any,
                sparsity: float | None,
                *,
                structure: str = "unstructured",
                scope: str = "layer",
                include: IncludeFn | None = None) -> Any:
  """Boolean keep-masks that prune the lowest-scored weights, for any importance scores.

  `scores` is a pytree of non-negative scores with the structure and shapes of the
  parameters, larger meaning more important (|w| for magnitude pruning, a saliency such as
  `task_scores.taylor_scores`, ...). The counts and the tie rule are those of
  `magnitude_masks`, with the score in place of |w|:

  * "unstructured": exactly `floor(sparsity * n + 0.5)` zeros per prunable leaf (scope
    "layer") or over all prunable entries together (scope "global"); the lowest scores are
    pruned, ties to the lower flattened index first, and globally to the earlier leaf first.
  * "filter": a filter (a slice along the last axis) is scored by the ℓ2 norm of its entries'
    scores (for scores |w|: the filter's norm); whole filters are pruned, counted in filters.
  * "n:m": every group of m consecutive entries along axis -2 keeps its n largest scores.

  The scores are ranked as given: they are not checked to be non-negative (under `jax.jit`
  they cannot be), and a filter's norm does not see a score's sign.

  Args:
    scores: a pytree of arrays, shaped like the parameters.
    sparsity: the fraction in [0, 1) of prunable entries (or filters) to prune; may be None
      for an n:m structure (a number must equal 1 - n/m).
    structure: "unstructured", "filter" or an "n:m" pattern such as "2:4".
    scope: "layer" or "global" (ignored for n:m).
    include: `(path, leaf) -> bool` over the leaves of `scores`, choosing the prunable ones;
      `default_include` if None.

  Returns:
    A pytree of bool arrays shaped like `scores`, True where a weight is kept; leaves that
    are not prunable get all-True masks.

  >>> scores = {"Dense_0": {"kernel": jnp.array([[3.0, 0.0], [1.0, 2.0]])}}
  >>> score_masks(scores, 0.5)["Dense_0"]["kernel"].tolist()
  [[True, False], [False, True]]
  """
  plan = _plan(sparsity, structure, scope, include)
  return _ranked_masks(scores, prunable_flags(scores, plan.include), plan, None)


def tiered_score_masks(scores: Any,
                       favoured: Any,
                       sparsity: float | None,
                       *,
                       structure: str = "unstructured",
                       scope: str = "layer",
                       include: IncludeFn | None = None) -> Any:
  """`score_masks` with two tiers: every favoured entry ranks above every other one.

  The ranking is by (favoured, score, index): the entries outside `favoured` are pruned
  first, lowest score first, and only then the favoured ones, lowest score first; counts and
  ties are those of `score_masks`. For "filter", a filter is favoured when any of its entries
  is; for "n:m" the tiers apply within each group.

  Args:
    scores: as for `score_masks`.
    favoured: a pytree of bool arrays with the structure and shapes of `scores`.
    sparsity, structure, scope, include: as for `score_masks`.

  Returns:
    A pytree of bool keep-masks shaped like `scores`.
  """
  plan = _plan(sparsity, structure, scope, include)
  _checks.same_structure(favoured, scores, "favoured", "scores")
  return _ranked_masks(scores, prunable_flags(scores, plan.include), plan, favoured)


class _Plan(NamedTuple):
  """Checked arguments of the mask functions."""
  kind: str
  n: int
  m: int
  structure: str
  sparsity: float | None
  scope: str
  include: IncludeFn


def _plan(sparsity: Any, structure: Any, scope: Any, include: IncludeFn | None) -> _Plan:
  kind, n, m = parse_structure(structure)
  include = resolve_include(include)
  scope = _checks.one_of(scope, ("layer", "global"), "scope")
  if kind == "n:m":
    structure_sparsity(structure, sparsity)
  else:
    sparsity = _checks.sparsity(sparsity)
  return _Plan(kind, n, m, structure, sparsity, scope, include)


def _refuse_non_finite(leaves_with_path: list[tuple[Any, Any]], flags: list[bool]) -> None:
  """Raises a ValueError naming the first prunable leaf whose (concrete) scores hold a NaN or
  an infinity. Under `jax.jit` the values cannot be seen: there such a score ranks lowest."""
  for (path, leaf), prunable in zip(leaves_with_path, flags):
    if not prunable or isinstance(leaf, jax.core.Tracer):
      continue
    values = np.asarray(leaf)
    if not np.issubdtype(values.dtype, np.floating):
      continue
    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    if bad:
      raise ValueError(
          f"the scores of {path_name(path)!r} hold {bad} NaN or infinite value(s) of "
          f"{values.size}: masks chosen from them would be arbitrary. Mend what produced them "
          "(a diverged run's weights, a NaN loss in a task's gradient) before pruning.")


def _ranked_masks(scores: Any, flags: Any, plan: _Plan, favoured: Any | None) -> Any:
  """The keep-masks of `scores` (prunable leaves per `flags`), favoured entries first.

  Scores that can be seen (outside `jax.jit`) must be finite (`_refuse_non_finite`); under
  jit a NaN or infinite score ranks below every finite one, and a filter with one such entry
  below every other filter."""
  kind, n, m, sparsity = plan.kind, plan.n, plan.m, plan.sparsity
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(scores)
  flag_leaves = treedef.flatten_up_to(flags)
  if leaves_with_path and not any(flag_leaves) and (sparsity or kind == "n:m"):
    raise ValueError(
        f"`include` selects none of the {len(leaves_with_path)} leaves "
        f"({', '.join(path_name(p) for p, _ in leaves_with_path[:4])}"
        f"{', ...' if len(leaves_with_path) > 4 else ''}), so nothing would be pruned: give "
        "an `include` that names the leaves to prune (by default every kernel but the "
        "prediction heads').")
  _refuse_non_finite(leaves_with_path, flag_leaves)
  tiers = ([None] * len(flag_leaves) if favoured is None
           else [jnp.asarray(f, bool) for f in treedef.flatten_up_to(favoured)])

  if kind == "n:m":
    for (path, leaf), prunable in zip(leaves_with_path, flag_leaves):
      if not prunable:
        continue
      shape = jnp.shape(leaf)
      if len(shape) < 2:
        raise ValueError(
            f"structure {plan.structure!r} groups entries along axis -2, but the prunable leaf "
            f"{path_name(path)!r} has shape {shape}; exclude it with `include`.")
      if shape[-2] % m:
        raise ValueError(
            f"structure {plan.structure!r} needs axis -2 of every prunable leaf divisible by "
            f"m={m}; leaf {path_name(path)!r} has shape {shape} (axis -2 = {shape[-2]}).")

  out = []
  if kind == "n:m":
    for (_, leaf), prunable, tier in zip(leaves_with_path, flag_leaves, tiers):
      out.append(_n_m_mask(leaf, n, m, tier) if prunable
                 else jnp.ones(jnp.shape(leaf), bool))
  elif plan.scope == "layer":
    for (_, leaf), prunable, tier in zip(leaves_with_path, flag_leaves, tiers):
      shape = jnp.shape(leaf)
      if not prunable:
        out.append(jnp.ones(shape, bool))
      elif kind == "unstructured":
        scores = jnp.asarray(leaf).reshape(-1)
        tier = None if tier is None else tier.reshape(-1)
        out.append(_keep_all_but_smallest(scores, prune_count(sparsity, scores.size), tier)
                   .reshape(shape))
      else:
        norms = _filter_norms(leaf)
        tier = None if tier is None else _filter_any(tier)
        out.append(_filter_mask(
            _keep_all_but_smallest(norms, prune_count(sparsity, norms.size), tier), shape))
  else:
    out = _global_masks([leaf for _, leaf in leaves_with_path], flag_leaves, tiers, kind,
                        sparsity)
  return jax.tree.unflatten(treedef, out)


def _global_masks(leaves: list[Any], flags: list[bool], tiers: list[Any], kind: str,
                  sparsity: float) -> list[jax.Array]:
  """Masks for one ranking over all prunable leaves together (leaf order, then index)."""
  chosen = [(leaf, tier) for leaf, tier, f in zip(leaves, tiers, flags) if f]
  if kind == "unstructured":
    scores = [jnp.asarray(leaf).reshape(-1) for leaf, _ in chosen]
    tiers = [None if tier is None else tier.reshape(-1) for _, tier in chosen]
  else:
    scores = [_filter_norms(leaf) for leaf, _ in chosen]
    tiers = [None if tier is None else _filter_any(tier) for _, tier in chosen]
  out = []
  if scores:
    dtype = jnp.result_type(*scores)
    all_scores = jnp.concatenate([s.astype(dtype) for s in scores])
    all_tiers = None if tiers[0] is None else jnp.concatenate(tiers)
    keep = _keep_all_but_smallest(all_scores, prune_count(sparsity, all_scores.size),
                                  all_tiers)
    offsets = [0]
    for s in scores:
      offsets.append(offsets[-1] + s.size)
    pieces = iter(keep[start:stop] for start, stop in zip(offsets[:-1], offsets[1:]))
  for leaf, prunable in zip(leaves, flags):
    shape = jnp.shape(leaf)
    if not prunable:
      out.append(jnp.ones(shape, bool))
    elif kind == "unstructured":
      out.append(next(pieces).reshape(shape))
    else:
      out.append(_filter_mask(next(pieces), shape))
  return out


def apply_masks(params: Any, masks: Any) -> Any:
  """Sets the masked-out entries of `params` to exactly zero.

  Args:
    params: a pytree of arrays.
    masks: a pytree of bool arrays with the structure and shapes of `params` (True = keep).

  Returns:
    `params` with `jnp.where(mask, p, 0)` applied leaf by leaf (dtypes preserved).
  """
  _checks.same_structure(masks, params, "masks")
  return _masked(params, masks)


# One dispatch for the whole tree, not one per leaf: a grid finishes and exports runs by the
# hundred.
@jax.jit
def _masked(params: Any, masks: Any) -> Any:
  return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros((), jnp.result_type(p))),
                      params, masks)
