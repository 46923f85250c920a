"""Gradual magnitude pruning (`sparsity.gradual_magnitude`) against Zhu & Gupta's cubic
schedule computed by hand, its exact final count, and pruned weights held at zero."""
import json
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmcompress import sparsity

SHAPES = {"dense": {"kernel": (20, 30), "bias": (30,)}, "out": {"kernel": (30, 7)},
          "head_0": {"kernel": (7, 3)}}


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), SHAPES,
                      is_leaf=lambda s: isinstance(s, tuple))


def _by_hand(t, s_i, s_f, t0, t_end):
  """s(t) = s_f + (s_i − s_f)(1 − (t − t0)/(t_end − t0))³, written out again."""
  if t >= t_end:
    return s_f
  return s_f + (s_i - s_f) * (1 - (t - t0) / (t_end - t0)) ** 3


@pytest.mark.parametrize("inner", [optax.sgd(0.05, momentum=0.9), optax.adam(1e-2)],
                         ids=["momentum", "adam"])
def test_the_sparsity_follows_the_cubic_schedule_and_ends_exactly_at_the_target(inner):
  s_i, s_f, t0, t_end, every = 0.1, 0.9, 2, 14, 3
  tx = sparsity.gradual_magnitude(inner, sparsity=s_f, begin_step=t0, end_step=t_end,
                                  update_every=every, initial_sparsity=s_i)
  params, state = _params(), None
  state = tx.init(params)
  step = jax.jit(tx.update)
  rng = np.random.default_rng(1)
  due = [t for t in range(t0, t_end + 1) if (t - t0) % every == 0] + [t_end]
  pruned_before = {k: np.zeros(SHAPES[k]["kernel"], bool) for k in ("dense", "out")}
  for t in range(20):
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    before = params
    updates, state = step(grads, state, params)
    params = optax.apply_updates(params, updates)
    # The schedule's last mask update at or before t (none yet: nothing pruned).
    done = [d for d in due if d <= t]
    target = _by_hand(done[-1], s_i, s_f, t0, t_end) if done else 0.0
    for name in ("dense", "out"):
      kernel = np.asarray(params[name]["kernel"])
      n = kernel.size
      zeros = kernel == 0
      assert zeros.sum() == math.floor(target * n + 0.5), (t, name)
      assert (zeros == ~np.asarray(state.masks[name]["kernel"])).all()
      assert zeros[pruned_before[name]].all(), "a pruned weight came back"
      if t in due:  # the kept entries are the largest |w| among those kept before this step
        old = np.abs(np.asarray(before[name]["kernel"])).ravel()
        old[pruned_before[name].ravel()] = -1.0
        k = math.floor(target * n + 0.5)
        want = np.ones(n, bool)
        want[np.argsort(old, kind="stable")[:k]] = False
        assert (want == ~zeros.ravel()).all()
      pruned_before[name] = zeros
    assert (np.asarray(params["head_0"]["kernel"]) != 0).all()  # a head is never pruned
    assert (np.asarray(params["dense"]["bias"]) != 0).all()
  final = sparsity.magnitude_masks(params, s_f)
  for name in ("dense", "out"):
    assert (np.asarray(final[name]["kernel"]) == np.asarray(state.masks[name]["kernel"])).all()


def test_the_schedule_helpers_match_the_formula():
  steps = sparsity.gradual.update_steps(5, 25, 6)
  assert steps == (5, 11, 17, 23, 25)
  for t in (0, 5, 11, 17, 24, 25, 40):
    want = _by_hand(max(t, 5), 0.0, 0.98, 5, 25)
    assert sparsity.cubic_sparsity(t, initial=0.0, final=0.98, begin_step=5,
                                   end_step=25) == pytest.approx(want, abs=1e-15)


