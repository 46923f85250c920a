"""Task weightings behind one interface, so a trainer need not know which one it runs.

A `TaskWeighting` bundles what a training loop needs from a way of weighting K task losses:

* ``init(num_tasks) -> (task_params, task_state)``: the weighting's *learnable* values
  (``task_params``: min-max's task weights, uncertainty's log-variances, nothing for the
  others) and its *non-learned* memory (``task_state``: DWA's loss history, FAMO's logits).
* ``objective(task_losses, task_params, task_state, key=None)``: the pure function to
  differentiate. For a *loss-level* weighting it is a scalar, differentiated jointly with
  the model in one `jax.grad` over ``{"params": model, "task_params": task_params}``. For a
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
  the number of tasks (and a seed, default 0) that returns the optax transform turning the stacked per-task
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

import inspect
import types
from collections.abc import Callable
from typing import Any


from mmcompress import _checks
from mmcompress.weighting.base import REDUCTIONS, TaskWeighting
from mmcompress.weighting.db_mtl import DBMTLState, db_mtl, db_mtl_aggregate
from mmcompress.weighting.dwa import DWAState, dwa
from mmcompress.weighting.equal import equal
from mmcompress.weighting.famo import FAMOState, famo
from mmcompress.weighting.gls import gls
from mmcompress.weighting import gradient_methods as gm
from mmcompress.weighting.gradient import (GRAD_MODES, UNROLL_MAX_TASKS, AggregateState,
                                           aggregate, current_weights, default_shared,
                                           grad_mode, per_task_grads, sum_tasks)
from mmcompress.weighting.minmax import AutoScalesState, minmax, minmax_auto
from mmcompress.weighting.rlw import rlw
from mmcompress.weighting.stch import STCHState, stch
from mmcompress.weighting.uncertainty import uncertainty

# name -> factory: one line per weighting. A factory's keyword arguments are its knobs, read
# from the config section of its name (`from_config`).
_FACTORIES: dict[str, Callable[..., TaskWeighting]] = {
    "equal": equal,
    "uncertainty": uncertainty,
    "dwa": dwa,
    "minmax": minmax,
    "rlw": rlw,
    "gls": gls,
    "stch": stch,
    "famo": famo,
    "minmax_auto": minmax_auto,
    # Gradient-level: the aggregators of `mmcompress.aggregators` (gradient_methods.py).
    "mgda": gm.mgda,
    "pcgrad": gm.pcgrad,
    "cagrad": gm.cagrad,
    "imtl_g": gm.imtl_g,
    "nash_mtl": gm.nash_mtl,
    "aligned_mtl": gm.aligned_mtl,
    "upgrad": gm.upgrad,
    "fairgrad": gm.fairgrad,
    "db_mtl": db_mtl,
}
# The weightings that read another's config section: minmax_auto shares min-max's knobs.
_SECTIONS: dict[str, str] = {"minmax_auto": "minmax"}
# Every registered weighting by name (a read-only view: `register` adds to it).
WEIGHTINGS = types.MappingProxyType(_FACTORIES)
# What `from_config` passes to a factory that takes it, besides its section's knobs.
_CONTEXT = ("task_scales", "reduction", "steps_per_epoch")


def register(name: str, factory: Callable[..., TaskWeighting], *,
             section: str | None = None) -> None:
  """Adds a weighting: ``config.methods`` can then name it, and `from_config` builds it with
  the keyword arguments of its config section (``config.<section or name>``; a missing
  section leaves every knob at the factory's default).

  Args:
    name: the method's name (letters, digits and underscores; not registered yet).
    factory: ``(**knobs) -> TaskWeighting``; it may also take ``task_scales``, ``reduction``
      and ``steps_per_epoch``, which `from_config` passes from the config and the trainer.
    section: the config section to read, if not ``config.<name>``.
  """
  if not (isinstance(name, str) and name.isidentifier()):
    raise _checks.UserError(f"a weighting's name must be an identifier, got {name!r}.")
  if name in _FACTORIES:
    raise _checks.UserError(f"a weighting named {name!r} is registered already.")
  if not callable(factory):
    raise _checks.UserError(f"the factory of {name!r} must be callable, got {factory!r}.")
  _FACTORIES[name] = factory
  if section is not None:
    _SECTIONS[name] = section


def unregister(name: str) -> None:
  """Removes a weighting `register` added (for tests and notebooks)."""
  _checks.one_of(name, tuple(_FACTORIES), "weighting")
  del _FACTORIES[name]
  _SECTIONS.pop(name, None)


def create(name: str, **kwargs: Any) -> TaskWeighting:
  """The weighting called `name` (one of `WEIGHTINGS`), built with `kwargs`."""
  _checks.one_of(name, tuple(WEIGHTINGS), "weighting")
  return WEIGHTINGS[name](**kwargs)


def section_name(name: str) -> str:
  """The config section the weighting `name` reads its knobs from."""
  return _SECTIONS.get(name, name)


def knobs(name: str) -> tuple[str, ...]:
  """The keyword arguments of the weighting `name` that a config section may set."""
  _checks.one_of(name, tuple(WEIGHTINGS), "weighting")
  params = inspect.signature(WEIGHTINGS[name]).parameters.values()
  return tuple(p.name for p in params if p.name not in _CONTEXT
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def from_config(name: str, config: Any, *, steps_per_epoch: int) -> TaskWeighting:
  """The weighting called `name`, with its knobs read from an experiment config.

  One reader serves every registered weighting: the entries of ``config.<section>``
  (`section_name`) are passed as the factory's keyword arguments, and so are
  ``config.task_scales`` (() for none), ``config.loss_reduction`` (one of `REDUCTIONS`) and
  `steps_per_epoch` to a factory that takes them. An entry the factory does not take is
  refused, naming the knobs it has.

  Args:
    name: one of `WEIGHTINGS`.
    config: the experiment config (any mapping with these fields).
    steps_per_epoch: training steps per epoch (min-max's once-per-epoch ascent).

  Returns:
    The `TaskWeighting`.
  """
  _checks.one_of(name, tuple(WEIGHTINGS), "weighting")
  section = section_name(name)
  given = dict(config.get(section) or {})
  allowed = knobs(name)
  unknown = sorted(set(given) - set(allowed))
  if unknown:
    raise _checks.UserError(
        f"config.{section}.{unknown[0]} is not a knob of the weighting {name!r}: its knobs are "
        f"{list(allowed)}; remove it or correct its name.")
  context = {"task_scales": tuple(config.get("task_scales") or ()) or None,
             "reduction": _checks.one_of(config.get("loss_reduction", "mean"), REDUCTIONS,
                                         "config.loss_reduction"),
             "steps_per_epoch": steps_per_epoch}
  takes = inspect.signature(WEIGHTINGS[name]).parameters
  given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
  return WEIGHTINGS[name](**given, **{k: v for k, v in context.items() if k in takes})


mgda, pcgrad, cagrad, imtl_g = gm.mgda, gm.pcgrad, gm.cagrad, gm.imtl_g
nash_mtl, aligned_mtl, upgrad, fairgrad = gm.nash_mtl, gm.aligned_mtl, gm.upgrad, gm.fairgrad

__all__ = [
    "GRAD_MODES",
    "grad_mode",
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
    "knobs",
    "mgda",
    "minmax",
    "minmax_auto",
    "nash_mtl",
    "pcgrad",
    "per_task_grads",
    "register",
    "rlw",
    "section_name",
    "stch",
    "sum_tasks",
    "uncertainty",
    "unregister",
    "upgrad",
]
