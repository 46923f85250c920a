"""What every test module shares: which copy of the package is under test, and fixtures.

The tests run against whatever copy of `mmcompress` and `experiments` Python imports: the
installed one under the README's ``pytest`` command (this folder is not a package, so pytest
puts only ``tests/`` on ``sys.path``, never the repository root), the source tree under
``python -m pytest`` from the repository root. Subprocesses started by the tests import the
same copy: its folder is put first on their ``PYTHONPATH`` here, and they run outside the
source tree. Files of the repository itself (README.md, setup.cfg) are found from this file's
own path.

Fixtures built the same way by several test modules live here (no test module imports
another): `tiny_config` and `tiny_experiment`, the smallest MultiDigits comparison;
`digits_data`, its data set; `start_python` and `run_python`, a Python subprocess that
imports the copy under test. The session shares one jax compilation cache (see
`pytest_configure`). Tests that run a whole experiment, or train in a subprocess, are marked
``slow`` (``pytest -m "not slow"`` leaves them out; the README's command runs them).
"""
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import jax
import pytest

import mmcompress

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE_PARENT = str(pathlib.Path(mmcompress.__file__).resolve().parents[1])

os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (PACKAGE_PARENT, os.environ.get("PYTHONPATH")) if p)

CACHE = "JAX_COMPILATION_CACHE_DIR"
_OWN_CACHE = []


def pytest_configure(config):
  """One persistent compilation cache for the session, its subprocesses and xdist workers
  (and the files' order, `_no_reorder`).

  The tests compile the same programs many times (every tiny run of a stage, every rerun of a
  killed experiment): a program compiled once is read back from the cache, the very same
  executable, so no number changes. A fresh folder per session, deleted at its end; workers
  and subprocesses inherit it through the environment. ``JAX_COMPILATION_CACHE_DIR=`` (empty)
  turns it off; a folder given there is used and kept.
  """
  _no_reorder(config)
  _quick_compiles()
  if CACHE not in os.environ:
    _OWN_CACHE.append(tempfile.mkdtemp(prefix="mmcompress-tests-jax-cache-"))
    os.environ[CACHE] = _OWN_CACHE[0]
    # Cache every program, however small or quick to compile.
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  if os.environ[CACHE]:  # jax was imported above: it read no environment variable yet set
    jax.config.update("jax_compilation_cache_dir", os.environ[CACHE])
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", 1)))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                      int(os.environ.get("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", 0)))


# The test files that take longest, longest first (per-file totals of a whole run, 2 workers on
# the 2-core machine): xdist's `--dist loadfile` hands each worker a file at a time in this
# order, so the long files start at once and the short ones fill in behind them, instead of one
# worker finishing a long file alone at the end. Every other file follows in its usual order.
LONGEST_FIRST = ("test_trainer.py", "test_multihost.py", "test_study.py", "test_run_axis.py",
                 "test_cli.py", "test_every_weighting.py", "test_paper_problems.py",
                 "test_digits_experiment.py", "test_gpu_check.py", "test_fair_study.py",
                 "test_contract.py", "test_mtan.py", "test_task_pruning.py", "test_wiring.py",
                 "test_nyuv2.py", "test_gradient_weighting.py", "test_benchmark.py",
                 "test_task_scores.py", "test_sparsity_masks.py")


def pytest_collection_modifyitems(config, items):
  """Orders the files `LONGEST_FIRST` (a stable sort: a file's tests keep their order)."""
  del config
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def _no_reorder(config) -> None:
  """Keeps xdist from reordering the files by their count of tests (its default), which put
  the longest files, the ones with few tests, last."""
  if hasattr(config.option, "loadscopereorder"):
    config.option.loadscopereorder = False


# XLA's CPU backend without its LLVM optimisations, and its element-wise fusions emitted the
# older way rather than through MLIR (whose per-fusion setup was the largest single cost of
# compiling: the trainer's step has thousands of fusions, one or more per parameter leaf).
QUICK_COMPILES = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def _quick_compiles() -> None:
  """`QUICK_COMPILES`, unless XLA_FLAGS says otherwise.

  The tests run tiny programs, compiled once or twice each: compiling them is most of their
  cost (a train step of the MTAN or VGG16 test takes three times longer to compile optimised
  than to run unoptimised; the older fusion emitter took another quarter off the MTAN and
  VGG16 step tests and off a quick study, measured on this 2-core machine). Workers and
  subprocesses inherit the flags through the environment; a subprocess that sets XLA_FLAGS
  for more devices adds its flag to these.
  """
  if "XLA_FLAGS" not in os.environ:
    os.environ["XLA_FLAGS"] = QUICK_COMPILES


