"""PCGrad, CAGrad, IMTL-G and Aligned-MTL against computations of their own, in NumPy float64.

The random cases: for each K in 2..6, `CASES` = 6 matrices G of shape (K, 7), rows drawn
normal and scaled by exp(N(0, 1)) (every second case exp(2 N(0, 1))), kept when the Gram
matrix's condition number is <= 1e4 (every second case also >= 1e3), NumPy seed 0. All the
methods run in one jitted call vmapped over a K's cases (compiled once per shape;
`random_weights` caches the answers, which several tests share); the accuracy asked of every
direction is 1e-3 of |d| (float32 against float64).
"""
import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from mmcompress import aggregators

CASES = 6
WIDTH = 7
TASK_COUNTS = (2, 3, 4, 5, 6)
ACCURACY = 1e-3
KEY = jax.random.key(3)
C = 0.4


def well_conditioned(rng, num_tasks, count=CASES, width=WIDTH):
  """`count` random (num_tasks, width) matrices whose Gram matrix has condition <= 1e4, every
  second one with condition >= 1e3 (the edge of what the methods promise 1e-3 on)."""
  cases = []
  while len(cases) < count:
    spread = 2.0 if len(cases) % 2 else 1.0
    G = rng.normal(size=(num_tasks, width)) * np.exp(spread * rng.normal(size=(num_tasks, 1)))
    if (1e3 if len(cases) % 2 else 0.0) <= np.linalg.cond(G @ G.T) <= 1e4:
      cases.append(G)
  return np.stack(cases)


def _make_cases():
  rng = np.random.default_rng(0)
  return {k: well_conditioned(rng, k) for k in TASK_COUNTS}


RANDOM = _make_cases()

def gram(G):
  """G @ G.T at full float32 precision (as the methods compute it), also on a GPU."""
  return jnp.matmul(G, G.T, precision=jax.lax.Precision.HIGHEST)


WEIGHTS = {
    "pcgrad": lambda gram: aggregators.pcgrad_weights(gram, KEY),
    "cagrad": lambda gram: aggregators.cagrad_weights(gram, C),
    "imtl_g": aggregators.imtl_g_weights,
    "aligned_mtl": aggregators.aligned_mtl_weights,
}
ALL_WEIGHTS = jax.jit(jax.vmap(lambda G: {name: f(gram(G)) for name, f in WEIGHTS.items()}))


def all_weights_of(stack):
  """{method: its weights for each G of the (B, K, n) `stack`, in float64}."""
  answers = ALL_WEIGHTS(jnp.asarray(stack, jnp.float32))
  return {name: np.asarray(alpha, np.float64) for name, alpha in answers.items()}


def weights_of(name, stack):
  """The weights of method `name` for each G of the (B, K, n) `stack`, in float64."""
  return all_weights_of(stack)[name]


@functools.lru_cache(maxsize=None)
def _random_answers(num_tasks):
  return all_weights_of(RANDOM[num_tasks])


def random_weights(name, num_tasks):
  """The weights of method `name` for the random cases with K = `num_tasks`, and alpha @ G."""
  alpha = _random_answers(num_tasks)[name]
  return alpha, np.einsum("bk,bkn->bn", alpha, RANDOM[num_tasks])


def assert_close(d, expected, accuracy=ACCURACY):
  error = np.linalg.norm(d - expected, axis=-1)
  scale = np.maximum(np.linalg.norm(expected, axis=-1), 1e-12)
  assert np.all(error <= accuracy * scale), (error / scale).max()


# ------------------------------------------------------------------------------ PCGrad


def pcgrad_reference(G, order):
  """PCGrad on the vectors themselves, in float64: each row projected in `order`."""
  projected = G.copy()
  for i in range(len(G)):
    for j in order:
      dot = projected[i] @ G[j]
      if j != i and dot < 0:
        projected[i] -= dot / (G[j] @ G[j]) * G[j]
  return projected.sum(axis=0)


