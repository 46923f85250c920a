"""Tests of score_masks (against a NumPy brute force) and of the task-aware scores and masks."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import flatten_util

from mmcompress import sparsity as sp
from mmcompress.sparsity import masks as masks_lib
from mmcompress.sparsity import task_scores
from mmcompress.weighting.gradient import per_task_grads

SHAPES = {"a": (8, 12), "b": {"bias": (8,), "kernel": (3, 3, 4, 8)}, "c": (16, 5),
          "d": (4, 6)}
CASES = [("unstructured", "layer", 0.6), ("unstructured", "global", 0.85),
         ("filter", "layer", 0.4), ("filter", "global", 0.7), ("2:4", "layer", None),
         ("2:4", "global", 0.5)]


def _tree(fn):
  return jax.tree.map(fn, SHAPES, is_leaf=lambda x: isinstance(x, tuple))


def _random_scores(seed, ties=False, num_tasks=None):
  """Non-negative scores shaped like SHAPES (with a leading K axis if num_tasks is given);
  with `ties`, integers 0..3, so that most scores are tied."""
  rng = np.random.default_rng(seed)
  lead = () if num_tasks is None else (num_tasks,)

  def one(shape):
    if ties:
      return jnp.asarray(rng.integers(0, 4, size=lead + shape), jnp.float32)
    return jnp.asarray(np.abs(rng.normal(size=lead + shape)), jnp.float32)

  return _tree(one)


def _skip_c(path, leaf):
  """Every rank >= 2 leaf but "c": an include that excludes a leaf."""
  return leaf.ndim >= 2 and masks_lib.path_name(path) != "c"


# ----------------------------------------------------------------------------- brute force


def _units(score, kind):
  """The units of one leaf that the rule ranks: a list of (rank key, entry indices)."""
  flat_index = np.arange(score.size).reshape(score.shape)
  if kind == "filter":
    moved = score.reshape(-1, score.shape[-1]).astype(np.float64)
    return [(float(np.sqrt((moved[:, j] ** 2).sum())), flat_index[..., j].reshape(-1))
            for j in range(score.shape[-1])]
  return [(float(s), np.array([i])) for i, s in enumerate(score.reshape(-1))]


def _prune_lowest(units, k):
  """Sorts (key, tie position, entries) by key then position and returns the first k."""
  order = sorted(range(len(units)), key=lambda i: (units[i][0], i))
  return [units[i][1] for i in order[:k]]


def brute_force_masks(scores, sparsity, structure, scope, include):
  """score_masks' documented rule written with Python sorting, leaf by leaf or pooled."""
  leaves = [(path, np.asarray(x)) for path, x in jax.tree_util.tree_leaves_with_path(scores)]
  flags = [bool(include(path, jnp.asarray(x))) for path, x in leaves]
  out = [np.ones(x.shape, bool) for _, x in leaves]
  if ":" in structure:
    n, m = map(int, structure.split(":"))
    for (_, x), flag, keep in zip(leaves, flags, out):
      if not flag:
        continue
      moved = np.moveaxis(x, -2, -1)
      index = np.moveaxis(np.arange(x.size).reshape(x.shape), -2, -1)
      for group, where in zip(moved.reshape(-1, m), index.reshape(-1, m)):
        units = [(float(s), np.array([i])) for s, i in zip(group, where)]
        for entries in _prune_lowest(units, m - n):
          keep.reshape(-1)[entries] = False
    return jax.tree.unflatten(jax.tree.structure(scores), out)
  kind = structure
  per_leaf = [(i, _units(x, kind)) for i, ((_, x), f) in enumerate(zip(leaves, flags))
              if f]
  groups = per_leaf if scope == "layer" else [
      (None, [(key, (i, entries)) for i, units in per_leaf for key, entries in units])]
  for leaf_index, units in groups:
    k = math.floor(sparsity * len(units) + 0.5)
    for pruned in _prune_lowest(units, k):
      i, entries = (leaf_index, pruned) if scope == "layer" else pruned
      out[i].reshape(-1)[entries] = False
  return jax.tree.unflatten(jax.tree.structure(scores), out)


