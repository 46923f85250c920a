"""Tests of the sparsity transforms: masked, add_reweighted_l1, dynamic_sparse."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmcompress import sparsity as sp
from mmcompress import weighting
from mmcompress.sparsity import dynamic


def _least_squares(seed=0):
  """A small dense least-squares problem on a two-kernel linear model."""
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(64, 12)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(64, 4)), jnp.float32)
  params = {
      "trunk": {"Dense_0": {"kernel": jnp.asarray(rng.normal(size=(12, 8)) * 0.5, jnp.float32),
                            "bias": jnp.zeros((8,), jnp.float32)}},
      "head_0": {"kernel": jnp.asarray(rng.normal(size=(8, 4)) * 0.5, jnp.float32)},
  }

  def loss(p):
    hidden = x @ p["trunk"]["Dense_0"]["kernel"] + p["trunk"]["Dense_0"]["bias"]
    return jnp.mean((hidden @ p["head_0"]["kernel"] - y) ** 2)

  return params, loss


def _make_step(opt, loss, traces):
  @jax.jit
  def step(params, state):
    traces.append(1)
    grads = jax.grad(loss)(params)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return step


def _state_leaves_with(inner, inner_state, tree):
  """(state leaf, matching leaf of `tree`) for every param-shaped part of an inner state."""
  found = []
  optax.tree_utils.tree_map_params(
      inner, lambda s, x: found.append((np.asarray(s), np.asarray(x))) or s, inner_state, tree)
  assert found, "the inner state holds no param-shaped statistic"
  return found


# ----------------------------------------------------------------------------- masked


@pytest.mark.parametrize("inner", [
    optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9)),
    optax.adam(1e-2),
], ids=["sgd_momentum_wd", "adam"])
def test_masked_keeps_pruned_weights_exactly_zero(inner):
  params, loss = _least_squares()
  # Masks prune both kernels (include everything of rank 2) while params start dense there.
  masks = sp.magnitude_masks(params, 0.75, include=lambda path, leaf: leaf.ndim == 2)
  opt = sp.static_sparse(inner, masks)
  state = opt.init(params)
  traces = []
  step = _make_step(opt, loss, traces)
  start, start_loss = params, float(loss(params))
  for _ in range(200):
    params, state = step(params, state)
  assert len(traces) == 1
  assert float(loss(params)) < start_loss
  for p, p0, m in zip(jax.tree.leaves(params), jax.tree.leaves(start), jax.tree.leaves(masks)):
    p, p0, m = np.asarray(p), np.asarray(p0), np.asarray(m)
    assert (p[~m] == 0.0).all()
    assert (p[m] != p0[m]).all()
  # No optimizer statistic accumulated at a pruned entry.
  for s, m in _state_leaves_with(inner, state.inner_state, masks):
    assert (s[~m] == 0.0).all()


def test_masked_passes_inner_update_on_kept_entries():
  params = {"w": jnp.array([[1.0, -2.0], [3.0, 0.5]])}
  masks = {"w": jnp.array([[True, False], [True, True]])}
  grads = {"w": jnp.array([[0.3, 0.7], [-0.2, 0.1]])}
  opt = sp.static_sparse(optax.sgd(0.5), masks)
  updates, state = opt.update(grads, opt.init(params), params)
  # Kept entries: exactly the inner update -0.5 * g; the pruned entry: -p.
  expected = np.where(np.asarray(masks["w"]), -0.5 * np.asarray(grads["w"]),
                      -np.asarray(params["w"]))
  np.testing.assert_array_equal(np.asarray(updates["w"]), expected)
  assert isinstance(state, sp.StaticSparseState)


def test_masked_validation():
  params = {"a": jnp.ones((2, 2)), "b": jnp.ones((2,))}
  with pytest.raises(ValueError, match="masks"):
    sp.static_sparse(optax.sgd(0.1), {"a": jnp.ones((2, 2), bool)}).init(params)
  with pytest.raises(ValueError, match="masks"):
    sp.static_sparse(optax.sgd(0.1), {"a": jnp.ones((2, 3), bool),
                               "b": jnp.ones((2,), bool)}).init(params)
  with pytest.raises(ValueError, match="inner"):
    sp.static_sparse(lambda g: g, {"a": True})
  opt = sp.static_sparse(optax.sgd(0.1), sp.magnitude_masks(params, 0.5))
  with pytest.raises(ValueError, match="params"):
    opt.update(params, opt.init(params))


# ----------------------------------------------------------------------------- reweighted l1


def test_reweighted_l1_gradient_matches_finite_differences():
  penalty, eps = 0.3, 1e-6
  rng = np.random.default_rng(1)

  def away_from_zero(shape):
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.5, 2.0, size=shape)

  with jax.enable_x64(True):
    anchors_at = {"trunk": {"kernel": away_from_zero((4, 3)), "bias": away_from_zero((3,))}}
    point = {"trunk": {"kernel": away_from_zero((4, 3)), "bias": away_from_zero((3,))}}
    grads = {"trunk": {"kernel": rng.normal(size=(4, 3)), "bias": rng.normal(size=(3,))}}
    to_jnp = lambda t: jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), t)
    opt = sp.add_reweighted_l1(penalty, eps=eps)
    state = opt.init(to_jnp(anchors_at))
    out, _ = opt.update(to_jnp(grads), state, to_jnp(point))
    assert out["trunk"]["kernel"].dtype == jnp.float64

  anchor = np.abs(anchors_at["trunk"]["kernel"])
  objective = lambda w: penalty * np.sum(np.abs(w) / (anchor + eps))
  w = point["trunk"]["kernel"]
  h = 1e-6
  fd = np.zeros_like(w)
  for index in np.ndindex(w.shape):
    bump = np.zeros_like(w)
    bump[index] = h
    fd[index] = (objective(w + bump) - objective(w - bump)) / (2 * h)
  added = np.asarray(out["trunk"]["kernel"]) - grads["trunk"]["kernel"]
  np.testing.assert_allclose(added, fd, rtol=1e-6, atol=1e-9)
  # The bias (rank 1) is not included: its gradient passes through unchanged.
  np.testing.assert_array_equal(np.asarray(out["trunk"]["bias"]), grads["trunk"]["bias"])


def test_reweighted_l1_sign_zero_and_chain():
  params = {"kernel": jnp.array([[0.0, 0.5], [-0.25, 1.0]])}
  opt = optax.chain(sp.add_reweighted_l1(1e-2), optax.sgd(0.1))
  updates, _ = opt.update(jax.tree.map(jnp.zeros_like, params), opt.init(params), params)
  np.testing.assert_allclose(
      np.asarray(updates["kernel"]),
      -0.1 * 1e-2 * np.array([[0.0, 1 / (0.5 + 1e-6)], [-1 / (0.25 + 1e-6), 1 / (1.0 + 1e-6)]]),
      rtol=1e-6)


@pytest.mark.parametrize("kwargs, refresh_steps", [
    (dict(refresh_every=3), {3, 6, 9}),
    (dict(refresh_at=(2, 5)), {2, 5}),
    (dict(refresh_every=4, refresh_at=[1, 9]), {1, 4, 8, 9}),
])
def test_reweighted_l1_refreshes_at_documented_steps(kwargs, refresh_steps):
  penalty, eps = 1.0, 1e-6
  opt = sp.add_reweighted_l1(penalty, eps=eps, **kwargs)
  params_at = lambda t: {"kernel": jnp.full((2, 3), 1.0 + t, jnp.float32)}
  state = opt.init(params_at(0))
  traces = []

  @jax.jit
  def update(grads, state, params):
    traces.append(1)
    return opt.update(grads, state, params)

  previous = np.asarray(state.anchors["kernel"])
  zeros = {"kernel": jnp.zeros((2, 3))}
  for t in range(11):
    out, state = update(zeros, state, params_at(t))
    anchors = np.asarray(state.anchors["kernel"])
    assert int(state.count) == t + 1
    if t in refresh_steps:
      np.testing.assert_array_equal(anchors, 1.0 + t)
    else:
      np.testing.assert_array_equal(anchors, previous)
    # The gradient of update t uses the anchors after that update's refresh.
    np.testing.assert_allclose(np.asarray(out["kernel"]), penalty / (anchors + eps), rtol=1e-6)
    previous = anchors
  assert len(traces) == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(penalty=-1.0), "penalty"),
    (dict(penalty=1e-4, eps=0.0), "eps"),
    (dict(penalty=1e-4, refresh_every=0), "refresh_every"),
    (dict(penalty=1e-4, refresh_every=2.5), "refresh_every"),
    (dict(penalty=1e-4, refresh_at=(0,)), "refresh_at"),
    (dict(penalty=1e-4, refresh_at=5), "refresh_at"),
    (dict(penalty=1e-4, include=3), "include"),
])
def test_reweighted_l1_validation(kwargs, match):
  with pytest.raises(ValueError, match=match):
    sp.add_reweighted_l1(**kwargs)


# ----------------------------------------------------------------------------- dynamic sparse


def _target_problem(seed=0):
  """Loss Σ ||W - T||² with dense random targets: the gradient is dense everywhere."""
  rng = np.random.default_rng(seed)
  shapes = {"Dense_0": (20, 10), "Dense_1": (10, 6)}
  targets = {k: {"kernel": jnp.asarray(rng.normal(size=s), jnp.float32)}
             for k, s in shapes.items()}
  targets["Dense_0"]["bias"] = jnp.asarray(rng.normal(size=(10,)), jnp.float32)
  params = jax.tree.map(lambda t: jnp.asarray(rng.normal(size=t.shape) * 0.1, jnp.float32),
                        targets)

  def loss(p):
    return sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(p),
                                                     jax.tree.leaves(targets)))
  return params, loss


def _adam_state(inner_state):
  """The `optax.ScaleByAdamState` inside an inner state, or None."""
  found = [s for s in jax.tree.leaves(
      inner_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
           if isinstance(s, optax.ScaleByAdamState)]
  return found[0] if found else None


def _reference_regrow(mask, new_weight, grad, k):
  """NumPy reference of one drop-and-grow of a leaf (ties: lower flattened index)."""
  mask, w, g = mask.reshape(-1).copy(), np.abs(new_weight).reshape(-1), np.abs(grad).reshape(-1)
  active = np.flatnonzero(mask)
  drop = active[np.argsort(w[active], kind="stable")[:k]]
  mask[drop] = False
  inactive = np.flatnonzero(~mask)
  grow = inactive[np.argsort(-g[inactive], kind="stable")[:k]]
  mask[grow] = True
  return mask.reshape(new_weight.shape)


@pytest.mark.parametrize("inner", [optax.sgd(0.05, momentum=0.9), optax.adam(0.05)],
                         ids=["sgd_momentum", "adam"])
def test_dynamic_sparse_rigl_invariants(inner):
  params, loss = _target_problem()
  sparsity, update_every, grow_fraction = 0.8, 3, 0.1
  opt = sp.dynamic_sparse(inner, sparsity=sparsity, update_every=update_every,
                          grow_fraction=grow_fraction)
  state = opt.init(params)
  active = {k: v.size - math.floor(sparsity * v.size + 0.5)
            for k, v in (("Dense_0", params["Dense_0"]["kernel"]),
                         ("Dense_1", params["Dense_1"]["kernel"]))}
  first_masks = state.masks
  traces = []

  @jax.jit
  def step(params, state):
    traces.append(1)
    grads = jax.grad(loss)(params)
    updates, new_state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), new_state, grads

  moved_total = 0
  for t in range(12):
    old_masks, old_inner, old_params = state.masks, state.inner_state, params
    params, state, grads = step(params, state)
    assert int(state.count) == t + 1
    assert bool(state.masks["Dense_0"]["bias"].all())
    for name, n_active in active.items():
      old = np.asarray(old_masks[name]["kernel"])
      new = np.asarray(state.masks[name]["kernel"])
      p = np.asarray(params[name]["kernel"])
      assert int(new.sum()) == n_active
      assert np.count_nonzero(p) <= n_active
      assert (p[~new] == 0.0).all()
      grown = new & ~old
      if (t + 1) % update_every:
        np.testing.assert_array_equal(new, old)
        continue
      # Brute-force reference of the drop-and-grow from the same quantities.
      u, _ = inner.update(sp.apply_masks(grads, old_masks), old_inner,
                          sp.apply_masks(old_params, old_masks))
      u = np.where(old, np.asarray(u[name]["kernel"]), 0.0)
      n = new.size
      k = min(math.floor(grow_fraction * n + 0.5), n_active, n - n_active)
      expected = _reference_regrow(old, np.asarray(old_params[name]["kernel"]) + u,
                                   np.asarray(grads[name]["kernel"]), k)
      np.testing.assert_array_equal(new, expected)
      assert int(grown.sum()) == int((old & ~new).sum()) <= k
      moved_total += int(grown.sum())
      assert (p[grown] == 0.0).all()
    changed = jax.tree.map(lambda a, b: np.asarray(a) != np.asarray(b), state.masks, old_masks)
    adam = _adam_state(state.inner_state)
    if adam is None:
      # Inner statistics are zero at every entry whose mask changed in this step.
      for s, c in _state_leaves_with(inner, state.inner_state, changed):
        assert (s[c] == 0.0).all()
      continue
    # Adam (deliberately changed with the regrowth fix): the first moment is zero at every
    # changed entry, the second is zero where dropped and max(g², mean of the kept entries')
    # where grown.
    for name in active:
      old = np.asarray(old_masks[name]["kernel"])
      new = np.asarray(state.masks[name]["kernel"])
      mu, nu = np.asarray(adam.mu[name]["kernel"]), np.asarray(adam.nu[name]["kernel"])
      assert (mu[old != new] == 0.0).all() and (nu[old & ~new] == 0.0).all()
      grown = new & ~old
      if grown.any():
        g2 = np.asarray(grads[name]["kernel"])[grown] ** 2
        np.testing.assert_allclose(nu[grown], np.maximum(g2, nu[old & new].mean()), rtol=1e-5)
  assert moved_total > 0
  assert not np.array_equal(np.asarray(first_masks["Dense_0"]["kernel"]),
                            np.asarray(state.masks["Dense_0"]["kernel"]))
  assert len(traces) == 1


def test_dynamic_sparse_random_growth():
  params, loss = _target_problem(seed=1)
  opt = sp.dynamic_sparse(optax.sgd(0.05, momentum=0.9), sparsity=0.7, update_every=2,
                          grow_fraction=0.2, grow="random", seed=3)
  state = opt.init(params)
  n_active = int(state.masks["Dense_0"]["kernel"].sum())
  start = np.asarray(state.masks["Dense_0"]["kernel"])
  step = _make_step(opt, loss, [])
  for t in range(6):
    old = np.asarray(state.masks["Dense_0"]["kernel"])
    params, state = step(params, state)
    new = np.asarray(state.masks["Dense_0"]["kernel"])
    p = np.asarray(params["Dense_0"]["kernel"])
    assert int(new.sum()) == n_active and np.count_nonzero(p) <= n_active
    assert (p[new & ~old] == 0.0).all() and (p[~new] == 0.0).all()
    if (t + 1) % 2 == 0:
      assert (new & ~old).any()
  assert not np.array_equal(start, np.asarray(state.masks["Dense_0"]["kernel"]))


def test_dynamic_sparse_stops_after_end_step():
  params, loss = _target_problem(seed=2)
  opt = sp.dynamic_sparse(optax.sgd(0.05), sparsity=0.5, update_every=2, grow_fraction=0.2,
                          end_step=3)
  state = opt.init(params)
  step = _make_step(opt, loss, [])
  history = []
  for _ in range(8):
    params, state = step(params, state)
    history.append(np.asarray(state.masks["Dense_0"]["kernel"]))
  # Updates at counts 1 and 3 are due; only count 1 < end_step = 3 updates the mask.
  assert not np.array_equal(history[0], history[1])
  for later in history[2:]:
    np.testing.assert_array_equal(later, history[1])


@pytest.mark.parametrize("kwargs, match", [
    (dict(grow="sometimes"), "grow"),
    (dict(grow_fraction=1.0), "grow_fraction"),
    (dict(grow_fraction=-0.1), "grow_fraction"),
    (dict(update_every=0), "update_every"),
    (dict(sparsity=1.0), "sparsity"),
    (dict(sparsity=-0.1), "sparsity"),
    (dict(end_step=0), "end_step"),
    (dict(include="kernels"), "include"),
    (dict(seed=1.5), "seed"),
])
def test_dynamic_sparse_validation(kwargs, match):
  arguments = dict(sparsity=0.9, update_every=10, grow_fraction=0.01)
  arguments.update(kwargs)
  with pytest.raises(ValueError, match=match):
    sp.dynamic_sparse(optax.sgd(0.1), **arguments)


def test_dynamic_sparse_requires_params():
  params, _ = _target_problem()
  opt = sp.dynamic_sparse(optax.sgd(0.1), sparsity=0.5, update_every=1, grow_fraction=0.1)
  with pytest.raises(ValueError, match="params"):
    opt.update(params, opt.init(params))


def test_dynamic_sparse_first_step_grows_onto_dense_params_at_zero():
  # Params start dense off the mask; with update_every=1 the first update both drops and
  # grows, and the grown entries must still land at exactly zero.
  params, loss = _target_problem(seed=4)
  opt = sp.dynamic_sparse(optax.sgd(0.05, momentum=0.9), sparsity=0.6, update_every=1,
                          grow_fraction=0.3)
  state = opt.init(params)
  old = np.asarray(state.masks["Dense_0"]["kernel"])
  assert (np.asarray(params["Dense_0"]["kernel"])[~old] != 0.0).all()
  params, state = _make_step(opt, loss, [])(params, state)
  new = np.asarray(state.masks["Dense_0"]["kernel"])
  p = np.asarray(params["Dense_0"]["kernel"])
  assert (new & ~old).any()
  assert (p[new & ~old] == 0.0).all() and (p[~new] == 0.0).all()
  assert (p[new & old] != 0.0).all()


def test_masked_state_keeps_no_mask_for_leaves_that_prune_nothing():
  params = {"trunk": {"kernel": jnp.arange(1.0, 13.0).reshape(3, 4), "bias": jnp.ones(4)},
            "head_0": {"kernel": jnp.ones((4, 2))}}
  masks = sp.magnitude_masks(params, 0.5)
  opt = sp.static_sparse(optax.sgd(0.1, momentum=0.9), masks)
  state = opt.init(params)
  stored = state.masks
  assert stored["trunk"]["bias"] is None and stored["head_0"]["kernel"] is None
  assert len(jax.tree.leaves(stored)) == 1  # only the pruned kernel is carried
  full = sp.full_masks(params, sp.find_masks(state))
  for got, want in zip(jax.tree.leaves(full), jax.tree.leaves(masks)):
    np.testing.assert_array_equal(got, want)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = jax.jit(opt.update)(grads, state, params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new["trunk"]["bias"], 0.9)  # unmasked leaves: plain SGD
  np.testing.assert_allclose(new["head_0"]["kernel"], 0.9)
  kernel, keep = np.asarray(new["trunk"]["kernel"]), np.asarray(masks["trunk"]["kernel"])
  assert np.all(kernel[~keep] == 0.0) and np.allclose(kernel[keep], np.arange(7.0, 13.0) - 0.1)


def _reference_prune_back_and_grow(mask, new_weight, grad, keep, k):
  """NumPy reference of the reference code's update: keep `keep` largest, grow k more."""
  mask, w, g = mask.reshape(-1).copy(), np.abs(new_weight).reshape(-1), np.abs(grad).reshape(-1)
  active = np.flatnonzero(mask)
  drop = active[np.argsort(w[active], kind="stable")[:len(active) - keep]]
  mask[drop] = False
  inactive = np.flatnonzero(~mask)
  mask[inactive[np.argsort(-g[inactive], kind="stable")[:k]]] = True
  return mask.reshape(new_weight.shape)


