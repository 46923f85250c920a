"""What every experiment entry point shares: flags in, one library call out."""
import os
from collections.abc import Callable

from absl import app, flags, logging


CONFIGS = os.path.join(os.path.dirname(__file__), "configs")


def define_flags(config_name: str):
  """The ``--config`` (a config file, with an optional ``:preset``) and ``--workdir`` flags."""
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  config = config_flags.DEFINE_config_file(
      "config", os.path.join(CONFIGS, f"{config_name}.py"),
      "The experiment's config file, with an optional preset: PATH:PRESET.", lock_config=True)
  workdir = flags.DEFINE_string("workdir", None, "Where results, checkpoints and the report go.",
                                required=True)
  return config, workdir


def run(config_flag, workdir_flag, job: Callable) -> None:
  """Runs ``job(config, workdir)`` on the flags' values: `experiment.run` with a problem, or
  `experiment.run_digits`."""
  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:  # orbax reports every save at INFO
      logging.set_verbosity(logging.WARNING)
    job(config_flag.value, workdir_flag.value)
  app.run(main)
