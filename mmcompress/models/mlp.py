"""A multi-head MLP, and the task heads and checks that every model here shares.

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
import jax.numpy as jnp


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


class MLPTrunk(nn.Module):
  """Flatten, then Dense + ReLU blocks named ``Dense_0``, ``Dense_1``, …

  Attributes:
    hidden: the width of each block.
  """
  hidden: Sequence[int] = (256, 256)

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    x = jnp.reshape(images, (images.shape[0], -1))
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return x


class MultiHeadMLP(nn.Module):
  """A shared MLP trunk with one Dense head per task.

  Parameters: ``trunk/Dense_i/{kernel,bias}`` and ``head_k/{kernel,bias}``.

  Attributes:
    num_outputs: one output size per task (classes, or 1 for a regression).
    hidden: the widths of the trunk's Dense + ReLU blocks.

  >>> model = MultiHeadMLP(num_outputs=(2, 4))
  >>> images = jnp.zeros((3, 8, 8, 1))
  >>> variables = model.init(jax.random.key(0), images)
  >>> [y.shape for y in model.apply(variables, images)]
  [(3, 2), (3, 4)]
  """
  num_outputs: Sequence[int]
  hidden: Sequence[int] = (256, 256)

  @nn.compact
  def __call__(self, images: jax.Array, task_id: jax.typing.ArrayLike | None = None, *,
               train: bool = False) -> tuple[jax.Array, ...]:
    """Returns the K head outputs for a batch of images.

    Args:
      images: (B, H, W, C) images.
      task_id: ignored (the convention of `MultiHeadVGG16`).
      train: ignored (no dropout or batch norm).

    Returns:
      K arrays, the k-th of shape (B, num_outputs[k]).
    """
    del task_id, train
    sizes = check_num_outputs(self.num_outputs)
    return task_heads(MLPTrunk(tuple(self.hidden), name="trunk")(images), sizes)
