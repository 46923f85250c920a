"""The aggregators that solve a problem on the Gram matrix: MGDA, UPGrad, Nash-MTL, FairGrad.

Each is checked against a computation of its own in NumPy float64 or scipy (an enumeration of
active sets, a projection in the gradients' own space, `scipy.optimize.root`), by the
conditions its answer promises, under jit and vmap, for the order of the rows, and on
degenerate inputs. The random cases: for each K in 2..6, `CASES_PER_K` matrices G (K, K + 3)
of float32 with a fixed seed (FairGrad: K = 4 only), whose Gram matrix has condition number
1e4 (the largest and smallest singular values of G are 100 apart), at a random overall scale.
Every method is compiled once per K, vmapped over that K's cases.
"""
import itertools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from mmcompress.aggregators import _solvers
from mmcompress.aggregators import (fairgrad, fairgrad_weights, mgda, mgda_weights, nash_mtl,
                                    nash_mtl_weights, upgrad, upgrad_weights)

KS = (2, 3, 4, 5, 6)
CASES_PER_K = 8
ACCURACY = 1e-3  # |d - exact| / |exact|, the accuracy the docstrings state
RIDGE = 1e-7  # Nash-MTL's and FairGrad's ridge, relative to the mean diagonal of the Gram
FAIRGRAD_K = 4  # FairGrad runs on the same code as Nash-MTL: its random cases are K = 4 only
METHODS = {"mgda": mgda, "upgrad": upgrad, "nash_mtl": nash_mtl,
           "fairgrad": lambda g: fairgrad(g, alpha=2.0)}
WEIGHTS = {"mgda": mgda_weights, "upgrad": upgrad_weights, "nash_mtl": nash_mtl_weights,
           "fairgrad": lambda q: fairgrad_weights(q, alpha=2.0)}
POWERS = {"nash_mtl": 1.0, "fairgrad": 2.0}
# Each compiled once per K and reused by every test (compiling is most of this file's time).
BATCHED = {name: jax.jit(jax.vmap(weights)) for name, weights in WEIGHTS.items()}


def well_conditioned(rng, k, n):
  """A (k, n) float64 matrix with singular values from 1 to 100 (Gram condition 1e4), scaled."""
  u = np.linalg.qr(rng.normal(size=(k, k)))[0]
  v = np.linalg.qr(rng.normal(size=(n, k)))[0]
  s = np.exp(rng.uniform(0, np.log(100), size=k))
  s[0], s[-1] = 1, 100
  return (u * s) @ v.T * 10 ** rng.uniform(-2, 2)


def make_cases():
  rng = np.random.default_rng(20240613)
  return {k: np.stack([well_conditioned(rng, k, k + 3) for _ in range(CASES_PER_K)]).astype(
      np.float32) for k in KS}


CASES = make_cases()


# Independent computations in float64.

def exact_mgda(g):
  """The min-norm point of the rows' convex hull: the smallest of the min-norm points of the
  affine hulls of every subset of rows whose affine weights are all non-negative."""
  k = g.shape[0]
  scale = np.max(np.linalg.norm(g, axis=1))
  if scale == 0:
    return np.zeros(g.shape[1])
  g = g / scale  # the weights do not depend on the scale; it keeps the KKT rows comparable
  best = None
  for size in range(1, k + 1):
    for subset in itertools.combinations(range(k), size):
      rows = g[list(subset)]
      kkt = np.zeros((size + 1, size + 1))
      kkt[:size, :size] = rows @ rows.T
      kkt[:size, size] = -1
      kkt[size, :size] = 1
      rhs = np.zeros(size + 1)
      rhs[size] = 1
      weights = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:size]
      if np.all(weights >= -1e-12):
        d = weights @ rows
        if best is None or d @ d < best @ best:
          best = d
  return best * scale


def projection_onto_dual_cone(g, x):
  """The projection of x onto {y : g y >= 0}, in the gradients' own space: the nearest of the
  projections of x onto {y : g_A y = 0}, over every subset A of rows, that lies in the cone."""
  k = g.shape[0]
  scale = np.linalg.norm(g) * np.linalg.norm(x)
  best = None
  for size in range(k + 1):
    for subset in itertools.combinations(range(k), size):
      rows = g[list(subset)]
      y = x - rows.T @ np.linalg.lstsq(rows @ rows.T, rows @ x, rcond=None)[0] if size else x
      if np.all(g @ y >= -1e-10 * scale):
        if best is None or np.sum((y - x) ** 2) < np.sum((best - x) ** 2):
          best = y
  return best


