"""CAGrad: the direction in a ball around the mean gradient that best serves the worst task.

Reference:
  Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task Learning",
  NeurIPS 2021.
"""
from __future__ import annotations

import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from mmcompress import _checks
from mmcompress.aggregators import _solvers

__all__ = ["cagrad", "cagrad_weights", "MAX_ITERATIONS", "TOLERANCE"]

MAX_ITERATIONS = 1000  # the accelerated projected gradient's cap
TOLERANCE = 1e-7  # it stops once no weight moves by more (the weights are on the simplex)
_SUPPORT = 1e-5  # weights above this make the face the exact solve is restricted to
_FLAT_NORM = 1e-3  # |g_w| at most this times the RMS row norm counts as zero
_FLOOR = 1e-6  # lower bound on the normalised |g_w|^2 in the step size and the gradient


def _check_c(c: float) -> float:
  if isinstance(c, bool) or not isinstance(c, numbers.Real) or not c >= 0.0:
    raise _checks.UserError(f"c must be a number >= 0 (the paper uses 0.4 or 0.5), got {c!r}.")
  return float(c)


def _project_to_simplex(v: jax.Array) -> jax.Array:
  """The Euclidean projection of `v` on the probability simplex (by sorting)."""
  ranked = jnp.sort(v)[::-1]
  cumulative = jnp.cumsum(ranked) - 1.0
  index = jnp.arange(1, v.shape[0] + 1, dtype=v.dtype)
  count = jnp.maximum(jnp.sum(ranked - cumulative / index > 0.0), 1)
  threshold = cumulative[count - 1] / count.astype(v.dtype)
  return jnp.maximum(v - threshold, 0.0)


def _objective(H: jax.Array, b: jax.Array, s: jax.Array, w: jax.Array) -> jax.Array:
  """g_w.g0 + s |g_w| in Gram terms."""
  return _solvers.dot(b, w) + s * jnp.sqrt(jnp.maximum(_solvers.dot(w, _solvers.dot(H, w)), 0.0))


class _Search(NamedTuple):
  step: jax.Array
  w: jax.Array
  y: jax.Array
  momentum: jax.Array
  moved: jax.Array


def _accelerated_descent(H: jax.Array, b: jax.Array, s: jax.Array) -> jax.Array:
  """Minimises `_objective` on the simplex by accelerated projected gradient with restarts.

  The step is 1/L with L = s lambda_max / sqrt(max(lambda_min / K, _FLOOR)), a bound on the
  curvature of s |g_w| on the simplex; the momentum restarts whenever it points uphill
  (O'Donoghue & Candes, 2015).
  """
  num_tasks = H.shape[0]
  values = jnp.linalg.eigvalsh(H)
  curvature = s * values[-1] / jnp.sqrt(jnp.maximum(values[0] / num_tasks, _FLOOR))
  rate = 1.0 / jnp.maximum(curvature, 1e-6)

  def gradient(y):
    Hy = _solvers.dot(H, y)
    return b + s * Hy / jnp.sqrt(jnp.maximum(_solvers.dot(y, Hy), _FLOOR))

  def go_on(search):
    return (search.step < MAX_ITERATIONS) & (search.moved > TOLERANCE)

  def iterate(search):
    w = _project_to_simplex(search.y - rate * gradient(search.y))
    uphill = _solvers.dot(search.y - w, w - search.w) > 0.0
    momentum = jnp.where(uphill, 1.0, (1.0 + jnp.sqrt(1.0 + 4.0 * search.momentum**2)) / 2.0)
    y = jnp.where(uphill, w, w + (search.momentum - 1.0) / momentum * (w - search.w))
    return _Search(search.step + 1, w, y, momentum, jnp.max(jnp.abs(w - search.w)))

  start = jnp.full((num_tasks,), 1.0 / num_tasks, H.dtype)
  one = jnp.ones((), H.dtype)
  search = jax.lax.while_loop(go_on, iterate, _Search(0, start, start, one, jnp.inf * one))
  return search.w


