"""Gradient-level multi-task aggregators: a (K, n) matrix of task gradients to one direction.

Every method is a function ``<name>_weights(gram) -> alpha`` of the Gram matrix ``G @ G.T``
to (K,) task weights, and ``<name>(G) = <name>_weights(G @ G.T) @ G``, the combined direction
d (the step goes along -d, as for a gradient). Because the weights need only the Gram matrix,
it may be summed leaf by leaf over a parameter tree (`mmcompress.weighting.aggregate` does).
All are jittable and usable under `jax.vmap`; the matrix products run at
``Precision.HIGHEST`` (TF32 on a GPU would cost the Gram matrix the promised accuracy).

* `mgda`: the min-norm point of the rows' convex hull (Désidéri 2012; Sener & Koltun 2018);
* `pcgrad`: conflicting rows projected onto each other's normal planes (Yu et al. 2020);
* `cagrad`: the mean direction moved toward the worst task within a ball (Liu et al. 2021);
* `imtl_g`: equal projections onto every unit task gradient (Liu et al. 2021);
* `nash_mtl`: the Nash bargaining solution, (G Gᵀ α)ᵢ = 1/αᵢ (Navon et al. 2022);
* `aligned_mtl`: the rows made orthogonal with equal norms (Senushkin et al. 2023);
* `upgrad`: the mean projection of the rows onto their dual cone (Quinton & Rey 2024);
* `fairgrad`: α-fair allocation, (G Gᵀ w)ᵢ = wᵢ^(-1/alpha) (Ban & Ji 2024).

The direction functions take the Gram matrix of rows whose largest entry lies outside
[2^-40, 2^40] scaled by a power of two (exact in floating point), so that finite rows never
overflow it (rows of norm 1e20 would in float32), and scale the direction back by the weights'
homogeneity (`DEGREES`, `fairgrad_degree`); within that range nothing is scaled. A NaN or
infinite row gives NaN or infinite weights.

Conventions (no ×K factor, no clipping, which rows are normalised, ...) and where LibMTL,
TorchJD and the authors' code differ are in each function's docstring.
"""
from mmcompress.aggregators._solvers import exponent_scale, rescaled, row_exponent, scaled_gram
from mmcompress.aggregators.aligned_mtl import aligned_mtl, aligned_mtl_weights
from mmcompress.aggregators.cagrad import cagrad, cagrad_weights
from mmcompress.aggregators.fairgrad import degree as fairgrad_degree
from mmcompress.aggregators.fairgrad import fairgrad, fairgrad_weights
from mmcompress.aggregators.imtl_g import imtl_g, imtl_g_weights
from mmcompress.aggregators.mgda import mgda, mgda_weights
from mmcompress.aggregators.nash_mtl import nash_mtl, nash_mtl_weights
from mmcompress.aggregators.pcgrad import pcgrad, pcgrad_weights
from mmcompress.aggregators.upgrad import upgrad, upgrad_weights

#: name -> the function of the Gram matrix to the task weights.
WEIGHTS = {
    "mgda": mgda_weights,
    "pcgrad": pcgrad_weights,
    "cagrad": cagrad_weights,
    "imtl_g": imtl_g_weights,
    "nash_mtl": nash_mtl_weights,
    "aligned_mtl": aligned_mtl_weights,
    "upgrad": upgrad_weights,
    "fairgrad": fairgrad_weights,
}

#: name -> the weights' homogeneity d, weights(s gram) = s^d weights(gram), s > 0 (FairGrad's
#: depends on its alpha: `fairgrad_degree`).
DEGREES = {"mgda": 0.0, "pcgrad": 0.0, "cagrad": 0.0, "imtl_g": 0.0, "nash_mtl": -0.5,
           "aligned_mtl": 0.0, "upgrad": 0.0}

__all__ = [
    "DEGREES",
    "WEIGHTS",
    "aligned_mtl",
    "aligned_mtl_weights",
    "cagrad",
    "cagrad_weights",
    "exponent_scale",
    "fairgrad",
    "fairgrad_degree",
    "fairgrad_weights",
    "imtl_g",
    "imtl_g_weights",
    "mgda",
    "mgda_weights",
    "nash_mtl",
    "nash_mtl_weights",
    "pcgrad",
    "pcgrad_weights",
    "rescaled",
    "row_exponent",
    "scaled_gram",
    "upgrad",
    "upgrad_weights",
]
