"""Sparsity for JAX models: magnitude and score masks, task-aware scores, static and dynamic
sparse training, reweighted ℓ1.

Everything here composes into a user's own optax loop:

>>> masks = magnitude_masks(params, 0.975)                         # doctest: +SKIP
>>> opt = static_sparse(optax.sgd(0.1, momentum=0.9), masks)       # doctest: +SKIP
>>> opt = optax.chain(add_reweighted_l1(1e-4), optax.sgd(0.1))     # doctest: +SKIP
>>> opt = dynamic_sparse(optax.sgd(0.1), sparsity=0.99,            # doctest: +SKIP
...                      update_every=100, grow_fraction=0.003)
>>> opt = gradual_magnitude(optax.sgd(0.1), sparsity=0.975,        # doctest: +SKIP
...                         begin_step=0, end_step=3000, update_every=100)
>>> scores = taylor_scores(params, stacked_grads)                  # doctest: +SKIP
>>> masks = task_aware_masks(scores, 0.975, aggregate="max")       # doctest: +SKIP
"""
from __future__ import annotations

from mmcompress.sparsity.dynamic import DynamicSparseState, dynamic_sparse
from mmcompress.sparsity.gradual import GradualMagnitudeState, cubic_sparsity, gradual_magnitude
from mmcompress.sparsity.masks import apply_masks, default_include, magnitude_masks, score_masks
from mmcompress.sparsity.reweighted import ReweightedL1State, add_reweighted_l1
from mmcompress.sparsity.static import StaticSparseState, full_masks, static_sparse
from mmcompress.sparsity.stats import find_masks, non_prunable_groups, planned_summary, summary
from mmcompress.sparsity.task_scores import (AGGREGATIONS, disparse_masks, magnitude_scores,
                                             max_scores, mean_scores, minmax_scores,
                                             normalised_scores, task_aware_masks, taylor_scores)

__all__ = [
    "AGGREGATIONS",
    "DynamicSparseState",
    "GradualMagnitudeState",
    "ReweightedL1State",
    "StaticSparseState",
    "add_reweighted_l1",
    "apply_masks",
    "cubic_sparsity",
    "default_include",
    "disparse_masks",
    "dynamic_sparse",
    "find_masks",
    "full_masks",
    "gradual_magnitude",
    "magnitude_masks",
    "magnitude_scores",
    "max_scores",
    "mean_scores",
    "minmax_scores",
    "non_prunable_groups",
    "normalised_scores",
    "planned_summary",
    "score_masks",
    "static_sparse",
    "summary",
    "task_aware_masks",
    "taylor_scores",
]
