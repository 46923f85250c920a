"""The gradient-level glue: per-task gradients from one VJP, the Gram-based `aggregate`
transform, DB-MTL's aggregator, and their composition with the sparse wrappers."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmcompress import sparsity, weighting

K = 3
_RNG = np.random.default_rng(0)
_X = jnp.asarray(_RNG.normal(size=(16, 5)), jnp.float32)
_Y = jnp.asarray(_RNG.normal(size=(K, 16)), jnp.float32)


def _params():
  rng = np.random.default_rng(1)
  f32 = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731
  return {"trunk": {"kernel": f32(5, 6), "bias": f32(6)},
          **{f"head_{k}": {"kernel": f32(6, 1), "bias": f32(1)} for k in range(K)}}


def _task_losses(params):
  """K regressions on one shared tanh layer, each task through its own head."""
  h = jnp.tanh(_X @ params["trunk"]["kernel"] + params["trunk"]["bias"])
  return jnp.stack([jnp.mean((h @ params[f"head_{k}"]["kernel"] + params[f"head_{k}"]["bias"]
                              )[:, 0] - _Y[k]) ** 2 for k in range(K)])


def _flat_rows(stacked, keys):
  """The (K, n) matrix of the stacked gradients of the leaves under `keys`, in float64."""
  return np.concatenate([np.asarray(stacked[a][b], np.float64).reshape(K, -1)
                         for a, b in keys], axis=1)


TRUNK = [("trunk", "bias"), ("trunk", "kernel")]


@pytest.mark.parametrize("mode", weighting.GRAD_MODES)
def test_per_task_grads_equal_k_separate_grads_and_heads_get_only_their_own_task(mode):
  params = _params()
  values, stacked, aux = jax.jit(lambda p: weighting.per_task_grads(
      lambda q: (_task_losses(q), jnp.sum(q["trunk"]["bias"])), p, has_aux=True,
      mode=mode))(params)
  np.testing.assert_allclose(values, _task_losses(params), rtol=1e-6)
  np.testing.assert_allclose(aux, jnp.sum(params["trunk"]["bias"]), rtol=1e-6)
  for k in range(K):
    separate = jax.grad(lambda p, k=k: _task_losses(p)[k])(params)
    jax.tree.map(lambda s, g, k=k: np.testing.assert_allclose(s[k], g, rtol=1e-5, atol=1e-7),
                 stacked, separate)
    for j in range(K):  # head j's rows are exactly zero for every other task
      if j != k:
        assert not np.any(np.asarray(stacked[f"head_{j}"]["kernel"][k]))


def test_per_task_grads_rejects_a_scalar_objective_and_an_unknown_mode():
  with pytest.raises(ValueError, match=r"\(K,\) vector"):
    weighting.per_task_grads(lambda p: jnp.sum(p ** 2), jnp.ones(3))
  with pytest.raises(ValueError, match="mode must be one of"):
    weighting.per_task_grads(lambda p: p ** 2, jnp.ones(3), mode="loop")


def test_auto_unrolls_up_to_its_task_count_and_vmaps_beyond():
  # Which program `auto` builds: K gradient calls unrolled (K dot products of the input with
  # each row's cotangent) or one vmapped backward pass.
  for num_tasks in (weighting.UNROLL_MAX_TASKS, weighting.UNROLL_MAX_TASKS + 1):
    fn = lambda p, n=num_tasks: jnp.tanh(jnp.arange(1.0, n + 1.0) * jnp.sum(p))
    jaxpr = str(jax.make_jaxpr(lambda p: weighting.per_task_grads(fn, p)[1])(jnp.ones(3)))
    unrolled = str(jax.make_jaxpr(lambda p: weighting.per_task_grads(
        fn, p, mode="unrolled")[1])(jnp.ones(3)))
    vmapped = str(jax.make_jaxpr(lambda p: weighting.per_task_grads(
        fn, p, mode="vmap")[1])(jnp.ones(3)))
    assert unrolled != vmapped
    assert jaxpr == (unrolled if num_tasks <= weighting.UNROLL_MAX_TASKS else vmapped)


def _recording_weights(gram, key):
  """Weights from the Gram matrix that depend on every entry of it (and not on the key)."""
  del key
  return jax.nn.softmax(gram @ jnp.arange(1.0, K + 1.0) / jnp.trace(gram))


def test_aggregate_uses_the_gram_of_the_shared_leaves_and_gives_heads_their_own_gradient():
  params = _params()
  _, stacked = weighting.per_task_grads(_task_losses, params)
  tx = weighting.aggregate(_recording_weights, K)
  update, state = jax.jit(tx.update)(stacked, tx.init(params), params)
  # Independently: the (K, n) matrix of the trunk's gradients, its Gram matrix in float64.
  rows = _flat_rows(stacked, TRUNK)
  gram = rows @ rows.T
  alpha = np.asarray(_recording_weights(jnp.asarray(gram, jnp.float32), None), np.float64)
  for a, b in TRUNK:
    want = np.tensordot(alpha, np.asarray(stacked[a][b], np.float64), axes=1)
    np.testing.assert_allclose(update[a][b], want, rtol=1e-4, atol=1e-7)
  for k in range(K):  # the heads: their own task's gradient, unweighted
    own = jax.grad(lambda p, k=k: _task_losses(p)[k])(params)[f"head_{k}"]
    jax.tree.map(lambda u, g: np.testing.assert_allclose(u, g, rtol=1e-5, atol=1e-7),
                 update[f"head_{k}"], own)
  np.testing.assert_allclose(state.task_weights, alpha / alpha.sum(), rtol=1e-5)
  assert int(state.count) == 1


def test_aggregate_rejects_gradients_without_the_task_axis():
  params = _params()
  tx = weighting.aggregate(_recording_weights, K)
  with pytest.raises(ValueError, match="stacked per-task gradients"):
    tx.update(jax.grad(lambda p: jnp.sum(_task_losses(p)))(params), tx.init(params), params)


def test_aggregate_hands_a_new_key_to_the_weights_every_step():
  params = _params()
  _, stacked = weighting.per_task_grads(_task_losses, params)
  tx = weighting.aggregate(lambda gram, key: jax.random.uniform(key, (K,)), K, seed=3)
  state = tx.init(params)
  seen = []
  for _ in range(3):
    _, state = tx.update(stacked, state, params)
    seen.append(np.asarray(state.task_weights))
  assert not np.allclose(seen[0], seen[1]) and not np.allclose(seen[1], seen[2])


def test_db_mtl_against_its_moving_average_by_hand():
  beta, sigma = 0.6, 0.5
  params = _params()
  tx = weighting.db_mtl_aggregate(K, beta=beta, beta_sigma=sigma)
  state = tx.init(params)
  buffer = np.zeros_like(_flat_rows(weighting.per_task_grads(_task_losses, params)[1], TRUNK))
  update = jax.jit(tx.update)
  for t in (1, 2, 3):
    params_t = jax.tree.map(lambda p, t=t: p * (1 + 0.1 * t), params)  # a new point each step
    _, stacked = weighting.per_task_grads(lambda p: jnp.log(_task_losses(p) + 1e-8), params_t)
    out, state = update(stacked, state, params_t)
    rows = _flat_rows(stacked, TRUNK)
    buffer = rows + beta / t ** sigma * (buffer - rows)
    norms = np.linalg.norm(buffer, axis=1)
    alpha = norms.max() / (norms + 1e-8)
    want = alpha @ buffer
    got = np.concatenate([np.asarray(out[a][b]).ravel() for a, b in TRUNK])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(state.task_weights, alpha / alpha.sum(), rtol=1e-5)


def test_db_mtl_weighting_differentiates_the_log_losses():
  w = weighting.create("db_mtl")
  task_params, task_state = w.init(K)
  losses = jnp.array([0.5, 2.0, 1.0])
  np.testing.assert_allclose(w.objective(losses, task_params, task_state), np.log(losses + 1e-8),
                             rtol=1e-6)


def _run(tx, params, steps=4):
  state = tx.init(params)

  @jax.jit
  def step(p, s):
    _, stacked = weighting.per_task_grads(_task_losses, p)
    u, s = tx.update(stacked, s, p)
    return optax.apply_updates(p, u), s, stacked

  for _ in range(steps):
    params, state, stacked = step(params, state)
  return params, state, stacked


GRAM_RULES = {
    "recording": _recording_weights,
    "one_task": lambda gram, key: jnp.array([0.0, 0.0, 5.0]),  # everything on task 2
    "signed": lambda gram, key: jnp.array([3.0, -1.0, -1.5]),  # negative weights
}


GRADIENT_LEVEL = sorted(n for n in weighting.WEIGHTINGS if weighting.create(n).aggregate)


def test_every_gradient_level_weighting_is_in_the_mask_test():
  assert len(GRADIENT_LEVEL) == 9 and "db_mtl" in GRADIENT_LEVEL


@pytest.mark.parametrize("rule", sorted(GRAM_RULES) + GRADIENT_LEVEL)
def test_static_sparse_keeps_pruned_entries_exactly_zero_under_an_aggregator(rule):
  params = _params()
  masks = sparsity.magnitude_masks(params, 0.7)
  params = sparsity.apply_masks(params, masks)
  aggregator = (weighting.create(rule).aggregate(K, 0) if rule in GRADIENT_LEVEL
                else weighting.aggregate(GRAM_RULES[rule], K))
  tx = sparsity.static_sparse(optax.chain(aggregator, optax.sgd(0.3, momentum=0.9)), masks)
  out, state, stacked = _run(tx, params)
  assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(out))
  pruned = np.asarray(~masks["trunk"]["kernel"])
  assert pruned.sum() == round(0.7 * pruned.size)
  assert np.all(np.asarray(out["trunk"]["kernel"])[pruned] == 0.0)
  assert np.any(np.asarray(out["trunk"]["kernel"]) != np.asarray(params["trunk"]["kernel"]))
  if rule == "recording":  # the weights came from the Gram matrix of the *masked* gradients
    masked = {"trunk": {"kernel": np.where(masks["trunk"]["kernel"], stacked["trunk"]["kernel"],
                                           0.0),
                        "bias": stacked["trunk"]["bias"]}}
    rows = _flat_rows(masked, TRUNK)
    alpha = np.asarray(_recording_weights(jnp.asarray(rows @ rows.T, jnp.float32), None))
    inner = state.inner_state[0]
    np.testing.assert_allclose(inner.task_weights, alpha / alpha.sum(), rtol=1e-4)


def test_dynamic_sparse_with_an_aggregator_keeps_the_exact_count_and_grows_by_the_task_sum():
  params = _params()
  tx = sparsity.dynamic_sparse(
      optax.chain(weighting.aggregate(_recording_weights, K), optax.sgd(0.1)),
      sparsity=0.5, update_every=2, grow_fraction=0.2)
  out, state, _ = _run(tx, params, steps=4)
  kernel_mask = np.asarray(state.masks["trunk"]["kernel"])
  assert kernel_mask.sum() == 15  # 30 entries, 50 %
  assert np.all(np.asarray(out["trunk"]["kernel"])[~kernel_mask] == 0.0)
  # The regrowth score of stacked gradients is the gradient of the tasks' sum: the same
  # masks as the same transform fed that sum directly, with the aggregator swapped for it.
  summed = sparsity.dynamic_sparse(optax.sgd(0.1), sparsity=0.5, update_every=2,
                                   grow_fraction=0.2)
  _, stacked = weighting.per_task_grads(_task_losses, params)
  state1, single1 = tx.init(params), summed.init(params)
  for _ in range(2):  # two updates from the same point: the second one moves the masks
    _, state1 = tx.update(stacked, state1, params)
    _, single1 = summed.update(jax.tree.map(lambda g: jnp.sum(g, 0), stacked), single1, params)
  jax.tree.map(np.testing.assert_array_equal, state1.masks, single1.masks)
  assert not np.array_equal(np.asarray(state1.masks["trunk"]["kernel"]),
                            np.asarray(tx.init(params).masks["trunk"]["kernel"]))


# The Gram-based methods share one transform (`aggregate`); DB-MTL has its own, with a
# params-shaped state that dynamic_sparse's reset must be able to rebuild.
@pytest.mark.parametrize("name", ["db_mtl", "nash_mtl"])
def test_gradient_level_weightings_train_under_dynamic_sparse(name):
  params = _params()
  tx = sparsity.dynamic_sparse(
      optax.chain(weighting.create(name).aggregate(K, 0), optax.adam(0.01)),
      sparsity=0.5, update_every=2, grow_fraction=0.2)
  out, state, _ = _run(tx, params, steps=4)
  mask = np.asarray(state.masks["trunk"]["kernel"])
  assert mask.sum() == 15 and np.all(np.asarray(out["trunk"]["kernel"])[~mask] == 0.0)
  assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(out))


def test_nash_mtl_and_fairgrad_clip_the_shared_direction_to_max_norm():
  params = _params()
  _, stacked = weighting.per_task_grads(_task_losses, params)
  stacked = jax.tree.map(lambda g: 1e-4 * g, stacked)  # small gradients: a √K-sized direction
  for name, factory in (("nash_mtl", weighting.nash_mtl), ("fairgrad", weighting.fairgrad)):
    norms = {}
    for max_norm in (None, 0.5):
      tx = factory(max_norm=max_norm).aggregate(K, 0)
      out, _ = tx.update(stacked, tx.init(params), params)
      norms[max_norm] = float(np.sqrt(sum(np.sum(np.square(np.asarray(out["trunk"][k])))
                                          for k in ("kernel", "bias"))))
      # the heads are never clipped: their own task's gradient
      np.testing.assert_allclose(out["head_0"]["kernel"], stacked["head_0"]["kernel"][0],
                                 rtol=1e-6)
    assert norms[None] > 1.0, (name, norms)  # Nash-MTL's |d| ≈ √K whatever |g|
    np.testing.assert_allclose(norms[0.5], 0.5, rtol=1e-5)


def test_current_weights_reads_the_aggregator_state_of_a_gradient_level_weighting():
  w = weighting.create("db_mtl")
  params = _params()
  task_params, task_state = w.init(K)
  tx = optax.chain(w.aggregate(K, 0), optax.sgd(0.1))
  opt_state = tx.init(params)
  np.testing.assert_allclose(weighting.current_weights(w, task_params, task_state, opt_state),
                             np.full(K, 1 / K))
  # After a step: the weights the step computed, read from where the aggregator keeps them.
  _, stacked = weighting.per_task_grads(_task_losses, params)
  _, opt_state = tx.update(stacked, opt_state, params)
  stepped = np.asarray(weighting.current_weights(w, task_params, task_state, opt_state))
  np.testing.assert_array_equal(stepped, np.asarray(opt_state[0].task_weights))
  assert not np.allclose(stepped, 1 / K)
  with pytest.raises(ValueError, match="gradient-level"):
    w.weights(task_params, task_state)
  eq = weighting.create("equal")
  tp, ts = eq.init(K)
  np.testing.assert_allclose(weighting.current_weights(eq, tp, ts, None), np.full(K, 1 / K))


def _one_regrowth(grow, stacked, weights=(3.0, 2.0, 1.0, 0.0, 0.0, 0.0), moved=1, **kwargs):
  """One mask update of a leaf (its first half active, `moved` entries dropped and grown)
  fed `stacked` per-task gradients; `kwargs` go to `update` (task_weights)."""
  params = {"w": jnp.array([weights])}
  tx = sparsity.dynamic_sparse(
      optax.chain(weighting.sum_tasks(), optax.sgd(0.0)),
      sparsity=0.5, update_every=1, grow_fraction=moved / len(weights), grow=grow,
      include=lambda path, leaf: True)
  _, state = tx.update({"w": stacked}, tx.init(params), params, **kwargs)
  return np.asarray(state.masks["w"][0])


def test_task_aware_regrowth_grows_what_one_task_needs():
  # Task 0 needs entry 5 only, on a small scale; task 1 has large gradients at entries 3, 4.
  stacked = jnp.array([[[0.0, 0.0, 0.0, 0.0, 0.0, 1.0]],
                       [[0.0, 0.0, 0.0, 10.0, 9.0, 0.0]]])
  # Each drops the smallest active weight (entry 2) and grows one inactive entry:
  assert _one_regrowth("gradient", stacked).tolist() == [1, 1, 0, 1, 0, 0]  # |Σ g| max: 3
  assert _one_regrowth("task_mean", stacked).tolist() == [1, 1, 0, 1, 0, 0]  # mean: also 3
  # max of normalised magnitudes: task 0's entry 5 scores 1/1, task 1's entry 3 10/19.
  assert _one_regrowth("task_max", stacked).tolist() == [1, 1, 0, 0, 0, 1]


def test_disparse_regrowth_grows_from_the_union_of_the_tasks_choices():
  # Entry 4 is every task's second choice with the best mean; each task's first choice is
  # 3 (task 0) or 5 (task 1). One entry moves: the mean grows 4, DiSparse the union {3, 5}
  # trimmed by the mean normalised score (tied 0.325: the lower index, 3).
  stacked = jnp.array([[[0.0, 0.0, 0.0, 0.40, 0.35, 0.25]],
                       [[0.0, 0.0, 0.0, 0.25, 0.35, 0.40]]])
  assert _one_regrowth("task_mean", stacked).tolist() == [1, 1, 0, 0, 1, 0]
  assert _one_regrowth("task_disparse", stacked).tolist() == [1, 1, 0, 1, 0, 0]


def test_disparse_regrowth_trims_a_larger_union_by_the_mean_normalised_score():
  # 8 entries, 4 active; 2 move (entries 2, 3 are dropped). Task 0 votes for entry 7 alone
  # (its second choice scores 0: no vote); task 1 for 4 and 5. The union {4, 5, 7} is
  # trimmed to 2 by the mean normalised score: 7 (1/2), 4 (10/38), not 5 (9/38). The summed
  # gradient's magnitude grows 4 and 5.
  stacked = jnp.array([[[0.0] * 7 + [1.0]], [[0.0] * 4 + [10.0, 9.0, 0.0, 0.0]]])
  weights = (4.0, 3.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0)
  assert _one_regrowth("task_disparse", stacked, weights, moved=2).tolist() == [
      1, 1, 0, 0, 1, 0, 0, 1]
  assert _one_regrowth("gradient", stacked, weights, moved=2).tolist() == [
      1, 1, 0, 0, 1, 1, 0, 0]


@pytest.mark.parametrize("task", [0, 1, 2])
def test_minmax_regrowth_with_one_hot_weights_grows_that_tasks_own_choice(task):
  rows = jax.random.uniform(jax.random.key(task), (3, 1, 12))
  weights = np.linspace(12.0, 1.0, 12) * (np.arange(12) < 6)
  one_hot = jnp.eye(3)[task]
  expected = _one_regrowth("gradient", rows[task:task + 1], weights, moved=3)
  got = _one_regrowth("task_minmax", rows, weights, moved=3, task_weights=one_hot)
  np.testing.assert_array_equal(got, expected)
  # Weights (0.2, 0.3, 0.5) grow what Σ_k w_k |g_k| / Σ|g_k| ranks first, computed in NumPy
  # and grown as one task's gradient would be.
  w = np.array([0.2, 0.3, 0.5])
  magnitudes = np.abs(np.asarray(rows, np.float64))
  blended = np.sum(w[:, None, None] * magnitudes / magnitudes.sum(axis=(1, 2), keepdims=True),
                   axis=0)
  mixed = _one_regrowth("task_minmax", rows, weights, moved=3, task_weights=jnp.asarray(w))
  np.testing.assert_array_equal(
      mixed, _one_regrowth("gradient", jnp.asarray(blended[None], jnp.float32), weights,
                           moved=3))
  assert mixed.sum() == expected.sum() == 6


def test_minmax_regrowth_needs_the_task_weights():
  stacked = jnp.ones((2, 1, 6))
  with pytest.raises(ValueError, match="task_weights"):
    _one_regrowth("task_minmax", stacked)
  with pytest.raises(ValueError, match="shape"):  # traced in the step: the shape is checked
    _one_regrowth("task_minmax", stacked, task_weights=jnp.full(3, 1 / 3))


def test_task_aware_regrowth_needs_stacked_gradients():
  params = {"w": jnp.ones((2, 3))}
  tx = sparsity.dynamic_sparse(optax.sgd(0.1), sparsity=0.5, update_every=1,
                               grow_fraction=0.2, grow="task_max")
  with pytest.raises(ValueError, match="per-task gradients"):
    tx.update({"w": jnp.ones((2, 3))}, tx.init(params), params)


def _model_losses(name, digits_data):
  """The trainer's per-task training losses of one batch as a function of the parameters, on
  the MLP or the CNN (digits, 4 tasks). (The reduced MTAN's check is in tests/test_mtan.py,
  whose fixture also gives the gradient its other tests need.)"""
  # pylint: disable=import-outside-toplevel
  from mmcompress.models import create_model
  from mmcompress.problems.digits import DigitsProblem
  from mmcompress.train import step as step_lib
  problem = DigitsProblem(digits_data())
  model = create_model(name, problem.num_outputs)
  params, model_state = step_lib.init_variables(model, problem, 0)
  batch = problem.train_batch(0, 0, 0, 4)
  rng = jax.random.key(0)
  return (lambda p: problem.task_losses(model, p, model_state, batch, rng)[0]), params


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_every_mode_gives_each_tasks_own_gradient_on_the_real_models(name, digits_data):
  losses, params = _model_losses(name, digits_data)
  num_tasks = losses(params).shape[0]
  modes = weighting.GRAD_MODES

  def both(p):
    return ({m: weighting.per_task_grads(losses, p, mode=m)[1] for m in modes},
            [jax.grad(lambda q, k=k: losses(q)[k])(p) for k in range(num_tasks)])

  rows, separate = jax.jit(both)(params)
  for mode in modes:
    for k in range(num_tasks):
      jax.tree.map(lambda r, g, k=k: np.testing.assert_allclose(r[k], g, rtol=2e-5, atol=2e-6),
                   rows[mode], separate[k])
  # The rule the docstring states: unrolled up to UNROLL_MAX_TASKS tasks (these have 4).
  assert num_tasks <= weighting.UNROLL_MAX_TASKS
  auto = jax.make_jaxpr(lambda p: weighting.per_task_grads(losses, p)[1])(params)
  unrolled = jax.make_jaxpr(lambda p: weighting.per_task_grads(losses, p, mode="unrolled")[1])(
      params)
  assert str(auto) == str(unrolled)
