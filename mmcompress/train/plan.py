"""What the trainer reads of an experiment, as one frozen, typed plan.

The trainer (`stages`, `scoring`, `variants`) takes a `Plan` and never an experiment config:
the application reads the config once, at its edge, into a plan (`mmcompress.app.plan`), and
a user's own project may build one directly. Every section is a frozen dataclass whose fields
have the config's names, so ``plan.optimizer.learning_rate`` is
``config.optimizer.learning_rate``; the defaults below are the neutral values of
``experiments/configs/base.py``.
"""
from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any


__all__ = ["Dynamic", "Gradual", "Grid", "Optimizer", "Plan", "Prune", "Reweight", "SECTIONS"]


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


#: The sections of a plan, by their config names (section name -> its dataclass).
SECTIONS = {"optimizer": Optimizer, "reweight": Reweight, "dynamic": Dynamic,
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
