"""The documentation site: every public name has an API entry, and the site builds with
warnings as errors (as `python -m sphinx -W -b html docs docs/_build/html`)."""
import importlib
import pathlib
import re

import pytest

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
# The modules whose public names (their __all__) the API reference documents.
DOCUMENTED = ("mmcompress", "mmcompress.export", "mmcompress.errors", "mmcompress.weighting",
              "mmcompress.train.plan",
              "mmcompress.weighting.base", "mmcompress.aggregators", "mmcompress.sparsity",
              "mmcompress.train.step", "mmcompress.train.stages", "mmcompress.train.loop",
              "mmcompress.train.run_axis", "mmcompress.train.variants",
              "mmcompress.train.scoring", "mmcompress.train.checkpoint",
              "mmcompress.train.parallel", "mmcompress.train.clock")


def _entries() -> set[str]:
  """Every ``.. auto<kind>:: name`` of the API pages, and every module named as such."""
  text = "\n".join(p.read_text() for p in sorted((DOCS / "api").glob("*.md")))
  return (set(re.findall(r"^\.\. auto(?:class|function|data)::\s+(\S+)", text, re.M))
          | set(re.findall(r"^`(\S+)`: the module", text, re.M)))


def _missing(module: str, names: list[str], entries: set[str]) -> list[str]:
  """The names of `module` without an API entry."""
  return [n for n in names if f"{module}.{n}" not in entries]


@pytest.mark.parametrize("module", DOCUMENTED)
def test_every_public_name_has_an_api_entry(module):
  missing = _missing(module, importlib.import_module(module).__all__, _entries())
  assert not missing, f"docs/api has no entry for {module}'s {missing}"


def test_the_check_sees_a_name_without_an_entry():
  entries = _entries()
  names = ["gradual_magnitude", "a_name_added_without_docs"]
  assert _missing("mmcompress.sparsity", names, entries) == ["a_name_added_without_docs"]
  stale = [e for e in entries if not _resolves(e)]
  assert not stale, f"docs/api names what does not exist: {stale}"


def _resolves(dotted: str) -> bool:
  module, _, name = dotted.rpartition(".")
  try:
    return hasattr(importlib.import_module(module), name)
  except ImportError:
    return False


def test_the_site_builds_with_warnings_as_errors(tmp_path, run_python):
  done = run_python("-m", "sphinx", "-W", "-q", "-b", "html", str(DOCS), str(tmp_path / "html"),
                    cwd=tmp_path, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  page = (tmp_path / "html" / "api" / "sparsity.html").read_text()
  assert "gradual_magnitude" in page and "Zhu" in page  # the docstring, not just the name
