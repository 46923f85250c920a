"""Task weightings behind one interface, so a trainer need not know which one it runs.

A `TaskWeighting` bundles what a training loop needs from a way of weighting K task losses:

* ``init(num_tasks) -> (task_params, task_state)``: the weighting's *learnable* values
  (``task_params``: min-max's task weights, uncertainty's log-variances, nothing for the
  others) and its *non-learned* memory (``task_state``: DWA's loss history, FAMO's logits).
* ``objective(task_losses, task_params, task_state, key=None)``: the pure function to
  differentiate. For a *loss-level* weighting it is a scalar, differentiated jointly with
  the model in one `jax.grad` over ``{"params": model, "task_weights": task_params}``. For a
  *gradient-level* weighting (``aggregate`` is set) it is the (K,) vector of per-task
  objectives (the losses themselves, or their logarithms for DB-MTL) whose K gradients the
  aggregator combines. `key` is a PRNG key for the step; only random weightings (RLW) use it.
* ``tx``: the optax transform for ``task_params`` (an ascent for min-max, a descent for
  uncertainty, zero updates otherwise); pair it with the model's optimizer through
  `mmcompress.saddle_point`.
* ``end_epoch(task_state, epoch_mean_losses) -> task_state``: called once per epoch with the
  mean training loss of each task (DWA, STCH's warm-up).
* ``observe(task_state, task_losses) -> task_state``: called after every step with that
  step's task losses (FAMO's logit update, STCH's nadir, min-max's automatic scales); the
  default remembers nothing.
* ``weights(task_params, task_state) -> (K,)``: the effective task weights, summing to one,
  for logging and plots (a gradient-level method's weights change every step and live in
  its aggregator's state: use `current_weights`).
* ``aggregate``: None for a loss-level weighting; for a gradient-level one, a function of
  the number of tasks that returns the optax transform turning the stacked per-task
  gradients (every leaf with a leading K axis, from `per_task_grads`) into the one gradient
  the model's optimizer consumes. It goes first in that optimizer's chain, inside the sparse
  wrappers, which mask every task's gradient before it (see `mmcompress.weighting.gradient`).

The ``reduction`` of `equal`, `uncertainty`, `dwa` and `stch` says how the task losses are
added up:

* ``"mean"`` (the default): every objective is normalised so that, at its starting point, it
  equals the mean of the task losses, as min-max's does. That puts the loss-level weightings
  on one scale, not every method on one step size: a gradient-level method combines whole
  task gradients (PCGrad sums its rows) and its heads get their task's full gradient, so one
  learning rate still means different steps for different methods (docs/weightings.md,
  "Step size is part of the method"); a fair comparison tunes each method's rate.
* ``"reference"``: the reference implementation's sums, so that its baselines can be
  reproduced: equal sums the task losses, DWA weights them by K·softmax, uncertainty sums
  ½e^{−s_k} L_k + s_k / 2, STCH sums the log-losses in its warm-up and multiplies its smooth
  maximum by K after it. Each is K times (uncertainty: K/2 times) its ``"mean"`` objective,
  so with SGD it takes that many times larger steps. Min-max has no reduction: its weights stay
  on the simplex (sum one), as in the reference; nor have RLW (random weights summing to one),
  GLS (the geometric mean) and FAMO (gradient coefficients summing to one), each already as
  its reference. A weighting's own objective (GLS's geometric mean, STCH's log-losses, FAMO's)
  need not start at the mean loss.

`weights` sums to one under either reduction. See docs/deviations.md.
"""
from __future__ import annotations

from typing import Any


from mmcompress import _checks
from mmcompress.weighting.base import REDUCTIONS, TaskWeighting
from mmcompress.weighting.db_mtl import DBMTLState, db_mtl, db_mtl_aggregate
from mmcompress.weighting.db_mtl import from_config as _db_mtl_from_config
from mmcompress.weighting.dwa import DWAState, dwa
from mmcompress.weighting.dwa import from_config as _dwa_from_config
from mmcompress.weighting.equal import equal
from mmcompress.weighting.equal import from_config as _equal_from_config
from mmcompress.weighting.famo import FAMOState, famo
from mmcompress.weighting.famo import from_config as _famo_from_config
from mmcompress.weighting.gls import from_config as _gls_from_config
from mmcompress.weighting.gls import gls
from mmcompress.weighting import gradient_methods as gm
from mmcompress.weighting.gradient import (GRAD_MODES, UNROLL_MAX_TASKS, AggregateState,
                                           aggregate, current_weights, default_shared,
                                           per_task_grads, sum_tasks)
