"""What every test module shares: which copy of the package is under test.

The tests run against whatever copy of `mmcompress` and `experiments` Python imports: the
installed one under the README's ``pytest`` command (this folder is not a package, so pytest
puts only ``tests/`` on ``sys.path``, never the repository root), the source tree under
``python -m pytest`` from the repository root. Subprocesses started by the tests import the
same copy: its folder is put first on their ``PYTHONPATH`` here, and they run outside the
source tree. Files of the repository itself (README.md, setup.cfg) are found from this file's
own path.
"""
import os
import pathlib

import mmcompress

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE_PARENT = str(pathlib.Path(mmcompress.__file__).resolve().parents[1])

os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (PACKAGE_PARENT, os.environ.get("PYTHONPATH")) if p)
