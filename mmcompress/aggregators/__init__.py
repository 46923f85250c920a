"""Gradient-level multi-task aggregators: pure functions of the (K, n) task gradients G.

Each method is a function of the Gram matrix G Gᵀ to task weights α, and its direction is
d = αᵀG (the step goes along -d):

* `mgda` / `mgda_weights`: the min-norm point of the rows' convex hull;
* `upgrad` / `upgrad_weights`: the mean projection of the rows onto their dual cone;
* `nash_mtl` / `nash_mtl_weights`: the Nash bargaining solution, (G Gᵀ α)ᵢ = 1/αᵢ;
* `fairgrad` / `fairgrad_weights`: α-fair allocation, (G Gᵀ w)ᵢ = wᵢ^(-1/alpha).

The ``_weights`` functions take only the Gram matrix, so it may be summed leaf by leaf over a
parameter tree. All are jittable and vmappable.
"""
from mmcompress.aggregators.fairgrad import fairgrad, fairgrad_weights
from mmcompress.aggregators.mgda import mgda, mgda_weights
from mmcompress.aggregators.nash_mtl import nash_mtl, nash_mtl_weights
from mmcompress.aggregators.upgrad import upgrad, upgrad_weights

__all__ = [
    "fairgrad",
    "fairgrad_weights",
    "mgda",
    "mgda_weights",
    "nash_mtl",
    "nash_mtl_weights",
    "upgrad",
    "upgrad_weights",
]
