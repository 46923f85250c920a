"""The saddle objective and the simplex ascent, against closed forms and brute force."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mmcompress
from mmcompress import simplex_ascent, saddle_objective, saddle_point


def brute_projection(y: np.ndarray) -> np.ndarray:
  """Projection onto the simplex by bisection on the threshold, in float64."""
  y = np.asarray(y, np.float64)
  lo, hi = y.min() - 1.0, y.max()
  for _ in range(200):
    tau = 0.5 * (lo + hi)
    if np.maximum(y - tau, 0).sum() > 1.0:
      lo = tau
    else:
      hi = tau
  return np.maximum(y - 0.5 * (lo + hi), 0)


def assert_kkt(x: np.ndarray, y: np.ndarray, atol: float) -> None:
  """x = argmin ‖x − y‖² on the simplex iff y − x = τ on x > 0 and ≤ τ on x = 0."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  assert np.all(x >= 0) and abs(x.sum() - 1) < 1e-6
  support = x > 1e-7
  tau = np.mean((y - x)[support])
  np.testing.assert_allclose((y - x)[support], tau, atol=atol)
  assert np.all((y - x)[~support] <= tau + atol)


def ascend_once(w, g, lr, **kwargs):
  tx = simplex_ascent(lr, **kwargs)
  u, state = tx.update(jnp.asarray(g), tx.init(w), w)
  return optax.apply_updates(w, u), state


