"""IMTL-G: the combination of the task gradients with equal projections on every task direction.

Reference:
  Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task Learning",
  ICLR 2021 (the gradient part, IMTL-G; the loss part, IMTL-L, is not here).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from mmcompress.aggregators import _solvers

__all__ = ["imtl_g", "imtl_g_weights"]

_EPS = float(np.finfo(np.float32).eps)
_FLAT = 1e-4  # |1^T x| below this fraction of sum |x|: no affine solution, uniform weights


def imtl_g_weights(gram: ArrayLike) -> jax.Array:
  """IMTL-G's weights: sum one, and d = alpha @ G projects equally on every unit row u_i.

  The conditions d.u_i = t for all i and sum(alpha) = 1 read (G G^T alpha)_i = t |g_i|, so
  alpha = x / sum(x) with x = (G G^T)^{-1} n, n_i = |g_i|: the closed form, with no iteration.
  It is the same solution as the paper's (and LibMTL's) (K-1) x (K-1) system on the
  differences g_1 - g_i and u_1 - u_i, written without the arbitrary first task. Like the
  paper, nothing forces t > 0: for some conflicting rows the common projection is negative.

  Degenerate inputs: x comes from the pseudo-inverse of G G^T (eigenvalues at or below
  lambda_max * K * eps(float32) dropped), so collinear rows and K > n get the least-squares,
  minimum-norm x; a zero row gets weight 0 (it has no direction to project on). When
  |sum(x)| <= 1e-4 sum(|x|) no combination summing to one has equal projections (e.g. rows g
  and -g, or G = 0) and the weights are uniform, 1/K each (d = 0 for g and -g, and for G = 0).
  TorchJD's IMTL-G uses the same pseudo-inverse but returns zero weights there instead (when
  |sum(x)| < 1e-12); LibMTL inverts the (K-1) x (K-1) system and gives NaN on these inputs.

  Args:
    gram: the (K, K) Gram matrix G @ G.T of the K task gradients.

  Returns:
    The (K,) weights alpha, summing to one, with d = alpha @ G.

  >>> imtl_g_weights(jnp.array([[4.0, 0.0], [0.0, 1.0]]))
  Array([0.33333334, 0.6666667 ], dtype=float32)
  """
  gram = _solvers.check_gram(gram)
  num_tasks = gram.shape[0]
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
  values, vectors = jnp.linalg.eigh(gram)
  kept = values > jnp.max(values) * num_tasks * _EPS
  inverse = jnp.where(kept, 1.0 / jnp.where(kept, values, 1.0), 0.0)
  x = _solvers.dot(vectors * inverse, _solvers.dot(vectors.T, norms))
  total = jnp.sum(x)
  flat = jnp.abs(total) <= _FLAT * jnp.sum(jnp.abs(x))
  uniform = jnp.full((num_tasks,), 1.0 / num_tasks, gram.dtype)
  return jnp.where(flat, uniform, x / jnp.where(flat, 1.0, total))


def imtl_g(G: ArrayLike) -> jax.Array:
  """IMTL-G's direction: equal projections on every task direction (see `imtl_g_weights`).

  Args:
    G: the (K, n) task gradients, one per row.

  Returns:
    The (n,) direction d (the step goes along -d).

  >>> imtl_g(jnp.array([[2.0, 0.0], [0.0, 1.0]]))
  Array([0.6666667, 0.6666667], dtype=float32)
  """
  return _solvers.direction(G, imtl_g_weights)
