"""Session-wide: model packs are built once per test run into one cache, shared by
every test and by the servers the tests start (they inherit NEUROGRID_CACHE; a cache
given from outside is used as it is); and one live server (tests/live_server.py)
shared by the packages that need one."""
from __future__ import annotations

import os
import tempfile
from typing import Iterator

import pytest

from tests.live_server import LiveServer, create_key, run_live_server


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One live server (one local demo worker) for the session."""
    with run_live_server(tmp_path_factory.mktemp("live-server")) as server:
        yield server


@pytest.fixture(scope="session")
def live_server(live: LiveServer) -> str:
    """The live server's base URL."""
    return live.url


@pytest.fixture(scope="session")
def live_server_key(live: LiveServer) -> str:
    """A premium API key of the live server (1000 submissions/hour, 50 in flight),
    so that tests which submit much do not spend the anonymous caller's budget."""
    return create_key(live.db)


def pytest_configure(config: pytest.Config) -> None:
    if not os.environ.get("NEUROGRID_CACHE"):
        os.environ["NEUROGRID_CACHE"] = tempfile.mkdtemp(prefix="neurogrid-test-cache-")
