"""What the tools share: synthetic data of the real shapes, and the masked min-max step.

`experiments.benchmark`, `experiments.gpu_check` and the tests that run a step of a paper's
model build their problems from the data here (no data set needed) and their masked min-max
training step with `masked_minmax_step`, which assembles it from the trainer's own pieces
(`mmcompress.train.step.init_variables`, `create_train_state`, `make_train_step`), so what
they run is what the trainer runs.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from mmcompress import saddle_point, sparsity, weighting
from mmcompress.problems import Problem
from mmcompress.problems.cifar100 import Cifar100Problem
from mmcompress.problems.cifar100 import data as cifar100
from mmcompress.problems.nyuv2 import NYUv2Problem
from mmcompress.problems.nyuv2 import data as nyuv2
from mmcompress.train import parallel, step
from mmcompress.train.step import TrainState


def cifar100_split(per_class: int, rng: int | np.random.Generator = 0) -> cifar100.ImageSplit:
  """Random uint8 32x32x3 images, every fine class `per_class` times, in class order.

  Args:
    per_class: images per fine class.
    rng: a seed, or a `numpy.random.Generator` to draw from (several splits from one stream).
  """
  fine = np.repeat(np.arange(cifar100.NUM_FINE, dtype=np.int32), per_class)
  images = np.random.default_rng(rng).integers(0, 256, (fine.size,) + cifar100.IMAGE_SHAPE,
                                               dtype=np.uint8)
  return cifar100.ImageSplit(images=images, fine=fine, index=np.arange(fine.size))


def cifar100_problem(batch_per_task: int, seed: int = 0) -> Cifar100Problem:
  """The CIFAR-100 problem on one random split (train = val = test) that fills one batch.

  Every fine class appears ``ceil(batch_per_task / 5)`` times, so each task's first batch of
  `batch_per_task` images is full.
  """
  split = cifar100_split(-(-batch_per_task // cifar100.CLASSES_PER_TASK), seed)
  return Cifar100Problem(split, split, split)


def nyuv2_problem(root: str | os.PathLike, num_train: int, num_val: int, *, height: int,
                  width: int, val_fraction: float, seed: int = 0) -> NYUv2Problem:
  """Writes a random NYUv2-like data set under `root` and returns the problem on it.

  See `mmcompress.problems.nyuv2.data.write_synthetic` for the data; the problem carves
  `val_fraction` of the training examples out as its validation split.
  """
  nyuv2.write_synthetic(root, num_train, num_val, height=height, width=width, seed=seed)
  return NYUv2Problem(str(root), height=height, width=width, val_fraction=val_fraction)


class MaskedMinmax(NamedTuple):
  """A masked min-max training step and what it starts from.

  Attributes:
    step: the trainer's jitted, donated, data-parallel ``(state, batch) -> (state, losses)``.
    state: its starting state, replicated over `mesh`: the pruned parameters, the masks (in
      the optimizer state) and fresh task weights.
    masks: the magnitude masks (True: kept).
    params: the model's initial dense parameters, before pruning.
    model_state: the model's initial other collections (batch statistics), maybe empty.
    mesh: the data mesh the step runs on.
  """
  step: Callable
  state: TrainState
  masks: Any
  params: Any
  model_state: Any
  mesh: jax.sharding.Mesh


def replicated_state(params: Any, model_state: Any, task_weighting: weighting.TaskWeighting,
                     tx: optax.GradientTransformation, num_tasks: int,
                     mesh: jax.sharding.Mesh, seed: int = 0) -> TrainState:
  """The trainer's starting state around `params`, replicated over `mesh`.

  `create_train_state` copies every leaf, so each state owns the buffers its step donates.
  """
  state = step.create_train_state(params, model_state, task_weighting, tx, num_tasks,
                                  jax.random.key(seed))
  return parallel.replicate(state, mesh)


def masked_minmax_step(problem: Problem, model: Any, *, sparsity_level: float,
                       learning_rate: float, minmax: weighting.TaskWeighting,
                       mesh: jax.sharding.Mesh | None = None, seed: int = 0,
                       state_seed: int | None = None) -> MaskedMinmax:
  """The min-max sparse step the trainer runs, on `model`'s fresh parameters.

  The descent is ``sparsity.static_sparse(optax.sgd(learning_rate, momentum=0.9), masks)`` with
  ``masks = magnitude_masks(params, sparsity_level)``, the ascent is `minmax`'s, both in one
  `saddle_point`; the state starts from the pruned parameters.

  Args:
    problem: the problem whose task losses the step takes.
    model: the Flax module, initialised on ``problem.example_input()``.
    sparsity_level: the fraction of each prunable leaf's weights the masks prune.
    learning_rate: the SGD (momentum 0.9) step size of the descent.
    minmax: the min-max weighting (`mmcompress.weighting.minmax`).
    mesh: the data mesh; `parallel.data_mesh()` (every device) if None.
    seed: for the model's parameters.
    state_seed: for the state's PRNG key; `seed` if None.

  Returns:
    A `MaskedMinmax`.
  """
  return masked_step(problem, model, sparsity_level=sparsity_level, learning_rate=learning_rate,
                     task_weighting=minmax, mesh=mesh, seed=seed, state_seed=state_seed)


def masked_tx(task_weighting: weighting.TaskWeighting, masks: Any, learning_rate: float,
              num_tasks: int, seed: int = 0) -> optax.GradientTransformation:
  """The trainer's masked transform: ``saddle_point(static_sparse(chain([aggregator,]
  sgd(learning_rate, momentum=0.9)), masks), task_weighting.tx)``, a gradient-level
  weighting's aggregator first inside the sparse wrapper."""
  inner = optax.sgd(learning_rate, momentum=0.9)
  if task_weighting.aggregate is not None:
    inner = optax.chain(task_weighting.aggregate(num_tasks, seed), inner)
  return saddle_point(sparsity.static_sparse(inner, masks), task_weighting.tx)


def masked_step(problem: Problem, model: Any, *, sparsity_level: float, learning_rate: float,
                task_weighting: weighting.TaskWeighting, mesh: jax.sharding.Mesh | None = None,
                seed: int = 0, state_seed: int | None = None) -> MaskedMinmax:
  """`masked_minmax_step` under any task weighting: a gradient-level one's aggregator goes
  first inside the sparse wrapper, as in the trainer (its arguments are
  `masked_minmax_step`'s, `task_weighting` for `minmax`)."""
  mesh = parallel.data_mesh() if mesh is None else mesh
  params, model_state = step.init_variables(model, problem, seed)
  masks = sparsity.magnitude_masks(params, sparsity_level)
  tx = masked_tx(task_weighting, masks, learning_rate, problem.num_tasks, seed)
  state = replicated_state(sparsity.apply_masks(params, masks), model_state, task_weighting, tx,
                           problem.num_tasks, mesh, seed if state_seed is None else state_seed)
  train_step = step.make_train_step(problem, model, task_weighting, tx, mesh)
  return MaskedMinmax(train_step, state, masks, params, model_state, mesh)
