"""Every task weighting behind the one interface, against its paper's formula."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mmcompress import saddle_point, weighting
from mmcompress.app import plan as app_plan
from mmcompress.train import stages

LOSSES = jnp.array([0.5, 2.0, 1.0])


LOSS_LEVEL = sorted(n for n in weighting.WEIGHTINGS if weighting.create(n).aggregate is None)
# The loss-level weightings whose objective is a weighted mean of the losses with weights 1/K
# at the start; the others (geometric mean, log-space objectives, random weights) start
# elsewhere and are checked against their own formulas below.
STARTS_AT_THE_MEAN = ("dwa", "equal", "minmax", "uncertainty")
KEY = jax.random.key(0)


def test_the_mean_starting_weightings_are_registered():
  assert set(STARTS_AT_THE_MEAN) <= set(LOSS_LEVEL)


@pytest.mark.parametrize("name", LOSS_LEVEL)
def test_weights_start_on_the_simplex_and_the_mean_weightings_at_the_mean_loss(name):
  w = weighting.create(name)
  task_params, task_state = w.init(3)
  value = w.objective(LOSSES, task_params, task_state, KEY)
  assert value.shape == () and np.isfinite(float(value))
  if name in STARTS_AT_THE_MEAN:
    np.testing.assert_allclose(value, LOSSES.mean(), rtol=1e-6)
  weights = np.asarray(w.weights(task_params, task_state))
  assert weights.shape == (3,) and np.all(weights >= 0)
  np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-6)
  if name in STARTS_AT_THE_MEAN:
    np.testing.assert_allclose(weights, np.full(3, 1 / 3), rtol=1e-6)


@pytest.mark.parametrize("name", LOSS_LEVEL)
def test_one_jitted_step_through_saddle_point(name):
  """A trainer drives any weighting the same way; the model gets Σ_k w_k ∂L_k/∂W."""
  w = weighting.create(name)
  task_params, task_state = w.init(2)
  tx = saddle_point(optax.sgd(0.1), w.tx)
  targets = jnp.array([1.0, -2.0])

  @jax.jit
  def step(p, opt_state, task_state, key):
    def objective(p):
      losses = (p["params"] - targets) ** 2
      return w.objective(losses, p["task_params"], task_state, key), losses
    grads, losses = jax.grad(objective, has_aux=True)(p)
    updates, opt_state = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, w.observe(task_state, losses), losses

  p = {"params": jnp.zeros(2), "task_params": task_params}
  opt_state = tx.init(p)
  first, _, _, _ = step(p, opt_state, task_state, KEY)
  # The chain rule by hand: task k's loss depends on params[k] only, ∂L_k/∂W_k = −2 t_k at
  # W = 0, so one SGD step of 0.1 moves W_k by 0.2 · c_k · t_k, c_k the objective's
  # derivative in L_k (the weight the method gives task k at these losses).
  c = jax.grad(lambda losses: w.objective(losses, task_params, task_state, KEY))(targets ** 2)
  np.testing.assert_allclose(first["params"], 0.2 * c * targets, rtol=1e-5)
  if name in STARTS_AT_THE_MEAN:
    # Σ_k w_k ∂L_k/∂W at w = 1/K: task k's loss depends on params[k] only, so one SGD step
    # of 0.1 from 0 gives 0.1 · (1/2) · 2 · targets.
    np.testing.assert_allclose(first["params"], 0.1 * targets, rtol=1e-5)
  for i in range(3):
    before = p
    p, opt_state, task_state, losses = step(p, opt_state, task_state, jax.random.key(i))
    task_state = w.end_epoch(task_state, losses)
  weights = w.weights(before["task_params"], task_state)
  assert np.all(np.isfinite(np.asarray(p["params"])))
  assert abs(float(jnp.sum(weights)) - 1) < 1e-6


def test_uncertainty_log_variances_descend_to_log_loss():
  w = weighting.uncertainty(learning_rate=0.05)
  log_vars, state = w.init(3)
  opt_state = w.tx.init(log_vars)
  grad = jax.jit(jax.grad(lambda s: w.objective(LOSSES, s, state)))
  for _ in range(2000):
    updates, opt_state = w.tx.update(grad(log_vars), opt_state, log_vars)
    log_vars = optax.apply_updates(log_vars, updates)
  np.testing.assert_allclose(log_vars, np.log(LOSSES), atol=1e-2)
  # Effective weights ∝ exp(−s) = 1 / L: the task with the smallest loss weighs most.
  np.testing.assert_allclose(w.weights(log_vars, state), (1 / LOSSES) / (1 / LOSSES).sum(),
                             atol=1e-2)


def test_dwa_weights_follow_the_loss_ratio_of_the_last_two_epochs():
  w = weighting.dwa(temperature=2.0)
  task_params, state = w.init(3)
  epochs = [np.array([1.0, 2.0, 4.0]), np.array([0.9, 1.0, 4.0]), np.array([0.45, 1.0, 2.0])]
  state = w.end_epoch(state, jnp.asarray(epochs[0]))
  np.testing.assert_allclose(w.weights(task_params, state), np.full(3, 1 / 3), rtol=1e-6)
  state = w.end_epoch(state, jnp.asarray(epochs[1]))
  ratio = epochs[1] / epochs[0]
  expected = np.exp(ratio / 2) / np.exp(ratio / 2).sum()
  np.testing.assert_allclose(w.weights(task_params, state), expected, rtol=1e-6)
  state = w.end_epoch(state, jnp.asarray(epochs[2]))
  ratio = epochs[2] / epochs[1]
  expected = np.exp(ratio / 2) / np.exp(ratio / 2).sum()
  np.testing.assert_allclose(w.weights(task_params, state), expected, rtol=1e-6)
  np.testing.assert_allclose(w.objective(LOSSES, task_params, state), expected @ LOSSES,
                             rtol=1e-6)
  # The weights are constants for the gradient: ∂/∂L is exactly the weights.
  np.testing.assert_allclose(jax.grad(lambda l: w.objective(l, task_params, state))(LOSSES),
                             expected, rtol=1e-6)


def test_minmax_weighting_ascends_toward_the_largest_scaled_loss():
  w = weighting.minmax(learning_rate=0.1, gamma=0.0, task_scales=[1.0, 1.0, 4.0])
  task_weights, state = w.init(3)
  grad = jax.grad(lambda tw: w.objective(LOSSES, tw, state))(task_weights)
  np.testing.assert_allclose(grad, LOSSES * jnp.array([1.0, 1.0, 4.0]), rtol=1e-6)
  updates, _ = w.tx.update(grad, w.tx.init(task_weights), task_weights)
  new_w = optax.apply_updates(task_weights, updates)
  assert int(jnp.argmax(new_w)) == 2  # 4 × 1.0 beats 2.0: scales decide what "worst" means


def _dwa_after(epochs, reduction):
  w = weighting.dwa(temperature=2.0, reduction=reduction)
  task_params, state = w.init(3)
  for losses in epochs:
    state = w.end_epoch(state, jnp.asarray(losses))
  return w, task_params, state


def test_reference_reduction_is_the_reference_codes_sums():
  losses = np.array([0.5, 2.0, 1.0])
  # Equal: the plain sum; "mean" is that sum over K.
  equal_ref, equal_mean = weighting.equal(reduction="reference"), weighting.equal()
  for w, expected in ((equal_ref, 3.5), (equal_mean, 3.5 / 3)):
    task_params, state = w.init(3)
    np.testing.assert_allclose(w.objective(LOSSES, task_params, state), expected, rtol=1e-6)
  # DWA: Σ_k K·softmax(r / T)_k L_k, written out by hand for r = (0.5, 1, 2), T = 2.
  epochs = [np.array([2.0, 1.0, 1.0]), np.array([1.0, 1.0, 2.0])]
  e = np.exp(np.array([0.25, 0.5, 1.0]))
  by_hand = float(np.sum(3 * e / e.sum() * losses))
  w, task_params, state = _dwa_after(epochs, "reference")
  np.testing.assert_allclose(w.objective(LOSSES, task_params, state), by_hand, rtol=1e-6)
  np.testing.assert_allclose(w.weights(task_params, state), e / e.sum(), rtol=1e-6)
  w, task_params, state = _dwa_after(epochs, "mean")
  np.testing.assert_allclose(w.objective(LOSSES, task_params, state), by_hand / 3, rtol=1e-6)
  # Uncertainty: Σ_k ½ e^{-s_k} L_k + s_k / 2, from the reference's start s = -0.5 and at
  # another point.
  w = weighting.uncertainty(reduction="reference", init_log_var=-0.5)
  log_vars, state = w.init(3)
  np.testing.assert_allclose(log_vars, [-0.5, -0.5, -0.5])
  for s in (np.full(3, -0.5), np.array([0.3, -1.0, 2.0])):
    by_hand = sum(0.5 * math.exp(-s_k) * l_k + s_k / 2 for s_k, l_k in zip(s, losses))
    np.testing.assert_allclose(w.objective(LOSSES, jnp.asarray(s, jnp.float32), state),
                               by_hand, rtol=1e-6)
    mean = weighting.uncertainty()
    np.testing.assert_allclose(mean.objective(LOSSES, jnp.asarray(s, jnp.float32), state),
                               by_hand * 2 / 3, rtol=1e-6)


def _config(**fields):
  c = ml_collections.ConfigDict({
      "task_scales": (), "loss_reduction": "mean",
      "minmax": {"learning_rate": 0.02, "gamma": 5.0, "every": "step",
                 "geometry": "euclidean"},
      "uncertainty": {"learning_rate": 0.01, "init_log_var": 0.0},
      "dwa": {"temperature": 2.0}})
  c.update(fields)
  return c


@pytest.mark.parametrize("name, factor", [("equal", 3.0), ("dwa", 3.0), ("uncertainty", 1.5),
                                          ("minmax", 1.0)])
def test_config_loss_reduction_reaches_every_weighting_but_minmax(name, factor):
  """At the start, "reference" is K (uncertainty: K/2) times "mean"; min-max is unchanged."""
  values = {}
  for reduction in weighting.REDUCTIONS:
    w = stages.make_weighting(name, app_plan.trainer(_config(loss_reduction=reduction)), 1)
    task_params, state = w.init(3)
    values[reduction] = float(w.objective(LOSSES, task_params, state))
  np.testing.assert_allclose(values["mean"], float(LOSSES.mean()), rtol=1e-6)
  np.testing.assert_allclose(values["reference"], factor * values["mean"], rtol=1e-6)


def test_config_loss_reduction_is_checked():
  with pytest.raises(ValueError, match="loss_reduction"):
    stages.make_weighting("minmax", app_plan.trainer(_config(loss_reduction="sum")), 1)


@pytest.mark.parametrize("call, match", [
    (lambda: weighting.create("gradnorm"), "weighting"),
    (lambda: weighting.dwa(temperature=0.0), "temperature"),
    (lambda: weighting.minmax(gamma=-1.0), "gamma"),
    (lambda: weighting.minmax(learning_rate=0.0), "learning_rate"),
    (lambda: weighting.minmax(task_scales=[1.0, -1.0]), "task_scales"),
    (lambda: weighting.equal().init(0), "num_tasks"),
    (lambda: weighting.dwa(reduction="sum"), "loss_reduction"),
    (lambda: weighting.uncertainty(init_log_var=float("nan")), "init_log_var"),
])
def test_bad_inputs(call, match):
  with pytest.raises(ValueError, match=match):
    call()
