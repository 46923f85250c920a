"""The package installs as a package: every folder is in it, the core stands on its own
dependencies (what it loads when imported: tests/test_imports.py), and the README's test
command tests the installed copy."""
import ast
import configparser
import importlib
import importlib.util
import os
import pathlib
import pkgutil
import re
import sys

import pytest

import experiments
import mmcompress

REPO = pathlib.Path(__file__).resolve().parents[1]
CORE = ["mmcompress/__init__.py", "mmcompress/_checks.py", "mmcompress/transforms.py",
        "mmcompress/errors.py", "mmcompress/objective.py", "mmcompress/weighting",
        "mmcompress/sparsity", "mmcompress/aggregators"]


def setup_cfg() -> configparser.ConfigParser:
  config = configparser.ConfigParser(interpolation=None)
  config.read(REPO / "setup.cfg")
  return config


def requirement_names(text: str) -> set[str]:
  names = set()
  for line in text.splitlines():
    line = line.split("#", 1)[0].strip()
    if line:
      names.add(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower().replace("_", "-"))
  return names


def test_the_tests_import_the_installed_copy_when_asked():
  if os.environ.get("MMCOMPRESS_EXPECT_INSTALLED") != "1":
    pytest.skip("set MMCOMPRESS_EXPECT_INSTALLED=1 to check that the installed copy is tested")
  for package in (mmcompress, experiments):
    path = pathlib.Path(package.__file__).resolve()
    # The environment may live inside the repository (.ci/run makes .venv there), so the
    # source tree is the package's own folder at the top of the repository.
    source = REPO / package.__name__
    assert source not in path.parents, f"{package.__name__} imported from the source tree: {path}"
    assert "site-packages" in path.parts, path


def test_every_folder_of_python_files_is_a_package():
  for top in ("mmcompress", "experiments"):
    for folder, _, files in os.walk(REPO / top):
      if "__pycache__" not in folder and any(f.endswith(".py") for f in files):
        assert "__init__.py" in files, f"{folder} has no __init__.py"


def test_the_core_imports_only_its_own_dependencies():
  allowed = requirement_names(setup_cfg()["options"]["install_requires"]) | {"mmcompress"}
  assert allowed == {"jax", "optax", "numpy", "mmcompress"}
  files = []
  for entry in CORE:
    path = REPO / entry
    files += sorted(path.glob("*.py")) if path.is_dir() else [path]
  core_modules = {str(f.relative_to(REPO).with_suffix("")).replace(os.sep, ".")
                  .removesuffix(".__init__") for f in files}
  for path in files:
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom) and node.level == 0:
        names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
      else:
        continue
      for name in names:
        top = name.split(".")[0]
        assert top in allowed or top in sys.stdlib_module_names, f"{path}: imports {name}"
        if top == "mmcompress" and name != "mmcompress":
          assert (name in core_modules or name.rsplit(".", 1)[0] in core_modules), (
              f"{path}: the core imports {name}, which is not part of the core")


def test_requirements_txt_lists_every_dependency_of_a_full_install():
  options = setup_cfg()
  declared = requirement_names(options["options"]["install_requires"])
  for extra in ("experiments", "test"):
    declared |= requirement_names(options["options.extras_require"][extra])
  assert requirement_names(options["options.extras_require"]["experiments"]) <= (
      requirement_names(options["options.extras_require"]["test"]))
  assert requirement_names((REPO / "requirements.txt").read_text()) == declared


def test_ci_runs_the_readmes_test_command_verbatim():
  readme = (REPO / "README.md").read_text()
  commands = re.findall(r"Install and run the tests.*?```bash\n(.*?)\n```", readme, re.S)
  assert len(commands) == 1, "the README's 'Install and run the tests' block"
  ci = (REPO / ".ci" / "run").read_text()
  assert commands[0].strip() in ci
  assert "pip install -e" not in ci and "pip install -e" not in commands[0]