CASES = {
    "k1": (np.array([1.0]), np.array([3.0])),
    "k2": (np.array([0.5, 0.5]), np.array([0.3, -2.0])),
    "k3": (np.array([0.2, 0.3, 0.5]), np.array([1.0, 1.5, -0.5])),
    "ties": (np.full(5, 0.2), np.array([1.0, 1.0, 1.0, -1.0, -1.0])),
    "all_tied": (np.full(4, 0.25), np.full(4, 7.0)),
    "huge": (np.full(6, 1 / 6), 1e6 * np.array([1.0, 3.0, 2.9999, -5.0, 0.5, 3.0])),
    "tiny": (np.full(3, 1 / 3), 1e-8 * np.array([1.0, -2.0, 3.0])),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_euclidean_ascent_is_the_projection(name):
  w, g = (jnp.asarray(v, jnp.float32) for v in CASES[name])
  new_w, _ = ascend_once(w, g, 1.0)
  y = np.asarray(w, np.float64) + np.asarray(g, np.float32).astype(np.float64)
  expected = brute_projection(y)
  # float32 arithmetic: the answer is O(1) even when y is huge, thanks to the shift.
  np.testing.assert_allclose(new_w, expected, atol=2e-6)
  assert np.all(np.asarray(new_w) >= 0) and abs(float(new_w.sum()) - 1) < 1e-6


@pytest.mark.parametrize("k", [1, 2, 3, 20])
def test_euclidean_ascent_random_vectors(k):
  rng = np.random.default_rng(k)
  for scale in (1e-3, 1.0, 30.0):
    w = rng.dirichlet(np.ones(k)).astype(np.float32)
    g = (scale * rng.normal(size=k)).astype(np.float32)
    new_w, _ = ascend_once(jnp.asarray(w), jnp.asarray(g), 0.7)
    y = w.astype(np.float64) + 0.7 * g.astype(np.float64)
    np.testing.assert_allclose(new_w, brute_projection(y), atol=2e-6)
    assert_kkt(new_w, y, atol=1e-5)


def test_entropic_ascent_is_exponentiated_gradient():
  w = jnp.array([0.1, 0.6, 0.3])
  g = jnp.array([2.0, -1.0, 0.5])
  new_w, _ = ascend_once(w, g, 0.3, geometry="entropic")
  expected = np.asarray(w) * np.exp(0.3 * np.asarray(g))
  np.testing.assert_allclose(new_w, expected / expected.sum(), rtol=1e-6)
  # Huge gradients do not overflow.
  new_w, _ = ascend_once(w, jnp.array([1e6, 0.0, -1e6]), 1.0, geometry="entropic")
  np.testing.assert_allclose(new_w, [1.0, 0.0, 0.0], atol=1e-6)


def test_objective_value_and_gradients_match_closed_form():
  losses = jnp.array([0.5, 2.0, 1.0])
  w = jnp.array([0.2, 0.5, 0.3])
  scales = jnp.array([1.0, 1.5, 3.0])
  gamma = 5.0
  value = saddle_objective(losses, w, gamma=gamma, task_scales=scales)
  expected = np.dot(w, scales * losses) - gamma / 2 * np.sum((np.asarray(w) - 1 / 3) ** 2)
  np.testing.assert_allclose(value, expected, rtol=1e-6)
  dw = jax.grad(lambda w_: saddle_objective(losses, w_, gamma=gamma, task_scales=scales))(w)
  np.testing.assert_allclose(dw, scales * losses - gamma * (w - 1 / 3), rtol=1e-6)
  dl = jax.grad(lambda l_: saddle_objective(l_, w, gamma=gamma, task_scales=scales))(losses)
  np.testing.assert_allclose(dl, w * scales, rtol=1e-6)


# Two quadratic tasks L_1 = (x − 0)², L_2 = 4 (x − 3)²: their losses are equal at x = 2, where
# stationarity in x, 2 w_1 x + 8 w_2 (x − 3) = 0, gives w = (2/3, 1/3).
TARGETS, CURVATURES = jnp.array([0.0, 3.0]), jnp.array([1.0, 4.0])


def solve_quadratic_game(gamma, ascent_lr, steps=20000):
  def objective(p):
    losses = CURVATURES * (p["params"] - TARGETS) ** 2
    return saddle_objective(losses, p["task_params"], gamma=gamma)

  tx = saddle_point(optax.sgd(0.02), simplex_ascent(ascent_lr))
  p = {"params": jnp.array(1.0), "task_params": jnp.array([0.5, 0.5])}

  def body(carry, _):
    p, state = carry
    updates, state = tx.update(jax.grad(objective)(p), state, p)
    return (optax.apply_updates(p, updates), state), None

  (p, _), _ = jax.lax.scan(body, (p, tx.init(p)), None, length=steps)
  return float(p["params"]), np.asarray(p["task_params"])


def brute_force_saddle(gamma):
  xs, ts = np.linspace(1.5, 3.0, 3001), np.linspace(0.0, 1.0, 20001)
  losses = np.stack([(xs - 0.0) ** 2, 4 * (xs - 3.0) ** 2], 1)
  w = np.stack([ts, 1 - ts], 1)
  f = losses @ w.T - gamma / 2 * ((w - 0.5) ** 2).sum(1)[None]
  i = f.max(1).argmin()
  return xs[i], w[f[i].argmax()]


def test_descent_ascent_reaches_the_equal_loss_minmax_point():
  x, w = solve_quadratic_game(gamma=0.0, ascent_lr=0.02)
  assert abs(x - 2.0) < 1e-3
  losses = np.asarray(CURVATURES) * (x - np.asarray(TARGETS)) ** 2
  assert abs(losses[0] - losses[1]) < 1e-2
  np.testing.assert_allclose(w, [2 / 3, 1 / 3], atol=1e-3)
  assert brute_force_saddle(0.0)[0] == pytest.approx(2.0, abs=1e-3)


@pytest.mark.parametrize("gamma", [10.0, 40.0])
def test_descent_ascent_matches_brute_force_saddle(gamma):
  x, w = solve_quadratic_game(gamma=gamma, ascent_lr=0.02)
  bx, bw = brute_force_saddle(gamma)
  assert abs(x - bx) < 2e-3
  np.testing.assert_allclose(w, bw, atol=2e-3)


def test_large_gamma_approaches_equal_weighting():
  # Equal weighting minimises x² + 4 (x − 3)²: x = 2.4.
  distances = []
  for gamma in (10.0, 100.0, 1000.0):
    x, w = solve_quadratic_game(gamma=gamma, ascent_lr=1.0 / gamma)
    distances.append(np.abs(w - 0.5).max())
  assert distances[0] > distances[1] > distances[2]
  assert distances[2] < 5e-3 and abs(x - 2.4) < 1e-2


def test_every_n_moves_once_per_n_steps_by_the_mean_gradient():
  n, lr = 4, 0.1
  tx = jax.jit(simplex_ascent(lr, every=n).update)
  w = jnp.array([0.2, 0.3, 0.5])
  state = simplex_ascent(lr, every=n).init(w)
  rng = np.random.default_rng(0)
  grads = rng.normal(size=(3 * n, 3)).astype(np.float32)
  for step, g in enumerate(grads, start=1):
    u, state = tx(jnp.asarray(g), state, w)
    new_w = optax.apply_updates(w, u)
    if step % n:
      np.testing.assert_array_equal(new_w, w)
    else:
      expected = brute_projection(np.asarray(w, np.float64)
                                  + lr * grads[step - n:step].astype(np.float64).mean(0))
      np.testing.assert_allclose(new_w, expected, atol=2e-6)
      assert not np.allclose(new_w, w)
    w = new_w
  assert int(state.num_ascents) == 3 and int(state.count) == 3 * n


def test_learning_rate_schedule_follows_the_number_of_ascents():
  schedule = optax.piecewise_constant_schedule(0.5, {1: 0.0})  # 0.5 for the first ascent only
  tx = simplex_ascent(schedule, every=2)
  w = jnp.array([0.5, 0.5])
  state = tx.init(w)
  g = jnp.array([1.0, 0.0])
  trajectory = []
  for _ in range(4):
    u, state = tx.update(g, state, w)
    w = optax.apply_updates(w, u)
    trajectory.append(np.asarray(w))
  np.testing.assert_allclose(trajectory[1], [0.75, 0.25], atol=1e-6)
  np.testing.assert_allclose(trajectory[3], [0.75, 0.25], atol=1e-6)  # lr 0 at the second


def test_every_step_ascent_keeps_no_window_and_follows_its_schedule():
  schedule = optax.piecewise_constant_schedule(0.5, {1: 0.0})  # 0.5 for the first ascent only
  tx = simplex_ascent(schedule)
  w = jnp.array([0.5, 0.5])
  state = tx.init(w)
  assert state.grad_sum is None and state.num_summed is None
  u, state = tx.update(jnp.array([jnp.nan, 0.0]), state, w)  # skipped: the schedule waits
  w = optax.apply_updates(w, u)
  np.testing.assert_array_equal(w, [0.5, 0.5])
  for _ in range(2):
    u, state = tx.update(jnp.array([1.0, 0.0]), state, w)
    w = optax.apply_updates(w, u)
    np.testing.assert_allclose(w, [0.75, 0.25], atol=1e-6)  # lr 0.5, then 0
  assert (int(state.count), int(state.num_ascents), int(state.num_skipped)) == (3, 2, 1)


def test_non_finite_gradients_never_reach_the_weights():
  w = jnp.array([0.25, 0.75])
  tx = simplex_ascent(0.5)
  state = tx.init(w)
  for bad in (jnp.array([jnp.nan, 1.0]), jnp.array([jnp.inf, 0.0])):
    u, state = tx.update(bad, state, w)
    np.testing.assert_array_equal(optax.apply_updates(w, u), w)
  assert int(state.num_skipped) == 2 and int(state.num_ascents) == 0
  # Within a window, the ascent uses the mean of the finite gradients only.
  tx = simplex_ascent(0.5, every=3)
  state = tx.init(w)
  for g in (jnp.array([0.4, 0.0]), jnp.array([jnp.nan, 0.0]), jnp.array([0.0, 0.2])):
    u, state = tx.update(g, state, w)
  np.testing.assert_allclose(optax.apply_updates(w, u),
                             brute_projection(np.array([0.25, 0.75]) + 0.5 * np.array([0.2, 0.1])),
                             atol=1e-6)
  assert int(state.num_skipped) == 1


def test_jitted_saddle_step_does_not_recompile():
  tx = saddle_point(optax.adam(1e-2), simplex_ascent(0.1))

  @jax.jit
  @chex.assert_max_traces(n=1)  # a second trace raises
  def step(p, state, batch):
    def objective(p):
      losses = jnp.stack([jnp.mean((batch @ p["params"] - t) ** 2) for t in (0.0, 1.0)])
      return saddle_objective(losses, p["task_params"], gamma=1.0)
    updates, state = tx.update(jax.grad(objective)(p), state, p)
    return optax.apply_updates(p, updates), state

  p = {"params": jnp.ones((3,)), "task_params": jnp.array([0.5, 0.5])}
  state = tx.init(p)
  for seed in range(3):
    p, state = step(p, state, jax.random.normal(jax.random.key(seed), (8, 3)))
  assert abs(float(p["task_params"].sum()) - 1) < 1e-6


def test_public_api_exports():
  for name in ("saddle_objective", "simplex_ascent", "saddle_point", "sparsity", "weighting"):
    assert hasattr(mmcompress, name), name


@pytest.mark.parametrize("call, match", [
    (lambda: saddle_objective(jnp.ones(3), jnp.ones(2) / 2, gamma=1.0), "task_weights"),
    (lambda: saddle_objective(jnp.ones(3), jnp.ones(3) / 3, gamma=-1.0), "gamma"),
    (lambda: saddle_objective(jnp.ones(3), jnp.ones(3) / 3, gamma=1.0, task_scales=jnp.ones(2)),
     "task_scales"),
    (lambda: simplex_ascent(0.0), "learning_rate"),
    (lambda: simplex_ascent(-0.1), "learning_rate"),
    (lambda: simplex_ascent(0.1, geometry="mirror"), "geometry"),
    (lambda: simplex_ascent(0.1, every=0), "every"),
    (lambda: simplex_ascent(0.1).init(jnp.ones((2, 2))), "task weights"),
    (lambda: saddle_point(optax.sgd(0.1), simplex_ascent(0.1)).init({"params": 1.0}),
     "task_params"),
    (lambda: saddle_point(optax.sgd(0.1), simplex_ascent(0.1)).init(
        {"params": 1.0, "task_weights": jnp.ones(2) / 2}), r"\['params', 'task_params'\]"),
])
def test_bad_inputs_raise_clear_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()
