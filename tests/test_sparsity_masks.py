"""Tests of mmcompress.sparsity masks: exact counts, brute-force ranking, ties, validation."""
from __future__ import annotations

import json
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmcompress import sparsity as sp

AWKWARD_SHAPES = [(37, 53), (3, 3, 7, 11), (577, 13)]
TARGETS = [0.975, 0.983, 0.99]


def _random(shape, seed, scale=1.0):
  return (scale * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


def _brute_force_keep(scores, k):
  """NumPy reference: False at the first k entries of a stable ascending sort."""
  keep = np.ones(scores.size, dtype=bool)
  keep[np.argsort(scores, kind="stable")[:k]] = False
  return keep


def _model_params():
  return {
      "trunk": {
          "Conv_0": {"kernel": jnp.asarray(_random((3, 3, 7, 11), 1)),
                     "bias": jnp.asarray(_random((11,), 2))},
          "Dense_0": {"kernel": jnp.asarray(_random((37, 53), 3, scale=0.1)),
                      "bias": jnp.asarray(_random((53,), 4))},
          "Dense_1": {"kernel": jnp.asarray(_random((577, 13), 5, scale=3.0))},
          "LayerNorm_0": {"scale": jnp.ones((13,))},
      },
      "head_0": {"kernel": jnp.asarray(_random((13, 5), 6))},
      "Task_Head": {"kernel": jnp.asarray(_random((13, 2), 7))},
  }


# ----------------------------------------------------------------------------- default_include


def test_default_include_selects_trunk_kernels_only():
  params = _model_params()
  flags = {jax.tree_util.keystr(path): sp.default_include(path, leaf)
           for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
  assert flags == {
      "['Task_Head']['kernel']": False,
      "['head_0']['kernel']": False,
      "['trunk']['Conv_0']['bias']": False,
      "['trunk']['Conv_0']['kernel']": True,
      "['trunk']['Dense_0']['bias']": False,
      "['trunk']['Dense_0']['kernel']": True,
      "['trunk']['Dense_1']['kernel']": True,
      "['trunk']['LayerNorm_0']['scale']": False,
  }


def test_default_include_reads_attribute_keys():
  kernel = jnp.zeros((4, 4))
  attr = jax.tree_util.GetAttrKey
  assert sp.default_include((attr("backbone"), attr("kernel")), kernel)
  assert not sp.default_include((attr("HEAD"), attr("kernel")), kernel)
  assert not sp.default_include((jax.tree_util.SequenceKey(0),), jnp.zeros(4))


# ----------------------------------------------------------------------------- unstructured


@pytest.mark.parametrize("sparsity", TARGETS)
@pytest.mark.parametrize("shape", AWKWARD_SHAPES)
def test_layer_masks_exact_count_and_largest_kept(shape, sparsity):
  w = _random(shape, seed=sum(shape))
  mask = np.asarray(sp.magnitude_masks({"kernel": w}, sparsity)["kernel"])
  n = w.size
  k = math.floor(sparsity * n + 0.5)
  assert mask.dtype == np.bool_ and mask.shape == shape
  assert int((~mask).sum()) == k
  np.testing.assert_array_equal(mask.reshape(-1), _brute_force_keep(np.abs(w).reshape(-1), k))
  assert np.abs(w[mask]).min() >= np.abs(w[~mask]).max()


def test_round_half_up():
  # 0.25 * 10 = 2.5 exactly: half rounds up to 3 zeros (banker's rounding would give 2).
  mask = sp.magnitude_masks({"k": jnp.arange(1.0, 11.0).reshape(2, 5)}, 0.25)["k"]
  np.testing.assert_array_equal(np.asarray(mask).reshape(-1), [False] * 3 + [True] * 7)


@pytest.mark.parametrize("sparsity", TARGETS)
def test_global_masks_exact_count_and_largest_kept(sparsity):
  params = _model_params()
  masks = sp.magnitude_masks(params, sparsity, scope="global")
  flags = [sp.default_include(p, x) for p, x in jax.tree_util.tree_leaves_with_path(params)]
  leaves, mask_leaves = jax.tree.leaves(params), jax.tree.leaves(masks)
  scores = np.concatenate([np.abs(np.asarray(x)).reshape(-1)
                           for x, f in zip(leaves, flags) if f])
  k = math.floor(sparsity * scores.size + 0.5)
  expected = _brute_force_keep(scores, k)
  got = np.concatenate([np.asarray(m).reshape(-1) for m, f in zip(mask_leaves, flags) if f])
  np.testing.assert_array_equal(got, expected)
  assert int((~got).sum()) == k
  # The layers have different scales, so a global budget is not spread evenly.
  per_leaf = [float((~np.asarray(m)).mean()) for m, f in zip(mask_leaves, flags) if f]
  assert max(per_leaf) - min(per_leaf) > 0.01
  for m, f in zip(mask_leaves, flags):
    if not f:
      assert np.asarray(m).all()


def test_excluded_leaves_are_all_true_bool_with_param_shapes():
  params = _model_params()
  masks = sp.magnitude_masks(params, 0.9)
  assert jax.tree.structure(masks) == jax.tree.structure(params)
  for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(masks)):
    assert m.shape == p.shape and m.dtype == jnp.bool_
  for name in ("head_0", "Task_Head"):
    assert bool(masks[name]["kernel"].all())
  assert bool(masks["trunk"]["Dense_0"]["bias"].all())
  assert bool(masks["trunk"]["LayerNorm_0"]["scale"].all())
  assert not bool(masks["trunk"]["Dense_0"]["kernel"].all())


def test_custom_include():
  params = _model_params()
  only_dense1 = lambda path, leaf: "Dense_1" in jax.tree_util.keystr(path)
  masks = sp.magnitude_masks(params, 0.5, include=only_dense1)
  assert not bool(masks["trunk"]["Dense_1"]["kernel"].all())
  assert bool(masks["trunk"]["Conv_0"]["kernel"].all())


def test_ties_lower_index_pruned_first_layer():
  mask = sp.magnitude_masks({"k": jnp.full((6, 5), 0.5)}, 0.5)["k"]
  np.testing.assert_array_equal(np.asarray(mask).reshape(-1), [False] * 15 + [True] * 15)
  # Equal magnitudes of opposite sign are ties too.
  mask = sp.magnitude_masks({"k": jnp.array([[-1.0, 1.0], [-1.0, 1.0]])}, 0.5)["k"]
  np.testing.assert_array_equal(np.asarray(mask), [[False, False], [True, True]])


def test_ties_earlier_leaf_pruned_first_global():
  params = {"a": jnp.ones((2, 3)), "b": jnp.ones((3, 2))}
  masks = sp.magnitude_masks(params, 0.5, scope="global")
  assert not bool(masks["a"].any())
  assert bool(masks["b"].all())
  masks = sp.magnitude_masks(params, 0.75, scope="global")
  np.testing.assert_array_equal(np.asarray(masks["b"]).reshape(-1), [False] * 3 + [True] * 3)


def test_zero_sparsity_keeps_everything():
  masks = sp.magnitude_masks(_model_params(), 0.0, scope="global")
  assert all(bool(m.all()) for m in jax.tree.leaves(masks))


# ----------------------------------------------------------------------------- filters


def _filter_norms(w):
  w = np.asarray(w, np.float64)
  return np.sqrt((w ** 2).reshape(-1, w.shape[-1]).sum(axis=0))


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
@pytest.mark.parametrize("shape", [(3, 3, 7, 11), (37, 53)])
def test_filter_masks_layer(shape, sparsity):
  w = _random(shape, seed=10 + len(shape))
  mask = np.asarray(sp.magnitude_masks({"kernel": w}, sparsity, structure="filter")["kernel"])
  per_filter = mask.reshape(-1, shape[-1])
  assert (per_filter.all(axis=0) | ~per_filter.any(axis=0)).all(), "partial filter pruned"
  kept = per_filter.all(axis=0)
  k = math.floor(sparsity * shape[-1] + 0.5)
  assert int((~kept).sum()) == k
  norms = _filter_norms(w)
  assert norms[kept].min() >= norms[~kept].max()


def test_filter_masks_global_counts_filters():
  params = _model_params()
  masks = sp.magnitude_masks(params, 0.6, structure="filter", scope="global")
  kernels = [("Conv_0", 11), ("Dense_0", 53), ("Dense_1", 13)]
  kept_norms, pruned_norms, pruned = [], [], 0
  for name, n_filters in kernels:
    w = params["trunk"][name]["kernel"]
    m = np.asarray(masks["trunk"][name]["kernel"]).reshape(-1, n_filters)
    assert (m.all(axis=0) | ~m.any(axis=0)).all()
    kept = m.all(axis=0)
    pruned += int((~kept).sum())
    kept_norms.append(_filter_norms(w)[kept])
    pruned_norms.append(_filter_norms(w)[~kept])
  assert pruned == math.floor(0.6 * (11 + 53 + 13) + 0.5)
  assert np.concatenate(kept_norms).min() >= np.concatenate(pruned_norms).max()
  assert bool(masks["head_0"]["kernel"].all())


def test_filter_ties_lower_index_first():
  mask = sp.magnitude_masks({"k": jnp.ones((4, 6))}, 0.5, structure="filter")["k"]
  np.testing.assert_array_equal(np.asarray(mask)[0], [False] * 3 + [True] * 3)


# ----------------------------------------------------------------------------- n:m


@pytest.mark.parametrize("shape", [(8, 6), (3, 3, 8, 4)])
@pytest.mark.parametrize("pattern", ["2:4", "1:4", "3:8"])
def test_n_m_masks(shape, pattern):
  n, m = map(int, pattern.split(":"))
  w = _random(shape, seed=20 + len(shape))
  mask = np.asarray(sp.magnitude_masks({"kernel": w}, None, structure=pattern)["kernel"])
  # Groups of m consecutive entries along axis -2.
  wg = np.moveaxis(np.abs(w), -2, -1).reshape(-1, m)
  mg = np.moveaxis(mask, -2, -1).reshape(-1, m)
  assert (mg.sum(axis=1) == n).all()
  for scores, keep in zip(wg, mg):
    np.testing.assert_array_equal(keep, _brute_force_keep(scores, m - n))


def test_n_m_ties_scope_and_sparsity_argument():
  w = {"kernel": jnp.ones((8, 3))}
  mask = np.asarray(sp.magnitude_masks(w, 0.5, structure="2:4")["kernel"])
  np.testing.assert_array_equal(mask[:, 0], [False, False, True, True] * 2)
  w = {"kernel": jnp.asarray(_random((8, 3), 0))}
  a = sp.magnitude_masks(w, None, structure="2:4", scope="layer")
  b = sp.magnitude_masks(w, 0.5, structure="2:4", scope="global")
  np.testing.assert_array_equal(np.asarray(a["kernel"]), np.asarray(b["kernel"]))


def test_the_sparsity_a_structure_fixes():
  from mmcompress.sparsity import masks
  assert masks.structure_sparsity("2:4") == 0.5 and masks.structure_sparsity("3:8") == 0.625
  assert masks.structure_sparsity("unstructured") is None
  assert masks.structure_sparsity("filter", 0.9) is None  # any sparsity
  assert masks.structure_sparsity("1:4", 0.75) == 0.75
  with pytest.raises(ValueError, match=r"exactly 1 - n/m = 0.5 of the weights, not 0.75"):
    masks.structure_sparsity("2:4", 0.75)
  assert masks.structure_sparsity("2:4", 0.5 + 1e-10) == 0.5  # within 1e-9: admitted
  for structure, sparsity, match in (("2:4", 1.5, "sparsity"), ("filter", 5.0, "sparsity"),
                                     ("4:2", None, "n:m pattern"), ("2-4", None, "structure")):
    with pytest.raises(ValueError, match=match):
      masks.structure_sparsity(structure, sparsity)
  planned = sp.planned_summary({"k": jnp.ones((8, 4))}, None, structure="2:4")
  assert planned["prunable_nonzero"] == 16 and planned["sparsity"] == 0.5
  with pytest.raises(ValueError, match="not 0.75"):  # the planner refuses what the masks do
    sp.planned_summary({"k": jnp.ones((8, 4))}, 0.75, structure="2:4")


# ----------------------------------------------------------------------------- jit, apply, stats


def test_masks_under_jit_match_eager_and_compile_once():
  traces = []

  @jax.jit
  def make(params):
    traces.append(1)
    return (sp.magnitude_masks(params, 0.975),
            sp.magnitude_masks(params, 0.9, scope="global"),
            sp.magnitude_masks(params, 0.5, structure="filter"))

  params = _model_params()
  for eager, jitted in zip(jax.tree.leaves((sp.magnitude_masks(params, 0.975),
                                            sp.magnitude_masks(params, 0.9, scope="global"),
                                            sp.magnitude_masks(params, 0.5, structure="filter"))),
                           jax.tree.leaves(make(params))):
    np.testing.assert_array_equal(np.asarray(eager), np.asarray(jitted))
  make(jax.tree.map(lambda x: x * 2.0, params))
  assert len(traces) == 1


def test_apply_masks_exact_zeros_and_dtypes():
  params = {"w": jnp.asarray(_random((5, 4), 0)).astype(jnp.bfloat16),
            "v": jnp.asarray(_random((4, 3), 1))}
  masks = sp.magnitude_masks(params, 0.5)
  out = sp.apply_masks(params, masks)
  for p, m, o in zip(jax.tree.leaves(params), jax.tree.leaves(masks), jax.tree.leaves(out)):
    assert o.dtype == p.dtype
    o, p, m = (np.asarray(x, np.float32) for x in (o, p, m))
    assert (o[m == 0] == 0.0).all()
    np.testing.assert_array_equal(o[m == 1], p[m == 1])


def test_summary_counts_masked_params():
  params = _model_params()
  masks = sp.magnitude_masks(params, 0.975)
  report = sp.summary(params, masks)
  json.dumps(report)
  sizes = {"trunk/Conv_0/kernel": 693, "trunk/Dense_0/kernel": 1961,
           "trunk/Dense_1/kernel": 7501}
  for name, size in sizes.items():
    leaf = report["leaves"][name]
    assert leaf["prunable"] and leaf["size"] == size
    assert leaf["nonzero"] == size - math.floor(0.975 * size + 0.5)
  assert report["leaves"]["head_0/kernel"] == {
      "shape": [13, 5], "size": 65, "nonzero": 65, "sparsity": 0.0, "prunable": False}
  prunable_nonzero = sum(report["leaves"][k]["nonzero"] for k in sizes)
  assert report["prunable_size"] == sum(sizes.values())
  assert report["prunable_nonzero"] == prunable_nonzero
  assert report["compression_ratio"] == pytest.approx(sum(sizes.values()) / prunable_nonzero)
  assert report["sparsity"] == pytest.approx(1 - prunable_nonzero / sum(sizes.values()))
  total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  assert report["total_size"] == total
  assert report["total_nonzero"] == total - (sum(sizes.values()) - prunable_nonzero)
  dense = sp.summary(params)
  assert dense["sparsity"] == 0.0 and dense["compression_ratio"] == 1.0
  zero = sp.summary(jax.tree.map(jnp.zeros_like, params))
  assert zero["compression_ratio"] == float("inf")


def test_summary_gives_both_ratios_by_hand_on_a_tiny_tree():
  # A 2x3 trunk kernel with 2 zeros, its bias with one zero, a 3x1 head kernel and its bias.
  params = {"trunk": {"kernel": jnp.asarray([[1.0, 0.0, 2.0], [0.0, 3.0, 4.0]]),
                      "bias": jnp.asarray([0.0, 5.0, 6.0])},
            "head_0": {"kernel": jnp.asarray([[1.0], [2.0], [3.0]]), "bias": jnp.asarray([7.0])}}
  stats = sp.summary(params)
  # Prunable: the trunk kernel alone, 6 entries, 4 nonzero. Whole: 6 + 3 + 3 + 1 = 13 entries,
  # 4 + 2 + 3 + 1 = 10 nonzero. Not prunable: 3 + 3 + 1 = 7 entries.
  assert (stats["prunable_size"], stats["prunable_nonzero"]) == (6, 4)
  assert (stats["total_size"], stats["total_nonzero"]) == (13, 10)
  assert stats["non_prunable_size"] == 7
  assert stats["prunable_compression_ratio"] == stats["compression_ratio"] == 6 / 4
  assert stats["whole_model_compression_ratio"] == 13 / 10
  assert stats["sparsity"] == pytest.approx(2 / 6)
  assert stats["whole_model_sparsity"] == pytest.approx(3 / 13)
  assert stats["whole_model_cap"] == 13 / 7
  assert stats["non_prunable_groups"] == [
      {"group": "head_*", "names": ["bias", "kernel"], "leaves": 2, "size": 4},
      {"group": "trunk", "names": ["bias"], "leaves": 1, "size": 3}]
  # Masks zero the 1 and the 2 of the trunk kernel: 2 of its 6 entries stay nonzero.
  masks = jax.tree.map(lambda x: jnp.ones(x.shape, bool), params)
  masks["trunk"]["kernel"] = jnp.asarray([[False, True, False], [True, True, True]])
  stats = sp.summary(params, masks)
  assert stats["prunable_compression_ratio"] == 6 / 2
  assert stats["whole_model_compression_ratio"] == 13 / 8
  # Nothing prunable: ratio 1 for the empty part, and the dense part caps nothing.
  nothing = sp.summary(params, include=lambda path, leaf: False)
  assert nothing["prunable_compression_ratio"] == 1.0 and nothing["whole_model_cap"] == 1.0
  assert nothing["whole_model_compression_ratio"] == 13 / 10
  everything = sp.summary(params, include=lambda path, leaf: True)
  assert everything["whole_model_cap"] == float("inf")
  assert everything["whole_model_compression_ratio"] == everything["compression_ratio"]


@pytest.mark.parametrize("kwargs", [
    {"sparsity": 0.975}, {"sparsity": 0.9, "scope": "global"},
    {"sparsity": 0.5, "structure": "filter"}, {"sparsity": None, "structure": "2:7"},
])
def test_planned_summary_matches_summary_of_real_masks(kwargs):
  params = _model_params()
  structure = kwargs.get("structure", "unstructured")
  include = None
  if structure == "2:7":  # n:m needs axis -2 divisible by m: prune Conv_0 (7 inputs) only.
    include = lambda path, leaf: sp.default_include(path, leaf) and leaf.shape[-2] % 7 == 0
  masks = sp.magnitude_masks(params, kwargs["sparsity"], structure=structure,
                             scope=kwargs.get("scope", "layer"), include=include)
  measured = sp.summary(params, masks, include=include)
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  planned = sp.planned_summary(shapes, kwargs["sparsity"], structure=structure,
                               scope=kwargs.get("scope", "layer"), include=include)
  assert 0 < measured["prunable_nonzero"] < measured["prunable_size"]
  for key in ("prunable_size", "prunable_nonzero", "total_size", "total_nonzero",
              "compression_ratio", "prunable_compression_ratio",
              "whole_model_compression_ratio", "whole_model_cap", "non_prunable_groups"):
    assert planned[key] == measured[key], key
  if kwargs.get("scope") != "global":
    assert ({k: v["nonzero"] for k, v in planned["leaves"].items()}
            == {k: v["nonzero"] for k, v in measured["leaves"].items()})


def test_planned_summary_refuses_global_filter_pruning():
  with pytest.raises(ValueError, match="scope='layer'"):
    sp.planned_summary(_model_params(), 0.5, structure="filter", scope="global")


def test_find_masks_walks_optimizer_states():
  params = {"Dense_0": {"kernel": jnp.ones((4, 4))}}
  masks = sp.magnitude_masks(params, 0.5)
  opt = optax.chain(optax.clip_by_global_norm(1.0), sp.static_sparse(optax.adam(1e-3), masks))
  found = sp.find_masks(opt.init(params))
  np.testing.assert_array_equal(np.asarray(found["Dense_0"]["kernel"]),
                                np.asarray(masks["Dense_0"]["kernel"]))
  named = optax.named_chain(("clip", optax.clip(1.0)),
                            ("dst", sp.dynamic_sparse(optax.sgd(0.1), sparsity=0.25,
                                                      update_every=2, grow_fraction=0.1)))
  found = sp.find_masks(named.init(params))
  assert int(found["Dense_0"]["kernel"].sum()) == 12
  assert sp.find_masks(optax.adam(1e-3).init(params)) is None


class _OwnSparseState(NamedTuple):
  """The state of a sparse wrapper the library has never heard of."""
  count: Any
  masks: Any


def test_find_masks_finds_any_state_with_a_masks_field():
  params = {"Dense_0": {"kernel": jnp.ones((4, 4))}}
  masks = sp.magnitude_masks(params, 0.75)
  own = optax.GradientTransformation(lambda p: _OwnSparseState(jnp.zeros([], jnp.int32), masks),
                                     lambda u, s, p=None: (u, s))
  state = optax.chain(optax.adam(1e-3), own).init(params)
  found = sp.find_masks({"outer": [optax.EmptyState(), state]})
  assert found is masks


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("kwargs, match", [
    (dict(sparsity=-0.1), "sparsity"),
    (dict(sparsity=1.0), "sparsity"),
    (dict(sparsity="dense"), "sparsity"),
    (dict(sparsity=0.5, structure="blocks"), "structure"),
    (dict(sparsity=0.5, scope="everywhere"), "scope"),
    (dict(sparsity=None, structure="4:4"), "structure"),
    (dict(sparsity=None, structure="3:2"), "structure"),
    (dict(sparsity=None, structure="0:4"), "structure"),
    (dict(sparsity=0.75, structure="2:4"), r"1 - n/m = 0.5 of the weights, not 0.75"),
    (dict(sparsity=None), "sparsity"),
    (dict(sparsity=0.5, include="kernels"), "include"),
])
def test_magnitude_masks_validation(kwargs, match):
  with pytest.raises(ValueError, match=match):
    sp.magnitude_masks({"k": jnp.ones((8, 4))}, **kwargs)


def test_n_m_indivisible_leaf_names_path_and_size():
  params = {"trunk": {"Dense_0": {"kernel": jnp.ones((6, 4))}}}
  with pytest.raises(ValueError, match=r"trunk/Dense_0/kernel.*axis -2 = 6"):
    sp.magnitude_masks(params, None, structure="2:4")


def test_apply_masks_structure_mismatch():
  with pytest.raises(ValueError, match="masks"):
    sp.apply_masks({"a": jnp.ones((2, 2))}, {"b": jnp.ones((2, 2), bool)})
  with pytest.raises(ValueError, match="masks"):
    sp.apply_masks({"a": jnp.ones((2, 2))}, {"a": jnp.ones((2, 3), bool)})


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_are_refused_where_seen_and_ranked_lowest_under_jit(bad):
  scores = {"Dense_0": {"kernel": jnp.array([[3.0, bad, 0.5], [1.0, 2.0, 0.25]])}}
  with pytest.raises(ValueError, match=r"'Dense_0/kernel' hold 1 NaN or infinite"):
    sp.score_masks(scores, 0.5)
  with pytest.raises(ValueError, match="NaN or infinite"):
    sp.magnitude_masks(scores, 0.5)
  # Under jit the values cannot be seen: the bad entry ranks below every finite score, so it
  # is the first pruned (unstructured), its filter too (filter), and within its group (n:m).
  unstructured = jax.jit(lambda s: sp.score_masks(s, 0.5))(scores)
  np.testing.assert_array_equal(unstructured["Dense_0"]["kernel"],
                                [[True, False, False], [True, True, False]])
  filters = jax.jit(lambda s: sp.score_masks(s, 1 / 3, structure="filter"))(scores)
  np.testing.assert_array_equal(filters["Dense_0"]["kernel"][:, 1], [False, False])
  assert filters["Dense_0"]["kernel"][:, [0, 2]].all()
  pairs = {"Dense_0": {"kernel": jnp.array([[9.0], [bad], [1.0], [2.0]])}}
  n_m = jax.jit(lambda s: sp.score_masks(s, None, structure="1:2"))(pairs)
  np.testing.assert_array_equal(n_m["Dense_0"]["kernel"][:, 0], [True, False, False, True])


def test_an_include_that_selects_nothing_is_an_error_not_all_true_masks():
  params = {"Dense_0": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones((4,))}}
  nothing = lambda path, leaf: False  # noqa: E731
  for structure, s in (("unstructured", 0.5), ("filter", 0.5), ("2:4", None)):
    with pytest.raises(ValueError, match="`include` selects none of the 2 leaves"):
      sp.score_masks(params, s, structure=structure, include=nothing)
  with pytest.raises(ValueError, match="selects none"):
    sp.magnitude_masks(params, 0.5, include=nothing)
  # Nothing to prune at sparsity 0: no error, every mask all True.
  kept = sp.magnitude_masks(params, 0.0, include=nothing)
  assert all(bool(m.all()) for m in jax.tree.leaves(kept))
