"""What each layer of the package loads. The layers, from the bottom: the core (the package's
top-level modules, `weighting`, `aggregators`, `sparsity`) loads no trainer, model, data set,
application, flax or other experiment machinery; the trainer (`train`) no data set, export,
application or ml_collections (it reads a typed plan); the models no problem, trainer or
application; the problems no trainer or application; the application (`app`) may load
everything, and only its plan builder (`app/plan.py`) names ml_collections in its source.

Every module is imported in a process of its own, and what it loaded is read from that
process's ``sys.modules``. One interpreter serves them all: it loads jax, optax and numpy
(which no rule concerns) and forks a child per module, so each child starts with nothing of
`mmcompress` and no flax, and the module's import costs only itself, not a jax start.
"""
import json
import pathlib
import pkgutil

import pytest

import mmcompress

PRELOADED = ("jax", "jax.numpy", "numpy", "optax")
MACHINERY = ("flax", "sklearn", "matplotlib", "tensorflow", "tensorflow_datasets",
             "ml_collections", "orbax", "tensorboardX")  # (optax itself imports absl)

# Imports each module named on the command line in a forked child; prints one JSON line:
# {module: sorted names of sys.modules after the import, or {"error": ...}}.
IMPORT_EACH = f"""
import importlib, json, os, sys
for name in {PRELOADED!r}:
  importlib.import_module(name)
early = sorted(m for m in sys.modules if m.split(".")[0] in ("mmcompress", "flax"))
assert not early, early
loaded = {{}}
for name in sys.argv[1:]:
  read, write = os.pipe()
  pid = os.fork()
  if pid == 0:
    os.close(read)
    try:
      importlib.import_module(name)
      out = sorted(sys.modules)
    except BaseException as error:
      out = {{"error": repr(error)}}
    with os.fdopen(write, "w") as f:
      json.dump(out, f)
    os._exit(0)
  os.close(write)
  with os.fdopen(read) as f:
    loaded[name] = json.loads(f.read() or '{{"error": "no output"}}')
  os.waitpid(pid, 0)
print(json.dumps(loaded))
"""


def within(name, prefixes):
  """Whether module `name` is one of `prefixes` or inside one of them."""
  return any(name == p or name.startswith(p + ".") for p in prefixes)


def core_forbids(name):
  return within(name, ("mmcompress.train", "mmcompress.models", "mmcompress.problems",
                       "mmcompress.app", "flax"))


def train_forbids(name):
  data_set = (within(name, ("mmcompress.problems",))
              and name not in ("mmcompress.problems", "mmcompress.problems.base"))
  # The trainer reads a typed plan (mmcompress.train.plan), never an ml_collections config.
  return data_set or within(name, ("mmcompress.app", "mmcompress.export", "ml_collections"))


def models_forbid(name):
  return within(name, ("mmcompress.problems", "mmcompress.app", "mmcompress.train"))


def problems_forbid(name):
  return within(name, ("mmcompress.app", "mmcompress.train"))


def package_modules():
  """`mmcompress` and every module under it, of the imported copy."""
  return ["mmcompress"] + sorted(
      info.name for info in pkgutil.walk_packages(mmcompress.__path__, "mmcompress."))


def rule_of(module):
  """The check of what `module` may load, or None for modules without one."""
  core = ("mmcompress", "mmcompress.objective", "mmcompress.transforms", "mmcompress.errors",
          "mmcompress.export", "mmcompress._checks", "mmcompress._files")
  if module in core or within(module, ("mmcompress.weighting", "mmcompress.sparsity",
                                       "mmcompress.aggregators")):
    return core_forbids
  if within(module, ("mmcompress.train",)):
    return train_forbids
  if within(module, ("mmcompress.models",)):
    return models_forbid
  if within(module, ("mmcompress.problems",)):
    return problems_forbid
  return None


