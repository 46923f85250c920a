"""Numerics shared by the aggregators that solve a problem on the Gram matrix (private).

Three solvers, each on a K x K Gram matrix Q = G Gᵀ scaled by `normalised` to a unit mean
diagonal (every method here is invariant to that scale, or rescales its answer):

* `simplex_qp`: min wᵀQw over the probability simplex (MGDA's min-norm point);
* `lower_bounded_qp`: min wᵀQw over {w >= lower} (UPGrad's projection onto the dual cone);
* `power_equation`: the w > 0 with (Q + εI) w = w^(-1/a) (Nash-MTL for a = 1, FairGrad).

The two QPs run accelerated projected gradient (FISTA with gradient-based adaptive restart,
step 1/λ_max(Q)), at most `QP_MAX_ITER` iterations, stopping once no weight moves by more than
`QP_TOL` (times the largest weight, or 1). The support it found is then *polished*: the KKT
system restricted to the free weights is solved exactly (a pseudo-inverse, so singular Gram
blocks of collinear or zero rows are fine) and replaces the iterate when it meets the QP's
optimality conditions to `KKT_TOL` (or has no larger wᵀQw). The polish is what reaches float32
accuracy; the iterations only have to find the support. Typical cases stop after 5 to 800
iterations (more for larger K and worse conditioning).

`power_equation` runs a damped Newton method on a strictly convex function whose gradient
vanishes exactly at the solution, so every Newton step is a descent direction; the step is
cut to stay inside w > 0 and halved until the function decreases (or its slope along the step
is still negative), at most `NEWTON_MAX_ITER` steps, stopping once the squared Newton
decrement is below `NEWTON_TOL` or a step leaves every weight as it was in float32 (a fixed
point of the iteration: on nearly cancelling rows the decrement stalls above the tolerance,
and without this stop each call ran all its steps with up to 40 halvings each).

All of it is jittable and vmappable: the loops are `lax.while_loop`s with an iteration cap
and nothing branches in Python on a traced value.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jax.scipy.linalg
import optax
from jax.typing import ArrayLike

QP_MAX_ITER = 3000
QP_TOL = 1e-7
# How far a polished solution may break the QP's optimality conditions (q has unit mean
# diagonal, so float32 rounding of q w is about 1e-7 times the weights).
KKT_TOL = 1e-6
NEWTON_MAX_ITER = 100
NEWTON_TOL = 1e-12
NEWTON_MAX_HALVINGS = 40
# The ridge ε of `power_equation`, relative to the Gram matrix's mean diagonal.
RIDGE = 1e-7


def check_gram(gram: ArrayLike) -> jax.Array:
  """`gram` as a floating (K, K) array with K >= 1, symmetrised; raises ValueError otherwise."""
  gram = jnp.asarray(gram)
  if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] < 1:
    raise ValueError(
        f"gram must be a square (K, K) matrix with K >= 1 (the Gram matrix G @ G.T of the "
        f"(K, n) task gradients), got shape {gram.shape}.")
  gram = gram.astype(jnp.promote_types(gram.dtype, jnp.float32))
  return (gram + gram.T) / 2


def check_rows(matrix: ArrayLike) -> jax.Array:
  """`matrix` as a floating (K, n) array with K >= 1; raises ValueError otherwise."""
  matrix = jnp.asarray(matrix)
  if matrix.ndim != 2 or matrix.shape[0] < 1:
    raise ValueError(
        f"G must be a (K, n) matrix with one row per task gradient (K >= 1; flatten each "
        f"task's gradient into a row), got shape {matrix.shape}.")
  return matrix.astype(jnp.promote_types(matrix.dtype, jnp.float32))


def dot(a: jax.Array, b: jax.Array) -> jax.Array:
  """`a @ b` at full float32 precision (no TF32 on a GPU: the Gram matrix needs every bit)."""
  return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def direction(G: ArrayLike, weights: Callable[[jax.Array], jax.Array],
              degree: float = 0.0) -> jax.Array:
  """d = weights(G Gᵀ) @ G for a (K, n) matrix G, after checking its shape.

  Rows whose largest entry lies outside [2^-40, 2^40] are first scaled by a power of two,
  2^-e (`scaled_gram`): their Gram matrix would overflow float32 (rows of norm 1e20) or lose
  its small entries. `degree` is the weights' homogeneity, weights(s Q) = s^degree weights(Q)
  for s > 0, and d = weights(Q 4^-e) @ (G 2^-e) · 2^(e (1 + 2 degree)) (`rescaled`): the
  direction's scale, unlike the weights', stays within float32 whenever the answer does.
  Within that range (every ordinary gradient) e = 0 and nothing changes.
  """
  G = check_rows(G)
  gram, exponent = scaled_gram([G])
  return rescaled(dot(weights(gram), G * exponent_scale(exponent, G.dtype)), exponent,
                  degree)


# Rows whose largest absolute entry lies in [2^-_SAFE, 2^_SAFE] are used as they are: their
# Gram matrix stays within float32's normal range for up to about 1e14 entries a row.
_SAFE = 40
# The largest scaling applied either way: 2^-120 and 2^120 are normal float32 numbers (a
# subnormal scale could be flushed to zero).
_MAX_EXPONENT = 120


def row_exponent(top: jax.Array) -> jax.Array:
  """The int32 e with top 2^-e in [1/2, 1) when `top` (a largest absolute entry, any shape)
  lies outside [2^-40, 2^40]; else 0, and 0 when top is zero or not finite; clipped to ±120."""
  _, exponent = jnp.frexp(top)
  extreme = (top > 2.0 ** _SAFE) | (top < 2.0 ** -_SAFE)
  exponent = jnp.where(jnp.isfinite(top) & (top > 0) & extreme, exponent, 0)
  return jnp.clip(exponent, -_MAX_EXPONENT, _MAX_EXPONENT).astype(jnp.int32)


def exponent_scale(exponent: jax.Array, dtype: Any) -> jax.Array:
  """2^-exponent in `dtype` (exact)."""
  return jnp.ldexp(jnp.ones(jnp.shape(exponent), dtype), -exponent)


def scaled_gram(rows: Sequence[jax.Array]) -> tuple[jax.Array, jax.Array]:
  """(Σ_i (R_i 2^-e)(R_i 2^-e)ᵀ, e) for (K, n_i) matrices R_i, e = `row_exponent` of their
  largest absolute entry.

  Scaling by a power of two is exact in floating point, so the result is the plain Gram matrix
  times 4^-e to the last bit wherever that one neither overflows nor underflows, and it cannot
  overflow for finite float32 rows. A NaN or infinite entry gives a NaN or infinite Gram
  matrix, as without scaling. Rows of very different sizes (one 2^60 times another) still lose
  the small one's squares below float32's range: its weight is then that of a zero row.
  """
  top = functools.reduce(jnp.maximum, [jnp.max(jnp.abs(r), initial=0.0) for r in rows])
  exponent = row_exponent(top)
  scale = exponent_scale(exponent, rows[0].dtype)
  terms = [dot(r * scale, (r * scale).T) for r in rows]
  return functools.reduce(jnp.add, terms), exponent


def rescaled(direction_: jax.Array, exponent: jax.Array, degree: float) -> jax.Array:
  """A direction computed from rows scaled by 2^-exponent and weights of their Gram matrix,
  scaled back: times 2^(exponent (1 + 2 degree)) for weights homogeneous of `degree`
  (exact when 2·degree is an integer; 1 + 2 degree lies in [-1, 1] for every method here)."""
  power = (1 + 2 * degree) * exponent
  if float(2 * degree).is_integer():
    return jnp.ldexp(direction_, power.astype(jnp.int32))
  return direction_ * jnp.exp2(power.astype(direction_.dtype))


def normalised(gram: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(gram / s, s) with s the mean of the diagonal; a zero gram stays zero and s = 0."""
  scale = jnp.mean(jnp.diagonal(gram))
  positive = scale > jnp.finfo(gram.dtype).tiny
  return gram / jnp.where(positive, scale, 1), jnp.where(positive, scale, 0)