def test_pcgrad_hand_worked_three_tasks():
  # g1 = (2, 0), g2 = (-1, 1), g3 = (0, -1): g1.g2 = -2, g1.g3 = 0, g2.g3 = -1,
  # |g1|^2 = 4, |g2|^2 = 2, |g3|^2 = 1. Coefficients a_i of row i's projection in (g1, g2, g3):
  # row 1, 2 before 3: vs g2, (2,0) + (2/2)(-1,1) = (1,1), a = (1,1,0); vs g3, (1,1).(0,-1) = -1
  #   so (1,1) + (0,-1) = (1,0), a1 = (1,1,1). 3 before 2: g1.g3 = 0, no change; vs g2,
  #   (1,1), a1 = (1,1,0).
  # row 2, 1 before 3: vs g1, (-1,1) + (2/4)(2,0) = (0,1); vs g3, (0,1) + (0,-1) = (0,0),
  #   a2 = (1/2,1,1). 3 before 1: vs g3, (-1,1) + (0,-1) = (-1,0); vs g1, (-1,0).(2,0) = -2,
  #   (-1,0) + (2/4)(2,0) = (0,0), a2 = (1/2,1,1): the same either way.
  # row 3, 1 before 2: g3.g1 = 0, no change; vs g2, (0,-1) + (1/2)(-1,1) = (-1/2,-1/2),
  #   a3 = (0,1/2,1). 2 before 1: (-1/2,-1/2) first; vs g1, (-1/2,-1/2).(2,0) = -1, so
  #   (-1/2,-1/2) + (1/4)(2,0) = (0,-1/2), a3 = (1/4,1/2,1).
  G = jnp.array([[2.0, 0.0], [-1.0, 1.0], [0.0, -1.0]])
  weights = jax.jit(aggregators.pcgrad_weights)
  seen = set()
  for seed in range(12):
    key = jax.random.key(seed)
    position = np.argsort(np.asarray(jax.random.permutation(key, 3)))
    two_before_three = position[1] < position[2]
    two_before_one = position[1] < position[0]
    a1 = [1, 1, 1] if two_before_three else [1, 1, 0]
    a3 = [0.25, 0.5, 1] if two_before_one else [0, 0.5, 1]
    expected = np.add(np.add(a1, [0.5, 1, 1]), a3)
    seen.add((two_before_three, two_before_one))
    np.testing.assert_allclose(weights(G @ G.T, key), expected, atol=1e-6)
  assert len(seen) >= 3  # the keys reach the different orders


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
def test_pcgrad_against_projecting_the_vectors(num_tasks):
  stack = RANDOM[num_tasks]
  _, d = random_weights("pcgrad", num_tasks)
  order = np.asarray(jax.random.permutation(KEY, num_tasks))
  assert_close(d, np.stack([pcgrad_reference(G, order) for G in stack]))


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
def test_pcgrad_weights_are_at_least_one(num_tasks):
  # Row i's own coefficient stays 1, and each projection adds -g_i.g_j/|g_j|^2 > 0 to g_j's.
  alpha, _ = random_weights("pcgrad", num_tasks)
  assert np.all(alpha >= 1.0)
  assert np.any(alpha > 1.0)  # the random cases do conflict


def test_pcgrad_of_rows_without_conflict_is_their_sum():
  stack = np.abs(RANDOM[4])  # non-negative entries: every dot product is >= 0
  alpha = weights_of("pcgrad", stack)
  np.testing.assert_array_equal(alpha, np.ones_like(alpha))


