"""Scenes: procedurally rendered rooms with segmentation, depth and surface-normal targets.

An offline stand-in for NYUv2 (same maps, shapes, dtypes and invalid-pixel marks) that needs
no download: `render` is the NumPy ray caster, `data` generates, caches and loads the splits,
`problem` trains them as NYUv2's three-task problem (`ScenesProblem`, `from_config`).
"""
from mmcompress.problems.scenes import data, render
from mmcompress.problems.scenes.data import load_scenes
from mmcompress.problems.scenes.problem import (ArraySource, ScenesProblem, from_config,
                                              validate_config)

__all__ = ["ArraySource", "ScenesProblem", "data", "from_config", "load_scenes", "render",
           "validate_config"]
