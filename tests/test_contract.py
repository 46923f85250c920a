"""The contract every exported transform keeps, as optax's ``contrib/_common_test.py``.

One list of ``(name, factory)`` cases covers every transform the package exports; each factory
returns ``(tx, params, grad_fn)``: the transform, a small params pytree of the kind its
docstring asks for, and the gradient of a fixed loss at given params. Every case goes through
the same checks, each a small helper used by all cases: init and update under `jax.jit`,
`jax.eval_shape`, a state of fixed structure, shapes and dtypes with finite floats, no retrace
across steps, `optax.tree_map_params`, and a donating step. The last test shows that the
checks catch a transform whose state changes shape.
"""
from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mmcompress
from mmcompress import sparsity as sp
from mmcompress import weighting
from mmcompress.train import plan as plan_lib
from mmcompress.train import stages as stages_lib
from mmcompress.train import variants

STEPS = 5
_RNG = np.random.default_rng(0)
_X = jnp.asarray(_RNG.normal(size=(8, 4)), jnp.float32)
_Y = jnp.asarray(_RNG.normal(size=(2, 8, 6)), jnp.float32)  # one target per task
_KEY = jax.random.key(0)  # the step's key a trainer passes to every objective (RLW draws from it)


def _model_params():
  """A (4, 6) kernel and a (6,) bias, fresh arrays on every call."""
  kernel = np.random.default_rng(1).normal(size=(4, 6))
  return {"kernel": jnp.asarray(kernel, jnp.float32), "bias": jnp.zeros((6,), jnp.float32)}


def _task_losses(model):
  pred = _X @ model["kernel"] + model["bias"]
  return jnp.stack([jnp.mean((pred - _Y[k]) ** 2) for k in range(2)])


def _model_case(tx):
  return tx, _model_params(), jax.grad(lambda p: jnp.sum(_task_losses(p)))


def _simplex_case(**kwargs):
  losses = jnp.array([1.0, 2.0, 3.0])
  grad_fn = jax.grad(lambda w: mmcompress.saddle_objective(losses, w, gamma=1.0))
  return mmcompress.simplex_ascent(0.1, **kwargs), mmcompress.equal_task_weights(3), grad_fn


def _saddle_case(descent, ascent, objective, task_params):
  params = {"params": _model_params(), "task_params": task_params}
  grad_fn = jax.grad(lambda p: objective(_task_losses(p["params"]), p["task_params"]))
  return mmcompress.saddle_point(descent, ascent), params, grad_fn


def _weighting_case(name, **kwargs):
  """A loss-level weighting's `tx` on its own task params, at the task losses of fixed model
  params; a gradient-level one's aggregator (chained with SGD) on the model params, fed the
  stacked per-task gradients."""
  w = weighting.create(name, **kwargs)
  task_params, task_state = w.init(2)
  if w.aggregate is not None:
    def stacked(p):
      return weighting.per_task_grads(
          lambda q: w.objective(_task_losses(q), task_params, task_state, _KEY), p)[1]
    return optax.chain(w.aggregate(2, 0), optax.sgd(0.1)), _model_params(), stacked
  losses = _task_losses(_model_params())
  return w.tx, task_params, jax.grad(lambda tp: w.objective(losses, tp, task_state, _KEY))


def _stacked_grads(model):
  return weighting.per_task_grads(_task_losses, model)[1]


def _softmax_of_norms(gram, key):
  del key
  return jax.nn.softmax(jnp.sqrt(jnp.diagonal(gram)))


def _static_sparse_case(inner):
  return _model_case(sp.static_sparse(inner, sp.magnitude_masks(_model_params(), 0.5)))


def _dynamic_case(inner):
  return _model_case(sp.dynamic_sparse(inner, sparsity=0.5, update_every=2, grow_fraction=0.2))


def _trainer_case(stage, name="sgd"):
  """The descent the trainer builds for `stage` (a run's variant: scale 2, clip 1), at half
  masks where the stage takes them."""
  plan = plan_lib.Plan(optimizer=plan_lib.Optimizer(name=name))
  masks = sp.magnitude_masks(_model_params(), 0.5) if stage == "retrain" else None
  return _model_case(stages_lib.descent_transform(stage, plan, 2, masks=masks,
                                                  variant=variants.Variant(2.0, 1.0)))


