"""The main job: the MultiDigits compression comparison (see experiments/configs/digits.py).

  python -m experiments.digits --workdir=runs/digits [--config=...:quick] [--config.X=...]
"""
from experiments import launch
from mmcompress.app import comparison

_CONFIG, _WORKDIR = launch.define_flags("digits")

if __name__ == "__main__":
  launch.run(_CONFIG, _WORKDIR, comparison.run_digits, "digits")
