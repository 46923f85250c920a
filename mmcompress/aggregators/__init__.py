"""Gradient-level multi-task aggregators: a (K, n) matrix of task gradients to one direction.

Every method is a function `<name>_weights(gram) -> alpha` of the Gram matrix ``G @ G.T`` to
(K,) task weights, and `<name>(G) = <name>_weights(G @ G.T) @ G`, the direction d (the step
goes along -d). All are jittable and usable under `jax.vmap`. Their matrix products run at
``Precision.HIGHEST``: TF32 on a GPU would cost the Gram matrix the accuracy they promise.
"""
from mmcompress.aggregators.aligned_mtl import aligned_mtl, aligned_mtl_weights
from mmcompress.aggregators.cagrad import cagrad, cagrad_weights
from mmcompress.aggregators.imtl_g import imtl_g, imtl_g_weights
from mmcompress.aggregators.pcgrad import pcgrad, pcgrad_weights

__all__ = [
    "aligned_mtl",
    "aligned_mtl_weights",
    "cagrad",
    "cagrad_weights",
    "imtl_g",
    "imtl_g_weights",
    "pcgrad",
    "pcgrad_weights",
]
