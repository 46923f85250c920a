"""MultiDigits: scikit-learn's bundled digits as K tasks (the offline default problem)."""
from mmcompress.problems.digits import data
from mmcompress.problems.digits.data import (CLASSIFY_GROUPS, TASK_SETS, MultiTaskData, Split,
                                             describe, load_multidigits)
from mmcompress.problems.digits.problem import DigitsProblem, from_config, validate_config

__all__ = ["CLASSIFY_GROUPS", "DigitsProblem", "MultiTaskData", "Split", "TASK_SETS", "data",
           "describe", "from_config", "load_multidigits", "validate_config"]
