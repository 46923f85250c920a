"""The compression stages and the optimizer each one trains with, driven by a config.

``pretrain`` (dense) → ``reweight`` (reweighted-ℓ1) → ``prune`` (magnitude masks to the
target) → ``retrain`` (masked), or ``sparse`` (dynamic sparse training from scratch), as in
Guo et al. (ISCAS 2024; Neurocomputing 2025); or ``gradual`` (gradual magnitude pruning,
Zhu & Gupta 2018) in place of ``prune``, followed by ``retrain`` at its final masks. A training
stage differs from another only in the descent transform it wraps around the base optimizer
(`SPARSE_WRAPPERS` for the stages that keep masks); the task weighting's transform is the same
in every stage.
"""
from __future__ import annotations

import dataclasses
import types
from collections.abc import Sequence
from typing import Any, NamedTuple

import optax

from mmcompress import _checks, sparsity, weighting as weighting_lib
from mmcompress.transforms import saddle_point
from mmcompress.train import plan as plan_lib, step as step_lib, variants

__all__ = ["base_optimizer", "check_stage_order", "descent_transform", "learning_rate_schedule",
           "make_weighting", "MASK_GIVERS", "method_stages", "per_task_gradients",
           "SPARSE_WRAPPERS", "stage_optimizer_config", "stage_transform", "StageSteps", "STAGES",
           "TRAINING_STAGES"]

STAGES = ("pretrain", "reweight", "prune", "gradual", "retrain", "sparse")
TRAINING_STAGES = ("pretrain", "reweight", "gradual", "retrain", "sparse")
# What may come directly before each stage (None: it must come first).
_MAY_FOLLOW = {
    "pretrain": (None,),
    "reweight": ("pretrain",),
    "prune": ("pretrain", "reweight"),
    "gradual": ("pretrain", "reweight"),
    "retrain": ("prune", "gradual"),
    "sparse": (None,),
}
# The stages that hand their masks to the next stage (which must be "retrain").
MASK_GIVERS = ("prune", "gradual")


def method_stages(config: plan_lib.Plan) -> tuple[str, ...]:
  """The training stages of ``config.stages`` that each method trains itself: all of them
  but pretraining when the methods share the dense reference's (``share_pretraining``)."""
  shared = config.share_pretraining and config.stages[0] == "pretrain"
  return tuple(s for s in config.stages
               if s in TRAINING_STAGES and not (shared and s == "pretrain"))


def check_stage_order(stages: Sequence[str]) -> tuple[str, ...]:
  """Raises unless `stages` is a pipeline that can run, naming the first misplaced stage."""
  stages = tuple(stages)
  if not stages:
    raise ValueError("stages is empty: use e.g. ('pretrain', 'reweight', 'prune', 'retrain') "
                     "or ('sparse',).")
  previous = None
  for stage in stages:
    _checks.one_of(stage, STAGES, "stage")
    if previous not in _MAY_FOLLOW[stage]:
      allowed = [p for p in _MAY_FOLLOW[stage] if p] or ["nothing: it must come first"]
      raise ValueError(
          f"stages {list(stages)} cannot run: {stage!r} must follow {allowed}, not "
          f"{previous!r}.")
    previous = stage
  if stages[-1] in MASK_GIVERS:
    raise ValueError(f"stages {list(stages)} cannot run: {stages[-1]!r} must be followed by "
                     "'retrain' (the masked retraining that the pruned model needs).")
  return stages


def learning_rate_schedule(config: plan_lib.Optimizer, total_steps: int,
                           steps_per_epoch: int) -> optax.Schedule:
  """``constant``, ``cosine`` (to zero over the stage) or ``step`` (× decay_factor every
  decay_every_epochs epochs, the reference's NYUv2 schedule)."""
  lr = _checks.positive(config.learning_rate, "optimizer.learning_rate")
  name = _checks.one_of(config.schedule, ("constant", "cosine", "step"), "optimizer.schedule")
  if name == "cosine":
    return optax.cosine_decay_schedule(lr, max(total_steps, 1))
  if name == "step":
    every = _checks.positive_int(config.decay_every_epochs, "optimizer.decay_every_epochs")
    factor = _checks.positive(config.decay_factor, "optimizer.decay_factor")
    return optax.exponential_decay(lr, every * steps_per_epoch, factor, staircase=True)
  return optax.constant_schedule(lr)