def test_pcgrad_of_two_tasks_conflicts_with_neither():
  # With K = 2 and g1.g2 < 0, d = p1 + p2 with p1.g2 = p2.g1 = 0, so
  # d.g1 = |g1|^2 - (g1.g2)^2/|g2|^2 >= 0 and likewise d.g2 >= 0.
  stack = RANDOM[2].copy()
  stack[-1] = 0.0
  stack[-1, :, :2] = [[1.0, 0.0], [-2.0, 1.0]]  # one sure conflict (the batch keeps its shape)
  d = np.einsum("bk,bkn->bn", weights_of("pcgrad", stack), stack)
  conflicting = [b for b, G in enumerate(stack) if G[0] @ G[1] < 0]
  assert conflicting
  for b in conflicting:
    G = stack[b]
    dots = G @ d[b]
    cross = G[0] @ G[1]
    np.testing.assert_allclose(dots, np.diag(G @ G.T) - cross**2 / np.diag(G @ G.T)[::-1],
                               rtol=1e-4, atol=1e-5 * np.linalg.norm(G) ** 2)
    assert np.all(dots >= -1e-5 * np.linalg.norm(G) ** 2)


# ------------------------------------------------------------------------------ CAGrad


def cagrad_reference(G, c):
  """The maximiser of min_i g_i.d over |d - g0| <= c|g0|, by SLSQP on (d, t), rescaled."""
  num_tasks, width = G.shape
  g0 = G.mean(axis=0)
  radius = c * np.linalg.norm(g0)
  constraints = [
      {"type": "ineq", "fun": lambda x: G @ x[:width] - x[width],
       "jac": lambda x: np.hstack([G, -np.ones((num_tasks, 1))])},
      {"type": "ineq", "fun": lambda x: radius**2 - np.sum((x[:width] - g0) ** 2),
       "jac": lambda x: np.append(-2.0 * (x[:width] - g0), 0.0)}]
  start = np.append(g0, (G @ g0).min())
  result = optimize.minimize(
      lambda x: -x[width], start, jac=lambda x: np.append(np.zeros(width), -1.0),
      constraints=constraints, method="SLSQP", options={"ftol": 1e-15, "maxiter": 500})
  # At so tight a tolerance SLSQP may stop on a failed line search; its point must be feasible.
  assert np.linalg.norm(result.x[:width] - g0) <= radius * (1 + 1e-6), result.message
  return result.x[:width] / (1.0 + c**2)


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
def test_cagrad_maximises_the_worst_task_over_the_ball(num_tasks):
  stack = RANDOM[num_tasks]
  c = C
  _, d = random_weights("cagrad", num_tasks)
  assert_close(d, np.stack([cagrad_reference(G, c) for G in stack]))
  rng = np.random.default_rng(num_tasks)
  for G, direction in zip(stack, d):
    g0 = G.mean(axis=0)
    radius = c * np.linalg.norm(g0)
    unscaled = direction * (1 + c**2)
    # On the sphere around g0, and no random point of the ball does better for the worst task.
    np.testing.assert_allclose(np.linalg.norm(unscaled - g0), radius, rtol=1e-4)
    samples = rng.normal(size=(2000, G.shape[1]))
    samples *= radius * rng.uniform(size=(2000, 1)) ** (1 / G.shape[1]) / np.linalg.norm(
        samples, axis=1, keepdims=True)
    worst = (G @ unscaled).min()
    assert worst >= (G @ (g0 + samples).T).min(axis=0).max() - 1e-4 * np.linalg.norm(G)


def test_cagrad_with_c_zero_is_the_mean_and_c_one_matches_scipy():
  stack = RANDOM[3]
  stack32 = jnp.asarray(stack, jnp.float32)
  for c in (0.0, 1.0):
    alpha = np.asarray(jax.jit(jax.vmap(lambda G, c=c: aggregators.cagrad_weights(gram(G), c)))(
        stack32), np.float64)
    if c == 0.0:
      np.testing.assert_allclose(alpha, 1 / 3, rtol=1e-6)
    else:
      assert_close(np.einsum("bk,bkn->bn", alpha, stack),
                   np.stack([cagrad_reference(G, c) for G in stack]))


