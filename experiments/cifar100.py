"""CIFAR-100 as 20 tasks with a multi-head VGG16 (see experiments/configs/cifar100.py).

  python -m experiments.cifar100 --workdir=runs/cifar100 --config.data_dir=/data/tfds
"""
from experiments import launch
from mmcompress.app import comparison

_CONFIG, _WORKDIR = launch.define_flags("cifar100")

if __name__ == "__main__":
  launch.run(_CONFIG, _WORKDIR, comparison.run, "cifar100")
