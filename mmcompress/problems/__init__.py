"""Multi-task problems: what a data set and its tasks tell the trainer.

A `Problem` owns the data of an experiment and everything the generic trainer must not know:
how a training batch is drawn (a pure function of seed, stage and step, so resumption is
exact), how the model's outputs become the K task losses, how a split is evaluated (as sums
over batches, so a metric over a split is exact), and which metric stands for each task.
"""
from mmcompress.problems.base import Problem
from mmcompress.problems.digits import DigitsProblem

__all__ = ["DigitsProblem", "Problem"]