@pytest.mark.parametrize("budget", ["exact", "reference"])
def test_dynamic_sparse_active_counts_after_each_update(budget):
  """exact: a active weights forever; reference: a + ceil(g·n) after every update."""
  params, loss = _target_problem(seed=5)
  sparsity, update_every, grow_fraction = 0.8, 2, 0.07
  inner = optax.sgd(0.05, momentum=0.9)
  opt = sp.dynamic_sparse(inner, sparsity=sparsity, update_every=update_every,
                          grow_fraction=grow_fraction, budget=budget)
  state = opt.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.grad(loss)(params)
    updates, new_state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), new_state, grads

  for t in range(8):
    old_masks, old_inner, old_params = state.masks, state.inner_state, params
    params, state, grads = step(params, state)
    u, _ = inner.update(sp.apply_masks(grads, old_masks), old_inner,
                        sp.apply_masks(old_params, old_masks))
    for name in ("Dense_0", "Dense_1"):
      old = np.asarray(old_masks[name]["kernel"])
      new = np.asarray(state.masks[name]["kernel"])
      n = new.size
      a = n - math.floor(sparsity * n + 0.5)
      if budget == "exact":
        k = math.floor(grow_fraction * n + 0.5)
        after_update = a
      else:
        k = math.ceil(n * grow_fraction)
        after_update = a + k
      if (t + 1) % update_every:
        np.testing.assert_array_equal(new, old)
        expected_count = a if t + 1 < update_every else after_update
        assert int(new.sum()) == expected_count
        continue
      assert int(new.sum()) == after_update
      w = np.asarray(old_params[name]["kernel"]) + np.where(old, np.asarray(u[name]["kernel"]), 0)
      g = np.asarray(grads[name]["kernel"])
      if budget == "exact":
        expected = _reference_regrow(old, w, g, k)
      else:
        expected = _reference_prune_back_and_grow(old, w, g, a, k)
      np.testing.assert_array_equal(new, expected)
      assert (np.asarray(params[name]["kernel"])[new & ~old] == 0.0).all()
  if budget == "reference":  # Dense_0: 200 entries, 40 kept + ceil(14.000000000000002) = 15
    assert int(state.masks["Dense_0"]["kernel"].sum()) == 40 + 15


