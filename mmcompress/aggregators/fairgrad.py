"""FairGrad: α-fair allocation of the step among the tasks, from the Gram matrix."""
from __future__ import annotations

import jax
from jax.typing import ArrayLike

from mmcompress.aggregators import _solvers

__all__ = ["degree", "fairgrad", "fairgrad_weights"]


def fairgrad_weights(gram: ArrayLike, alpha: float = 1.0) -> jax.Array:
  """FairGrad's task weights (Ban and Ji, "Fair Resource Allocation in Multi-Task Learning",
  ICML 2024) from the Gram matrix.

  The w > 0 with (gram w)ᵢ = wᵢ^(-1/alpha) for every task, i.e. gᵢ·d = wᵢ^(-1/alpha) for
  d = wᵀG: the α-fair utility allocation. alpha = 1 is Nash-MTL (`nash_mtl_weights`); a larger
  alpha moves towards max-min fairness, alpha -> 0 towards the sum of the tasks' shares.

  Our convention: w unnormalised and d = wᵀG exactly, no clipping. The authors' code and
  LibMTL's copy solve the equation with `scipy.optimize.least_squares` from w = 1 (to its
  default tolerances, and it may stall with a weight at its bound 0). Here w minimises the
  strictly convex wᵀ(gram + εI)w/2 - Σ h(wᵢ), h' (w) = w^(-1/alpha), ε = 1e-7 times the mean
  diagonal of gram, by a damped Newton method (at most 100 steps, stopping once the squared
  Newton decrement is below 1e-12 or a step no longer moves any weight in float32). d is
  within 1e-3 of the exact answer relative to |d| for Gram condition numbers up to 1e4.

  Degenerate inputs: the ridge ε keeps w finite where the equation has no solution. A zero row
  gets the weight ε^(-alpha/(1+alpha)) (times the mean diagonal to the power
  -alpha/(1+alpha)) and adds nothing to d; rows whose non-negative combination vanishes (two
  opposite rows, all rows in conflict, G = 0) get weights of that order, which cancel in d up
  to their float32 rounding (about 1e-7 of the largest weight times |gᵢ|).

  Args:
    gram: (K, K) Gram matrix G Gᵀ of the K task gradients, K >= 1.
    alpha: the fairness exponent, a positive Python number (static under jit).

  Returns:
    (K,) positive weights.

  Raises:
    ValueError: if `gram` is not a square matrix with K >= 1, or alpha is not positive.

  >>> import jax.numpy as jnp
  >>> fairgrad_weights(jnp.array([[1.0, 0.0], [0.0, 4.0]]), alpha=2.0).round(3)
  Array([1.   , 0.397], dtype=float32)
  """
  alpha = _solvers.check_alpha(alpha)
  gram = _solvers.check_gram(gram)
  return _solvers.power_weights(gram, alpha)


def degree(alpha: float) -> float:
  """The homogeneity of `fairgrad_weights`: w(s gram) = s^degree w(gram), degree =
  -alpha/(1+alpha) (w scales as |g|^(-2 alpha/(1+alpha)))."""
  alpha = _solvers.check_alpha(alpha)
  return -alpha / (1 + alpha)


def fairgrad(G: ArrayLike, alpha: float = 1.0) -> jax.Array:
  """FairGrad's direction d = wᵀG with (G Gᵀ w)ᵢ = wᵢ^(-1/alpha) (see `fairgrad_weights`).

  Args:
    G: (K, n) task gradients, one per row.
    alpha: the fairness exponent, a positive Python number (static under jit).

  Returns:
    (n,) direction d (step along -d).

  Raises:
    ValueError: if `G` is not a (K, n) matrix with K >= 1, or alpha is not positive.

  >>> import jax.numpy as jnp
  >>> fairgrad(jnp.array([[1.0, 0.0], [0.0, 2.0]]), alpha=1.0).round(3)
  Array([1., 1.], dtype=float32)
  """
  return _solvers.direction(G, lambda gram: fairgrad_weights(gram, alpha), degree(alpha))