@pytest.mark.parametrize("num_tasks", [3, 5])
def test_cagrad_weights_are_the_formula_in_the_rows(num_tasks):
  # alpha = (1/K + c|g0| w / |g_w|) / (1 + c^2) with w on the simplex: (1 + c^2) alpha - 1/K is
  # a non-negative multiple of w.
  for G, alpha in zip(RANDOM[num_tasks], random_weights("cagrad", num_tasks)[0]):
    w = (1 + C**2) * alpha - 1 / num_tasks
    assert np.all(w >= -1e-6)
    w /= w.sum()
    g0, g_w = G.mean(axis=0), w @ G
    np.testing.assert_allclose((1 + C**2) * alpha, 1 / num_tasks + C * np.linalg.norm(g0) * w
                               / np.linalg.norm(g_w), rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------ IMTL-G


def imtl_g_reference(G):
  """IMTL-G's closed form on the differences to the first task (the paper's), in float64."""
  units = G / np.linalg.norm(G, axis=1, keepdims=True)
  D = G[0] - G[1:]
  U = units[0] - units[1:]
  rest = G[0] @ U.T @ np.linalg.inv(D @ U.T)
  return np.concatenate([[1.0 - rest.sum()], rest])


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
def test_imtl_g_against_the_papers_closed_form(num_tasks):
  stack = RANDOM[num_tasks]
  alpha, d = random_weights("imtl_g", num_tasks)
  expected = np.stack([imtl_g_reference(G) for G in stack])
  assert_close(d, np.einsum("bk,bkn->bn", expected, stack))
  np.testing.assert_allclose(alpha.sum(axis=1), 1.0, rtol=1e-5)
  for G, direction in zip(stack, d):
    projections = G @ direction / np.linalg.norm(G, axis=1)
    np.testing.assert_allclose(projections, projections.mean(), rtol=0,
                               atol=ACCURACY * np.linalg.norm(direction))


# ------------------------------------------------------------------------------ Aligned-MTL


def aligned_mtl_reference(G):
  """Aligned-MTL from the SVD G = U S W^T in float64: aligned rows sigma_min U W^T, summed."""
  U, S, Wt = np.linalg.svd(G, full_matrices=False)
  aligned = S.min() * U @ Wt
  np.testing.assert_allclose(aligned @ aligned.T, S.min() ** 2 * np.eye(len(G)), atol=1e-9
                             * S.max() ** 2)
  return S.min() * U @ (U.T.sum(axis=1) / S), aligned.sum(axis=0)


@pytest.mark.parametrize("num_tasks", TASK_COUNTS)
def test_aligned_mtl_against_the_svd(num_tasks):
  stack = RANDOM[num_tasks]
  alpha, d = random_weights("aligned_mtl", num_tasks)
  references = [aligned_mtl_reference(G) for G in stack]
  assert_close(d, np.stack([r[1] for r in references]))
  assert_close(alpha, np.stack([r[0] for r in references]))


# ------------------------------------------------------------------------------ all four


@pytest.mark.parametrize("name", ["cagrad", "imtl_g", "aligned_mtl"])
def test_permuting_the_rows_permutes_the_weights(name):
  stack = RANDOM[5]
  order = np.array([3, 0, 4, 2, 1])
  alpha, d = random_weights(name, 5)
  permuted = weights_of(name, stack[:, order])
  assert_close(np.einsum("bk,bkn->bn", permuted, stack[:, order]), d)
  if name != "cagrad":
    assert_close(permuted, alpha[:, order])
    return
  # CAGrad's iterative solve pins its weights less tightly than its direction where the Gram
  # matrix's condition exceeds 1e3, as its objective is flat along the small eigenvectors
  # (measured: 1.6e-3 on a case of condition 5.7e3 under one compilation, 1.6e-7 under
  # another): 1e-3 below that condition, 1e-2 above.
  tame = np.array([np.linalg.cond(G @ G.T) < 1e3 for G in stack])
  assert 0 < tame.sum() < len(stack)
  assert_close(permuted[tame], alpha[tame][:, order])
  assert_close(permuted[~tame], alpha[~tame][:, order], accuracy=1e-2)


METHODS = {"pcgrad": lambda G: aggregators.pcgrad(G, KEY),
           "cagrad": lambda G: aggregators.cagrad(G, C),
           "imtl_g": aggregators.imtl_g, "aligned_mtl": aggregators.aligned_mtl}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_vmap_over_a_batch_equals_a_python_loop(name):
  method = jax.jit(METHODS[name])
  looped = np.stack([np.asarray(method(G)) for G in jnp.asarray(RANDOM[4], jnp.float32)])
  np.testing.assert_allclose(random_weights(name, 4)[1], looped, rtol=1e-4, atol=1e-5)


G_ROW = np.array([3.0, 1.0, -2.0, 0.0])
H_ROW = np.array([-1.0, 2.0, 0.5, 0.0])
# Grouped by K, so that each group runs in one vmapped call (zero columns change nothing).
DEGENERATE = {
    1: {"one task": G_ROW[None]},
    2: {"same direction": np.stack([G_ROW, 2.0 * G_ROW]), "opposite": np.stack([G_ROW, -G_ROW]),
        "zero row removed": np.stack([G_ROW, H_ROW])},
    3: {"zero row": np.stack([G_ROW, np.zeros(4), H_ROW]),
        "K > n": np.array([[1.0, 0.2, 0, 0], [0.3, 1.0, 0, 0], [0.5, -0.1, 0, 0]]),
        "all in conflict": np.array([[1.0, 0, 0, 0], [-0.5, 0.8660254, 0, 0],
                                     [-0.5, -0.8660254, 0, 0]]),
        "zero": np.zeros((3, 4))},
}


@functools.lru_cache(maxsize=None)
def _degenerate_answers():
  """{method: {case: (alpha, d)}} on every degenerate input."""
  answers = {name: {} for name in WEIGHTS}
  for cases in DEGENERATE.values():
    for name, alpha in all_weights_of(np.stack(list(cases.values()))).items():
      for (case, G), weights in zip(cases.items(), alpha):
        answers[name][case] = weights, weights @ G
  return answers


def degenerate_weights(name):
  """{case: (alpha, d)} of method `name` on every degenerate input."""
  return _degenerate_answers()[name]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_degenerate_inputs_give_finite_answers(name):
  for case, (alpha, d) in degenerate_weights(name).items():
    assert np.all(np.isfinite(alpha)) and np.all(np.isfinite(d)), case


def test_one_task_gets_its_own_gradient():
  # CAGrad's ball around g0 = g is served best by g + c|g| g/|g|; the others keep g.
  expected = {"pcgrad": 1.0, "cagrad": (1 + C) / (1 + C**2), "imtl_g": 1.0, "aligned_mtl": 1.0}
  for name, weight in expected.items():
    np.testing.assert_allclose(degenerate_weights(name)["one task"][0], [weight], rtol=1e-5)


def test_pcgrad_degenerate_answers():
  answers = degenerate_weights("pcgrad")
  # g and -g project each other to zero (weights 2 and 2); G = 0 gives weights 1.
  np.testing.assert_allclose(answers["opposite"][0], [2, 2])
  np.testing.assert_allclose(answers["opposite"][1], 0.0, atol=1e-6)
  np.testing.assert_allclose(answers["same direction"][0], [1, 1])
  np.testing.assert_allclose(answers["zero"][0], np.ones(3))
  order = np.asarray(jax.random.permutation(KEY, 3))
  for case in ("zero row", "K > n", "all in conflict"):
    G = DEGENERATE[3][case]
    np.testing.assert_allclose(answers[case][1], pcgrad_reference(G, order), atol=1e-5)


def test_cagrad_degenerate_answers():
  answers = degenerate_weights("cagrad")
  zero_row = DEGENERATE[3]["zero row"]
  # The zero row's partners both have g_i.g0 > 0, so g_w.g0 + c|g0||g_w| > 0 off the zero row:
  # w is the zero row, g_w = 0, and the g_w term is dropped: d = g0 / (1 + c^2). The three rows
  # at 120 degrees, g and -g, and G = 0 have g0 = 0, so d = 0.
  np.testing.assert_allclose(answers["zero row"][1], zero_row.mean(0) / (1 + C**2), rtol=1e-5)
  for case in ("all in conflict", "opposite", "zero"):
    np.testing.assert_allclose(answers[case][1], 0.0, atol=1e-6)
  # The rows g and 2g: the worst served is g, so (1 + c^2) d = g0 + c|g0| g/|g|, g0 = 1.5 g.
  np.testing.assert_allclose(answers["same direction"][1], 1.5 * G_ROW * (1 + C) / (1 + C**2),
                             rtol=1e-4, atol=1e-6)
  # K > n with the rows in a half-plane: still the maximiser over the ball.
  assert_close(answers["K > n"][1], cagrad_reference(DEGENERATE[3]["K > n"], C))


def test_imtl_g_degenerate_answers():
  answers = degenerate_weights("imtl_g")
  # A zero row gets weight 0 and leaves the others as without it; g, 2g get the pseudo-inverse's
  # (1/3, 2/3); g, -g and G = 0 have no solution summing to one: uniform weights.
  without = answers["zero row removed"][0]
  np.testing.assert_allclose(answers["zero row"][0], [without[0], 0.0, without[1]], atol=1e-6)
  np.testing.assert_allclose(answers["same direction"][0], [1 / 3, 2 / 3], rtol=1e-5)
  np.testing.assert_allclose(answers["opposite"][0], [0.5, 0.5])
  np.testing.assert_allclose(answers["zero"][0], np.full(3, 1 / 3))
  np.testing.assert_allclose(answers["K > n"][0].sum(), 1.0, rtol=1e-5)


def test_aligned_mtl_degenerate_answers():
  answers = degenerate_weights("aligned_mtl")
  # The rank cut drops a zero row's direction (weight 0, the others as without it); g, 2g keep
  # one eigenvalue, 5|g|^2, so B = v v^T with v = (1, 2)/sqrt(5), alpha = (3, 6)/5, d = 3g;
  # G = 0 keeps nothing.
  without = answers["zero row removed"][0]
  np.testing.assert_allclose(answers["zero row"][0], [without[0], 0.0, without[1]], atol=1e-5)
  np.testing.assert_allclose(answers["same direction"][0], [0.6, 1.2], rtol=1e-5)
  np.testing.assert_allclose(answers["same direction"][1], 3.0 * G_ROW, rtol=1e-5)
  np.testing.assert_allclose(answers["zero"][0], 0.0)


@pytest.mark.parametrize("name", ["pcgrad", "cagrad", "imtl_g", "aligned_mtl"])
def test_shapes_are_checked_with_a_message(name):
  module = importlib.import_module(f"mmcompress.aggregators.{name}")
  weights = getattr(module, f"{name}_weights")
  method = getattr(module, name)
  extra = (KEY,) if name == "pcgrad" else ()
  for bad in (np.ones((2, 3)), np.ones(3), np.ones((0, 0))):
    with pytest.raises(ValueError, match="gram must be a square"):
      weights(bad, *extra)
  for bad in (np.ones(3), np.ones((0, 3))):
    with pytest.raises(ValueError, match="G must be a"):
      method(bad, *extra)


def test_cagrad_checks_c():
  with pytest.raises(ValueError, match="c must be a number >= 0"):
    aggregators.cagrad(np.eye(2), c=-0.1)


def test_lists_and_integers_are_promoted_to_float32():
  np.testing.assert_allclose(aggregators.imtl_g_weights([[1.0, 0.0], [0.0, 4.0]]), [2 / 3, 1 / 3],
                             rtol=1e-6)
  d = aggregators.aligned_mtl(np.array([[1, 0], [0, 2]]))
  assert d.dtype == jnp.float32
  np.testing.assert_allclose(d, [1.0, 1.0], rtol=1e-6)
