"""Session-wide: model packs are built once per test run into one cache, shared by
every test and by the servers the tests start (they inherit NEUROGRID_CACHE). A
cache given from outside (NEUROGRID_CACHE set) is used as it is."""
from __future__ import annotations

import os
import tempfile

import pytest


def pytest_configure(config: pytest.Config) -> None:
    if not os.environ.get("NEUROGRID_CACHE"):
        os.environ["NEUROGRID_CACHE"] = tempfile.mkdtemp(prefix="neurogrid-test-cache-")