def exact_upgrad(g):
  return np.mean([projection_onto_dual_cone(g, row) for row in g], axis=0)


def exact_power(g, alpha):
  """The w > 0 with (g gᵀ w)ᵢ = wᵢ^(-1/alpha), in float64: L-BFGS-B on the convex
  wᵀQw/2 - Σ h(wᵢ), h' = w^(-1/alpha), for Q = g gᵀ / s (s its mean diagonal), refined by
  `scipy.optimize.root` on wᵢ^(1/alpha) (Q w)ᵢ = 1 in log space, then rescaled by
  s^(-alpha/(1+alpha))."""
  scale = np.mean(np.sum(g * g, axis=1))
  q = g @ g.T / scale
  p = 1 - 1 / alpha
  utility = (lambda w: np.sum(np.log(w))) if alpha == 1 else (lambda w: np.sum(w ** p) / p)
  coarse = scipy.optimize.minimize(
      lambda w: (w @ q @ w / 2 - utility(w), q @ w - w ** (-1 / alpha)), np.ones(len(g)),
      jac=True, method="L-BFGS-B", bounds=[(1e-12, None)] * len(g),
      options={"ftol": 1e-12, "gtol": 1e-8, "maxiter": 2000})
  equation = lambda u: np.exp(u / alpha) * (q @ np.exp(u)) - 1
  found = scipy.optimize.root(equation, np.log(coarse.x), method="hybr", tol=1e-14)
  assert np.max(np.abs(equation(found.x))) <= 1e-9, found.message
  return np.exp(found.x) * scale ** (-alpha / (1 + alpha))


def relative(d, exact):
  return np.linalg.norm(d - exact) / np.linalg.norm(exact)


def grams(g):
  """The float32 Gram matrices of a batch of G (B, K, n)."""
  return jnp.einsum("bkn,bjn->bkj", g, g)


def solved(name, g):
  """(weights (B, K), directions (B, n)) of method `name` on a batch of G, in float64; the
  direction is computed here as weights @ G (that `METHODS` does the same is tested below)."""
  weights = np.asarray(BATCHED[name](grams(g)), np.float64)
  return weights, np.einsum("bk,bkn->bn", weights, np.asarray(g, np.float64))


# What the methods return on the random cases, compiled once per K.

@pytest.fixture(name="results", scope="module")
def fixture_results():
  """{method: {k: (weights (B, K), directions (B, n))}} for the random cases."""
  return {name: {k: solved(name, g) for k, g in CASES.items()
                 if name != "fairgrad" or k == FAIRGRAD_K} for name in METHODS}


def test_the_cases_are_well_conditioned():
  for g in CASES.values():
    conditions = np.linalg.cond(np.einsum("bkn,bjn->bkj", g.astype(np.float64), g))
    assert np.all(conditions <= 1.001e4) and np.max(conditions) >= 0.99e4


@pytest.mark.parametrize("name", METHODS)
def test_jit_and_vmap_give_what_a_python_loop_gives(results, name):
  # The direction function, jitted and called case by case, is the weights (vmapped over the
  # batch) times G.
  k = FAIRGRAD_K if name == "fairgrad" else 3
  method = jax.jit(METHODS[name])
  for case in range(3):
    expected = results[name][k][1][case]
    np.testing.assert_allclose(method(CASES[k][case]), expected, rtol=1e-4,
                               atol=1e-5 * np.max(np.abs(expected)))


def test_mgda_is_the_min_norm_point_of_the_convex_hull(results):
  for k, g in CASES.items():
    weights, d = results["mgda"][k]
    assert np.all(weights >= 0) and np.allclose(weights.sum(axis=1), 1, atol=1e-5)
    for case in range(CASES_PER_K):
      assert relative(d[case], exact_mgda(g[case].astype(np.float64))) <= ACCURACY, (k, case)


def test_mgda_is_a_common_descent_direction(results):
  # Optimality on the simplex: every row's g_i·d >= |d|² (equality on the support).
  for k, g in CASES.items():
    weights, d = results["mgda"][k]
    products = np.einsum("bkn,bn->bk", g.astype(np.float64), d)
    squared = np.sum(d * d, axis=1, keepdims=True)
    norms = np.linalg.norm(g, axis=2) * np.linalg.norm(d, axis=1, keepdims=True)
    assert np.all(products >= squared - ACCURACY * norms), k
    support = weights > 1e-3
    assert np.all(np.abs(products - squared)[support] <= ACCURACY * norms[support]), k


