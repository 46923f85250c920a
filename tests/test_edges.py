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
# it of the rows scaled by a power of two and scales its direction back by the weights'
# homogeneity. The factors are not powers of two, so that the scaled Gram matrix is not the
# original one shifted and a wrong degree shows.
HUGE, TINY = 1.3 * 2.0 ** 67, 1.3 * 2.0 ** -70  # about 1.9e20 and 1.1e-21
FAIRGRAD_ALPHAS = (1.0, 2.0, 20.0)
DIRECTIONS = sorted(set(aggregators.WEIGHTS) - {"fairgrad"}) + [
    f"fairgrad-{a:g}" for a in FAIRGRAD_ALPHAS]


def _direction(name, G):
  if name.startswith("fairgrad-"):
    return aggregators.fairgrad(G, alpha=float(name.split("-")[1]))
  method = getattr(aggregators, name)
  return method(G, jax.random.key(0)) if name == "pcgrad" else method(G)


def _degree(name):
  if name.startswith("fairgrad-"):
    return aggregators.fairgrad_degree(float(name.split("-")[1]))
  return aggregators.DEGREES[name]


@pytest.mark.parametrize("name", DIRECTIONS)
@pytest.mark.parametrize("factor", [HUGE, TINY])
def test_rows_of_extreme_norm_give_the_direction_their_homogeneity_says(name, factor):
  G = np.random.default_rng(0).normal(size=(3, 20))
  scaled = jnp.asarray(factor * G, jnp.float32)
  if factor == HUGE:
    assert not np.all(np.isfinite(np.asarray(scaled @ scaled.T)))  # the overflow
  # d(cG) = c^(1 + 2 degree) d(G): weights of degree `degree` in the Gram matrix times the rows.
  expected = (np.asarray(_direction(name, jnp.asarray(G, jnp.float32)), np.float64)
              * factor ** (1 + 2 * _degree(name)))
  got = np.asarray(_direction(name, scaled), np.float64)
  assert np.all(np.isfinite(got)) and np.any(got != 0)
  np.testing.assert_allclose(got, expected, rtol=2e-4, atol=1e-5 * np.max(np.abs(expected)))
  # One row of extreme norm among ordinary ones: finite.
  one = jnp.asarray(G, jnp.float32).at[0].multiply(factor)
  assert np.all(np.isfinite(np.asarray(_direction(name, one))))


def test_empty_rows_still_give_an_empty_direction():
  assert aggregators.mgda(jnp.zeros((3, 0))).shape == (0,)


@pytest.mark.parametrize("name", ["mgda", "upgrad", "pcgrad", "nash_mtl"])
def test_the_trainers_aggregate_is_unchanged_for_ordinary_rows_and_scales_for_huge_ones(name):
  params = {"a": jnp.ones((4, 5)), "b": jnp.ones(7)}
  rng = np.random.default_rng(1)
  stacked = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=(3,) + p.shape), jnp.float32),
                         params)
  weights_fn = (aggregators.pcgrad_weights if name == "pcgrad"
                else (lambda gram, key, f=aggregators.WEIGHTS[name]: f(gram)))
  everything = lambda path, leaf: True
  plain = weighting.aggregate(weights_fn, 3, shared=everything)  # degree None: no scaling
  tx = weighting.aggregate(weights_fn, 3, shared=everything, degree=aggregators.DEGREES[name])
  state = tx.init(params)
  # Ordinary rows are not scaled: the very update of the plain Gram matrix.
  combined, _ = tx.update(stacked, state, params)
  reference, _ = plain.update(stacked, state, params)
  jax.tree.map(np.testing.assert_array_equal, combined, reference)
  huge, _ = tx.update(jax.tree.map(lambda g: HUGE * g, stacked), state, params)
  overflowed, _ = plain.update(jax.tree.map(lambda g: HUGE * g, stacked), state, params)
  if name != "pcgrad":  # (PCGrad's projections happen to survive an infinite Gram matrix)
    assert not all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(overflowed))
  scale = HUGE ** (1 + 2 * aggregators.DEGREES[name])
  for leaf, small in zip(jax.tree.leaves(huge), jax.tree.leaves(combined)):
    np.testing.assert_allclose(np.asarray(leaf, np.float64), np.asarray(small) * scale,
                               rtol=2e-4, atol=1e-6 * scale * float(jnp.max(jnp.abs(small))))


def test_db_mtl_weighs_rows_of_any_size_by_their_norms():
  params = {"a": jnp.ones((4, 5))}
  rows = np.random.default_rng(2).normal(size=(3, 4, 5))
  tx = weighting.db_mtl_aggregate(3, shared=lambda path, leaf: True)
  state = tx.init(params)
  # Rows 2^70 apart in size (their squares 2^140 apart, beyond float32's range): each row's
  # norm is taken at its own scale, and the weights are max norm / norm, as in float64.
  sizes = np.array([1.3 * 2.0 ** 40, 1.0, 1.3 * 2.0 ** -30])
  stacked = {"a": jnp.asarray(rows * sizes[:, None, None], jnp.float32)}
  out, new = tx.update(stacked, state, params)
  # (The first step's average is (1 - beta) times the gradient, beta = 0.9.)
  norms = np.linalg.norm(0.1 * (rows * sizes[:, None, None]).reshape(3, -1), axis=1)
  alpha = norms.max() / (norms + 1e-8)
  assert np.all(np.isfinite(np.asarray(out["a"])))
  np.testing.assert_allclose(new.task_weights, alpha / alpha.sum(), rtol=1e-5)