def _stage_case():
  """`stage_transform`: min-max's saddle point over a retrain stage's masked descent."""
  w = weighting.create("minmax", gamma=1.0)
  task_params, task_state = w.init(2)
  masks = {"params": sp.magnitude_masks(_model_params(), 0.5)}
  tx = stages_lib.stage_transform("retrain", plan_lib.Plan(), 2, w, 2, masks=masks["params"])
  params = {"params": _model_params(), "task_params": task_params}
  grad_fn = jax.grad(lambda p: w.objective(_task_losses(p["params"]), p["task_params"],
                                           task_state, _KEY))
  return tx, params, grad_fn


CASES = [
    ("simplex_ascent_euclidean", _simplex_case),
    ("simplex_ascent_entropic", functools.partial(_simplex_case, geometry="entropic")),
    ("simplex_ascent_euclidean_every3", functools.partial(_simplex_case, every=3)),
    ("simplex_ascent_entropic_every3",
     functools.partial(_simplex_case, geometry="entropic", every=3)),
    ("saddle_point", lambda: _saddle_case(
        optax.adam(1e-2), mmcompress.simplex_ascent(0.1),
        functools.partial(mmcompress.saddle_objective, gamma=1.0),
        mmcompress.equal_task_weights(2))),
    ("static_sparse_sgd", lambda: _static_sparse_case(optax.sgd(0.1, momentum=0.9))),
    ("static_sparse_adam", lambda: _static_sparse_case(optax.adam(1e-2))),
    ("add_reweighted_l1", lambda: _model_case(optax.chain(
        sp.add_reweighted_l1(1e-3, refresh_every=2), optax.sgd(0.1)))),
    ("dynamic_sparse_sgd", lambda: _dynamic_case(optax.sgd(0.1, momentum=0.9))),
    ("dynamic_sparse_adam", lambda: _dynamic_case(optax.adam(1e-2))),
    ("gradual_magnitude_adam", lambda: _model_case(sp.gradual_magnitude(
        optax.adam(1e-2), sparsity=0.5, begin_step=1, end_step=4, update_every=2))),
    ("weighting_equal", lambda: _weighting_case("equal")),
    ("weighting_uncertainty", lambda: _weighting_case("uncertainty")),
    ("weighting_dwa", lambda: _weighting_case("dwa")),
    ("weighting_minmax", lambda: _weighting_case("minmax", gamma=1.0)),
    ("weighting_db_mtl", lambda: _weighting_case("db_mtl")),
    *((f"weighting_{name}", functools.partial(_weighting_case, name))
      for name in ("mgda", "pcgrad", "cagrad", "imtl_g", "nash_mtl", "aligned_mtl", "upgrad",
                   "fairgrad")),
    ("weighting_rlw", lambda: _weighting_case("rlw")),
    ("weighting_gls", lambda: _weighting_case("gls")),
    ("weighting_stch", lambda: _weighting_case("stch")),
    ("weighting_famo", lambda: _weighting_case("famo")),
    ("weighting_minmax_auto", lambda: _weighting_case("minmax_auto", gamma=1.0)),
    ("sum_tasks", lambda: (optax.chain(weighting.sum_tasks(), optax.sgd(0.1)), _model_params(),
                           _stacked_grads)),
    ("aggregate_static_sparse", lambda: (
        sp.static_sparse(optax.chain(weighting.aggregate(_softmax_of_norms, 2), optax.sgd(0.1)),
                         sp.magnitude_masks(_model_params(), 0.5)),
        _model_params(), _stacked_grads)),
    ("db_mtl_aggregate", lambda: (optax.chain(weighting.db_mtl_aggregate(2), optax.sgd(0.1)),
                                  _model_params(), _stacked_grads)),
    ("clip_by_run", lambda: _model_case(optax.chain(variants.clip_by_run(1.0),
                                                    optax.sgd(0.1)))),
    ("scale_by_run", lambda: _model_case(optax.chain(optax.sgd(0.1),
                                                     variants.scale_by_run(2.0)))),
    ("base_optimizer_adam", lambda: _model_case(stages_lib.base_optimizer(
        plan_lib.Optimizer(name="adam"), 10, variant=variants.Variant(2.0, 1.0)))),
    ("descent_transform_retrain", functools.partial(_trainer_case, "retrain")),
    ("descent_transform_sparse", functools.partial(_trainer_case, "sparse", "adam")),
    ("descent_transform_gradual", functools.partial(_trainer_case, "gradual")),
    ("stage_transform_retrain_minmax", _stage_case),
]
# Every registered weighting has a case: those not listed above (a weighting added later) at
# their factory's defaults.
CASES += [(f"weighting_{n}", functools.partial(_weighting_case, n))
          for n in weighting.WEIGHTINGS if f"weighting_{n}" not in dict(CASES)]
