"""RLW, GLS, STCH, FAMO and min-max with automatic scales, each against its defining formula
written out in NumPy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import base as base_config
from mmcompress import weighting
from mmcompress.app import plan as app_plan
from mmcompress.train import stages

LOSSES = np.array([0.5, 2.0, 1.0], np.float32)
SCALES = np.array([1.0, 0.5, 3.0], np.float32)


def _softmax(x):
  e = np.exp(x - np.max(x))
  return e / e.sum()


def _grad_wrt_losses(w, losses, task_params, task_state, key=None):
  return np.asarray(jax.grad(lambda l: w.objective(l, task_params, task_state, key))(
      jnp.asarray(losses)))


def _config(**fields):
  config = base_config.get_base_config()
  config.update(fields)
  return config


# ----------------------------------------------------------------------------- RLW


def test_rlw_weights_are_the_softmax_of_the_keys_normal_draws():
  w = weighting.rlw(task_scales=SCALES)
  task_params, state = w.init(3)
  for seed in range(3):
    key = jax.random.key(seed)
    draws = _softmax(np.asarray(jax.random.normal(key, (3,)), np.float64))
    np.testing.assert_allclose(w.objective(LOSSES, task_params, state, key),
                               np.sum(draws * SCALES * LOSSES), rtol=1e-6)
    np.testing.assert_allclose(_grad_wrt_losses(w, LOSSES, task_params, state, key),
                               draws * SCALES, rtol=1e-6)


def test_rlw_weights_average_to_one_over_k_and_logs_that_expectation():
  w = weighting.rlw()
  task_params, state = w.init(3)
  keys = jax.random.split(jax.random.key(1), 4000)
  draws = np.asarray(jax.vmap(
      jax.grad(lambda l, k: w.objective(l, task_params, state, k)), in_axes=(None, 0))(
          jnp.asarray(LOSSES), keys))
  np.testing.assert_allclose(draws.sum(1), 1.0, rtol=1e-5)
  # One weight's standard deviation is about 0.2, so over 4000 draws the mean's standard
  # error is about 0.003: 0.015 is five of them.
  np.testing.assert_allclose(draws.mean(0), np.full(3, 1 / 3), atol=0.015)
  assert np.std(draws[:, 0]) > 0.1  # really random, not 1/K every time
  np.testing.assert_allclose(w.weights(task_params, state), np.full(3, 1 / 3), rtol=1e-6)


def test_rlw_without_a_key_says_it_needs_one():
  w = weighting.rlw()
  task_params, state = w.init(3)
  with pytest.raises(ValueError, match="key"):
    w.objective(LOSSES, task_params, state)


# ----------------------------------------------------------------------------- GLS


def test_gls_is_the_geometric_mean_and_its_gradient():
  w = weighting.gls(task_scales=SCALES)
  task_params, state = w.init(3)
  geometric = np.prod(SCALES.astype(np.float64) * LOSSES) ** (1 / 3)
  np.testing.assert_allclose(w.objective(LOSSES, task_params, state), geometric, rtol=1e-6)
  # ∂/∂L_k (Π_j c_j L_j)^(1/K) = G / (K L_k): the scales cancel.
  np.testing.assert_allclose(_grad_wrt_losses(w, LOSSES, task_params, state),
                             geometric / (3 * LOSSES), rtol=1e-5)
  # No overflow where the product would: 1e30 ** 3 is beyond float32.
  big = jnp.full((3,), 1e30, jnp.float32)
  np.testing.assert_allclose(weighting.gls().objective(big, {}, state), 1e30, rtol=1e-5)


def test_gls_logs_the_normalised_gradient_of_the_last_step():
  w = weighting.gls(task_scales=SCALES)
  task_params, state = w.init(3)
  np.testing.assert_allclose(w.weights(task_params, state), np.full(3, 1 / 3), rtol=1e-6)
  state = w.observe(state, jnp.asarray(LOSSES))
  grad = _grad_wrt_losses(w, LOSSES, task_params, state)
  np.testing.assert_allclose(w.weights(task_params, state), grad / grad.sum(), rtol=1e-5)
  inverse = 1 / LOSSES
  np.testing.assert_allclose(w.weights(task_params, state), inverse / inverse.sum(), rtol=1e-6)


# ----------------------------------------------------------------------------- STCH

# Two warm-up epochs of three steps each: the nadir is the second epoch's mean.
STCH_EPOCHS = [
    np.array([[4.0, 2.0, 3.0], [3.0, 2.5, 2.0], [5.0, 1.5, 2.5]], np.float32),
    np.array([[2.0, 1.0, 1.5], [1.0, 2.0, 0.5], [3.0, 0.6, 1.0]], np.float32),
]


def _stch_warmed_up(reduction="mean", mu=0.5, task_scales=None):
  w = weighting.stch(mu, 2, task_scales=task_scales, reduction=reduction)
  task_params, state = w.init(3)
  for epoch, steps in enumerate(STCH_EPOCHS):
    for losses in steps:
      # During the warm-up: the mean (the reference: the sum) of the log-losses, 1/K weights.
      scaled = losses.astype(np.float64) * (1.0 if task_scales is None else task_scales)
      warmup = np.sum(np.log(scaled))
      np.testing.assert_allclose(w.objective(losses, task_params, state),
                                 warmup if reduction == "reference" else warmup / 3,
                                 rtol=1e-6)
      np.testing.assert_allclose(w.weights(task_params, state), np.full(3, 1 / 3))
      state = w.observe(state, jnp.asarray(losses))
    # A different epoch mean: the nadir comes from the observed steps, not from this.
    state = w.end_epoch(state, jnp.full((3,), 100.0 + epoch))
  return w, task_params, state


@pytest.mark.parametrize("reduction, factor", [("mean", 1.0), ("reference", 3.0)])
def test_stch_after_the_warm_up_is_the_smoothed_max_over_its_nadir(reduction, factor):
  mu = 0.5
  w, task_params, state = _stch_warmed_up(reduction, mu)
  nadir = STCH_EPOCHS[-1].astype(np.float64).mean(0)
  np.testing.assert_allclose(state.nadir, nadir, rtol=1e-6)
  ratios = np.log(LOSSES / nadir) / mu
  smooth_max = mu * np.log(np.sum(np.exp(ratios)))
  np.testing.assert_allclose(w.objective(LOSSES, task_params, state), factor * smooth_max,
                             rtol=1e-5)
  # ∂/∂L_k = softmax(log(L/z)/μ)_k / L_k: the weights on the log-losses, times K by reference.
  np.testing.assert_allclose(_grad_wrt_losses(w, LOSSES, task_params, state),
                             factor * _softmax(ratios) / LOSSES, rtol=1e-5)
  state = w.observe(state, jnp.asarray(LOSSES))
  np.testing.assert_allclose(w.weights(task_params, state), _softmax(ratios), rtol=1e-5)
  # Later epochs keep the nadir.
  np.testing.assert_allclose(w.end_epoch(state, jnp.asarray(LOSSES)).nadir, nadir, rtol=1e-6)


def test_stch_scales_change_no_gradient():
  plain, task_params, plain_state = _stch_warmed_up()
  scaled, _, scaled_state = _stch_warmed_up(task_scales=SCALES)
  np.testing.assert_allclose(scaled_state.nadir, SCALES * plain_state.nadir, rtol=1e-6)
  np.testing.assert_allclose(_grad_wrt_losses(scaled, LOSSES, task_params, scaled_state),
                             _grad_wrt_losses(plain, LOSSES, task_params, plain_state),
                             rtol=1e-5)


def test_stch_nadir_falls_back_to_the_epoch_mean_when_no_step_was_observed():
  w = weighting.stch(1.0, 1)
  task_params, state = w.init(3)
  state = w.end_epoch(state, jnp.asarray(LOSSES))
  np.testing.assert_allclose(state.nadir, LOSSES)
  np.testing.assert_allclose(w.objective(LOSSES, task_params, state), np.log(3.0), rtol=1e-6)


# ----------------------------------------------------------------------------- min-max auto


def test_minmax_auto_scales_are_the_first_steps_mean_over_each_loss_and_stay_fixed():
  gamma = 0.5
  w = weighting.minmax_auto(gamma=gamma)
  task_weights, state = w.init(3)
  first, later = LOSSES, np.array([0.8, 1.0, 1.5], np.float32)
  scales = first.mean() / first  # c_k = mean(L) / L_k of the first step
  # The first step scales by its own losses: every scaled loss is mean(L), the objective the
  # mean loss, the gradient (1/K) c.
  np.testing.assert_allclose(w.objective(first, task_weights, state), first.mean(), rtol=1e-6)
  np.testing.assert_allclose(_grad_wrt_losses(w, first, task_weights, state), scales / 3,
                             rtol=1e-6)
  state = w.observe(state, jnp.asarray(first))
  np.testing.assert_allclose(state.scales, scales, rtol=1e-6)
  # Later steps: the saddle objective with those fixed scales.
  tw = np.array([0.5, 0.2, 0.3], np.float32)
  spread = tw - 1 / 3
  by_hand = np.sum(tw * scales * later) - gamma / 2 * np.dot(spread, spread)
  np.testing.assert_allclose(w.objective(later, jnp.asarray(tw), state), by_hand, rtol=1e-6)
  ascent = jax.grad(lambda v: w.objective(jnp.asarray(later), v, state))(jnp.asarray(tw))
  np.testing.assert_allclose(ascent, scales * later - gamma * spread, rtol=1e-5)
  for losses in (later, 2 * later):
    state = w.observe(state, jnp.asarray(losses))
    np.testing.assert_allclose(state.scales, scales, rtol=1e-6)


def test_minmax_auto_from_config_ignores_the_fixed_scales_and_minmax_is_unchanged():
  config = _config(task_scales=(1.0, 5.0, 9.0))
  auto = stages.make_weighting("minmax_auto", app_plan.trainer(config), 1)
  plain = stages.make_weighting("minmax", app_plan.trainer(config), 1)
  assert (auto.name, plain.name) == ("minmax_auto", "minmax")
  auto_weights, auto_state = auto.init(3)
  plain_weights, plain_state = plain.init(3)
  assert plain_state == ()  # min-max with fixed scales keeps no memory, as before
  np.testing.assert_allclose(auto.objective(LOSSES, auto_weights, auto_state), LOSSES.mean(),
                             rtol=1e-6)
  np.testing.assert_allclose(plain.objective(LOSSES, plain_weights, plain_state),
                             np.dot([1.0, 5.0, 9.0], LOSSES) / 3, rtol=1e-6)


# ----------------------------------------------------------------------------- FAMO


def _adam_with_l2(param, grad, m, v, t, lr, gamma, b1=0.9, b2=0.999, eps=1e-8):
  """torch.optim.Adam's step with weight_decay: the decay is added to the gradient."""
  g = grad + gamma * param
  m = b1 * m + (1 - b1) * g
  v = b2 * v + (1 - b2) * g * g
  m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
  return param - lr * m_hat / (np.sqrt(v_hat) + eps), m, v