def _step_size(q: jax.Array) -> jax.Array:
  """1/λ_max(q) for gradient steps on wᵀqw/2 (1 when q = 0)."""
  top = jnp.linalg.eigvalsh(q)[-1]
  return 1 / jnp.maximum(top, 1e-6)


def _accelerated(grad: Callable[[jax.Array], jax.Array],
                 project: Callable[[jax.Array], jax.Array],
                 x0: jax.Array, step: jax.Array) -> jax.Array:
  """FISTA from `x0` with gradient-based adaptive restart (O'Donoghue and Candès, 2015)."""

  def keep_going(carry):
    i, _, _, _, moved = carry
    return (i < QP_MAX_ITER) & (moved > QP_TOL)

  def iterate(carry):
    i, x, y, t, _ = carry
    x_new = project(y - step * grad(y))
    restart = jnp.vdot(y - x_new, x_new - x) > 0
    t_new = (1 + jnp.sqrt(1 + 4 * t * t)) / 2
    y_new = jnp.where(restart, x_new, x_new + (t - 1) / t_new * (x_new - x))
    t_new = jnp.where(restart, jnp.ones_like(t), t_new)
    moved = jnp.max(jnp.abs(x_new - x)) / jnp.maximum(1, jnp.max(jnp.abs(x_new)))
    return i + 1, x_new, y_new, t_new, moved

  one = jnp.ones((), x0.dtype)
  carry = (jnp.int32(0), x0, x0, one, jnp.full((), jnp.inf, x0.dtype))
  return jax.lax.while_loop(keep_going, iterate, carry)[1]


