"""Sphinx configuration: the guides (Markdown, read by MyST) and the API reference (autodoc
over the docstrings of every public name, listed by hand in docs/api/; the test suite checks
that none is missing)."""
import re

project = "mmcompress"
author = "the mmcompress developers"
copyright = "2026, the mmcompress developers"  # pylint: disable=redefined-builtin

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
default_role = "py:obj"  # `name` in a docstring links the name where Sphinx knows it
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the signatures carry them; jax's aliases do not resolve
napoleon_google_docstring = True
napoleon_numpy_docstring = False
html_theme = "alabaster"
# (no warning is suppressed: a link to a missing page or heading fails the build)


def _plain_text(app, what, name, obj, options, lines):
  """The docstrings are plain text with `code` in backticks and "* " bullets: any other | or
  * outside backticks is mathematics (|w|, a * b, *args), not reStructuredText markup."""
  del app, what, name, obj, options
  in_example = False
  for i, line in enumerate(lines):
    stripped = line.strip()
    in_example = stripped.startswith(">>>") or (in_example and bool(stripped))
    if in_example:  # a doctest is shown as written
      continue
    # napoleon's ":param name:" and a bullet's "* " keep their syntax
    field = re.match(r"(\s*:[^:]*:|\s*\* )(.*)", line)
    head, text = (field.group(1), field.group(2)) if field else ("", line)
    pieces = re.split(r"(``.*?``|`[^`]*`)", text)
    lines[i] = head + "".join(p if p.startswith("`") else re.sub(r"([|*])", r"\\\1", p)
                              for p in pieces)


def setup(app):
  app.connect("autodoc-process-docstring", _plain_text)