def base_optimizer(config: plan_lib.Optimizer, total_steps: int,
                   steps_per_epoch: int = 1, variant: variants.Variant | None = None
                   ) -> optax.GradientTransformation:
  """The model's optimizer for one stage: gradient clipping by global norm, weight decay,
  then SGD with momentum or Adam on the schedule.

  Without a `variant` (pretraining) the clip is ``clip_norm`` (none at 0) and fixed in the
  program. With one, its clip and learning-rate scale are values of the optimizer state
  (`mmcompress.train.variants`), so that the variants of a grid share one compiled step.
  """
  name = _checks.one_of(config.name, ("sgd", "adam"), "optimizer.name")
  schedule = learning_rate_schedule(config, total_steps, steps_per_epoch)
  if name == "sgd":
    opt = optax.sgd(schedule, momentum=config.momentum or None)
  else:
    opt = optax.adam(schedule)
  decay = _checks.non_negative(config.weight_decay, "optimizer.weight_decay")
  decayed = [optax.add_decayed_weights(decay)] if decay else []
  if variant is not None:
    return optax.chain(variants.clip_by_run(variant.clip_norm), *decayed, opt,
                       variants.scale_by_run(variant.learning_rate_scale))
  clip = _checks.non_negative(config.clip_norm, "optimizer.clip_norm")
  parts = ([optax.clip_by_global_norm(clip)] if clip else []) + decayed + [opt]
  return parts[0] if len(parts) == 1 else optax.chain(*parts)


def stage_optimizer_config(stage: str, config: plan_lib.Plan) -> plan_lib.Optimizer:
  """``config.optimizer`` as one stage uses it: the reweight stage takes its own learning
  rate and schedule when ``config.reweight.learning_rate`` > 0 (the reference's CIFAR-100
  code trains that stage with its own rate) and ``config.reweight.schedule`` is set. (The
  clip of the stages after pretraining is their variant's: `variants.default_clip`.)
  """
  rw = config.reweight
  if not (stage == "reweight" and (rw.learning_rate or rw.schedule)):
    return config.optimizer
  changes = {}
  if rw.learning_rate:
    changes["learning_rate"] = _checks.positive(rw.learning_rate, "reweight.learning_rate")
  if rw.schedule:
    changes["schedule"] = _checks.one_of(rw.schedule, ("constant", "cosine", "step"),
                                         "reweight.schedule")
  return dataclasses.replace(config.optimizer, **changes)


def descent_transform(stage: str, config: plan_lib.Plan, steps_per_epoch: int,
                      masks: Any = None, seed: int = 0,
                      first: optax.GradientTransformation | None = None,
                      every_mask: bool = False, variant: variants.Variant | None = None
                      ) -> optax.GradientTransformation:
  """The descent half of `saddle_point` for a training stage (`seed`: random regrowth).

  `first`, when given, is the first link of the chain inside the sparse wrappers: a
  gradient-level weighting's aggregator, which turns the stacked per-task gradients into
  one gradient after they were masked (see `mmcompress.weighting.gradient`). `every_mask`
  keeps even an all-True mask in a retrain stage's state (`static_sparse`'s ``drop_dense``).
  `variant`: the per-run learning-rate scale and clip of every stage but pretraining (by
  default scale 1 and `variants.default_clip`).
  """
  total_steps = config.epochs[stage] * steps_per_epoch
  if stage == "pretrain":
    variant = None
  elif variant is None:
    variant = variants.Variant(1.0, variants.default_clip(config))
  base = base_optimizer(stage_optimizer_config(stage, config), total_steps, steps_per_epoch,
                        variant)
  links = [first] if first is not None else []
  if stage == "reweight":
    rw = config.reweight
    every = rw.refresh_every_epochs * steps_per_epoch if rw.refresh_every_epochs else None
    at = tuple(int(e) * steps_per_epoch for e in rw.refresh_at_epochs)
    links.append(sparsity.add_reweighted_l1(rw.penalty, eps=rw.eps, refresh_every=every,
                                            refresh_at=at))
  if links:
    base = optax.chain(*links, base)
  if stage in ("pretrain", "reweight"):
    return base
  if stage not in SPARSE_WRAPPERS:
    raise ValueError(f"{stage!r} is not a training stage; training stages are "
                     f"{list(TRAINING_STAGES)}.")
  return SPARSE_WRAPPERS[stage](base, config, StageSteps(total_steps, steps_per_epoch),
                                masks=masks, seed=seed, every_mask=every_mask)


class StageSteps(NamedTuple):
  """A stage's length: its steps in all and per epoch."""
  total: int
  per_epoch: int