def test_upgrad_is_the_mean_projection_onto_the_dual_cone(results):
  for k, g in CASES.items():
    weights, d = results["upgrad"][k]
    assert np.all(weights >= 1 / k - 1e-6)
    for case in range(CASES_PER_K):
      assert relative(d[case], exact_upgrad(g[case].astype(np.float64))) <= ACCURACY, (k, case)


def test_upgrad_does_not_conflict_with_any_task(results):
  for k, g in CASES.items():
    d = results["upgrad"][k][1]
    products = np.einsum("bkn,bn->bk", g.astype(np.float64), d)
    norms = np.linalg.norm(g, axis=2) * np.linalg.norm(d, axis=1, keepdims=True)
    assert np.all(products >= -ACCURACY * norms), k


def check_power_weights(g, weights, d, alpha):
  """(G Gᵀ w)ᵢ = wᵢ^(-1/alpha), w > 0: the backward error is at float32 level, and d is the
  direction of scipy's float64 solution."""
  assert np.all(weights > 0)
  for case in range(len(g)):
    rows = g[case].astype(np.float64)
    q, w = rows @ rows.T, weights[case]
    residual = q @ w - w ** (-1 / alpha)
    assert np.max(np.abs(residual)) <= 1e-5 * np.linalg.norm(q) * np.linalg.norm(w), case
    assert relative(d[case], exact_power(rows, alpha) @ rows) <= ACCURACY, case


@pytest.mark.parametrize("name", POWERS)
def test_power_weights_solve_their_equation(results, name):
  for k, answer in results[name].items():
    check_power_weights(CASES[k], *answer, POWERS[name])


def test_fairgrad_with_a_small_alpha_solves_its_equation():
  g = CASES[FAIRGRAD_K]
  weights = np.asarray(jax.jit(jax.vmap(lambda q: fairgrad_weights(q, alpha=0.5)))(grams(g)),
                       np.float64)
  check_power_weights(g, weights, np.einsum("bk,bkn->bn", weights, g.astype(np.float64)), 0.5)


def test_fairgrad_with_alpha_one_is_nash_mtl(results):
  g = CASES[3]
  np.testing.assert_allclose(jax.jit(jax.vmap(fairgrad_weights))(grams(g)),
                             results["nash_mtl"][3][0], rtol=1e-6)


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_newton_stops_at_a_fixed_point_with_the_answer_it_would_give_later(alpha):
  # Rows that nearly cancel (the second almost minus the first): the float32 iteration stalls
  # at a point it no longer moves from, with a squared decrement above the tolerance. Run to
  # the step cap it returns the very same weights; stopped at the fixed point, far sooner.
  rng = np.random.default_rng(1)
  rows = rng.normal(size=(3, 50))
  rows[1] = -rows[0] + 1e-3 * rng.normal(size=50)
  q, _ = _solvers.normalised(jnp.asarray((rows @ rows.T).astype(np.float32)))
  solve = jax.jit(_solvers.newton, static_argnames=("alpha", "stop_at_fixed_point"))
  stopped, steps = solve(q, alpha=alpha)
  capped, all_steps = solve(q, alpha=alpha, stop_at_fixed_point=False)
  np.testing.assert_array_equal(stopped, capped)
  assert int(all_steps) == _solvers.NEWTON_MAX_ITER and int(steps) < int(all_steps) // 2
  # Where the decrement does fall below the tolerance, the fixed point changes nothing.
  for k in (2, 4):
    for q in grams(CASES[k])[:2]:
      np.testing.assert_array_equal(solve(_solvers.normalised(q)[0], alpha=alpha)[0],
                                    solve(_solvers.normalised(q)[0], alpha=alpha,
                                          stop_at_fixed_point=False)[0])