FACTORIES = dict(CASES)
SADDLE_POINTS = ("saddle_point", "stage_transform_retrain_minmax")
# The cases whose params (or task params) are task weights on the simplex.
ON_THE_SIMPLEX = tuple(n for n in FACTORIES if n.startswith("simplex_ascent")) + SADDLE_POINTS + (
    "weighting_minmax", "weighting_minmax_auto")
# The modules whose exported transform factories (annotated as returning one) need a case.
EXPORTING = (mmcompress, sp, weighting, variants, stages_lib)



def _cases(check):
  """The case names for `check` (every case goes through every check)."""
  del check
  return pytest.mark.parametrize("name", [n for n, _ in CASES])


# ----------------------------------------------------------------------------- the checks


def _spec(tree):
  """The tree with every leaf replaced by its (shape, dtype)."""
  return jax.tree.map(lambda x: (tuple(jnp.shape(x)), jnp.result_type(x).name), tree)


def assert_same_spec(got, want):
  """Asserts two pytrees have the same structure, shapes and dtypes."""
  assert jax.tree.structure(got) == jax.tree.structure(want)
  assert _spec(got) == _spec(want)


def _step_fn(tx, grad_fn):
  def step(params, state):
    updates, state = tx.update(grad_fn(params), state, params)
    return optax.apply_updates(params, updates), state, updates
  return step


def trajectory(tx, params, grad_fn, *, jit=True):
  """``[(params, state, updates)]`` from init over `STEPS` steps; jitted ones trace once."""
  step, init = _step_fn(tx, grad_fn), tx.init
  if jit:
    chex.clear_trace_counter()
    step, init = jax.jit(chex.assert_max_traces(step, n=1)), jax.jit(init)
  out = [(params, init(params), None)]
  for _ in range(STEPS):
    out.append(step(*out[-1][:2]))
  return out


def check_updates_and_params(traj):
  """Every update is finite; the params keep their structure, shapes and dtypes."""
  for params, _, updates in traj[1:]:
    assert_same_spec(params, traj[0][0])
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


def check_state(traj):
  """The state keeps its structure, shapes and dtypes; its floating leaves are finite."""
  for _, state, _ in traj:
    assert_same_spec(state, traj[0][1])
    for leaf in jax.tree.leaves(state):
      if jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
        assert bool(jnp.all(jnp.isfinite(leaf)))


def check_eval_shape(tx, params, grad_fn):
  """`jax.eval_shape` of init and update agrees with the real calls."""
  state = tx.init(params)
  assert_same_spec(jax.eval_shape(tx.init, params), state)
  grads = grad_fn(params)
  assert_same_spec(jax.eval_shape(tx.update, grads, state, params),
                   tx.update(grads, state, params))


def check_tree_map_params(tx, params, *, extra_trees=True):
  """`optax.tree_map_params` maps the state's param-shaped parts and keeps its structure; with
  a tree like the params beside the state (how partition specs are mapped), every mapped
  leaf meets the params' leaf of its place."""
  state, seen = tx.init(params), []
  mapped = optax.tree_map_params(tx, lambda x: seen.append(jnp.shape(x)) or jnp.zeros_like(x),
                                 state)
  assert_same_spec(mapped, state)
  assert set(seen) <= {jnp.shape(p) for p in jax.tree.leaves(params)}
  if extra_trees:
    pairs = []
    again = optax.tree_map_params(tx, lambda x, p: pairs.append((jnp.shape(x), jnp.shape(p)))
                                  or x, state, params)
    assert_same_spec(again, state)
    assert len(pairs) == len(seen) and all(x == p for x, p in pairs)


def check_donation(tx, params, grad_fn):
  """A step donating (params, state) runs twice from a fresh init, as the plain step does."""
  step = _step_fn(tx, grad_fn)

  def run(fn, p):
    s = tx.init(p)
    for _ in range(2):
      p, s, _ = fn(p, s)
    return jax.device_get((p, s))

  want = run(jax.jit(step), jax.tree.map(jnp.copy, params))
  donating = jax.jit(step, donate_argnums=(0, 1))
  for _ in range(2):  # a second init must not hand out buffers the first run donated
    chex.assert_trees_all_close(run(donating, jax.tree.map(jnp.copy, params)), want)


