"""The task heads and the output-size check that every model in `mmcompress.models` shares.

Every model in `mmcompress.models` follows one calling convention::

    outputs = model.apply(variables, images, task_id=None, train=False)

returns a tuple of K arrays, one (B, num_outputs[k]) array per task head, every head applied to
every example (the trainer selects each task's examples with the task mask). The shared trunk
is the submodule ``trunk``; the heads are Dense submodules ``head_0`` … ``head_{K-1}``, so the
default pruning rule "prune the rank >= 2 kernels, skip modules whose name contains 'head'"
prunes the trunk and leaves the heads dense. The task prediction layers are the only modules
of any model here whose names contain "head" (MTAN's task attention is ``task{k}_attention_*``
and is pruned), so that rule keeps exactly the prediction layers, biases and norms dense.
`task_id` only matters for a model with task-conditional batch norm (`MultiHeadVGG16`); the
others accept and ignore it, so that one trainer can drive them all.
"""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

__all__ = ["check_num_outputs", "task_heads"]


def check_num_outputs(num_outputs: Sequence[int]) -> tuple[int, ...]:
  """Returns `num_outputs` as a tuple of ints >= 1, or raises a ValueError.

  Args:
    num_outputs: one output size per task: its number of classes, or 1 for a regression.

  Returns:
    The sizes as a tuple.
  """
  try:
    sizes = tuple(num_outputs)
  except TypeError:
    raise ValueError(
        f"num_outputs must be a sequence with one output size per task, got {num_outputs!r}."
    ) from None
  if not sizes or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes):
    raise ValueError(
        "num_outputs must be a non-empty sequence of integers >= 1 (classes per task, 1 for a "
        f"regression), got {num_outputs!r}.")
  return sizes


def task_heads(features: jax.Array, num_outputs: Sequence[int]) -> tuple[jax.Array, ...]:
  """Applies one Dense head per task, named ``head_{k}``, to the shared features.

  Call it from inside the `nn.compact` method of the model that owns the heads.

  Args:
    features: (B, F) shared features.
    num_outputs: one output size per task.

  Returns:
    K arrays, the k-th of shape (B, num_outputs[k]).
  """
  return tuple(nn.Dense(n, name=f"head_{k}")(features) for k, n in enumerate(num_outputs))
