"""NYUv2, three dense tasks, MTAN SegNet (see experiments/configs/nyuv2.py).

  python -m experiments.nyuv2 --workdir=runs/nyuv2 --config.data_dir=/data/nyuv2
"""
from experiments import launch
from mmcompress.app import comparison

_CONFIG, _WORKDIR = launch.define_flags("nyuv2")

if __name__ == "__main__":
  launch.run(_CONFIG, _WORKDIR, comparison.run, "nyuv2")
