"""A small multi-head CNN: 3×3 convolutions, ReLU, max pooling, global average pooling."""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmcompress.models.heads import check_num_outputs, task_heads

__all__ = ["CNNTrunk", "MultiHeadCNN"]


class CNNTrunk(nn.Module):
  """Blocks of 3×3 convolution (``Conv_i``), ReLU and 2×2 max pooling, then global averaging.

  Pooling pads ("SAME"), so that small images keep at least one pixel after any number of
  blocks.

  Attributes:
    features: the output channels of each block.
  """
  features: Sequence[int] = (32, 64)

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    x = images
    for width in self.features:
      x = nn.relu(nn.Conv(width, (3, 3), padding="SAME")(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    return jnp.mean(x, axis=(1, 2))


class MultiHeadCNN(nn.Module):
  """A shared CNN trunk with one Dense head per task.

  Parameters: ``trunk/Conv_i/{kernel,bias}`` and ``head_k/{kernel,bias}``. The calling
  convention is that of `mmcompress.models.heads`.

  Attributes:
    num_outputs: one output size per task (classes, or 1 for a regression).
    features: the output channels of the trunk's convolution blocks.
  """
  num_outputs: Sequence[int]
  features: Sequence[int] = (32, 64)

  @nn.compact
  def __call__(self, images: jax.Array, task_id: jax.typing.ArrayLike | None = None, *,
               train: bool = False) -> tuple[jax.Array, ...]:
    """The K head outputs for (B, H, W, C) images; as `MultiHeadMLP.__call__`."""
    del task_id, train
    sizes = check_num_outputs(self.num_outputs)
    return task_heads(CNNTrunk(tuple(self.features), name="trunk")(images), sizes)
