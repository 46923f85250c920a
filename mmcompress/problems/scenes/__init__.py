"""Scenes: procedurally rendered rooms with segmentation, depth and surface-normal targets.

An offline stand-in for NYUv2 (same maps, shapes, dtypes and invalid-pixel marks) that needs
no download: `render` is the NumPy ray caster, `data` generates, caches and loads the splits.
"""
from mmcompress.problems.scenes import data, render
from mmcompress.problems.scenes.data import load_scenes

__all__ = ["data", "load_scenes", "render"]
