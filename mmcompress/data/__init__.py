"""Multi-task data sets as NumPy arrays; the trainer draws the batches and places them."""
from __future__ import annotations

from mmcompress.data.digits import CLASSIFY_GROUPS
from mmcompress.data.digits import MultiTaskData
from mmcompress.data.digits import Split
from mmcompress.data.digits import TASK_SETS
from mmcompress.data.digits import describe
from mmcompress.data.digits import load_multidigits

__all__ = [
    "CLASSIFY_GROUPS",
    "MultiTaskData",
    "Split",
    "TASK_SETS",
    "describe",
    "load_multidigits",
]