# 17 normalised Gram matrices of one step of a Nash-MTL run (the classify task set at 40x, a
# chunk of tuning runs, step 455 of its retraining): tasks whose gradients have nearly
# vanished (diagonals down to 1e-18). Vmapped, XLA's default CPU compilation of the line
# search's loop ran forever on them (the run stalled for hours); each alone took 1 to 5 steps.
HUNG_BATCH = pathlib.Path(__file__).parent / "data" / "classify_nash_grams.npy"
SOLVE_HUNG_BATCH = f"""
import jax, jax.numpy as jnp, numpy as np
from mmcompress.aggregators import _solvers
q = jnp.asarray(np.load({str(HUNG_BATCH)!r}))
w, steps = jax.jit(jax.vmap(lambda q: _solvers.newton(q, 1.0)))(q)
alone = [int(_solvers.newton(x, 1.0)[1]) for x in q]
print(np.asarray(steps).max(), max(alone), np.isfinite(np.asarray(w)).all())
"""


def test_a_batch_that_hung_the_vmapped_line_search_is_solved(run_python, tmp_path):
  # XLA's default optimisation (the tests compile without it), where it hung: in a process
  # of its own, with a deadline.
  done = run_python("-c", SOLVE_HUNG_BATCH, cwd=tmp_path, env={"XLA_FLAGS": ""}, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  batched, alone, finite = done.stdout.split()
  assert finite == "True" and int(batched) <= 10 and int(alone) <= 10


@pytest.mark.parametrize("name", METHODS)
def test_permuting_the_rows_permutes_the_weights_and_keeps_the_direction(results, name):
  rng = np.random.default_rng(7)
  k = FAIRGRAD_K
  g = CASES[k]
  orders = np.stack([rng.permutation(k) for _ in range(CASES_PER_K)])
  weights, d = solved(name, np.take_along_axis(g, orders[:, :, None], axis=1))
  expected_weights, expected_d = results[name][k]
  for case in range(CASES_PER_K):
    assert relative(d[case], expected_d[case]) <= ACCURACY
    np.testing.assert_allclose(weights[case], expected_weights[case][orders[case]],
                               rtol=ACCURACY, atol=ACCURACY * np.max(expected_weights[case]))


# Degenerate inputs: three tasks each (so that the functions compiled for K = 3 serve), and
# one task alone.

DEGENERATE = {
    "zero_row": [[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 1.0]],
    "collinear": [[1.0, 1.0, 0.0], [2.0, 2.0, 0.0], [0.0, 0.0, 1.0]],
    "opposite": [[1.0, 0.0, 0.0], [-2.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
    "more_tasks_than_dims": [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]],
    "all_in_conflict": [[1.0, 0.0], [-0.5, 0.8], [-0.5, -0.8]],
    "zero": [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]],
}


@pytest.fixture(name="degenerate", scope="module")
def fixture_degenerate():
  """{(case, method): (weights, direction)} as float64 arrays."""
  rows = [np.array(g, np.float32) for g in DEGENERATE.values()]
  batch = jnp.stack([g @ g.T for g in rows])
  batch = jnp.concatenate([batch, batch[:CASES_PER_K - len(rows)]])  # the compiled batch size
  out = {}
  for name in METHODS:
    weights = np.asarray(BATCHED[name](batch), np.float64)
    for case, w, g in zip(DEGENERATE, weights, rows):
      out[case, name] = w, w @ g.astype(np.float64)
  return out


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("case", DEGENERATE)
def test_degenerate_inputs_give_finite_answers(degenerate, case, name):
  weights, d = degenerate[case, name]
  assert np.all(np.isfinite(weights)) and np.all(np.isfinite(d))


@pytest.mark.parametrize("case", DEGENERATE)
def test_mgda_and_upgrad_on_degenerate_inputs_match_the_enumerations(degenerate, case):
  g = np.array(DEGENERATE[case])
  scale = np.max(np.linalg.norm(g, axis=1)) + 1e-30
  for name, exact in (("mgda", exact_mgda), ("upgrad", exact_upgrad)):
    np.testing.assert_allclose(degenerate[case, name][1], exact(g), atol=1e-5 * scale,
                               err_msg=name)
  weights = degenerate[case, "mgda"][0]
  assert np.all(weights >= 0) and np.isclose(weights.sum(), 1)


def test_documented_degenerate_answers(degenerate):
  for name in ("mgda", "upgrad"):
    np.testing.assert_allclose(degenerate["zero", name][0], 1 / 3, rtol=1e-6)
    np.testing.assert_array_equal(degenerate["zero", name][1], 0)
  # MGDA: d = 0 when 0 is in the rows' convex hull (a zero row, opposite rows, conflict).
  for case in ("zero_row", "opposite", "all_in_conflict"):
    np.testing.assert_allclose(degenerate[case, "mgda"][1], 0, atol=1e-5)
  # UPGrad: a zero row keeps its own 1/K; all rows in conflict: d = 0; two opposite rows:
  # only the third row's direction is left.
  assert np.isclose(degenerate["zero_row", "upgrad"][0][1], 1 / 3)
  np.testing.assert_allclose(degenerate["all_in_conflict", "upgrad"][1], 0, atol=1e-5)
  np.testing.assert_allclose(degenerate["opposite", "upgrad"][1], [0, 1 / 3, 0], atol=1e-5)


@pytest.mark.parametrize("name", POWERS)
def test_power_weights_on_degenerate_inputs(degenerate, name):
  alpha = POWERS[name]
  exponent = -alpha / (1 + alpha)
  # A zero row: weight (ε s)^(-alpha/(1+alpha)), s the mean diagonal, and the other weights
  # are those of the matrix without it (its mean diagonal is 3/2 times larger).
  g = np.array(DEGENERATE["zero_row"])
  weights, d = degenerate["zero_row", name]
  mean_diagonal = np.mean(np.sum(g * g, axis=1))
  np.testing.assert_allclose(weights[1], (RIDGE * mean_diagonal) ** exponent, rtol=1e-3)
  rest = g[[0, 2]]
  without = exact_power(rest, alpha)
  np.testing.assert_allclose(weights[[0, 2]], without, rtol=1e-3)
  np.testing.assert_allclose(d, without @ rest, rtol=1e-3)
  # No solution without the ridge: the weights grow to its order, d is (near) 0 along the
  # rows that cancel.
  for case in ("all_in_conflict", "zero"):
    weights, d = degenerate[case, name]
    rows = np.array(DEGENERATE[case])
    scale = np.mean(np.sum(rows * rows, axis=1)) or 1.0
    assert np.all(weights > 0.1 * (RIDGE * scale) ** exponent), case
    rounding = 1e-6 * np.max(weights) * np.max(np.linalg.norm(rows, axis=1))
    assert np.linalg.norm(d) <= rounding, case
  # Two opposite rows and a third orthogonal to them: the opposite ones get large weights
  # that cancel, the third its own solution (weight 1: its Gram entry is 1).
  weights, d = degenerate["opposite", name]
  assert np.all(weights[:2] > 0.1 * (RIDGE * 2) ** exponent)
  assert abs(d[0]) <= 1e-6 * np.max(weights) * 2 and d[2] == 0
  np.testing.assert_allclose(weights[2], 1, rtol=1e-5)
  # Collinear rows pointing the same way, and more tasks than dimensions without conflict:
  # the equation holds.
  for case in ("collinear", "more_tasks_than_dims"):
    rows = np.array(DEGENERATE[case])
    weights = degenerate[case, name][0]
    np.testing.assert_allclose(weights ** (1 / alpha) * (rows @ rows.T @ weights), 1,
                               rtol=1e-4, err_msg=case)


@pytest.mark.parametrize("name", ["mgda", "upgrad", "nash_mtl"])
def test_one_task(name):
  g = jnp.array([[3.0, 4.0]])
  expected = [3.0, 4.0] if name in ("mgda", "upgrad") else [0.6, 0.8]
  np.testing.assert_allclose(jax.jit(METHODS[name])(g), expected, rtol=1e-5)


# Argument checks.

@pytest.mark.parametrize("name", METHODS)
def test_bad_shapes_are_refused(name):
  with pytest.raises(ValueError, match="square"):
    WEIGHTS[name](jnp.ones((2, 3)))
  with pytest.raises(ValueError, match="square"):
    WEIGHTS[name](jnp.ones((3,)))
  with pytest.raises(ValueError, match="K >= 1"):
    WEIGHTS[name](jnp.ones((0, 0)))
  with pytest.raises(ValueError, match="one row per task"):
    METHODS[name](jnp.ones((3,)))
  with pytest.raises(ValueError, match="one row per task"):
    METHODS[name](jnp.ones((0, 4)))


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("inf"), "one"])
def test_fairgrad_refuses_a_bad_alpha(alpha):
  with pytest.raises(ValueError, match="alpha"):
    fairgrad_weights(jnp.eye(2), alpha=alpha)
  with pytest.raises(ValueError, match="alpha"):
    fairgrad(jnp.eye(2), alpha=alpha)
