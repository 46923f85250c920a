"""Writing files so that a crash or a kill never leaves a half-written one."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any


def write_atomically(path: str, write: Callable[[Any], None]) -> None:
  """Calls `write(file)` on a temp file beside `path`, then renames it onto `path`."""
  directory = os.path.dirname(os.path.abspath(path))
  try:
    fd, temp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".",
                                suffix=".tmp")
  except OSError as e:
    raise ValueError(
        f"cannot write {path!r}: {e.strerror or e}; choose a writable directory.") from None
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    # mkstemp makes the file private (0600); give it the mode a plain open() would have had.
    os.chmod(temp, os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644)
    os.replace(temp, path)
  except BaseException:
    if os.path.exists(temp):
      os.remove(temp)
    raise


def write_json_atomically(path: str, value: Any) -> None:
  """Writes `value` as indented, key-sorted JSON through `write_atomically`."""
  text = json.dumps(value, indent=1, sort_keys=True)
  write_atomically(path, lambda f: f.write(text.encode("utf-8")))