def _retrain(base: optax.GradientTransformation, config: plan_lib.Plan,
             steps: StageSteps, *, masks: Any, seed: int, every_mask: bool
             ) -> optax.GradientTransformation:
  """Masked retraining at the masks of the stage before (`static_sparse`)."""
  del config, steps, seed
  if masks is None:
    raise ValueError("the retrain stage needs masks from a prune or gradual stage before it.")
  return sparsity.static_sparse(base, masks, drop_dense=not every_mask)


def _dynamic(base: optax.GradientTransformation, config: plan_lib.Plan,
             steps: StageSteps, *, masks: Any, seed: int, every_mask: bool
             ) -> optax.GradientTransformation:
  """Dynamic sparse training from scratch (`dynamic_sparse`, ``config.dynamic``)."""
  del masks, every_mask
  dyn = config.dynamic
  if not 0.0 < dyn.end_fraction <= 1.0:
    raise ValueError("dynamic.end_fraction must be in (0, 1] (the share of the stage during "
                     f"which the masks change; 0.75 = until epoch 150 of 200), got "
                     f"{dyn.end_fraction}.")
  end_step = max(1, int(dyn.end_fraction * steps.total))
  return sparsity.dynamic_sparse(
      base, sparsity=config.sparsity, update_every=dyn.update_every_epochs * steps.per_epoch,
      grow_fraction=dyn.grow_fraction, grow=dyn.grow, end_step=end_step, seed=seed,
      budget=dyn.budget)


def _gradual(base: optax.GradientTransformation, config: plan_lib.Plan,
             steps: StageSteps, *, masks: Any, seed: int, every_mask: bool
             ) -> optax.GradientTransformation:
  """Gradual magnitude pruning (`gradual_magnitude`, ``config.gradual``): the masks change
  every ``update_every_epochs`` from ``begin_fraction`` of the stage to ``end_fraction``,
  the last change on a step of the stage, so the stage ends at the target sparsity."""
  del masks, seed, every_mask
  g = config.gradual
  begin = _checks.fraction(g.begin_fraction, "gradual.begin_fraction")
  if not begin < g.end_fraction <= 1.0:
    raise ValueError(f"gradual.end_fraction must be in (begin_fraction, 1], got "
                     f"{g.end_fraction}.")
  last = max(steps.total - 1, 0)
  end_step = min(last, int(g.end_fraction * steps.total))
  return sparsity.gradual_magnitude(
      base, sparsity=config.sparsity, begin_step=min(int(begin * steps.total), end_step),
      end_step=end_step,
      update_every=_checks.positive_int(g.update_every_epochs, "gradual.update_every_epochs")
      * steps.per_epoch, initial_sparsity=g.initial_sparsity)


# The training stages that keep masks: name -> (base, config, steps, masks=, seed=,
# every_mask=) -> the stage's descent transform around the base optimizer.
SPARSE_WRAPPERS = types.MappingProxyType({
    "retrain": _retrain,
    "sparse": _dynamic,
    "gradual": _gradual,
})


def make_weighting(name: str, config: plan_lib.Plan, steps_per_epoch: int
                   ) -> weighting_lib.TaskWeighting:
  """The task weighting `name`, with its knobs from the plan (`weighting.from_config`)."""
  return weighting_lib.from_config(name, config.weighting_config(),
                                   steps_per_epoch=steps_per_epoch)


def per_task_gradients(stage: str, config: plan_lib.Plan) -> bool:
  """Whether a stage's descent needs each task's gradient whatever the weighting: a sparse
  stage with task-aware regrowth (``config.dynamic.grow`` ``task_mean``, ``task_max``, ...)."""
  return stage == "sparse" and str(config.dynamic.grow).startswith("task_")


def stage_transform(stage: str, config: plan_lib.Plan, steps_per_epoch: int,
                    weighting: weighting_lib.TaskWeighting, num_tasks: int, masks: Any = None,
                    seed: int = 0, every_mask: bool = False,
                    variant: variants.Variant | None = None) -> optax.GradientTransformation:
  """The `saddle_point` transform a training stage steps with: the stage's descent (with a
  gradient-level weighting's aggregator first in it, or, where the stage needs per-task
  gradients of a loss-level weighting, `weighting.sum_tasks`) and the weighting's own transform."""
  first = step_lib.descent_first_link(weighting, per_task_gradients(stage, config), num_tasks,
                                     seed)
  descent = descent_transform(stage, config, steps_per_epoch, masks, seed, first=first,
                              every_mask=every_mask, variant=variant)
  return saddle_point(descent, weighting.tx)