def _assert_same(got, expected):
  assert jax.tree.structure(got) == jax.tree.structure(expected)
  for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    assert g.dtype == jnp.bool_
    np.testing.assert_array_equal(np.asarray(g), np.asarray(e))


# ----------------------------------------------------------------------------- score_masks


@pytest.mark.parametrize("include", [None, _skip_c], ids=["default", "skip_c"])
@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
@pytest.mark.parametrize("structure, scope, sparsity", CASES)
def test_score_masks_match_brute_force(structure, scope, sparsity, ties, include):
  scores = _random_scores(seed=len(structure) + len(scope), ties=ties)
  got = sp.score_masks(scores, sparsity, structure=structure, scope=scope, include=include)
  rule = sp.default_include if include is None else include
  _assert_same(got, brute_force_masks(scores, sparsity, structure, scope, rule))
  if include is _skip_c:
    assert bool(got["c"].all())


def test_score_masks_brute_force_sees_the_tie_rule():
  # All scores equal: the lowest flattened indices go first, the earlier leaf first globally.
  scores = {"x": jnp.ones((2, 3)), "y": jnp.ones((3, 2))}
  expected = {"x": np.array([[False, False, False], [False, True, True]]),
              "y": np.ones((3, 2), bool)}
  _assert_same(brute_force_masks(scores, 4 / 12, "unstructured", "global", sp.default_include),
               expected)
  _assert_same(sp.score_masks(scores, 4 / 12, scope="global"), expected)


@pytest.mark.parametrize("structure, scope, sparsity", CASES)
def test_magnitude_masks_are_score_masks_of_the_magnitudes(structure, scope, sparsity):
  params = _tree(lambda shape: jnp.asarray(
      np.random.default_rng(sum(shape)).normal(size=shape), jnp.float32))
  for include in (None, _skip_c):
    _assert_same(sp.magnitude_masks(params, sparsity, structure=structure, scope=scope,
                                    include=include),
                 sp.score_masks(jax.tree.map(jnp.abs, params), sparsity, structure=structure,
                                scope=scope, include=include))


@pytest.mark.parametrize("structure, scope, sparsity", CASES)
def test_tiered_masks_prune_the_unfavoured_first(structure, scope, sparsity):
  scores = _random_scores(seed=3)
  favoured = sp.score_masks(_random_scores(seed=4), sparsity, structure=structure, scope=scope)
  got = masks_lib.tiered_score_masks(scores, favoured, sparsity, structure=structure,
                                     scope=scope)
  # Budget-sized favoured masks: the result is exactly them, whatever the scores say.
  _assert_same(got, favoured)
  # No favoured entry: plain score_masks.
  none = jax.tree.map(lambda s: jnp.zeros(s.shape, bool), scores)
  _assert_same(masks_lib.tiered_score_masks(scores, none, sparsity, structure=structure,
                                            scope=scope),
               sp.score_masks(scores, sparsity, structure=structure, scope=scope))


# ----------------------------------------------------------------------------- taylor scores


def _mlp_init(key, d_in=6, hidden=16, num_tasks=2):
  k1, k2 = jax.random.split(key)
  return {"trunk": {"kernel": jax.random.normal(k1, (d_in, hidden)) / np.sqrt(d_in),
                    "bias": jnp.zeros(hidden)},
          "out": {"kernel": jax.random.normal(k2, (hidden, num_tasks)) / np.sqrt(hidden),
                  "bias": jnp.zeros(num_tasks)}}


def _mlp_losses(params, x, y):
  """Two regression tasks on one tanh hidden layer, one output unit each: (2,) MSEs."""
  hidden = jnp.tanh(x @ params["trunk"]["kernel"] + params["trunk"]["bias"])
  prediction = hidden @ params["out"]["kernel"] + params["out"]["bias"]
  return jnp.mean((prediction - y) ** 2, axis=0)


