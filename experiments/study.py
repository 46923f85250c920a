"""The study: every weighting and pruning criterion, each tuned on its own seeds, three task
sets, 40x and 100x, 10 reported seeds, one leaderboard (see experiments/configs/study.py).

  python -m experiments.study --workdir=runs/study [--config=study:quick] [--config.X=...]
"""
from experiments import launch
from mmcompress.app import study

_CONFIG, _WORKDIR = launch.define_flags("study")

if __name__ == "__main__":
  launch.run(_CONFIG, _WORKDIR, study.run, None)  # any registered problem
