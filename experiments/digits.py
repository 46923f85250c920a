"""The main job: the MultiDigits compression comparison (see experiments/configs/digits.py).

  python -m experiments.digits --workdir=runs/digits [--config=...:quick] [--config.X=...]
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

from mmcompress import experiment

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "digits.py"),
    "The experiment's config file, with an optional preset: PATH:quick or PATH:study.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where results, checkpoints and the report go.",
                               required=True)


def main(argv):
  if not flags.FLAGS["verbosity"].present:  # orbax reports every save at INFO
    logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  experiment.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