CHECKED = [m for m in package_modules() if rule_of(m)]
# Modules that break the rules on purpose: the check must catch them.
BREAKERS = ("mmcompress.app.comparison", "mmcompress.problems.digits")


@pytest.fixture(name="loaded", scope="module")
def fixture_loaded(run_python):
  outside = pathlib.Path(mmcompress.__file__).resolve().parents[1]  # the copy's own folder
  done = run_python("-c", IMPORT_EACH, *CHECKED, *BREAKERS, cwd=outside, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


def forbidden_in(loaded, module, rule):
  modules = loaded[module]
  assert isinstance(modules, list), f"importing {module} failed: {modules}"
  assert module in modules
  return [m for m in modules if rule(m)]


def test_the_checked_modules_cover_every_layer():
  for module in ("mmcompress", "mmcompress.objective", "mmcompress.transforms",
                 "mmcompress.weighting", "mmcompress.sparsity", "mmcompress.sparsity.masks",
                 "mmcompress.aggregators", "mmcompress.weighting.gradient",
                 "mmcompress._checks", "mmcompress.train", "mmcompress.train.loop",
                 "mmcompress.models", "mmcompress.models.mtan", "mmcompress.export",
                 "mmcompress.errors", "mmcompress.problems", "mmcompress.problems.digits"):
    assert module in CHECKED
  for module in ("mmcompress.app", "mmcompress.app.comparison", "mmcompress.app.report"):
    assert module not in CHECKED


@pytest.mark.parametrize("module", CHECKED)
def test_a_module_loads_nothing_its_layer_forbids(loaded, module):
  assert forbidden_in(loaded, module, rule_of(module)) == []


@pytest.mark.parametrize("module", [m for m in CHECKED if rule_of(m) is core_forbids])
def test_the_core_loads_no_experiment_machinery(loaded, module):
  assert forbidden_in(loaded, module, lambda m: m.split(".")[0] in MACHINERY) == []


def test_the_check_catches_a_module_that_loads_a_forbidden_one(loaded):
  found = forbidden_in(loaded, "mmcompress.app.comparison", core_forbids)
  assert {"mmcompress.train", "mmcompress.app.report", "flax"} <= set(found)
  assert "mmcompress.problems.digits" in forbidden_in(loaded, "mmcompress.problems.digits",
                                                      train_forbids)
  assert "mmcompress.problems.digits" in forbidden_in(loaded, "mmcompress.problems.digits",
                                                      models_forbid)
  assert not train_forbids("mmcompress.problems.base") and not train_forbids("mmcompress.train")


def test_no_problem_loads_scikit_learn_when_imported(loaded):
  # The digits are read from scikit-learn's file without its import (seconds per process).
  assert [m for m in loaded["mmcompress.problems.digits"] if within(m, ("sklearn",))] == []
  assert "mmcompress.problems.digits.data" in loaded["mmcompress.problems.digits"]


# The one module of the package that reads an experiment config (the application's plan
# builder); every other module takes a plan.
CONFIG_READER = "app/plan.py"


def modules_naming(word, root):
  """The package's source files (relative to `root`, in '/' form) whose text holds `word`."""
  return sorted(p.relative_to(root).as_posix() for p in pathlib.Path(root).rglob("*.py")
                if word in p.read_text(encoding="utf-8"))


def test_only_the_plan_builder_names_ml_collections():
  root = pathlib.Path(mmcompress.__file__).resolve().parent
  assert modules_naming("ml_collections", root) == [CONFIG_READER]


def test_the_source_check_finds_a_module_that_names_it(tmp_path):
  (tmp_path / "app").mkdir()
  (tmp_path / "app" / "plan.py").write_text("import ml_collections\n")
  (tmp_path / "loop.py").write_text("def f(config: 'ml_collections.ConfigDict'): ...\n")
  (tmp_path / "step.py").write_text("import jax\n")
  assert modules_naming("ml_collections", tmp_path) == [CONFIG_READER, "loop.py"]