@jax.jit
def _train(params, x, y):
  def step(p, _):
    grads = jax.grad(lambda q: _mlp_losses(q, x, y).sum())(p)
    return jax.tree.map(lambda a, g: a - 0.1 * g, p, grads), None
  return jax.lax.scan(step, params, None, length=300)[0]


@jax.jit
def _true_changes(params, x, y):
  """(K, n): |L_k(θ with θ_i = 0) - L_k(θ)| for every single weight i (ravelled order).

  The unchanged θ is one more row of the same batch, so that a weight without effect on a
  task gives exactly 0."""
  flat, unravel = flatten_util.ravel_pytree(params)
  factors = jnp.concatenate([1.0 - jnp.eye(flat.size), jnp.ones((1, flat.size))])
  losses = jax.vmap(lambda f: _mlp_losses(unravel(flat * f), x, y))(factors)
  return jnp.abs(losses[:-1] - losses[-1]).T


def _ranks(values):
  return np.argsort(np.argsort(values, kind="stable"), kind="stable")


def _spearman(a, b):
  return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def test_taylor_scores_definition_and_shapes():
  params = {"w": jnp.array([[1.0, -2.0]]), "b": jnp.array([3.0])}
  grads = {"w": jnp.array([[[0.5, 0.5]], [[-1.0, 0.0]]]), "b": jnp.array([[1.0], [-2.0]])}
  scores = sp.taylor_scores(params, grads)
  np.testing.assert_array_equal(np.asarray(scores["w"]), [[[0.5, 1.0]], [[1.0, 0.0]]])
  np.testing.assert_array_equal(np.asarray(scores["b"]), [[3.0], [6.0]])
  magnitudes = sp.magnitude_scores(params, 3)
  assert magnitudes["w"].shape == (3, 1, 2)
  np.testing.assert_array_equal(np.asarray(magnitudes["w"][2]), [[1.0, 2.0]])
  with pytest.raises(ValueError, match="stacked_grads.*shape"):
    sp.taylor_scores(params, {"w": jnp.ones((2, 2, 1)), "b": jnp.ones((2, 1))})


def test_taylor_scores_rank_the_true_loss_change_of_zeroing_each_weight():
  """First-order Taylor against the exact effect of zeroing every single weight.

  A 2-layer MLP (6 -> 16 tanh -> 2 outputs, 146 weights) with two regression tasks is trained
  300 full-batch SGD steps (lr 0.1) on the sum of their losses, from six seeds. For each task
  k and every weight i, the true change |L_k(θ with θ_i = 0) - L_k(θ)| is computed exactly.

  Measured (CPU, float32): the Spearman rank correlation between the Taylor scores and the
  true changes is 0.70 to 0.90 per seed and task (mean 0.82); magnitude |θ| reaches 0.14 to
  0.75 (mean 0.49), being blind to which task a weight serves. Of the 10 largest true
  changes, 6 to 10 (mean 8.7) lie in the Taylor top 30 %: at a trained point a task's own
  output weights have nearly zero gradient, so the first-order term misses the second-order
  loss of zeroing one of them (all 10 in the top 30 % holds in 3 of the 12 cases only).
  Bounds, with margin: Spearman >= 0.6 in every case and >= 0.75 on average, above
  magnitude's by >= 0.2 on average; >= 5 of the top 10 in every case, >= 7.5 on average.
  Exactly: a weight that cannot affect task k (the other task's output unit) has Taylor
  score 0 and true change 0.
  """
  rhos, magnitude_rhos, hits = [], [], []
  for seed in range(6):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(128, 6)), jnp.float32)
    y = jnp.stack([jnp.sin(x[:, 0] + x[:, 1]), x[:, 2] * x[:, 3]], axis=1)
    params = _train(_mlp_init(jax.random.key(seed)), x, y)
    _, grads = per_task_grads(lambda p: _mlp_losses(p, x, y), params)
    scores = sp.taylor_scores(params, grads)
    true = np.asarray(_true_changes(params, x, y))
    magnitude = np.abs(np.asarray(flatten_util.ravel_pytree(params)[0]))
    for k in range(2):
      taylor = np.asarray(flatten_util.ravel_pytree(jax.tree.map(lambda s: s[k], scores))[0])
      rhos.append(_spearman(taylor, true[k]))
      magnitude_rhos.append(_spearman(magnitude, true[k]))
      top_true = np.argsort(-true[k], kind="stable")[:10]
      hits.append(int((_ranks(taylor)[top_true] >= 0.7 * taylor.size).sum()))
      # The other task's output column and bias: no effect, no score.
      other = 1 - k
      assert (np.asarray(scores["out"]["kernel"][k, :, other]) == 0).all()
      assert float(scores["out"]["bias"][k, other]) == 0.0
      unaffected = taylor == 0
      assert unaffected.sum() == 16 + 1 and (true[k][unaffected] == 0).all()
  assert min(rhos) >= 0.6, rhos
  assert np.mean(rhos) >= 0.75, rhos
  assert np.mean(rhos) - np.mean(magnitude_rhos) >= 0.2, (rhos, magnitude_rhos)
  assert min(hits) >= 5 and np.mean(hits) >= 7.5, hits


