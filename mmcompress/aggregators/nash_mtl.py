"""Nash-MTL: the Nash bargaining solution of the tasks, from the Gram matrix."""
from __future__ import annotations

import jax
from jax.typing import ArrayLike

from mmcompress.aggregators import _solvers

__all__ = ["DEGREE", "nash_mtl", "nash_mtl_weights"]


# nash_mtl_weights(s gram) = s^DEGREE nash_mtl_weights(gram): α scales as 1/|g|.
DEGREE = -0.5


def nash_mtl_weights(gram: ArrayLike) -> jax.Array:
  """Nash-MTL's task weights (Navon et al., "Multi-Task Learning as a Bargaining Game",
  ICML 2022) from the Gram matrix.

  The α > 0 with (gram α)ᵢ = 1/αᵢ for every task, i.e. gᵢ·d = 1/αᵢ > 0 for d = αᵀG: each
  task's share of the step is inversely proportional to its weight. α is unique when no
  non-zero v >= 0 has Gᵀv = 0 (then the rows have a common ascent direction).

  Our convention: α unnormalised and d = αᵀG exactly, without the authors' clipping of |d| to
  `max_norm` = 1. The authors' code (and LibMTL's and TorchJD's copies of it) approximates α
  by at most 20 convex-concave steps with cvxpy, on a Gram matrix divided by its norm, and may
  stall with a weight at zero. Here α solves the equation: a damped Newton method on the
  strictly convex αᵀ(gram + εI)α/2 - Σ log αᵢ, ε = 1e-7 times the mean diagonal of gram (at
  most 100 steps, stopping once the squared Newton decrement is below 1e-12 or a step no
  longer moves any weight in float32). d is within 1e-3 of the exact answer relative to |d|
  for Gram condition numbers up to 1e4.

  Degenerate inputs: the ridge ε keeps α finite where the equation has no solution. A zero
  row gets the weight ε^(-1/2) (about 3000 over the square root of the mean diagonal) and
  adds nothing to d; rows whose non-negative combination vanishes (two opposite rows, all
  rows in conflict, G = 0) get weights of that order, which cancel in d up to their float32
  rounding (about 1e-7 of the largest weight times |gᵢ|). Collinear rows that point the same
  way share one solution: (gram α)ᵢ = 1/αᵢ still holds.

  Equal to `fairgrad_weights(gram, alpha=1.0)`.

  Args:
    gram: (K, K) Gram matrix G Gᵀ of the K task gradients, K >= 1.

  Returns:
    (K,) positive weights.

  Raises:
    ValueError: if `gram` is not a square matrix with K >= 1.

  >>> import jax.numpy as jnp
  >>> nash_mtl_weights(jnp.array([[1.0, 0.0], [0.0, 4.0]])).round(3)
  Array([1. , 0.5], dtype=float32)
  """
  gram = _solvers.check_gram(gram)
  return _solvers.power_weights(gram, 1.0)


def nash_mtl(G: ArrayLike) -> jax.Array:
  """Nash-MTL's direction d = αᵀG with (G Gᵀ α)ᵢ = 1/αᵢ (see `nash_mtl_weights`).

  Args:
    G: (K, n) task gradients, one per row.

  Returns:
    (n,) direction d (step along -d).

  Raises:
    ValueError: if `G` is not a (K, n) matrix with K >= 1.

  >>> import jax.numpy as jnp
  >>> nash_mtl(jnp.array([[1.0, 0.0], [0.0, 2.0]])).round(3)
  Array([1., 1.], dtype=float32)
  """
  return _solvers.direction(G, nash_mtl_weights, DEGREE)
