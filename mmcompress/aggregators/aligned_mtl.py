"""Aligned-MTL: make the task gradients orthogonal and of equal norm, then sum them.

Reference:
  Senushkin, Patakin, Kuznetsov & Konushin, "Independent Component Alignment for Multi-Task
  Learning", CVPR 2023.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from mmcompress.aggregators import _solvers

__all__ = ["aligned_mtl", "aligned_mtl_weights"]

_EPS = float(np.finfo(np.float32).eps)


def aligned_mtl_weights(gram: ArrayLike) -> jax.Array:
  """Aligned-MTL's weights, in the ``min`` scale mode, from the Gram matrix.

  With the eigendecomposition G G^T = V Lambda V^T, eigenvalues at or below
  lambda_max * K * eps(float32) are dropped (the rank cut), and over the r kept ones
  B = sqrt(lambda_min) V Lambda^{-1/2} V^T, lambda_min the smallest kept eigenvalue. The
  aligned gradients B G are orthonormal up to the common norm sqrt(lambda_min) when G has full
  row rank (B G G^T B = lambda_min I), and the weights are their sum: alpha = B @ 1, so that
  d = alpha @ G = 1^T B G. The weights are a matrix function of the Gram matrix, so permuting
  the rows permutes them and leaves d unchanged.

  The public implementations differ in the preference vector applied to B: the authors' code
  sums the aligned rows (as here), TorchJD averages them by default (1/K of this d). They use
  the same rank cut; the ``median`` and ``rmse`` scale modes are not offered here.

  Degenerate inputs: the rank cut drops the directions a zero row, collinear rows or K > n
  leave empty (a zero row gets weight 0); G = 0 keeps nothing and gives alpha = 0, d = 0
  (TorchJD takes B = I there, which gives the same d = 0).

  Args:
    gram: the (K, K) Gram matrix G @ G.T of the K task gradients.

  Returns:
    The (K,) weights alpha, with d = alpha @ G.

  >>> aligned_mtl_weights(jnp.array([[4.0, 0.0], [0.0, 1.0]]))
  Array([0.5, 1. ], dtype=float32)
  """
  gram = _solvers.check_gram(gram)
  num_tasks = gram.shape[0]
  values, vectors = jnp.linalg.eigh(gram)
  kept = values > jnp.max(values) * num_tasks * _EPS
  safe = jnp.where(kept, values, 1.0)
  inv_sqrt = jnp.where(kept, 1.0 / jnp.sqrt(safe), 0.0)
  smallest = jnp.min(jnp.where(kept, values, jnp.inf))
  scale = jnp.sqrt(jnp.where(jnp.any(kept), smallest, 0.0))
  balance = scale * _solvers.dot(vectors * inv_sqrt, vectors.T)
  return balance.sum(axis=1)


def aligned_mtl(G: ArrayLike) -> jax.Array:
  """Aligned-MTL's direction: the sum of the aligned task gradients (`aligned_mtl_weights`).

  Args:
    G: the (K, n) task gradients, one per row.

  Returns:
    The (n,) direction d (the step goes along -d).

  >>> aligned_mtl(jnp.array([[2.0, 0.0], [0.0, 1.0]]))
  Array([1., 1.], dtype=float32)
  """
  return _solvers.direction(G, aligned_mtl_weights)
