"""What the trainer reads of an experiment config, as one frozen, typed plan.

`from_config` reads an experiment config (an ``ml_collections.ConfigDict``, or any mapping of
the same fields) once, at the application's edge; the trainer (`stages`, `scoring`,
`variants`) takes the `Plan` and never the config. Every section is a frozen dataclass whose
fields have the config's names, so ``plan.optimizer.learning_rate`` is
``config.optimizer.learning_rate``. A section the config lacks takes the defaults below (the
neutral values of ``experiments/configs/base.py``); a key of a section the trainer does not
know is refused, naming the keys it knows.
"""
from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any

from mmcompress import _checks, weighting as weighting_lib

__all__ = ["Dynamic", "from_config", "Gradual", "Grid", "Optimizer", "Plan", "Prune", "Reweight"]


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """The model's optimizer: SGD with momentum or Adam, weight decay, the schedule, clips."""
  name: str = "sgd"
  learning_rate: float = 0.05
  momentum: float = 0.9
  weight_decay: float = 5e-4
  schedule: str = "cosine"
  decay_every_epochs: int = 0
  decay_factor: float = 0.5
  clip_norm: float = 0.0
  compress_clip_norm: float = 0.0


@dataclasses.dataclass(frozen=True)
class Reweight:
  """The reweighted-ℓ1 stage: penalty, ε, refresh schedule, its own rate and schedule."""
  penalty: float = 1e-4
  eps: float = 1e-6
  refresh_every_epochs: int = 5
  refresh_at_epochs: tuple[int, ...] = ()
  learning_rate: float = 0.0
  schedule: str = ""


@dataclasses.dataclass(frozen=True)
class Dynamic:
  """Dynamic sparse training's mask updates."""
  update_every_epochs: int = 2
  grow_fraction: float = 0.005
  end_fraction: float = 0.75
  grow: str = "gradient"
  budget: str = "exact"


@dataclasses.dataclass(frozen=True)
class Gradual:
  """Gradual magnitude pruning's schedule."""
  update_every_epochs: int = 1
  begin_fraction: float = 0.0
  end_fraction: float = 1.0
  initial_sparsity: float = 0.0


@dataclasses.dataclass(frozen=True)
class Prune:
  """The prune stage's criterion."""
  criterion: str = "magnitude"
  aggregate: str = "mean"
  calibration_batches: int = 8


@dataclasses.dataclass(frozen=True)
class Grid:
  """The variants of the stages after pretraining: learning-rate scales × clips."""
  learning_rate_scale: tuple[float, ...] = ()
  clip_norm: tuple[float, ...] = ()


_SECTIONS = {"optimizer": Optimizer, "reweight": Reweight, "dynamic": Dynamic,
             "gradual": Gradual, "prune": Prune, "grid": Grid}


@dataclasses.dataclass(frozen=True)
class Plan:
  """The trainer's settings of one experiment.

  Attributes:
    stages: the pipeline, e.g. ``("pretrain", "reweight", "prune", "retrain")``.
    share_pretraining: whether the methods start from the dense reference's pretraining.
    sparsity, structure, scope: the target and the shape of the masks.
    batch_size: the training batch.
    epochs: stage name -> epochs (read-only).
    optimizer, reweight, dynamic, gradual, prune, grid: the sections.
    task_scales: per-task loss scales for every weighting (() for none).
    loss_reduction: ``"mean"`` or ``"reference"``.
    weightings: weighting section name -> its knobs (read-only), for
      `mmcompress.weighting.from_config`.
  """
  stages: tuple[str, ...] = ("pretrain", "reweight", "prune", "retrain")
  share_pretraining: bool = True
  sparsity: float = 0.975
  structure: str = "unstructured"
  scope: str = "layer"
  batch_size: int = 64
  epochs: Mapping[str, int] = dataclasses.field(default_factory=lambda: types.MappingProxyType(
      {"pretrain": 30, "reweight": 15, "retrain": 30, "sparse": 60, "gradual": 15}))
  optimizer: Optimizer = Optimizer()
  reweight: Reweight = Reweight()
  dynamic: Dynamic = Dynamic()
  gradual: Gradual = Gradual()
  prune: Prune = Prune()
  grid: Grid = Grid()
  task_scales: tuple[float, ...] = ()
  loss_reduction: str = "mean"
  weightings: Mapping[str, Mapping[str, Any]] = dataclasses.field(
      default_factory=lambda: types.MappingProxyType({}))

  def weighting_config(self) -> dict[str, Any]:
    """The mapping `mmcompress.weighting.from_config` reads: the weightings' sections, the
    task scales and the loss reduction."""
    return {**self.weightings, "task_scales": self.task_scales,
            "loss_reduction": self.loss_reduction}


def _frozen(value: Any) -> Any:
  """Lists as tuples, mappings as plain dicts, recursively (a config's values, frozen)."""
  if isinstance(value, Mapping) or hasattr(value, "to_dict"):
    items = value.to_dict().items() if hasattr(value, "to_dict") else value.items()
    return {k: _frozen(v) for k, v in items}
  if isinstance(value, (list, tuple)):
    return tuple(_frozen(v) for v in value)
  return value


def _section(cls: type, given: Any, name: str) -> Any:
  """`cls` from the config section `given` (absent: the defaults); an unknown key is
  refused."""
  given = _frozen(given) if given is not None else {}
  known = [f.name for f in dataclasses.fields(cls)]
  unknown = sorted(set(given) - set(known))
  if unknown:
    raise _checks.UserError(f"config.{name}.{unknown[0]} is not a setting the trainer reads; "
                            f"config.{name} has {known}.")
  return cls(**given)


def from_config(config: Any, weighting_sections: tuple[str, ...] | None = None) -> Plan:
  """The `Plan` of an experiment config (read once; the config is not kept).

  Args:
    config: an ``ml_collections.ConfigDict`` or a mapping with the fields of `Plan` (a missing
      field or section takes its default).
    weighting_sections: the config sections that hold weightings' knobs, copied into
      ``Plan.weightings`` (None: the section of every registered weighting,
      `mmcompress.weighting.section_name`).

  Returns:
    The frozen plan.
  """
  get = config.get
  defaults = Plan()
  if weighting_sections is None:
    weighting_sections = tuple({weighting_lib.section_name(n): None
                                for n in weighting_lib.WEIGHTINGS})
  epochs = {**defaults.epochs, **_frozen(get("epochs") or {})}
  return Plan(
      stages=tuple(get("stages", defaults.stages)),
      share_pretraining=bool(get("share_pretraining", defaults.share_pretraining)),
      sparsity=get("sparsity", defaults.sparsity),
      structure=get("structure", defaults.structure),
      scope=get("scope", defaults.scope),
      batch_size=get("batch_size", defaults.batch_size),
      epochs=types.MappingProxyType(epochs),
      task_scales=tuple(get("task_scales", ()) or ()),
      loss_reduction=get("loss_reduction", defaults.loss_reduction),
      weightings=types.MappingProxyType({name: types.MappingProxyType(_frozen(get(name)))
                                         for name in weighting_sections if get(name)}),
      **{name: _section(cls, get(name), name) for name, cls in _SECTIONS.items()})
