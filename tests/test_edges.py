"""The library's edges: what a wrong argument gets (an error naming it, not a crash deep in JAX
or optax), and what a non-finite task does to the others' gradients (the documented rule)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmcompress import (aggregators, saddle_objective, saddle_point, simplex_ascent, sparsity,
                        weighting)


@pytest.mark.parametrize("descent, ascent, name", [
    (None, simplex_ascent(0.1), "descent"),
    (optax.sgd(0.1), "sgd", "ascent"),
])
def test_saddle_point_names_the_argument_that_is_not_a_transform(descent, ascent, name):
  with pytest.raises(TypeError, match=f"saddle_point's {name} must be an optax"):
    saddle_point(descent, ascent)


def test_the_objective_refuses_concrete_weights_off_the_simplex_and_non_positive_scales():
  losses = jnp.array([1.0, 2.0])
  with pytest.raises(ValueError, match="on the probability simplex"):
    saddle_objective(losses, jnp.array([0.7, 0.7]), gamma=1.0)
  with pytest.raises(ValueError, match="on the probability simplex"):
    saddle_objective(losses, jnp.array([1.5, -0.5]), gamma=1.0)
  with pytest.raises(ValueError, match="task_scales must be positive"):
    saddle_objective(losses, jnp.array([0.5, 0.5]), gamma=1.0, task_scales=jnp.array([1.0, -1.0]))
  # On the simplex (within float32 rounding) it is the formula.
  assert float(saddle_objective(losses, jnp.array([0.25, 0.75 + 1e-6]), gamma=0.0)) == \
      pytest.approx(1.75, rel=1e-5)
  # Under jit the values are unknown: evaluated as written (the documented rule).
  value = jax.jit(lambda w: saddle_objective(losses, w, gamma=0.0))(jnp.array([2.0, 0.0]))
  assert float(value) == 2.0


def test_dynamic_sparse_refuses_a_state_built_for_other_parameters():
  tx = sparsity.dynamic_sparse(optax.sgd(0.1), sparsity=0.5, update_every=2, grow_fraction=0.1)
  params = {"w": jnp.ones((4, 4))}
  other = tx.init({"w": jnp.ones((3, 3))})
  with pytest.raises(ValueError, match=r"state.masks \(from init\(params\)\) at \['w'\] has shape"):
    tx.update(params, other, params)
  with pytest.raises(TypeError, match="state must be the DynamicSparseState"):
    tx.update(params, optax.sgd(0.1).init(params), params)


def test_per_task_grads_names_a_tuple_of_objectives():
  with pytest.raises(TypeError, match="stack K scalars with jnp.stack, or pass has_aux=True"):
    weighting.per_task_grads(lambda p: (p ** 2, 3 * p), jnp.array(2.0))


@pytest.mark.parametrize("mode", ["vmap", "unrolled"])
def test_a_non_finite_task_reaches_the_others_only_where_it_depends_on_the_parameters(mode):
  # The rule of `per_task_grads`: a task whose value or partials are not finite leaves the
  # other tasks' rows finite at every parameter it does not depend on; where it does, the
  # shared backward pass multiplies its partials by the other tasks' zero cotangents
  # (0 x inf = NaN), so every row may be NaN there, and the trainer records the divergence.
  def fn(p):
    shared = p["shared"] * 2.0
    return jnp.stack([jnp.sum(p["own"] ** 2) + jnp.sum(shared),
                      jnp.sum(jnp.log(shared - 2.0))])  # log(0): -inf, its partial inf
  params = {"own": jnp.array([1.0, 2.0]), "shared": jnp.array([1.0, 3.0])}
  values, grads = weighting.per_task_grads(fn, params, mode=mode)
  assert np.isfinite(values[0]) and not np.isfinite(values[1])
  np.testing.assert_array_equal(grads["own"][0], [2.0, 4.0])  # untouched by task 1
  assert not np.all(np.isfinite(grads["shared"][0]))  # reached through the shared node
  # With every task finite, each row is that task's own gradient.
  finite = lambda p: jnp.stack([jnp.sum(p["own"] ** 2), jnp.sum(jnp.log(p["shared"]))])
  _, grads = weighting.per_task_grads(finite, params, mode=mode)
  np.testing.assert_allclose(grads["shared"][1], 1.0 / params["shared"], rtol=1e-6)
  np.testing.assert_array_equal(grads["shared"][0], [0.0, 0.0])



# Rows of norm about 1e20: their Gram matrix (1e40) overflows float32. Every aggregator takes
# it of the rows scaled by a power of two and scales its weights back by their homogeneity.
HUGE = 2.0 ** 67  # about 1.5e20


def _direction(name, G):
  method = getattr(aggregators, name)
  return method(G, jax.random.key(0)) if name == "pcgrad" else method(G)


@pytest.mark.parametrize("name", sorted(aggregators.WEIGHTS))
def test_rows_of_norm_1e20_give_the_direction_their_homogeneity_says(name):
  G = jnp.asarray(np.random.default_rng(0).normal(size=(3, 20)), jnp.float32)
  assert not np.all(np.isfinite(np.asarray((HUGE * G) @ (HUGE * G).T)))  # the overflow
  degree = (aggregators.fairgrad_degree(1.0) if name == "fairgrad"
            else aggregators.DEGREES[name])
  # d(cG) = c^(1 + 2 degree) d(G): weights of degree `degree` in the Gram matrix times the rows.
  expected = np.asarray(_direction(name, G), np.float64) * HUGE ** (1 + 2 * degree)
  got = np.asarray(_direction(name, HUGE * G), np.float64)
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.max(np.abs(expected)))
  # One huge row among ordinary ones: finite.
  assert np.all(np.isfinite(np.asarray(_direction(name, G.at[0].multiply(HUGE)))))


@pytest.mark.parametrize("name", ["mgda", "upgrad", "pcgrad", "nash_mtl"])
def test_the_trainers_aggregate_scales_exactly_and_survives_huge_rows(name):
  params = {"a": jnp.ones((4, 5)), "b": jnp.ones(7)}
  rng = np.random.default_rng(1)
  stacked = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=(3,) + p.shape), jnp.float32),
                         params)
  weights_fn = ((lambda gram, key: aggregators.pcgrad_weights(gram, key)) if name == "pcgrad"
                else (lambda gram, key, f=aggregators.WEIGHTS[name]: f(gram)))
  tx = weighting.aggregate(weights_fn, 3, shared=lambda path, leaf: True,
                           degree=aggregators.DEGREES[name])
  state = tx.init(params)
  combined, new_state = tx.update(stacked, state, params)
  # Ordinary rows: the weights of the unscaled Gram matrix (bitwise for degree 0: scaling by
  # a power of two is exact and these weights depend on ratios of its entries).
  key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.count)
  rows = [g.reshape(3, -1) for g in jax.tree.leaves(stacked)]
  gram = sum(jnp.matmul(r, r.T, precision=jax.lax.Precision.HIGHEST) for r in rows)
  direct = weights_fn(gram, key)
  alpha = new_state.task_weights * jnp.sum(direct)  # task_weights are normalised to sum 1
  if aggregators.DEGREES[name] == 0:
    np.testing.assert_array_equal(new_state.task_weights, direct / jnp.sum(direct))
  else:
    np.testing.assert_allclose(alpha, direct, rtol=1e-6)
  huge, _ = tx.update(jax.tree.map(lambda g: HUGE * g, stacked), state, params)
  for leaf, small in zip(jax.tree.leaves(huge), jax.tree.leaves(combined)):
    assert np.all(np.isfinite(np.asarray(leaf)))
    scale = HUGE ** (1 + 2 * aggregators.DEGREES[name])
    np.testing.assert_allclose(np.asarray(leaf, np.float64), np.asarray(small) * scale,
                               rtol=1e-5, atol=1e-6 * scale * float(jnp.max(jnp.abs(small))))


def test_db_mtl_weighs_rows_of_norm_1e20_as_it_weighs_them_scaled_down():
  params = {"a": jnp.ones((4, 5))}
  stacked = {"a": jnp.asarray(np.random.default_rng(2).normal(size=(3, 4, 5)), jnp.float32)}
  tx = weighting.db_mtl_aggregate(3, shared=lambda path, leaf: True)
  state = tx.init(params)
  _, small = tx.update(stacked, state, params)
  out, huge = tx.update(jax.tree.map(lambda g: HUGE * g, stacked), state, params)
  assert np.all(np.isfinite(np.asarray(out["a"])))
  np.testing.assert_allclose(huge.task_weights, small.task_weights, rtol=1e-6)
