"""What every experiment entry point shares: flags in, one library call out.

A mistake of the user's ends the command before any compute with one line on stderr,
``PROGRAM: error: WHAT TO CHANGE``, and exit status 2: a flag or config field that cannot be
parsed or does not exist, a config file or preset that does not exist, and whatever the
library raises as `mmcompress.errors.UserError` (a config that cannot run, a missing or
malformed data folder, a workdir that holds another run). A write that the filesystem
refuses during the run (no permission, a read-only filesystem, no space left) is one line too,
with exit status 2, saying that whatever was saved is kept and the same command resumes (an
unreadable file the run needs, EACCES or EPERM on reading, is answered the same way). Any
other error keeps its traceback.

``--config`` takes a config file with an optional preset, ``PATH[:PRESET]``, or a config
shipped with the package by name, ``NAME[:PRESET]`` (``digits:quick``, ``nyuv2:dst100x``),
which works from an installed package as well as from the source tree. The source tree's
path of a shipped config, ``experiments/configs/NAME.py[:PRESET]``, also finds the shipped
copy when the current folder holds no such file.
"""
import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags, logging

from mmcompress import _checks, errors

CONFIGS = os.path.join(os.path.dirname(__file__), "configs")
USER_ERROR_STATUS = 2

# What parsing the command line raises for a mistake in it: absl's flag errors, and what
# ml_collections lets through for an unknown or ill-typed ``--config.X`` override or a config
# file whose get_config() rejects its preset.
_COMMAND_LINE_ERRORS = (flags.Error, KeyError, AttributeError, TypeError, ValueError, OSError)


def shipped_configs() -> list[str]:
  """The names of the config files shipped in ``experiments/configs``."""
  return sorted(name[:-3] for name in os.listdir(CONFIGS)
                if name.endswith(".py") and not name.startswith("_") and name != "base.py")


def resolve_config(value: str) -> str:
  """The ``--config`` value with its file part turned into a path that exists.

  Args:
    value: ``PATH[:PRESET]`` or ``NAME[:PRESET]``, see the module docstring.

  Returns:
    ``PATH[:PRESET]`` with PATH an existing file.

  Raises:
    UserError: if PATH is not a file and does not name a shipped config.
  """
  path, colon, preset = value.partition(":")
  if os.path.isfile(path):
    return value
  name = os.path.basename(path)
  name = name[:-3] if name.endswith(".py") else name
  by_name = path == name  # no folder, no ".py"
  in_source_tree = os.path.normpath(path) == os.path.join("experiments", "configs", f"{name}.py")
  if (by_name or in_source_tree) and name in shipped_configs():
    return os.path.join(CONFIGS, f"{name}.py") + colon + preset
  raise errors.UserError(
      f"--config={value}: there is no config file {path!r}; pass the path of a config file or "
      f"a shipped config by name, one of {shipped_configs()}, with an optional preset "
      "(e.g. --config=digits:quick).")


# Each resolved --config value -> the value the user typed, so that an error names what they
# typed (``digits:nope``), not the installed file it resolved to.
_TYPED: dict[str, str] = {}


def _resolve_config_flag(argv: Sequence[str]) -> list[str]:
  """`argv` with the value of every ``--config`` resolved by `resolve_config`."""
  argv, i = list(argv), 1
  while i < len(argv) and argv[i] != "--":
    if argv[i].startswith("--config="):
      typed = argv[i][len("--config="):]
      argv[i] = "--config=" + resolve_config(typed)
      _TYPED.setdefault(argv[i][len("--config="):], typed)  # (resolved twice: the first)
    elif argv[i] == "--config" and i + 1 < len(argv):
      typed = argv[i + 1]
      argv[i + 1] = resolve_config(typed)
      _TYPED.setdefault(argv[i + 1], typed)
      i += 1
    i += 1
  return argv


def one_line(error: BaseException) -> str:
  """The message of `error` as one line.

  ml_collections wraps what a config file raises in a message that holds the whole traceback;
  its last line is the original exception, whose message is kept.
  """
  message = str(error).strip()
  if isinstance(error, (KeyError, AttributeError)):  # an unknown --config.X
    while len(message) > 1 and message[0] == message[-1] and message[0] in "'\"":
      message = message[1:-1]
    message = message.replace("\\n", " ").replace("\\'", "'")
    message = (f"the config has no field {message} (it is locked: every --config.X must "
               "name one of its fields; the config file lists them).")
  for resolved, typed in _TYPED.items():
    message = message.replace(resolved, typed)
  lines = [line.strip() for line in message.splitlines() if line.strip()]
  if any(line.startswith("Traceback") for line in lines):
    head = lines[0].replace("Error whilst parsing config file:", "").rstrip(" :")
    _, _, last = lines[-1].partition(": ")
    return f"{head}: {last or lines[-1]}"
  return " ".join(lines)


def exit_with_user_error(program: str, error: BaseException | str) -> None:
  """Prints ``PROGRAM: error: MESSAGE`` as one line on stderr and exits with status 2."""
  message = error if isinstance(error, str) else one_line(error)
  print(f"{program}: error: {message}", file=sys.stderr, flush=True)
  sys.exit(USER_ERROR_STATUS)


