"""Multi-head Flax models: a shared trunk, one Dense head ``head_{k}`` per task.

All models return a tuple of K head outputs from
``model.apply(variables, images, task_id=None, train=False)``; see `mmcompress.models.heads`
for the convention and `mmcompress.models.vgg` for the task-conditional batch norm.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn

from mmcompress import _checks
from mmcompress.models.cnn import MultiHeadCNN
from mmcompress.models.heads import check_num_outputs
from mmcompress.models.mlp import MultiHeadMLP
from mmcompress.models.mtan import MultiTaskAttentionNet
from mmcompress.models.vgg import MultiHeadVGG16
from mmcompress.models.vgg import TaskBatchNorm

_MODELS = {"mlp": MultiHeadMLP, "cnn": MultiHeadCNN, "vgg16": MultiHeadVGG16,
           "mtan": MultiTaskAttentionNet}
MODEL_NAMES = tuple(_MODELS)


def create_model(name: str, num_outputs: Sequence[int], **kwargs: Any) -> nn.Module:
  """Returns the model called `name` with one head per entry of `num_outputs`.

  Args:
    name: one of ``"mlp"``, ``"cnn"``, ``"vgg16"``, ``"mtan"``.
    num_outputs: one output size per task (classes, or 1 for a regression).
    **kwargs: the model's other attributes, e.g. ``hidden=(128,)`` for the MLP or
      ``task_conditional_bn=False`` for VGG16.

  Returns:
    An unbound Flax module.

  Raises:
    ValueError: for an unknown name, bad output sizes or an unknown keyword.
  """
  _checks.one_of(name, MODEL_NAMES, "name")
  sizes = check_num_outputs(num_outputs)
  cls = _MODELS[name]
  known = set(cls.__dataclass_fields__) - {"parent", "name", "num_outputs"}
  unknown = sorted(set(kwargs) - known)
  if unknown:
    raise ValueError(f"{name} does not take {unknown}; its options are {sorted(known)}.")
  kwargs = {key: tuple(value) if isinstance(value, list) else value
            for key, value in kwargs.items()}
  return cls(num_outputs=sizes, **kwargs)


__all__ = [
    "MODEL_NAMES",
    "MultiHeadCNN",
    "MultiHeadMLP",
    "MultiHeadVGG16",
    "MultiTaskAttentionNet",
    "TaskBatchNorm",
    "create_model",
]
