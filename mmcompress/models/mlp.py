"""A multi-head MLP: a Dense + ReLU trunk and one Dense head per task.

The calling convention and the head names that every model here follows are in
`mmcompress.models.heads`.
"""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmcompress.models.heads import check_num_outputs, task_heads

__all__ = ["MLPTrunk", "MultiHeadMLP"]


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
