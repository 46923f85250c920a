"""Task weightings behind one interface, so a trainer need not know which one it runs.

A `TaskWeighting` bundles what a training loop needs from a way of weighting K task losses:

* ``init(num_tasks) -> (task_params, task_state)``: the weighting's *learnable* values
  (``task_params``: min-max's task weights, uncertainty's log-variances, nothing for the
  others) and its *non-learned* memory (``task_state``: DWA's loss history).
* ``objective(task_losses, task_params, task_state) -> scalar``: the pure function to
  differentiate, jointly with the model, in one `jax.grad` over
  ``{"params": model, "task_weights": task_params}``.
* ``tx``: the optax transform for ``task_params`` (an ascent for min-max, a descent for
  uncertainty, zero updates otherwise); pair it with the model's optimizer through
  `mmcompress.saddle_point`.
* ``end_epoch(task_state, epoch_mean_losses) -> task_state``: called once per epoch with the
  mean training loss of each task (only DWA uses it).
* ``weights(task_params, task_state) -> (K,)``: the effective task weights, summing to one,
  for logging and plots.

The ``reduction`` of `equal`, `uncertainty` and `dwa` says how the task losses are added up:

* ``"mean"`` (the default): every objective is normalised so that, at its starting point, it
  equals the mean of the task losses; the same descent learning rate then means the same
  thing for every weighting, min-max included.
* ``"reference"``: the reference implementation's sums, so that its baselines can be
  reproduced: equal sums the task losses, DWA weights them by K·softmax, uncertainty sums
  ½e^{−s_k} L_k + s_k / 2. Each is K times (uncertainty: K/2 times) its ``"mean"`` objective,
  so with SGD it takes that many times larger steps. Min-max has no reduction: its weights stay
  on the simplex (sum one), as in the reference.

`weights` sums to one under either reduction. See docs/deviations.md.
"""
from __future__ import annotations

from typing import Any

from jax.typing import ArrayLike

from mmcompress import _checks
from mmcompress.weighting.base import REDUCTIONS, TaskWeighting
from mmcompress.weighting.dwa import DWAState, dwa
from mmcompress.weighting.dwa import from_config as _dwa_from_config
from mmcompress.weighting.equal import equal
from mmcompress.weighting.equal import from_config as _equal_from_config
from mmcompress.weighting.minmax import from_config as _minmax_from_config
from mmcompress.weighting.minmax import minmax
from mmcompress.weighting.uncertainty import from_config as _uncertainty_from_config
from mmcompress.weighting.uncertainty import uncertainty

# name -> (the factory, its reader of an experiment config): one line per weighting.
_REGISTRY = {
    "equal": (equal, _equal_from_config),
    "uncertainty": (uncertainty, _uncertainty_from_config),
    "dwa": (dwa, _dwa_from_config),
    "minmax": (minmax, _minmax_from_config),
}
WEIGHTINGS = {name: factory for name, (factory, _) in _REGISTRY.items()}


def create(name: str, **kwargs: Any) -> TaskWeighting:
  """The weighting called `name` (one of `WEIGHTINGS`), built with `kwargs`."""
  _checks.one_of(name, tuple(WEIGHTINGS), "weighting")
  return WEIGHTINGS[name](**kwargs)


def from_config(name: str, config: Any, *, steps_per_epoch: int,
                task_scales: ArrayLike | None, reduction: str) -> TaskWeighting:
  """The weighting called `name`, with its own knobs read from an experiment config.

  Args:
    name: one of `WEIGHTINGS`.
    config: the experiment config; each weighting reads its own section (``config.minmax``,
      ``config.uncertainty``, ``config.dwa``).
    steps_per_epoch: training steps per epoch (min-max's once-per-epoch ascent).
    task_scales: the per-task loss scales shared by every weighting, or None.
    reduction: one of `REDUCTIONS` (min-max has none and ignores it).

  Returns:
    The `TaskWeighting`.
  """
  _checks.one_of(name, tuple(WEIGHTINGS), "weighting")
  return _REGISTRY[name][1](config, steps_per_epoch=steps_per_epoch, task_scales=task_scales,
                            reduction=reduction)


__all__ = [
    "DWAState",
    "REDUCTIONS",
    "TaskWeighting",
    "WEIGHTINGS",
    "create",
    "dwa",
    "equal",
    "from_config",
    "minmax",
    "uncertainty",
]
