"""The library's edges: what a wrong argument gets (an error naming it, not a crash deep in JAX
or optax), and what a non-finite task does to the others' gradients (the documented rule)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmcompress import saddle_objective, saddle_point, simplex_ascent, sparsity, weighting


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


def test_a_non_finite_task_reaches_the_others_only_where_it_depends_on_the_parameters():
  # The rule of `per_task_grads`: a task whose value or partials are not finite leaves the
  # other tasks' rows finite at every parameter it does not depend on; where it does, the
  # shared backward pass multiplies its partials by the other tasks' zero cotangents
  # (0 x inf = NaN), so every row may be NaN there, and the trainer records the divergence.
  def fn(p):
    shared = p["shared"] * 2.0
    return jnp.stack([jnp.sum(p["own"] ** 2) + jnp.sum(shared),
                      jnp.sum(jnp.log(shared - 2.0))])  # log(0): -inf, its partial inf
  params = {"own": jnp.array([1.0, 2.0]), "shared": jnp.array([1.0, 3.0])}
  values, grads = weighting.per_task_grads(fn, params)
  assert np.isfinite(values[0]) and not np.isfinite(values[1])
  np.testing.assert_array_equal(grads["own"][0], [2.0, 4.0])  # untouched by task 1
  assert not np.all(np.isfinite(grads["shared"][0]))  # reached through the shared node
  # With every task finite, each row is that task's own gradient.
  finite = lambda p: jnp.stack([jnp.sum(p["own"] ** 2), jnp.sum(jnp.log(p["shared"]))])
  _, grads = weighting.per_task_grads(finite, params)
  np.testing.assert_allclose(grads["shared"][1], 1.0 / params["shared"], rtol=1e-6)
  np.testing.assert_array_equal(grads["shared"][0], [0.0, 0.0])