def test_dynamic_sparse_budget_is_validated():
  with pytest.raises(ValueError, match="budget"):
    sp.dynamic_sparse(optax.sgd(0.1), sparsity=0.9, update_every=10, grow_fraction=0.01,
                      budget="constant")


def _adam_steps_from_zero_moments(grads, learning_rate, count, b1=0.9, b2=0.999, eps=1e-8):
  """Adam's updates written out in NumPy, both moments starting at 0 at step `count`."""
  m = v = np.zeros_like(grads[0])
  steps = []
  for j, g in enumerate(grads, start=1):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    t = count + j
    steps.append(-learning_rate * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps))
  return np.array(steps)


def test_regrown_weights_under_adam_take_steps_no_larger_than_a_fresh_adams():
  """The first 50 steps of weights grown at a global Adam count of 5000 stay <= 1.5 lr."""
  rng = np.random.default_rng(0)
  shape = (16, 16)
  scale = jnp.asarray(rng.uniform(0.5, 2.0, shape), jnp.float32)
  target = jnp.asarray(rng.normal(size=shape) * 5.0, jnp.float32)

  def loss(p):  # a steady gradient scale(p - target): the worst case for zeroed moments
    return 0.5 * jnp.sum(scale * (p["w"] - target) ** 2)

  learning_rate, regrow_at, after = 1e-3, 5000, 50
  opt = sp.dynamic_sparse(optax.adam(learning_rate), sparsity=0.75, update_every=regrow_at,
                          grow_fraction=0.05, end_step=regrow_at,
                          include=lambda path, leaf: True)
  params = {"w": jnp.asarray(rng.normal(size=shape) * 0.1, jnp.float32)}
  state = opt.init(params)

  def body(carry, _):
    params, state = carry
    grads = jax.grad(loss)(params)
    updates, state = opt.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), (updates["w"], grads["w"])

  run = jax.jit(lambda carry, n: jax.lax.scan(body, carry, None, length=n), static_argnums=1)
  before = state.masks["w"]
  (params, state), _ = run((params, state), regrow_at)
  assert int(_adam_state(state.inner_state).count) == regrow_at
  grown = np.asarray(state.masks["w"] & ~before)
  assert grown.sum() == 13  # floor(0.05 · 256 + 0.5) moved by the exact budget
  (params, state), (updates, grads) = run((params, state), after)
  largest = float(np.abs(np.asarray(updates)[:, grown]).max())
  assert largest <= 1.5 * learning_rate, largest
  # The old behaviour (both moments zeroed, the global count kept), written out
  # independently on the same gradients, breaks the bound several times over.
  old = _adam_steps_from_zero_moments(np.asarray(grads)[:, grown], learning_rate, regrow_at)
  assert np.abs(old).max() > 4 * learning_rate


