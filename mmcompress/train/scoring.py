"""Task-aware pruning in the pipeline: which criterion a method prunes by, and its masks.

A method in ``config.methods`` is a weighting name, optionally followed by ``+`` and a pruning
criterion: ``"minmax"`` prunes by ``config.prune.criterion`` (``"magnitude"`` by default, as
the paper), ``"minmax+taylor_max"`` by the per-task first-order Taylor scores aggregated with
``max``. A criterion is ``"magnitude"`` or ``"taylor_<aggregate>"`` with an aggregate of
`mmcompress.sparsity.AGGREGATIONS`. (Magnitude is the same for every task, so every
aggregate of it is plain magnitude pruning.)

The Taylor scores are averaged over ``config.prune.calibration_batches`` batches of the
*training* split, drawn as the training stages draw theirs (for the prune stage's own index,
so they are batches no training stage of this run saw in this order), at the weights the
prune stage receives: per batch, the K per-task gradients
(`mmcompress.weighting.per_task_grads`), then |θ ⊙ ∂L_k/∂θ|, then the mean over batches.
The ``minmax`` aggregate weights the tasks by the method's task weights at prune time (its
weighting's weights at the end of the stage before the prune: the min-max player decides
whose weights survive), recorded with the run's result.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmcompress import _checks, sparsity, weighting as weighting_lib
from mmcompress.problems import Problem
from mmcompress.train import parallel, plan as plan_lib

__all__ = ["calibration_scores", "CRITERIA", "Criterion", "default_criterion", "make_scoring_step",
           "parse_method", "prune_masks"]

CRITERIA = ("magnitude",) + tuple(f"taylor_{a}" for a in sparsity.AGGREGATIONS)


class Criterion(NamedTuple):
  """How a method chooses its masks: ``name`` in `CRITERIA`."""
  name: str

  @property
  def task_aware(self) -> bool:
    return self.name != "magnitude"

  @property
  def aggregate(self) -> str | None:
    return self.name.split("_", 1)[1] if self.task_aware else None


def parse_method(method: str, config: plan_lib.Plan) -> tuple[str, Criterion]:
  """(weighting name, criterion) of a ``config.methods`` entry, or raises naming the entry.
  An entry may pin a variant after ``@`` (`mmcompress.train.variants.pinned`)."""
  name, _, suffix = method.partition("@")[0].partition("+")
  _checks.one_of(name, tuple(weighting_lib.WEIGHTINGS), "config.methods entry")
  criterion = suffix or default_criterion(config)
  _checks.one_of(criterion, CRITERIA, f"the pruning criterion of method {method!r}")
  return name, Criterion(criterion)


def default_criterion(config: plan_lib.Plan) -> str:
  """``config.prune.criterion`` (with ``config.prune.aggregate`` for ``"taylor"``)."""
  prune = config.prune
  criterion = _checks.one_of(prune.criterion, ("magnitude", "taylor"), "config.prune.criterion")
  if criterion == "magnitude":
    return criterion
  return "taylor_" + _checks.one_of(prune.aggregate, tuple(sparsity.AGGREGATIONS),
                                    "config.prune.aggregate")


def make_scoring_step(problem: Problem, model: nn.Module, mesh: jax.sharding.Mesh
                      ) -> Callable[[Any, Any, dict, jax.Array], Any]:
  """The jitted ``(params, model_state, batch, key_data) -> stacked Taylor scores`` of one
  batch: the K per-task gradients (`per_task_grads`), then |θ ⊙ ∂L_k/∂θ|. Make it once per
  experiment: every prune of every run then reuses its compilation."""

  def scores(params, model_state, batch, key_data):
    rng = jax.random.wrap_key_data(key_data)
    losses = lambda p: problem.task_losses(model, p, model_state, batch, rng)[0]  # noqa: E731
    _, grads = weighting_lib.per_task_grads(losses, params)
    return sparsity.taylor_scores(params, grads)

  replicated = parallel.replicated(mesh)
  return jax.jit(scores, in_shardings=(replicated, replicated,
                                       parallel.batch_sharded(mesh, problem.batch_axis),
                                       replicated),
                 out_shardings=replicated)


def calibration_scores(step: Callable[..., Any], params: Any, model_state: Any,
                       batches: list[dict], mesh: jax.sharding.Mesh, batch_axis: int,
                       seed: int) -> Any:
  """The mean over `batches` of the per-task Taylor scores from `step` (`make_scoring_step`),
  stacked: every leaf with a leading axis of K."""
  key_data = jax.random.key_data(jax.random.key(seed))
  total = None
  for batch in batches:
    out = step(params, model_state, parallel.shard_batch(batch, mesh, batch_axis), key_data)
    total = out if total is None else jax.tree.map(jnp.add, total, out)
  return jax.tree.map(lambda s: s / len(batches), total)


def prune_masks(criterion: Criterion, config: plan_lib.Plan, params: Any, *,
                problem: Problem, scoring_step: Callable[..., Any], model_state: Any,
                mesh: jax.sharding.Mesh, seed: int, stage_index: int,
                task_weights: Any = None) -> tuple[Any, dict[str, Any]]:
  """The prune stage's masks under `criterion`, and what to record about them
  (`scoring_step`: `make_scoring_step` of the experiment).

  Returns:
    ``(masks, info)``: info holds the criterion, the aggregate, the calibration batches, the
    task weights used (``minmax``) and the seconds the scoring took.
  """
  structure, scope = config.structure, config.scope
  info = {"criterion": criterion.name, "aggregate": criterion.aggregate}
  if not criterion.task_aware:
    return sparsity.magnitude_masks(params, config.sparsity, structure=structure,
                                    scope=scope), info
  count = _checks.positive_int(config.prune.calibration_batches,
                               "config.prune.calibration_batches")
  start = time.perf_counter()
  batches = [problem.train_batch(seed, stage_index, step, config.batch_size)
             for step in range(count)]
  stacked = calibration_scores(scoring_step, params, model_state, batches, mesh,
                               problem.batch_axis, seed)
  weights = None
  if criterion.aggregate == "minmax":
    weights = jnp.asarray(task_weights, jnp.float32)
  masks = sparsity.task_aware_masks(stacked, config.sparsity, aggregate=criterion.aggregate,
                                    task_weights=weights, structure=structure, scope=scope)
  masks = jax.block_until_ready(masks)
  info.update(calibration_batches=count, seconds=time.perf_counter() - start,
              task_weights=None if weights is None else np.asarray(weights).tolist())
  return masks, info