# ----------------------------------------------------------------------------- aggregations


def _kernel(*rows):
  """Stacked scores of one prunable (rows x cols) kernel from K nested lists."""
  return {"kernel": jnp.asarray(rows, jnp.float32)}


def _kept(masks):
  return np.flatnonzero(np.asarray(masks["kernel"]).reshape(-1)).tolist()


def test_max_keeps_a_weight_that_only_one_task_needs_and_mean_cuts_it():
  # Task 0's scores are 100x larger; task 1 relies on entry 4 alone (flattened index).
  stacked = _kernel([[100.0, 90.0, 80.0], [70.0, 0.0, 0.0]], [[0.0, 0.0, 0.0], [0.0, 5.0, 1.0]])
  assert _kept(sp.task_aware_masks(stacked, 0.5, aggregate="mean")) == [0, 1, 2]
  # Normalised: task 0 [.29, .26, .24, .21, 0, 0], task 1 [0, 0, 0, 0, .83, .17].
  assert _kept(sp.task_aware_masks(stacked, 0.5, aggregate="max")) == [0, 1, 4]
  np.testing.assert_allclose(np.asarray(sp.max_scores(stacked)["kernel"]).reshape(-1),
                             [100 / 340, 90 / 340, 80 / 340, 70 / 340, 5 / 6, 1 / 6], rtol=1e-6)


def test_disparse_union_of_budget_size_is_the_result():
  # Keep 4 of 8: task 0 scores entries 0, 1 only, task 1 entries 6, 7 only: the votes are
  # exactly 4 entries, so they are the masks, though the raw mean would rank them the same.
  stacked = _kernel([[100.0, 90.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]],
                    [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 2.0]])
  assert _kept(sp.disparse_masks(stacked, 0.5)) == [0, 1, 6, 7]
  # Both tasks keep the same 2 of 5 (in different orders): the union is the budget.
  stacked = _kernel([[9.0, 1.0, 8.0, 2.0, 0.5]], [[3.0, 0.1, 4.0, 0.2, 0.3]])
  assert _kept(sp.disparse_masks(stacked, 0.6)) == [0, 2]


def test_disparse_trims_a_larger_union_by_the_mean_normalised_score():
  # Keep 2 of 6: task 0 keeps {0, 1}, task 1 keeps {4, 5}; the union has 4.
  t0 = np.array([10.0, 9.0, 1.0, 1.0, 1.0, 1.0]) * 100
  t1 = np.array([1.0, 1.0, 1.0, 1.0, 8.0, 10.0]) / 100
  stacked = {"kernel": jnp.asarray(np.stack([t0, t1]).reshape(2, 2, 3), jnp.float32)}
  mean_normalised = (t0 / t0.sum() + t1 / t1.sum()) / 2  # [.240, .218, .., .., .204, .249]
  assert np.argsort(-mean_normalised)[:2].tolist() == [5, 0]
  assert _kept(sp.disparse_masks(stacked, 4 / 6)) == [0, 5]
  assert _kept(sp.task_aware_masks(stacked, 4 / 6, aggregate="mean")) == [0, 1]