def check_all(tx, params, grad_fn):
  """Every check of this suite on one transform (for a case defined elsewhere, e.g. a weighting
  a test registers)."""
  traj = trajectory(tx, params, grad_fn)
  check_updates_and_params(traj)
  check_state(traj)
  check_eval_shape(tx, params, grad_fn)
  check_tree_map_params(tx, params)
  check_donation(tx, params, grad_fn)


@functools.cache
def _trajectory_of(name):
  return trajectory(*FACTORIES[name]())


# ----------------------------------------------------------------------------- the tests


@_cases("")
def test_jitted_steps_keep_params_and_give_finite_updates(name):
  check_updates_and_params(_trajectory_of(name))


@_cases("")
def test_eval_shape_matches_the_real_calls(name):
  check_eval_shape(*FACTORIES[name]())


@_cases("")
def test_state_is_fixed_in_shape_and_finite(name):
  check_state(_trajectory_of(name))


@_cases("")
def test_jitted_step_does_not_retrace(name):
  _trajectory_of(name)  # its steps ran under chex.assert_max_traces, which raises on a retrace


@_cases("tree_map_params")
def test_tree_map_params(name):
  tx, params, _ = FACTORIES[name]()
  # A saddle point's halves each map their own half of an extra tree (the test below).
  check_tree_map_params(tx, params, extra_trees=name not in SADDLE_POINTS)


def test_saddle_point_maps_extra_trees_one_half_at_a_time():
  """`saddle_point`'s documented limit: optax hands every params-shaped part of the state the
  whole of an extra tree, and each half holds only its half of the params; each half's state
  maps with its own half of the tree."""
  descent, ascent = optax.adam(1e-2), mmcompress.simplex_ascent(0.1, every=3)
  tx = mmcompress.saddle_point(descent, ascent)
  params = {"params": _model_params(), "task_params": mmcompress.equal_task_weights(2)}
  state = tx.init(params)
  with pytest.raises(ValueError):
    optax.tree_map_params(tx, lambda x, p: x, state, params)
  check_tree_map_params(descent, params["params"])
  check_tree_map_params(ascent, params["task_params"])
  halves = (optax.tree_map_params(descent, lambda x, p: x + 1, state.descent, params["params"]),
            optax.tree_map_params(ascent, lambda x, p: x + 1, state.ascent,
                                  params["task_params"]))
  assert float(halves[0][0].mu["bias"][0]) == 1.0 and float(halves[1].grad_sum[0]) == 1.0


@_cases("donation")
def test_donated_step_is_safe_and_agrees(name):
  check_donation(*FACTORIES[name]())


def _growing_state():
  """A broken transform: its state grows by one entry every step."""
  return optax.GradientTransformation(
      lambda params: jnp.zeros((0,)),
      lambda updates, state, params=None: (updates, jnp.append(state, 1.0)))


@pytest.mark.parametrize("jit, match", [(True, "traced > 1 times"), (False, None)],
                         ids=["retrace_check", "state_check"])
def test_the_checks_catch_a_state_that_changes_shape(jit, match):
  _, params, grad_fn = _model_case(None)
  with pytest.raises(AssertionError, match=match):
    check_state(trajectory(_growing_state(), params, grad_fn, jit=jit))


@pytest.mark.parametrize("name", ON_THE_SIMPLEX)
def test_task_weights_stay_on_the_simplex_at_every_step(name):
  for params, _, _ in _trajectory_of(name):
    w = np.asarray(params["task_params"] if isinstance(params, dict) else params, np.float64)
    assert w.shape == (np.size(w),) and np.all(w >= 0.0), (name, w)
    assert abs(w.sum() - 1.0) < 1e-6, (name, w)


def test_every_exported_transform_has_a_contract_case():
  """Each factory an exporting module lists in __all__ and annotates as returning a
  `GradientTransformation` is the start of some case's name (its own transform, or inside
  the case's chain)."""
  missing = []
  for module in EXPORTING:
    for name in module.__all__:
      obj = getattr(module, name)
      annotation = getattr(obj, "__annotations__", {}).get("return", "")
      if callable(obj) and "GradientTransformation" in str(annotation):
        if not any(case.startswith(name) for case in FACTORIES):
          missing.append(f"{module.__name__}.{name}")
  assert not missing, f"no contract case for {missing}"


def test_every_registered_weighting_has_a_contract_case():
  assert {f"weighting_{name}" for name in weighting.WEIGHTINGS} <= set(FACTORIES)
