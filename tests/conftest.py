"""Session fixtures shared across test packages: one live server (tests/live_server.py)."""
from __future__ import annotations

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