@pytest.mark.parametrize("grow", [g for g in dynamic.GROWTH if g.startswith("task_")])
def test_task_aware_regrowth_keeps_the_exact_budget_and_pruned_weights_zero(grow):
  """Each task-aware growth rule on stacked per-task gradients (two tasks of different
  scales, a fresh draw every step): after every update each kernel keeps exactly its
  budget, and every weight outside the mask is exactly 0."""
  params, _ = _target_problem()
  rng = np.random.default_rng(3)
  opt = sp.dynamic_sparse(optax.chain(weighting.sum_tasks(), optax.sgd(0.05, momentum=0.9)),
                          sparsity=0.8, update_every=2, grow_fraction=0.1, grow=grow)
  extra = {"task_weights": jnp.array([0.3, 0.7])} if grow == "task_minmax" else {}
  step = jax.jit(lambda p, s, g: opt.update(g, s, p, **extra))
  state = opt.init(params)
  budget = {k: v["kernel"].size - math.floor(0.8 * v["kernel"].size + 0.5)
            for k, v in params.items()}
  moved = 0
  for _ in range(8):
    stacked = jax.tree.map(lambda p: jnp.asarray(
        rng.normal(size=(2,) + p.shape) * np.array([1.0, 50.0]).reshape((2,) + (1,) * p.ndim),
        jnp.float32), params)
    old = {k: np.asarray(state.masks[k]["kernel"]) for k in budget}
    updates, state = step(params, state, stacked)
    params = optax.apply_updates(params, updates)
    for name, n_active in budget.items():
      mask = np.asarray(state.masks[name]["kernel"])
      assert int(mask.sum()) == n_active
      assert np.all(np.asarray(params[name]["kernel"])[~mask] == 0.0)
      moved += int((mask & ~old[name]).sum())
  assert moved > 0  # the masks did change: the budget was kept through regrowth
