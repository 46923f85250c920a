"""Every docstring example of the imported package runs and shows what it says it shows."""
import doctest
import importlib
import pkgutil

import pytest

import mmcompress

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def package_modules():
  """`mmcompress` and every module under it, of the imported copy."""
  return ["mmcompress"] + sorted(
      info.name for info in pkgutil.walk_packages(mmcompress.__path__, "mmcompress."))


@pytest.mark.parametrize("name", package_modules())
def test_docstring_examples_run(name):
  module = importlib.import_module(name)
  report = []
  runner = doctest.DocTestRunner(optionflags=FLAGS)
  for test in doctest.DocTestFinder().find(module):
    runner.run(test, out=report.append)
  failed, _ = runner.summarize(verbose=False)
  assert not failed, "".join(report)


def test_the_examples_are_found():
  examples = sum(len(t.examples) for t in doctest.DocTestFinder().find(
      importlib.import_module("mmcompress.sparsity.masks")))
  assert examples >= 3
