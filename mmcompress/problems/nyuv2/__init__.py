"""NYUv2 with three dense tasks (segmentation, depth, surface normals), from its npy layout.

`data` reads and checks the files and augments; `tasks` holds the losses and metrics;
`problem` puts them together for the trainer.
"""
from mmcompress.problems.nyuv2 import data, tasks
from mmcompress.problems.nyuv2.problem import (DenseProblem, NYUv2Problem, check_config,
                                             from_config, validate_config)

__all__ = ["DenseProblem", "NYUv2Problem", "check_config", "data", "from_config", "tasks",
           "validate_config"]
