"""Multi-task problems: what a data set and its tasks tell the trainer.

A `Problem` owns the data of an experiment and everything the generic trainer must not know:
how a training batch is drawn (a pure function of seed, stage and step, so resumption is
exact), how the model's outputs become the K task losses, how a split is evaluated (as sums
over batches, so a metric over a split is exact), and which metric stands for each task.

Each problem is one sub-package (its data loading, its losses and metrics, its `Problem`) with
a ``from_config(config)`` that builds it from an experiment config, and one line in
`PROBLEMS`. `get(name)` imports only the problem it names, so importing this package (or the
trainer, which needs only the `Problem` interface) loads no data set.
"""
from __future__ import annotations

import importlib
import types

from mmcompress import _checks
from mmcompress.problems.base import Problem

# Name in the config → the sub-package that defines ``from_config(config) -> Problem``.
PROBLEMS = types.MappingProxyType({
    "digits": "mmcompress.problems.digits",
    "cifar100": "mmcompress.problems.cifar100",
    "nyuv2": "mmcompress.problems.nyuv2",
    "scenes": "mmcompress.problems.scenes",
})


def get(name: str) -> types.ModuleType:
  """The problem sub-package registered as `name` (imported now, not before)."""
  _checks.one_of(name, tuple(PROBLEMS), "config.problem")
  return importlib.import_module(PROBLEMS[name])


__all__ = ["PROBLEMS", "Problem", "get"]