def _face_optimum(H: jax.Array, b: jax.Array, s: jax.Array, face: jax.Array):
  """The exact minimiser of `_objective` on the affine hull of the rows in `face`.

  Stationarity there, b + s H w / |g_w| = lambda 1 on the face, gives in closed form
  w = y / A - p / (A delta) with y = H^{-1} 1, A = 1^T y, mu = 1^T H^{-1} b / A,
  p = H^{-1} (b - mu 1), q = (b - mu 1)^T p and delta = sqrt((s^2 - q) / A) (H, b restricted
  to the face, H^{-1} by Cholesky: a singular face gives no valid point). Returns the weights
  and whether they are a point of the simplex.
  """
  m = face.astype(H.dtype)
  restricted = H * m[:, None] * m[None, :] + jnp.diag(1.0 - m)
  factor = jax.scipy.linalg.cho_factor(restricted)
  y, z = jax.scipy.linalg.cho_solve(factor, jnp.stack([m, b * m], axis=1)).T
  total = _solvers.dot(y, m)
  mu = _solvers.dot(b * m, y) / total
  p = z - mu * y
  slack = s**2 - _solvers.dot((b - mu) * m, p)
  delta = jnp.sqrt(jnp.maximum(slack, 0.0) / total)
  w = (y - p / jnp.where(delta > 0.0, delta, 1.0)) / total
  valid = (slack > 0.0) & (total > 0.0) & jnp.all(w >= -1e-6) & jnp.all(jnp.isfinite(w))
  w = jnp.maximum(jnp.where(valid, w, 0.0), 0.0) * m
  return w / jnp.where(valid, jnp.sum(w), 1.0), valid


def cagrad_weights(gram: ArrayLike, c: float = 0.4) -> jax.Array:
  """CAGrad's weights: the coefficients, in the rows of G, of the CAGrad direction.

  With g0 the mean of the rows, w on the simplex minimises g_w.g0 + c |g0| |g_w|, g_w = G^T w,
  and d = (g0 + c |g0| g_w / |g_w|) / (1 + c^2), so alpha = (1/K + c |g0| w / |g_w|) / (1 + c^2).
  Before the rescale by 1 / (1 + c^2) (the reference code's default, LibMTL's ``rescale=1``),
  d maximises min_i g_i.d over the ball |d - g0| <= c |g0|; w is the dual of that problem.

  The solver (all on the Gram matrix, scaled by its mean diagonal): accelerated projected
  gradient on the simplex, at most `MAX_ITERATIONS` = 1000 steps, stopping once no weight
  moves by more than `TOLERANCE` = 1e-7; then the exact stationary point of the face its
  weights above 1e-5 span (a closed form, see `_face_optimum`) replaces it when that point is
  on the simplex and no worse. Accurate to about 1e-4 of |d| in float32 when the Gram
  matrix's condition number is <= 1e4. The authors' code and LibMTL solve for w with scipy's
  SLSQP, with 1e-8 added inside the square roots; TorchJD solves it with cvxpy and leaves the
  1 / (1 + c^2) rescale out.

  Degenerate inputs: when |g_w| <= 1e-3 times the RMS row norm at the solution (the solution
  can be g_w = 0 only when 0 is in the convex hull of the rows: rows g and -g, G = 0, or a zero
  row when no other row does better) the g_w term is dropped and d = g0 / (1 + c^2) (TorchJD
  returns d = 0 there); with c = 0 or g0 = 0, d = g0 / (1 + c^2) as well.

  Args:
    gram: the (K, K) Gram matrix G @ G.T of the K task gradients.
    c: the radius of the ball around g0, relative to |g0|; c = 0 gives the mean gradient.

  Returns:
    The (K,) weights alpha, with d = alpha @ G.

  >>> cagrad_weights(jnp.array([[1.0, 0.0], [0.0, 1.0]]), c=0.5)
  Array([0.6, 0.6], dtype=float32)
  """
  c = _check_c(c)
  gram = _solvers.check_gram(gram)
  num_tasks = gram.shape[0]
  scale = jnp.mean(jnp.diag(gram))
  H = gram / jnp.where(scale > 0.0, scale, 1.0)
  b = jnp.mean(H, axis=1)
  s = c * jnp.sqrt(jnp.maximum(jnp.mean(b), 0.0))
  w = _accelerated_descent(H, b, s)
  exact, valid = _face_optimum(H, b, s, w > _SUPPORT)
  better = valid & (_objective(H, b, s, exact) <= _objective(H, b, s, w))
  w = jnp.where(better, exact, w)
  norm = jnp.sqrt(jnp.maximum(_solvers.dot(w, _solvers.dot(H, w)), 0.0))
  flat = norm <= _FLAT_NORM
  lam = jnp.where(flat, 0.0, s / jnp.where(flat, 1.0, norm))
  return (1.0 / num_tasks + lam * w) / (1.0 + c**2)


def cagrad(G: ArrayLike, c: float = 0.4) -> jax.Array:
  """CAGrad's direction (see `cagrad_weights`).

  Args:
    G: the (K, n) task gradients, one per row.
    c: the radius of the ball around the mean gradient g0, relative to |g0|.

  Returns:
    The (n,) direction d (the step goes along -d).

  >>> cagrad(jnp.array([[1.0, 0.0], [0.0, 1.0]]), c=0.5)
  Array([0.6, 0.6], dtype=float32)
  """
  return _solvers.direction(G, lambda gram: cagrad_weights(gram, c))