def _quadratic(q: jax.Array, w: jax.Array) -> jax.Array:
  return w @ q @ w


def _better(q: jax.Array, candidate: jax.Array, optimal: jax.Array,
            current: jax.Array) -> jax.Array:
  """`candidate` where it is finite and either meets the optimality conditions (`optimal`) or
  has no larger wᵀqw; else `current`.

  wᵀqw alone cannot decide: near the optimum its float32 rounding (relative ~K·eps/|d|²) is
  larger than the gap between the two points.
  """
  ok = jnp.all(jnp.isfinite(candidate))
  ok &= optimal | (_quadratic(q, candidate) <= _quadratic(q, current))
  return jnp.where(ok, candidate, current)


def simplex_qp(q: jax.Array) -> jax.Array:
  """argmin of wᵀqw over the probability simplex, for a positive semi-definite q.

  Starts from the uniform weights (the answer when q = 0). Ties (several minimisers when q is
  singular) go to the one the iterations reach.
  """
  k = q.shape[0]
  w = _accelerated(lambda w: q @ w, optax.projections.projection_simplex,
                   jnp.full((k,), 1 / k, q.dtype), _step_size(q))
  # Polish: with the zero weights held at zero, the free ones solve
  # q_FF w_F = μ 1, 1ᵀ w_F = 1.
  free = w > QP_TOL * jnp.max(w)
  both = free[:, None] & free[None, :]
  kkt = jnp.zeros((k + 1, k + 1), q.dtype)
  kkt = kkt.at[:k, :k].set(jnp.where(both, q, jnp.diag(~free).astype(q.dtype)))
  kkt = kkt.at[:k, k].set(-free.astype(q.dtype)).at[k, :k].set(free.astype(q.dtype))
  rhs = jnp.zeros((k + 1,), q.dtype).at[k].set(1)
  solution = jnp.linalg.pinv(kkt) @ rhs
  polished, level = solution[:k], solution[k]
  # Optimal: on the simplex, and no held weight would lower wᵀqw ((q w)_i >= μ).
  optimal = jnp.all(polished >= -KKT_TOL) & jnp.all(free | (q @ polished >= level - KKT_TOL))
  polished = jnp.maximum(polished, 0)
  polished /= jnp.where(jnp.sum(polished) > 0, jnp.sum(polished), 1)
  return _better(q, polished, optimal, w)


def lower_bounded_qp(q: jax.Array, lower: jax.Array) -> jax.Array:
  """argmin of wᵀqw over {w >= lower}, for a positive semi-definite q.

  Starts from `lower` (the answer when q = 0). Ties go to the one the iterations reach.
  """
  w = _accelerated(lambda w: q @ w, lambda w: jnp.maximum(w, lower), lower, _step_size(q))
  # Polish: with the weights at their bound held there, the free ones solve (q w)_F = 0.
  free = w > lower + QP_TOL * jnp.maximum(1, jnp.max(jnp.abs(w)))
  both = free[:, None] & free[None, :]
  system = jnp.where(both, q, jnp.diag(~free).astype(q.dtype))
  held = jnp.where(free, 0, lower)
  rhs = jnp.where(free, -(q @ held), held)
  polished = jnp.linalg.pinv(system, hermitian=True) @ rhs
  # Optimal: above the bounds, and no held weight would lower wᵀqw ((q w)_i >= 0).
  size = jnp.maximum(1, jnp.max(jnp.abs(polished)))
  optimal = jnp.all(polished >= lower - KKT_TOL * size)
  optimal &= jnp.all(free | (q @ polished >= -KKT_TOL * size))
  return _better(q, jnp.maximum(polished, lower), optimal, w)


def power_weights(gram: jax.Array, alpha: float) -> jax.Array:
  """The w > 0 with (gram + ε s I) w = w^(-1/alpha), s the mean diagonal (see `power_equation`).

  Solved on gram / s, whose solution ŵ gives w = s^(-alpha/(1+alpha)) ŵ (s = 0: w = ŵ).
  """
  q, scale = normalised(gram)
  rescale = jnp.where(scale > 0, scale, 1) ** (-alpha / (1 + alpha))
  return rescale * power_equation(q, alpha)


