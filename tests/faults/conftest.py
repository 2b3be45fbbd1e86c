"""The fault tests' fixtures: the API tests' app harness (tests/api/conftest.py) and
a database disk that fills on demand (disks.py)."""
from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import pytest

from tests.api.conftest import Harness, running_app

from .disks import disk

__all__ = ["api", "disk"]


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_app(tmp_path / "api.db") as harness:
        yield harness