def _program() -> str:
  main = sys.modules.get("__main__")
  spec = getattr(main, "__spec__", None)
  return spec.name if spec is not None else os.path.basename(sys.argv[0])


def check_output_file(path: str | None, flag: str) -> None:
  """Raises a `UserError` unless `path` (a ``--FLAG`` naming a file to write) can be written:
  its folder exists and is writable, and it is not a folder. Checked before any compute, so
  a mistyped path never loses a finished benchmark's results."""
  if not path:
    return
  if os.path.isdir(path):
    raise errors.UserError(f"--{flag}={path} is a folder: name a file, e.g. {path}/out.json.")
  _checks.writable_folder(os.path.dirname(path) or ".", f"--{flag}={path} goes in")


class ArgumentParser(argparse.ArgumentParser):
  """argparse for the entry points without absl flags: a mistake is one line on stderr,
  ``PROGRAM: error: WHAT``, and exit status 2 (argparse's own would print its usage first)."""

  def error(self, message: str):  # pylint: disable=useless-return
    exit_with_user_error(self.prog, message)


def run_argparse_main(main: Callable[[list[str] | None], Any], program: str,
                      argv: list[str] | None = None) -> Any:
  """``main(argv)`` with a `UserError` it raises as one line and exit status 2."""
  try:
    return main(argv)
  except errors.UserError as error:
    exit_with_user_error(program, error)


def define_flags(config_name: str):
  """The ``--config`` (a config file or a shipped config's name, with an optional
  ``:preset``) and ``--workdir`` flags.

  ml_collections reads ``--config`` and its ``--config.X`` overrides from `sys.argv` while
  the flag is defined as well as when flags are parsed, so the ``--config`` value in
  `sys.argv` is resolved here, and a mistake in either is a user error.
  """
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  try:
    sys.argv[:] = _resolve_config_flag(sys.argv)
    config = config_flags.DEFINE_config_file(
        "config", os.path.join(CONFIGS, f"{config_name}.py"),
        "The experiment's config: a file or a shipped config's name (one of "
        f"{shipped_configs()}), with an optional preset: PATH[:PRESET] or NAME[:PRESET].",
        lock_config=True)
  except _COMMAND_LINE_ERRORS as error:
    exit_with_user_error(_program(), error)
  workdir = flags.DEFINE_string("workdir", None, "Where results, checkpoints and the report go.",
                                required=True)
  return config, workdir


def _parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing, with a mistake in the command line as a one-line user error."""
  try:
    return flags.FLAGS(_resolve_config_flag(argv))
  except _COMMAND_LINE_ERRORS as error:
    exit_with_user_error(_program(), error)


def run_main(main: Callable[[list[str]], None]) -> None:
  """``absl.app.run(main)``, with every user error (see the module docstring) as one line on
  stderr and exit status 2, and JAX's persistent compilation cache in the user's cache folder
  (`mmcompress.train.parallel.use_compilation_cache`; ``JAX_COMPILATION_CACHE_DIR=`` turns it
  off, ``JAX_COMPILATION_CACHE_DIR=DIR`` puts it in DIR)."""
  def checked_main(argv: list[str]) -> None:
    if len(argv) > 1:
      exit_with_user_error(_program(), f"unexpected arguments {argv[1:]}: every argument is a "
                           "--flag=value (see --helpshort).")
    from mmcompress.train import parallel  # pylint: disable=import-outside-toplevel
    parallel.use_compilation_cache(parallel.default_cache_dir())
    try:
      main(argv)
    except errors.UserError as error:
      exit_with_user_error(_program(), error)
    except Exception as error:  # pylint: disable=broad-except
      refused = _checks.refused_write(error)
      if refused is None:
        raise
      exit_with_user_error(_program(), _checks.refused_write_message(refused))
  app.run(checked_main, flags_parser=_parse_flags)


def check_entry(config: Any, workdir: str | None, problem: str | None) -> None:
  """Raises a `UserError` for an empty workdir, a study's config at an experiment's entry
  point or the reverse, or a config of another problem than `problem`, the one the entry
  point is for (None: a study, which runs any registered problem)."""
  if not (workdir or "").strip():
    raise errors.UserError("--workdir is empty: give the folder for this run's results, "
                           "e.g. --workdir=runs/digits.")
  is_study = "study" in config
  if is_study != (problem is None):
    raise errors.UserError(
        "this is a study's config (it has config.study): run it with python -m "
        "experiments.study" if is_study else
        "this is an experiment's config, not a study's (it has no config.study): run it "
        f"with python -m experiments.{config.get('problem') or 'digits'}, or give "
        "--config=study[:PRESET].")
  if problem is not None and config.get("problem") != problem:
    raise errors.UserError(
        f"config.problem is {config.get('problem')!r}, but this entry point runs "
        f"{problem!r}: use python -m experiments.{config.get('problem') or problem} for "
        "that config, or a config of this problem.")


def run(config_flag, workdir_flag, job: Callable, problem: str | None) -> None:
  """Runs ``job(config, workdir)`` on the flags' values (`comparison.run`,
  `comparison.run_digits`, or `study.run`) after `check_entry`."""
  def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:  # orbax reports every save at INFO
      logging.set_verbosity(logging.WARNING)
    check_entry(config_flag.value, workdir_flag.value, problem)
    job(config_flag.value, workdir_flag.value)
  run_main(main)