def check_alpha(alpha: float) -> float:
  """`alpha` as a positive finite Python float; raises ValueError otherwise."""
  try:
    alpha = float(alpha)
  except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
    raise ValueError(f"alpha must be a positive number (a Python float, not a traced "
                     f"value), got {alpha!r}.") from None
  if not 0 < alpha < float("inf"):
    raise ValueError(f"alpha must be a positive finite number, got {alpha}.")
  return alpha


def power_equation(q: jax.Array, alpha: float) -> jax.Array:
  """The w > 0 with (q + εI) w = w^(-1/alpha) element-wise, ε = `RIDGE` (see `newton`)."""
  return newton(q, alpha)[0]


def newton(q: jax.Array, alpha: float, *,
           stop_at_fixed_point: bool = True) -> tuple[jax.Array, jax.Array]:
  """`power_equation`'s solution and the number of Newton steps it took.

  The w > 0 with (q + εI) w = w^(-1/alpha) element-wise, ε = `RIDGE`.

  It is the minimiser of the strictly convex f(w) = wᵀ(q + εI)w/2 - Σ h(w_i) with
  h' (w) = w^(-1/alpha) (h = log for alpha = 1). Without the ridge there is no solution when
  some v >= 0, v != 0 has Gᵀv = 0 (a zero row, two opposite rows, rows that add up to zero):
  f then decreases without end along v. With it every w stays finite, and a weight on such a
  direction grows to about ε^(-alpha/(1+alpha)) while adding nothing to Gᵀw. Starts from the
  solution for orthogonal rows, (q_ii + ε)^(-alpha/(1+alpha)). `stop_at_fixed_point=False`
  runs on to the other stopping rules (to test that stopping there changes nothing).
  """
  p = 1 - 1 / alpha
  ridge = RIDGE

  def value(w):
    barrier = jnp.sum(jnp.log(w)) if alpha == 1 else jnp.sum(w ** p) / p
    return (w @ q @ w + ridge * (w @ w)) / 2 - barrier

  def gradient(w):
    return q @ w + ridge * w - w ** (-1 / alpha)

  def newton_step(w, g):
    curvature = ridge + w ** (-1 / alpha - 1) / alpha
    hessian = q + jnp.diag(curvature)
    scale = 1 / jnp.sqrt(jnp.diagonal(hessian))
    scaled = hessian * scale[:, None] * scale[None, :]
    step = -scale * jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(scaled), scale * g)
    fallback = -g / jnp.diagonal(hessian)
    return jnp.where(jnp.all(jnp.isfinite(step)) & (g @ step < 0), step, fallback)

  def keep_going(carry):
    i, _, decrement = carry
    return (i < NEWTON_MAX_ITER) & (decrement > NEWTON_TOL)

  def iterate(carry):
    i, w, _ = carry
    g = gradient(w)
    step = newton_step(w, g)
    slope = g @ step
    # Stay inside w > 0: at most 99 % of the way to the boundary.
    shrink = jnp.where(step < 0, -w / jnp.where(step < 0, step, -1), jnp.inf)
    t0 = jnp.minimum(1, 0.99 * jnp.min(shrink))
    f0 = value(w)

    def too_long(j, t):
      new = w + t * step
      rises = value(new) > f0 + 1e-4 * t * slope
      past = gradient(new) @ step > 0
      return (j < NEWTON_MAX_HALVINGS) & rises & past

    def halve(carry):
      j, t, _ = carry
      return j + 1, t / 2, too_long(j + 1, t / 2)

    # The test is computed once per t and carried, not recomputed in the loop's condition:
    # under jax.vmap the loop ends when no entry's condition holds, while each entry's update
    # is kept by a second evaluation of it; XLA may round the two copies differently (a fused
    # multiply-add in one), and an entry at the edge of rounding then never changes while the
    # loop never ends. Measured on CPU: a batch of 17 Gram matrices from a classify run hung.
    start = (jnp.int32(0), t0, too_long(jnp.int32(0), t0))
    _, t, _ = jax.lax.while_loop(lambda c: c[2], halve, start)
    new = w + t * step
    # A step that moves no weight in float32 leaves a fixed point: every further iteration
    # (a function of w alone) would repeat it. Stopping there returns the very same w.
    moved = jnp.any(new != w) if stop_at_fixed_point else True
    return i + 1, new, jnp.where(moved, -slope, 0)

  w0 = (jnp.diagonal(q) + ridge) ** (-alpha / (1 + alpha))
  carry = (jnp.int32(0), w0, jnp.full((), jnp.inf, q.dtype))
  steps, w, _ = jax.lax.while_loop(keep_going, iterate, carry)
  return w, steps