def test_disparse_ranks_the_union_above_a_better_mean_outside_it():
  # Keep 1 of 4: task 0 keeps entry 0, task 1 entry 3. Entries 1 and 2 have the largest mean
  # normalised score (.261 against .227 and .25) but no task keeps them.
  stacked = _kernel([[10.0, 6.0, 6.0, 0.0]], [[0.0, 6.0, 6.0, 12.0]])
  assert _kept(sp.score_masks(sp.mean_scores(sp.normalised_scores(stacked)), 0.75)) == [2]
  assert _kept(sp.disparse_masks(stacked, 0.75)) == [3]


def test_minmax_scores_weigh_each_task_s_normalised_scores_by_its_weight():
  rows = np.abs(np.random.default_rng(5).normal(size=(3, 4, 5)))
  weights = np.array([0.2, 0.3, 0.5])
  by_hand = sum(w * r / r.sum() for w, r in zip(weights, rows))  # Σ_k w_k s_k / Σ s_k
  got = sp.minmax_scores(_kernel(*rows), jnp.asarray(weights))
  np.testing.assert_allclose(got["kernel"], by_hand, rtol=1e-6)


@pytest.mark.parametrize("structure, scope, sparsity", CASES)
def test_minmax_with_one_hot_weights_is_that_task_s_own_mask(structure, scope, sparsity):
  stacked = _random_scores(seed=7, num_tasks=3)
  for k in range(3):
    own = sp.score_masks(jax.tree.map(lambda s: s[k], stacked), sparsity, structure=structure,
                         scope=scope)
    got = sp.task_aware_masks(stacked, sparsity, aggregate="minmax",
                              task_weights=jnp.eye(3)[k], structure=structure, scope=scope)
    _assert_same(got, own)


def _counts(masks, structure, scope, include=sp.default_include):
  """What score_masks fixes: kept entries (filters, for "filter") per prunable leaf, or in
  all of them (global)."""
  flags = [bool(include(p, x)) for p, x in jax.tree_util.tree_leaves_with_path(masks)]
  if structure == "filter":
    kept = [int(np.asarray(m).reshape(-1, m.shape[-1]).all(axis=0).sum())
            for m, f in zip(jax.tree.leaves(masks), flags) if f]
  else:
    kept = [int(np.asarray(m).sum()) for m, f in zip(jax.tree.leaves(masks), flags) if f]
  return [sum(kept)] if scope == "global" and ":" not in structure else kept


@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
@pytest.mark.parametrize("structure, scope, sparsity", CASES)
def test_every_aggregation_has_the_exact_budget(structure, scope, sparsity, ties):
  stacked = _random_scores(seed=11, ties=ties, num_tasks=3)
  # Task 1 is 1000x larger, so that the aggregations disagree.
  stacked = jax.tree.map(lambda s: s.at[1].multiply(1000.0), stacked)
  reference = sp.score_masks(jax.tree.map(lambda s: s[0], stacked), sparsity,
                             structure=structure, scope=scope)
  expected = _counts(reference, structure, scope)
  found = set()
  for aggregate in sp.AGGREGATIONS:
    weights = jnp.array([0.2, 0.3, 0.5]) if aggregate == "minmax" else None
    masks = sp.task_aware_masks(stacked, sparsity, aggregate=aggregate, task_weights=weights,
                                structure=structure, scope=scope)
    assert _counts(masks, structure, scope) == expected, aggregate
    if structure == "filter":
      for m in jax.tree.leaves(masks):
        per_filter = np.asarray(m).reshape(-1, m.shape[-1])
        assert (per_filter.all(axis=0) | ~per_filter.any(axis=0)).all(), aggregate
    if ":" in structure:
      grouped = np.moveaxis(np.asarray(masks["a"]), -2, -1).reshape(-1, 4)
      assert (grouped.sum(axis=1) == 2).all()
    assert bool(masks["b"]["bias"].all())
    found.add(np.concatenate([np.asarray(m).reshape(-1) for m in jax.tree.leaves(masks)])
              .tobytes())
  assert len(found) > 1, "the aggregations should not all agree here"


