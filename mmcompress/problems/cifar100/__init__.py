"""CIFAR-100 as 20 five-way tasks (one per coarse class), read from a tfds data directory."""
from mmcompress.problems.cifar100 import data
from mmcompress.problems.cifar100.problem import Cifar100Problem, from_config, validate_config

__all__ = ["Cifar100Problem", "data", "from_config", "validate_config"]
