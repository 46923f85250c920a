"""MGDA: the min-norm point of the convex hull of the task gradients."""
from __future__ import annotations

import jax
from jax.typing import ArrayLike

from mmcompress.aggregators import _solvers

__all__ = ["mgda", "mgda_weights"]


def mgda_weights(gram: ArrayLike) -> jax.Array:
  """MGDA's task weights (Désidéri 2012; Sener and Koltun, NeurIPS 2018) from the Gram matrix.

  The weights α on the probability simplex minimising αᵀ gram α, so that d = αᵀG is the
  min-norm point of the convex hull of the rows: d = 0 when some convex combination of the
  rows vanishes, and otherwise gᵢ·d >= |d|² > 0 for every row (a common descent direction).

  Our convention: the rows are not normalised, and d is that point itself (no factor K, no
  clipping). The authors' code and LibMTL may first normalise the gradients (by their norm or
  loss) and solve by Frank-Wolfe (at most 250 iterations); TorchJD's `MGDA` runs Frank-Wolfe
  on the Gramian (at most 100 iterations, tolerance 1e-3). Here the QP is solved to float32
  accuracy: accelerated projected gradient (at most 3000 iterations, stopping once no weight
  moves by more than 1e-7) and an exact solve of the KKT system on the support it found; d is
  within 1e-3 of the exact answer relative to |d| for Gram condition numbers up to 1e4.

  Degenerate inputs: the answer is a minimiser, finite and on the simplex. A zero gram (G = 0)
  gives the uniform weights 1/K. A zero row, or rows whose convex hull holds 0 (two opposite
  rows, all rows in conflict), give d = 0 with weights on the rows that cancel. When several
  weightings reach the minimum (collinear rows) one of them is returned.

  Args:
    gram: (K, K) Gram matrix G Gᵀ of the K task gradients, K >= 1.

  Returns:
    (K,) weights, non-negative, summing to one.

  Raises:
    ValueError: if `gram` is not a square matrix with K >= 1.

  >>> import jax.numpy as jnp
  >>> mgda_weights(jnp.array([[1.0, 0.0], [0.0, 4.0]])).round(3)
  Array([0.8, 0.2], dtype=float32)
  """
  gram = _solvers.check_gram(gram)
  return _solvers.simplex_qp(_solvers.normalised(gram)[0])


def mgda(G: ArrayLike) -> jax.Array:
  """MGDA's direction d = αᵀG, the min-norm point of the rows' convex hull (see `mgda_weights`).

  Args:
    G: (K, n) task gradients, one per row.

  Returns:
    (n,) direction d (step along -d).

  Raises:
    ValueError: if `G` is not a (K, n) matrix with K >= 1.

  >>> import jax.numpy as jnp
  >>> mgda(jnp.array([[1.0, 0.0], [0.0, 2.0]])).round(3)
  Array([0.8, 0.4], dtype=float32)
  """
  return _solvers.direction(G, mgda_weights)