@pytest.mark.parametrize("kwargs,fragment", [
    ({"sparsity": 1.0}, "sparsity"), ({"initial_sparsity": 0.99}, "initial_sparsity"),
    ({"begin_step": 10, "end_step": 5}, "end_step"), ({"update_every": 0}, "update_every")])
def test_bad_schedules_are_refused_with_the_argument_named(kwargs, fragment):
  args = {"sparsity": 0.9, "begin_step": 0, "end_step": 10, "update_every": 2, **kwargs}
  with pytest.raises(ValueError, match=fragment):
    sparsity.gradual_magnitude(optax.sgd(0.1), **args)


def test_the_gradual_stage_prunes_to_the_target_in_the_pipeline(tmp_path, tiny_config):
  """``stages = (pretrain, gradual, retrain)``: a gradient-level method (its stacked per-task
  gradients masked inside the wrapper; a loss-level weighting's plain gradient is the simpler
  case, covered by the transform's own tests) ends with every prunable layer at exactly the
  count of zeros `magnitude_masks` plans, in the exported model too; a stage order that ends
  with the gradual stage is refused."""
  from mmcompress import export  # pylint: disable=import-outside-toplevel
  from mmcompress.app import comparison  # pylint: disable=import-outside-toplevel
  from mmcompress.train import stages  # pylint: disable=import-outside-toplevel
  config = tiny_config(methods=("pcgrad",), stages=("pretrain", "gradual", "retrain"),
                       **{"epochs.gradual": 2})
  comparison.run(config, str(tmp_path), print_report=False)
  for method in config.methods:
    result = json.loads((tmp_path / "seed0" / method / "result.json").read_text())
    assert result["export"]["round_trip_exact"]
    params = export.load(tmp_path / result["export"]["path"])
    planned = sparsity.planned_summary(params, config.sparsity)
    got = sparsity.summary(params, jax.tree.map(lambda p: p != 0, params))
    assert got["prunable_nonzero"] == planned["prunable_nonzero"] == (
        result["parameters"]["prunable_nonzero"])
    prunable = [n for n, leaf in planned["leaves"].items() if leaf["prunable"]]
    assert prunable and all(got["leaves"][n]["nonzero"] == planned["leaves"][n]["nonzero"]
                            for n in prunable), (got["leaves"], planned["leaves"])
  with pytest.raises(ValueError, match="must be followed by 'retrain'"):
    stages.check_stage_order(("pretrain", "gradual"))


@pytest.mark.parametrize("stages", [("pretrain", "gradual", "retrain"), ("sparse",)])
@pytest.mark.parametrize("overrides, named", [
    ({"structure": "filter"}, "config.structure='filter'"),
    ({"structure": "2:4", "sparsity": 0.5}, "config.structure='2:4'"),
    ({"scope": "global"}, "config.scope='global'"),
    ({"prune.criterion": "taylor"}, "config.prune.criterion='taylor'"),
    ({"methods": ("equal", "minmax+taylor_max")}, "method 'minmax+taylor_max'")])
def test_settings_the_gradual_and_sparse_stages_would_ignore_are_refused(tiny_config, stages,
                                                                          overrides, named):
  from mmcompress import errors  # pylint: disable=import-outside-toplevel
  from mmcompress.app import comparison  # pylint: disable=import-outside-toplevel
  config = tiny_config(stages=stages, **overrides)
  with pytest.raises(errors.UserError, match=re.escape(named)):
    comparison.validate(config)
  comparison.validate(tiny_config(stages=stages))  # the defaults are what the stage does


def test_an_n_m_structure_names_the_sparsity_it_needs_exactly(tiny_config):
  from mmcompress import errors  # pylint: disable=import-outside-toplevel
  from mmcompress.app import comparison  # pylint: disable=import-outside-toplevel
  with pytest.raises(errors.UserError, match=re.escape("--config.sparsity=0.6666666666666667")):
    comparison.validate(tiny_config(structure="1:3"))
  comparison.validate(tiny_config(structure="1:3", sparsity=0.6666666666666667))
