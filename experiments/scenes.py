"""Scenes, three dense tasks on rendered rooms, MTAN SegNet (see experiments/configs/scenes.py).

  python -m experiments.scenes --workdir=runs/scenes [--config=scenes:quick] [--config.X=...]
"""
from experiments import launch
from mmcompress.app import comparison

_CONFIG, _WORKDIR = launch.define_flags("scenes")

if __name__ == "__main__":
  launch.run(_CONFIG, _WORKDIR, comparison.run, "scenes")