def test_every_method_citation_names_a_section_of_docs_method_md():
  sections = set(re.findall(r"^## (\d) ", (REPO / "docs" / "method.md").read_text(), re.M))
  assert sections == {"1", "2", "3", "4", "5", "6"}
  outside = "METHOD" + ".md"  # a document outside the repository: never cited
  cited = 0
  for top in ("mmcompress", "experiments", "tests", "docs", "README.md"):
    paths = [REPO / top] if top.endswith(".md") else sorted((REPO / top).rglob("*.[pm][yd]"))
    for path in paths:
      text = path.read_text()
      assert outside not in text, path
      for first, last in re.findall(r"docs/method\.md §(\d)(?:–§(\d))?", text):
        cited += 1
        assert {first, last or first} <= sections, (path, first, last)
  assert cited >= 10


def test_every_file_and_folder_the_layout_page_names_exists():
  layout = (REPO / "docs" / "development.md").read_text()
  named = set(re.findall(r"`((?:mmcompress|experiments|tests|docs)/[\w/.]*)`", layout))
  # Bare names in a room's paragraph belong to the folder the paragraph is about.
  for folder, names in (("mmcompress", ("objective.py", "transforms.py", "_checks.py",
                                        "errors.py", "aggregators/", "export.py")),
                        ("mmcompress/app", ("comparison.py", "records.py", "report.py",
                                            "plots.py", "study.py", "leaderboard.py")),
                        ("mmcompress/train", ("step.py", "stages.py", "loop.py",
                                              "checkpoint.py", "parallel.py")),
                        ("experiments", ("benchmark.py", "gpu_check.py", "tune_minmax.py",
                                         "synthetic.py", "launch.py", "bench_weightings.py")),
                        ("tests", ("test_wiring.py", "conftest.py", "test_contract.py",
                                   "test_imports.py"))):
    for name in names:
      assert f"`{name}`" in layout or f"`{folder}/{name}`" in layout, name
      named.add(f"{folder}/{name}")
  for sub in ("digits", "cifar100", "nyuv2"):
    assert f"`{sub}/`" in layout
    named.add(f"mmcompress/problems/{sub}")
  missing = sorted(p for p in named if not (REPO / p.rstrip("/")).exists())
  assert not missing, f"the README's layout names {missing}, which do not exist"
  assert len(named) > 30


def test_every_repository_path_the_readme_and_docs_name_exists():
  texts = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))
  named = {(path.name, found) for path in texts
           for found in re.findall(r"`((?:mmcompress|experiments|tests|docs)/[\w/.-]*)",
                                   path.read_text())}
  missing = sorted((where, p) for where, p in named if not (REPO / p.rstrip("/.")).exists())
  assert not missing, f"paths named but not in the repository: {missing}"
  assert len(named) > 10


def _defined_public_names(path: pathlib.Path) -> set[str]:
  """Functions, classes and UPPER_CASE constants a module defines at its top level."""
  names = set()
  for node in ast.parse(path.read_text()).body:
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
      for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
        if isinstance(target, ast.Name) and target.id.isupper():
          names.add(target.id)
  return {n for n in names if not n.startswith("_")}


@pytest.mark.parametrize("module", [m for m in sorted(
    info.name for info in pkgutil.walk_packages(mmcompress.__path__, "mmcompress."))
    if not m.rsplit(".", 1)[-1].startswith("_")] + ["mmcompress"])
def test_every_public_module_lists_its_public_names_in_all(module):
  loaded = importlib.import_module(module)
  listed = getattr(loaded, "__all__", None)
  assert listed is not None, f"{module} has no __all__"
  assert len(set(listed)) == len(listed), f"{module}.__all__ repeats a name"
  missing = [n for n in listed if not hasattr(loaded, n)]
  if loaded.__file__.endswith("__init__.py"):  # a package may list submodules it loads lazily
    missing = [n for n in missing if importlib.util.find_spec(f"{module}.{n}") is None]
  assert not missing, f"{module}.__all__ names {missing}, which it does not have"
  unlisted = _defined_public_names(pathlib.Path(loaded.__file__)) - set(listed)
  assert not unlisted, f"{module} defines {sorted(unlisted)} but does not list them in __all__"
