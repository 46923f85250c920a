"""A multi-head VGG16 with task-conditional batch norm, for CIFAR-100 as 20 tasks.

The VGG16 convolution stack (Simonyan & Zisserman 2015, configuration D) without the fifth
pooling layer, each 3×3 convolution followed by batch norm and ReLU, then global average
pooling and one Dense head per task, as in the multi-head VGG16 of the min-max compression
papers. The convolutions are shared by all tasks. With task-conditional batch norm every task
has its own batch-norm scale, bias and running statistics (cheap: 2 × 4224 parameters per
task), because the statistics of one superclass's images differ from another's.

Calling convention: a batch belongs to one task::

    outputs, updates = model.apply(variables, images, task_id=k, train=True,
                                   mutable=["batch_stats"])

normalises with task k's batch norm, updates only task k's running statistics and returns the
outputs of all K heads (the trainer keeps ``outputs[k]``). `task_id` may be a Python int (then
only task k's parameters are read) or an int32 scalar array, which may be traced: one
compiled step then serves every task, e.g. inside `jax.lax.scan` or a `fori_loop` over the
tasks. With ``train=False`` the running statistics are used and nothing is mutable.

Parameter names: ``trunk/conv{i}/kernel`` for the 13 convolutions (no bias: the batch-norm bias
replaces it), ``trunk/bn{i}/{scale,bias}_task{k}`` and batch stats
``trunk/bn{i}/{mean,var}_task{k}`` for the batch norm after convolution i (without the
``_task{k}`` suffix when batch norm is shared), and ``head_k/{kernel,bias}``. No name outside
the heads contains "head", and the only rank >= 2 parameters of the trunk are the convolution
kernels, so the default pruning rule prunes exactly the convolutions.
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmcompress.models.heads import check_num_outputs, task_heads

__all__ = ["MultiHeadVGG16", "TaskBatchNorm", "VGG16_LAYERS", "VGG16Trunk"]

# Output channels of the 3×3 convolutions; "M" is a 2×2 max pooling. No fifth pooling.
VGG16_LAYERS: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                       512, 512, 512, "M", 512, 512, 512)

# He initialisation over the fan-out, as torchvision initialises VGG's convolutions.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _is_static_index(task_id: object) -> bool:
  return isinstance(task_id, numbers.Integral) and not isinstance(task_id, bool)


class TaskBatchNorm(nn.Module):
  """Batch norm over all axes but the last, with one parameter set per task.

  In training mode it normalises with the batch's mean and (biased) variance and moves task
  `task_id`'s running statistics towards them: ``running = momentum · running + (1 −
  momentum) · batch``, as `flax.linen.BatchNorm` does; the other tasks' statistics stay as
  they are. In evaluation mode it normalises with task `task_id`'s running statistics.

  Attributes:
    num_tasks: the number of parameter sets, named with the suffix ``_task{k}``; None for a
      single shared set named like `flax.linen.BatchNorm`'s (scale, bias, mean, var).
    momentum: the decay of the running statistics.
    epsilon: added to the variance before the square root.
  """
  num_tasks: int | None = None
  momentum: float = 0.9
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array, task_id: jax.typing.ArrayLike | None = None, *,
               train: bool) -> jax.Array:
    """Normalises `x` with the batch norm of task `task_id`.

    Args:
      x: (..., C) activations.
      task_id: which parameter set to use, a Python int or an integer scalar array in
        [0, num_tasks); ignored when `num_tasks` is None.
      train: normalise with the batch statistics and update the running ones.

    Returns:
      The normalised activations, of the shape of `x`.
    """
    features = x.shape[-1]
    suffixes = [""] if self.num_tasks is None else [f"_task{k}" for k in range(self.num_tasks)]
    scales = [self.param("scale" + s, nn.initializers.ones, (features,), jnp.float32)
              for s in suffixes]
    biases = [self.param("bias" + s, nn.initializers.zeros, (features,), jnp.float32)
              for s in suffixes]
    means = [self.variable("batch_stats", "mean" + s, jnp.zeros, (features,), jnp.float32)
             for s in suffixes]
    variances = [self.variable("batch_stats", "var" + s, jnp.ones, (features,), jnp.float32)
                 for s in suffixes]

    if self.num_tasks is None:
      task_id = 0
    elif task_id is None:
      raise ValueError(
          f"{self.name}: pass task_id, the task (0..{self.num_tasks - 1}) of the batch.")
    if _is_static_index(task_id):
      task_id = int(task_id)
      if not 0 <= task_id < len(suffixes):
        raise ValueError(f"task_id must be in [0, {len(suffixes)}), got {task_id}.")
      pick = lambda leaves: leaves[task_id]
    else:
      task_id = jnp.asarray(task_id)
      if task_id.shape or not jnp.issubdtype(task_id.dtype, jnp.integer):
        raise ValueError(
            f"task_id must be an integer scalar, got shape {task_id.shape} {task_id.dtype}.")
      pick = lambda leaves: jnp.stack(leaves)[task_id]

    reduce_axes = tuple(range(x.ndim - 1))
    x = x.astype(jnp.float32)
    if train:
      mean = jnp.mean(x, axis=reduce_axes)
      var = jnp.var(x, axis=reduce_axes)
      if not self.is_initializing():
        for k, (running_mean, running_var) in enumerate(zip(means, variances)):
          if _is_static_index(task_id) and k != task_id:
            continue
          new_mean = self.momentum * running_mean.value + (1.0 - self.momentum) * mean
          new_var = self.momentum * running_var.value + (1.0 - self.momentum) * var
          if not _is_static_index(task_id):
            new_mean = jnp.where(task_id == k, new_mean, running_mean.value)
            new_var = jnp.where(task_id == k, new_var, running_var.value)
          running_mean.value, running_var.value = new_mean, new_var
    else:
      mean = pick([m.value for m in means])
      var = pick([v.value for v in variances])
    return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * pick(scales) + pick(biases)


class VGG16Trunk(nn.Module):
  """The VGG16 convolution stack with (task-conditional) batch norm and global average pooling.

  Attributes:
    num_tasks: the number of batch-norm parameter sets; None to share one set.
    width: a multiplier of every layer's channels (1 is VGG16; smaller for CPU tests).
  """
  num_tasks: int | None = None
  width: float = 1.0

  @nn.compact
  def __call__(self, images: jax.Array, task_id: jax.typing.ArrayLike | None = None, *,
               train: bool) -> jax.Array:
    x = images
    conv = 0
    for layer in VGG16_LAYERS:
      if layer == "M":
        # "SAME" keeps at least one pixel for images smaller than 16×16 (the tests use 8×8).
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        continue
      x = nn.Conv(max(1, round(layer * self.width)), (3, 3), padding="SAME", use_bias=False,
                  kernel_init=_conv_init,
                  name=f"conv{conv}")(x)
      x = TaskBatchNorm(self.num_tasks, momentum=0.9, epsilon=1e-5, name=f"bn{conv}")(
          x, task_id, train=train)
      x = nn.relu(x)
      conv += 1
    return jnp.mean(x, axis=(1, 2))


class MultiHeadVGG16(nn.Module):
  """VGG16 shared by K tasks, one Dense head per task; see the module docstring.

  Attributes:
    num_outputs: one output size per task (classes, or 1 for a regression).
    task_conditional_bn: one batch-norm set per task (then `task_id` is required) instead of
      one shared set (then `task_id` is ignored).
    width: a multiplier of every convolution's channels (1 is VGG16; smaller for CPU tests).

  >>> model = MultiHeadVGG16(num_outputs=(5, 5))
  >>> images = jnp.zeros((2, 32, 32, 3))
  >>> def train_forward(x):
  ...   variables = model.init(jax.random.key(0), x, task_id=0)
  ...   return model.apply(variables, x, task_id=1, train=True, mutable=["batch_stats"])
  >>> outputs, updates = jax.eval_shape(train_forward, images)  # shapes only, no compute
  >>> [y.shape for y in outputs]
  [(2, 5), (2, 5)]
  """
  num_outputs: Sequence[int]
  task_conditional_bn: bool = True
  width: float = 1.0

  @nn.compact
  def __call__(self, images: jax.Array, task_id: jax.typing.ArrayLike | None = None, *,
               train: bool = False) -> tuple[jax.Array, ...]:
    """Returns the K head outputs for a batch of images of one task.

    Args:
      images: (B, H, W, C) images, all of task `task_id`.
      task_id: the task of the batch, a Python int or an integer scalar array in [0, K);
        required with task-conditional batch norm, except at `init`, which creates every
        task's batch norm whatever it is.
      train: normalise with batch statistics and update the running ones (then pass
        ``mutable=["batch_stats"]`` to `apply`).

    Returns:
      K arrays, the k-th of shape (B, num_outputs[k]).
    """
    sizes = check_num_outputs(self.num_outputs)
    num_tasks = len(sizes) if self.task_conditional_bn else None
    if num_tasks is not None and task_id is None:
      if not self.is_initializing():
        raise ValueError(
            "MultiHeadVGG16 with task_conditional_bn=True needs task_id, the task "
            f"(0..{num_tasks - 1}) of the batch: model.apply(variables, images, task_id=k, ...).")
      task_id = 0
    features = VGG16Trunk(num_tasks, self.width, name="trunk")(images, task_id, train=train)
    return task_heads(features, sizes)