def pytest_unconfigure(config):
  del config
  for folder in _OWN_CACHE:
    shutil.rmtree(folder, ignore_errors=True)


def _tiny_config(**overrides):
  """The quick digits preset made smaller; `overrides` maps dotted field names to values."""
  from experiments.configs import digits as digits_config  # pylint: disable=import-outside-toplevel
  config = digits_config.get_config("quick")
  with config.unlocked():
    config.methods = ("equal", "minmax")
    config.model_kwargs.hidden = (32,)
    config.epochs.pretrain, config.epochs.reweight, config.epochs.retrain = 2, 1, 2
    # Checkpoints only where a stage ends: an orbax save of this tiny state takes about a
    # quarter of a second, a fifth of a whole tiny run when it saved every 7 steps
    # (measured). The tests that cut a stage between its checkpoints ask for 7 themselves.
    config.checkpoint_every_steps = 1000
    config.quiet = True
    for key, value in overrides.items():
      target = config
      *parents, leaf = key.split(".")
      for p in parents:
        target = target[p]
      if leaf not in target:  # a stale override would otherwise add a field nobody reads
        raise KeyError(f"tiny_config: the config has no field {key!r}")
      target[leaf] = value
  return config


@pytest.fixture(name="tiny_config", scope="session")
def fixture_tiny_config():
  """Makes the smallest digits config: ``tiny_config(**{"epochs.sparse": 3})``."""
  return _tiny_config


@pytest.fixture(name="digits_data", scope="session")
def fixture_digits_data():
  """Loads MultiDigits (task set, seed), each pair once per session; read-only."""
  from mmcompress.problems.digits import data as digits  # pylint: disable=import-outside-toplevel
  loaded = {}

  def load(task_set="classify", seed=0):
    if (task_set, seed) not in loaded:
      loaded[task_set, seed] = digits.load_multidigits(task_set, seed=seed)
    return loaded[task_set, seed]
  return load


@pytest.fixture(name="tiny_experiment", scope="session")
def fixture_tiny_experiment(digits_data):
  """Makes a `comparison.Experiment` of `tiny_config()` (or `config`) in `workdir`; `log`
  receives every finished epoch's record."""
  # pylint: disable=import-outside-toplevel
  from mmcompress.app import comparison, plan as app_plan
  from mmcompress.models import create_model
  from mmcompress.problems.digits import DigitsProblem
  from mmcompress.train import parallel

  def make(workdir, config=None, data=None, on_checkpoint=None, log=None):
    config = config or _tiny_config()
    data = data or digits_data(config.task_sets[0], config.data_seed)
    model = create_model(config.model, data.num_outputs, **config.model_kwargs.to_dict())
    return comparison.Experiment(plan=app_plan.comparison(config), problem=DigitsProblem(data),
                                 model=model, mesh=parallel.data_mesh(), workdir=str(workdir),
                                 on_checkpoint=on_checkpoint, log=log)
  return make


def _start_python(*args, cwd, env=None, timeout=300):
  """Starts ``python *args`` on the CPU; returns `wait`, which returns its CompletedProcess."""
  process = subprocess.Popen([sys.executable, *map(str, args)], cwd=cwd,
                             env=dict(os.environ, JAX_PLATFORMS="cpu", **(env or {})),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

  def wait():
    try:
      stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      process.kill()
      process.communicate()
      raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
  return wait


@pytest.fixture(name="start_python", scope="session")
def fixture_start_python():
  """Starts ``python *args`` importing the copy under test, without waiting for it.

  Keywords: `cwd` (required; outside the source tree for ``-m`` and ``-c``), `env` (added to this
  process's environment, which always gets ``JAX_PLATFORMS=cpu``), `timeout` (seconds, from
  the call of `wait`). Returns `wait()`, which returns the `subprocess.CompletedProcess`.
  Several started at once run side by side, each one mostly importing jax.
  """
  return _start_python


@pytest.fixture(name="run_python", scope="session")
def fixture_run_python():
  """`start_python` that waits: returns the `subprocess.CompletedProcess`."""
  return lambda *args, **kwargs: _start_python(*args, **kwargs)()