def test_mean_of_magnitude_scores_is_magnitude_pruning():
  params = _tree(lambda shape: jnp.asarray(
      np.random.default_rng(len(shape)).normal(size=shape), jnp.float32))
  for structure, scope, sparsity in CASES:
    _assert_same(sp.task_aware_masks(sp.magnitude_scores(params, 2), sparsity, aggregate="mean",
                                     structure=structure, scope=scope),
                 sp.magnitude_masks(params, sparsity, structure=structure, scope=scope))


def test_a_zero_score_task_gives_no_nan_and_no_say():
  stacked = _random_scores(seed=5, num_tasks=2)
  stacked = jax.tree.map(lambda s: s.at[1].set(0.0), stacked)
  np.testing.assert_array_equal(np.asarray(task_scores.task_totals(stacked))[1], 0.0)
  for tree in (sp.normalised_scores(stacked), sp.max_scores(stacked),
               sp.minmax_scores(stacked, jnp.array([0.5, 0.5])),
               sp.minmax_scores(stacked, jnp.array([0.0, 1.0]))):
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tree))
  own = sp.score_masks(jax.tree.map(lambda s: s[0], stacked), 0.7)
  for aggregate, weights in (("max", None), ("disparse", None), ("minmax", [0.5, 0.5]),
                             ("minmax", [1.0, 0.0])):
    _assert_same(sp.task_aware_masks(stacked, 0.7, aggregate=aggregate, task_weights=weights),
                 own)
  # All weight on the zero task, or every task zero: all scores 0, the tie rule alone.
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape[1:]), stacked)
  tie_rule = sp.score_masks(zeros, 0.7)
  _assert_same(sp.task_aware_masks(stacked, 0.7, aggregate="minmax", task_weights=[0.0, 1.0]),
               tie_rule)
  all_zero = jax.tree.map(jnp.zeros_like, stacked)
  for aggregate in sp.AGGREGATIONS:
    weights = [0.5, 0.5] if aggregate == "minmax" else None
    _assert_same(sp.task_aware_masks(all_zero, 0.7, aggregate=aggregate, task_weights=weights),
                 tie_rule)


def test_task_aware_masks_under_jit_match_eager():
  stacked = _random_scores(seed=9, num_tasks=3)
  weights = jnp.array([0.1, 0.6, 0.3])
  make = jax.jit(lambda s, w: [sp.task_aware_masks(s, 0.8, aggregate=a,
                                                   task_weights=w if a == "minmax" else None)
                               for a in sp.AGGREGATIONS])
  eager = [sp.task_aware_masks(stacked, 0.8, aggregate=a,
                               task_weights=weights if a == "minmax" else None)
           for a in sp.AGGREGATIONS]
  for got, expected in zip(make(stacked, weights), eager):
    _assert_same(got, expected)


@pytest.mark.parametrize("kwargs, match", [
    (dict(aggregate="median"), "aggregate"),
    (dict(aggregate="minmax"), "task_weights"),
    (dict(aggregate="minmax", task_weights=[0.5, 0.5]), "shape"),
    (dict(aggregate="minmax", task_weights=[1.2, -0.1, -0.1]), "non-negative"),
    (dict(aggregate="minmax", task_weights=[0.5, 0.5, 0.5]), "sum to one"),
    (dict(aggregate="minmax", task_weights=[float("nan"), 0.5, 0.5]), "finite"),
    (dict(aggregate="max", task_weights=[0.2, 0.3, 0.5]), r"\['minmax'\] only"),
])
def test_task_aware_masks_validation(kwargs, match):
  with pytest.raises(ValueError, match=match):
    sp.task_aware_masks(_random_scores(seed=1, num_tasks=3), 0.5, **kwargs)


def test_stacked_scores_need_one_leading_axis():
  with pytest.raises(ValueError, match="one K"):
    sp.max_scores({"a": jnp.ones((2, 4, 4)), "b": jnp.ones((3, 4, 4))})