def test_famo_logits_take_adam_steps_on_the_softmax_jacobian_of_the_log_loss_decrease():
  lr, gamma, eps = 0.1, 0.1, 1e-8
  floor = np.array([0.1, 0.0, 0.2])
  w = weighting.famo(lr, gamma, min_losses=floor)
  task_params, state = w.init(3)
  observed = [np.array([2.0, 1.0, 0.9]), np.array([1.0, 0.9, 0.8]),
              np.array([0.9, 0.4, 0.7])]
  xi, m, v = np.zeros(3), np.zeros(3), np.zeros(3)
  for t, losses in enumerate(observed):
    state = w.observe(state, jnp.asarray(losses, jnp.float32))
    if t == 0:  # the first observe only stores the losses
      np.testing.assert_array_equal(state.logits, np.zeros(3))
      continue
    delta = np.log(observed[t - 1] - floor + eps) - np.log(losses - floor + eps)
    z = _softmax(xi)
    jacobian = np.diag(z) - np.outer(z, z)  # of softmax at ξ, symmetric
    xi, m, v = _adam_with_l2(xi, jacobian.T @ delta, m, v, t, lr, gamma)
    np.testing.assert_allclose(state.logits, xi, rtol=1e-5, atol=1e-7)
  z = _softmax(xi)
  np.testing.assert_allclose(w.weights(task_params, state), z, rtol=1e-5)
  # The objective Σ z log D / c and its gradient z_k / (c D_k), c = Σ z / D held constant.
  d = LOSSES - floor + eps
  c = np.sum(z / d)
  np.testing.assert_allclose(w.objective(LOSSES, task_params, state),
                             np.sum(z * np.log(d)) / c, rtol=1e-5)
  grad = _grad_wrt_losses(w, LOSSES, task_params, state)
  np.testing.assert_allclose(grad, z / (c * d), rtol=1e-5)
  np.testing.assert_allclose(grad.sum(), 1.0, rtol=1e-5)