from mmcompress.weighting.minmax import from_config as _minmax_from_config
from mmcompress.weighting.minmax import auto_from_config as _minmax_auto_from_config
from mmcompress.weighting.minmax import AutoScalesState, minmax, minmax_auto
from mmcompress.weighting.rlw import from_config as _rlw_from_config
from mmcompress.weighting.rlw import rlw
from mmcompress.weighting.stch import STCHState, stch
from mmcompress.weighting.stch import from_config as _stch_from_config
from mmcompress.weighting.uncertainty import from_config as _uncertainty_from_config
from mmcompress.weighting.uncertainty import uncertainty

# name -> (the factory, its reader of an experiment config): one line per weighting.
_REGISTRY = {
    "equal": (equal, _equal_from_config),
    "uncertainty": (uncertainty, _uncertainty_from_config),
    "dwa": (dwa, _dwa_from_config),
    "minmax": (minmax, _minmax_from_config),
    "rlw": (rlw, _rlw_from_config),
    "gls": (gls, _gls_from_config),
    "stch": (stch, _stch_from_config),
    "famo": (famo, _famo_from_config),
    "minmax_auto": (minmax_auto, _minmax_auto_from_config),
    # Gradient-level: the aggregators of `mmcompress.aggregators` (gradient_methods.py).
    "mgda": (gm.mgda, gm.reader(gm.mgda)),
    "pcgrad": (gm.pcgrad, gm.reader(gm.pcgrad)),
    "cagrad": (gm.cagrad, gm.reader(gm.cagrad, "c")),
    "imtl_g": (gm.imtl_g, gm.reader(gm.imtl_g)),
    "nash_mtl": (gm.nash_mtl, gm.reader(gm.nash_mtl, "max_norm")),
    "aligned_mtl": (gm.aligned_mtl, gm.reader(gm.aligned_mtl)),
    "upgrad": (gm.upgrad, gm.reader(gm.upgrad)),
    "fairgrad": (gm.fairgrad, gm.reader(gm.fairgrad, "alpha", "max_norm")),
    "db_mtl": (db_mtl, _db_mtl_from_config),
}
WEIGHTINGS = {name: factory for name, (factory, _) in _REGISTRY.items()}


def create(name: str, **kwargs: Any) -> TaskWeighting:
  """The weighting called `name` (one of `WEIGHTINGS`), built with `kwargs`."""
  _checks.one_of(name, tuple(WEIGHTINGS), "weighting")
  return WEIGHTINGS[name](**kwargs)


def from_config(name: str, config: Any, *, steps_per_epoch: int) -> TaskWeighting:
  """The weighting called `name`, with its knobs read from an experiment config.

  Every weighting gets ``config.task_scales`` (the same per-task loss scales for all; ()
  for none) and ``config.loss_reduction`` (one of `REDUCTIONS`; the weightings without a
  reduction ignore it), and reads its own section (``config.minmax``, ``config.dwa``, ...).

  Args:
    name: one of `WEIGHTINGS`.
    config: the experiment config.
    steps_per_epoch: training steps per epoch (min-max's once-per-epoch ascent).

  Returns:
    The `TaskWeighting`.
  """
  _checks.one_of(name, tuple(WEIGHTINGS), "weighting")
  scales = tuple(config.task_scales) or None
  reduction = _checks.one_of(config.loss_reduction, REDUCTIONS, "config.loss_reduction")
  return _REGISTRY[name][1](config, steps_per_epoch=steps_per_epoch, task_scales=scales,
                            reduction=reduction)


mgda, pcgrad, cagrad, imtl_g = gm.mgda, gm.pcgrad, gm.cagrad, gm.imtl_g
nash_mtl, aligned_mtl, upgrad, fairgrad = gm.nash_mtl, gm.aligned_mtl, gm.upgrad, gm.fairgrad

__all__ = [
    "GRAD_MODES",
    "UNROLL_MAX_TASKS",
    "AggregateState",
    "AutoScalesState",
    "DBMTLState",
    "DWAState",
    "FAMOState",
    "REDUCTIONS",
    "STCHState",
    "TaskWeighting",
    "WEIGHTINGS",
    "aggregate",
    "aligned_mtl",
    "cagrad",
    "create",
    "current_weights",
    "db_mtl",
    "db_mtl_aggregate",
    "default_shared",
    "dwa",
    "equal",
    "fairgrad",
    "famo",
    "from_config",
    "gls",
    "imtl_g",
    "mgda",
    "minmax",
    "minmax_auto",
    "nash_mtl",
    "pcgrad",
    "per_task_grads",
    "rlw",
    "stch",
    "sum_tasks",
    "uncertainty",
    "upgrad",
]