def test_famo_gives_weight_to_the_task_whose_loss_fell_least():
  w = weighting.famo()
  task_params, state = w.init(2)
  for step in range(20):  # task 0 halves every step, task 1 stays
    state = w.observe(state, jnp.array([0.5 ** step, 1.0]))
  z = np.asarray(w.weights(task_params, state))
  assert z[1] > 0.6 > 0.4 > z[0]


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", ["rlw", "gls", "famo", "minmax_auto"])
def test_weightings_without_a_reduction_ignore_it(name):
  key = jax.random.key(3)
  values = []
  for reduction in weighting.REDUCTIONS:
    w = stages.make_weighting(name, app_plan.trainer(_config(loss_reduction=reduction)), 1)
    task_params, state = w.init(3)
    values.append(float(w.objective(LOSSES, task_params, state, key)))
  assert values[0] == values[1]


def test_config_sections_reach_stch_and_famo():
  config = _config()
  config.stch.mu, config.stch.warmup_epochs = 0.25, 7
  config.famo.w_lr, config.famo.gamma, config.famo.min_losses = 0.5, 0.0, (0.1, 0.2, 0.3)
  stch = stages.make_weighting("stch", app_plan.trainer(config), 1)
  _, state = stch.init(3)
  for _ in range(6):
    state = stch.end_epoch(state, jnp.asarray(LOSSES))
  # Still warming up after 6 of the configured 7 epochs (the default 4 would not be):
  np.testing.assert_allclose(stch.objective(2 * LOSSES, {}, state),
                             np.mean(np.log(2 * LOSSES)), rtol=1e-5)
  state = stch.end_epoch(state, jnp.asarray(LOSSES))
  np.testing.assert_allclose(stch.objective(2 * LOSSES, {}, state),
                             0.25 * np.log(3 * np.exp(np.log(2.0) / 0.25)), rtol=1e-5)
  famo = stages.make_weighting("famo", app_plan.trainer(config), 1)
  _, state = famo.init(3)
  for losses in (LOSSES, LOSSES / 2):
    state = famo.observe(state, jnp.asarray(losses))
  by_hand = weighting.famo(0.5, 0.0, min_losses=(0.1, 0.2, 0.3))
  _, expected = by_hand.init(3)
  for losses in (LOSSES, LOSSES / 2):
    expected = by_hand.observe(expected, jnp.asarray(losses))
  np.testing.assert_allclose(state.logits, expected.logits, rtol=1e-6)
  assert not np.allclose(state.logits, 0.0)


@pytest.mark.parametrize("call, match", [
    (lambda: weighting.stch(mu=0.0), "stch.mu"),
    (lambda: weighting.stch(warmup_epochs=0), "stch.warmup_epochs"),
    (lambda: weighting.stch(reduction="sum"), "loss_reduction"),
    (lambda: weighting.famo(w_lr=-1.0), "famo.w_lr"),
    (lambda: weighting.famo(gamma=-1.0), "famo.gamma"),
    (lambda: weighting.famo(min_losses=(-1.0, 0.0)), "famo.min_losses"),
    (lambda: weighting.famo(min_losses=(0.0, 0.0)).init(3), "famo.min_losses"),
    (lambda: weighting.minmax(task_scales="automatic"), "task_scales"),
    (lambda: weighting.gls(task_scales=[1.0, 0.0]), "task_scales"),
    (lambda: weighting.rlw(task_scales=[-1.0]), "task_scales"),
])
def test_bad_inputs_name_their_field(call, match):
  with pytest.raises(ValueError, match=match):
    call()
